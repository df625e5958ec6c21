"""Exact path-length arithmetic of the unraveled view (Veit et al. 2016, Figs. 6a, 6c, 7).

A network of n residual blocks is a collection of 2^n paths; C(n, k) of them pass
through exactly k residual branches, so path length ~ Binomial(n, 1/2).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def path_counts(n: int) -> list[int]:
    """C(n, k) for k = 0..n, as exact integers (2^54 overflows nothing in Python)."""
    return [math.comb(n, k) for k in range(n + 1)]


def path_length_distribution(n: int) -> np.ndarray:
    """P(length = k) = C(n, k) / 2^n, k = 0..n (F6a)."""
    return np.array([math.comb(n, k) / 2**n for k in range(n + 1)])


def probability_in_range(n: int, lo: int, hi: int) -> float:
    """P(lo <= length <= hi); e.g. n=54, 19..35 -> 0.980."""
    return sum(math.comb(n, k) for k in range(max(lo, 0), min(hi, n) + 1)) / 2**n


def surviving_fraction(n: int, deleted: int, length: int) -> float:
    """Fraction of length-x paths that avoid every deleted block: C(n-d, x) / C(n, x) (F7)."""
    if not 0 <= length <= n:
        raise ValueError(f"path length {length} out of range 0..{n}")
    return math.comb(n - deleted, length) / math.comb(n, length)


def log10_mean(log10_values: Sequence[float]) -> float:
    """log10 of the mean of 10**v, computed without overflow or underflow."""
    v = np.asarray(log10_values, dtype=np.float64)
    v = v[np.isfinite(v)] if np.isfinite(v).any() else v
    top = v.max()
    return float(top + np.log10(np.mean(10.0 ** (v - top))))


def log10_total_contribution(n: int, log10_mean_norm: Sequence[float]) -> np.ndarray:
    """log10 of (number of paths of length k) x (mean gradient norm of length k), k = 0..len-1 (F6c)."""
    m = np.asarray(log10_mean_norm, dtype=np.float64)
    counts = np.array([math.log10(math.comb(n, k)) for k in range(len(m))])
    return counts + m


def contribution_fractions(log10_contribution: Sequence[float]) -> np.ndarray:
    """Each length's share of the total gradient, from log10 contributions."""
    v = np.asarray(log10_contribution, dtype=np.float64)
    w = 10.0 ** (v - np.nanmax(v))
    w[~np.isfinite(w)] = 0.0
    return w / w.sum()


def effective_range(fractions: Sequence[float], mass: float = 0.9) -> tuple[int, int]:
    """Shortest contiguous range of path lengths holding ``mass`` of the total (ties: leftmost)."""
    f = np.asarray(fractions, dtype=np.float64)
    best = (0, len(f) - 1)
    for lo in range(len(f)):
        total = 0.0
        for hi in range(lo, len(f)):
            total += f[hi]
            if total >= mass - 1e-12:
                if hi - lo < best[1] - best[0]:
                    best = (lo, hi)
                break
    return best

"""Verdicts on the papers' claims, computed from the tables with thresholds stated here.

Every verdict is one of "reproduced", "not reproduced" or "not run", with the numbers
that decided it and the paper's reference value beside them (PAPERS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from .results import CRITICAL_RISE, EFFECTIVE_MASS, Results

# thresholds, in error points (percentage points) unless said otherwise; CRITICAL_RISE and
# EFFECTIVE_MASS, which define a run's facts, are stated in results.py
ROBUST_RISE = 5.0           # "no noticeable change": a rise below this ...
ROBUST_SHARE = 0.9          # ... for at least this share of the ordinary blocks
PLAIN_COLLAPSE = 0.7        # plain net: median error after one deletion at least this (chance ~0.9)
SMOOTH_RHO = 0.9            # F5a: Spearman correlation of mean error with k at least this
SMOOTH_STEP = 15.0          # F5a: no step between consecutive k larger than this
TAU_RHO = -0.5              # F5b: Spearman correlation of error with Kendall tau at most this
GRAD_R2 = 0.9               # F6b: straight line in log10 norm vs k explains at least this


@dataclass
class Claim:
    key: str
    paper: str        # what the paper says (PAPERS.md)
    result: str       # what the data says, in numbers
    verdict: str      # reproduced | not reproduced | not run
    rule: str         # the threshold that decided

    @property
    def line(self) -> str:
        return f"{self.paper}: {self.result}: {self.verdict}"


def residual_runs(results: Results, mode: str | None = "normal") -> list[str]:
    """Residual runs trained in ``mode`` (None: any); ``normal`` includes networks trained normally
    elsewhere and imported (mode ``pretrained``)."""
    modes = {mode, "pretrained"} if mode == "normal" else {mode}
    return [r for r, m in zip(results.runs["run_id"], results.runs["mode"])
            if not results.structure(r).plain and (mode is None or m in modes)]


def plain_runs(results: Results) -> list[str]:
    return [r for r in results.runs["run_id"] if results.structure(r).plain]


def f3_resnet(results: Results) -> Claim:
    paper = "F3 single-block deletion barely hurts a ResNet (except downsampling blocks)"
    runs = [r for r in residual_runs(results) if r in set(results.study("single_deletion")["run_id"])]
    if not runs:
        return Claim("F3-resnet", paper, "no single-deletion results on a residual run", "not run", "")
    parts, ok, any_critical = [], True, False
    for r in runs:
        crit = results.critical_blocks(r)
        apart = set(results.structure(r).downsampling) | set(crit)
        rest = [rise for b, rise in results.single_deletion_rises(r).items() if b not in apart]
        share = float(np.mean([x < ROBUST_RISE for x in rest])) if rest else 0.0
        ok &= share >= ROBUST_SHARE
        any_critical |= bool(crit)
        parts.append(f"{results.name(r)}: {share:.0%} of {len(rest)} ordinary blocks rise < {ROBUST_RISE:g} "
                     f"points (max {max(rest, default=0):.1f}); critical blocks {[b + 1 for b in crit] or 'none'}")
    verdict = ("partly reproduced: not for the critical blocks" if ok and any_critical
               else "reproduced" if ok else "not reproduced")
    return Claim("F3-resnet", paper, "; ".join(parts), verdict,
                 f"at least {ROBUST_SHARE:.0%} of the blocks that neither downsample nor are critical rise < "
                 f"{ROBUST_RISE:g} points; a block rising > {CRITICAL_RISE:g} points is critical and reported apart")


def f3_plain(results: Results) -> Claim:
    paper = "F3 deleting any layer of the plain net sends it to chance (~90%)"
    f3 = results.study("single_deletion")
    runs = [r for r in plain_runs(results) if r in set(f3["run_id"])]
    if not runs:
        return Claim("F3-plain", paper, "no plain net in the experiment", "not run", "")
    med = {r: float(f3[f3["run_id"] == r]["error"].median()) for r in runs}
    ok = all(m >= PLAIN_COLLAPSE for m in med.values())
    result = "; ".join(f"{results.name(r)}: median error {100 * m:.1f}%" for r, m in med.items())
    return Claim("F3-plain", paper, result, "reproduced" if ok else "not reproduced",
                 f"median error after one deletion >= {100 * PLAIN_COLLAPSE:.0f}%")


def _smooth(rows: pd.DataFrame) -> tuple[bool, str]:
    """F5a's test on random deletions: (smooth enough, the numbers that decided)."""
    means = rows.groupby("k")["error"].mean()
    rho = spearmanr(means.index, means.values).statistic if len(means) > 2 else float("nan")
    step = 100 * float(np.max(np.abs(np.diff(means.values)))) if len(means) > 1 else 0.0
    at10 = f", k=10 {100 * means.get(10, float('nan')):.1f}%" if 10 in means.index else ""
    return bool(rho >= SMOOTH_RHO and step <= SMOOTH_STEP), f"Spearman {rho:.2f}, largest step {step:.1f} points{at10}"


def f5a(results: Results) -> Claim:
    paper = "F5a error rises smoothly with the number of deleted blocks (k=10 -> ~20%)"
    d = results.study("random_deletion")
    runs = [r for r in residual_runs(results) if r in set(d["run_id"])]
    if not runs:
        return Claim("F5a", paper, "no random-deletion results", "not run", "")
    parts, ok, ok_avoiding, any_avoiding = [], True, True, False
    for r in runs:
        rows = d[d["run_id"] == r]
        good, text = _smooth(rows)
        ok &= good
        part = f"{results.name(r)}: {text}"
        crit = set(results.critical_blocks(r))
        if crit:
            avoiding = rows[rows["deleted"].map(lambda b: not crit & set(int(x) for x in b))]
            if avoiding["k"].nunique() > 2:
                good_a, text_a = _smooth(avoiding)
                ok_avoiding &= good_a
                any_avoiding = True
                part += f" (draws avoiding critical blocks: {text_a})"
        parts.append(part)
    verdict = ("reproduced" if ok else "partly reproduced: only away from the critical blocks"
               if ok_avoiding and any_avoiding else "not reproduced")
    return Claim("F5a", paper, "; ".join(parts), verdict,
                 f"Spearman(k, mean error) >= {SMOOTH_RHO} and no step > {SMOOTH_STEP:g} points")


def f5b(results: Results) -> Claim:
    paper = "F5b error rises smoothly as Kendall tau of the reordering falls"
    d = results.study("reorder")
    runs = [r for r in residual_runs(results) if r in set(d["run_id"])]
    if not runs:
        return Claim("F5b", paper, "no reorder results", "not run", "")
    parts, ok = [], True
    for r in runs:
        rows = d[d["run_id"] == r]
        rho = spearmanr(rows["kendall_tau"], rows["error"]).statistic
        ok &= bool(rho <= TAU_RHO)
        parts.append(f"{results.name(r)}: Spearman(tau, error) {rho:.2f}, tau {rows['kendall_tau'].min():.2f}"
                     f"..{rows['kendall_tau'].max():.2f}")
    return Claim("F5b", paper, "; ".join(parts), "reproduced" if ok else "not reproduced",
                 f"Spearman(tau, error) <= {TAU_RHO}")


def f6(results: Results) -> list[Claim]:
    paper_b = "F6b gradient magnitude falls exponentially with path length"
    paper_c = "F6c almost all gradient comes from short paths (5-17 of 54 blocks, 0.45% of paths)"
    runs = [r for r in residual_runs(results) if r in set(results.gradients["run_id"])]
    if not runs:
        return [Claim("F6b", paper_b, "no gradient results", "not run", ""),
                Claim("F6c", paper_c, "no gradient results", "not run", "")]
    parts_b, parts_c, ok_b, ok_c = [], [], True, True
    for r in runs:
        prof, n = results.gradient_profile(r), results.structure(r).num_blocks
        slope, intercept = np.polyfit(prof["k"], prof["log10_mean"], 1)
        pred = slope * prof["k"] + intercept
        ss = float(((prof["log10_mean"] - prof["log10_mean"].mean()) ** 2).sum())
        r2 = 1 - float(((prof["log10_mean"] - pred) ** 2).sum()) / ss if ss else 0.0
        ok_b &= bool(slope < 0 and r2 >= GRAD_R2)
        parts_b.append(f"{results.name(r)}: x{10 ** slope:.2f} per block (R^2 {r2:.2f})")
        eff = results.effective_paths(r)
        ok_c &= eff.hi < n / 2
        parts_c.append(f"{results.name(r)}: {EFFECTIVE_MASS:.0%} of the gradient from paths of "
                       f"{eff.lo}-{eff.hi} blocks, {100 * eff.share:.2f}% of all paths")
    return [Claim("F6b", paper_b, "; ".join(parts_b), "reproduced" if ok_b else "not reproduced",
                  f"slope < 0 and R^2 >= {GRAD_R2} for log10 norm vs k"),
            Claim("F6c", paper_c, "; ".join(parts_c), "reproduced" if ok_c else "not reproduced",
                  f"the {EFFECTIVE_MASS:.0%} range lies below n/2 (the typical path length)")]


def f8(results: Results) -> Claim:
    paper = "F8 stochastic depth makes single-block deletion slightly less harmful"
    f3_runs = set(results.study("single_deletion")["run_id"])
    sd = [r for r in residual_runs(results, "stochastic_depth") if r in f3_runs]
    normal = [r for r in residual_runs(results, "normal") if r in f3_runs]
    if not sd or not normal:
        return Claim("F8", paper, "needs single deletions on a normal and a stochastic-depth run", "not run", "")

    def mean_rise(r):
        return float(np.mean(list(results.single_deletion_rises(r).values())))

    a, b = np.mean([mean_rise(r) for r in normal]), np.mean([mean_rise(r) for r in sd])
    return Claim("F8", paper, f"mean rise per deletion {a:.2f} points normally, {b:.2f} with stochastic depth",
                 "reproduced" if b <= a else "not reproduced", "mean rise with stochastic depth <= without")


def all_claims(results: Results) -> list[Claim]:
    from .effective_paths import t1_claim  # imported here: effective_paths builds on this module's Claim
    return [f3_resnet(results), f3_plain(results), f5a(results), f5b(results), *f6(results), f8(results),
            t1_claim(results)]

"""Intervals that decide verdicts: scipy's bootstrap, one place, one convention.

Every interval is a 95% percentile bootstrap (``scipy.stats.bootstrap``) with a fixed seed, so a
report is the same each time it is written. Percentile, not BCa: with three seeds BCa's
jackknife is degenerate, and the same method everywhere keeps the verdicts comparable. A
sample of one value has no interval: (nan, nan), and the verdicts say so; samples of several equal values
have a point interval (every resample is the sample itself). Rank correlations (a proxy against real costs) and
the shares' values resample here with the same seed and percentiles, since a resample with nothing to rank (nan)
is left out rather than voiding the interval, and a unit's share needs its resamples kept whole.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 20160101


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% bootstrap interval; lo/hi are nan when there is no spread to resample."""

    estimate: float
    lo: float
    hi: float
    n: int                      # values (draws, seeds, blocks) behind it
    undefined: str = ""         # why there is no interval where neither one value nor no spread says it

    @property
    def known(self) -> bool:
        return bool(np.isfinite(self.lo) and np.isfinite(self.hi))

    def above(self, threshold: float) -> bool:
        """The whole interval lies above ``threshold``."""
        return self.known and self.lo > threshold

    def below(self, threshold: float) -> bool:
        return self.known and self.hi < threshold

    def scaled(self, factor: float) -> "Interval":
        return Interval(self.estimate * factor, self.lo * factor, self.hi * factor, self.n, self.undefined)

    def text(self, digits: int = 1, unit: str = "") -> str:
        """``12.3 [10.1, 14.0]`` (or the estimate alone, with the reason, when there is no interval)."""
        f = f"{{:.{digits}f}}"
        if not self.known:
            why = self.undefined or ("one value" if self.n <= 1 else "no spread")
            return f"{f.format(self.estimate)}{unit} (no interval: {why})"
        return f"{f.format(self.estimate)}{unit} [95% CI {f.format(self.lo)}, {f.format(self.hi)}]"


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable, paired: bool = False,
               vectorized: bool = True) -> tuple[float, float]:
    if min(len(s) for s in samples) < 2:
        return float("nan"), float("nan")
    if all(np.ptp(s) == 0 for s in samples):  # every resample is the sample itself: the interval is a point
        value = float(statistic(*samples))
        return value, value
    res = stats.bootstrap(samples, statistic, paired=paired, vectorized=vectorized, confidence_level=CONFIDENCE,
                          n_resamples=RESAMPLES, method="percentile", rng=np.random.default_rng(SEED))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_interval(values) -> Interval:
    """The mean of ``values`` and its interval (over draws, seeds or blocks)."""
    x = np.asarray(values, dtype=float)
    lo, hi = _bootstrap((x,), lambda v, axis=-1: np.mean(v, axis=axis))
    return Interval(float(np.mean(x)) if len(x) else float("nan"), lo, hi, len(x))


def median_interval(values) -> Interval:
    x = np.asarray(values, dtype=float)
    lo, hi = _bootstrap((x,), lambda v, axis=-1: np.median(v, axis=axis))
    return Interval(float(np.median(x)) if len(x) else float("nan"), lo, hi, len(x))


def difference_interval(a, b) -> Interval:
    """mean(b) - mean(a), each sample resampled on its own (two groups of seeds, say)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    lo, hi = _bootstrap((a, b), lambda x, y, axis=-1: np.mean(y, axis=axis) - np.mean(x, axis=axis))
    return Interval(float(np.mean(b) - np.mean(a)), lo, hi, min(len(a), len(b)))


def paired_difference_interval(a, b) -> Interval:
    """mean(b - a) over pairs (the same blocks of two runs, say)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    return mean_interval(d)


def spearman_interval(x, y) -> Interval:
    """Spearman's rho of paired values and its interval (pairs resampled together)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), len(x))

    def rho(a, b, axis=-1):
        """spearmanr's statistic (Pearson's r of the tie-averaged ranks) along ``axis``: all resamples at once;
        nan, as spearmanr says, for a resample with no spread."""
        ra, rb = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
        ra, rb = ra - ra.mean(axis=axis, keepdims=True), rb - rb.mean(axis=axis, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (ra * rb).sum(axis=axis) / np.sqrt((ra * ra).sum(axis=axis) * (rb * rb).sum(axis=axis))

    lo, hi = _bootstrap((x, y), rho, paired=True)
    return Interval(float(stats.spearmanr(x, y).statistic), lo, hi, len(x))


def slope_interval(x, y) -> Interval:
    """The least-squares slope of y on x (``scipy.stats.linregress``) with its 95% t interval."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), len(x))
    fit = stats.linregress(x, y)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(x) - 2) * fit.stderr)
    return Interval(float(fit.slope), float(fit.slope) - half, float(fit.slope) + half, len(x))


def resampled_interval(n: int, statistic: Callable[[np.ndarray], float]) -> Interval:
    """Bootstrap over ``n`` units (draws, say) of a statistic of their indices: for statistics of
    whole profiles (a slope fitted to per-k means), where each unit contributes a row."""
    idx = np.arange(n)
    estimate = float(statistic(idx))
    lo, hi = _bootstrap((idx,), lambda i: float(statistic(np.asarray(i, dtype=int))), vectorized=False)
    return Interval(estimate, lo, hi, n)


def share_interval(successes: int, trials: int) -> Interval:
    """A proportion with its exact (Clopper-Pearson) 95% interval: the share of blocks that ...."""
    if trials == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    ci = stats.binomtest(successes, trials).proportion_ci(confidence_level=CONFIDENCE)
    return Interval(successes / trials, float(ci.low), float(ci.high), trials)




def paired_ratio_interval(a, b) -> Interval:
    """mean(b) / mean(a) over pairs (a plan's accuracy relative to the intact model's, over the same documents),
    pairs resampled together; nan when mean(a) is 0, and no interval when some resample's mean(a) is (a handful of
    documents): the ratio is undefined there."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not len(a) or a.mean() == 0:
        return Interval(float("nan"), float("nan"), float("nan"), len(a))

    def ratio(x, y, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.mean(y, axis=axis) / np.mean(x, axis=axis)

    with warnings.catch_warnings():   # scipy warns of the undefined resamples; the interval says it has none
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        lo, hi = _bootstrap((a, b), ratio, paired=True)
    undefined = "" if np.isfinite(lo) or len(a) < 2 else "the ratio is undefined in some resamples"
    return Interval(float(b.mean() / a.mean()), lo, hi, len(a), undefined)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """McNemar's exact test of two paired binary outcomes: the two-sided p of the discordant pairs (right by the
    first alone, right by the second alone) under an even split (``scipy.stats.binomtest``); 1 with none."""
    n = only_first + only_second
    return float(stats.binomtest(only_first, n, 0.5).pvalue) if n else 1.0


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p values (each adjusted p is compared with the level itself):
    controls the chance of any false rejection in the family, whatever their dependence."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    m = len(p)
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of ``x`` against each row of ``y`` (ties averaged); nan for a row with no spread."""
    rx = stats.rankdata(x, axis=-1)
    ry = stats.rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(axis=-1, keepdims=True), ry - ry.mean(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rx * ry).sum(axis=-1) / np.sqrt((rx * rx).sum(axis=-1) * (ry * ry).sum(axis=-1))


def _kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``x`` against the same row of ``y`` (all pairs at once: rows of a few hundred
    values); nan for a row with no spread."""
    x, y = np.atleast_2d(x), np.atleast_2d(y)
    sx = np.sign(x[:, :, None] - x[:, None, :]).astype(np.int8)
    sy = np.sign(y[:, :, None] - y[:, None, :]).astype(np.int8)
    concordant = (sx.astype(np.int32) * sy).sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return concordant / np.sqrt((sx != 0).sum(axis=(1, 2)) * (sy != 0).sum(axis=(1, 2)).astype(float))


RANK_CORRELATIONS = {"spearman": _spearman_rows, "kendall": _kendall_rows}


def _resampled_rank_interval(statistic: Callable[[np.ndarray], np.ndarray], n: int) -> tuple[float, float]:
    """The 95% percentile interval of ``statistic`` (of resamples x n indices, one value per resample) over RESAMPLES
    resamples of ``n`` items, in batches; a resample with no spread to rank (nan) is left out, as spearmanr's nan
    says it ranks nothing."""
    rows = resampled_rows(n)
    values = np.concatenate([statistic(rows[i:i + 200]) for i in range(0, len(rows), 200)])
    values = values[np.isfinite(values)]
    if len(values) < RESAMPLES / 2:
        return float("nan"), float("nan")
    tail = 100 * (1 - CONFIDENCE) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def rank_correlation_interval(x, y, method: str = "spearman") -> Interval:
    """Spearman's rho or Kendall's tau-b of paired values (``scipy.stats``), its interval resampling the pairs
    together (the units or spans being ranked)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), len(x))
    estimate = stats.spearmanr(x, y).statistic if method == "spearman" else stats.kendalltau(x, y).statistic
    rows = RANK_CORRELATIONS[method]
    lo, hi = _resampled_rank_interval(lambda i: rows(x[i], y[i]), len(x))
    return Interval(float(estimate), lo, hi, len(x))


def document_rank_correlation_interval(x, intact, correct, method: str = "spearman") -> Interval:
    """The rank correlation of ``x`` (one value per plan) with each plan's accuracy drop from the intact model
    (``intact``: documents; ``correct``: plans x documents, right or wrong), its interval resampling the documents
    (every plan's answers to a document stay together)."""
    x = np.asarray(x, dtype=float)
    intact, correct = np.asarray(intact, dtype=float), np.asarray(correct, dtype=float)
    drop = intact.mean() - correct.mean(axis=1)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(drop) == 0:
        return Interval(float("nan"), float("nan"), float("nan"), intact.size)
    rows = RANK_CORRELATIONS[method]

    def statistic(docs: np.ndarray) -> np.ndarray:                  # resamples x documents
        drops = intact[docs].mean(axis=-1)[:, None] - correct[:, docs].mean(axis=-1).T   # resamples x plans
        return rows(np.broadcast_to(x, drops.shape), drops)

    estimate = float(statistic(np.arange(intact.size)[None])[0])
    lo, hi = _resampled_rank_interval(statistic, intact.size)
    return Interval(estimate, lo, hi, intact.size)


def stratified_weights(strata) -> np.ndarray:
    """Bootstrap weights (resamples x values): each resample draws, within each stratum (the draws of one k), as
    many values as it holds, with replacement; a value's weight is how often it was drawn. Fixed seed."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(SEED)
    weights = np.zeros((RESAMPLES, len(strata)))
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), RESAMPLES)
    return weights


def percentile_bounds(replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 95% percentile interval of bootstrap replicates (resamples along axis 0), nan where some are nan."""
    tail = 100 * (1 - CONFIDENCE) / 2
    return np.percentile(replicates, tail, axis=0), np.percentile(replicates, 100 - tail, axis=0)


def resampled_rows(count: int) -> np.ndarray:
    """Bootstrap resamples of ``count`` rows (permutations, say) as row indices (resamples x count), fixed seed:
    every statistic of the rows is computed on the same resamples."""
    return np.random.default_rng(SEED).integers(0, count, (RESAMPLES, count))

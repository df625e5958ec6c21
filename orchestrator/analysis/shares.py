"""Each unit's share of the damage when several are deleted together: Banzhaf values from the random deletions,
Shapley values from the shares study's permutations, each with a bootstrap interval.

The cost of a set of deleted units is the rise of ``Results.measure`` over the intact network (error points for
images, next-token loss in nats for a language model); the intact network costs 0.

Banzhaf (from random_deletion's draws of k units, drawn uniformly without replacement): a unit's marginal cost at k
is the mean cost of the draws of k units that delete it minus the mean cost of the draws of k - 1 that keep it
(the intact network for k = 1). For draws of uniform random sets this estimates the unit's mean marginal
contribution E[v(T + u) - v(T)] over sets T of k - 1 other units. (Draws of the same k that keep the unit would
hold one more unit: their difference is the unit's cost minus the mean of the others', not its own.) The value is
the mean over the drawn k with both sides: a semivalue weighting those sizes equally, Banzhaf's weighting only
where every size is drawn as often as the binomial says; for additive costs every weighting gives each unit's own
cost. Interval: draws resampled within each k.

Shapley (permutation sampling, Castro et al. 2009): each permutation of the deletion pool deletes its first k units
for k = 0..n; the unit added at step k is charged cost(k) - cost(k - 1); the value is its mean over permutations,
unbiased for the Shapley value, which splits an interaction between units equally among them. Interval:
permutations resampled. Both assume the units' costs are measured without noise of their own (the lesion table
keeps one value per set: an interval covers the sampling of sets, not of the test set).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import Interval, percentile_bounds, resampled_rows, stratified_weights

TOP_UNITS = 0.10     # concentration: the share of the total held by this share of the units (the largest values)


@dataclass(frozen=True, eq=False)
class Shares:
    """One estimator's values for one run's units, with the bootstrap replicates behind their intervals."""

    run_id: str
    estimator: str              # Banzhaf | Shapley
    units: np.ndarray           # 0-based units with a value
    values: np.ndarray          # the estimate per unit
    replicates: np.ndarray      # resamples x units
    samples: int                # draws or permutations behind it
    over: str                   # what the interval resamples

    def intervals(self) -> list[Interval]:
        lo, hi = percentile_bounds(self.replicates)
        return [Interval(float(v), float(a), float(b), self.samples) for v, a, b in zip(self.values, lo, hi)]

    def concentration(self) -> Interval:
        """The share of the damage held by the top TOP_UNITS of units (the largest), each resample ranking its own
        values. The damage is the sum of the positive values: a unit whose deletion helps (a negative value, as
        deleting attention can in a small language model) holds none of it, and cannot push a share past 100%."""
        top = max(1, math.ceil(TOP_UNITS * len(self.units)))

        def share(values: np.ndarray) -> np.ndarray:
            ordered = -np.sort(-values, axis=-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                return ordered[..., :top].clip(min=0).sum(axis=-1) / ordered.clip(min=0).sum(axis=-1)

        lo, hi = percentile_bounds(share(self.replicates))
        return Interval(float(share(self.values)), float(lo), float(hi), self.samples)


def _costs(results: Results, run_id: str, rows: pd.DataFrame) -> np.ndarray:
    return results.measure.of(rows[results.measure.column]) - results.intact_value(run_id)


def banzhaf(results: Results, run_id: str) -> Shares | None:
    """Banzhaf values from the run's random deletions; None without them."""
    rows = results.study("random_deletion")
    rows = rows[rows["run_id"] == run_id]
    if not len(rows):
        return None
    n = results.structure(run_id).num_blocks
    member = np.zeros((len(rows), n))
    for i, deleted in enumerate(rows["deleted"]):
        member[i, [int(b) for b in deleted]] = 1
    k, cost = rows["k"].to_numpy(int), _costs(results, run_id, rows)
    weights = np.vstack([np.ones(len(rows)), stratified_weights(k)])   # row 0: the sample itself

    def mean_cost(at: int, deleted: bool) -> np.ndarray:
        """Mean cost of the draws of ``at`` units that delete (or keep) each unit: resamples+1 x units."""
        if at == 0:
            return np.zeros((len(weights), n))
        m = member[k == at] if deleted else 1 - member[k == at]
        w = weights[:, k == at]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (w * cost[k == at]) @ m / (w @ m)

    ks = sorted(set(k))
    marginals = [mean_cost(j, True) - mean_cost(j - 1, False) for j in ks if j - 1 == 0 or j - 1 in ks]
    if not marginals:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a unit no draw of some k deletes: that k leaves it out
        value = np.nanmean(np.stack(marginals), axis=0)
    units = np.flatnonzero(member.any(axis=0) & np.isfinite(value[0]))
    return Shares(run_id, "Banzhaf", units, value[0, units], value[1:, units], len(rows),
                  "random draws, resampled within each k")


def shapley(results: Results, run_id: str) -> Shares | None:
    """Shapley values from the run's shares study (a permutation per draw, its prefixes by k); None without it."""
    rows = results.study("shares")
    rows = rows[rows["run_id"] == run_id]
    if not len(rows):
        return None
    n = results.structure(run_id).num_blocks
    cost = pd.Series(_costs(results, run_id, rows), index=rows.index)
    charged = []
    for _, chain in rows.sort_values("k").groupby("draw"):
        marginal = np.full(n, np.nan)
        before, previous = set(), 0.0
        for j, (k, deleted) in enumerate(zip(chain["k"], chain["deleted"])):
            now = {int(b) for b in deleted}
            added = now - before
            if len(added) == 1 and now >= before:
                marginal[added.pop()] = cost[chain.index[j]] - previous
            before, previous = now, cost[chain.index[j]]
        charged.append(marginal)
    charged = np.array(charged)
    units = np.flatnonzero(np.isfinite(charged).any(axis=0))
    charged = charged[:, units]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # a unit some resample never charges: no value there
        replicates = np.nanmean(charged[resampled_rows(len(charged))], axis=1)
    return Shares(run_id, "Shapley", units, np.nanmean(charged, axis=0), replicates, len(charged),
                  "permutations, resampled")


def run_shares(results: Results) -> dict[str, list[Shares]]:
    """Each run with shares: its estimators' values, Shapley first."""
    def compute():
        found = {}
        for r in results.runs["run_id"]:
            values = [s for s in (shapley(results, r), banzhaf(results, r)) if s is not None]
            if values and not results.structure(r).plain:
                found[r] = values
        return found
    return results.computed("shares", compute)

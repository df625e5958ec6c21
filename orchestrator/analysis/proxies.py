"""One-forward proxies against real deletions: does a score read off the intact network rank deletions as deleting
them does (PAPERS.md P1)?

The proxies table holds, per run, each unit's block influence (ShortGPT's 1 - cos(input, output)), relative
magnitude ||f(x)|| / ||x + f(x)|| and cosine, and Gromov et al.'s angular distance d(start, length) of every span.
Each is read as a predicted cost (a higher BI, relative magnitude or angular distance predicts a costlier deletion;
a higher cosine a cheaper one) and ranked against each real cost the run has: over its single-unit deletions (the
per-unit proxies) and over its spans of each length (angular distance). Real costs: the rise of error and of loss
over the intact network and KL from it (lesion table), and each task's accuracy drop (tasks tables).

Intervals: for task accuracy, over the task's documents (task_samples); otherwise over the units or spans being
ranked, since the lesion table keeps no per-example costs: that interval covers which units were measured, not the
test set's sampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import Interval, document_rank_correlation_interval, rank_correlation_interval
from orchestrator.analysis.tasks import accuracy, paired_documents

# proxy -> (its name in words, the sign that makes it a predicted cost)
PROXIES = {"block_influence": ("block influence", 1.0), "relative_magnitude": ("relative magnitude", 1.0),
           "cosine": ("cosine", -1.0), "angular_distance": ("angular distance", 1.0)}
UNIT_PROXIES = ("block_influence", "relative_magnitude", "cosine")
THRESHOLD = 0.5        # P1: Spearman's rho whose 95% interval lies above it ranks as deletion does, below misleads
TOP_SHARE = 0.25       # top-k overlap: k is this share of the units or spans (ShortGPT removes about a quarter)
RANKS = "the proxy ranks deletions as deleting them does"
MISLEADS = "the proxy misleads"
NOT_RESOLVED = "not resolved on this data"


@dataclass(frozen=True, eq=False)
class Scope:
    """A run's deletions of one kind ranked together: its single units (length 0) or its spans of ``length``
    layers, each with the proxies' values and the real costs."""

    run_id: str
    length: int                 # 0: single units; n: spans of n layers
    plans: pd.DataFrame         # plan, k, draw, item (unit, or first layer), one column per proxy and per cost
    proxies: tuple[str, ...]    # the proxies measured on these items
    costs: dict[str, str]       # cost column -> its unit, for the lesion table's costs
    documents: dict[str, tuple[np.ndarray, np.ndarray]]   # task -> (intact right [documents], plans' right
    #                                                          [plans x documents]) for tasks scoring every plan

    @property
    def text(self) -> str:
        return "single units" if self.length == 0 else f"spans of {self.length} layer{'s' * (self.length > 1)}"


@dataclass(frozen=True)
class Comparison:
    """One proxy against one real cost over one scope."""

    run_id: str
    scope: str
    proxy: str
    cost: str                   # e.g. "loss rise (nats)", "task acc drop: hellaswag"
    spearman: Interval
    kendall: Interval
    overlap: float              # share of the proxy's k cheapest among the real k cheapest
    top: int                    # k
    regret: float               # real cost of the proxy's cheapest minus the cheapest real cost
    unit: str                   # the cost's and the regret's unit: points | nats
    over: str                   # units | spans | documents

    @property
    def verdict(self) -> str:
        return (RANKS if self.spearman.above(THRESHOLD) else MISLEADS if self.spearman.below(THRESHOLD)
                else NOT_RESOLVED)

    @property
    def outcome(self) -> bool | None:
        return {RANKS: True, MISLEADS: False}.get(self.verdict)


def proxy_runs(results: Results) -> list[str]:
    """The runs with proxies, in the runs table's order."""
    measured = set(results.proxies["run_id"]) if len(results.proxies) else set()
    return [r for r in results.runs["run_id"] if r in measured]


def _lesion_costs(results: Results, run_id: str, rows: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``rows``' costs over the intact network: error rise (points), loss rise (nats), KL where every row has it."""
    intact = results.lesion[(results.lesion["run_id"] == run_id) & (results.lesion["study"] == "intact")]
    error = "next-token error" if results.measure.column == "loss" else "error"
    costs = {f"{error} rise": "points"}
    frame = pd.DataFrame({f"{error} rise": 100 * (rows["error"].to_numpy(float) - results.intact_error(run_id))},
                         index=rows.index)
    if len(intact) and np.isfinite(float(intact["loss"].iloc[0])) and np.isfinite(rows["loss"].astype(float)).all():
        frame["loss rise"] = rows["loss"].to_numpy(float) - float(intact["loss"].iloc[0])
        costs["loss rise"] = "nats"
    if "kl_from_intact" in rows and len(rows) and np.isfinite(rows["kl_from_intact"].astype(float)).all():
        frame["KL from intact"] = rows["kl_from_intact"].to_numpy(float)
        costs["KL from intact"] = "nats"
    return frame, costs


def scopes(results: Results, run_id: str) -> list[Scope]:
    """The run's single units and its spans of each length that both a proxy and a real deletion cover."""
    p = results.proxies[results.proxies["run_id"] == run_id]
    lesion = results.lesion[results.lesion["run_id"] == run_id]
    found = []
    single = lesion[lesion["study"] == "single_deletion"]
    spans = lesion[lesion["study"] == "span_deletion"]
    groups = [(0, single.assign(item=[int(d[0]) for d in single["deleted"]]), p[p["proxy"].isin(UNIT_PROXIES)])]
    for n in sorted(set(spans["k"].astype(int))):
        groups.append((n, spans[spans["k"] == n].assign(item=spans.loc[spans["k"] == n, "draw"].astype(int)),
                       p[(p["proxy"] == "angular_distance") & (p["length"] == n)]))
    for length, rows, measured in groups:
        if not len(rows) or not len(measured):
            continue
        values = measured.pivot_table(index="start", columns="proxy", values="value", aggfunc="first")
        rows = rows[rows["item"].isin(values.index)]
        if len(rows) < 1:
            continue
        costs, units = _lesion_costs(results, run_id, rows)
        plans = pd.concat([rows[["study", "k", "draw", "item"]].rename(columns={"study": "plan"}), costs], axis=1)
        plans = plans.join(values, on="item").reset_index(drop=True)
        documents = {}
        for task in sorted(set(accuracy(results).query("run_id == @run_id")["task"])):
            intact, correct = paired_documents(results, run_id, task, plans)
            if len(correct) == len(plans) and len(intact):
                index = pd.MultiIndex.from_frame(plans[["plan", "k", "draw"]].astype({"k": int, "draw": int}))
                correct = correct.loc[index]
                plans[f"task acc drop: {task}"] = 100 * (intact.mean() - correct.to_numpy(float).mean(axis=1))
                documents[task] = (intact, correct.to_numpy(float))
        found.append(Scope(run_id, length, plans, tuple(c for c in PROXIES if c in values.columns), units,
                           documents))
    return found


def _compare(scope: Scope, proxy: str, cost: str, task: str = "") -> Comparison:
    predicted = PROXIES[proxy][1] * scope.plans[proxy].to_numpy(float)
    real = scope.plans[cost].to_numpy(float)
    if task:
        intact, correct = scope.documents[task]
        rho, tau = (document_rank_correlation_interval(predicted, intact, correct, m) for m in ("spearman", "kendall"))
        over = "documents"
    else:
        rho, tau = (rank_correlation_interval(predicted, real, m) for m in ("spearman", "kendall"))
        over = "units" if scope.length == 0 else "spans"
    top = max(1, round(TOP_SHARE * len(real)))
    cheapest = set(np.argsort(predicted, kind="stable")[:top]) & set(np.argsort(real, kind="stable")[:top])
    regret = float(real[int(np.argmin(predicted))] - real.min())
    return Comparison(scope.run_id, scope.text, proxy, cost, rho, tau, len(cheapest) / top, top, regret,
                      scope.costs.get(cost, "points"), over)


def comparisons(results: Results) -> list[Comparison]:
    """Every proxy against every real cost over every scope of every run (computed once per Results)."""
    def compute():
        found = []
        for r in proxy_runs(results):
            for scope in scopes(results, r):
                for proxy in scope.proxies:
                    found += [_compare(scope, proxy, cost) for cost in scope.costs]
                    found += [_compare(scope, proxy, f"task acc drop: {t}", t) for t in scope.documents]
        return found
    return results.computed("proxy comparisons", compute)


def measure_disagreements(results: Results) -> list[str]:
    """Where loss and a task's accuracy rank the same deletions differently: their own Spearman rho, over the
    task's documents, lies below THRESHOLD."""
    lines = []
    for r in proxy_runs(results):
        for scope in scopes(results, r):
            if "loss rise" not in scope.costs:
                continue
            for task, (intact, correct) in scope.documents.items():
                rho = document_rank_correlation_interval(scope.plans["loss rise"].to_numpy(float), intact, correct)
                if rho.below(THRESHOLD):
                    lines.append(f"{results.name(r)}, {scope.text}: loss rise and {task} accuracy drop rank these "
                                 f"deletions differently (Spearman rho {rho.text(2)} over documents): which deletion "
                                 f"is cheap depends on the measure")
    return lines

"""The layer-pruning literature's one-forward proxies judged (PAPERS.md P1), and each unit's share of the damage:
the claim, its verdict lines per run, and the report's two sections.

P1 is judged per run, scope (single units; spans of each length), proxy and real cost (``proxies.py``): the
proxy ranks deletions as deleting them does where the 95% interval of Spearman's rho lies above 0.5, misleads where
it lies below, and is not resolved otherwise. Over all of them: "reproduced" where every comparison ranks as
deletion does, "not reproduced" where every one misleads, "partly reproduced: ..." where they differ.
"""
from __future__ import annotations

import pandas as pd

from orchestrator.analysis.claim import Claim
from orchestrator.analysis.prose import markdown_table, plural
from orchestrator.analysis.proxies import (NOT_RESOLVED, PROXIES, THRESHOLD, TOP_SHARE, Comparison, comparisons,
                                           measure_disagreements, proxy_runs)
from orchestrator.analysis.results import Results
from orchestrator.analysis.shares import TOP_UNITS, run_shares
from orchestrator.analysis.tasks import task_runs

NO_PROXIES = "no proxies study in this experiment (scores read off one intact forward pass)"
OVER = ("units or spans of one trained model, resampled (the lesion table keeps no per-example costs, so test-set "
        "sampling is not covered); documents for task accuracy (task_samples); another training is not covered")


def _verdict(found: list[Comparison]) -> str:
    ranks = sum(c.outcome is True for c in found)
    misleads = sum(c.outcome is False for c in found)
    if ranks + misleads == 0:
        return NOT_RESOLVED
    if ranks == len(found):
        return "reproduced"
    if misleads == len(found):
        return "not reproduced"
    return (f"partly reproduced: ranks as deletion does in {ranks} of {plural(len(found), 'comparison')}, misleads "
            f"in {misleads}, not resolved in {len(found) - ranks - misleads}")


def _main_cost(results: Results, found: list[Comparison]) -> str:
    """The cost the claim's line reads: what the lesion figures plot (loss rise for a language model, error rise for
    images), else the first the run has."""
    costs = [c.cost for c in found]
    wanted = "loss rise" if results.measure.column == "loss" else "error rise"
    return next((c for c in costs if c.endswith(wanted)), costs[0])


def p1(results: Results) -> Claim:
    paper = ("P1 one-forward proxies (block influence, angular distance, relative magnitude, cosine) rank layers by "
             "what deleting them costs")
    rule = (f"per run, for single-unit deletions and for spans of each length, Spearman's rho between the proxy (a "
            f"higher block influence, relative magnitude or angular distance predicts a costlier deletion; a higher "
            f"cosine a cheaper one) and each real cost (error and loss rise over intact, KL from intact, task accuracy "
            f"drop): its 95% bootstrap interval above {THRESHOLD} ranks as deletion does, below {THRESHOLD} misleads, "
            f"else not resolved; Kendall's tau, the overlap of the {TOP_SHARE:.0%} cheapest and the regret reported "
            f"beside")
    found = comparisons(results)
    if not proxy_runs(results):
        return Claim("P1", paper, NO_PROXIES, "not run", "")
    if not found:
        return Claim("P1", paper, "proxies measured, but no single-unit or span deletion of the same runs to judge "
                                  "them by", "cannot be computed: no real deletions", rule)
    parts = []
    several = len({c.run_id for c in found}) > 1   # one run's verdict is the claim's: said once
    for r in proxy_runs(results):
        mine = [c for c in found if c.run_id == r]
        if not mine:
            continue
        cost = _main_cost(results, mine)
        read = [f"{PROXIES[c.proxy][0]} on {c.scope} rho {c.spearman.text(2)}" for c in mine if c.cost == cost]
        parts.append(f"{results.name(r)} ({cost}): " + "; ".join(read) + (f"; {_verdict(mine)}" if several else ""))
    return Claim("P1", paper, ". ".join(parts), _verdict(found), rule, OVER)


def proxy_section(results: Results) -> list[str]:
    """The table of every comparison, the verdict lines per run, and where two real measures disagree."""
    found = comparisons(results)
    if not found:
        return []
    table = pd.DataFrame([{"run": results.name(c.run_id), "deletions": c.scope, "proxy": PROXIES[c.proxy][0],
                           "real cost": c.cost, "Spearman rho": c.spearman.text(2), "Kendall tau": c.kendall.text(2),
                           f"top-{TOP_SHARE:.0%} overlap": f"{c.overlap:.0%} of {c.top}",
                           "regret": f"{c.regret:+.3g} {c.unit}", "interval over": c.over, "verdict": c.verdict}
                          for c in found])
    lines = ["## Is the cheap proxy right? One-forward scores against real deletions", "",
             "Each proxy of the intact network (block influence 1 - cos(in, out), relative magnitude ||f(x)|| / "
             "||x + f(x)||, cosine, and Gromov et al.'s angular distance of a span) ranked against what deleting the "
             "units or spans really costs. Spearman's rho and Kendall's tau with 95% bootstrap intervals: over the "
             "units or spans ranked for the lesion table's costs (it keeps no per-example costs), over documents for "
             "task accuracy. Overlap: the share of the proxy's cheapest quarter among the really cheapest quarter. "
             "Regret: the real cost of deleting the proxy's cheapest choice minus the cheapest real choice of the same "
             "size (for spans, as Gromov et al. choose them).", ""] + markdown_table(table) + [""]
    for r in proxy_runs(results):
        mine = [c for c in found if c.run_id == r]
        by_scope: dict[tuple[str, str], list[Comparison]] = {}
        for c in mine:
            by_scope.setdefault((c.scope, c.proxy), []).append(c)
        lines += [f"- {results.name(r)}, {scope}, {PROXIES[proxy][0]}: "
                  + "; ".join(f"{c.cost} rho {c.spearman.text(2)}: {c.verdict}" for c in cs)
                  for (scope, proxy), cs in by_scope.items()]
    disagreements = measure_disagreements(results)
    lines += [""] + [f"- {d}" for d in disagreements] if disagreements else []
    if task_runs(results) and not disagreements:
        lines += ["", "Loss and task accuracy rank the judged deletions alike where both were measured (no Spearman "
                      f"interval of the two below {THRESHOLD})."]
    return lines + [""]


def shares_section(results: Results) -> list[str]:
    """Each run's units ranked by their share of the damage, with the estimators, their assumptions, and how
    concentrated the damage is."""
    found = run_shares(results)
    if not len(results.lesion):
        return []
    head = ["## Each unit's share of the damage", ""]
    if not found:
        return head + ["Not run: no random deletions (Banzhaf values) and no `shares` study (Shapley values by "
                       "permutation sampling) in this experiment.", ""]
    m = results.measure
    lines = head + [
        f"Cost of a set of deleted units: its rise in {m.label} over the intact network. **Banzhaf** (from the random "
        "deletions): per k, the mean cost of the draws of k units that delete the unit minus that of the draws of "
        "k - 1 that keep it (the intact network for k = 1), averaged over the drawn k; it assumes uniform random "
        "draws and weights the drawn sizes equally. **Shapley** (the `shares` study): each permutation of the "
        "deletion pool charges the unit added at step k with cost(k) - cost(k - 1); the mean over permutations is "
        "unbiased for the Shapley value, which splits an interaction equally among the units in it. Intervals: 95% "
        "bootstrap over draws (within each k) or permutations; each set's cost is measured once on a fixed test "
        f"set, so test-set sampling is not covered. Concentration: the share of the summed values held by the top "
        f"{TOP_UNITS:.0%} of units.", ""]
    for r, estimates in found.items():
        structure = results.structure(r)
        first = estimates[0]
        order = first.units[(-first.values).argsort(kind="stable")]
        table = pd.DataFrame({"rank": range(1, len(order) + 1), "unit": [structure.unit_text(int(u)) for u in order]})
        for s in estimates:
            by_unit = dict(zip(s.units.tolist(), s.intervals()))
            table[f"{s.estimator} ({m.rise})"] = [by_unit[u].text(3) if u in by_unit else "-" for u in order]
        lines += [f"### {results.name(r)}", ""]
        lines += [f"- {s.estimator} over {plural(s.samples, 'draw' if s.estimator == 'Banzhaf' else 'permutation')}: "
                  f"the top {TOP_UNITS:.0%} of units hold {s.concentration().scaled(100).text(0, '%')} of the damage "
                  f"(the sum of the positive values)"
                  for s in estimates] + [""]
        lines += markdown_table(table) + [""]
    return lines

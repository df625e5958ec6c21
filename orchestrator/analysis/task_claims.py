"""The layer-pruning literature's claims on task accuracy (PAPERS.md P2-P4), verdicted from the tasks tables
with thresholds stated here.

Each claim is judged per model and task, then over them: "reproduced" where every model and task the data can
decide agrees, "partly reproduced: ..." where they differ, "not resolved on this data" where none can be
decided. Intervals are over documents or random draws of one trained model: what another training, or another
task, would give is not covered. What a verdict says: ``claim.py``; the accuracy and paired documents:
``tasks.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analysis.claim import Claim
from orchestrator.analysis.prose import plural
from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import mean_interval, paired_ratio_interval
from orchestrator.analysis.tasks import PLAN, accuracy, paired_documents, plan_measures, task_runs, unit_kind

MIN_STEPS = 3        # P2: steps between consecutive k (the intact model is k = 0) needed to tell a collapse
KEEP_SHARE = 0.72    # P3: "most of the accuracy": Lad et al.'s lowest share kept after deleting one middle layer
NO_TASKS = "no tasks study in this experiment (its plans scored by lm-evaluation-harness)"


def _verdict(outcomes: list[bool | None], what: str) -> str:
    """Over models and tasks: True holds, False fails, None undecided."""
    decided = [o for o in outcomes if o is not None]
    if not decided:
        return "not resolved on this data"
    if all(decided) and len(decided) == len(outcomes):
        return "reproduced"
    if all(decided):
        return "not resolved on this data"
    if any(decided):
        return f"partly reproduced: on {sum(decided)} of {plural(len(outcomes), what)}"
    return "not reproduced"


def _over(runs: list[str], what: str) -> str:
    models = "one trained model" if len(runs) == 1 else f"each of {len(runs)} models on its own"
    return f"{what}, {models}: the variance between trainings and between tasks is not covered"


@dataclass(frozen=True)
class Shape:
    """How a curve over k (mean over draws, 95% band) falls: its largest step beyond its median step, in units of
    the two neighbouring bands' half-widths."""

    z: float         # (largest |step| - median |step|) / (half-widths at both ends of that step)
    at: int          # the k the largest step arrives at
    half: float      # the half-widths at that step, summed
    fall: float      # the curve's whole range

    @property
    def collapse(self) -> bool:
        """A step the bands cannot explain as part of a steady change."""
        return self.z > 1

    @property
    def smooth(self) -> bool:
        """No such step, with bands narrow enough that a step carrying half the change would have shown."""
        return self.z <= 1 and self.half < self.fall / 2


def shape(values: dict[int, np.ndarray]) -> Shape | None:
    """The Shape of a curve from its values per k (draws); None when a k has a single draw (no band)."""
    ks = sorted(values)
    curve = [(np.mean(values[0]), 0.0)] if 0 in values else []   # the intact model: one value, exact
    for k in ks:
        if k == 0:
            continue
        ci = mean_interval(values[k])
        if not ci.known:
            return None
        curve.append((ci.estimate, (ci.hi - ci.lo) / 2))
    mean, half = np.array([c[0] for c in curve]), np.array([c[1] for c in curve])
    steps = np.abs(np.diff(mean))
    j = int(np.argmax(steps))
    bands = half[j] + half[j + 1]
    excess = steps[j] - np.median(steps)
    z = excess / bands if bands > 0 else (np.inf if excess > 0 else 0.0)
    return Shape(float(z), ks[j + 1], float(bands), float(np.ptp(mean)))


def _shape_text(s: Shape, n: int, scale: float, unit: str) -> str:
    return (f"largest step {s.z:.1f} bands, at k={s.at} ({s.at / n:.0%} of the units; bands there "
            f"{scale * s.half:.2g} {unit} against a whole change of {scale * s.fall:.2g})")


def p2(results: Results) -> Claim:
    paper = "P2 accuracy collapses where next-token loss rises smoothly"
    rule = (f"per model and task, over random deletions of k units (the intact model as k=0): a curve's largest step "
            f"between consecutive k beyond its median step, in units of the two k's 95% bootstrap half-widths, is z; "
            f"accuracy collapses where z > 1, loss is smooth where z <= 1 with bands narrower than half its whole rise; "
            f"reproduced where accuracy collapses and loss is smooth, not where accuracy is smooth or loss steps too; at "
            f"least {MIN_STEPS} steps")
    acc = accuracy(results)
    runs = [r for r in task_runs(results) if ((acc["run_id"] == r) & (acc["plan"] == "random_deletion")).any()]
    if not runs:
        return Claim("P2", paper, NO_TASKS if not task_runs(results) else "no random deletions scored on tasks",
                     "not run", "")
    measures = plan_measures(results)
    parts, outcomes = [], []
    for r in runs:
        n = results.structure(r).num_blocks
        for task in sorted(set(acc.loc[acc["run_id"] == r, "task"])):
            rows = acc[(acc["run_id"] == r) & (acc["task"] == task) & acc["plan"].isin(["intact", "random_deletion"])]
            rows = rows.merge(measures, on=PLAN, how="left")
            name = f"{results.name(r)}, {task}"
            if rows["k"].nunique() < MIN_STEPS + 1 or rows["loss"].isna().any():
                why = "no next-token loss for its plans" if rows["loss"].isna().any() else "too few values of k"
                parts.append(f"{name}: {why}")
                continue
            a = shape({k: g["accuracy"].to_numpy(float) for k, g in rows.groupby("k")})
            loss = shape({k: g["loss"].to_numpy(float) for k, g in rows.groupby("k")})
            if a is None or loss is None:
                outcomes.append(None)
                parts.append(f"{name}: one draw at some k, no band")
                continue
            outcome = True if a.collapse and loss.smooth else False if a.smooth or (a.collapse and loss.collapse) \
                else None
            outcomes.append(outcome)
            parts.append(f"{name}: accuracy {_shape_text(a, n, 100, 'points')}; loss {_shape_text(loss, n, 1, 'nats')}")
    verdict = _verdict(outcomes, "model and task") if outcomes else "cannot be computed: too few values of k"
    return Claim("P2", paper, "; ".join(parts), verdict, rule,
                 _over(runs, "bootstrap bands over the random draws at each k"))


def _layer_plans(results: Results, run_id: str, task: str) -> tuple[pd.DataFrame, str]:
    """(plans that delete one layer, or else one unit, with the 0-based layer each deletes; "layer" or "unit")."""
    acc = accuracy(results)
    acc = acc[(acc["run_id"] == run_id) & (acc["task"] == task)]
    spans = acc[(acc["plan"] == "span_deletion") & (acc["k"] == 1)]
    if len(spans):
        return spans.assign(layer=spans["draw"]), "layer"
    units = acc[acc["plan"] == "single_deletion"]
    layer_of = results.structure(run_id).layer_of
    return units.assign(layer=[layer_of[int(d[0])] for d in units["deleted"]]), "unit"


def p3(results: Results) -> Claim:
    paper = "P3 deleting one layer that is neither first nor last keeps most of the accuracy (Lad et al.: 72-95%)"
    rule = (f"per model and task, each middle layer's deletion (a span of one layer; else each single unit) keeps "
            f"at least {KEEP_SHARE:.0%} of the intact accuracy: its 95% paired bootstrap interval of accuracy relative "
            f"to intact lies at or above {KEEP_SHARE:.0%} (below it: fails; across it: not resolved); the first and "
            f"last layers are reported beside, and whether one of them costs most")
    acc = accuracy(results)
    runs = [r for r in task_runs(results)
            if ((acc["run_id"] == r) & acc["plan"].isin(["single_deletion", "span_deletion"])).any()]
    if not runs:
        return Claim("P3", paper, NO_TASKS if not task_runs(results) else "no single deletions scored on tasks",
                     "not run", "")
    parts, outcomes = [], []
    for r in runs:
        last = results.structure(r).num_layers - 1
        for task in sorted(set(acc.loc[acc["run_id"] == r, "task"])):
            plans, noun = _layer_plans(results, r, task)
            intact, correct = paired_documents(results, r, task, plans)
            name = f"{results.name(r)}, {task}"
            if not len(correct) or not intact.any():
                parts.append(f"{name}: " + ("intact accuracy 0" if len(correct) else "no paired documents"))
                continue
            kept = {}
            for (plan, k, draw), row in correct.iterrows():
                layer = int(plans.loc[(plans["plan"] == plan) & (plans["k"] == k) & (plans["draw"] == draw),
                                      "layer"].iloc[0])
                kept.setdefault(layer, []).append(paired_ratio_interval(intact, row.to_numpy(float)))
            middle = [ci for layer, cis in kept.items() if 0 < layer < last for ci in cis]
            if not middle:
                parts.append(f"{name}: no middle layer deleted")
                continue
            held = [True if ci.lo >= KEEP_SHARE else False if ci.hi < KEEP_SHARE else None for ci in middle]
            outcomes.append(False if False in held else True if all(held) else None)
            worst = min(kept, key=lambda layer: min(ci.estimate for ci in kept[layer]))
            ends = "; ".join(f"{'first' if layer == 0 else 'last'} layer "
                             + ", ".join(ci.scaled(100).text(0, "%") for ci in kept[layer])
                             for layer in (0, last) if layer in kept)
            low = [ci for ci in middle if ci.hi < KEEP_SHARE]
            least, most = min(ci.estimate for ci in middle), max(ci.estimate for ci in middle)
            parts.append(f"{name}: {plural(len(middle), 'middle ' + noun + ' deletion')} keep "
                         f"{least:.0%}{f'-{most:.0%}' if f'{most:.0%}' != f'{least:.0%}' else ''} of the "
                         f"intact accuracy ({sum(h is True for h in held)} at or above {KEEP_SHARE:.0%}, {len(low)} "
                         f"below, over {plural(len(intact), 'document')}); {ends}; most damaging: layer {worst + 1}")
    verdict = (_verdict(outcomes, "model and task") if outcomes
               else "cannot be computed: no middle layer's deletion with paired documents")
    return Claim("P3", paper, "; ".join(parts), verdict, rule,
                 _over(runs, "paired bootstrap over the task's documents"))


def p4(results: Results) -> Claim:
    paper = "P4 attention sublayers can be deleted with less damage than MLP sublayers"
    rule = ("per model and task, the mean accuracy lost by deleting one attention unit minus that of one MLP unit, "
            "over the same documents: its 95% paired bootstrap interval (documents resampled) lies below 0 "
            "(above 0: not reproduced; across it: not resolved)")
    acc = accuracy(results)
    runs = [r for r in task_runs(results) if ((acc["run_id"] == r) & (acc["plan"] == "single_deletion")).any()]
    if not runs:
        return Claim("P4", paper, NO_TASKS if not task_runs(results) else "no single deletions scored on tasks",
                     "not run", "")
    parts, outcomes = [], []
    for r in runs:
        structure = results.structure(r)
        for task in sorted(set(acc.loc[acc["run_id"] == r, "task"])):
            plans = acc[(acc["run_id"] == r) & (acc["task"] == task) & (acc["plan"] == "single_deletion")]
            kinds = {(int(k), int(d)): unit_kind(structure, int(x[0]))
                     for k, d, x in plans[["k", "draw", "deleted"]].itertuples(index=False)}
            intact, correct = paired_documents(results, r, task, plans)
            name = f"{results.name(r)}, {task}"
            if not len(correct):
                parts.append(f"{name}: no paired documents")
                continue
            kind = np.array([kinds[(int(k), int(d))] for _, k, d in correct.index])
            right = correct.to_numpy(float)
            if not (kind == "attention").any() or not (kind == "MLP").any():
                parts.append(f"{name}: needs single deletions of both attention and MLP units")
                continue
            # lost accuracy per document: intact - plan, averaged over the units of a kind; the difference of the
            # two kinds is a mean over documents, so the paired bootstrap resamples documents
            attention = intact - right[kind == "attention"].mean(axis=0)
            mlp = intact - right[kind == "MLP"].mean(axis=0)
            diff = mean_interval(attention - mlp).scaled(100)
            outcomes.append(True if diff.below(0) else False if diff.above(0) else None)
            gain = " (negative: a gain)" if min(attention.mean(), mlp.mean()) < 0 else ""
            parts.append(f"{name}: an attention deletion loses {100 * attention.mean():.1f} points, an MLP deletion "
                         f"{100 * mlp.mean():.1f}{gain} (mean over {plural(int((kind == 'attention').sum()), 'attention unit')} "
                         f"and {plural(int((kind == 'MLP').sum()), 'MLP unit')}); difference {diff.text(1)} points "
                         f"over {plural(len(intact), 'document')}")
    verdict = _verdict(outcomes, "model and task") if outcomes else "cannot be computed: no paired documents"
    return Claim("P4", paper, "; ".join(parts), verdict, rule,
                 _over(runs, "paired bootstrap over the task's documents"))

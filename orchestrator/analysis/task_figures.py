"""Task accuracy's figures: against the single deleted unit (F3's shape), against the number of randomly deleted
units (F5a's shape, with bands), and against each plan's next-token loss and KL from the intact model (does
accuracy collapse while loss rises smoothly?). A panel per task; a figure the tables hold no data for is not
drawn (its function returns None)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from orchestrator.analysis.drawing import (STYLE, WIDTH, drawable, interval_band, legend_below, legend_handles,
                                           legend_height, new_figure, run_looks, save)
from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import mean_interval
from orchestrator.analysis.tasks import PLAN, accuracy, intact_accuracy, plan_measures, unit_kind

KIND_MARKERS = {"attention": "^", "MLP": "s"}          # a deleted unit's kind; any other kind: a circle
PLAN_MARKERS = {"intact": "*", "single_deletion": "o", "span_deletion": "s", "random_deletion": "^", "reorder": "D"}
PLAN_WORDS = {"intact": "intact model", "single_deletion": "one unit deleted", "span_deletion": "a span of layers",
              "random_deletion": "random units deleted", "reorder": "reordered units"}


def _panels(fig, count: int, cols: int):
    rows = -(-count // cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return axes[:count]


def _title(text: str, cols: int) -> str:
    """A panel title wrapped to the panel's width."""
    chars = int(72 * WIDTH / cols / (0.6 * STYLE["axes.titlesize"]))
    return textwrap.fill(drawable(text), max(chars, 20))


def _accuracy_axis(ax, metric: str) -> None:
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"accuracy (%, {metric})")


def _unit_axes(ax, title: str, xlabel: str, metric: str) -> None:
    """A panel whose x axis counts units (one deleted unit, or k of them) and whose y axis is accuracy."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _accuracy_axis(ax, metric)


def task_single_figure(results: Results, folder: Path) -> str | None:
    """A panel per task: accuracy after deleting each single unit, a line per model, attention and MLP units
    marked apart; dotted: the intact model."""
    acc = accuracy(results)
    rows = acc[acc["plan"] == "single_deletion"]
    if not len(rows):
        return None
    looks, intact = run_looks(results), intact_accuracy(results)
    runs = sorted(set(rows["run_id"]))
    tasks = sorted(set(rows["task"]))
    kinds = {unit_kind(results.structure(r), int(d[0])) for r, d in zip(rows["run_id"], rows["deleted"])}
    handles = legend_handles(looks, runs, seeds=False) + [
        Line2D([], [], color="0.3", marker=KIND_MARKERS.get(k, "o"), ls="none", ms=4, label=f"{k} unit deleted")
        for k in sorted(kinds)] + [Line2D([], [], color="0.3", ls=":", lw=1, label="intact model (dotted)")]
    cols = 1 if len(tasks) == 1 else 2
    fig = new_figure(legend_height(handles, 2.6 * -(-len(tasks) // cols) + 0.3))
    for ax, task in zip(_panels(fig, len(tasks), cols), tasks):
        on = rows[rows["task"] == task]
        for r in runs:
            d = on[on["run_id"] == r]
            if not len(d):
                continue
            unit = d["deleted"].map(lambda x: int(x[0]))
            d = d.assign(unit=unit).sort_values("unit")
            color = looks[r].color
            ax.plot(d["unit"] + 1, 100 * d["accuracy"], color=color, ls=looks[r].ls, lw=1)
            structure = results.structure(r)
            for kind, g in d.groupby(d["unit"].map(lambda u: unit_kind(structure, u))):
                ax.plot(g["unit"] + 1, 100 * g["accuracy"], KIND_MARKERS.get(kind, "o"), color=color, ms=4)
            if (r, task) in intact:
                ax.axhline(100 * intact[(r, task)], color=color, ls=":", lw=0.9)
        _unit_axes(ax, _title(task, cols), "deleted unit (1-based)", on["metric"].iloc[0])
    fig.suptitle(f"Task accuracy after deleting one unit ({results.dataset}; lm-evaluation-harness)")
    legend_below(fig, handles)
    return save(fig, folder, "tasks_single_deletion")


def task_random_figure(results: Results, folder: Path) -> str | None:
    """A panel per task: accuracy against the number of randomly deleted units, the mean over draws with its 95%
    bootstrap band, a line per model; dotted: the intact model."""
    acc = accuracy(results)
    rows = acc[acc["plan"] == "random_deletion"]
    if not len(rows):
        return None
    looks, intact = run_looks(results), intact_accuracy(results)
    runs, tasks = sorted(set(rows["run_id"])), sorted(set(rows["task"]))
    handles = legend_handles(looks, runs, seeds=False) + [
        Patch(color="0.3", alpha=0.2, label="band: 95% bootstrap interval of the mean over draws"),
        Line2D([], [], color="0.3", ls=":", lw=1, label="intact model (dotted)")]
    cols = 1 if len(tasks) == 1 else 2
    fig = new_figure(legend_height(handles, 2.6 * -(-len(tasks) // cols) + 0.3))
    for ax, task in zip(_panels(fig, len(tasks), cols), tasks):
        on = rows[rows["task"] == task]
        for r in runs:
            d = on[on["run_id"] == r]
            if not len(d):
                continue
            curve = [(k, mean_interval(g["accuracy"])) for k, g in d.groupby("k")]
            k = np.array([c[0] for c in curve], float)
            color = looks[r].color
            ax.plot(k, [100 * c[1].estimate for c in curve], marker="o", ms=3, color=color, ls=looks[r].ls)
            interval_band(ax, k, [c[1].lo for c in curve], [c[1].hi for c in curve], color, 0.18)
            if (r, task) in intact:
                ax.axhline(100 * intact[(r, task)], color=color, ls=":", lw=0.9)
        _unit_axes(ax, _title(task, cols), "number of deleted units k", on["metric"].iloc[0])
    fig.suptitle(f"Task accuracy after deleting k random units ({results.dataset}; lm-evaluation-harness)")
    legend_below(fig, handles)
    return save(fig, folder, "tasks_random_deletion")


def task_loss_figure(results: Results, folder: Path) -> str | None:
    """A row per task: accuracy against next-token loss, and against KL from the intact model where the lesion
    table has it; a point per plan, the model's colour, the plan's kind its marker."""
    scored = accuracy(results)
    if not len(scored):   # no tasks study: nothing to join (an empty join's columns are not numbers)
        return None
    joined = scored.merge(plan_measures(results), on=PLAN)
    joined = joined[np.isfinite(joined["loss"].astype(float))]
    if not len(joined):
        return None
    with_kl = bool(np.isfinite(joined["kl"].astype(float)).any())
    looks = run_looks(results)
    runs, tasks = sorted(set(joined["run_id"])), sorted(set(joined["task"]))
    plans = [p for p in PLAN_MARKERS if p in set(joined["plan"])]
    handles = legend_handles(looks, runs, seeds=False) + [
        Line2D([], [], color="0.3", marker=PLAN_MARKERS[p], ls="none", ms=5 if p == "intact" else 4,
               label=PLAN_WORDS[p]) for p in plans]
    columns = [("loss", "next-token loss (nats)")] + ([("kl", "KL(intact || plan), nats per token")] if with_kl else [])
    fig = new_figure(legend_height(handles, 2.4 * len(tasks) + 0.3))
    axes = fig.subplots(len(tasks), len(columns), squeeze=False)
    for row, task in zip(axes, tasks):
        on = joined[joined["task"] == task]
        for ax, (column, label) in zip(row, columns):
            for (r, plan), g in on.groupby(["run_id", "plan"]):
                ok = np.isfinite(g[column])
                ax.plot(g.loc[ok, column], 100 * g.loc[ok, "accuracy"], PLAN_MARKERS.get(plan, "o"),
                        color=looks[r].color, ms=6 if plan == "intact" else 3.5, alpha=1.0 if plan == "intact" else 0.7)
            ax.set_xlabel(label)
            ax.set_title(_title(f"{task}: against {'loss' if column == 'loss' else 'KL'}", len(columns)))
            _accuracy_axis(ax, on["metric"].iloc[0])
    fig.suptitle(f"Task accuracy against next-token measures, a point per plan ({results.dataset})")
    legend_below(fig, handles)
    return save(fig, folder, "tasks_against_loss")


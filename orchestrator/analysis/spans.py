"""Span deletion: what deleting consecutive layers together costs, by where the span starts and how long it is.

The layer-pruning literature deletes every span of consecutive layers (every start, every length up to a
bound) and asks which span a network can lose. Here: the figure (error against the first deleted layer, one
line per span length) and the report section (per run and length, the rise over the intact network and the
span that costs least). Neither paper states a claim about spans (PAPERS.md), so nothing here is a verdict.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from orchestrator.analysis.drawing import (LINESTYLES, SEED_MARKERS, STYLE, WIDTH, by_series, drawable, legend_below,
                                           legend_height, new_figure, run_looks, save)
from orchestrator.analysis.prose import markdown_table
from orchestrator.analysis.results import Results

LIGHTEST = 0.6   # the shortest span's line: this share of white mixed into its run's colour
SPAN_LINESTYLES = [ls for ls in LINESTYLES if ls != ":"]   # dotted is the intact network's


@dataclass(frozen=True, eq=False)
class SpanRun:
    """One run's span deletions, by length then first layer."""

    run_id: str
    intact: float           # the intact network's error
    spans: pd.DataFrame     # start (0-based layer), length (layers), error, value (what the figure plots:
    #                         results.measure, next-token loss for a language model)
    intact_value: float     # the intact network's value of results.measure, as plotted


def span_runs(results: Results) -> list[SpanRun]:
    """Every run with span deletions, in the runs table's order."""
    rows = results.study("span_deletion")
    found = []
    for r in results.runs["run_id"]:
        d = rows[rows["run_id"] == r]
        if len(d):
            intact = results.intact_error(r)
            spans = pd.DataFrame({"start": d["draw"].astype(int), "length": d["k"].astype(int),
                                  "error": d["error"].astype(float),
                                  "value": results.measure.of(d[results.measure.column])})
            found.append(SpanRun(r, intact, spans.sort_values(["length", "start"]).reset_index(drop=True),
                                 results.intact_value(r)))
    return found


def _layers(start: int, length: int) -> str:
    """1-based layers in words: ``layer 5``, ``layers 5-7``."""
    return f"layer {start + 1}" if length == 1 else f"layers {start + 1}-{start + length}"


def span_section(results: Results) -> list[str]:
    """A row per run and span length: its spans, the mean, least and largest rise, and the span that costs least."""
    runs = span_runs(results)
    if not runs:
        return []
    m = results.measure
    digits = 1 if m.top is not None else 3     # error points, or nats of loss
    rows = []
    for s in runs:
        for n, g in s.spans.assign(rise=s.spans["value"] - s.intact_value).groupby("length"):
            best = g.loc[g["rise"].idxmin()]
            rows.append({"run": results.name(s.run_id), "layers per span": int(n), "spans": len(g),
                         f"mean rise ({m.rise})": f"{g['rise'].mean():+.{digits}f}",
                         "least rise": f"{g['rise'].min():+.{digits}f}", "largest rise": f"{g['rise'].max():+.{digits}f}",
                         "best span to delete (rise)": f"{_layers(int(best['start']), int(n))} "
                                                       f"({best['rise']:+.{digits}f})"})
    rise = ("test error points" if m.top is not None
            else "next-token loss over the intact model, in nats (perplexity multiplies by exp(rise))")
    return (["## Span deletion: consecutive layers deleted together", "",
             "Every span of consecutive layers up to the spec's max_length deleted at test time, every unit of each "
             "layer (a layer that cannot be deleted splits the spans). Rise: " + rise
             + (" over the intact network" if m.top is not None else "")
             + "; the best span is the one whose deletion costs least (1-based layers).", ""]
            + markdown_table(pd.DataFrame(rows)) + [""])


def _shade(color, j: int, lengths: int) -> tuple[float, float, float]:
    """The j-th of ``lengths`` span lengths in a run's colour: the shortest lightest, the longest the colour
    itself."""
    white = LIGHTEST * (1 - j / (lengths - 1)) if lengths > 1 else 0.0
    return tuple(c + (1 - c) * white for c in to_rgb(color))


def _panel_title(text: str, cols: int) -> str:
    """A panel's title wrapped to the panel's width (as drawn: code points and all)."""
    chars = int(72 * WIDTH / cols / (0.6 * STYLE["axes.titlesize"]))
    return textwrap.fill(drawable(text), max(chars, 20))


def span_figure(results: Results, folder: Path) -> str | None:
    """A panel per run (a run's seeds pooled: the mean error per span), its colour and its intact error
    dotted; a line per span length, longer spans darker, each with its own line style and marker."""
    runs = span_runs(results)
    if not runs:
        return None
    looks = run_looks(results)
    by_run = {s.run_id: s for s in runs}
    series = by_series(looks, list(by_run))
    lengths = sorted(set(pd.concat([s.spans["length"] for s in runs])))
    style = {n: (SPAN_LINESTYLES[j % len(SPAN_LINESTYLES)], SEED_MARKERS[j % len(SEED_MARKERS)])
             for j, n in enumerate(lengths)}
    handles = [Line2D([], [], color=_shade("0.25", j, len(lengths)), ls=style[n][0], marker=style[n][1], ms=3,
                      label=f"span of {n} layer{'s' * (n > 1)}") for j, n in enumerate(lengths)]
    handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="intact network (dotted)"))
    if any(results.structure(r).downsampling_layers for r in by_run):
        handles.append(Line2D([], [], color="0.6", ls=(0, (4, 3)), lw=0.8, label="layer with a downsampling block"))
    cols = 1 if len(series) == 1 else 2 if len(series) <= 4 else 3
    rows = -(-len(series) // cols)
    fig = new_figure(legend_height(handles, 2.4 * rows + 0.3))
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False).ravel()
    for ax, (name, members) in zip(axes, series.items()):
        color = looks[members[0]].color
        errors = pd.concat([by_run[r].spans for r in members]).groupby(["length", "start"])["value"].mean()
        layers = results.structure(members[0]).num_layers   # a run's seeds share its network
        for j, n in enumerate(lengths):
            if n not in errors.index.get_level_values("length"):
                continue
            starts = np.arange(layers - n + 1)   # a start with no span (a layer that splits them) breaks the line
            line = errors.loc[n].reindex(starts)
            ax.plot(starts + 1, line.to_numpy(), color=_shade(color, j, len(lengths)), ls=style[n][0],
                    marker=style[n][1], ms=2.5, lw=1.1)
        ax.axhline(np.mean([by_run[r].intact_value for r in members]), color=color, ls=":", lw=0.9)
        for layer in results.structure(members[0]).downsampling_layers:
            ax.axvline(layer + 1, color="0.6", ls=(0, (4, 3)), lw=0.7)
        ax.set_title(_panel_title(name + (f" (mean over {len(members)} seeds)" if len(members) > 1 else ""), cols),
                     color=color)
        ax.set_xlim(0.5, layers + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("first deleted layer (1-based)")
    # the panels share their y axis: its top is set once every panel holds its data (a loss has no fixed top)
    values = np.concatenate([s.spans["value"].to_numpy(float) for s in runs] + [[s.intact_value for s in runs]])
    values = values[np.isfinite(values)]  # a deletion whose loss overflowed has no place on the axis
    highest = float(values.max()) if len(values) and results.measure.top is None else 0.0
    axes[0].set_ylim(0, results.measure.top if results.measure.top is not None else 1.08 * highest or 1.0)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel(results.measure.label)
    fig.suptitle(f"Span deletion: consecutive layers deleted together ({results.dataset})")
    legend_below(fig, handles)
    return save(fig, folder, "span_deletion")

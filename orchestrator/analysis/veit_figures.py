"""Veit et al.'s figures from the tables: F3 (single deletions), F5a (random deletions), F5b (reorderings),
F6 (paths and gradients by length), F7 (paths surviving a deletion), and each run's training curves.

Drawn with the kit of ``drawing.py``, each saved as PNG and PDF; a figure the tables hold no data for is
not drawn (its function returns None).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from workloads.surgery.paths import path_length_distribution, surviving_fraction

from orchestrator.analysis.drawing import (LINESTYLES, by_series, interval_band, legend_below, legend_handles,
                                           legend_height, measure_axis, new_figure, no_data, run_looks, save)
from orchestrator.analysis.results import CRITICAL_RISE, EFFECTIVE_MASS, Results
from orchestrator.analysis.stats import mean_interval


def _residual(results: Results, runs) -> list[str]:
    return [r for r in runs if not results.structure(r).plain]


def _unit_words(results: Results, runs) -> tuple[str, str]:
    """(what one deletion deletes, the x axis that numbers them): blocks, or a transformer's units with the
    layer and kind each number is."""
    structures = [results.structure(r) for r in runs]
    if not any(s.sublayers for s in structures):
        return "block", "deleted block or unit (1-based position)"
    alternating = all(s.kinds == ("attention", "mlp") * s.num_layers for s in structures)
    return "unit", ("deleted unit (1-based): unit 2l-1 is layer l's attention, 2l its MLP" if alternating
                    else "deleted unit (1-based; the report maps units to layers and kinds)")


def f3(results: Results, folder: Path) -> str | None:
    d = results.study("single_deletion")
    if not len(d):
        return None
    looks = run_looks(results)
    runs = sorted(set(d["run_id"]), key=lambda r: (results.structure(r).plain, r))
    by = by_series(looks, runs)
    # many runs with seeds: each seed a thin light line, the series a thick line (mean over its seeds)
    pooled = len(runs) > 8 and any(len(members) > 1 for members in by.values())
    noun, xlabel = _unit_words(results, runs)
    # one row of downsampling marks per network shape, above the data
    shapes: dict[tuple, list[str]] = {}
    for r in _residual(results, runs):
        s = results.structure(r)
        if s.downsampling:
            shapes.setdefault((s.num_blocks, s.downsampling), []).append(r)
    key = [Line2D([], [], color="0.3", ls=":", lw=1, label="intact network (dotted, run's colour)")]
    if pooled:
        key = [Line2D([], [], color="0.3", lw=1.3, marker="o", ms=2.5, label="mean over a run's seeds"),
               Line2D([], [], color="0.3", lw=0.6, alpha=0.4, label="each seed" + (
                   f" ({next(iter(counts))} per run)" if len(counts := {len(m) for m in by.values()}) == 1 else "")),
               Line2D([], [], color="0.3", ls=":", lw=1, label="intact network, mean over seeds (dotted)")]
    if shapes:
        key.append(Line2D([], [], color="0.3", marker="v", ls="none", ms=5,
                          label="downsampling block (top strip, network's colour)"))
    if any(results.critical_blocks(r) for r in _residual(results, runs)):
        key.append(Line2D([], [], color="0.3", marker="s", mfc="none", ls="none", ms=7,
                          label=f"critical {noun} (deleting it costs > {CRITICAL_RISE:g} {results.measure.points})"))
    handles = legend_handles(looks, runs, seeds=not pooled) + key
    fig = new_figure(legend_height(handles, 3.3 + 0.17 * len(shapes)))
    if shapes:
        strip, ax = fig.subplots(2, 1, sharex=True, height_ratios=[0.17 * len(shapes) + 0.05, 3.0])
    else:
        strip, ax = None, fig.subplots()

    def blocks(r):
        return d[d["run_id"] == r].assign(block=lambda x: x["deleted"].map(lambda b: int(b[0]) + 1)).sort_values("block")

    m = results.measure
    for members in by.values():
        look = looks[members[0]]
        if pooled:
            rows = [blocks(r) for r in members]
            mean = pd.concat(rows).groupby("block")[m.column].mean()
            for one in rows if len(members) > 1 else ():
                ax.plot(one["block"], m.of(one[m.column]), lw=0.6, alpha=0.4, color=look.color, ls=look.ls)
            ax.plot(mean.index, m.of(mean), marker="o", ms=2.5, lw=1.3, color=look.color, ls=look.ls)
            ax.axhline(np.mean([results.intact_value(r) for r in members]), color=look.color, ls=":", lw=0.9)
        for r in members:
            rows = blocks(r)
            if not pooled:
                ax.plot(rows["block"], m.of(rows[m.column]), marker=looks[r].marker, ms=3, lw=1, color=look.color,
                        ls=look.ls)
                ax.axhline(results.intact_value(r), color=look.color, ls=":", lw=0.9)
            for b in results.critical_blocks(r) if not results.structure(r).plain else ():
                e = rows[rows["block"] == b + 1][m.column]
                ax.plot([b + 1] * len(e), m.of(e), "s", mfc="none", mec=look.color, ms=7)
    if strip is not None:
        names = []
        for row, ((n, down), members) in enumerate(shapes.items()):
            colors = {looks[r].color for r in members}
            color = colors.pop() if len(colors) == 1 else "0.15"
            strip.plot([b + 1 for b in down], [row] * len(down), "v", color=color, ms=5, clip_on=False)
            for b in down:
                ax.axvline(b + 1, color=color, ls=(0, (4, 3)), lw=0.7, alpha=0.6)
            names.append(f"{n} blocks")
        if len(set(names)) < len(names):  # two shapes with one depth: name their networks
            names = [f"{', '.join(sorted({str(results.run(r)['network']) for r in members}))}"
                     for members in shapes.values()]
        strip.set_yticks(range(len(names)), names)
        strip.set_ylim(len(names) - 0.5, -0.5)
        strip.grid(False)
        strip.tick_params(axis="x", bottom=False, labelbottom=False)
        strip.tick_params(axis="y", left=False)
        for side in ("top", "right", "bottom", "left"):
            strip.spines[side].set_visible(False)
        strip.set_title(f"F3: deleting one {noun} at test time ({results.dataset}); top: downsampling blocks")
    else:
        ax.set_title(f"F3: deleting one {noun} at test time ({results.dataset})")
    ax.set_xlabel(xlabel)
    measure_axis(ax, m)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_below(fig, handles)
    return save(fig, folder, "f3_single_deletion")


def f5a(results: Results, folder: Path) -> str | None:
    d = results.study("random_deletion")
    if not len(d):
        return None
    looks = run_looks(results)
    runs = sorted(set(d["run_id"]))
    noun, _ = _unit_words(results, runs)
    avoiding = {r: results.critical_blocks(r) for r in runs if results.critical_blocks(r)}
    key = [Patch(color="0.3", alpha=0.2, label="band: 95% bootstrap interval of the mean")]
    if avoiding:
        if len(avoiding) <= 4:
            key += [Line2D([], [], color=looks[r].color, ls="--", lw=1,
                           label=f"{results.name(r)}: draws sparing critical {results.structure(r).units_text(c)}")
                    for r, c in avoiding.items()]
        else:
            key.append(Line2D([], [], color="0.3", ls="--", lw=1,
                              label=f"dashed: draws sparing the run's critical {noun}s (listed in the report)"))
    handles = legend_handles(looks, runs) + key
    fig = new_figure(legend_height(handles, 3.3, 6.0), width=6.0)
    ax = fig.subplots()
    m = results.measure
    for r in runs:
        look = looks[r]
        curve = results.deletion_curve(r, False, m.column)
        ax.plot(curve["k"], m.of(curve["mean"]), marker=look.marker, ms=3, color=look.color, ls=look.ls)
        interval_band(ax, curve["k"], curve["lo"], curve["hi"], look.color, 0.18, m)
        if r in avoiding:
            spared = results.deletion_curve(r, True, m.column)
            if len(spared):
                ax.plot(spared["k"], m.of(spared["mean"]), "--", color=look.color, lw=1)
                interval_band(ax, spared["k"], spared["lo"], spared["hi"], look.color, 0.08, m)
    ax.set_xlabel("number of deleted blocks (units) k" if noun == "block"
                  else "number of deleted units k (attention or MLP sublayers)")
    measure_axis(ax, m, ": mean over draws, 95% CI")
    ax.set_title(f"F5a: deleting k random {noun}s ({results.dataset})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_below(fig, handles)
    return save(fig, folder, "f5a_random_deletion")


def _binned(tau: np.ndarray, error: np.ndarray, bins: int = 10) -> list[tuple[float, float, float, float]]:
    """(mean tau, mean error, lo, hi) per tau bin with draws in it; lo/hi: 95% bootstrap interval."""
    edges = np.linspace(tau.min(), tau.max(), bins + 1) if tau.max() > tau.min() else np.array([tau.min()] * 2)
    idx = np.clip(np.digitize(tau, edges[1:-1]), 0, len(edges) - 2)
    out = []
    for j in np.unique(idx):
        ci = mean_interval(error[idx == j])
        out.append((float(tau[idx == j].mean()), ci.estimate, ci.lo, ci.hi))
    return out


def f5b(results: Results, folder: Path) -> str | None:
    d = results.study("reorder")
    if not len(d):
        return None
    looks = run_looks(results)
    runs = sorted(set(d["run_id"]))
    handles = legend_handles(looks, runs) + [
        Line2D([], [], color="0.3", marker="o", ls="none", ms=3, alpha=0.4, label="one draw"),
        Patch(color="0.3", alpha=0.2, label="line and band: binned mean, 95% bootstrap interval")]
    fig = new_figure(legend_height(handles, 3.3, 6.0), width=6.0)
    ax = fig.subplots()
    m = results.measure
    for r in runs:
        look = looks[r]
        rows = d[d["run_id"] == r]
        tau, value = rows["kendall_tau"].to_numpy(float), rows[m.column].to_numpy(float)
        ax.scatter(tau, m.of(value), s=6, alpha=0.3, color=look.color, marker=look.marker, lw=0)
        b = np.array(_binned(tau, value))
        ax.plot(b[:, 0], m.of(b[:, 1]), color=look.color, ls=look.ls, lw=1.5)
        interval_band(ax, b[:, 0], b[:, 2], b[:, 3], look.color, 0.2, m)
    ax.set_xlabel("Kendall tau between the new order and the original")
    measure_axis(ax, m)
    ax.set_title(f"F5b: reordering {_unit_words(results, runs)[0]}s ({results.dataset})")
    ax.invert_xaxis()
    legend_below(fig, handles)
    return save(fig, folder, "f5b_reorder")


def f6(results: Results, folder: Path) -> str | None:
    measured = set(results.gradients["run_id"]) if len(results.gradients) else set()
    runs = [r for r in _residual(results, sorted(measured)) if r in set(results.runs["run_id"])]
    if not runs:
        return None
    looks = run_looks(results)
    drawn = [r for r in runs if len(results.gradient_profile(r))]
    handles = []
    for r in runs:
        look, n = looks[r], results.structure(r).paths
        if r in drawn:
            eff = results.effective_paths(r)
            found = (f"{EFFECTIVE_MASS:.0%} of the gradient from lengths {eff.lo}-{eff.hi}, "
                     f"{100 * eff.share:.2g}% of paths")
        else:
            found = "no finite gradient norm"
        handles.append(Line2D([], [], color=look.color, ls=look.ls, marker=look.marker, ms=3,
                              label=f"{results.name(r)} (n={n}): {found}"))
    if drawn:
        handles += [Patch(color="0.3", alpha=0.2, label="band (b): ±1 std of log10 norm over draws"),
                    Patch(color="0.3", alpha=0.12,
                          label=f"shaded (c): lengths carrying {EFFECTIVE_MASS:.0%} of the gradient")]
    fig = new_figure(legend_height(handles, 2.9))
    axes = fig.subplots(1, 3)
    sizes = sorted({results.structure(r).paths for r in runs})
    top = max(100 * path_length_distribution(n).max() for n in sizes)
    axes[0].set_ylim(0, 1.15 * top)
    for j, n in enumerate(sizes):
        members = {looks[r].color for r in runs if results.structure(r).paths == n}
        color = members.pop() if len(members) == 1 else "0.2"
        share = 100 * path_length_distribution(n)
        axes[0].plot(np.arange(n + 1), share, color=color, ls=LINESTYLES[j % len(LINESTYLES)])
        axes[0].annotate(f"n={n}", (n / 2, share.max()), textcoords="offset points", xytext=(0, 3), color=color,
                         fontsize=7, ha="center", va="bottom")
    for r in drawn:
        look = looks[r]
        prof, eff = results.gradient_profile(r), results.effective_paths(r)
        axes[1].plot(prof["k"], prof["log10_mean"], marker=look.marker, ms=2.5, color=look.color, ls=look.ls)
        axes[1].fill_between(prof["k"], prof["log10_mean"] - prof["log10_std"],
                             prof["log10_mean"] + prof["log10_std"], color=look.color, alpha=0.15, lw=0)
        axes[2].plot(np.arange(len(eff.fractions)), 100 * eff.fractions, color=look.color, ls=look.ls)
        axes[2].axvspan(eff.lo, eff.hi, color=look.color, alpha=0.12, lw=0)
    axes[0].set(xlabel="path length k", ylabel="share of all paths (%)", title="F6a: Binomial(n, 1/2)")
    axes[1].set(xlabel="path length k", ylabel="log10 gradient norm (block 1 input)", title="F6b: gradient per path")
    axes[2].set(xlabel="path length k", ylabel="share of the total gradient (%)", title="F6c: gradient per length")
    if not drawn:
        for ax in axes[1:]:
            no_data(ax, "no finite gradient norm\nin the gradients table")
    fig.suptitle(f"F6: paths and gradients by path length ({results.dataset})")
    legend_below(fig, handles)
    return save(fig, folder, "f6_paths_and_gradients")


def f7(results: Results, folder: Path) -> str | None:
    runs = _residual(results, results.runs["run_id"])
    n = max((results.structure(r).num_blocks for r in runs), default=54)
    fig = new_figure(3.2, width=5.0)
    ax = fig.subplots()
    x = np.arange(0, n + 1)
    for i, d in enumerate((1, 10, 20)):
        if d < n:
            ax.plot(x, [surviving_fraction(n, d, k) for k in x], color=("0.1", "0.4", "0.6")[i], ls=LINESTYLES[i],
                    label=f"{d} block{'s' if d != 1 else ''} deleted")
    beyond = [str(d) for d in (10, 20) if d >= n]
    if beyond:  # said, not silently left out
        ax.plot([], [], ls="none", label=f"({' and '.join(beyond)} blocks deleted: not drawn, n = {n})")
    which = "the largest network here" if runs else "ResNet-110; no residual network here"
    ax.set(xlabel="path length (residual branches on the path)", ylabel="fraction of paths that survive",
           title=f"F7: paths surviving a deletion (n = {n} blocks, {which})")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper right")
    return save(fig, folder, "f7_surviving_paths")


def training_curves(results: Results, folder: Path) -> str | None:
    if not len(results.epochs):
        return None
    looks = run_looks(results)
    epochs = results.epochs[results.epochs["run_id"].isin(looks)]
    runs = sorted(set(epochs["run_id"]))
    handles = legend_handles(looks, runs) + [Line2D([], [], color="0.3", lw=1.2, label="test error (solid)"),
                                       Line2D([], [], color="0.3", lw=0.8, ls=":", label="train error (dotted)")]
    fig = new_figure(legend_height(handles, 3.2, 6.0), width=6.0)
    ax = fig.subplots()
    for r, rows in epochs.groupby("run_id"):
        look = looks[r]
        rows = rows.sort_values("epoch")
        every = max(1, len(rows) // 8)
        ax.plot(rows["epoch"], 100 * rows["test_error"], color=look.color, ls=look.ls, lw=1.2,
                marker=look.marker, ms=3, markevery=every)
        ax.plot(rows["epoch"], 100 * rows["train_error"], color=look.color, ls=":", lw=0.8)
    if not runs:
        no_data(ax, "no epoch of a run in the runs table")
    # symlog: linear below 1%, logarithmic above, so an error of exactly 0 stays on the plot
    ax.set_yscale("symlog", linthresh=1, linscale=0.4)
    ax.set_ylim(0, 100)
    ax.set_yticks([0, 0.5, 1, 2, 5, 10, 20, 50, 100], ["0", "0.5", "1", "2", "5", "10", "20", "50", "100"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) and epochs["epoch"].max() - epochs["epoch"].min() < 2:
        ax.set_xlim(epochs["epoch"].min() - 1, epochs["epoch"].max() + 1)
    ax.set(xlabel="epoch", ylabel="error (%)", title=f"Training curves ({results.dataset})")
    legend_below(fig, handles)
    return save(fig, folder, "training_curves")

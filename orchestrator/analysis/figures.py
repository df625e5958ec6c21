"""The papers' figures from the tables: PNG and PDF, colour-blind-safe (Okabe-Ito) palette.

Drawn with matplotlib's object-oriented API (Figure, not pyplot), so making them never selects
or changes a backend, and the style applies only inside all_figures: a notebook keeps its own.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from workloads.surgery.paths import path_length_distribution, surviving_fraction

from .claims import EFFECTIVE_MASS, residual_runs
from .results import Results

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
STYLE = {"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
         "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "font.size": 9}


def _save(fig: Figure, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(folder / f"{name}.{ext}")
    return f"{name}.png"


def _figure(figsize: tuple[float, float]):
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _label(results: Results, r: str) -> str:
    return results.name(r)


def f3(results: Results, folder: Path) -> str | None:
    d = results.study("single_deletion")
    if not len(d):
        return None
    fig, ax = _figure(figsize=(7.5, 3.8))
    for i, r in enumerate(sorted(set(d["run_id"]), key=lambda r: (results.structure(r).plain, r))):
        rows = d[d["run_id"] == r].assign(block=lambda x: x["deleted"].map(lambda b: int(b[0]) + 1)).sort_values("block")
        color = PALETTE[i % len(PALETTE)]
        ax.plot(rows["block"], 100 * rows["error"], "o-", ms=3, lw=1, color=color, label=_label(results, r))
        ax.axhline(100 * results.intact_error(r), color=color, ls=":", lw=1)
        if not results.structure(r).plain:
            for b in results.structure(r).downsampling:
                ax.axvline(b + 1, color="0.5", ls="--", lw=0.8)
            for b in results.critical_blocks(r):
                e = rows[rows["block"] == b + 1]["error"]
                ax.plot([b + 1], 100 * e, "s", mfc="none", mec=color, ms=8)
    ax.set_xlabel("deleted block (1-based position; dashed: downsampling blocks; squares: critical)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"F3: deleting one block at test time ({results.dataset}); dotted lines: intact network")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center right")
    return _save(fig, folder, "f3_single_deletion")


def f5a(results: Results, folder: Path) -> str | None:
    d = results.study("random_deletion")
    if not len(d):
        return None
    fig, ax = _figure(figsize=(6, 3.8))
    for i, r in enumerate(sorted(set(d["run_id"]))):
        rows = d[d["run_id"] == r]
        stats = rows.groupby("k")["error"].agg(["mean", "std"])
        color = PALETTE[i % len(PALETTE)]
        ax.plot(stats.index, 100 * stats["mean"], "o-", ms=3, color=color, label=_label(results, r))
        ax.fill_between(stats.index, 100 * (stats["mean"] - stats["std"]), 100 * (stats["mean"] + stats["std"]),
                        color=color, alpha=0.15)
        crit = set(results.critical_blocks(r))
        if crit:
            avoid = rows[rows["deleted"].map(lambda b: not crit & set(b))]
            if len(avoid):
                m = avoid.groupby("k")["error"].mean()
                ax.plot(m.index, 100 * m, "--", color=color, lw=1, label=f"{_label(results, r)}, draws avoiding "
                                                                         f"critical blocks {sorted(b + 1 for b in crit)}")
    ax.set_xlabel("number of deleted blocks k")
    ax.set_ylabel("test error (%), mean +/- std over draws")
    ax.set_title(f"F5a: deleting k random blocks ({results.dataset})")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return _save(fig, folder, "f5a_random_deletion")


def f5b(results: Results, folder: Path) -> str | None:
    d = results.study("reorder")
    if not len(d):
        return None
    fig, ax = _figure(figsize=(6, 3.8))
    for i, r in enumerate(sorted(set(d["run_id"]))):
        rows = d[d["run_id"] == r]
        color = PALETTE[i % len(PALETTE)]
        ax.scatter(rows["kendall_tau"], 100 * rows["error"], s=6, alpha=0.35, color=color)
        bins = np.linspace(rows["kendall_tau"].min(), 1.0, 12)
        idx = np.digitize(rows["kendall_tau"], bins)
        centers = [rows["kendall_tau"][idx == j].mean() for j in np.unique(idx)]
        means = [rows["error"][idx == j].mean() for j in np.unique(idx)]
        ax.plot(centers, 100 * np.array(means), "-", color=color, lw=1.5, label=_label(results, r))
    ax.set_xlabel("Kendall tau between the new order and the original")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"F5b: reordering blocks ({results.dataset}); line: binned mean")
    ax.invert_xaxis()
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    return _save(fig, folder, "f5b_reorder")


def f6(results: Results, folder: Path) -> str | None:
    runs = [r for r in residual_runs(results, None) if r in set(results.gradients["run_id"])]
    if not runs:
        return None
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for i, r in enumerate(runs):
        color = PALETTE[i % len(PALETTE)]
        prof, n, eff = results.gradient_profile(r), results.structure(r).num_blocks, results.effective_paths(r)
        k = np.arange(n + 1)
        axes[0].plot(k, 100 * path_length_distribution(n), color=color, label=f"{_label(results, r)} (n={n})")
        axes[1].plot(prof["k"], prof["log10_mean"], "o-", ms=2.5, color=color, label=_label(results, r))
        axes[1].fill_between(prof["k"], prof["log10_mean"] - prof["log10_std"], prof["log10_mean"] + prof["log10_std"],
                             color=color, alpha=0.15)
        axes[2].plot(k, 100 * eff.fractions, color=color,
                     label=f"{_label(results, r)}: {EFFECTIVE_MASS:.0%} from lengths {eff.lo}-{eff.hi} "
                           f"({100 * eff.share:.2f}% of paths)")
        axes[2].axvspan(eff.lo, eff.hi, color=color, alpha=0.12)
    axes[0].set(xlabel="path length (residual branches on the path)", ylabel="share of all paths (%)",
                title="F6a: path lengths are Binomial(n, 1/2)")
    axes[1].set(xlabel="path length k", ylabel="log10 gradient norm at block 1 input",
                title="F6b: gradient magnitude per path length")
    axes[2].set(xlabel="path length k", ylabel="share of the total gradient (%)",
                title="F6c: total gradient per length (shaded: effective)")
    for ax in axes:
        ax.legend(fontsize=6.5)
    fig.suptitle(f"Gradients by path length ({results.dataset})", fontsize=10)
    return _save(fig, folder, "f6_paths_and_gradients")


def f7(results: Results, folder: Path) -> str | None:
    runs = residual_runs(results, None)
    n = max((results.structure(r).num_blocks for r in runs), default=54)
    fig, ax = _figure(figsize=(6, 3.8))
    x = np.arange(0, n + 1)
    for i, d in enumerate((1, 10, 20)):
        if d >= n:
            continue
        ax.plot(x, [surviving_fraction(n, d, k) for k in x], color=PALETTE[i], label=f"{d} blocks deleted")
    ax.set(xlabel="path length", ylabel="fraction of paths that survive",
           title=f"F7: paths of each length surviving a deletion (n = {n} blocks)")
    ax.legend(fontsize=8)
    return _save(fig, folder, "f7_surviving_paths")


def training_curves(results: Results, folder: Path) -> str | None:
    if not len(results.epochs):
        return None
    fig, ax = _figure(figsize=(6, 3.8))
    for i, (r, rows) in enumerate(results.epochs.groupby("run_id")):
        color = PALETTE[i % len(PALETTE)]
        ax.plot(rows["epoch"], 100 * rows["test_error"], color=color, label=_label(results, r))
        ax.plot(rows["epoch"], 100 * rows["train_error"], color=color, ls=":", lw=0.8)
    ax.set(xlabel="epoch", ylabel="error (%) (solid: test, dotted: train)", yscale="log",
           title=f"Training curves ({results.dataset})")
    ax.legend(fontsize=7)
    return _save(fig, folder, "training_curves")


def all_figures(results: Results, folder: Path) -> dict[str, str]:
    """Each figure's PNG name by key, for the figures the tables have data for."""
    made = {}
    with matplotlib.rc_context(STYLE):  # figures read the style when drawn and saved
        from .highway import h_figure  # highway draws with this module's helpers
        for name, fn in [("F3", f3), ("F5a", f5a), ("F5b", f5b), ("F6", f6), ("F7", f7), ("H", h_figure),
                         ("training", training_curves)]:
            path = fn(results, folder)
            if path:
                made[name] = path
    return made

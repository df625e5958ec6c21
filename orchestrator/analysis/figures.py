"""The papers' figures from the tables: PNG and PDF, colour-blind-safe (Okabe-Ito) palette.

Drawn with matplotlib's object-oriented API (Figure, not pyplot), so making them never selects
or changes a backend, and the style applies only inside all_figures: a notebook keeps its own.

Every figure is at most 7 inches wide with text of at least 7 pt, so it prints at its saved size on a
page; legends sit below the axes, never on the data. A run has one look in every figure: the colour
(and, past eight, the line style) of its series -- label, variant and mode, as ``Results.name`` says
them -- and, when the experiment has several seeds, one marker per seed.
"""
from __future__ import annotations

import functools
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator

from workloads.surgery.paths import path_length_distribution, surviving_fraction

from orchestrator.analysis.results import CRITICAL_RISE, EFFECTIVE_MASS, ERROR, Results, variant_text
from orchestrator.analysis.stats import mean_interval

PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]  # yellow last: faint
LINESTYLES = ["-", "--", "-.", ":"]                       # a second, third... round of the palette
SEED_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
WIDTH = 7.0                                               # inches: a page's text width
# Fonts tried, in order, for each character (matplotlib >= 3.6 falls back through font.family); only the
# installed ones are listed, and a character none of them has is drawn as its code point (see drawable).
FALLBACK_FONTS = ("DejaVu Sans", "Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                  "Source Han Sans", "Source Han Sans SC", "Source Han Sans JP", "Noto Sans SC", "Noto Sans JP",
                  "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN",
                  "IPAexGothic", "IPAGothic", "TakaoGothic", "NanumGothic", "Microsoft YaHei", "SimHei",
                  "Hiragino Sans", "Yu Gothic", "Malgun Gothic", "Arial Unicode MS", "Noto Sans")


def _installed_fonts() -> list[str]:
    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [f for f in FALLBACK_FONTS if f in installed] or ["sans-serif"]


STYLE = {"figure.dpi": 110, "savefig.dpi": 150, "axes.grid": True, "grid.alpha": 0.3,
         "axes.prop_cycle": matplotlib.cycler(color=PALETTE), "font.family": _installed_fonts(),
         "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 7.5,
         "ytick.labelsize": 7.5, "legend.fontsize": 7.5, "figure.titlesize": 9}


@functools.lru_cache(maxsize=8)
def _covered(fonts: tuple[str, ...]) -> frozenset[int]:
    """The code points some font of ``fonts`` has a glyph for."""
    points: set[int] = set()
    for family in fonts:
        try:
            path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
            points.update(font_manager.get_font(path).get_charmap())
        except (ValueError, RuntimeError, OSError):
            continue
    return frozenset(points)


def drawable(text: str, fonts: list[str] | None = None) -> str:
    """``text`` with each character no font of the fallback list can draw written as its code point
    (``U+6B8B``, set apart by spaces): no missing-glyph boxes or warnings on a machine without, say,
    CJK fonts."""
    covered = _covered(tuple(fonts or STYLE["font.family"]))
    out, replaced = "", False
    for c in text:
        if ord(c) < 32 or ord(c) in covered:
            out += (" " if replaced and not c.isspace() else "") + c
            replaced = False
        else:  # a code point stands apart from its neighbours: "U+6B8B U+5DEE [unit=d]"
            out += (" " if out and not out[-1].isspace() else "") + f"U+{ord(c):04X}"
            replaced = True
    return out


def _save(fig: Figure, folder, name: str) -> str:
    """The figure as PNG and PDF in ``folder`` (of OUT: a local folder or object storage), each written whole."""
    from orchestrator import store
    for text in fig.findobj(Text):
        text.set_text(drawable(text.get_text()))
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext)
        store.write_file(folder / f"{name}.{ext}", buffer.getvalue())
    return f"{name}.png"


def _figure(height: float, width: float = WIDTH) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _no_data(ax, why: str) -> None:
    """An axis with nothing to show says why, rather than being empty."""
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", wrap=True, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


@dataclass(frozen=True)
class Look:
    """How a run is drawn: its series' colour and line style, its seed's marker."""

    series: str         # the run's name without its seed
    color: str
    ls: str
    marker: str
    seed: str           # "seed 3", or "" when the experiment has one seed


def in_order(runs):
    """The runs table ordered as legends and tables list it: by label, variant (as read), mode, then seed."""
    key = runs.assign(_variant=runs["variant"].map(variant_text))
    return runs.loc[key.sort_values(["label", "_variant", "mode", "seed", "run_id"], kind="stable").index]


def _looks(results: Results) -> dict[str, Look]:
    runs = in_order(results.runs)
    seeds = sorted(set(runs["seed"]))
    several = len(seeds) > 1
    order: list[str] = []
    looks = {}
    for r, seed in zip(runs["run_id"], runs["seed"]):
        series = results.series(r)
        if series not in order:
            order.append(series)
        i = order.index(series)
        looks[r] = Look(series, PALETTE[i % len(PALETTE)], LINESTYLES[(i // len(PALETTE)) % len(LINESTYLES)],
                        SEED_MARKERS[seeds.index(seed) % len(SEED_MARKERS)] if several else "o",
                        f"seed {seed}" if several else "")
    return looks


def _series(looks: dict[str, Look], runs) -> dict[str, list[str]]:
    """``runs`` by series, in the order the series were given their colours."""
    order = list(dict.fromkeys(look.series for look in looks.values()))
    by: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: (order.index(looks[r].series), int(looks[r].seed[5:] or 0))):
        by.setdefault(looks[r].series, []).append(r)
    return by


def _handles(looks: dict[str, Look], runs, seeds: bool = True) -> list:
    """Legend entries for ``runs``: one per series (its seeds counted when series differ in them), then,
    with ``seeds``, one per seed's marker."""
    by = _series(looks, runs)
    counts = {len(members) for members in by.values()}
    markers = {looks[r].seed: looks[r].marker for r in runs if looks[r].seed} if seeds else {}
    handles = [Line2D([], [], color=looks[members[0]].color, ls=looks[members[0]].ls, lw=1.5,
                      marker="o" if seeds and len(markers) < 2 else None, ms=4,
                      label=s + (f" ({len(members)} seeds)" if len(members) > 1 and len(counts) > 1 else ""))
               for s, members in by.items()]
    if len(markers) > 1:
        handles += [Line2D([], [], color="0.3", marker=m, ls="none", ms=4, label=s)
                    for s, m in sorted(markers.items(), key=lambda x: int(x[0].split()[-1]))]
    return handles


def _text_width(text: str) -> float:
    """Points the widest line of ``text`` takes in a legend."""
    prop = font_manager.FontProperties(family=STYLE["font.family"], size=STYLE["legend.fontsize"])
    return max(TextToPath().get_text_width_height_descent(line, prop, ismath=False)[0]
               for line in drawable(text).split("\n"))


def _legend_layout(handles: list, width: float) -> tuple[int, int]:
    """(columns, lines per column) of a legend ``width`` inches wide: the most columns that fit (matplotlib
    splits the entries into columns as numpy.array_split does); a label wider than the figure is wrapped
    first (as drawn, code points and all), so nothing of it is cut."""
    size = STYLE["legend.fontsize"]
    room = 72 * width - 12 - 3.6 * size          # points for a label's text in a one-column legend
    for h in handles:
        label = drawable(h.get_label())
        if _text_width(label) > room:
            h.set_label(textwrap.fill(label, max(10, int(len(label) * room / _text_width(label)) - 2)))
    text = np.array([_text_width(h.get_label()) for h in handles])
    lines = np.array([h.get_label().count("\n") + 1 for h in handles])
    for ncols in range(min(len(handles), 6), 1, -1):
        columns = [max(column) + 2.8 * size for column in np.array_split(text, ncols)]
        if sum(columns) + (len(columns) - 1) * 2.0 * size + 0.8 * size <= 72 * width - 12:
            return ncols, max(int(c.sum()) for c in np.array_split(lines, ncols))
    return 1, int(lines.sum())


def _legend_below(fig: Figure, handles: list) -> None:
    if handles:
        ncols, _ = _legend_layout(handles, fig.get_figwidth())
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)


def _legend_height(handles: list, base: float, width: float = WIDTH) -> float:
    """``base`` inches for the axes, plus room for the legend's lines below them."""
    if not handles:
        return base
    _, lines = _legend_layout(handles, width)
    return base + lines * 1.5 * STYLE["legend.fontsize"] / 72 + 0.1


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
    looks = _looks(results)
    runs = sorted(set(d["run_id"]), key=lambda r: (results.structure(r).plain, r))
    by = _series(looks, runs)
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
    handles = _handles(looks, runs, seeds=not pooled) + key
    fig = _figure(_legend_height(handles, 3.3 + 0.17 * len(shapes)))
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
    _measure_axis(ax, m)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(fig, handles)
    return _save(fig, folder, "f3_single_deletion")


def _measure_axis(ax, m, suffix: str = "") -> None:
    """The y axis of what is plotted: error from 0 to 100%, a loss from 0 to a little above its largest value
    (data drawn against the frame is hard to read)."""
    ax.set_ylabel(m.label + suffix)
    ax.set_ylim(0, m.top if m.top is not None else 1.08 * ax.dataLim.ymax)


def _band(ax, x, lo, hi, color, alpha, m=ERROR):
    """A 95% interval band, clipped to the values the measure can take (0-100% for an error); missing where
    there is no interval."""
    lo, hi = np.clip(m.of(lo), 0, m.top), np.clip(m.of(hi), 0, m.top)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x, float), lo, hi, where=ok, color=color, alpha=alpha, lw=0)


def f5a(results: Results, folder: Path) -> str | None:
    d = results.study("random_deletion")
    if not len(d):
        return None
    looks = _looks(results)
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
    handles = _handles(looks, runs) + key
    fig = _figure(_legend_height(handles, 3.3, 6.0), width=6.0)
    ax = fig.subplots()
    m = results.measure
    for r in runs:
        look = looks[r]
        curve = results.deletion_curve(r, False, m.column)
        ax.plot(curve["k"], m.of(curve["mean"]), marker=look.marker, ms=3, color=look.color, ls=look.ls)
        _band(ax, curve["k"], curve["lo"], curve["hi"], look.color, 0.18, m)
        if r in avoiding:
            spared = results.deletion_curve(r, True, m.column)
            if len(spared):
                ax.plot(spared["k"], m.of(spared["mean"]), "--", color=look.color, lw=1)
                _band(ax, spared["k"], spared["lo"], spared["hi"], look.color, 0.08, m)
    ax.set_xlabel("number of deleted blocks (units) k" if noun == "block"
                  else "number of deleted units k (attention or MLP sublayers)")
    _measure_axis(ax, m, ": mean over draws, 95% CI")
    ax.set_title(f"F5a: deleting k random {noun}s ({results.dataset})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_below(fig, handles)
    return _save(fig, folder, "f5a_random_deletion")


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
    looks = _looks(results)
    runs = sorted(set(d["run_id"]))
    handles = _handles(looks, runs) + [
        Line2D([], [], color="0.3", marker="o", ls="none", ms=3, alpha=0.4, label="one draw"),
        Patch(color="0.3", alpha=0.2, label="line and band: binned mean, 95% bootstrap interval")]
    fig = _figure(_legend_height(handles, 3.3, 6.0), width=6.0)
    ax = fig.subplots()
    m = results.measure
    for r in runs:
        look = looks[r]
        rows = d[d["run_id"] == r]
        tau, value = rows["kendall_tau"].to_numpy(float), rows[m.column].to_numpy(float)
        ax.scatter(tau, m.of(value), s=6, alpha=0.3, color=look.color, marker=look.marker, lw=0)
        b = np.array(_binned(tau, value))
        ax.plot(b[:, 0], m.of(b[:, 1]), color=look.color, ls=look.ls, lw=1.5)
        _band(ax, b[:, 0], b[:, 2], b[:, 3], look.color, 0.2, m)
    ax.set_xlabel("Kendall tau between the new order and the original")
    _measure_axis(ax, m)
    ax.set_title(f"F5b: reordering {_unit_words(results, runs)[0]}s ({results.dataset})")
    ax.invert_xaxis()
    _legend_below(fig, handles)
    return _save(fig, folder, "f5b_reorder")


def f6(results: Results, folder: Path) -> str | None:
    measured = set(results.gradients["run_id"]) if len(results.gradients) else set()
    runs = [r for r in _residual(results, sorted(measured)) if r in set(results.runs["run_id"])]
    if not runs:
        return None
    looks = _looks(results)
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
    fig = _figure(_legend_height(handles, 2.9))
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
            _no_data(ax, "no finite gradient norm\nin the gradients table")
    fig.suptitle(f"F6: paths and gradients by path length ({results.dataset})")
    _legend_below(fig, handles)
    return _save(fig, folder, "f6_paths_and_gradients")


def f7(results: Results, folder: Path) -> str | None:
    runs = _residual(results, results.runs["run_id"])
    n = max((results.structure(r).num_blocks for r in runs), default=54)
    fig = _figure(3.2, width=5.0)
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
    return _save(fig, folder, "f7_surviving_paths")


def training_curves(results: Results, folder: Path) -> str | None:
    if not len(results.epochs):
        return None
    looks = _looks(results)
    epochs = results.epochs[results.epochs["run_id"].isin(looks)]
    runs = sorted(set(epochs["run_id"]))
    handles = _handles(looks, runs) + [Line2D([], [], color="0.3", lw=1.2, label="test error (solid)"),
                                       Line2D([], [], color="0.3", lw=0.8, ls=":", label="train error (dotted)")]
    fig = _figure(_legend_height(handles, 3.2, 6.0), width=6.0)
    ax = fig.subplots()
    for r, rows in epochs.groupby("run_id"):
        look = looks[r]
        rows = rows.sort_values("epoch")
        every = max(1, len(rows) // 8)
        ax.plot(rows["epoch"], 100 * rows["test_error"], color=look.color, ls=look.ls, lw=1.2,
                marker=look.marker, ms=3, markevery=every)
        ax.plot(rows["epoch"], 100 * rows["train_error"], color=look.color, ls=":", lw=0.8)
    if not runs:
        _no_data(ax, "no epoch of a run in the runs table")
    # symlog: linear below 1%, logarithmic above, so an error of exactly 0 stays on the plot
    ax.set_yscale("symlog", linthresh=1, linscale=0.4)
    ax.set_ylim(0, 100)
    ax.set_yticks([0, 0.5, 1, 2, 5, 10, 20, 50, 100], ["0", "0.5", "1", "2", "5", "10", "20", "50", "100"])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) and epochs["epoch"].max() - epochs["epoch"].min() < 2:
        ax.set_xlim(epochs["epoch"].min() - 1, epochs["epoch"].max() + 1)
    ax.set(xlabel="epoch", ylabel="error (%)", title=f"Training curves ({results.dataset})")
    _legend_below(fig, handles)
    return _save(fig, folder, "training_curves")


def all_figures(results: Results, folder: Path) -> dict[str, str]:
    """Each figure's PNG name by key, for the figures the tables have data for."""
    made = {}
    with matplotlib.rc_context(STYLE):  # figures read the style when drawn and saved
        from orchestrator.analysis.highway import h_figure  # highway and spans draw with this module's helpers
        from orchestrator.analysis.spans import span_figure
        for name, fn in [("F3", f3), ("F5a", f5a), ("F5b", f5b), ("F6", f6), ("F7", f7), ("H", h_figure),
                         ("spans", span_figure), ("training", training_curves)]:
            path = fn(results, folder)
            if path:
                made[name] = path
    return made

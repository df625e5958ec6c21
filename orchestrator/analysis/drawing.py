"""The drawing kit every figure shares: palette, style, page width, legends below the axes, one look per run.

Colour-blind-safe (Okabe-Ito) palette; matplotlib's object-oriented API (Figure, not pyplot), so drawing
never selects or changes a backend, and STYLE applies only where figures.all_figures puts it: a notebook
keeps its own.

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

import matplotlib
import numpy as np
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.text import Text
from matplotlib.textpath import TextToPath

from orchestrator import store
from orchestrator.analysis.results import ERROR, Results, variant_text

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


def finish(fig: Figure) -> Figure:
    """The figure as ``save`` draws it: each text's characters that no font has written as code points."""
    for text in fig.findobj(Text):
        text.set_text(drawable(text.get_text()))
    return fig


def save(fig: Figure, folder, name: str) -> str:
    """The figure as PNG and PDF in ``folder`` (of OUT: a local folder or object storage), each written whole."""
    finish(fig)
    for ext in ("png", "pdf"):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext)
        store.write_file(folder / f"{name}.{ext}", buffer.getvalue())
    return f"{name}.png"


def new_figure(height: float, width: float = WIDTH) -> Figure:
    """A figure ``width`` inches wide (a page's text width unless said), laid out so that titles, labels and
    the legend below stay on it."""
    return Figure(figsize=(width, height), layout="constrained")


def no_data(ax, why: str) -> None:
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


def run_looks(results: Results) -> dict[str, Look]:
    """Each run's look by run id: a colour per series in legend order, a marker per seed."""
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


def by_series(looks: dict[str, Look], runs) -> dict[str, list[str]]:
    """``runs`` by series, in the order the series were given their colours."""
    order = list(dict.fromkeys(look.series for look in looks.values()))
    by: dict[str, list[str]] = {}
    for r in sorted(runs, key=lambda r: (order.index(looks[r].series), int(looks[r].seed[5:] or 0))):
        by.setdefault(looks[r].series, []).append(r)
    return by


def legend_handles(looks: dict[str, Look], runs, seeds: bool = True) -> list:
    """Legend entries for ``runs``: one per series (its seeds counted when series differ in them), then,
    with ``seeds``, one per seed's marker."""
    by = by_series(looks, runs)
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


def legend_below(fig: Figure, handles: list) -> None:
    """The figure's legend under its axes, in as many columns as fit its width."""
    if handles:
        ncols, _ = _legend_layout(handles, fig.get_figwidth())
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols, frameon=False)


def legend_height(handles: list, base: float, width: float = WIDTH) -> float:
    """``base`` inches for the axes, plus room for the legend's lines below them."""
    if not handles:
        return base
    _, lines = _legend_layout(handles, width)
    return base + lines * 1.5 * STYLE["legend.fontsize"] / 72 + 0.1


def measure_axis(ax, m, suffix: str = "") -> None:
    """The y axis of what is plotted: error from 0 to 100%, a loss from 0 to a little above its largest value
    (data drawn against the frame is hard to read)."""
    ax.set_ylabel(m.label + suffix)
    ax.set_ylim(0, m.top if m.top is not None else 1.08 * ax.dataLim.ymax)


def interval_band(ax, x, lo, hi, color, alpha, m=ERROR):
    """A 95% interval band, clipped to the values the measure can take (0-100% for an error); missing where
    there is no interval."""
    lo, hi = np.clip(m.of(lo), 0, m.top), np.clip(m.of(hi), 0, m.top)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x, float), lo, hi, where=ok, color=color, alpha=alpha, lw=0)

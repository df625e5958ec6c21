"""The proxies' and the shares' figures: Gromov et al.'s heat map of the angular distance d(start, length), each
proxy against the real cost of the deletions it ranks (the rank correlation and its interval in the legend), and
each run's units ranked by their share of the damage with interval bars. A figure the tables hold no data for is
not drawn (its function returns None)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from orchestrator.analysis.drawing import (PALETTE, SEED_MARKERS, STYLE, WIDTH, drawable, legend_below, legend_height,
                                           new_figure, save)
from orchestrator.analysis.proxies import PROXIES, comparisons, proxy_runs, scopes
from orchestrator.analysis.results import Results
from orchestrator.analysis.shares import run_shares


def _title(text: str, cols: int) -> str:
    chars = int(72 * WIDTH / cols / (0.6 * STYLE["axes.titlesize"]))
    return textwrap.fill(drawable(text), max(chars, 16))


def _grid(fig, count: int, cols: int):
    axes = fig.subplots(-(-count // cols), cols, squeeze=False).ravel()
    for ax in axes[count:]:
        ax.set_visible(False)
    return axes[:count]


def angular_heatmap(results: Results, folder: Path) -> str | None:
    """A panel per run: d(start, length) of every span, start across, length up (Gromov et al.'s Figure 1)."""
    p = results.proxies
    if not len(p) or not (p["proxy"] == "angular_distance").any():
        return None
    runs = [r for r in proxy_runs(results) if ((p["run_id"] == r) & (p["proxy"] == "angular_distance")).any()]
    cols = 1 if len(runs) == 1 else 2
    fig = new_figure(2.6 * -(-len(runs) // cols) + 0.4)
    for ax, r in zip(_grid(fig, len(runs), cols), runs):
        d = p[(p["run_id"] == r) & (p["proxy"] == "angular_distance")]
        layers = int((d["start"] + d["length"]).max())
        grid = np.full((int(d["length"].max()), layers), np.nan)
        grid[d["length"].to_numpy(int) - 1, d["start"].to_numpy(int)] = d["value"].to_numpy(float)
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis", vmin=0,
                          extent=(0.5, layers + 0.5, 0.5, grid.shape[0] + 0.5))
        fig.colorbar(image, ax=ax, label="angular distance, arccos(cos) / pi")
        ax.set_xlabel("first layer of the span (1-based)")
        ax.set_ylabel("layers in the span n")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(False)
        positions = ", ".join(sorted(set(d["positions"])))
        ax.set_title(_title(f"{results.name(r)} ({positions} positions)", cols))
    fig.suptitle(f"Angular distance between the residual stream before and after each span ({results.dataset})")
    return save(fig, folder, "proxies_angular_distance")


def proxy_cost_figure(results: Results, folder: Path) -> str | None:
    """A row per run, a panel per proxy: the proxy against the real cost of each deletion it ranks (single units,
    or the spans of each length), a legend per panel with Spearman's rho of the predicted cost (cosine read in reverse)
    and its 95% interval."""
    found = comparisons(results)
    if not found:
        return None
    runs = [r for r in proxy_runs(results) if any(c.run_id == r for c in found)]
    panels = [(r, proxy) for r in runs for proxy in PROXIES if any(c.run_id == r and c.proxy == proxy for c in found)]
    cols = 1 if len(panels) == 1 else 2
    m = results.measure
    cost = "loss rise" if m.column == "loss" else "error rise"
    fig = new_figure(2.5 * -(-len(panels) // cols) + 0.4)
    for ax, (r, proxy) in zip(_grid(fig, len(panels), cols), panels):
        for j, scope in enumerate(s for s in scopes(results, r) if proxy in s.proxies):
            real = next(c for c in scope.costs if c.endswith(cost)) if any(c.endswith(cost) for c in scope.costs) \
                else next(iter(scope.costs))
            c = next(c for c in found if c.run_id == r and c.proxy == proxy and c.scope == scope.text
                     and c.cost == real)
            ax.plot(scope.plans[proxy], scope.plans[real], SEED_MARKERS[j % len(SEED_MARKERS)], ms=3.5,
                    color=PALETTE[j % len(PALETTE)], ls="none", label=f"{scope.text}: rho {c.spearman.estimate:+.2f}\n"
                    + (f"95% CI [{c.spearman.lo:+.2f}, {c.spearman.hi:+.2f}]" if c.spearman.known else "no interval"))
            ax.set_ylabel(f"{real} ({scope.costs[real]})")
        ax.set_xlabel(PROXIES[proxy][0] + (" (higher: a cheaper deletion)" if PROXIES[proxy][1] < 0 else ""))
        ax.set_title(_title(results.name(r), cols))
        ax.legend(loc="best", fontsize=7, handletextpad=0.2, borderpad=0.3, framealpha=0.8)
    fig.suptitle(f"Each proxy against the real cost of the deletions it ranks ({results.dataset})")
    return save(fig, folder, "proxies_against_cost")


def shares_figure(results: Results, folder: Path) -> str | None:
    """A panel per run: its units ranked by their share of the damage (Shapley, else Banzhaf), each estimator's
    value with its 95% interval as a bar."""
    found = run_shares(results)
    if not found:
        return None
    estimators = sorted({s.estimator for values in found.values() for s in values}, reverse=True)
    handles = [Line2D([], [], color=PALETTE[i], marker=SEED_MARKERS[i], ls="none", ms=4,
                      label=f"{e} value, 95% bootstrap interval") for i, e in enumerate(estimators)]
    cols = 1 if len(found) == 1 else 2
    fig = new_figure(legend_height(handles, 2.5 * -(-len(found) // cols) + 0.4))
    for ax, (r, values) in zip(_grid(fig, len(found), cols), found.items()):
        order = values[0].units[(-values[0].values).argsort(kind="stable")]
        for s in values:
            i = estimators.index(s.estimator)
            at = {u: j for j, u in enumerate(order)}
            x = np.array([at[u] for u in s.units if u in at], float) + 1 + 0.15 * (i - (len(values) - 1) / 2)
            keep = np.isin(s.units, order)
            cis = [ci for ci, k in zip(s.intervals(), keep) if k]
            y = np.array([ci.estimate for ci in cis])
            lo, hi = np.array([ci.lo for ci in cis]), np.array([ci.hi for ci in cis])
            ax.errorbar(x, y, yerr=np.vstack([y - np.fmin(lo, y), np.fmax(hi, y) - y]), fmt=SEED_MARKERS[i], ms=3,
                        color=PALETTE[i], lw=0.8, capsize=1.5)
        ax.axhline(0, color="0.4", lw=0.6)
        ax.set_xlabel("units ranked by share (1 = largest)")
        ax.set_ylabel(f"share of the damage ({results.measure.rise})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(_title(results.name(r), cols))
    fig.suptitle(f"Each unit's share of the damage of deleting several together ({results.dataset})")
    legend_below(fig, handles)
    return save(fig, folder, "shares")

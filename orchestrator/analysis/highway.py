"""H, the highway view: do the gates of gated shortcuts lean to the shortcut (short paths)?

Veit et al. read gated ResNets (Identity Mappings, Fig. 2) as highway networks: a gate g < 0.5
gives the shortcut the larger weight (1 - g), for exclusive gating (branch g) and shortcut-only
gating (branch 1) alike, so most blocks below 0.5 means the network favours short paths. The
paper's gate bias -6 starts every gate at sigmoid(-6) = 0.0025, where the lean is given before
training; runs at a neutral bias 0 tell whether it survives a start without it. Here: the claim,
the figure and the report section of H, all from the gates table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from orchestrator.analysis.claim import Claim
from orchestrator.analysis.drawing import by_series, legend_below, legend_height, new_figure, run_looks, save
from orchestrator.analysis.prose import markdown_table
from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import Interval, mean_interval, share_interval

LEAN = 0.5              # a block leans to the shortcut when its mean gate is below this
PAPER_BIAS = -6.0       # Identity Mappings' initial gate bias
NEUTRAL_BIAS = 0.0
LINESTYLES = {PAPER_BIAS: "-", NEUTRAL_BIAS: "--"}   # any other bias: dotted


@dataclass(frozen=True)
class GatedRun:
    """One gated run's blocks, with the setting its seeds share."""

    run_id: str
    gating: str                 # exclusive_gating | shortcut_gating
    bias: float                 # the gate bias it started from
    setting: str                # label, mode and network config: a run's seeds share it
    blocks: pd.DataFrame        # its gates rows, by block

    @property
    def leaning(self) -> int:
        return int((self.blocks["gate_mean"] < LEAN).sum())

    @property
    def share(self) -> Interval:
        """Share of blocks whose mean gate is below LEAN, with its exact 95% interval."""
        return share_interval(self.leaning, len(self.blocks))


def gated_runs(results: Results) -> list[GatedRun]:
    """Every run with gates rows, in the runs table's order."""
    found = []
    for r in results.runs["run_id"]:
        rows = results.gates[results.gates["run_id"] == r].sort_values("block")
        if len(rows):
            run = results.run(r)
            cfg = json.loads(run["net_config"])
            found.append(GatedRun(r, cfg["shortcut"], float(cfg["gate_bias"]),
                                  f"{run['label']}|{run['mode']}|{run['net_config']}", rows.reset_index(drop=True)))
    return found


def _settings(runs: list[GatedRun]) -> dict[str, list[GatedRun]]:
    groups: dict[str, list[GatedRun]] = {}
    for g in runs:
        groups.setdefault(g.setting, []).append(g)
    return groups


def _setting_share(runs: list[GatedRun]) -> Interval:
    """One seed: its share with the exact interval; several: the mean share over seeds, bootstrapped."""
    return runs[0].share if len(runs) == 1 else mean_interval([g.share.estimate for g in runs])


def _describe(results: Results, runs: list[GatedRun]) -> str:
    """One seed: its count, share and mean gate; several: one line for the setting, the seeds' counts listed."""
    if len(runs) == 1:
        g = runs[0]
        return (f"{results.name(g.run_id)}: {g.leaning} of {len(g.blocks)} blocks g < {LEAN:g} "
                f"({g.share.scaled(100).text(0, '%')}), mean g {g.blocks['gate_mean'].mean():.3f}")
    first = runs[0]
    name = results.name(first.run_id).removesuffix(f", seed {results.run(first.run_id)['seed']}")
    means = [float(g.blocks["gate_mean"].mean()) for g in runs]
    return (f"{name} ({len(runs)} seeds): {', '.join(str(g.leaning) for g in runs)} of {len(first.blocks)} blocks "
            f"g < {LEAN:g}, mean share {_setting_share(runs).scaled(100).text(0, '%')}, mean g "
            f"{min(means):.3f}-{max(means):.3f}")


def h_claim(results: Results) -> Claim:
    paper = "H gates lean to the shortcut (short paths)"
    rule = (f"the share of blocks with mean gate g < {LEAN:g} (shortcut weight 1 - g > {LEAN:g}) is above "
            f"{LEAN:g} at the paper's gate bias {PAPER_BIAS:g} (mean over seeds when there are several); the "
            f"lean survives a neutral start when the share at bias {NEUTRAL_BIAS:g} is above {LEAN:g} too")
    runs = gated_runs(results)
    if not runs:
        return Claim("H", paper, "no gates results (a gates study on a run with exclusive_gating or "
                                 "shortcut_gating)", "not run", "")
    groups = _settings(runs)
    paper_keys = [k for k, g in groups.items() if g[0].bias == PAPER_BIAS]
    deciding = paper_keys or list(groups)
    parts = [] if paper_keys else [f"no run at the paper's bias {PAPER_BIAS:g}; deciding on the runs there are"]
    said = set(deciding)
    for key in deciding:
        parts.append(_describe(results, groups[key]))
        if not paper_keys:
            continue
        gating = groups[key][0].gating
        alike = [k for k, g in groups.items() if g[0].bias == NEUTRAL_BIAS and g[0].gating == gating]
        if not alike:
            parts.append(f"no {gating} run at bias {NEUTRAL_BIAS:g} to tell whether the lean survives a neutral start")
        for k in (k for k in alike if k not in said):
            survives = "survives" if _setting_share(groups[k]).estimate > LEAN else "does not survive"
            parts.append(f"at bias {NEUTRAL_BIAS:g}, {_describe(results, groups[k])}: the lean {survives} a neutral "
                         f"start")
            said.add(k)
    parts += [_describe(results, g) for k, g in groups.items() if k not in said]  # other biases: reported, never decide
    ok = all(_setting_share(groups[k]).estimate > LEAN for k in deciding)
    several = [k for k in deciding if len(groups[k]) > 1]
    over = ("bootstrap over seeds of each setting's share (covers training variance)" if len(several) == len(deciding)
            else "exact binomial (Clopper-Pearson) over the blocks of one trained network per setting: the spread "
                 "between blocks, not between trainings" + ("; bootstrap over seeds where a setting has several"
                                                            if several else ""))
    return Claim("H", paper, "; ".join(parts), "reproduced" if ok else "not reproduced", rule,
                 over + "; the verdict reads the share itself, the interval is shown beside it")


def h_figure(results: Results, folder: Path) -> str | None:
    """Mean gate per block (band: 10th to 90th percentile), one line per run in its series' colour and
    its seed's marker; line style: its gate bias."""
    runs = gated_runs(results)
    if not runs:
        return None
    looks = run_looks(results)
    style = {g.run_id: LINESTYLES.get(g.bias, ":") for g in runs}
    handles = [Line2D([], [], color=looks[members[0]].color, ls=style[members[0]], lw=1.5, label=series)
               for series, members in by_series(looks, [g.run_id for g in runs]).items()]
    seeds = {looks[g.run_id].seed: looks[g.run_id].marker for g in runs if looks[g.run_id].seed}
    handles += [Line2D([], [], color="0.3", marker=m, ls="none", ms=4, label=s) for s, m in sorted(seeds.items())]
    handles += [Line2D([], [], color="0.3", ls=ls, lw=1.2, label=f"gate bias {bias:g}"
                        + (" (the paper's)" if bias == PAPER_BIAS else " (neutral start)" if bias == NEUTRAL_BIAS else ""))
                for bias, ls in LINESTYLES.items() if any(g.bias == bias for g in runs)]
    fig = new_figure(legend_height(handles, 3.3))
    ax = fig.subplots()
    for g in runs:
        look, x = looks[g.run_id], g.blocks["block"] + 1
        ax.plot(x, g.blocks["gate_mean"], marker=look.marker, ms=3, lw=1.3, color=look.color, ls=style[g.run_id])
        ax.fill_between(x, g.blocks["gate_p10"], g.blocks["gate_p90"], color=look.color, alpha=0.12 if len(runs) <= 4 else 0.05,
                        lw=0)
    for b in sorted(set(runs[0].blocks.loc[runs[0].blocks["changes_shape"], "block"])):
        ax.axvline(b + 1, color="0.6", ls="--", lw=0.7)
    ax.axhline(LEAN, color="0.2", lw=0.9)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block (1-based; grey dashes: downsampling blocks)")
    ax.set_ylabel("gate g on the test set\n(mean; band: 10th-90th pct.)")
    ax.set_title(f"H: gates per block ({results.dataset}); below {LEAN:g} the shortcut weighs more")
    legend_below(fig, handles)
    return save(fig, folder, "h_gates")


def h_section(results: Results) -> list[str]:
    """A row per gated run: how many blocks, their mean gate, the share leaning to the shortcut."""
    runs = gated_runs(results)
    if not runs:
        return []
    rows = [{"run": results.name(g.run_id), "gating": g.gating, "gate bias": f"{g.bias:g}", "blocks": len(g.blocks),
             "mean g over blocks": f"{g.blocks['gate_mean'].mean():.3f}",
             f"blocks with g < {LEAN:g}": f"{g.leaning} ({g.share.scaled(100).text(0, '%')})",
             "min / max block mean": f"{g.blocks['gate_mean'].min():.3f} / {g.blocks['gate_mean'].max():.3f}"}
            for g in runs]
    return (["## Highway view (H): gates per block", "",
             "The gate g of each gated block, on the test set: exclusive gating weighs the residual branch by g and "
             "the shortcut by 1 - g, shortcut-only gating the shortcut by 1 - g alone; below 0.5 the shortcut weighs "
             f"more. A gate bias of {PAPER_BIAS:g} (the paper's) starts every gate at 0.0025; bias {NEUTRAL_BIAS:g} "
             "starts at 0.5.", ""] + markdown_table(pd.DataFrame(rows)) + [""])

"""Identity Mappings (He et al. 2016): the residual-unit table (a)-(e) and the shortcut table,
with verdicts decided against the spread over seeds.

Runs are grouped by what their network *is* (read from each run's net_config, not from how the
spec spelled it), so ``network: preact_resnet32`` and ``network: resnet32, unit: e`` are the same
variant. A difference between two variants counts only when the 95% bootstrap interval of the
difference of their mean errors over seeds (``stats.difference_interval``) leaves 0 out;
otherwise the verdict says the spread is larger than the difference: "not resolved on this data".
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from orchestrator.analysis.claim import ONE_SEED, Claim
from orchestrator.analysis.prose import markdown_table, plural
from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import Interval, difference_interval

# CIFAR-10 error % (PAPERS.md): unit variants for ResNet-110 / ResNet-164; shortcut variants on ResNet-110 (a)
PAPER_UNITS = {"a": (6.61, 5.93), "b": (8.17, 6.50), "c": (7.84, 6.14), "d": (6.71, 5.91), "e": (6.37, 5.46)}
PAPER_SHORTCUTS = {("identity", None): "6.61", ("scaling", None): "12.35", ("exclusive_gating", -6.0): "8.70",
                   ("shortcut_gating", -6.0): "6.91", ("shortcut_gating", 0.0): "12.86", ("conv", None): "12.22",
                   ("dropout", None): "fail (>20)"}
UNIT_NAMES = {"a": "(a) original", "b": "(b) BN after addition", "c": "(c) ReLU before addition",
              "d": "(d) ReLU-only pre-activation", "e": "(e) full pre-activation"}
OVER_SEEDS = "bootstrap over seeds of each variant (one training a seed): covers training variance"
# what makes two runs the same network apart from the variant being compared
_FRAME = ("arch", "depth", "bottleneck", "widths", "option", "stochastic_depth", "in_channels", "num_classes")


@dataclass(frozen=True)
class Group:
    """The seeds of one variant of one network."""

    variant: str              # the unit letter, or the shortcut's text
    frame: tuple              # the network apart from the variant
    errors: tuple[float, ...]  # test error per seed, in points
    paper: str                # the paper's CIFAR-10 number (ResNet-110 / 164), "" when none

    @property
    def depth(self) -> int:
        return int(self.frame[1])


def _configs(results: Results) -> pd.DataFrame:
    """Normally trained residual runs (and imported ones) with their network's fields as columns."""
    runs = results.runs
    if not len(runs):
        return pd.DataFrame()
    runs = runs[runs["mode"].isin(["normal", "pretrained"])]
    cfg = pd.DataFrame([json.loads(c) for c in runs["net_config"]], index=runs.index)
    frame = runs[["run_id", "test_error"]].join(cfg)
    frame = frame[frame["arch"] == "resnet"]
    frame["frame"] = [tuple(tuple(v) if isinstance(v, list) else v for v in row) for row in frame[list(_FRAME)]
                      .itertuples(index=False)]
    return frame


def _errors(results: Results, rows: pd.DataFrame) -> tuple[float, ...]:
    """Test error per seed in points: the intact evaluation where the studies made one, else training's."""
    return tuple(100 * results.intact_error(r) for r in rows["run_id"])


def unit_groups(results: Results) -> list[Group]:
    frame = _configs(results)
    if not len(frame):
        return []
    frame = frame[frame["shortcut"] == "identity"]
    groups = []
    for (fr, unit), rows in frame.groupby(["frame", "unit"], sort=True):
        paper = {110: PAPER_UNITS[unit][0], 164: PAPER_UNITS[unit][1]}.get(int(fr[1]))
        groups.append(Group(unit, fr, _errors(results, rows), f"{paper}" if paper else f"{PAPER_UNITS[unit][0]} (110)"))
    return groups


def _shortcut_key(row) -> tuple[str, float | None]:
    gate = float(row["gate_bias"]) if str(row["shortcut"]).endswith("gating") else None
    return str(row["shortcut"]), gate


def shortcut_text(key: tuple[str, float | None], row=None) -> str:
    shortcut, gate = key
    if gate is not None:
        return f"{shortcut.replace('_', ' ')} (bias {gate:g})"
    if shortcut == "scaling" and row is not None:
        return f"constant scaling {float(row['scale']):g}"
    if shortcut == "dropout" and row is not None:
        return f"dropout p={float(row['dropout_p']):g} on the shortcut"
    return {"identity": "identity (unit a)", "conv": "1x1 conv shortcut"}.get(shortcut, shortcut)


def shortcut_groups(results: Results) -> list[Group]:
    """The shortcut variants on unit (a), the identity shortcut first (the paper's Table 1)."""
    frame = _configs(results)
    if not len(frame):
        return []
    frame = frame[frame["unit"] == "a"].copy()
    frame["key"] = [_shortcut_key(r) for _, r in frame.iterrows()]
    groups = []
    for (fr, key), rows in frame.groupby(["frame", "key"], sort=False):
        paper = PAPER_SHORTCUTS.get(key, "")
        groups.append(Group(shortcut_text(key, rows.iloc[0]), fr, _errors(results, rows),
                            f"{paper} (110)" if paper and int(fr[1]) != 110 else paper))
    frames_with_variants = {g.frame for g in groups if not g.variant.startswith("identity")}
    groups = [g for g in groups if g.frame in frames_with_variants]
    return sorted(groups, key=lambda g: (g.frame, _paper_order(g.variant)))


def _paper_order(text: str) -> tuple[int, str]:
    """The paper's Table 1 order: identity, scaling, exclusive gating, shortcut-only gating, conv, dropout."""
    order = ("identity", "constant scaling", "exclusive gating (bias -6)", "exclusive gating",
             "shortcut gating (bias -6)", "shortcut gating", "1x1 conv", "dropout")
    return next((i for i, prefix in enumerate(order) if text.startswith(prefix)), len(order)), text


def _spread(errors: tuple[float, ...]) -> str:
    if len(errors) < 2:
        return "one seed"
    q1, q3 = np.percentile(errors, [25, 75])
    return f"{min(errors):.2f}-{max(errors):.2f} (IQR {q1:.2f}-{q3:.2f})"


def _versus(base: Group, other: Group) -> tuple[str, Interval]:
    """'better' | 'worse' | 'unresolved' | 'one seed': other against base, by the interval of
    mean(other) - mean(base) in error points."""
    diff = difference_interval(base.errors, other.errors)
    if min(len(base.errors), len(other.errors)) < 2:
        return "one seed", diff
    return ("better" if diff.below(0) else "worse" if diff.above(0) else "unresolved"), diff


def table(groups: list[Group], base: Group | None, what: str) -> pd.DataFrame:
    rows = []
    for g in groups:
        row = {what: UNIT_NAMES.get(g.variant, g.variant), "depth": g.depth, "seeds": len(g.errors),
               "median error (%)": f"{np.median(g.errors):.2f}", "spread over seeds (%)": _spread(g.errors),
               "paper, CIFAR-10 (%)": g.paper}
        if base is not None and g is not base and g.frame == base.frame:
            outcome, diff = _versus(base, g)
            row[f"against {UNIT_NAMES.get(base.variant, base.variant)}"] = f"{diff.text(2)} points: {outcome}"
        elif base is not None:
            row[f"against {UNIT_NAMES.get(base.variant, base.variant)}"] = "-"
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(outcomes: dict[str, str], good: str, bad: str) -> str:
    """good: the outcome every comparison must have for the claim; bad: the one that refutes it."""
    if not outcomes:
        return "not run"
    if any(o == bad for o in outcomes.values()):
        return "not reproduced"
    if all(o == "one seed" for o in outcomes.values()):
        return ONE_SEED
    if all(o == good for o in outcomes.values()):
        return "reproduced"
    open_ = [v for v, o in outcomes.items() if o != good]
    return f"not resolved on this data: {', '.join(open_)} within the seed spread"


def im_units(results: Results) -> Claim:
    paper = "IM units: (e) full pre-activation is best of (a)-(e) (ResNet-110: 6.37% vs 6.61-8.17%)"
    groups = unit_groups(results)
    bases = [g for g in groups if g.variant == "e"]
    outcomes, parts = {}, []
    for base in bases:
        for g in groups:
            if g.frame == base.frame and g is not base:
                outcome, diff = _versus(base, g)
                # the claim is about (e): e "better" means the other unit's error is higher
                outcomes[f"{UNIT_NAMES[g.variant]} at depth {g.depth}"] = {"worse": "e better", "better": "e worse"}.get(
                    outcome, outcome)
                parts.append(f"{g.variant} - e at depth {g.depth}: {diff.text(2)} points")
    if not outcomes:
        return Claim("IM-units", paper, "needs unit (e) and another unit variant of the same network", "not run", "")
    verdict = _verdict(outcomes, "e better", "e worse")
    return Claim("IM-units", paper, "; ".join(parts), verdict,
                 "each other unit's mean error over seeds minus (e)'s: its 95% bootstrap interval above 0 for all "
                 "(reproduced), below 0 for any (not reproduced), else not resolved", OVER_SEEDS)


def im_shortcuts(results: Results) -> Claim:
    paper = "IM shortcuts: no shortcut variant beats the identity shortcut (ResNet-110: 6.61% vs 6.91-12.86%, dropout fails)"
    groups = shortcut_groups(results)
    outcomes, parts = {}, []
    for base in [g for g in groups if g.variant.startswith("identity")]:
        for g in groups:
            if g.frame == base.frame and g is not base:
                outcome, diff = _versus(base, g)
                outcomes[f"{g.variant} at depth {g.depth}"] = outcome
                parts.append(f"{g.variant} - identity at depth {g.depth}: {diff.text(2)} points")
    if not outcomes:
        return Claim("IM-shortcuts", paper, "needs a shortcut variant and the identity shortcut (unit a) of the same "
                                            "network", "not run", "")
    verdict = _verdict(outcomes, "worse", "better")
    return Claim("IM-shortcuts", paper, "; ".join(parts), verdict,
                 "each variant's mean error over seeds minus identity's: any 95% bootstrap interval below 0 (a variant "
                 "beats identity): not reproduced; all above 0: reproduced; else not resolved", OVER_SEEDS)


def im_section(results: Results) -> list[str]:
    """The report's two tables: median error over seeds, spread, the paper's number, the comparison."""
    lines = []
    units = unit_groups(results)
    if len({g.variant for g in units}) > 1:
        base = next((g for g in units if g.variant == "e"), None)
        lines += ["### Identity Mappings: residual-unit variants", "",
                  f"Test error over seeds ({plural(max(len(g.errors) for g in units), 'seed')} at most); the paper's "
                  "numbers are CIFAR-10 medians of 5 runs (ResNet-110, or 164 where the depth is 164). The last "
                  "column: the unit's mean error minus (e)'s, with its 95% bootstrap interval over seeds.", ""]
        lines += markdown_table(table(units, base, "unit")) + [""]
    shortcuts = shortcut_groups(results)
    if shortcuts:
        base = next((g for g in shortcuts if g.variant.startswith("identity")), None)
        lines += ["### Identity Mappings: shortcut variants (unit a)", "",
                  "As above; the last column: the variant's mean error minus the identity shortcut's.", ""]
        lines += markdown_table(table(shortcuts, base, "shortcut")) + [""]
    return (["## Identity Mappings tables", ""] + lines) if lines else []

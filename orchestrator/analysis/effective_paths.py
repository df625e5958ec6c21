"""T1 (Veit et al. 2016, Table 1): training on effective paths only, against normal training.

The paper trains on 23 of 54 blocks per mini-batch and tests with all 54, without saying how the
branches are combined at test time; each test rule an effective-paths run was evaluated under
(``workloads.train.inference_rules``) is compared here with normal training of the same network over
seeds, and the verdict is taken on the default rule ("scaled", or the first rule run).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from workloads.train.modes import scaled_active_count

from orchestrator.analysis.claim import ONE_SEED, Claim
from orchestrator.analysis.prose import plural
from orchestrator.analysis.results import Results, variant_text
from orchestrator.analysis.stats import difference_interval, mean_interval

PAPER_ERRORS = (5.96, 6.10)   # CIFAR-10 test error %, effective paths / normal (ResNet-110, 23 of 54 blocks)
PAPER = "T1 training on effective paths only matches normal training (5.96% vs 6.10%)"
MATCH_MARGIN = 2.0            # error points: "matches" = no worse than normal training by more than this
DEFAULT_RULE = "scaled"       # PAPERS.md's decision: each branch times m/n at test time


@dataclass(frozen=True)
class Group:
    """The effective-paths and normal runs of one network (label and variant), their errors in %."""

    label: str
    variant: str
    blocks: str                             # "m of n blocks" per training mini-batch
    rules: dict[str, list[float]]           # rule -> effective-paths errors over seeds, in rule order
    seeds: dict[str, list[int]]             # rule -> the seeds behind them
    normal: list[float]                     # normal training's errors over seeds

    @property
    def name(self) -> str:
        variant = variant_text(self.variant)
        return f"{self.label} [{variant}]" if variant else self.label

    @property
    def default_rule(self) -> str:
        return DEFAULT_RULE if DEFAULT_RULE in self.rules else next(iter(self.rules), "")


def groups(results: Results) -> list[Group]:
    """One group per label and variant that has effective-paths runs (normal runs may be missing)."""
    runs = results.runs
    found = []
    for (label, variant), g in runs[runs["mode"] == "effective_paths"].groupby(["label", "variant"], sort=True):
        normal = runs[(runs["mode"] == "normal") & (runs["label"] == label) & (runs["variant"] == variant)]
        order = [rule for r in g["run_id"] for rule in results.test_rules(r)]
        rules = {rule: [] for rule in dict.fromkeys(order)}
        seeds = {rule: [] for rule in rules}
        for run_id, seed in zip(g["run_id"], g["seed"]):
            for rule in rules:
                error = results.intact_error(run_id, rule)
                if np.isfinite(error):
                    rules[rule].append(100 * error)
                    seeds[rule].append(int(seed))
        row = g.iloc[0]
        n = int(row["num_blocks"])
        m = json.loads(row["train_config"] or "{}").get("active_blocks") or scaled_active_count(n)
        found.append(Group(label, variant, f"{m} of {n} blocks", {r: v for r, v in rules.items() if v},
                           {r: v for r, v in seeds.items() if v},
                           [100 * results.intact_error(r) for r in normal["run_id"]]))
    return found


def _verdict(group: Group) -> tuple[str, str]:
    """(verdict, the numbers behind it) for one group, on its default rule."""
    rule = group.default_rule
    effective = group.rules.get(rule, [])
    if not group.normal:
        return "not run", f"{group.name}: no normal run to compare with"
    if not effective:
        return "not run", f"{group.name}: no intact evaluation under a test rule yet (unravel lesion or run adds it)"
    each = "; ".join(f"{r} {mean_interval(v).text(2, '%')} over {plural(len(v), 'seed')}"
                     for r, v in group.rules.items())
    text = (f"{group.name} ({group.blocks} per mini-batch): effective paths, {each}; normal training "
            f"{mean_interval(group.normal).text(2, '%')} over {plural(len(group.normal), 'seed')}")
    if len(effective) < 2 or len(group.normal) < 2:
        return ONE_SEED, (f"{text}; {plural(len(effective), 'effective-path seed')} and "
                          f"{plural(len(group.normal), 'normal seed')}: at least 2 each are needed to judge a "
                          f"difference against the spread between trainings")
    diff = difference_interval(group.normal, effective)
    text += f"; {rule} - normal {diff.estimate:+.2f} points [95% CI {diff.lo:+.2f}, {diff.hi:+.2f}]"
    if diff.hi < MATCH_MARGIN:
        return "reproduced", text
    if diff.lo > MATCH_MARGIN:
        return "not reproduced", text
    return "not resolved on this data", text


def t1_claim(results: Results) -> Claim:
    rule = (f"under the default test rule ({DEFAULT_RULE}: each branch times m/n; else the first rule run), the 95% "
            f"bootstrap interval of mean effective-path error minus mean normal error over seeds lies below "
            f"+{MATCH_MARGIN:g} points (reproduced), above it (not reproduced), or straddles it (not resolved); "
            f"at least 2 seeds each")
    found = groups(results)
    if not found:
        return Claim("T1", PAPER, "no effective-path run", "not run", rule)
    judged = [_verdict(g) for g in found]
    verdicts = list(dict.fromkeys(v for v, _ in judged))
    verdict = verdicts[0] if len(verdicts) == 1 else "; ".join(f"{v} ({g.name})" for g, (v, _) in zip(found, judged))
    return Claim("T1", PAPER, "; ".join(text for _, text in judged), verdict, rule,
                 "bootstrap over seeds (each seed one training of each procedure): covers training variance")


def _spread(values: list[float]) -> tuple[str, str]:
    if not values:
        return "", ""
    return f"{np.median(values):.2f}%", f"{min(values):.2f}-{max(values):.2f}%"


def t1_section(results: Results) -> list[str]:
    """The report's T1 table: each rule's error over seeds beside normal training's and the paper's."""
    found = groups(results)
    if not found:
        return []
    lines = ["## Training on effective paths only (Veit et al. Table 1)", "",
             f"The paper does not say how the blocks are combined at test time. Rules: **scaled** (the default: each "
             f"residual branch times m/n, as stochastic depth scales by survival), **unscaled** (as trained), "
             f"**recalibrated** (unscaled, BatchNorm statistics re-estimated on training images with every block "
             f"on). Errors of the intact network over seeds; the paper: {PAPER_ERRORS[0]:.2f}% vs {PAPER_ERRORS[1]:.2f}% "
             f"(CIFAR-10, ResNet-110, 23 of 54 blocks).", "",
             "| run | blocks per mini-batch | rule | runs (seeds) | median error | min-max | normal: median | "
             "normal: min-max | paper (effective / normal) |", "|" + "---|" * 9]
    for g in found:
        normal = _spread(g.normal)
        rows = g.rules or {"(not evaluated yet)": []}
        for rule, values in rows.items():
            seeds = ", ".join(str(s) for s in g.seeds.get(rule, []))
            median, span = _spread(values)
            lines.append(f"| {g.name} | {g.blocks} | {rule} | {len(values)} ({seeds}) | {median} | {span} | "
                         f"{normal[0] or 'n/a'} | {normal[1]} | {PAPER_ERRORS[0]:.2f}% / {PAPER_ERRORS[1]:.2f}% |")
    return lines + [""]

"""The result tables of one experiment, read from disk, with the facts analysis needs per run.

Each fact is computed once per Results and shared by the claims, the figures and the report.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from workloads.models import NetConfig
from workloads.surgery import layer_units
from workloads.surgery.paths import (contribution_fractions, effective_range, log10_mean, log10_total_contribution,
                                     probability_in_range)
from workloads.train.inference_rules import TEST_RULES

from orchestrator import store
from orchestrator.analysis.stats import mean_interval
from orchestrator.experiment.networks import block_infos
from orchestrator.store.current import current_rows
from orchestrator.store.recorded import recorded_experiment

# the two thresholds that define a run's facts (veit_claims.py states the ones that decide verdicts)
CRITICAL_RISE = 10.0        # error points: a non-downsampling block whose deletion costs more is "critical"
EFFECTIVE_MASS = 0.9        # F6c: the range of path lengths holding this share of the gradient


SUBLAYER_KINDS = {"attention": "attention", "mlp": "MLP"}   # a transformer's units, as the report names them


@dataclass(frozen=True)
class Structure:
    """What analysis needs of a network's blocks: as OUT's spec.json records them, else (a run the record does
    not hold) from the network's meta-device skeleton, which has no weights."""

    num_blocks: int
    downsampling: tuple[int, ...]   # 0-based positions of the blocks that change shape
    plain: bool
    layer_of: tuple[int, ...]       # each block's layer (0-based, as span deletion counts layers)
    paths: int = -1                 # residual units: path lengths run 0..paths (a layer without a shortcut
    #                                 is on every path); -1: every block is one
    kinds: tuple[str, ...] = ()     # what each block computes: "conv" (a residual block), "attention", "mlp"

    def __post_init__(self) -> None:
        if self.paths < 0:
            object.__setattr__(self, "paths", self.num_blocks)

    @classmethod
    def of(cls, cfg: NetConfig, infos: tuple | None = None) -> "Structure":
        infos = block_infos(cfg) if infos is None else infos
        layer_of = {b: layer for layer, units in enumerate(layer_units(infos)) for b in units}
        return cls(len(infos), tuple(i.index for i in infos if i.changes_shape), cfg.arch == "plain",
                   tuple(layer_of[i.index] for i in infos), sum(i.residual for i in infos),
                   tuple(i.kind for i in infos))

    @property
    def sublayers(self) -> bool:
        """A transformer seen as units: each layer's attention and MLP sublayers, not whole blocks."""
        return any(k in SUBLAYER_KINDS for k in self.kinds)

    def unit_text(self, block: int) -> str:
        """A unit by its 1-based number, with its layer and kind where it is a sublayer: ``3 (layer 2
        attention)``; a block is its number alone."""
        if not self.sublayers:
            return str(block + 1)
        return f"{block + 1} (layer {self.layer_of[block] + 1} {SUBLAYER_KINDS.get(self.kinds[block], self.kinds[block])})"

    def units_text(self, blocks) -> str:
        """``block 3``, ``blocks 1, 2``; for a transformer ``units 1 (layer 1 attention), 2 (layer 1 MLP)``."""
        blocks = list(blocks)
        noun = "unit" if self.sublayers else "block"
        return f"{noun}{'s' if len(blocks) > 1 else ''} {', '.join(self.unit_text(b) for b in blocks)}"

    @property
    def num_layers(self) -> int:
        return max(self.layer_of, default=-1) + 1

    @property
    def downsampling_layers(self) -> tuple[int, ...]:
        """The layers holding a block that changes shape."""
        return tuple(sorted({self.layer_of[b] for b in self.downsampling}))


@dataclass(frozen=True, eq=False)
class EffectivePaths:
    """The path lengths lo..hi that carry EFFECTIVE_MASS of the gradient (F6c)."""

    lo: int
    hi: int
    share: float                # of all 2^n paths
    fractions: np.ndarray       # each length's share of the total gradient, k = 0..n


def variant_text(variant_json: str) -> str:
    """``{"gate_bias": 0.0, "shortcut": "shortcut_gating"}`` as ``shortcut=shortcut_gating, gate_bias=0``:
    the setting that names the variant first."""
    v = json.loads(variant_json or "{}")
    first = [k for k in ("unit", "shortcut") if k in v]
    return ", ".join(f"{k}={v[k]:g}" if isinstance(v[k], float) else f"{k}={v[k]}"
                     for k in first + sorted(set(v) - set(first)))


@dataclass(frozen=True)
class Measure:
    """What the lesion figures plot: test error in percent for images, mean next-token loss for a language
    model (the layer-pruning studies' measure; its verdicts still read next-token error in points)."""

    column: str      # lesion column: error | loss
    scale: float     # plotted = scale x column
    label: str       # the y axis
    top: float | None   # the axis' upper end, where the measure has one
    rise: str        # what a rise over the intact network is counted in
    error: str       # what the verdicts' error is: test error, or next-token (top-1) error

    def of(self, values) -> np.ndarray:
        return self.scale * np.asarray(values, float)

    @property
    def points(self) -> str:
        """What the verdicts' error points are points of: ``points`` of test error, said as such for text."""
        return "points" if self.error == "test error" else f"points of {self.error}"


ERROR = Measure("error", 100.0, "test error (%)", 100.0, "points", "test error")
NEXT_TOKEN_LOSS = Measure("loss", 1.0, "next-token loss (nats)", None, "nats", "next-token error")


def _once(method):
    """Memoise a Results method per instance and arguments (the tables do not change once loaded)."""
    @functools.wraps(method)
    def memoised(self: "Results", *args):
        key = (method.__name__, *args)
        if key not in self._memo:
            self._memo[key] = method(self, *args)
        return self._memo[key]
    return memoised


@dataclass
class Results:
    out: Path
    runs: pd.DataFrame
    epochs: pd.DataFrame
    lesion: pd.DataFrame
    gradients: pd.DataFrame
    errors: pd.DataFrame
    spec: dict
    gates: pd.DataFrame         # H: a row per gated block of a run
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    stale: dict = field(default_factory=dict)   # table -> rows of earlier settings, left out
    rules: dict = field(default_factory=dict)   # run id -> its test-time rules, as the spec lists them
    blocks: dict = field(default_factory=dict)  # NetConfig -> its blocks, as spec.json records them
    tasks: pd.DataFrame = field(default_factory=pd.DataFrame)          # lm-eval's scores: a row per plan, task,
    #                                                                     metric and filter
    task_samples: pd.DataFrame = field(default_factory=pd.DataFrame)   # a row per plan, task and document
    proxies: pd.DataFrame = field(default_factory=pd.DataFrame)        # one-forward scores: a row per proxy and
    #                                                                     unit or span

    @classmethod
    def load(cls, out: str | Path) -> "Results":
        """OUT's tables, restricted to the rows the current spec (as OUT/spec.json records it) asks for: rows of
        earlier settings stay on disk (``unravel prune`` removes them) and are counted in ``stale``. Reads OUT
        alone; SpecError if its spec.json cannot be read."""
        out = store.where(out)
        experiment = recorded_experiment(out)
        tables = {name: store.read_table(out, name) for name in ("runs", "epochs")}
        tables.update({name: store.read_parts(out, name) for name in (*store.STUDY_TABLES, "errors")})
        stale = {}
        if experiment is not None:
            tables, stale = current_rows(experiment, tables)
        return cls(out, tables["runs"], tables["epochs"], tables["lesion"], tables["gradients"], tables["errors"],
                   experiment.raw if experiment else {}, tables["gates"], stale=stale,
                   rules={t.run_id: t.test_rules for t in experiment.runs} if experiment else {},
                   blocks=experiment.blocks if experiment else {}, tasks=tables["tasks"],
                   task_samples=tables["task_samples"], proxies=tables["proxies"])

    def computed(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per Results under ``key``: what a topic module derives from the tables and several of
        its claims and figures read."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @functools.cached_property
    def _runs_by_id(self) -> pd.DataFrame:
        return self.runs.set_index("run_id")

    def run(self, run_id: str) -> pd.Series:
        return self._runs_by_id.loc[run_id]

    def structure(self, run_id: str) -> Structure:
        return self._structure(self.run(run_id)["net_config"])

    @_once
    def _structure(self, net_config: str) -> Structure:
        # keyed by the config, so seeds of one network share one structure
        cfg = NetConfig.from_json(net_config)
        return Structure.of(cfg, self.blocks.get(cfg))

    @_once
    def study(self, name: str) -> pd.DataFrame:
        return self.lesion[self.lesion["study"] == name]

    @_once
    def test_rules(self, run_id: str) -> tuple[str, ...]:
        """The test-time rules an effective-paths run was evaluated under, the one its studies use first
        (the spec's order; without a spec, the order of TEST_RULES); () for other modes."""
        listed = self.rules.get(run_id)
        if listed is not None:
            return listed
        rows = self.lesion[(self.lesion["run_id"] == run_id) & (self.lesion["study"] == "intact")]
        return tuple(r for r in TEST_RULES if r in set(rows["test_rule"]))

    @_once
    def intact_error(self, run_id: str, rule: str | None = None) -> float:
        """The intact network's test error, under ``rule`` (default: the rule its studies use); nan when that
        rule was not evaluated; the training's final test error for a run without intact rows."""
        rows = self.lesion[(self.lesion["run_id"] == run_id) & (self.lesion["study"] == "intact")]
        rules = self.test_rules(run_id)
        wanted = rule if rule is not None else rules[0] if rules else ""
        if wanted:
            rows = rows[rows["test_rule"] == wanted]
            return float(rows["error"].iloc[0]) if len(rows) else float("nan")
        return float(rows["error"].iloc[0]) if len(rows) else float(self.run(run_id)["test_error"])

    @functools.cached_property
    def measure(self) -> Measure:
        """Next-token loss where the lesions were measured on text, else test error."""
        language = "metric" in self.lesion and (self.lesion["metric"] == "next_token").any()
        return NEXT_TOKEN_LOSS if language else ERROR

    def intact_value(self, run_id: str) -> float:
        """The intact network's value of ``measure``, as plotted."""
        if self.measure.column == "error":
            return self.measure.of(self.intact_error(run_id)).item()
        rows = self.lesion[(self.lesion["run_id"] == run_id) & (self.lesion["study"] == "intact")]
        return float(rows["loss"].iloc[0]) if len(rows) else float("nan")

    @_once
    def single_deletion_rises(self, run_id: str) -> dict[int, float]:
        """Error points each single-block deletion adds to the intact network, by 0-based block."""
        rows = self.study("single_deletion")
        rows = rows[rows["run_id"] == run_id]
        base = self.intact_error(run_id)
        return {int(d[0]): 100 * (e - base) for d, e in zip(rows["deleted"], rows["error"])}

    @_once
    def critical_blocks(self, run_id: str) -> tuple[int, ...]:
        """Non-downsampling blocks whose single deletion costs more than CRITICAL_RISE points."""
        down = set(self.structure(run_id).downsampling)
        return tuple(sorted(b for b, rise in self.single_deletion_rises(run_id).items()
                            if rise > CRITICAL_RISE and b not in down))

    @_once
    def random_deletions(self, run_id: str, avoiding_critical: bool = False) -> pd.DataFrame:
        """F5a's rows of a run; ``avoiding_critical``: only the draws that spare its critical blocks."""
        rows = self.study("random_deletion")
        rows = rows[rows["run_id"] == run_id]
        if avoiding_critical:
            crit = set(self.critical_blocks(run_id))
            rows = rows[rows["deleted"].map(lambda b: not crit & {int(x) for x in b})]
        return rows

    @_once
    def deletion_curve(self, run_id: str, avoiding_critical: bool = False, column: str = "error") -> pd.DataFrame:
        """F5a per k: mean error (or ``column``) over the draws with its 95% bootstrap interval (lo, hi) and the
        draws behind it."""
        curve = []
        for k, g in self.random_deletions(run_id, avoiding_critical).groupby("k"):
            ci = mean_interval(g[column])
            curve.append({"k": int(k), "mean": ci.estimate, "lo": ci.lo, "hi": ci.hi, "draws": ci.n})
        return pd.DataFrame(curve, columns=["k", "mean", "lo", "hi", "draws"])

    @_once
    def gradient_profile(self, run_id: str) -> pd.DataFrame:
        """Per path length k: mean log10 norm (mean of norms, in log space), std, draws."""
        g = self.gradients[self.gradients["run_id"] == run_id]
        g = g[np.isfinite(g["log10_norm"])]
        return pd.DataFrame([{"k": int(k), "log10_mean": log10_mean(v["log10_norm"]),
                              "log10_std": float(v["log10_norm"].std(ddof=0)), "draws": len(v)}
                             for k, v in g.groupby("k")])

    @_once
    def effective_paths(self, run_id: str) -> EffectivePaths:
        prof, n = self.gradient_profile(run_id), self.structure(run_id).paths
        log_norm = np.full(n + 1, -np.inf)  # lengths never measured contribute nothing
        log_norm[prof["k"].to_numpy()] = prof["log10_mean"].to_numpy()
        fractions = contribution_fractions(log10_total_contribution(n, log_norm))
        lo, hi = effective_range(fractions, EFFECTIVE_MASS)
        return EffectivePaths(lo, hi, probability_in_range(n, lo, hi), fractions)

    def title(self, run_id: str) -> str:
        return f"{self.name(run_id)} on {self.run(run_id)['dataset']}"

    def name(self, run_id: str) -> str:
        """The run as legends, claim lines and tables name it: its label, its variant, its mode when not
        normal, and its seed when the experiment has several, so no two runs share a name."""
        return self._names().get(run_id, run_id)

    def series(self, run_id: str) -> str:
        """The run's name without its seed: what its seeds share (one colour in the figures, one group in a
        comparison over seeds)."""
        return self.name(run_id).removesuffix(f", seed {self.run(run_id)['seed']}")

    @_once
    def _names(self) -> dict[str, str]:
        several_seeds = self.runs["seed"].nunique() > 1 if len(self.runs) else False
        names = {}
        for row in self.runs.itertuples(index=False):
            text = row.label
            variant = variant_text(row.variant)
            if variant:
                text += f" [{variant}]"
            if row.mode != "normal":
                text += f", {row.mode.replace('_', ' ')}"
            if several_seeds:
                text += f", seed {row.seed}"
            names[row.run_id] = text
        counts = pd.Series(list(names.values())).value_counts()
        # settings the name leaves out (two entries with one label and different overrides): the run id tells
        return {r: (f"{t} ({r})" if counts[t] > 1 else t) for r, t in names.items()}

    @property
    def dataset(self) -> str:
        return str(self.runs["dataset"].iloc[0]) if len(self.runs) else "?"

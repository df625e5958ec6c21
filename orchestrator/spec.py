"""Experiment specs: YAML in, a validated, frozen experiment out, before anything starts.

Every mistake is reported as one line naming the field (``training.runs[1].network:
unknown network 'resnet21'``) and nothing runs until the whole spec is valid.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from workloads.data import DATASETS, STREAMED
from workloads.models import NETWORKS, NetConfig, network_config
from workloads.train.modes import MODES
from workloads.train.recipe import TrainConfig


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and the problem."""


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "digits"
    root: str = "data"
    download: bool = False
    image_size: int = 224          # imagenet: centre crop
    resize: int | None = None      # imagenet: shorter side before the crop (default 256/224 of the crop)
    num_classes: int = 1000        # imagenet: class folders under val/
    workers: int = 0               # imagenet: DataLoader processes per evaluator

    @property
    def loader_options(self) -> dict:
        """Keyword arguments of ``workloads.data.load_dataset`` beyond name, root and download."""
        return {"image_size": self.image_size, "resize": self.resize, "workers": self.workers}


@dataclass(frozen=True)
class Trial:
    """One run the studies can use: trained here (a network, its variant, a mode and a seed),
    or trained elsewhere and imported from the user's checkpoint (mode ``pretrained``)."""

    run_id: str
    label: str
    network: str
    variant: str          # JSON of the overrides that make this variant
    mode: str
    seed: int
    net_config: NetConfig
    train_config: TrainConfig | None
    checkpoint: str = ""  # imported runs: the user's checkpoint file

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "label": self.label, "network": self.network, "variant": self.variant,
                "mode": self.mode, "seed": self.seed, "net_config": self.net_config.to_json(),
                "train_config": self.train_config.to_json() if self.train_config else "",
                "checkpoint": self.checkpoint}

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        train = TrainConfig.from_dict(json.loads(d["train_config"])) if d["train_config"] else None
        return cls(d["run_id"], d["label"], d["network"], d["variant"], d["mode"], int(d["seed"]),
                   NetConfig.from_json(d["net_config"]), train, d.get("checkpoint", ""))


@dataclass(frozen=True)
class TrainingSpec:
    trials: tuple[Trial, ...]
    cpu: float = 1.0
    gpu: float = 0.0
    max_failures: int = 2


STUDIES = ("single_deletion", "random_deletion", "reorder", "gradients")
# which paper figure each study reproduces
FIGURES = {"intact": "baseline", "single_deletion": "F3/F8", "random_deletion": "F5a", "reorder": "F5b",
           "gradients": "F6b"}


@dataclass(frozen=True)
class StudySpec:
    study: str
    runs: tuple[str, ...] | None   # labels or run ids; None: every run the study applies to
    k_max: int = 0                 # random_deletion, reorder: k = 1..k_max
    draws: int = 0                 # draws per k (gradients: per k as well)
    batch_size: int = 128          # gradients: training images per forward


@dataclass(frozen=True)
class StudiesSpec:
    studies: tuple[StudySpec, ...] = ()
    test_examples: int | None = None      # None: the whole test set
    precision: str = "auto"               # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    recalibrate_bn: bool = False
    calibration_examples: int = 512
    exclude_blocks: tuple[int, ...] = ()  # kept out of the random pools (F5a, F5b)
    evaluators: int = 2
    cpu: float = 1.0
    gpu: float = 0.0
    plans_per_batch: int = 64
    max_in_flight: int = 2                # batches queued per evaluator

    def study(self, name: str) -> StudySpec | None:
        return next((s for s in self.studies if s.study == name), None)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    data: DataSpec
    training: TrainingSpec
    studies: StudiesSpec = field(default_factory=StudiesSpec)
    raw: dict = field(default_factory=dict, compare=False)
    path: str = ""
    models: tuple[Trial, ...] = ()   # imported from users' checkpoints, not trained here

    @property
    def runs(self) -> tuple[Trial, ...]:
        """Every run the studies may use: trained, then imported."""
        return self.training.trials + self.models

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)


# -- validation helpers ------------------------------------------------------------

def _fail(where: str, problem: str) -> None:
    raise SpecError(f"{where}: {problem}")


def _mapping(value: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        _fail(where, f"must be a mapping, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            _fail(f"{where}.{key}" if where else str(key), f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for key in required:
        if key not in value:
            _fail(f"{where}.{key}" if where else key, "is required")
    return value


def _typed(value: Any, kind: type | tuple, where: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        _fail(where, f"must be {' or '.join(k.__name__ for k in kinds)}, got a boolean")
    if not isinstance(value, kinds):
        _fail(where, f"must be {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__} {value!r}")
    return value


def _count(value: Any, where: str, low: int = 0, high: int = 10**9) -> int:
    _typed(value, int, where)
    if not low <= value <= high:
        _fail(where, f"must be between {low} and {high:,}, got {value}")
    return value


def _number(value: Any, where: str, low: float, high: float) -> float:
    _typed(value, (int, float), where)
    if not math.isfinite(value) or not low <= value <= high:
        _fail(where, f"must be a number between {low:g} and {high:g}, got {value}")
    return float(value)


def _amount(value: Any, where: str) -> float:
    """A resource request: a finite number >= 0, whole above 1 (Ray splits only one GPU or CPU)."""
    amount = _number(value, where, 0, 10_000)
    if amount > 1 and amount != int(amount):
        _fail(where, f"above 1 must be a whole number, got {value}")
    return amount


def _check_rule(value: Any, rule: Any, where: str) -> None:
    """A field rule: a type (str, bool), (int|float, low, high), or ([int], low, high, max_items);
    a rule in a set also admits null."""
    if isinstance(rule, set):
        if value is None:
            return
        (rule,) = rule
    if rule in (str, bool):
        _typed(value, rule, where)
    elif rule[0] is int:
        _count(value, where, rule[1], rule[2])
    elif rule[0] is float:
        _number(value, where, rule[1], rule[2])
    else:
        kind, low, high, most = rule
        if not isinstance(value, list) or not 1 <= len(value) <= most:
            _fail(where, f"must be a list of 1 to {most} numbers, got {value!r}")
        for i, item in enumerate(value):
            _check_rule(item, (kind[0], low, high), f"{where}[{i}]")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8]


# -- sections ----------------------------------------------------------------------

_IMAGE_FOLDER_KEYS = {"image_size", "resize", "num_classes", "workers"}


def _data(raw: Any) -> DataSpec:
    d = _mapping(raw if raw is not None else {}, "data", {"dataset", "root", "download"} | _IMAGE_FOLDER_KEYS)
    dataset = _typed(d.get("dataset", "digits"), str, "data.dataset")
    if dataset not in DATASETS:
        _fail("data.dataset", f"unknown dataset {dataset!r} (known: {', '.join(DATASETS)})")
    root = _typed(d.get("root", "data"), str, "data.root")
    download = _typed(d.get("download", False), bool, "data.download")
    if dataset not in STREAMED:
        for key in sorted(_IMAGE_FOLDER_KEYS & set(d)):
            _fail(f"data.{key}", f"applies only to dataset imagenet, not {dataset}")
        return DataSpec(dataset, root, download)
    if download:
        _fail("data.download", "ImageNet cannot be downloaded; put its val/ (and train/) folders under data.root")
    size = _count(d.get("image_size", 224), "data.image_size", 16, 4096)
    resize = d.get("resize")
    if resize is not None and _count(resize, "data.resize", 16, 8192) < size:
        _fail("data.resize", f"must be at least data.image_size ({size}), got {resize}")
    return DataSpec(dataset, root, False, size, resize, _count(d.get("num_classes", 1000), "data.num_classes", 2, 10**6),
                    _count(d.get("workers", 0), "data.workers", 0, 256))


_DATA_SHAPES = {"digits": (1, 10, 8), "cifar10": (3, 10, 32), "cifar100": (3, 100, 32)}


def _data_shape(data: DataSpec) -> tuple[int, int, int]:
    """(channels, classes, image size) the networks are built for."""
    if data.dataset in STREAMED:
        return 3, data.num_classes, data.image_size
    return _DATA_SHAPES[data.dataset]
# the network and recipe fields a spec may set, with their types and sane bounds (a width of
# 64,000 channels would be built, to count its blocks, before any error)
_NET_RULES = {
    "arch": str, "torchvision_arch": str, "unit": str, "option": str, "shortcut": str, "bottleneck": bool,
    "stochastic_depth": bool, "depth": (int, 2, 1202), "gate_bias": (float, -100, 100), "scale": (float, 0, 100),
    "dropout_p": (float, 0, 1), "final_survival": (float, 0, 1), "widths": ([int], 1, 2048, 8),
    "layers_per_stage": (int, 1, 100),
}
_TRAIN_RULES = {
    "batch_size": (int, 1, 65_536), "lr": (float, 0, 100), "momentum": (float, 0, 1), "nesterov": bool,
    "weight_decay": (float, 0, 1), "milestones": ([float], 0, 1, 100), "lr_decay": (float, 0, 1),
    "warmup": {bool}, "warmup_lr": (float, 0, 100), "warmup_fraction": (float, 0, 1),
    "active_blocks": {(int, 1, 100_000)}, "eval_every": {(int, 1, 10**8)}, "checkpoint_every": (int, 1, 10**6),
}
_NET_FIELDS = set(_NET_RULES)
_TRAIN_FIELDS = set(_TRAIN_RULES)
assert _NET_FIELDS == {f.name for f in dataclasses.fields(NetConfig)} - {"name", "in_channels", "num_classes",
                                                                          "image_size"}
assert _TRAIN_FIELDS == {f.name for f in dataclasses.fields(TrainConfig)} - {"mode", "seed", "iterations"}


def _fields(raw: Any, where: str, rules: dict) -> dict:
    """A mapping of network or recipe fields, each checked against its rule."""
    values = _mapping(raw, where, set(rules))
    for key, value in values.items():
        _check_rule(value, rules[key], f"{where}.{key}")
    return values


def _net_config(network: str, overrides: dict, mode: str, data: DataSpec, where: str) -> NetConfig:
    in_channels, classes, size = _data_shape(data)
    fields = dict(overrides)
    if mode == "stochastic_depth":
        fields["stochastic_depth"] = True
    try:
        return network_config(network, in_channels=in_channels, num_classes=classes, image_size=size, **fields)
    except (ValueError, TypeError) as e:
        _fail(where, str(e))
    raise AssertionError


def _training(raw: Any, data: DataSpec) -> TrainingSpec:
    if data.dataset in STREAMED:
        _fail("training", f"dataset {data.dataset} is evaluated from disk, not trained here; list networks trained "
                          f"elsewhere under models: (network, checkpoint)")
    t = _mapping(raw, "training", {"iterations", "seeds", "resources", "max_failures", "recipe", "runs"},
                 required={"runs", "iterations"})
    iterations = _count(t["iterations"], "training.iterations", 1, 10**8)
    seeds_raw = t.get("seeds", 1)
    if isinstance(seeds_raw, list):
        if not seeds_raw:
            _fail("training.seeds", "must list at least one seed (or be a count)")
        seeds = [_count(s, f"training.seeds[{i}]", 0, 2**31 - 1) for i, s in enumerate(seeds_raw)]
        if len(set(seeds)) != len(seeds):
            _fail("training.seeds", f"has repeated seeds {seeds}")
    else:
        seeds = list(range(_count(seeds_raw, "training.seeds", 1, 1000)))
    resources = _mapping(t.get("resources", {}), "training.resources", {"cpu", "gpu"})
    cpu = _amount(resources.get("cpu", 1), "training.resources.cpu")
    gpu = _amount(resources.get("gpu", 0), "training.resources.gpu")
    if cpu + gpu == 0:
        _fail("training.resources", f"needs some cpu or gpu, got cpu={cpu:g}, gpu={gpu:g}")
    max_failures = _count(t.get("max_failures", 2), "training.max_failures", 0, 100)
    recipe = _fields(t.get("recipe", {}), "training.recipe", _TRAIN_RULES)
    runs = _typed(t["runs"], list, "training.runs")
    if not runs:
        _fail("training.runs", "must list at least one run")
    trials: list[Trial] = []
    for i, entry in enumerate(runs):
        where = f"training.runs[{i}]"
        e = _mapping(entry, where, {"network", "label", "overrides", "variants", "modes", "active_blocks"},
                     required={"network"})
        network = _typed(e["network"], str, f"{where}.network")
        if network not in NETWORKS:
            _fail(f"{where}.network", f"unknown network {network!r} (known: {', '.join(sorted(NETWORKS))})")
        label = _typed(e.get("label", network), str, f"{where}.label")
        overrides = _fields(e.get("overrides", {}), f"{where}.overrides", _NET_RULES)
        variants = _typed(e.get("variants", [{}]), list, f"{where}.variants")
        modes = _typed(e.get("modes", ["normal"]), list, f"{where}.modes")
        for key, things in (("variants", variants), ("modes", modes)):
            if not things:
                _fail(f"{where}.{key}", "must list at least one (leave it out for the default)")
        if "active_blocks" in e:
            _check_rule(e["active_blocks"], _TRAIN_RULES["active_blocks"], f"{where}.active_blocks")
        for j, mode in enumerate(modes):
            if mode not in MODES:
                _fail(f"{where}.modes[{j}]", f"unknown mode {mode!r} (known: {', '.join(MODES)})")
        for j, variant in enumerate(variants):
            v = _fields(variant, f"{where}.variants[{j}]", _NET_RULES)
            for mode in modes:
                net = _net_config(network, {**overrides, **v}, mode, data, f"{where}.variants[{j}]" if v else where)
                for seed in seeds:
                    try:
                        train = TrainConfig.from_dict({**recipe, "iterations": iterations, "mode": mode, "seed": seed,
                                                       **({"active_blocks": e["active_blocks"]} if "active_blocks" in e else {})})
                    except (ValueError, TypeError) as err:
                        field_name = str(err).split()[0]
                        _fail(f"{where}.active_blocks" if field_name == "active_blocks" else
                              f"training.recipe.{field_name}" if field_name in recipe else "training.recipe", str(err))
                    if mode == "effective_paths" and train.active_blocks is not None and not (
                            1 <= train.active_blocks <= _num_blocks(net)):
                        _fail(f"{where}.active_blocks", f"must be between 1 and {_num_blocks(net)} (the network's "
                                                        f"blocks), got {train.active_blocks}")
                    if mode != "normal" and net.arch == "plain":
                        _fail(f"{where}.modes", f"mode {mode!r} needs a residual network, not {network}")
                    variant_json = json.dumps(v, sort_keys=True)
                    tag = "" if not v else "." + ".".join(f"{k}-{v[k]}" for k in sorted(v))
                    run_id = (f"{label}{tag}.{mode}.s{seed}." + _short_hash(net.to_json(), train.to_json(),
                                                                             data.dataset))
                    run_id = _safe_id(run_id)
                    trials.append(Trial(run_id, label, network, variant_json, mode, seed, net, train))
    ids = [t.run_id for t in trials]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        _fail("training.runs", f"two runs are identical ({dupes[0]}); give them different labels or settings")
    return TrainingSpec(tuple(trials), cpu, gpu, max_failures)


def _safe_id(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)  # a safe folder name


def _models(raw: Any, data: DataSpec) -> tuple[Trial, ...]:
    """Networks trained elsewhere: a registered network name and the user's checkpoint file."""
    entries = _typed(raw, list, "models")
    if not entries:
        _fail("models", "must list at least one network (network, checkpoint)")
    models = []
    for i, entry in enumerate(entries):
        where = f"models[{i}]"
        e = _mapping(entry, where, {"network", "label", "checkpoint", "overrides"}, required={"network", "checkpoint"})
        network = _typed(e["network"], str, f"{where}.network")
        if network not in NETWORKS:
            _fail(f"{where}.network", f"unknown network {network!r} (known: {', '.join(sorted(NETWORKS))})")
        label = _typed(e.get("label", network), str, f"{where}.label")
        checkpoint = _typed(e["checkpoint"], str, f"{where}.checkpoint")
        if not checkpoint.strip():
            _fail(f"{where}.checkpoint", "must be the path of a checkpoint file")
        overrides = _fields(e.get("overrides", {}), f"{where}.overrides", _NET_RULES)
        net = _net_config(network, overrides, "normal", data, where)
        run_id = _safe_id(f"{label}.pretrained." + _short_hash(net.to_json(), checkpoint, data.dataset))
        models.append(Trial(run_id, label, network, json.dumps(overrides, sort_keys=True), "pretrained", 0, net,
                            None, checkpoint))
    return tuple(models)


@lru_cache(maxsize=256)  # many runs share a network (seeds, modes)
def _num_blocks(cfg: NetConfig) -> int:
    from workloads.models import skeleton
    return skeleton(cfg).num_blocks


def _select_trials(trials: tuple[Trial, ...], runs: tuple[str, ...] | None, where: str) -> list[Trial]:
    if runs is None:
        return list(trials)
    known = {t.label for t in trials} | {t.run_id for t in trials}
    for i, r in enumerate(runs):
        if r not in known:
            _fail(f"{where}.runs[{i}]", f"no training run is labelled {r!r} (labels: "
                                        f"{', '.join(sorted({t.label for t in trials}))})")
    return [t for t in trials if t.label in runs or t.run_id in runs]


def _studies(raw: Any, all_runs: tuple[Trial, ...], data: DataSpec) -> StudiesSpec:
    keys = set(STUDIES) | {"test_examples", "precision", "recalibrate_bn", "calibration_examples", "exclude_blocks",
                           "evaluators", "plans_per_batch", "max_in_flight"}
    s = _mapping(raw if raw is not None else {}, "studies", keys)
    test_examples = s.get("test_examples")
    if test_examples is not None:
        _count(test_examples, "studies.test_examples", 1, 10**7)
    precision = _typed(s.get("precision", "auto"), str, "studies.precision")
    if precision not in ("auto", "fp32", "bf16"):
        _fail("studies.precision", f"must be auto, fp32 or bf16, got {precision!r}")
    exclude = _typed(s.get("exclude_blocks", []), list, "studies.exclude_blocks")
    for i, b in enumerate(exclude):
        _count(b, f"studies.exclude_blocks[{i}]", 0, 10**6)
    ev = _mapping(s.get("evaluators", {}), "studies.evaluators", {"count", "cpu", "gpu"})
    count = _count(ev.get("count", 2), "studies.evaluators.count", 1, 10_000)
    gpu = _amount(ev.get("gpu", 0), "studies.evaluators.gpu")
    # a GPU evaluator only drives its GPU: it needs no CPU of its own (Ray would reserve one)
    cpu = _amount(ev.get("cpu", 0 if gpu > 0 else 1), "studies.evaluators.cpu")
    if cpu + gpu == 0:
        _fail("studies.evaluators", f"needs some cpu or gpu, got cpu={cpu:g}, gpu={gpu:g}")
    studies: list[StudySpec] = []
    if exclude and all_runs:
        most = max(_num_blocks(t.net_config) for t in all_runs)
        for i, b in enumerate(exclude):
            if b >= most:
                _fail(f"studies.exclude_blocks[{i}]", f"block {b} does not exist (the largest network has {most} "
                                                      f"blocks, numbered from 0)")
    for name in STUDIES:
        if name not in s:
            continue
        where = f"studies.{name}"
        allowed = {"runs"} | ({"k_max", "draws"} if name in ("random_deletion", "reorder") else set()) | (
            {"draws", "batch_size"} if name == "gradients" else set())
        st = _mapping(s[name] if s[name] is not None else {}, where, allowed)
        runs_raw = st.get("runs")
        runs = None if runs_raw in (None, "all") else tuple(
            _typed(r, str, f"{where}.runs[{i}]") for i, r in enumerate(_typed(runs_raw, list, f"{where}.runs")))
        chosen = _select_trials(all_runs, runs, where)
        if runs is None and name != "single_deletion":  # F5a, F5b, F6b are about residual networks
            chosen = [t for t in chosen if t.net_config.arch != "plain"]
        draws = _count(st.get("draws", 10), f"{where}.draws", 1, 10**6) if "draws" in allowed else 0
        k_max = 0
        if "k_max" in allowed:
            k_max = _count(st.get("k_max", 10), f"{where}.k_max", 1, 10**6)
            for t in chosen:
                deletable, pairs = _blocks(t.net_config, tuple(exclude))
                limit = deletable if name == "random_deletion" else pairs
                if k_max > limit:
                    what = "deletable blocks" if name == "random_deletion" else "same-shape pairs to swap"
                    _fail(f"{where}.k_max", f"k_max={k_max} is larger than the {limit} {what} of run {t.label!r}")
        if name == "gradients":
            for t in chosen:
                if t.net_config.arch == "plain":
                    _fail(f"{where}.runs", f"run {t.label!r} is a plain network: it has no paths to choose")
        batch_size = _count(st.get("batch_size", 128), f"{where}.batch_size", 1, 10**6) if name == "gradients" else 128
        studies.append(StudySpec(name, tuple(t.run_id for t in chosen), k_max, draws, batch_size))
    recalibrate = _typed(s.get("recalibrate_bn", False), bool, "studies.recalibrate_bn")
    if recalibrate and data.dataset in STREAMED:
        _fail("studies.recalibrate_bn", f"is not supported with dataset {data.dataset}: each plan would need its own "
                                        f"pass over the images on disk")
    return StudiesSpec(
        tuple(studies), test_examples, precision, recalibrate,
        _count(s.get("calibration_examples", 512), "studies.calibration_examples", 1, 10**7), tuple(exclude),
        count, cpu, gpu, _count(s.get("plans_per_batch", 64), "studies.plans_per_batch", 1, 10**6),
        _count(s.get("max_in_flight", 2), "studies.max_in_flight", 1, 1000))


@lru_cache(maxsize=256)  # many runs share a network (seeds, modes)
def _blocks(cfg: NetConfig, exclude: tuple[int, ...] = ()) -> tuple[int, int]:
    """(deletable blocks, same-shape pairs) of a network, outside the excluded blocks."""
    from workloads.models import skeleton
    from workloads.surgery import deletion_pool, swap_pairs
    infos = skeleton(cfg).block_infos()
    return len(deletion_pool(infos, exclude)), len(swap_pairs(infos, exclude))


def parse_spec(raw: Any, path: str = "") -> ExperimentSpec:
    if not isinstance(raw, dict):
        _fail("spec", f"must be a mapping of sections (name, data, training, models, studies), "
                      f"got {type(raw).__name__}")
    top = _mapping(raw, "", {"name", "data", "training", "models", "studies"}, required={"name"})
    name = _typed(top["name"], str, "name")
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name) or name in (".", ".."):
        _fail("name", f"must be 1 to 100 letters, digits, '-', '_' or '.' (it names the results folder), "
                      f"got {name[:40]!r}{'...' if len(name) > 40 else ''}")
    if "training" not in top and "models" not in top:
        _fail("training", "is required (or models:, to study networks trained elsewhere)")
    data = _data(top.get("data"))
    training = _training(top["training"], data) if "training" in top else TrainingSpec(())
    models = _models(top["models"], data) if "models" in top else ()
    ids = [t.run_id for t in training.trials + models]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        _fail("models", f"two runs are identical ({dupes[0]}); give them different labels")
    studies = _studies(top.get("studies"), training.trials + models, data)
    return ExperimentSpec(name, data, training, studies, raw=raw, path=path, models=models)


def load_spec(path: str | Path) -> ExperimentSpec:
    """Read and validate a YAML spec (safe loader); raises SpecError with a one-line message."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read the spec ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    try:
        raw = yaml.load(text, Loader=_StrictSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = "; ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise SpecError(f"{path}: not valid YAML{where}: {' '.join(problem.split())}") from None
    if raw is None:
        raise SpecError(f"{path}: the spec is empty")
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: must be a mapping of sections (name, data, training, models, studies), "
                        f"got a {type(raw).__name__}")
    return parse_spec(raw, str(p))


class _StrictSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader (no Python objects) that refuses a key given twice instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges; explicit keys may override
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"found duplicate key {key!r}",
                                                        key_node.start_mark)
            seen.add(key) if isinstance(key, (str, int, float, bool)) else None
        return super().construct_mapping(node, deep)


# -- what a spec needs from the machine: checked by the CLI before anything starts -------------

_CIFAR_FOLDERS = {"cifar10": ("CIFAR-10", "cifar-10-batches-py"), "cifar100": ("CIFAR-100", "cifar-100-python")}


def check_inputs(spec: ExperimentSpec) -> None:
    """The files a spec names (data, imported checkpoints) exist: a one-line SpecError if not."""
    from workloads.data.imagefolder import class_folders, empty_class
    d = spec.data
    root = Path(d.root).expanduser()
    if d.dataset in _CIFAR_FOLDERS and not d.download:
        title, folder = _CIFAR_FOLDERS[d.dataset]
        if not (root / folder).is_dir():
            _fail("data.root", f"no {title} files in {root} (expected {root / folder}/); put torchvision's "
                               f"{title} files there, or set data.download: true on a machine with internet")
    if d.dataset in STREAMED:
        classes = class_folders(root / "val")
        if not classes:
            _fail("data.root", f"no ImageNet-style folder {root / 'val'}/<class>/<image> (point data.root at the "
                               f"folder that holds val/ and train/)")
        if len(classes) != d.num_classes:
            _fail("data.num_classes", f"is {d.num_classes}, but {root / 'val'} holds {len(classes)} class folders")
        train = class_folders(root / "train")
        if spec.studies.study("gradients") and not train:
            _fail("studies.gradients", f"draws training images, and {root / 'train'} holds no class folders")
        if train and train != classes:
            _fail("data.root", f"{root / 'train'} and {root / 'val'} hold different class folders")
        for split in ("val", "train") if train else ("val",):
            empty = empty_class(root / split)
            if empty:
                _fail("data.root", f"{root / split / empty} holds no image (every class folder needs one)")
    for i, m in enumerate(spec.models):
        path = Path(m.checkpoint).expanduser()
        if not path.is_file():
            _fail(f"models[{i}].checkpoint", f"no such file {m.checkpoint}")
        if not os.access(path, os.R_OK):
            _fail(f"models[{i}].checkpoint", f"{m.checkpoint} is not readable (permissions)")


def check_resources(spec: ExperimentSpec, nodes: list[dict[str, float]],
                    parts: tuple[str, ...] = ("training", "studies")) -> None:
    """Every trial and evaluator fits on some node (Ray would otherwise wait forever, silently).

    ``nodes``: the resources of each live node, as ``ray.nodes()[i]["Resources"]``; ``parts``:
    what the command will run.
    """
    asks = []
    if spec.training.trials and "training" in parts:
        asks.append(("training.resources", spec.training.cpu, spec.training.gpu))
    if spec.studies.studies and "studies" in parts:
        asks.append(("studies.evaluators", spec.studies.cpu, spec.studies.gpu))
    for where, cpu, gpu in asks:
        if any(n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu for n in nodes):
            continue
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "none"
        kind = "gpu" if gpu and not any(n.get("GPU", 0) >= gpu for n in nodes) else "cpu"
        _fail(f"{where}.{kind}", f"asks for {cpu:g} CPU and {gpu:g} GPU per worker, and no node of the cluster has "
                                 f"that (nodes: {have}); start such workers or lower the request")

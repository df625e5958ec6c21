"""How fast a spec's work runs: rates measured here by a short calibration, or figures given.

``unravel plan`` turns counts into device time with two kinds of rate: training iterations per
second of one trial (its per-epoch test evaluation included) and units per second of one
evaluator. A rate is keyed by what decides it: a run group (the run id without seed and hash,
``resnet110.stochastic_depth``) for training, ``GROUP:STUDY`` for units. Given figures may also
name a label, a network or (units) a study alone; the most specific key wins, so one figure can
cover every run of a network.

The calibration times this code on synthetic data of the spec's shape, on the device a worker
would get (a GPU where the spec's workers ask for one and this machine has one, else the CPU with
the worker's thread count): a few training steps at the spec's batch size, the engine on a batch
of plans over one chunk of test examples, one gradient batch. Seconds, not minutes; an estimate.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .spec import ExperimentSpec, Resources, Trial

PLANS_TIMED = 8             # lesion plans per timed engine batch
CPU_GRADIENT_BATCH = 32     # on CPU, a gradient batch is timed at this size and scaled (CPU time is linear in it)
MIN_TIMED_S = 0.1           # a measurement repeats until it has run this long (or MAX_REPEATS times)
MAX_REPEATS = 20


class RateError(ValueError):
    """A rate that cannot be read; the message is one line."""


def group_of(trial: Trial) -> str:
    """The run group: the run id without seed and hash (seeds of one setting train and evaluate alike)."""
    return trial.run_id.rsplit(".", 1 if trial.mode == "pretrained" else 2)[0]


def train_keys(trial: Trial) -> list[str]:
    """Keys a training rate may be given under, most specific first."""
    group = group_of(trial)
    keys = [group, group.rsplit(".", 1)[0], trial.label, trial.network]
    return list(dict.fromkeys(keys))


def unit_keys(trial: Trial, study: str) -> list[str]:
    """Keys a unit rate may be given under, most specific first."""
    return [f"{k}:{study}" for k in train_keys(trial)] + [study]


@dataclass
class Rates:
    """Training iterations/s and units/s by key (see the module docstring)."""

    train: dict[str, float] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)

    def find(self, kind: str, keys: list[str]) -> float | None:
        table = self.train if kind == "train" else self.units
        return next((table[k] for k in keys if k in table), None)

    def update(self, other: "Rates") -> "Rates":
        self.train.update(other.train)
        self.units.update(other.units)
        return self

    def to_dict(self) -> dict:
        return {"train": dict(sorted(self.train.items())), "units": dict(sorted(self.units.items()))}


def _rate(value, where: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise RateError(f"{where}: must be a number above 0, got {value!r}") from None
    if not math.isfinite(rate) or rate <= 0 or isinstance(value, bool):
        raise RateError(f"{where}: must be a number above 0, got {value!r}")
    return rate


def parse_rates(train: tuple[str, ...] = (), units: tuple[str, ...] = ()) -> Rates:
    """``--train-rate KEY=ITERATIONS_PER_S`` and ``--unit-rate KEY=UNITS_PER_S`` options."""
    rates = Rates()
    for option, texts, table in (("--train-rate", train, rates.train), ("--unit-rate", units, rates.units)):
        for text in texts:
            key, sep, value = text.partition("=")
            if not sep or not key.strip():
                raise RateError(f"{option} {text}: expected KEY=RATE, e.g. {option} resnet110=12.5")
            table[key.strip()] = _rate(value.strip(), f"{option} {key.strip()}")
    return rates


def read_rates(path: str | Path) -> Rates:
    """Rates from a JSON file: ``{"train": {KEY: rate}, "units": {KEY: rate}}``, or the output of
    ``unravel plan --format json`` (its ``rates``), e.g. measured on a machine like the cluster's."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RateError(f"{path}: cannot read the rates ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RateError(f"{path}: not a JSON document ({e})") from None
    if isinstance(doc, dict) and isinstance(doc.get("rates"), dict):
        doc = doc["rates"]
    if not isinstance(doc, dict) or not set(doc) <= {"train", "units"}:
        raise RateError(f"{path}: expected {{\"train\": {{KEY: rate}}, \"units\": {{KEY: rate}}}} or the output of "
                        f"unravel plan --format json")
    rates = Rates()
    for kind, table in (("train", rates.train), ("units", rates.units)):
        entries = doc.get(kind) or {}
        if not isinstance(entries, dict):
            raise RateError(f"{path}: {kind} must map keys to rates, got {type(entries).__name__}")
        for key, value in entries.items():
            table[str(key)] = _rate(value, f"{path}: {kind}.{key}")
    return rates


# -- the calibration ------------------------------------------------------------------------------

@dataclass
class Calibration:
    """Rates measured here, and how."""

    rates: Rates = field(default_factory=Rates)
    devices: set[str] = field(default_factory=set)    # e.g. "cpu (1 thread)", "cuda (NVIDIA H200)"
    timed: list[str] = field(default_factory=list)    # one phrase per measurement
    seconds: float = 0.0


def _device_for(resources: Resources) -> tuple:
    """(device, threads, description) a worker with these resources gets here: a GPU only if it asks for
    one; on the CPU its own thread count, or all of this machine's where it asks for a GPU this
    machine lacks (a stand-in figure, measured as fast as this machine allows)."""
    import torch
    if resources.gpu > 0 and torch.cuda.is_available():
        return torch.device("cuda"), 1, f"cuda ({torch.cuda.get_device_name()})"
    threads = resources.threads if resources.gpu == 0 else len(os.sched_getaffinity(0)) \
        if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return torch.device("cpu"), threads, f"cpu ({threads} thread{'s' * (threads != 1)})"


def _timed(fn, device) -> float:
    """Seconds per call of ``fn``, after an untimed first call (allocation, kernel selection: a third
    of a CPU step of a deep network), repeated until MIN_TIMED_S have passed."""
    import torch

    def call() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
    call()
    total, calls = 0.0, 0
    while total < MIN_TIMED_S and calls < MAX_REPEATS:
        total += call()
        calls += 1
    return total / calls


def _synthetic(spec: ExperimentSpec, train: int, test: int):
    """Random tensors of the spec's data shape (the data's files are not needed)."""
    import torch

    from workloads.data import SPLITS, TensorDataset
    channels, classes, size = spec.data.shape
    g = torch.Generator().manual_seed(0)
    if spec.data.text:  # token ids, each sequence with its next tokens
        classes = max(t.net_config.num_classes for t in spec.runs)
        x = torch.randint(0, classes, (max(train, test), size), generator=g)
        y = torch.randint(0, classes, x.shape, generator=g)
    else:
        x = torch.randn(max(train, test), channels, size, size, generator=g)
        y = torch.randint(0, classes, (len(x),), generator=g)
    augmentation = SPLITS[spec.data.dataset][2] if spec.data.dataset in SPLITS else "none"
    return TensorDataset("calibration", x[:train], y[:train], x[:test], y[:test], classes, augmentation)


def _train_rate(spec: ExperimentSpec, trial: Trial, device, test_size: int) -> tuple[float, str]:
    """Iterations/s of one trial: a timed step, plus its share of the test evaluation every eval_every."""
    from workloads.data import SPLITS
    from workloads.train.loop import Trainer
    cfg = trial.train_config
    data = _synthetic(spec, 2 * cfg.batch_size, min(test_size, 512 if device.type == "cuda" else 128))
    trainer = Trainer(trial.net_config, cfg, data, device)
    step = _timed(trainer.step, device)
    examples = len(data.test_labels)
    per_example = _timed(trainer.evaluate, device) / examples
    train_size = SPLITS[spec.data.dataset][0]
    eval_every = cfg.eval_every or max(1, train_size // cfg.batch_size)
    seconds = step + per_example * test_size / eval_every
    return 1.0 / seconds, f"{step:.3g} s per step at batch {cfg.batch_size}"


def _plan_unit_seconds(spec: ExperimentSpec, net, device, test_size: int) -> tuple[float, str]:
    """Seconds of one lesion unit: the engine on a batch of distinct random deletions over one chunk
    of examples, scaled to the test set (and BatchNorm re-estimation per plan where the spec asks)."""
    from workloads.surgery import deletion_pool, evaluate_plans, intact, random_deletion, recalibrated_copy
    from workloads.surgery.evaluate import default_chunk_size, default_precision
    infos = net.block_infos()
    pool = deletion_pool(infos)
    k = max(1, len(pool) // 4)
    plans = list(dict.fromkeys(random_deletion(infos, k, s) for s in range(PLANS_TIMED))) if pool else [intact(infos)]
    studies = spec.studies
    precision = default_precision(device) if studies.precision == "auto" else studies.precision
    channels, _, size = spec.data.shape
    examples = min(test_size, default_chunk_size(device, (size,) if spec.data.text else (channels, size, size)))
    data = _synthetic(spec, min(studies.calibration_examples, examples), examples)
    images, labels = data.test_images.to(device), data.test_labels.to(device)
    per_plan = _timed(lambda: evaluate_plans(net, plans, images, labels, precision=precision, device=device),
                      device) / len(plans)
    seconds, what = per_plan * test_size / examples, f"{len(plans)} plans over {examples} examples"
    if studies.recalibrate_bn:
        calibration = data.train_images.to(device)
        once = _timed(lambda: recalibrated_copy(net, plans[0], calibration), device)
        seconds += once * studies.calibration_examples / len(calibration)
        what += ", BatchNorm re-estimated"
    return seconds, what


def _gradient_seconds(spec: ExperimentSpec, net, device) -> tuple[float, str]:
    """Seconds of one gradient unit: one draw's batch (every path length on one forward), timed at
    the spec's batch size (on CPU at a smaller one, scaled)."""
    from workloads.surgery import gradient_norms
    size = spec.studies.study("gradients").batch_size
    timed = size if device.type == "cuda" else min(size, CPU_GRADIENT_BATCH)
    data = _synthetic(spec, timed, 1)
    images, labels = data.train_images.to(device), data.train_labels.to(device)
    n = len(net.block_infos())
    draws = [(k, 0) for k in range(1, n + 1)]
    seconds = _timed(lambda: gradient_norms(net, images, labels, draws, device=device), device) * size / timed / n
    return seconds, f"a gradient batch of {timed} images{f' (scaled to {size})' if timed != size else ''}"


def unit_test_size(spec: ExperimentSpec) -> int | None:
    """Test examples a unit evaluates: studies.test_examples, else the whole test set where it is known
    without its files (None for a folder of images not counted here)."""
    from workloads.data import SPLITS
    whole = SPLITS[spec.data.dataset][1] if spec.data.dataset in SPLITS else None
    chosen = spec.studies.test_examples
    if chosen is None:
        return whole
    return min(chosen, whole) if whole else chosen


def calibrate(spec: ExperimentSpec, train: list[Trial], evaluate: list[tuple[Trial, str]], log=None) -> Calibration:
    """Measure the rates of ``train`` (trials) and ``evaluate`` ((trial, study) pairs) that no figure
    covers. Trials and networks that cost the same are timed once: training per network and mode,
    evaluation per network (a stochastic-depth network evaluates as its plain twin)."""
    import dataclasses

    import torch

    from workloads.data import SPLITS
    from workloads.models import build_network
    from workloads.runtime import set_threads
    result = Calibration()
    started = time.perf_counter()
    threads = torch.get_num_threads()
    test_size = unit_test_size(spec)
    try:
        measured: dict[str, float] = {}
        for trial in train:
            cfg = trial.train_config
            key = f"{trial.net_config.to_json()}|{cfg.mode}|{cfg.batch_size}|{cfg.active_blocks}"
            if key not in measured:
                device, n, name = _device_for(spec.training.resources)
                set_threads(n)
                if log:
                    log(f"calibrating: training {group_of(trial)} on {name}")
                measured[key], what = _train_rate(spec, trial, device, SPLITS[spec.data.dataset][1])
                result.devices.add(name)
                result.timed.append(f"training {group_of(trial)}: {what}")
            result.rates.train[group_of(trial)] = measured[key]
        if evaluate and test_size is None:
            evaluate = [(t, s) for t, s in evaluate if s == "gradients"]  # a lesion's cost needs the test set's size
        nets: dict[str, object] = {}
        per_unit: dict[tuple[str, str], float] = {}
        for trial, study in evaluate:
            cfg = dataclasses.replace(trial.net_config, stochastic_depth=False)
            kind = "gradients" if study == "gradients" else "plans"
            key = (cfg.to_json(), kind)
            if key not in per_unit:
                device, n, name = _device_for(spec.studies.evaluators)
                set_threads(n)
                net_name = group_of(trial).rsplit(".", 1)[0]
                if log:
                    log(f"calibrating: {kind} of {net_name} on {name}")
                if cfg.to_json() not in nets:
                    torch.manual_seed(0)
                    nets[cfg.to_json()] = build_network(cfg).to(device).eval()
                net = nets[cfg.to_json()]
                if kind == "gradients":
                    per_unit[key], what = _gradient_seconds(spec, net, device)
                else:
                    per_unit[key], what = _plan_unit_seconds(spec, net, device, test_size)
                result.devices.add(name)
                result.timed.append(f"{kind} of {net_name}: {what}")
            result.rates.units[f"{group_of(trial)}:{study}"] = 1.0 / per_unit[key]
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - started
    return result

"""Rates measured here: a short calibration of this code on synthetic data of the spec's shape.

Run only when asked (``unravel plan --calibrate``), on the device a worker would get: a GPU where the spec's workers
ask for one, the CPU with the worker's thread count where they do not. A worker that asks for a GPU this machine
lacks is not measured at all (a CPU figure would stand for a GPU's and mislead by orders of magnitude): its device
time stays unknown. Each measurement is a few training steps at the spec's batch size, the engine on a batch of
plans over one chunk of test examples, or one gradient batch; the whole calibration keeps a time budget, and what
the budget leaves unmeasured stays unknown.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.experiment.document import Resources
from orchestrator.experiment.resolved import ExperimentSpec, Trial
from orchestrator.planning.rates import RateKey

PLANS_TIMED = 8             # lesion plans per timed engine batch
CPU_GRADIENT_BATCH = 32     # on CPU, a gradient batch is timed at this size and scaled (CPU time is linear in it)
MIN_TIMED_S = 0.1           # a measurement repeats until it has run this long (or MAX_REPEATS times)
MAX_REPEATS = 20


@dataclass
class Calibration:
    """Rates measured here, and how."""

    rates: dict[RateKey, float] = field(default_factory=dict)
    devices: set[str] = field(default_factory=set)    # e.g. "cpu (1 thread)", "cuda (NVIDIA H200)"
    timed: list[str] = field(default_factory=list)    # one phrase per measurement
    seconds: float = 0.0
    budget_s: float = 0.0
    not_measured: list[str] = field(default_factory=list)   # why some rates were not measured, one phrase each


@dataclass
class _Measurement:
    """One timing, and the rates it gives: trials and networks that cost the same are timed once."""

    kind: Literal["training", "plans", "gradients"]
    trial: Trial          # a run of each key's group, the one timed
    keys: list[RateKey]


class _BudgetSpent(BaseException):  # not an Exception: no `except Exception` on the way may swallow it
    """The calibration's time budget ran out in the middle of a measurement."""


@contextmanager
def _deadline(seconds: float):
    """Raise _BudgetSpent once ``seconds`` have passed (between two torch calls: a measurement of a
    deep network on a slow CPU may take minutes, and the budget is the user's). Only the main thread
    receives signals; elsewhere the budget is checked between measurements only."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def spent(signum, frame):
        raise _BudgetSpent()
    previous = signal.signal(signal.SIGALRM, spent)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _device_for(resources: Resources) -> tuple | None:
    """(device, threads, description) a worker with these resources gets here: a GPU if it asks for one,
    else the CPU with its own thread count; None where it asks for a GPU this machine lacks."""
    import torch
    if resources.gpu > 0:
        if not torch.cuda.is_available():
            return None
        return torch.device("cuda"), 1, f"cuda ({torch.cuda.get_device_name()})"
    threads = resources.threads
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
    n = sum(i.residual for i in net.block_infos())   # path lengths count residual units only (units.expand)
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


def calibrate(spec: ExperimentSpec, wanted: dict[RateKey, Trial], log=None, budget_s: float = 60.0) -> Calibration:
    """Measure the rates of ``wanted`` (each key with a run of its group) within ``budget_s`` seconds. Trials and
    networks that cost the same are timed once: training per network and mode, evaluation per network (a
    stochastic-depth network evaluates as its plain twin). Workers asking for a GPU this machine lacks are not
    measured; neither is what the budget leaves. ``log`` gets a progress line per measurement."""
    import dataclasses

    import torch

    import workloads.surgery.evaluate  # noqa: F401 - imported before the budget's alarm can interrupt an import
    import workloads.train.loop  # noqa: F401
    from workloads.data import SPLITS
    from workloads.models import build_network
    from workloads.runtime import set_threads
    result = Calibration(budget_s=budget_s)
    test_size = unit_test_size(spec)
    train = {k: t for k, t in wanted.items() if k.study is None}
    evaluate = {k: t for k, t in wanted.items() if k.study not in (None, "tasks")}
    if any(k.study == "tasks" for k in wanted):  # a task's cost is in its tokens (the plan counts them), not timed
        result.not_measured.append("tasks units are not timed here (their tokens per plan are in the plan)")
    train_device, unit_device = _device_for(spec.training.resources), _device_for(spec.studies.evaluators)
    if train and train_device is None:
        result.not_measured.append(f"the spec's trials ask for a GPU and this machine has none "
                                   f"({len(train)} training rate{'s' * (len(train) != 1)})")
        train = {}
    if evaluate and unit_device is None:
        result.not_measured.append(f"the spec's evaluators ask for a GPU and this machine has none "
                                   f"({len(evaluate)} unit rate{'s' * (len(evaluate) != 1)})")
        evaluate = {}
    if evaluate and test_size is None:
        result.not_measured.append("a lesion's cost needs the test set's size (studies.test_examples)")
        evaluate = {k: t for k, t in evaluate.items() if k.study == "gradients"}
    jobs: dict[tuple, _Measurement] = {}
    for key, trial in train.items():
        cfg = trial.train_config
        same = ("training", trial.net_config.to_json(), cfg.mode, cfg.batch_size, cfg.active_blocks)
        jobs.setdefault(same, _Measurement("training", trial, [])).keys.append(key)

    def evaluated(trial: Trial):   # a stochastic-depth network evaluates as its plain twin
        return dataclasses.replace(trial.net_config, stochastic_depth=False)
    # evaluation sorted by network, so each network is built once and freed before the next
    for key, trial in sorted(evaluate.items(), key=lambda pair: evaluated(pair[1]).to_json()):
        kind = "gradients" if key.study == "gradients" else "plans"
        jobs.setdefault((kind, evaluated(trial).to_json()), _Measurement(kind, trial, [])).keys.append(key)

    started = time.perf_counter()
    threads = torch.get_num_threads()
    net_key, net = None, None
    try:
        for i, job in enumerate(jobs.values(), 1):
            left = budget_s - (time.perf_counter() - started)
            if left <= 0:
                result.not_measured.append(f"the calibration's budget of {budget_s:g} s was spent "
                                           f"({len(jobs) - i + 1} of {len(jobs)} measurements not made)")
                break
            device, n, name = train_device if job.kind == "training" else unit_device
            what = job.trial.group if job.kind == "training" else job.trial.setting
            if log:
                log(f"calibrating {i}/{len(jobs)}: {job.kind} of {what} on {name} "
                    f"({time.perf_counter() - started:.0f} s of a {budget_s:g} s budget spent)")
            set_threads(n)
            try:
                with _deadline(left):
                    if job.kind == "training":
                        rate, how = _train_rate(spec, job.trial, device, SPLITS[spec.data.dataset][1])
                    else:
                        cfg = evaluated(job.trial)
                        if net_key != cfg.to_json():  # the previous network is freed first: one at a time
                            net_key, net = None, None
                            torch.manual_seed(0)
                            net, net_key = build_network(cfg).to(device).eval(), cfg.to_json()
                        if job.kind == "gradients":
                            seconds, how = _gradient_seconds(spec, net, device)
                        else:
                            seconds, how = _plan_unit_seconds(spec, net, device, test_size)
                        rate = 1.0 / seconds
            except _BudgetSpent:
                result.not_measured.append(f"the calibration's budget of {budget_s:g} s was spent "
                                           f"({len(jobs) - i + 1} of {len(jobs)} measurements not made)")
                break
            result.devices.add(name)
            result.timed.append(f"{job.kind} of {what}: {how}")
            result.rates.update(dict.fromkeys(job.keys, rate))
    finally:
        torch.set_num_threads(threads)
    result.seconds = time.perf_counter() - started
    return result

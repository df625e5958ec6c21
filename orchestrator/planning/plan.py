"""The dry run of a spec (`unravel plan`): what it will ask of a cluster, before anything is submitted.

The trials and their iterations, the units of each study (``units.unit_groups``: the units a sweep computes,
counted without making them), what each worker asks of a node, how many fit on the nodes at once (``nodes``),
and device time from rates (``rates``: given, or measured here when asked, ``calibration``). It reads the spec
and, with an address, the cluster's list of nodes; it writes nothing, and needs none of the files the spec
names: a plan is about counts and resources (a tasks study's tokens are counted where the models' tokenizers
are here, lm-eval reading the tasks offline). It answers in seconds: without rates that fit the spec's devices
it says the device time is unknown rather than print another device's. ``table`` prints it.
"""
from __future__ import annotations

import math
from collections import Counter

from orchestrator.experiment.document import Resources
from orchestrator.experiment.resolved import ExperimentSpec, Trial
from orchestrator.experiment.units import UnitGroup, batch_count, unit_groups
from orchestrator.planning.calibration import Calibration, calibrate, unit_test_size
from orchestrator.planning.nodes import Node, fit_at_once
from orchestrator.planning.rates import GivenRates, Rate, RateKey


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


def _wall(device_s: float | None, longest_s: float, at_once: int, ask: Resources) -> float | None:
    """Seconds with ``at_once`` workers running, each device as fast as the one the rates are of
    (workers sharing a GPU share its speed), and no worker faster than alone."""
    if device_s is None or at_once == 0:
        return None
    share = min(ask.gpu, 1.0) if ask.gpu > 0 else 1.0
    devices = max(1, math.ceil(at_once * share - 1e-9))
    return max(device_s / devices, longest_s)


def _sum(values) -> float | None:
    """The sum, or None where any part is unknown (no rate, or no node for a worker)."""
    values = list(values)
    return None if any(v is None for v in values) else float(sum(values))


def make_plan(spec: ExperimentSpec, nodes: list[Node], where: str, given: GivenRates, *, measure: bool = False,
              budget_s: float = 60.0, log=None) -> dict:
    """The plan as one JSON-ready document (its fields: `unravel plan --help`)."""
    units = [g for g in unit_groups(spec) if g.size]   # counted, not made: a spec may have a million
    # language models whose folder is not here: their layers, so their units, are unknown
    unknown = [label for _, label, _ in spec.absent_models] if spec.studies.studies else []
    trained: dict[str, list[Trial]] = {}           # run group -> its trials
    for t in spec.training.trials:
        trained.setdefault(t.group, []).append(t)
    run_of: dict[RateKey, Trial] = {RateKey(g): ts[0] for g, ts in trained.items()}   # a run of each key's group
    unit_counts: Counter[RateKey] = Counter()
    for g in units:
        key = RateKey(g.trial.group, g.study)
        run_of.setdefault(key, g.trial)
        unit_counts[key] += g.size

    # rates: a given figure (the most specific name), else what the calibration measures
    rates: dict[RateKey, Rate] = {key: given.rate(trial, key.study) for key, trial in run_of.items()}
    calibration = None
    missing = {key: trial for key, trial in run_of.items() if rates[key].per_s is None}
    if measure and missing:
        calibration = calibrate(spec, missing, log, budget_s)
        rates.update({key: Rate(r, "measured") for key, r in calibration.rates.items()})

    training = _training(spec, trained, rates, nodes)
    studies = _studies(spec, units, unit_counts, rates, nodes, unknown)
    walls = [part["wall_hours"] for part, has in ((training, trained), (studies, units or unknown)) if has]
    channels, classes, size = spec.data.shape
    text = {}
    if spec.data.text:  # sequences of token ids; the classes are the models' vocabulary
        classes = None if spec.absent_models else max(t.net_config.num_classes for t in spec.runs)
        text = {"sequence_length": size}
    return {
        "experiment": spec.name,
        "spec": spec.path,
        "data": {"dataset": spec.data.dataset, "channels": channels, "image_size": size, "classes": classes,
                 "test_examples": unit_test_size(spec), "files_checked": False, **text},
        "nodes": {"source": where, "nodes": [{"cpu": n.cpu, "gpu": n.gpu} for n in nodes]},
        "training": training,
        "studies": studies,
        "device_hours": _sum([training["device_hours"], studies["device_hours"]]),
        "wall_hours": _sum(walls),
        "estimate": _estimate(rates, calibration),
        "rates": GivenRates.of(rates).to_dict(),
        "notes": _notes(spec, nodes, where, training["fit_at_once"], studies["fit_at_once"], units or unknown,
                        rates, calibration, measure),
    }


def _training(spec: ExperimentSpec, trained: dict[str, list[Trial]], rates: dict[RateKey, Rate],
              nodes: list[Node]) -> dict:
    """The training part of a plan: per run group its trials and their device time; fits and wall time."""
    rows = []
    for g, ts in trained.items():
        rate, iterations = rates[RateKey(g)], ts[0].train_config.iterations
        rows.append({"group": g, "network": ts[0].network, "mode": ts[0].mode, "trials": len(ts),
                     "iterations": iterations, "iterations_per_s": rate.per_s, "rate": rate.source,
                     "device_hours": _hours(len(ts) * iterations / rate.per_s) if rate.per_s else None})
    ask = spec.training.resources
    count = len(spec.training.trials)
    fit = fit_at_once(ask, nodes) if count else 0
    device = _sum(r["device_hours"] for r in rows)
    longest = max((r["iterations"] / r["iterations_per_s"] for r in rows if r["iterations_per_s"]), default=0.0)
    wall = _wall(device * 3600, longest, min(count, fit), ask) if device is not None and count else None
    return {"trials": count, "resources": {"cpu": ask.cpu, "gpu": ask.gpu}, "fit_at_once": fit,
            "at_once": min(count, fit), "groups": rows, "device_hours": device, "wall_hours": _hours(wall)}


def _studies(spec: ExperimentSpec, units: list, unit_counts: Counter[RateKey], rates: dict[RateKey, Rate],
             nodes: list[Node], unknown: list[str]) -> dict:
    """The studies part of a plan: units per study and per (run group, study), their device time; fits
    and wall time of the evaluators. ``unknown``: labels of models whose units are not counted (their
    folder is absent), which leave the device time unknown."""
    rows = []
    for key, count in unit_counts.items():
        rate = rates[key]
        rows.append({"group": key.group, "study": key.study, "units": count, "units_per_s": rate.per_s,
                     "rate": rate.source, "device_hours": _hours(count / rate.per_s) if rate.per_s else None})
    run_ids: dict[str, set] = {}
    for g in units:
        run_ids.setdefault(g.study, set()).add(g.trial.run_id)
    per_study = [{"study": study, "runs": len(ids), "units": sum(r["units"] for r in rows if r["study"] == study),
                  "device_hours": _sum(r["device_hours"] for r in rows if r["study"] == study)}
                 for study, ids in run_ids.items()]
    ev = spec.studies.evaluators
    fit = fit_at_once(ev, nodes) if units or unknown else 0
    device = None if unknown else _sum(r["device_hours"] for r in rows)
    wall = _wall(device * 3600, 0.0, min(ev.count, fit), ev) if device is not None and units else None
    return {"units": sum(g.size for g in units),
            "batches": batch_count(units, spec.studies.plans_per_batch),
            "evaluators": {"count": ev.count, "cpu": ev.cpu, "gpu": ev.gpu}, "fit_at_once": fit,
            "at_once": min(ev.count, fit), "per_study": per_study, "groups": rows, "device_hours": device,
            "wall_hours": _hours(wall), "units_unknown_for": unknown, "tasks": _task_tokens(spec, units)}


def _task_tokens(spec: ExperimentSpec, units: list[UnitGroup]) -> list[dict]:
    """Per run and task of a tasks study: its plans, the requests lm-eval builds and the input tokens the engine
    computes per plan (``workloads.tasks.task_requests``, as the run's tokenizer cuts them; None where the model's
    folder or tokenizer is not here), and those tokens times the plans."""
    plans: Counter[tuple[Trial, str]] = Counter()
    for g in units:
        if g.study == "tasks":
            plans[g.trial, g.task] += g.size
    rows, built = [], {}
    for (trial, task), count in plans.items():
        key = (spec.data.tokenizer_of(trial.run_id), task, trial.net_config.hf_config)
        if key not in built:
            built[key] = _requests_of(spec, trial, task)
        requests = built[key]
        rows.append({"run_id": trial.run_id, "task": task, "plans": count,
                     "requests": sum(r.requests for r in requests) if requests is not None else None,
                     "tokens_per_plan": sum(r.tokens for r in requests) if requests is not None else None,
                     "tokens": count * sum(r.tokens for r in requests) if requests is not None else None})
    return rows


def _requests_of(spec: ExperimentSpec, trial: Trial, task: str) -> list | None:
    """The task's requests for a run's model, None when its tokenizer is not here."""
    import dataclasses

    from workloads.data.text import holds_tokenizer, load_tokenizer
    from workloads.tasks import context_length, task_requests

    from orchestrator.experiment.networks import language_model_config
    folder = spec.data.tokenizer_of(trial.run_id)
    if not folder or not holds_tokenizer(folder):
        return None
    config = dataclasses.replace(spec.studies.study("tasks").tasks(), names=(task,))
    tokenizer = load_tokenizer(folder)
    return task_requests(config, tokenizer, context_length(language_model_config(trial.net_config.hf_config),
                                                           tokenizer))


METHOD = ("iterations / (iterations/s) for each trial, units / (units/s) for each study, on the device each rate "
          "is of; Ray's start-up, checkpoints and data loading are not in it")


def _estimate(rates: dict[RateKey, Rate], calibration: Calibration | None) -> dict:
    """How the device time was made: the method, how many rates were given or measured, and the calibration."""
    measured = None
    if calibration is not None:
        measured = {"devices": sorted(calibration.devices), "seconds": round(calibration.seconds, 1),
                    "budget_seconds": calibration.budget_s, "timed": calibration.timed,
                    "not_measured": calibration.not_measured}
    return {"method": METHOD, "given": sum(r.source == "given" for r in rates.values()),
            "measured": sum(r.source == "measured" for r in rates.values()), "calibration": measured}


def _notes(spec: ExperimentSpec, nodes: list[Node], where: str, t_fit: int, e_fit: int, units: list,
           rates: dict[RateKey, Rate], calibration: Calibration | None, measure: bool) -> list[str]:
    """What the reader of a plan must know to trust it: what was not checked or not measured, and why."""
    trains = bool(spec.training.trials)
    notes = []
    files = []
    if spec.data.dataset != "digits":
        files.append(f"data.root {spec.data.root}")
    if spec.models:
        files.append("models' checkpoints")
    if files:
        notes.append(f"files not checked: a plan needs only the spec ({' and '.join(files)} not read)")
    if spec.studies.study("tasks"):
        notes.append("tasks: their tokens are counted with each model's tokenizer, lm-eval reading the tasks offline; "
                     "their units are not timed (a rate given for the tasks study is used)")
    proxies = spec.studies.study("proxies")
    if proxies:   # every score is read off the same pass: its cost does not grow with the units or spans it scores
        runs = len(proxies.runs)
        notes.append(f"proxies: one intact forward over the test set per run ({runs} run{'s' * (runs != 1)}), "
                     f"every unit's and span's scores read off it; timed as one plan")
    for index, label, folder in spec.absent_models:
        # its layers and positions are in that folder: the studies' sizes and the sequence length go unchecked
        notes.append(f"models[{index}] ({label}): {folder} is not here, so its layers, vocabulary and units are "
                     f"unknown, and the studies' sizes (k_max, max_length) and data.sequence_length are not checked "
                     f"against it (a plan reads only the folder's config.json and tokenizer_config.json)")
    shape = ", ".join(f"{n.cpu:g} CPU/{n.gpu:g} GPU" for n in nodes) or "none"
    for fits, has, what, ask in ((t_fit, trains, "a trial", spec.training.resources),
                                 (e_fit, bool(units), "an evaluator", spec.studies.evaluators)):
        if has and fits == 0:
            later = "; its autoscaler may still add one" if where.startswith("the cluster") else ""
            notes.append(f"no node of {where} holds {what} ({ask.cpu:g} CPU, {ask.gpu:g} GPU; nodes: {shape}){later}")
    if calibration is not None:
        notes += [f"not calibrated: {why}" for why in calibration.not_measured]
    if spec.data.streamed:
        notes.append("images decoded from disk: JPEG decoding is not in the measured rates")
        if unit_test_size(spec) is None:
            notes.append("the size of data.root/val is not read: set studies.test_examples to estimate lesion units")
    unrated = [key for key, rate in rates.items() if rate.per_s is None]
    if unrated:
        how = "" if measure else ("; --calibrate measures them here where this machine has the spec's devices, "
                                  "--rates FILE reads those of unravel plan --calibrate --format json run on one")
        notes.append(f"{len(unrated)} rate{'s' * (len(unrated) != 1)} neither given nor measured: their device "
                     f"time is unknown{how}")
    return notes



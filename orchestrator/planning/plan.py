"""The dry run of a spec (`unravel plan`): what it will ask of a cluster, before anything is submitted.

The trials and their iterations, the units of each study (``units.unit_groups``: the units a
sweep computes, counted without making them), what each worker asks of a node, how many fit on the
nodes at once, and device time from rates (``rates``: given, or measured here when asked). It reads
the spec and, with an address, the cluster's list of nodes; it writes nothing, and needs none of the
files the spec names: a plan is about counts and resources. It answers in seconds: without rates
that fit the spec's devices it says the device time is unknown rather than print another device's.
"""
from __future__ import annotations

import math
import os
import textwrap
from collections import Counter
from dataclasses import dataclass

from orchestrator.planning.rates import Rates, calibrate, group_of, train_keys, unit_keys, unit_test_size
from orchestrator.experiment.document import Resources
from orchestrator.experiment.resolved import ExperimentSpec
from orchestrator.experiment.units import unit_groups


@dataclass(frozen=True)
class Node:
    cpu: float
    gpu: float


class NodeError(ValueError):
    """A --node description that cannot be read; the message is one line."""


def fit_at_once(ask: Resources, nodes: list[Node]) -> int:
    """How many workers asking ``ask`` the nodes hold at once (each node packed on its own)."""
    total = 0
    for node in nodes:
        room = [math.floor(have / want + 1e-9) for have, want in ((node.cpu, ask.cpu), (node.gpu, ask.gpu)) if want > 0]
        total += min(room) if room else 0
    return total


def parse_node(text: str) -> list[Node]:
    """``cpu=8,gpu=1,count=4``: four nodes of 8 CPUs and one GPU (gpu and count default to 0 and 1)."""
    fields: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("cpu", "gpu", "count") or name in fields:
            raise NodeError(f"--node {text}: expected cpu=N[,gpu=N][,count=N], e.g. --node cpu=8,gpu=1,count=4")
        try:
            fields[name] = float(value)
        except ValueError:
            raise NodeError(f"--node {text}: {name} must be a number, got {value.strip()!r}") from None
        whole = name != "count" or fields[name] == int(fields[name])
        if not math.isfinite(fields[name]) or fields[name] < 0 or not whole:
            raise NodeError(f"--node {text}: {name} must be a {'whole ' * (name == 'count')}number of at least 0")
    if "cpu" not in fields:
        raise NodeError(f"--node {text}: says no cpu=N")
    return [Node(fields["cpu"], fields.get("gpu", 0.0))] * int(fields.get("count", 1))


def local_nodes() -> list[Node]:
    """This machine as the private local Ray would see it: its usable CPUs and CUDA devices."""
    import torch
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [Node(float(cpus), float(torch.cuda.device_count()))]


def cluster_nodes(address: str) -> list[Node]:
    """The live nodes of the Ray cluster at ``address``, read by a driver that submits no work.
    Raises cluster.ClusterUnreachable where nothing answers."""
    import ray

    from orchestrator.run.cluster import connect
    owned = not ray.is_initialized()
    connect(address)
    try:
        return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                for n in ray.nodes() if n.get("Alive")]
    finally:
        if owned:
            ray.shutdown()


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


UNKNOWN_DEVICE_TIME = "unknown, give --rates or calibrate on a node like the spec's"


def make_plan(spec: ExperimentSpec, nodes: list[Node], where: str, given: Rates, *, measure: bool = False,
              budget_s: float = 60.0, log=None) -> dict:
    """The plan as one JSON-ready document (its fields: `unravel plan --help`)."""
    units = [g for g in unit_groups(spec) if g.size]   # counted, not made: a spec may have a million
    # language models whose folder is not here: their layers, so their units, are unknown
    unknown = [label for _, label, _ in spec.absent_models] if spec.studies.studies else []
    trained: dict[str, list] = {}           # run group -> its trials
    for t in spec.training.trials:
        trained.setdefault(group_of(t), []).append(t)
    studied: dict[tuple[str, str], list] = {}   # (run group, study) -> [a run of the group, units]
    for g in units:
        studied.setdefault((group_of(g.trial), g.study), [g.trial, 0])[1] += g.size

    # rates: a given figure (the most specific key), else what the calibration measures
    rate = {("train", g): given.find("train", train_keys(ts[0])) for g, ts in trained.items()}
    rate.update({("units", g, s): given.find("units", unit_keys(t, s)) for (g, s), (t, _) in studied.items()})
    source = {key: "given" if r else None for key, r in rate.items()}
    calibration = None
    missing_train = [ts[0] for g, ts in trained.items() if rate[("train", g)] is None]
    missing_units = [(t, s) for (g, s), (t, _) in studied.items() if rate[("units", g, s)] is None]
    if measure and (missing_train or missing_units):
        calibration = calibrate(spec, missing_train, missing_units, log, budget_s)
        measured = {("train", g): r for g, r in calibration.rates.train.items()}
        measured.update({("units", *k.rsplit(":", 1)): r for k, r in calibration.rates.units.items()})
        for key, r in measured.items():
            if key in rate and rate[key] is None:
                rate[key], source[key] = r, "measured"

    training = _training(spec, trained, rate, source, nodes)
    studies = _studies(spec, units, studied, rate, source, nodes, unknown)
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
        "estimate": _estimate(source, calibration),
        "rates": Rates({k[1]: r for k, r in rate.items() if r and k[0] == "train"},
                       {f"{k[1]}:{k[2]}": r for k, r in rate.items() if r and k[0] == "units"}).to_dict(),
        "notes": _notes(spec, nodes, where, training["fit_at_once"], studies["fit_at_once"], units or unknown,
                        source, calibration, measure),
    }


def _training(spec: ExperimentSpec, trained: dict[str, list], rate: dict, source: dict, nodes: list[Node]) -> dict:
    """The training part of a plan: per run group its trials and their device time; fits and wall time."""
    rows = []
    for g, ts in trained.items():
        r, iterations = rate[("train", g)], ts[0].train_config.iterations
        rows.append({"group": g, "network": ts[0].network, "mode": ts[0].mode, "trials": len(ts),
                     "iterations": iterations, "iterations_per_s": r, "rate": source[("train", g)],
                     "device_hours": _hours(len(ts) * iterations / r) if r else None})
    ask = spec.training.resources
    count = len(spec.training.trials)
    fit = fit_at_once(ask, nodes) if count else 0
    device = _sum(r["device_hours"] for r in rows)
    longest = max((r["iterations"] / r["iterations_per_s"] for r in rows if r["iterations_per_s"]), default=0.0)
    wall = _wall(device * 3600, longest, min(count, fit), ask) if device is not None and count else None
    return {"trials": count, "resources": {"cpu": ask.cpu, "gpu": ask.gpu}, "fit_at_once": fit,
            "at_once": min(count, fit), "groups": rows, "device_hours": device, "wall_hours": _hours(wall)}


def _studies(spec: ExperimentSpec, units: list, studied: dict, rate: dict, source: dict, nodes: list[Node],
             unknown: list[str]) -> dict:
    """The studies part of a plan: units per study and per (run group, study), their device time; fits
    and wall time of the evaluators. ``unknown``: labels of models whose units are not counted (their
    folder is absent), which leave the device time unknown."""
    rows = []
    for (g, study), (_, count) in studied.items():
        r = rate[("units", g, study)]
        rows.append({"group": g, "study": study, "units": count, "units_per_s": r,
                     "rate": source[("units", g, study)], "device_hours": _hours(count / r) if r else None})
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
            "batches": sum(g.batch_count(spec.studies.plans_per_batch) for g in units),
            "evaluators": {"count": ev.count, "cpu": ev.cpu, "gpu": ev.gpu}, "fit_at_once": fit,
            "at_once": min(ev.count, fit), "per_study": per_study, "groups": rows, "device_hours": device,
            "wall_hours": _hours(wall), "units_unknown_for": unknown}


METHOD = ("iterations / (iterations/s) for each trial, units / (units/s) for each study, on the device each rate "
          "is of; Ray's start-up, checkpoints and data loading are not in it")


def _estimate(source: dict, calibration) -> dict:
    """How the device time was made: the method, how many rates were given or measured, and the calibration."""
    measured = None
    if calibration is not None:
        measured = {"devices": sorted(calibration.devices), "seconds": round(calibration.seconds, 1),
                    "budget_seconds": calibration.budget_s, "timed": calibration.timed,
                    "not_measured": calibration.not_measured}
    return {"method": METHOD, "given": sum(s == "given" for s in source.values()),
            "measured": sum(s == "measured" for s in source.values()), "calibration": measured}


def _notes(spec: ExperimentSpec, nodes: list[Node], where: str, t_fit: int, e_fit: int, units: list, source: dict,
           calibration, measure: bool) -> list[str]:
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
    for index, label, folder in spec.absent_models:
        notes.append(f"models[{index}] ({label}): {folder} is not here, so its layers, vocabulary and units are "
                     f"unknown (a plan reads only the folder's config.json and tokenizer_config.json)")
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
    unrated = [k for k, s in source.items() if s is None]
    if unrated:
        how = "" if measure else ("; --calibrate measures them here where this machine has the spec's devices, "
                                  "--rates FILE reads those of unravel plan --calibrate --format json run on one")
        notes.append(f"{len(unrated)} rate{'s' * (len(unrated) != 1)} neither given nor measured: their device "
                     f"time is unknown{how}")
    return notes


# -- the table ------------------------------------------------------------------------------------

def _num(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _duration(hours: float | None) -> str:
    if hours is None:
        return "-"
    seconds = hours * 3600
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.2g} min" if seconds < 600 else f"{seconds / 60:.0f} min"
    return f"{_num(hours)} h"


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header), *(fmt(r) for r in rows)]


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 'es' if noun.endswith('ch') else 's'}"


def _res(r: dict) -> str:
    return f"{r['cpu']:g} CPU + {r['gpu']:g} GPU"


def render(doc: dict) -> str:
    """The plan as the table `unravel plan` prints."""
    d = doc["data"]
    test = f"{d['test_examples']:,} test examples per unit" if d["test_examples"] else "test examples unknown"
    nodes = Counter((n["cpu"], n["gpu"]) for n in doc["nodes"]["nodes"])
    shape = ", ".join(f"{c} x ({cpu:g} CPU, {gpu:g} GPU)" for (cpu, gpu), c in nodes.items()) or "none"
    spec = f" ({doc['spec']})" if doc["spec"] else ""
    size = f"{d['channels']}x{d['image_size']}x{d['image_size']}, {d['classes']} classes"
    if "sequence_length" in d:
        vocabulary = f"a vocabulary of {d['classes']:,}" if d["classes"] else "the vocabulary unknown"
        size = f"sequences of {d['sequence_length']} tokens, {vocabulary}"
        test = test.replace("test examples", "test sequences")
    lines = [f"plan of '{doc['experiment']}'{spec}: nothing submitted, nothing written",
             f"data: {d['dataset']}, {size}; {test}",
             f"nodes ({doc['nodes']['source']}): {shape}"]
    t = doc["training"]
    if t["trials"]:
        lines += ["", f"training: {_count(t['trials'], 'trial')}, each {_res(t['resources'])}; {t['fit_at_once']} "
                      f"fit at once, {t['at_once']} run at once"]
        lines += _table([[r["group"], r["trials"], f"{r['iterations']:,}", _num(r["iterations_per_s"]),
                          r["rate"] or "none", _duration(r["device_hours"])] for r in t["groups"]],
                        ["run group", "trials", "iterations", "iterations/s", "rate", "device time"])
    s = doc["studies"]
    unknown = s["units_unknown_for"]
    if s["units"] or unknown:
        e = s["evaluators"]
        counted = f"{_count(s['units'], 'unit')} in {_count(s['batches'], 'batch')}"
        if unknown:
            counted = (f"{counted} and the unknown units of {', '.join(unknown)}" if s["units"] else
                       f"the units of {', '.join(unknown)} unknown")
        lines += ["", f"studies: {counted}, {_count(e['count'], 'evaluator')} of {_res(e)} each; "
                      f"{s['fit_at_once']} fit at once, {s['at_once']} run at once"]
        lines += _table([[r["study"], r["runs"], f"{r['units']:,}",
                          _num(r["units"] / (r["device_hours"] * 3600)) if r["device_hours"] else "-",
                          _duration(r["device_hours"])] for r in s["per_study"]],
                        ["study", "runs", "units", "units/s", "device time"]) if s["per_study"] else []
    parts = [f"{name} {_duration(x['device_hours']) if x['device_hours'] is not None else 'unknown'}"
             for name, x, has in
             (("training", t, t["trials"]), ("studies", s, s["units"] or unknown)) if has]
    if doc["wall_hours"] is not None:
        wall = f"about {_duration(doc['wall_hours'])} on these nodes"
    else:
        wall = "wall time unknown" if doc["device_hours"] is None else "no wall time: a worker fits on no node"
    est = doc["estimate"]
    if doc["device_hours"] is None:
        known = [p for p in parts if not p.endswith(" unknown")]
        lines += ["", f"device time: {UNKNOWN_DEVICE_TIME}" + (f" (known: {', '.join(known)})" if known else "")]
    else:
        lines += ["", f"device time: {_num(doc['device_hours'])} device-hours ({', '.join(parts)}); {wall}",
                  *_wrapped(f"estimate: {est['method']}")]
    total = len(t["groups"]) + len(s["groups"])
    rates = [f"{est['given']} of {total} given"] if est["given"] else []
    c = est["calibration"]
    if c and c["timed"]:   # a calibration that measured nothing says why in the notes
        rates.append(f"{est['measured']} of {total} measured on this machine's {' and '.join(c['devices'])} in "
                     f"{c['seconds']:.0f} s (budget {c['budget_seconds']:g} s):")
    lines.append(f"rates: {', '.join(rates) or 'none'}")
    lines += [f"  {what}" for what in (c["timed"] if c else [])]
    lines += [line for n in doc["notes"] for line in _wrapped(f"note: {n}")]
    return "\n".join(lines)


def _wrapped(text: str) -> list[str]:
    return textwrap.wrap(text, width=110, subsequent_indent="  ", break_on_hyphens=False)

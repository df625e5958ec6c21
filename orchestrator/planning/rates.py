"""Rates: how fast one trial trains and one evaluator computes units, and the figures a user gives for them.

``unravel plan`` turns counts into device time with two kinds of rate: training iterations per second of one
trial (its per-epoch test evaluation included) and units per second of one evaluator. A rate is of a run group
(``Trial.group``: runs that differ only in seed train and evaluate alike): of its training, or of its units of
one study (``RateKey``). Rates are given by name (``GivenRates``): ``GROUP`` for training, ``GROUP:STUDY`` for
units, or a broader name (a setting, a label, a network, a study alone); the most specific name wins, so one
figure can cover every run of a network.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from workloads.models import NETWORKS

from orchestrator.experiment.resolved import ExperimentSpec, Trial


class RateError(ValueError):
    """A rate that cannot be read; the message is one line."""


class RateKey(NamedTuple):
    """What one rate is of: the training of a run group (no study), or its units of one study."""

    group: str
    study: str | None = None

    @property
    def name(self) -> str:
        """The key as figures name it: ``GROUP``, or ``GROUP:STUDY`` for units."""
        return self.group if self.study is None else f"{self.group}:{self.study}"


@dataclass(frozen=True)
class Rate:
    """Iterations/s (training) or units/s, and where the figure came from; None where it is neither."""

    per_s: float | None
    source: Literal["given", "measured"] | None


def train_names(trial: Trial) -> list[str]:
    """Names a training figure for ``trial`` may be given under, most specific first."""
    return list(dict.fromkeys([trial.group, trial.setting, trial.label, trial.network]))


def unit_names(trial: Trial, study: str) -> list[str]:
    """Names a unit figure for ``trial``'s units of ``study`` may be given under, most specific first."""
    return [RateKey(name, study).name for name in train_names(trial)] + [study]


@dataclass
class GivenRates:
    """Rates by the names a user gives them under (the command line, a file, a plan's JSON)."""

    train: dict[str, float] = field(default_factory=dict)
    units: dict[str, float] = field(default_factory=dict)

    def rate(self, trial: Trial, study: str | None = None) -> Rate:
        """The figure for ``trial``'s training (``study`` None) or units of ``study``, by its most specific name."""
        names, table = (train_names(trial), self.train) if study is None else (unit_names(trial, study), self.units)
        value = next((table[name] for name in names if name in table), None)
        return Rate(value, None if value is None else "given")

    def update(self, other: GivenRates) -> GivenRates:
        self.train.update(other.train)
        self.units.update(other.units)
        return self

    @classmethod
    def of(cls, rates: dict[RateKey, Rate]) -> GivenRates:
        """The rates a plan used, under their keys' names: given back with --rates, they make the same plan."""
        known = {key: r.per_s for key, r in rates.items() if r.per_s is not None}
        return cls({k.name: r for k, r in known.items() if k.study is None},
                   {k.name: r for k, r in known.items() if k.study is not None})

    def to_dict(self) -> dict:
        return {"train": dict(sorted(self.train.items())), "units": dict(sorted(self.units.items()))}


def check_names(spec: ExperimentSpec, figures: GivenRates) -> None:
    """Every figure given on the command line names something of the spec (a typo would be ignored silently);
    RateError (one line) if not."""
    known_train = {name for t in spec.training.trials for name in train_names(t)}
    for name in figures.train:
        if name not in known_train:
            raise RateError(f"--train-rate {name}: names no trained run of the spec (run groups, labels and "
                            f"networks: {', '.join(sorted(known_train)) or 'none'})")
    if not figures.units:
        return
    runs = {t.run_id: t for t in spec.runs}
    pairs = {(r, s.study) for s in spec.studies.studies for r in s.runs}
    pairs |= {(r, "intact") for r, _ in pairs} | {(t.run_id, "intact") for t in spec.runs if t.test_rules}
    known_units = {name for r, s in pairs for name in unit_names(runs[r], s)}
    studied = {s.study for s in spec.studies.studies} | {"intact"}   # a model absent from this machine
    language = [name for name, fields in NETWORKS.items() if fields.get("arch") == "hf"]  # may still be studied
    for _, label, _ in spec.absent_models:
        pairs |= {(label, s) for s in studied}
        known_units |= {RateKey(name, s).name for name in (label, *language) for s in studied} | studied
    for name in figures.units:
        if name not in known_units:
            studies = sorted({s for _, s in pairs})
            raise RateError(f"--unit-rate {name}: names no study of the spec's runs (studies: "
                            f"{', '.join(studies) or 'none'}; or GROUP:STUDY)")


def _rate(value, where: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise RateError(f"{where}: must be a number above 0, got {value!r}") from None
    if not math.isfinite(rate) or rate <= 0 or isinstance(value, bool):
        raise RateError(f"{where}: must be a number above 0, got {value!r}")
    return rate


def parse_given_rates(train: tuple[str, ...] = (), units: tuple[str, ...] = ()) -> GivenRates:
    """``--train-rate NAME=ITERATIONS_PER_S`` and ``--unit-rate NAME=UNITS_PER_S`` options."""
    figures = GivenRates()
    for option, texts, table in (("--train-rate", train, figures.train), ("--unit-rate", units, figures.units)):
        for text in texts:
            name, sep, value = text.partition("=")
            if not sep or not name.strip():
                raise RateError(f"{option} {text}: expected KEY=RATE, e.g. {option} resnet110=12.5")
            table[name.strip()] = _rate(value.strip(), f"{option} {name.strip()}")
    return figures


def read_given_rates(path: str | Path) -> GivenRates:
    """Rates given in a JSON file: ``{"train": {NAME: rate}, "units": {NAME: rate}}``, or the output of
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
    figures = GivenRates()
    for kind, table in (("train", figures.train), ("units", figures.units)):
        entries = doc.get(kind) or {}
        if not isinstance(entries, dict):
            raise RateError(f"{path}: {kind} must map keys to rates, got {type(entries).__name__}")
        for name, value in entries.items():
            table[str(name)] = _rate(value, f"{path}: {kind}.{name}")
    return figures

"""Experiment specs: YAML in, a validated, resolved experiment out, before anything starts.

The document's sections are checked alone by their pydantic models (``document``); here the rules that span
sections (a study's k_max against its networks' blocks, the labels a study names, the modes a network
supports) are checked as the runs are expanded into the resolved experiment (``resolved``). Every mistake is
one line naming the field (``training.runs[1].network: unknown network 'resnet21'``): pydantic's wording is
turned into the house's in one place, ``messages``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from workloads.models import NETWORKS
from workloads.train.recipe import TrainConfig

from orchestrator.experiment.document import (DEFAULT_PLANS, GATED, STUDIES, DataSpec, ModelEntry, Proxies,
                                              SpecDocument, StudiesSpec, Tasks, TrainingSection, read_document)
from orchestrator.experiment.messages import SpecError, one_line
from orchestrator.experiment.networks import block_infos, counts, has_config, language_model_fields, net_config
from orchestrator.experiment.resolved import (AbsentModel, Data, ExperimentSpec, Studies, StudySpec, TrainingSpec,
                                              Trial)
from orchestrator.location import is_uri

__all__ = ["ExperimentSpec", "SpecError", "load_spec", "parse_spec"]   # what callers of a spec need

# a study's size setting and what bounds it in each run: (field, Counts field, what that counts)
_BOUNDS = {"random_deletion": ("k_max", "deletable", "deletable blocks"),
           "reorder": ("k_max", "pairs", "same-shape pairs to swap"),
           "span_deletion": ("max_length", "layers", "layers")}


def _fail(where: str, problem: str) -> None:
    raise SpecError(f"{where}: {problem}")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8]


def _safe_id(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)  # a safe folder name


def _local(path: str) -> str:
    """A path as every process must see it (workers do not share the driver's cwd)."""
    return str(Path(path).expanduser().resolve())


def _data(section: DataSpec) -> Data:
    """The data section with its root resolved here (a URI as it is); tokenizers follow the models."""
    fields = {f.name: getattr(section, f.name) for f in dataclasses.fields(Data)
              if f.name not in ("resolved_root", "tokenizers")}
    return Data(**fields, resolved_root=section.root if is_uri(section.root) else _local(section.root))


def _trials(section: TrainingSection, data: Data) -> TrainingSpec:
    if data.text:
        _fail("training", "dataset text is evaluated, not trained here; list language models under models: "
                          "(network: hf_causal_lm, checkpoint: the model's folder)")
    if data.streamed:
        _fail("training", f"dataset {data.dataset} is evaluated from disk, not trained here; list networks trained "
                          f"elsewhere under models: (network, checkpoint)")
    recipe = section.recipe.model_dump(exclude_unset=True)
    trials: list[Trial] = []
    for i, entry in enumerate(section.runs):
        where = f"training.runs[{i}]"
        label = entry.label if entry.label is not None else entry.network
        overrides = entry.overrides.model_dump(mode="json", exclude_unset=True)
        for j, variant in enumerate(entry.variants):
            v = variant.model_dump(mode="json", exclude_unset=True)
            for mode in entry.modes:
                net = net_config(entry.network, {**overrides, **v}, mode, data.shape,
                                 f"{where}.variants[{j}]" if v else where)
                if mode != "normal" and net.arch == "plain":
                    _fail(f"{where}.modes", f"mode {mode!r} needs a residual network, not {entry.network}")
                active = entry.active_blocks if entry.active_blocks is not None else recipe.get("active_blocks")
                if mode == "effective_paths" and active is not None and active > counts(net).blocks:
                    _fail(f"{where}.active_blocks", f"must be between 1 and {counts(net).blocks} (the network's "
                                                    f"blocks), got {active}")
                for seed in section.seeds:
                    try:
                        train = TrainConfig(**{**recipe, "iterations": section.iterations, "mode": mode, "seed": seed,
                                               **({"active_blocks": active} if active is not None else {})})
                    except ValidationError as e:
                        raise SpecError(one_line(e, TrainConfig, "training.recipe")) from None
                    tag = "" if not v else "." + ".".join(f"{k}-{v[k]}" for k in sorted(v))
                    setting = _safe_id(f"{label}{tag}")
                    run_id = f"{setting}.{mode}.s{seed}." + _short_hash(net.to_json(), train.to_json(), data.dataset)
                    # the rules are how the checkpoint is evaluated, not trained: outside the run id
                    rules = tuple(entry.test_rules) if mode == "effective_paths" else ()
                    trials.append(Trial(run_id, setting, label, entry.network, json.dumps(v, sort_keys=True), mode,
                                        seed, net, train, test_rules=rules))
    _no_twins(trials, "training.runs", "give them different labels or settings")
    return TrainingSpec(tuple(trials), section.resources, section.max_failures)


def _no_twins(trials: list[Trial] | tuple[Trial, ...], where: str, advice: str) -> None:
    ids = [t.run_id for t in trials]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        _fail(where, f"two runs are identical ({dupes[0]}); {advice}")


def _imports(entries: list[ModelEntry], data: Data,
             model_folders: bool = True) -> tuple[tuple[Trial, ...], tuple[AbsentModel, ...]]:
    """The imported models, and (without ``model_folders``) the language models whose folder is not
    here: a language model is what its config.json says, so such a model is left out, not refused."""
    models, absent = [], []
    for i, entry in enumerate(entries):
        label = entry.label if entry.label is not None else entry.network
        overrides = entry.overrides.model_dump(mode="json", exclude_unset=True)
        language = NETWORKS[entry.network].get("arch") == "hf"
        if language != data.text:
            _fail(f"models[{i}].network", f"{entry.network} reads {'text' if language else 'images'}, and dataset "
                                          f"{data.dataset} holds {'text' if data.text else 'images'}")
        if language and not model_folders and not has_config(entry.checkpoint):
            absent.append(AbsentModel(i, label, entry.checkpoint))
            continue
        fields = {**overrides, **(language_model_fields(entry.checkpoint, f"models[{i}]", data.sequence_length)
                                  if language else {})}
        net = net_config(entry.network, fields, "normal", data.shape, f"models[{i}]")
        setting = _safe_id(label)
        run_id = f"{setting}.pretrained." + _short_hash(net.to_json(), entry.checkpoint, data.dataset)
        models.append(Trial(run_id, setting, label, entry.network, json.dumps(overrides, sort_keys=True), "pretrained",
                            0, net, None, entry.checkpoint))
    return tuple(models), tuple(absent)


def _select(trials: tuple[Trial, ...], runs: list[str] | None, where: str,
            absent: set[str] = frozenset()) -> list[Trial]:
    if runs is None:
        return list(trials)
    known = {t.label for t in trials} | {t.run_id for t in trials}
    for i, r in enumerate(runs):
        if r not in known and r not in absent:
            _fail(f"{where}.runs[{i}]", f"no training run is labelled {r!r} (labels: "
                                        f"{', '.join(sorted({t.label for t in trials}))})")
    return [t for t in trials if t.label in runs or t.run_id in runs]


def _resolve_studies(studies: StudiesSpec, runs: tuple[Trial, ...], data: Data,
                     absent: set[str] = frozenset()) -> Studies:
    """Each study's runs, checked against what the study needs of them (``absent``: labels of models
    left out because their folder is not here)."""
    exclude = studies.exclude_blocks
    if exclude and runs:
        most = max(counts(t.net_config).blocks for t in runs)
        for i, b in enumerate(exclude):
            if b >= most:
                _fail(f"studies.exclude_blocks[{i}]", f"block {b} does not exist (the largest network has {most} "
                                                      f"blocks, numbered from 0)")
    if studies.recalibrate_bn and data.streamed:
        _fail("studies.recalibrate_bn", f"is not supported with dataset {data.dataset}: each plan would need its own "
                                        f"pass over the images on disk")
    resolved: list[StudySpec] = []
    for name in STUDIES:
        section = getattr(studies, name)
        if section is None:
            continue
        where = f"studies.{name}"
        chosen = _select(runs, section.runs, where, absent)
        if section.runs is None and name != "single_deletion":  # F5a, F5b, F6b, spans: about residual networks
            chosen = [t for t in chosen if t.net_config.arch != "plain"]
        if name in _BOUNDS:
            setting, bound, what = _BOUNDS[name]
            for t in chosen:
                limit = getattr(counts(t.net_config, tuple(exclude)), bound)
                if getattr(section, setting) > limit:
                    _fail(f"{where}.{setting}", f"{setting}={getattr(section, setting)} is larger than the {limit} "
                                                f"{what} of run {t.label!r}")
        if name == "gradients":
            for t in chosen:
                if t.net_config.arch == "plain":
                    _fail(f"{where}.runs", f"run {t.label!r} is a plain network: it has no paths to choose")
        if name == "gates":
            chosen = _gated(chosen, section.runs, where)
        if name == "tasks":
            resolved.append(_tasks(section, chosen, data, {s.study for s in resolved}))
            continue
        if name == "proxies":
            resolved.append(_proxies(section, chosen, data))
            continue
        if name == "shares":
            _shares_pools(chosen, tuple(exclude))
        resolved.append(StudySpec(name, tuple(t.run_id for t in chosen), getattr(section, "k_max", 0),
                                  getattr(section, "draws", 0), getattr(section, "batch_size", 0),
                                  getattr(section, "max_length", 0), getattr(section, "permutations", 0)))
    return Studies.of(studies, tuple(resolved))


def _tasks(section: Tasks, chosen: list[Trial], data: Data, studies: set[str]) -> StudySpec:
    """The tasks study: language models only, scoring the units of studies the spec has (on each run, those the
    named studies have on it; intact always)."""
    if not data.text:
        _fail("studies.tasks", f"scores language models (models: with network hf_causal_lm, dataset text), and "
                               f"dataset {data.dataset} holds images")
    for t in chosen:
        if t.net_config.arch != "hf":
            _fail("studies.tasks.runs", f"run {t.label!r} is not a language model (network hf_causal_lm)")
    if section.plans is None:
        plans = tuple(p for p in DEFAULT_PLANS if p == "intact" or p in studies)
    else:
        for i, p in enumerate(section.plans):
            if p != "intact" and p not in studies:
                _fail(f"studies.tasks.plans[{i}]", f"the spec has no study {p} (add studies.{p}: or leave {p} out)")
        plans = tuple(section.plans)
    config = section.task_config()
    if config.include_path is not None:   # the user's task YAMLs, as every node must find them
        if is_uri(config.include_path):
            _fail("studies.tasks.include_path", "task YAMLs are read from a local folder on every node, not from a "
                                                "URI; copy them to the nodes (or a shared disk) and name that path")
        config = dataclasses.replace(config, include_path=_local(config.include_path))
    return StudySpec("tasks", tuple(t.run_id for t in chosen), plans=plans, task_config=config.to_json())


def _proxies(section: Proxies, chosen: list[Trial], data: Data) -> StudySpec:
    """The proxies study: residual units to score (a plain network has no shortcut to read a branch off); the
    positions a text's scores average over, pooled features for images."""
    for t in chosen:
        if t.net_config.arch == "plain":
            _fail("studies.proxies.runs", f"run {t.label!r} is a plain network: it has no residual units to score")
    if not data.text and "positions" in section.model_fields_set:
        _fail("studies.proxies.positions", f"applies only to dataset text (images are scored on their pooled "
                                           f"features), not {data.dataset}")
    return StudySpec("proxies", tuple(t.run_id for t in chosen), positions=section.positions if data.text else "pooled")


def _shares_pools(chosen: list[Trial], exclude: tuple[int, ...]) -> None:
    """A shares study permutes each run's deletion pool (less the excluded blocks): a run with fewer than two
    units in it has no share to split."""
    for t in chosen:
        deletable = counts(t.net_config, exclude).deletable
        if deletable < 2:
            _fail("studies.shares.runs", f"run {t.label!r} has {deletable} deletable block"
                                         f"{'s' * (deletable != 1)} outside studies.exclude_blocks: shares need two")


def _gated(chosen: list[Trial], named: list[str] | None, where: str) -> list[Trial]:
    """The gated runs of a gates study: all of them by default; a named run (a label may name several
    variants) none of whose trials has a gate is a mistake."""
    gated = [t for t in chosen if t.net_config.shortcut in GATED]
    for i, r in enumerate(named or ()):
        if not any(r in (t.label, t.run_id) for t in gated):
            _fail(f"{where}.runs[{i}]", f"run {r!r} has no gated shortcut (shortcut: {' or '.join(GATED)})")
    if not gated:
        _fail(where, f"no run has a gated shortcut: give a run a variant with shortcut: {' or '.join(GATED)}")
    return gated


def parse_spec(raw: Any, path: str = "", model_folders: bool = True) -> ExperimentSpec:
    """A spec document (parsed YAML) as a validated, resolved experiment; SpecError with one line if not.
    ``model_folders=False`` (a plan, which reads no files) leaves out a language model whose folder
    is not here instead of refusing it (``absent_models``)."""
    if not isinstance(raw, dict):
        _fail("spec", f"must be a mapping of sections (name, data, training, models, studies), "
                      f"got {type(raw).__name__}")
    try:
        doc = SpecDocument.model_validate(raw)
    except ValidationError as e:
        raise SpecError(one_line(e, SpecDocument)) from None
    if doc.data.dataset == "text" and doc.data.tokenizer is None and not doc.models:
        _fail("data.tokenizer", "is required with dataset text when no model folder under models: holds one")
    data = _data(doc.data)
    training = _trials(doc.training, data) if doc.training is not None else TrainingSpec()
    models, absent = _imports(doc.models, data, model_folders) if doc.models is not None else ((), ())
    if data.text:  # each model reads the text with the tokenizer the spec names, else with its own
        named = _local(data.tokenizer) if data.tokenizer else ""
        data = dataclasses.replace(data, tokenizers={m.run_id: named or _local(m.checkpoint) for m in models})
    _no_twins(training.trials + models, "models", "give them different labels")
    runs = training.trials + models
    studies = _resolve_studies(doc.studies, runs, data, {m.label for m in absent})
    return ExperimentSpec(doc.name, data, training, studies, raw=raw, path=path, models=models, absent_models=absent,
                          blocks={t.net_config: block_infos(t.net_config) for t in runs})


def load_spec(path: str | Path, model_folders: bool = True) -> ExperimentSpec:
    """Read, validate and resolve a YAML spec; raises SpecError with a one-line message.
    ``model_folders``: as parse_spec's."""
    return parse_spec(read_document(path), str(Path(path)), model_folders)

"""Studies expanded into work units with deterministic keys, grouped into batches per run.

A unit is one plan (a lesion, a span of deleted layers, a reordering, or a prefix of a seeded permutation of
the deletion pool (shares), evaluated on the test set), one gradient draw, one run's gates (all its gated blocks,
read in one pass over the test set), one run's proxies (every unit's and span's one-forward scores, one intact
pass), or one plan of another study scored on one lm-evaluation-harness task (a tasks unit, its key hashing the
plan's study and the task too). Its key hashes the run, the study, k,
the draw and the engine version, so the same spec always yields the same keys: the resume index
is the set of keys already written, and a batch's file is named after its units, so a batch
redone after a crash overwrites its own file instead of adding rows.

A run trained on effective paths is evaluated under a test-time rule (workloads.train.inference_rules),
part of its units' keys: one intact unit per rule it lists, whether or not a lesion study names the
run (Table 1 compares these), and every study's units under its first rule.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from workloads.surgery import (delete_blocks, delete_span, deletion_pool, intact, layer_spans, permutation_prefix,
                               random_deletion, random_swaps)
from workloads.train.modes import scaled_active_count

from orchestrator.experiment.resolved import ExperimentSpec, StudySpec, Trial

ENGINE_VERSION = "1"   # bump when a change to workloads.surgery changes results
OWN_TABLES = ("gradients", "gates", "proxies")   # studies with a table of their own (the others': lesion, tasks)


@dataclass(frozen=True)
class Unit:
    key: str
    run_id: str
    study: str     # intact | single_deletion | random_deletion | reorder | gradients | gates | span_deletion | proxies
    #                | shares | tasks
    k: int         # blocks deleted / pairs swapped / path length / layers in the span / shares: prefix length
    #                (gates, proxies: 0)
    draw: int      # draw index (single deletion: the deleted block; span deletion: its first layer; shares: the
    #                permutation; gates, proxies: 0)
    test_rule: str = ""     # effective-paths runs: how the network is evaluated ("" for other modes)
    train_active: int = 0   # effective-paths runs: m, the blocks each training mini-batch ran
    plan: str = ""          # tasks: the study whose unit (k, draw) it scores (intact, single_deletion, ...)
    task: str = ""          # tasks: the lm-evaluation-harness task


@dataclass
class Batch:
    key: str
    run_id: str
    study: str
    units: list[Unit] = field(default_factory=list)
    test_rule: str = ""     # one rule per batch, as its units'
    train_active: int = 0
    task: str = ""          # tasks: one task per batch (one engine pass answers its plans)

    @property
    def table(self) -> str:
        """The table whose unit keys say the batch is written (the resume index)."""
        if self.study == "tasks":
            return "tasks"
        return self.study if self.study in OWN_TABLES else "lesion"

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables a batch writes, in the order they are written: ``table`` last, so that a batch killed
        between two files is redone (its first file overwritten by the same name), never half counted."""
        return ("task_samples", "tasks") if self.study == "tasks" else (self.table,)


def unit_key(run_id: str, study: str, k: int, draw: int, settings: str = "") -> str:
    text = f"{run_id}|{study}|{k}|{draw}|{settings}|engine{ENGINE_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def settings_of(spec: ExperimentSpec, study: str, run_id: str | None = None) -> str:
    """The spec settings that change a unit's result: part of its key, so changing them recomputes (text: the
    corpus as ``run_id``'s tokenizer cuts it)."""
    s = spec.studies
    data = ""
    d = spec.data
    if d.streamed:  # images read from disk: which folder, and how they are resized
        data = f"|data={d.resolved_root}:{d.image_size}:{d.resize}"
    if d.text:  # which corpus, tokenised how (the run's tokenizer), cut how
        data = f"|data={d.resolved_root}:{d.column}:{d.tokenizer_of(run_id)}:{d.sequence_length}"
    if study == "gradients":
        return f"batch={s.study('gradients').batch_size}{data}"
    if study == "gates":  # always fp32, the stored BatchNorm statistics: only the test set matters
        return f"test={s.test_examples}{data}"
    if study == "tasks":  # the task's documents, tokenised by the run's tokenizer; the corpus plays no part
        return f"precision={s.precision}|tokenizer={d.tokenizer_of(run_id)}"
    if study == "proxies":  # one intact forward: no BatchNorm re-estimation; the positions its scores average
        return f"test={s.test_examples}|precision={s.precision}|positions={s.study('proxies').positions}{data}"
    text = f"test={s.test_examples}|precision={s.precision}|bn={s.recalibrate_bn}:{s.calibration_examples}{data}"
    if study in ("random_deletion", "reorder", "shares"):
        text += f"|exclude={sorted(s.exclude_blocks)}"
    return text


def train_active(trial: Trial, blocks: int) -> int:
    """m of an effective-paths run of ``blocks`` blocks: the blocks each training mini-batch ran (0 for other
    modes)."""
    if not trial.test_rules:
        return 0
    return trial.train_config.active_blocks or scaled_active_count(blocks)


def _studied_rule(trial: Trial) -> str:
    return trial.test_rules[0] if trial.test_rules else ""


@dataclass(frozen=True)
class UnitGroup:
    """The units of one run in one study under one test rule, before any is made: ``expand`` makes
    them (keys hashed), ``unravel plan`` only counts them (a spec may have a million units)."""

    trial: Trial
    study: str
    settings: str
    rule: str
    active: int                               # train_active of the trial
    pairs: tuple[tuple[int, int], ...] = ()   # (k, draw) of each unit; gradients: see draws and lengths
    draws: int = 0                            # gradients: draws, each of path lengths 1..lengths
    lengths: int = 0
    plan: str = ""                            # tasks: the study whose units it scores, and the task
    task: str = ""

    @property
    def size(self) -> int:
        return self.draws * self.lengths if self.study == "gradients" else len(self.pairs)

    def batch_count(self, plans_per_batch: int) -> int:
        """Batches ``batches`` makes of these units: one per gradient draw, else chunks of plans."""
        return self.draws if self.study == "gradients" else -(-len(self.pairs) // plans_per_batch)

    def units(self) -> list[Unit]:
        pairs = ([(k, d) for d in range(self.draws) for k in range(1, self.lengths + 1)]
                 if self.study == "gradients" else self.pairs)
        settings = f"{self.settings}|rule={self.rule}" if self.rule else self.settings  # no rule: the keys of old
        return [Unit(unit_key(self.trial.run_id, self.study, k, d, settings),
                     self.trial.run_id, self.study, k, d, self.rule, self.active, self.plan, self.task)
                for k, d in pairs]


def _lesion_pairs(infos, study: StudySpec | None, exclude: tuple[int, ...] = ()) -> tuple[tuple[int, int], ...]:
    if study is None:  # the intact network
        return ((0, 0),)
    if study.study == "single_deletion":
        return tuple((1, b) for b in deletion_pool(infos))
    if study.study == "span_deletion":
        return tuple((length, start) for start, length in layer_spans(infos, study.max_length))
    if study.study == "shares":   # every prefix, the empty one to the whole pool, of each permutation
        pool = len(deletion_pool(infos, exclude))
        return tuple((k, p) for p in range(study.permutations) for k in range(pool + 1))
    return tuple((k, d) for k in range(1, study.k_max + 1) for d in range(study.draws))


def unit_groups(spec: ExperimentSpec) -> list[UnitGroup]:
    """Every study's units on every run it applies to, grouped per run, study and test rule, intact
    baselines first (one per test rule on effective-paths runs, which get theirs even when no lesion
    study names them)."""
    trials = {t.run_id: t for t in spec.runs}
    # a tasks study's runs get the lesion table's intact unit too: the loss its plans' scores are read against
    lesioned = {r for s in spec.studies.studies if s.study not in OWN_TABLES for r in s.runs}
    ruled = {t.run_id for t in spec.runs if t.test_rules}
    active = {t.run_id: train_active(t, len(spec.blocks_of(t))) for t in spec.runs}
    groups = [UnitGroup(trials[r], "intact", settings_of(spec, "intact", r), rule, active[r], ((0, 0),))
              for r in sorted(lesioned | ruled) for rule in (trials[r].test_rules or ("",))]
    for study in spec.studies.studies:
        for run_id in study.runs:
            trial = trials[run_id]
            infos = spec.blocks_of(trial)
            head = (trial, study.study, settings_of(spec, study.study, run_id), _studied_rule(trial), active[run_id])
            if study.study == "gradients":  # path lengths 1..n over the residual units
                groups.append(UnitGroup(*head, draws=study.draws, lengths=sum(i.residual for i in infos)))
            elif study.study in ("gates", "proxies"):   # one pass over the test set per run
                groups.append(UnitGroup(*head, ((0, 0),)))
            elif study.study == "tasks":
                groups += _task_groups(spec, study, head, infos)
            else:
                groups.append(UnitGroup(*head, _lesion_pairs(infos, study, spec.studies.exclude_blocks)))
    return groups


def _task_groups(spec: ExperimentSpec, study: StudySpec, head: tuple, infos) -> list[UnitGroup]:
    """A tasks study's units on one run: each plan its named studies have on the run (intact always), on each
    task; the key hashes the task, the plan's study and the task settings (not the list of task names: adding a
    task computes only the new one)."""
    trial, _, settings, rule, active = head
    config = study.tasks()
    shared = config.to_dict()
    shared.pop("names")
    exclude = f"|exclude={sorted(spec.studies.exclude_blocks)}"
    groups = []
    for plan in study.plans:
        lesion = spec.studies.study(plan) if plan != "intact" else None
        if lesion is not None and trial.run_id not in lesion.runs:
            continue
        pairs = _lesion_pairs(infos, lesion, spec.studies.exclude_blocks)
        for task in config.names:
            text = (f"{settings}|tasks={json.dumps(shared, sort_keys=True)}|plan={plan}|task={task}"
                    f"{exclude if plan in ('random_deletion', 'reorder') else ''}")
            groups.append(UnitGroup(trial, "tasks", text, rule, active, pairs, plan=plan, task=task))
    return groups


def batch_count(groups: list[UnitGroup], plans_per_batch: int) -> int:
    """Batches ``batches`` makes of these groups' units (a tasks batch holds one task's plans of every study)."""
    tasks: dict[tuple[str, str, str], int] = {}
    count = 0
    for g in groups:
        if g.study == "tasks":
            key = (g.trial.run_id, g.task, g.rule)
            tasks[key] = tasks.get(key, 0) + g.size
        else:
            count += g.batch_count(plans_per_batch)
    return count + sum(-(-n // plans_per_batch) for n in tasks.values())


def expand(spec: ExperimentSpec) -> list[Unit]:
    """Every unit of every study on every run it applies to, in ``unit_groups``' order."""
    return [u for group in unit_groups(spec) for u in group.units()]


def batches(units: list[Unit], plans_per_batch: int) -> list[Batch]:
    """Group units per (run, study): lesions in chunks of plans; gradients one draw per batch
    (all k on one random training batch share one forward); tasks per task, in chunks of plans of every
    study (one engine pass answers a task's requests for all of them)."""
    groups: dict[tuple[str, str, int | str, str], list[Unit]] = {}
    for u in units:
        sub = u.draw if u.study == "gradients" else u.task
        groups.setdefault((u.run_id, u.study, sub, u.test_rule), []).append(u)
    out: list[Batch] = []
    for (run_id, study, _, rule), members in groups.items():
        size = len(members) if study == "gradients" else plans_per_batch
        for i in range(0, len(members), size):
            chunk = members[i:i + size]
            key = hashlib.sha256("|".join(u.key for u in chunk).encode()).hexdigest()[:20]
            out.append(Batch(key, run_id, study, chunk, rule, chunk[0].train_active, chunk[0].task))
    return out


def plan_for(unit: Unit, infos, exclude: tuple[int, ...]):
    """The execution plan of a lesion unit (seeded by its draw and k), or of the unit a tasks unit scores."""
    study = unit.plan if unit.study == "tasks" else unit.study
    if study == "intact":
        return intact(infos)
    if study == "single_deletion":
        return delete_blocks(infos, [unit.draw])
    if study == "span_deletion":
        return delete_span(infos, unit.draw, unit.k)
    if study == "random_deletion":
        return random_deletion(infos, unit.k, unit.draw, exclude=exclude)
    if study == "reorder":
        return random_swaps(infos, unit.k, unit.draw, exclude=exclude)
    if study == "shares":
        return permutation_prefix(infos, unit.k, unit.draw, exclude)
    raise ValueError(f"unit of study {unit.study!r} has no plan")

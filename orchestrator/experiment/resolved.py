"""The resolved experiment: what a spec means once its sections are checked together, as values.

Every trial with its network config, each study's runs, the data with its paths resolved (and each language
model's tokenizer folder), the blocks of every network, the models left out because their folder is not here.
``spec.parse_spec`` makes it from the YAML document, reading the user's folders; OUT/spec.json records it
(``record``), so that ``status``, ``figures``, ``prune`` and the report read OUT alone (``from_record``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import NamedTuple

from workloads.data import STREAMED, DataConfig
from workloads.models import BlockInfo, NetConfig
from workloads.tasks import TaskConfig
from workloads.train.recipe import TrainConfig

from orchestrator.experiment.document import Evaluators, Resources, StudiesSpec, TrainingSection
from orchestrator.experiment.messages import SpecError

RECORD_VERSION = 1   # of ``ExperimentSpec.record``: a reader refuses a record of a later version in one line
_DATA_SHAPES = {"digits": (1, 10, 8), "cifar10": (3, 10, 32), "cifar100": (3, 100, 32)}
_BLOCK_FIELDS = tuple(f.name for f in dataclasses.fields(BlockInfo))


@dataclass(frozen=True)
class Trial:
    """One run the studies can use: trained here (a network, its variant, a mode and a seed),
    or trained elsewhere and imported from the user's checkpoint (mode ``pretrained``)."""

    run_id: str
    setting: str          # the run id's start: the label and the variant (``res.widths-8``), as a folder name
    label: str
    network: str
    variant: str          # JSON of the overrides that make this variant
    mode: str
    seed: int
    net_config: NetConfig
    train_config: TrainConfig | None
    checkpoint: str = ""  # imported runs: the user's checkpoint file
    test_rules: tuple[str, ...] = ()   # effective_paths: the test-time rules, the studies' first (else none)

    @property
    def group(self) -> str:
        """The run group, the run id without its seed and hash (``res.widths-8.stochastic_depth``): runs that
        differ only in seed, which train and evaluate alike."""
        return f"{self.setting}.{self.mode}"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "setting": self.setting, "label": self.label, "network": self.network,
                "variant": self.variant, "mode": self.mode, "seed": self.seed, "net_config": self.net_config.to_json(),
                "train_config": self.train_config.to_json() if self.train_config else "",
                "checkpoint": self.checkpoint, "test_rules": list(self.test_rules)}

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        train = TrainConfig.from_dict(json.loads(d["train_config"])) if d["train_config"] else None
        return cls(d["run_id"], d["setting"], d["label"], d["network"], d["variant"], d["mode"], int(d["seed"]),
                   NetConfig.from_json(d["net_config"]), train, d.get("checkpoint", ""),
                   tuple(d.get("test_rules", ())))


@dataclass(frozen=True)
class TrainingSpec:
    trials: tuple[Trial, ...] = ()
    resources: Resources = Resources()
    max_failures: int = TrainingSection.model_fields["max_failures"].default   # the document's default, one home


@dataclass(frozen=True)
class StudySpec:
    """A study resolved against the spec's runs."""

    study: str
    runs: tuple[str, ...]        # run ids
    k_max: int = 0               # 0 where the study has no such setting (its defaults are in its section)
    draws: int = 0
    batch_size: int = 0
    max_length: int = 0
    permutations: int = 0        # shares: seeded permutations of the deletion pool
    positions: str = ""          # proxies: last | all (text), pooled (images)
    plans: tuple[str, ...] = ()  # tasks: the studies whose units it scores (intact: the whole network)
    task_config: str = ""        # tasks: the workloads.tasks.TaskConfig, as JSON

    def tasks(self) -> TaskConfig:
        """The tasks study's config (lm-eval's tasks, limit, few-shot settings)."""
        return TaskConfig.from_json(self.task_config)


@dataclass(frozen=True)
class Studies:
    """The studies: section resolved: each study with its runs, and the settings every evaluation shares."""

    studies: tuple[StudySpec, ...]
    test_examples: int | None
    precision: str
    recalibrate_bn: bool
    calibration_examples: int
    exclude_blocks: tuple[int, ...]
    evaluators: Evaluators
    plans_per_batch: int
    max_in_flight: int

    @classmethod
    def of(cls, section: StudiesSpec, studies: tuple[StudySpec, ...] = ()) -> "Studies":
        shared = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.name != "studies"}
        return cls(studies, **shared)

    def study(self, name: str) -> StudySpec | None:
        return next((s for s in self.studies if s.study == name), None)


@dataclass(frozen=True)
class Data:
    """The data: section as every process reads it: its paths resolved where the spec was read (workers do not
    share the driver's cwd), and, for text, the folder whose tokenizer cuts the corpus for each run."""

    dataset: str
    root: str                # as the spec wrote it (messages name it)
    resolved_root: str       # absolute; a URI as it is (each node copies it: orchestrator.run.data_cache)
    download: bool
    image_size: int
    resize: int | None
    num_classes: int
    workers: int
    tokenizer: str | None    # as the spec wrote it; None: each model reads the text with its own
    sequence_length: int
    column: str
    tokenizers: dict[str, str] = field(default_factory=dict)   # text: run id -> its tokenizer's folder

    @property
    def streamed(self) -> bool:
        return self.dataset in STREAMED

    @property
    def text(self) -> bool:
        return self.dataset == "text"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, classes, image size) the networks are built for (text: one channel of token ids, the
        classes its model's vocabulary sets, the sequence length)."""
        if self.text:
            return 1, 2, self.sequence_length
        return (3, self.num_classes, self.image_size) if self.streamed else _DATA_SHAPES[self.dataset]

    def tokenizer_of(self, run_id: str | None = None) -> str:
        """The folder whose tokenizer cuts the corpus for a run: data.tokenizer when the spec names one, else
        the run's own model folder, so that every model is scored on its own tokens (None: the first run's)."""
        if run_id is None:
            return next(iter(self.tokenizers.values()), "")
        return self.tokenizers[run_id]

    def loader_config(self, run_id: str | None, root: str) -> DataConfig:
        """The config ``workloads.data.load_dataset`` reads for the run ``run_id`` (text: cut by that run's
        tokenizer; None: the first run's), its files at ``root`` (this node's copy of the data)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(DataConfig)}
        return DataConfig(**{**settings, "root": root, "tokenizer": self.tokenizer_of(run_id) if self.text else None})


class AbsentModel(NamedTuple):
    """A language model of the spec whose folder is not here (a plan reads no files): left out, not refused."""

    index: int       # in models:
    label: str
    folder: str


@dataclass(frozen=True)
class ExperimentSpec:
    """A spec resolved: what to train, what to import, what to study on which runs, on which data."""

    name: str
    data: Data
    training: TrainingSpec
    studies: Studies
    raw: dict = field(default_factory=dict, compare=False)   # the document as written
    path: str = ""                                           # where it was read
    models: tuple[Trial, ...] = ()   # imported from users' checkpoints, not trained here
    absent_models: tuple[AbsentModel, ...] = ()
    blocks: dict[NetConfig, tuple[BlockInfo, ...]] = field(default_factory=dict, compare=False)   # each network's

    @property
    def runs(self) -> tuple[Trial, ...]:
        """Every run the studies may use: trained, then imported."""
        return self.training.trials + self.models

    def blocks_of(self, trial: Trial) -> tuple[BlockInfo, ...]:
        return self.blocks[trial.net_config]

    def record(self) -> dict:
        """This experiment as JSON values (OUT/spec.json keeps it beside the document)."""
        studies = {f.name: getattr(self.studies, f.name) for f in dataclasses.fields(Studies)}
        return {"version": RECORD_VERSION, "name": self.name, "data": dataclasses.asdict(self.data),
                "training": {"trials": [t.to_dict() for t in self.training.trials],
                             "resources": self.training.resources.model_dump(),
                             "max_failures": self.training.max_failures},
                "models": [t.to_dict() for t in self.models],
                "absent_models": [m._asdict() for m in self.absent_models],
                "studies": {**studies, "studies": [dataclasses.asdict(s) for s in self.studies.studies],
                            "exclude_blocks": list(self.studies.exclude_blocks),
                            "evaluators": self.studies.evaluators.model_dump()},
                "networks": [{"net_config": cfg.to_json(), "block_fields": list(_BLOCK_FIELDS),
                              "blocks": [[getattr(b, n) for n in _BLOCK_FIELDS] for b in infos]}
                             for cfg, infos in self.blocks.items()]}

    @classmethod
    def from_record(cls, record: dict, raw: dict, path: str = "") -> "ExperimentSpec":
        """The experiment ``record`` wrote; SpecError if it is of a later version of unravel."""
        version = record.get("version")
        if version != RECORD_VERSION:
            raise SpecError(f"recorded by another version of unravel (record version {version!r}, this one reads "
                            f"{RECORD_VERSION})")
        s = record["studies"]
        studies = Studies(tuple(StudySpec(**{**d, "runs": tuple(d["runs"]), "plans": tuple(d.get("plans", ()))})
                                for d in s["studies"]),
                          **{**{k: v for k, v in s.items() if k != "studies"},
                             "exclude_blocks": tuple(s["exclude_blocks"]),
                             "evaluators": Evaluators.model_validate(s["evaluators"])})
        t = record["training"]
        training = TrainingSpec(tuple(Trial.from_dict(d) for d in t["trials"]),
                                Resources.model_validate(t["resources"]), t["max_failures"])
        blocks = {NetConfig.from_json(n["net_config"]):
                  tuple(BlockInfo(**dict(zip(n["block_fields"], b))) for b in n["blocks"])
                  for n in record["networks"]}
        return cls(record["name"], Data(**record["data"]), training, studies, raw, path,
                   tuple(Trial.from_dict(d) for d in record["models"]),
                   tuple(AbsentModel(**m) for m in record["absent_models"]), blocks)

"""Experiment specs: YAML in, a validated, frozen experiment out, before anything starts.

The document's shape, types, bounds and defaults are pydantic models (one home each; the same
models give ``unravel schema``). The rules that span sections (a study's k_max against its
networks' blocks, the labels a study names, the modes a network supports) are checked as the
runs are expanded. Every mistake is one line naming the field
(``training.runs[1].network: unknown network 'resnet21'``): pydantic's wording is turned into
the house's in one place, ``messages``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, Field, PrivateAttr, ValidationError, create_model,
                      model_validator)
from pydantic_core import PydanticCustomError

from workloads.data import DATASETS, STREAMED
from workloads.fields import STRICT, Amount, Between, Flag, Text, count
from workloads.models import NETWORKS, AdapterError, NetConfig, network_config
from workloads.models.registry import ADAPTED
from workloads.train.modes import MODES
from workloads.train.recipe import TrainConfig
from workloads.train.inference_rules import TEST_RULES

from orchestrator.experiment.messages import one_line, rule


class SpecError(ValueError):
    """A spec that cannot run; the message names the field and the problem."""


def _nonempty(what: str):
    def check(items: list) -> list:
        if not items:
            raise PydanticCustomError("empty", f"must list at least one {what}")
        return items
    return check


def _null_is_empty(value: Any) -> Any:
    """``single_deletion:`` with nothing after it means the study with its defaults."""
    return {} if value is None else value


class Section(BaseModel):
    model_config = STRICT


def _partial(config: type, exclude: set[str], name: str) -> type[BaseModel]:
    """The fields of a config dataclass a spec may set, with the dataclass's own types, bounds and
    defaults (so each lives in one place); ``model_dump(exclude_unset=True)`` gives what was set."""
    fields = {n: (info.annotation, info) for n, info in config.__pydantic_fields__.items() if n not in exclude}
    return create_model(name, __config__=STRICT, **fields)


# what the data section decides, never set by hand: channels, classes and size come from the data
NetOverrides = _partial(NetConfig, {"name", "in_channels", "num_classes", "image_size"}, "NetOverrides")
Recipe = _partial(TrainConfig, {"mode", "seed", "iterations"}, "Recipe")

NetworkName = Literal[tuple(sorted(NETWORKS))]
Mode = Literal[MODES]
TestRule = Literal[TEST_RULES]


def _check_name(name: str) -> str:
    if not name or len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name) or name in (".", ".."):
        raise PydanticCustomError("name", "must be 1 to 100 letters, digits, '-', '_' or '.' (it names the results "
                                          "folder), got {shown}", {"shown": repr(name[:40]) + "..." * (len(name) > 40)})
    return name


def _check_label(label: str) -> str:
    """A label names runs in folder names, tables and the report: plain characters, short enough for
    a file name once the variant, mode, seed and hash are added."""
    if not 1 <= len(label) <= 64 or not all(c.isalnum() or c in "-_." for c in label):
        raise PydanticCustomError("label", "must be 1 to 64 letters, digits, '-', '_' or '.' (it names the run's "
                                           "folders and table rows), got {shown}",
                                  {"shown": repr(label[:40]) + "..." * (len(label) > 40)})
    return label


Label = Annotated[Text, AfterValidator(_check_label)]

_IMAGE_FOLDER_KEYS = {"image_size", "resize", "num_classes", "workers"}
_TEXT_KEYS = {"tokenizer", "sequence_length", "column"}
_DATA_SHAPES = {"digits": (1, 10, 8), "cifar10": (3, 10, 32), "cifar100": (3, 100, 32)}


class DataSpec(Section):
    dataset: Literal[DATASETS] = "digits"
    root: Text = "data"
    download: Flag = False
    image_size: count(16, 4096) = 224              # imagenet: centre crop
    resize: count(16, 8192) | None = None          # imagenet: shorter side before the crop (default 256/224 of it)
    num_classes: count(2, 10**6) = 1000            # imagenet: class folders under val/
    workers: count(0, 256) = 0                     # imagenet: DataLoader processes per evaluator
    # text (root: a .txt or .parquet corpus): the tokenizer's folder (default: each model's own folder), the
    # tokens per sequence the model reads (each sequence predicts its next sequence_length tokens), and the
    # text column of a Parquet corpus
    tokenizer: Text | None = None
    sequence_length: count(2, 1_000_000) = 128
    column: Text = "text"
    _model_folders: dict[str, str] = PrivateAttr(default_factory=dict)   # text: run id -> its model folder

    @model_validator(mode="after")
    def _image_folder_settings(self) -> "DataSpec":
        if self.dataset != "text":
            for key in sorted(_TEXT_KEYS & self.model_fields_set):
                raise rule(key, f"applies only to dataset text, not {self.dataset}")
        else:
            for key in sorted((_IMAGE_FOLDER_KEYS | {"download"}) & self.model_fields_set):
                raise rule(key, "applies only to image datasets, not text")
            from orchestrator.location import is_uri
            if is_uri(self.root):
                raise rule("root", "a text corpus is read from a local file on every node, not from a URI; copy it "
                                   "to the nodes (or a shared disk) and name that path")
        if self.dataset not in STREAMED:
            for key in sorted(_IMAGE_FOLDER_KEYS & self.model_fields_set):
                raise rule(key, f"applies only to dataset imagenet, not {self.dataset}")
        elif self.download:
            raise rule("download", "ImageNet cannot be downloaded; put its val/ (and train/) folders under data.root")
        elif self.resize is not None and self.resize < self.image_size:
            raise rule("resize", f"must be at least data.image_size ({self.image_size}), got {self.resize}")
        return self

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

    @property
    def resolved_root(self) -> str:
        """The data folder as every process must see it (workers do not share the driver's cwd); a URI
        as it is (each node copies it: orchestrator.run.data_cache)."""
        from orchestrator.location import is_uri
        if is_uri(self.root):
            return self.root
        return str(Path(self.root).expanduser().resolve())

    def loader_options(self, run_id: str | None = None) -> dict:
        """Keyword arguments of ``workloads.data.load_dataset`` beyond name, root and download, for the run
        ``run_id`` (text: cut by that run's tokenizer; None: the first run's)."""
        if self.text:
            return {"tokenizer": self.tokenizer_of(run_id), "sequence_length": self.sequence_length,
                    "column": self.column}
        return {"image_size": self.image_size, "resize": self.resize, "workers": self.workers}

    @property
    def resolved_tokenizer(self) -> str:
        """data.tokenizer as every process must see it; "" when each model reads the text with its own."""
        return str(Path(self.tokenizer).expanduser().resolve()) if self.tokenizer else ""

    def tokenizer_of(self, run_id: str | None = None) -> str:
        """The folder whose tokenizer cuts the corpus for a run: data.tokenizer when the spec names one, else
        the run's own model folder, so that every model is scored on its own tokens (None: the first run's)."""
        if self.resolved_tokenizer:
            return self.resolved_tokenizer
        if run_id is None:
            return next(iter(self._model_folders.values()), "")
        return self._model_folders[run_id]

    def with_models(self, models: "tuple[Trial, ...]") -> "DataSpec":
        """This section knowing the model folder of each run (where a run's own tokenizer is)."""
        data = self.model_copy()
        data._model_folders = {m.run_id: str(Path(m.checkpoint).expanduser().resolve()) for m in models}
        return data


class Resources(Section):
    """What one Ray worker (a trial or an evaluator) asks of a node."""

    cpu: Amount = 1.0
    gpu: Amount = 0.0

    @model_validator(mode="after")
    def _some(self) -> "Resources":
        if self.cpu + self.gpu == 0:
            raise rule("", f"needs some cpu or gpu, got cpu={self.cpu:g}, gpu={self.gpu:g}")
        return self

    @property
    def threads(self) -> int:
        """Torch threads of a worker: its CPUs, or one to drive its GPU."""
        return max(1, int(self.cpu)) if self.gpu == 0 else 1


EvaluatorCount = count(1, 10_000)   # an alias: the field below is itself called count


class Evaluators(Resources):
    count: EvaluatorCount = 2

    @model_validator(mode="before")
    @classmethod
    def _gpu_evaluators_need_no_cpu(cls, raw: Any) -> Any:
        """A GPU evaluator only drives its GPU: unless asked, it reserves no CPU (Ray would keep one)."""
        if isinstance(raw, dict) and "cpu" not in raw:
            gpu = raw.get("gpu", 0)
            if isinstance(gpu, (int, float)) and not isinstance(gpu, bool) and gpu > 0:
                return {**raw, "cpu": 0.0}
        return raw


SEED_COUNT = Between(1, 1000)


def _seed_count(raw: Any) -> Any:
    """``seeds: 3`` means seeds 0, 1, 2."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return list(range(SEED_COUNT.check(raw)))
    return raw


def _distinct(seeds: list[int]) -> list[int]:
    if len(set(seeds)) != len(seeds):
        raise PydanticCustomError("repeated", "has repeated seeds {seeds}", {"seeds": seeds})
    return seeds


Seeds = Annotated[list[count(0, 2**31 - 1)], AfterValidator(_nonempty("seed (or be a count)")),
                  AfterValidator(_distinct), BeforeValidator(_seed_count, json_schema_input_type=int | list[int])]


def _all_means_every_run(raw: Any) -> Any:
    return None if raw is None or raw == "all" else raw


def _distinct_rules(rules: list[str]) -> list[str]:
    if len(set(rules)) != len(rules):
        raise PydanticCustomError("repeated", "has repeated rules {rules}", {"rules": rules})
    return rules


# labels or run ids of the runs a study uses; null or "all": every run it applies to
StudyRuns = Annotated[list[Text] | None, BeforeValidator(_all_means_every_run)]


class RunEntry(Section):
    """One network to train: each variant x mode x seed becomes a trial."""

    network: NetworkName
    label: Label | None = None                   # default: the network's name
    overrides: NetOverrides = NetOverrides()
    variants: Annotated[list[NetOverrides], AfterValidator(_nonempty("variant (leave it out for the default)"))] = \
        [NetOverrides()]
    modes: Annotated[list[Mode], AfterValidator(_nonempty("mode (leave it out for the default)"))] = ["normal"]
    active_blocks: count(1, 100_000) | None = None   # effective_paths: m of the n blocks per mini-batch
    # effective_paths: how the full network is evaluated (workloads.train.inference_rules); every rule gets its own
    # intact evaluation of the same checkpoint, and the studies use the first
    test_rules: Annotated[list[TestRule], AfterValidator(_nonempty("test rule")), AfterValidator(_distinct_rules),
                          Field(json_schema_extra={"uniqueItems": True})] = ["scaled"]

    @model_validator(mode="after")
    def _rules_need_effective_paths(self) -> "RunEntry":
        if "test_rules" in self.model_fields_set and "effective_paths" not in self.modes:
            raise rule("test_rules", "applies only to mode effective_paths")
        return self


class TrainingSection(Section):
    iterations: count(1, 10**8)
    seeds: Seeds = [0]
    resources: Resources = Resources()
    max_failures: count(0, 100) = 2
    recipe: Recipe = Recipe()
    runs: Annotated[list[RunEntry], AfterValidator(_nonempty("run"))]


def _blank_is_missing(path: str) -> str:
    if not path.strip():
        raise PydanticCustomError("blank", "must be the path of a checkpoint file")
    return path


class ModelEntry(Section):
    """A network trained elsewhere: a registered network name and the user's checkpoint file."""

    network: NetworkName
    label: Label | None = None
    checkpoint: Annotated[Text, AfterValidator(_blank_is_missing)]
    overrides: NetOverrides = NetOverrides()


class SingleDeletion(Section):
    runs: StudyRuns = None


class RandomDraws(SingleDeletion):
    k_max: count(1, 10**6) = 10                  # k = 1..k_max blocks deleted / pairs swapped
    draws: count(1, 10**6) = 10                  # draws per k


class Gradients(SingleDeletion):
    draws: count(1, 10**6) = 10                  # draws per path length k
    batch_size: count(1, 10**6) = 128            # training images per forward


class SpanDeletion(SingleDeletion):
    """Every span of 1..max_length consecutive layers deleted (the layer-pruning literature's grid)."""

    max_length: count(1, 10**6) = 4              # layers in the longest span


class Gates(SingleDeletion):
    """H: the gates of gated shortcuts on the test set; by default every run whose shortcut is gated."""


STUDIES = ("single_deletion", "random_deletion", "reorder", "gradients", "gates", "span_deletion")
GATED = ("exclusive_gating", "shortcut_gating")


@dataclass(frozen=True)
class StudySpec:
    """A study resolved against the spec's runs."""

    study: str
    runs: tuple[str, ...]        # run ids
    k_max: int = 0               # 0 where the study has no such setting (its defaults are in its section)
    draws: int = 0
    batch_size: int = 0
    max_length: int = 0


def _study(section: type[BaseModel]):
    return Annotated[section | None, BeforeValidator(_null_is_empty)]


class StudiesSpec(Section):
    """The studies: section: which studies, and the settings every evaluation shares."""

    single_deletion: _study(SingleDeletion) = None   # F3 / F8
    random_deletion: _study(RandomDraws) = None      # F5a
    reorder: _study(RandomDraws) = None              # F5b
    gradients: _study(Gradients) = None              # F6b
    gates: _study(Gates) = None                      # H
    span_deletion: _study(SpanDeletion) = None       # consecutive layers deleted together
    test_examples: count(1, 10**7) | None = None     # default: the whole test set
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    recalibrate_bn: Flag = False
    calibration_examples: count(1, 10**7) = 512
    exclude_blocks: tuple[count(0, 10**6), ...] = ()  # kept out of the random pools (F5a, F5b)
    evaluators: Evaluators = Evaluators()
    plans_per_batch: count(1, 10**6) = 64
    max_in_flight: count(1, 1000) = 2                # batches queued per evaluator
    _runs: dict[str, tuple[str, ...]] = PrivateAttr(default_factory=dict)   # study -> run ids, set by parse_spec

    @property
    def studies(self) -> tuple[StudySpec, ...]:
        resolved = []
        for name in STUDIES:
            section = getattr(self, name)
            if section is not None:
                resolved.append(StudySpec(name, self._runs.get(name, ()), getattr(section, "k_max", 0),
                                          getattr(section, "draws", 0), getattr(section, "batch_size", 0),
                                          getattr(section, "max_length", 0)))
        return tuple(resolved)

    def study(self, name: str) -> StudySpec | None:
        return next((s for s in self.studies if s.study == name), None)


class SpecDocument(Section):
    """A spec as written in YAML (``unravel schema`` prints its JSON schema)."""

    name: Annotated[Text, AfterValidator(_check_name)]
    data: Annotated[DataSpec, BeforeValidator(_null_is_empty)] = DataSpec()
    training: TrainingSection | None = None
    models: Annotated[list[ModelEntry], AfterValidator(_nonempty("network (network, checkpoint)"))] | None = None
    studies: Annotated[StudiesSpec, BeforeValidator(_null_is_empty)] = StudiesSpec()

    @model_validator(mode="after")
    def _something_to_study(self) -> "SpecDocument":
        if self.training is None and self.models is None:
            raise rule("training", "is required (or models:, to study networks trained elsewhere)")
        return self


def json_schema() -> dict:
    """The JSON schema of a spec, for editors that check YAML as it is typed."""
    schema = SpecDocument.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "unravel experiment spec"
    return schema


# -- the experiment: runs expanded, studies resolved, cross-section rules checked ----------------

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
    max_failures: int = 2


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    data: DataSpec
    training: TrainingSpec
    studies: StudiesSpec = field(default_factory=StudiesSpec)
    raw: dict = field(default_factory=dict, compare=False)
    path: str = ""
    models: tuple[Trial, ...] = ()   # imported from users' checkpoints, not trained here
    absent_models: tuple[tuple[int, str, str], ...] = ()   # (index, label, folder): parsed without model folders

    @property
    def runs(self) -> tuple[Trial, ...]:
        """Every run the studies may use: trained, then imported."""
        return self.training.trials + self.models

    def to_json(self) -> str:
        return json.dumps(self.raw, sort_keys=True)


def _fail(where: str, problem: str) -> None:
    raise SpecError(f"{where}: {problem}")


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:8]


def _safe_id(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)  # a safe folder name


def _net_config(network: str, overrides: dict, mode: str, data: DataSpec, where: str) -> NetConfig:
    channels, classes, size = data.shape
    fields = {**overrides, **({"stochastic_depth": True} if mode == "stochastic_depth" else {})}
    try:
        net = network_config(network, **{"in_channels": channels, "num_classes": classes, "image_size": size,
                                         **fields})
    except ValidationError as e:
        raise SpecError(one_line(e, NetConfig, where)) from None
    if net.arch == "timm":
        import timm  # only for a spec that names a timm network
        if not timm.is_model(net.timm_arch):
            _fail(f"{where}.overrides.timm_arch", f"timm has no model {net.timm_arch!r}")
    if net.arch in ADAPTED:  # a model its adapter cannot take apart is refused here, before anything runs
        try:
            _counts(net)
        except AdapterError as e:
            _fail(where, str(e))
    return net


class Counts(NamedTuple):
    """What bounds a network's studies: its blocks, its deletable blocks and same-shape pairs outside the
    excluded blocks, and its layers."""

    blocks: int
    deletable: int
    pairs: int
    layers: int


@lru_cache(maxsize=256)  # many runs share a network (seeds, modes), and spec and units both count it
def block_infos(cfg: NetConfig) -> tuple:
    """The network's blocks, from its meta-device skeleton (no memory, even for depth 1202)."""
    from workloads.models import skeleton
    return tuple(skeleton(cfg).block_infos())


@lru_cache(maxsize=256)
def _counts(cfg: NetConfig, exclude: tuple[int, ...] = ()) -> Counts:
    """The network's counts (its blocks outside ``exclude``)."""
    from workloads.surgery import deletion_pool, layer_units, swap_pairs
    infos = list(block_infos(cfg))
    return Counts(len(infos), len(deletion_pool(infos, exclude)), len(swap_pairs(infos, exclude)),
                  len(layer_units(infos)))


# a study's size setting and what bounds it in each run: (field, Counts field, what that counts)
_BOUNDS = {"random_deletion": ("k_max", "deletable", "deletable blocks"),
           "reorder": ("k_max", "pairs", "same-shape pairs to swap"),
           "span_deletion": ("max_length", "layers", "layers")}


def _trials(section: TrainingSection, data: DataSpec) -> TrainingSpec:
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
                net = _net_config(entry.network, {**overrides, **v}, mode, data,
                                  f"{where}.variants[{j}]" if v else where)
                if mode != "normal" and net.arch == "plain":
                    _fail(f"{where}.modes", f"mode {mode!r} needs a residual network, not {entry.network}")
                active = entry.active_blocks if entry.active_blocks is not None else recipe.get("active_blocks")
                if mode == "effective_paths" and active is not None and active > _counts(net).blocks:
                    _fail(f"{where}.active_blocks", f"must be between 1 and {_counts(net).blocks} (the network's "
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


def _imports(entries: list[ModelEntry], data: DataSpec,
             model_folders: bool = True) -> tuple[tuple[Trial, ...], tuple[tuple[int, str, str], ...]]:
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
        if language and not model_folders and not (Path(entry.checkpoint).expanduser() / "config.json").is_file():
            absent.append((i, label, entry.checkpoint))
            continue
        fields = {**overrides, **(_language_model(entry, i, data) if language else {})}
        net = _net_config(entry.network, fields, "normal", data, f"models[{i}]")
        setting = _safe_id(label)
        run_id = f"{setting}.pretrained." + _short_hash(net.to_json(), entry.checkpoint, data.dataset)
        models.append(Trial(run_id, setting, label, entry.network, json.dumps(overrides, sort_keys=True), "pretrained",
                            0, net, None, entry.checkpoint))
    return tuple(models), tuple(absent)


def _language_model(entry: ModelEntry, index: int, data: DataSpec) -> dict:
    """A language model's config from its folder's config.json (what the network is, and part of its run id),
    with the sequence length checked against the positions it takes."""
    folder = Path(entry.checkpoint).expanduser()
    try:
        text = (folder / "config.json").read_text(encoding="utf-8")
        config = json.loads(text)
    except OSError:
        what = "no such folder" if not folder.is_dir() else "no config.json in it"
        raise SpecError(f"models[{index}].checkpoint: {entry.checkpoint}: {what} (a Hugging Face model folder, as "
                        f"save_pretrained writes it)") from None
    except ValueError as e:
        raise SpecError(f"models[{index}].checkpoint: {folder / 'config.json'} is not valid JSON ({e})") from None
    from workloads.models.adapters.hf_loading import MODEL_TYPES, max_sequence_length, refuse_custom_code
    refuse_custom_code(folder, lambda problem: SpecError(f"models[{index}].checkpoint: {problem}"))
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        _fail(f"models[{index}].checkpoint", f"{folder} holds a model of type {kind!r}; the layers unravel "
                                             f"reproduces are those of {', '.join(MODEL_TYPES)}")
    longest = max_sequence_length(config)
    if data.sequence_length > longest:
        _fail("data.sequence_length", f"{data.sequence_length} is beyond the {longest} positions the model of "
                                      f"models[{index}] takes")
    vocabulary = config.get("vocab_size")
    return {"hf_config": json.dumps(config, sort_keys=True),
            **({"num_classes": vocabulary} if isinstance(vocabulary, int) and vocabulary > 0 else {})}


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


def _resolve_studies(studies: StudiesSpec, runs: tuple[Trial, ...], data: DataSpec,
                     absent: set[str] = frozenset()) -> StudiesSpec:
    """Each study's runs, checked against what the study needs of them (``absent``: labels of models
    left out because their folder is not here)."""
    exclude = studies.exclude_blocks
    if exclude and runs:
        most = max(_counts(t.net_config).blocks for t in runs)
        for i, b in enumerate(exclude):
            if b >= most:
                _fail(f"studies.exclude_blocks[{i}]", f"block {b} does not exist (the largest network has {most} "
                                                      f"blocks, numbered from 0)")
    if studies.recalibrate_bn and data.streamed:
        _fail("studies.recalibrate_bn", f"is not supported with dataset {data.dataset}: each plan would need its own "
                                        f"pass over the images on disk")
    resolved: dict[str, tuple[str, ...]] = {}
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
                limit = getattr(_counts(t.net_config, tuple(exclude)), bound)
                if getattr(section, setting) > limit:
                    _fail(f"{where}.{setting}", f"{setting}={getattr(section, setting)} is larger than the {limit} "
                                                f"{what} of run {t.label!r}")
        if name == "gradients":
            for t in chosen:
                if t.net_config.arch == "plain":
                    _fail(f"{where}.runs", f"run {t.label!r} is a plain network: it has no paths to choose")
        if name == "gates":
            chosen = _gated(chosen, section.runs, where)
        resolved[name] = tuple(t.run_id for t in chosen)
    studies = studies.model_copy()
    studies._runs = resolved
    return studies


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
    """A spec document (parsed YAML) as a validated experiment; SpecError with one line if not.
    ``model_folders=False`` (a plan, which reads no files) leaves out a language model whose folder
    is not here instead of refusing it (``absent_models``)."""
    if not isinstance(raw, dict):
        _fail("spec", f"must be a mapping of sections (name, data, training, models, studies), "
                      f"got {type(raw).__name__}")
    try:
        doc = SpecDocument.model_validate(raw)
    except ValidationError as e:
        raise SpecError(one_line(e, SpecDocument)) from None
    data = doc.data
    if data.text and data.tokenizer is None and not doc.models:
        _fail("data.tokenizer", "is required with dataset text when no model folder under models: holds one")
    training = _trials(doc.training, data) if doc.training is not None else TrainingSpec()
    models, absent = _imports(doc.models, data, model_folders) if doc.models is not None else ((), ())
    data = data.with_models(models) if data.text else data
    _no_twins(training.trials + models, "models", "give them different labels")
    studies = _resolve_studies(doc.studies, training.trials + models, data, {label for _, label, _ in absent})
    return ExperimentSpec(doc.name, data, training, studies, raw=raw, path=path, models=models,
                          absent_models=absent)


def load_spec(path: str | Path, model_folders: bool = True) -> ExperimentSpec:
    """Read and validate a YAML spec (safe loader); raises SpecError with a one-line message.
    ``model_folders``: as parse_spec's."""
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
    return parse_spec(raw, str(p), model_folders)


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

"""The spec document: the YAML's sections, their types, bounds and defaults, and the rules within a section.

Each section is a pydantic model (one home per default and bound; the same models give ``unravel schema``).
A section is checked alone here; the rules that span sections (a study's k_max against its networks'
blocks, the labels a study names) are checked as the experiment is resolved (``spec.parse_spec``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, create_model, model_validator
from pydantic_core import PydanticCustomError

from workloads.data import STREAMED, DataConfig
from workloads.fields import STRICT, Amount, Between, Flag, Text, count
from workloads.models import NETWORKS, NetConfig
from workloads.tasks import TaskConfig
from workloads.train.modes import MODES
from workloads.train.recipe import TrainConfig
from workloads.train.inference_rules import TEST_RULES

from orchestrator.experiment.messages import SpecError, rule
from orchestrator.location import is_uri


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


def _partial(config: type, exclude: set[str], name: str, base: type[BaseModel] = Section) -> type[BaseModel]:
    """The fields of a config dataclass a spec may set, with the dataclass's own types, bounds and
    defaults (so each lives in one place), on ``base`` (its rules); ``model_dump(exclude_unset=True)``
    gives what was set."""
    fields = {n: (info.annotation, info) for n, info in config.__pydantic_fields__.items() if n not in exclude}
    return create_model(name, __base__=base, **fields)


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


class _DataRules(Section):
    """The rules between the data section's fields (the fields are DataConfig's: DataSpec below)."""

    @model_validator(mode="after")
    def _image_folder_settings(self) -> "_DataRules":
        if self.dataset != "text":
            for key in sorted(_TEXT_KEYS & self.model_fields_set):
                raise rule(key, f"applies only to dataset text, not {self.dataset}")
        else:
            for key in sorted((_IMAGE_FOLDER_KEYS | {"download"}) & self.model_fields_set):
                raise rule(key, "applies only to image datasets, not text")
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


DataSpec = _partial(DataConfig, set(), "DataSpec", _DataRules)


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


class Proxies(SingleDeletion):
    """The layer-pruning field's one-forward importance scores (BI, relative magnitude, cosine, angular distance),
    to be judged against the real deletions; one intact forward per run."""

    # text: the last position of each sequence (Gromov et al.) or every position; images read pooled features
    positions: Literal["last", "all"] = "last"


class Shares(SingleDeletion):
    """Each unit's share of the damage (Shapley values by permutation sampling): every prefix of a permutation
    of the deletion pool deleted, for each of ``permutations`` seeded permutations."""

    permutations: count(1, 10**6) = 20


# the plans a tasks study can score: each named study's units on the study's runs (intact: the whole network)
PLAN_STUDIES = ("intact", "single_deletion", "span_deletion", "random_deletion", "reorder")
DEFAULT_PLANS = ("intact", "single_deletion", "span_deletion", "random_deletion")   # those the spec has


def _distinct_plans(plans: list[str]) -> list[str]:
    if len(set(plans)) != len(plans):
        raise PydanticCustomError("repeated", "has repeated plans {plans}", {"plans": plans})
    return plans


class Tasks(_partial(TaskConfig, set(), "TaskFields", SingleDeletion)):
    """lm-evaluation-harness tasks scored on the plans of other studies (the fields are
    ``workloads.tasks.TaskConfig``'s)."""

    # default: intact and the spec's single_deletion, span_deletion and random_deletion units
    plans: Annotated[list[Literal[PLAN_STUDIES]], AfterValidator(_nonempty("plan study")),
                     AfterValidator(_distinct_plans), Field(json_schema_extra={"uniqueItems": True})] | None = None

    @model_validator(mode="after")
    def _distinct_tasks(self) -> "Tasks":
        if len(set(self.names)) != len(self.names):
            raise rule("names", f"has repeated tasks {list(self.names)}")
        return self

    def task_config(self) -> TaskConfig:
        """The section less its plans and runs: what lm-eval is asked."""
        return TaskConfig(**{n: getattr(self, n) for n in TaskConfig.__pydantic_fields__})


# resolved in this order: tasks last, as it scores the units of the studies before it
STUDIES = ("single_deletion", "random_deletion", "reorder", "gradients", "gates", "span_deletion", "proxies", "shares",
           "tasks")
GATED = ("exclusive_gating", "shortcut_gating")



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
    proxies: _study(Proxies) = None                  # one-forward importance scores of units and spans
    shares: _study(Shares) = None                    # every prefix of seeded permutations of the deletion pool
    tasks: _study(Tasks) = None                      # lm-evaluation-harness tasks on other studies' plans
    test_examples: count(1, 10**7) | None = None     # default: the whole test set
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    recalibrate_bn: Flag = False
    calibration_examples: count(1, 10**7) = 512
    exclude_blocks: tuple[count(0, 10**6), ...] = ()  # kept out of the random pools (F5a, F5b)
    evaluators: Evaluators = Evaluators()
    plans_per_batch: count(1, 10**6) = 64
    max_in_flight: count(1, 1000) = 2                # batches queued per evaluator



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


def read_document(path: str | Path) -> dict:
    """A YAML spec file as a mapping of sections (safe loader, a key given twice refused); SpecError with a
    one-line message if it is none."""
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
    return raw


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

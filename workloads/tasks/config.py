"""What a tasks study asks lm-evaluation-harness: the tasks, where the user's own task YAMLs are, and the
settings lm-eval's ``simple_evaluate`` would take (its defaults are kept, so a score here is the score its CLI
gives).

One home per default and bound: the spec's ``tasks:`` study takes its fields from here.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field
from pydantic.dataclasses import dataclass

from workloads.fields import FORBID, JsonConfig, Text, count


class TaskError(ValueError):
    """A task that cannot be scored here (unknown, reaching a hub, generating text, a YAML that does not parse,
    a tokenizer that is not the model's); the message is one line naming the task."""


@dataclass(frozen=True, config=FORBID)
class TaskConfig(JsonConfig):
    _noun = "tasks"

    names: Annotated[tuple[Text, ...], Field(min_length=1, max_length=1000)]   # lm-eval task, group or tag names
    include_path: Text | None = None             # a folder of the user's own task YAMLs
    limit: count(1, 10**9) | None = None         # documents per task (lm-eval's limit); None: all
    num_fewshot: count(0, 1000) | None = None    # None: each task's own
    fewshot_seed: count(0, 2**32 - 1) = 1234     # lm-eval's default fewshot_random_seed
    bootstrap_iters: count(0, 10**7) = 100_000   # lm-eval's default, for the stderr of non-mean metrics

"""What a dataset is read as: its name, where its files are, and how they are cut into examples.

One home per default and bound: the spec's data: section takes its fields from here (orchestrator's
``experiment.document``), and the loaders read it whole (``load_dataset``).
"""
from __future__ import annotations

from typing import Literal

from pydantic.dataclasses import dataclass

from workloads.fields import FORBID, Flag, JsonConfig, Text, count

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "text")
STREAMED = ("imagenet",)   # evaluated from disk in chunks; not trainable here


@dataclass(frozen=True, config=FORBID)
class DataConfig(JsonConfig):
    _noun = "data"

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

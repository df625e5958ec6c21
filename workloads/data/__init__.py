"""Datasets: CIFAR-10/100 (torchvision) and the bundled digits as device-resident tensors;
ImageNet-style folders streamed from disk; a local text corpus as token sequences (text.py).

Each loader is imported when its dataset is asked for: torchvision and scikit-learn cost a
second or more each to import, paid by every Ray worker that would not use them otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from workloads.data.augment import augment
from workloads.data.dataset import DataNotFound, TensorDataset

if TYPE_CHECKING:
    from workloads.data.imagefolder import StreamedImageFolder

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "text")
TEXT_DATASETS = ("text",)   # token sequences for language models (text.py)
STREAMED = ("imagenet",)   # evaluated from disk in chunks; not trainable here
# (training images, test images, augmentation) of each resident dataset, as its loader makes it: known
# without the files, so `unravel plan` counts with them where the data is not present
SPLITS = {"digits": (1347, 450, "shift1"), "cifar10": (50_000, 10_000, "cifar"), "cifar100": (50_000, 10_000, "cifar")}


def load_dataset(name: str, root: str | Path = "data", download: bool = False, *, image_size: int = 224,
                 resize: int | None = None, workers: int = 0, tokenizer: str | Path | None = None,
                 sequence_length: int | None = None, column: str = "text") -> TensorDataset | StreamedImageFolder:
    """A dataset by name: ``digits`` needs nothing on disk; CIFAR reads torchvision's files under root;
    ``imagenet`` reads an ImageFolder tree (root/val, root/train) lazily; ``text`` tokenises the corpus file
    at root (.txt, or a .parquet ``column``) with the tokenizer in the folder ``tokenizer`` into sequences of
    ``sequence_length`` tokens."""
    if name == "digits":
        from workloads.data.digits import load_digits
        return load_digits()
    if name in ("cifar10", "cifar100"):
        from workloads.data.cifar import load_cifar
        return load_cifar(root, name, download)
    if name == "imagenet":
        from workloads.data.imagefolder import StreamedImageFolder
        return StreamedImageFolder(root, image_size, resize, workers)
    if name == "text":
        from workloads.data.text import TextDataError, load_text_corpus
        if tokenizer is None or sequence_length is None:
            raise TextDataError("dataset 'text' needs tokenizer (a folder holding the model's tokenizer) and "
                                "sequence_length")
        return load_text_corpus(root, tokenizer, sequence_length, column=column)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS + TEXT_DATASETS)}")


_LAZY = {"load_cifar": ".cifar", "load_digits": ".digits", "StreamedImageFolder": ".imagefolder",
         "load_text_corpus": ".text"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "SPLITS", "STREAMED", "TEXT_DATASETS", "DataNotFound", "StreamedImageFolder", "TensorDataset",
           "augment", "load_cifar", "load_dataset", "load_digits", "load_text_corpus"]

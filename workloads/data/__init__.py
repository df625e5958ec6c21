"""Datasets: CIFAR-10/100 (torchvision) and the bundled digits as device-resident tensors;
ImageNet-style folders streamed from disk; a local text corpus as token sequences (text.py).

Each loader is imported when its dataset is asked for: torchvision and scikit-learn cost a
second or more each to import, paid by every Ray worker that would not use them otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from workloads.data.augment import augment
from workloads.data.config import DATASETS, STREAMED, DataConfig
from workloads.data.dataset import DataNotFound, TensorDataset

if TYPE_CHECKING:
    from workloads.data.imagefolder import StreamedImageFolder

# (training images, test images, augmentation) of each resident dataset, as its loader makes it: known
# without the files, so `unravel plan` counts with them where the data is not present
SPLITS = {"digits": (1347, 450, "shift1"), "cifar10": (50_000, 10_000, "cifar"), "cifar100": (50_000, 10_000, "cifar")}


def load_dataset(config: DataConfig | str, root: str | Path | None = None,
                 **settings) -> TensorDataset | StreamedImageFolder:
    """A dataset by its config, or by name with ``root`` and any other field of DataConfig (the rest its
    defaults): ``digits`` needs nothing on disk; CIFAR reads torchvision's files under root; ``imagenet`` reads
    an ImageFolder tree (root/val, root/train) lazily; ``text`` tokenises the corpus file at root (.txt, or a
    .parquet ``column``) with the tokenizer in the folder ``tokenizer`` into sequences of ``sequence_length``
    tokens."""
    if isinstance(config, str):
        if config not in DATASETS:
            raise ValueError(f"unknown dataset {config!r}; known: {', '.join(DATASETS)}")
        given = {"dataset": config, **({"root": root} if root is not None else {}), **settings}
        config = DataConfig(**{k: str(v) if isinstance(v, Path) else v for k, v in given.items()})
    name = config.dataset
    if name == "digits":
        from workloads.data.digits import load_digits
        return load_digits()
    if name in ("cifar10", "cifar100"):
        from workloads.data.cifar import load_cifar
        return load_cifar(config.root, name, config.download)
    if name == "imagenet":
        from workloads.data.imagefolder import StreamedImageFolder
        return StreamedImageFolder(config.root, config.image_size, config.resize, config.workers)
    from workloads.data.text import TextDataError, load_text_corpus
    if config.tokenizer is None:
        raise TextDataError("dataset 'text' needs tokenizer (a folder holding the model's tokenizer)")
    return load_text_corpus(config.root, config.tokenizer, config.sequence_length, column=config.column)


_LAZY = {"load_cifar": ".cifar", "load_digits": ".digits", "StreamedImageFolder": ".imagefolder",
         "load_text_corpus": ".text"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "DataConfig", "SPLITS", "STREAMED", "DataNotFound", "StreamedImageFolder", "TensorDataset",
           "augment", "load_cifar", "load_dataset", "load_digits", "load_text_corpus"]

"""Datasets: CIFAR-10/100 (torchvision) and the bundled digits as device-resident tensors;
ImageNet-style folders streamed from disk."""
from __future__ import annotations

from pathlib import Path

from .augment import augment
from .cifar import load_cifar
from .dataset import DataNotFound, TensorDataset
from .digits import load_digits
from .imagefolder import StreamedImageFolder

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
STREAMED = ("imagenet",)   # evaluated from disk in chunks; not trainable here


def load_dataset(name: str, root: str | Path = "data", download: bool = False, *, image_size: int = 224,
                 resize: int | None = None, workers: int = 0) -> TensorDataset | StreamedImageFolder:
    """A dataset by name: ``digits`` needs nothing on disk; CIFAR reads torchvision's files under root;
    ``imagenet`` reads an ImageFolder tree (root/val, root/train) lazily."""
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, name, download)
    if name == "imagenet":
        return StreamedImageFolder(root, image_size, resize, workers)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "STREAMED", "DataNotFound", "StreamedImageFolder", "TensorDataset", "augment", "load_cifar",
           "load_dataset", "load_digits"]

"""Datasets as device-resident tensors: CIFAR-10/100 (torchvision) and the bundled digits."""
from __future__ import annotations

from pathlib import Path

from .augment import augment
from .cifar import load_cifar
from .dataset import DataNotFound, TensorDataset
from .digits import load_digits

DATASETS = ("digits", "cifar10", "cifar100")


def load_dataset(name: str, root: str | Path = "data", download: bool = False) -> TensorDataset:
    """A dataset by name: ``digits`` needs nothing on disk; CIFAR reads torchvision's files under root."""
    if name == "digits":
        return load_digits()
    if name in ("cifar10", "cifar100"):
        return load_cifar(root, name, download)
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DataNotFound", "TensorDataset", "augment", "load_cifar", "load_dataset", "load_digits"]

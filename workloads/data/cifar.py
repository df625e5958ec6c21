"""CIFAR-10 / CIFAR-100 through torchvision's own dataset classes, held as tensors.

Read from ``root`` where torchvision's files already are; downloaded there only when
asked (``download=True``), on a machine with internet.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision

from workloads.data.dataset import DataNotFound, TensorDataset, normalise

_CLASSES = {"cifar10": (torchvision.datasets.CIFAR10, 10, "CIFAR-10"),
            "cifar100": (torchvision.datasets.CIFAR100, 100, "CIFAR-100")}
# dataset -> (its title, the folder under root that torchvision's class reads): what a check that the files are
# there, or a digest of them, looks at without loading them
CIFAR_FOLDERS = {name: (title, cls.base_folder) for name, (cls, _, title) in _CLASSES.items()}


def load_cifar(root: str | Path, name: str = "cifar10", download: bool = False) -> TensorDataset:
    if name not in _CLASSES:
        raise ValueError(f"dataset must be one of {', '.join(_CLASSES)}, got {name!r}")
    cls, num_classes, title = _CLASSES[name]
    root = Path(root).expanduser()
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
        raise DataNotFound(f"{title} not found in {root} ({e}); put torchvision's CIFAR files there, "
                           f"or set data.download: true (CLI: --download) on a machine with internet") from None

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).float().div_(255.0)
        return x, torch.tensor(ds.targets, dtype=torch.long)

    (x_train, y_train), (x_test, y_test) = tensors(train), tensors(test)
    x_train, x_test = normalise(x_train, x_test)
    return TensorDataset(name, x_train.contiguous(), y_train, x_test.contiguous(), y_test, num_classes, "cifar")

"""ImageNet-style folders (``<root>/val/<class>/*.JPEG``, optional ``<root>/train``), streamed.

ImageNet's 50,000 validation images do not fit in memory as tensors, so unlike CIFAR and
digits they are decoded chunk by chunk through torchvision's ``ImageFolder`` and a
``DataLoader``, with torchvision's standard evaluation transform (resize, centre crop,
ImageNet mean/std). A test subset is a fixed random sample, not the first classes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms
from torchvision.datasets.folder import IMG_EXTENSIONS

from workloads.data.dataset import DataNotFound

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SUBSET_SEED = 0
# images decoded per step of the test set: a chunk is what the lesion engine evaluates every plan of a batch on
# before the next is decoded, so decoding is shared by the batch; 256 images of 224 px are 150 MB as float32
DECODED_PER_STEP = 256


def class_folders(split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir()) if split.is_dir() else []


def empty_class(split: Path) -> str | None:
    """The first class folder without an image file (torchvision's ImageFolder refuses one), or None."""
    for name in class_folders(split):
        with os.scandir(split / name) as entries:
            if not any(e.name.lower().endswith(IMG_EXTENSIONS) for e in entries):
                return name
    return None


class StreamedImageFolder:
    """Test images streamed in chunks; training images read by index (gradient batches)."""

    in_channels = 3
    streamed = True

    def __init__(self, root: str | Path, image_size: int = 224, resize: int | None = None, workers: int = 0):
        root = Path(root).expanduser()
        if not class_folders(root / "val"):
            raise DataNotFound(f"no ImageNet-style validation folder in {root} (expected {root / 'val'}/<class>/"
                               f"<image>); point data.root at the folder that holds val/ (and train/)")
        self.name = "imagenet"
        self.image_size = image_size
        self.workers = workers
        transform = transforms.Compose([
            transforms.Resize(resize or round(image_size * 256 / 224)), transforms.CenterCrop(image_size),
            transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.transform = transform
        self.root = root
        self.test = datasets.ImageFolder(str(root / "val"), transform=transform)
        self.num_classes = len(self.test.classes)
        self._train = None  # listed on first use: ImageNet's train/ holds 1.28M files

    @property
    def train(self) -> datasets.ImageFolder | None:
        folder = self.root / "train"
        if self._train is None and class_folders(folder):
            self._train = datasets.ImageFolder(str(folder), transform=self.transform)
            if self._train.classes != self.test.classes:
                raise DataNotFound(f"{folder} and {self.root / 'val'} hold different class folders")
        return self._train

    def test_size(self, n: int | None = None) -> int:
        return min(n or len(self.test), len(self.test))

    def test_indices(self, n: int | None = None) -> list[int]:
        """A fixed random sample of n validation images (val is sorted by class)."""
        if n is None or n >= len(self.test):
            return list(range(len(self.test)))
        g = torch.Generator().manual_seed(SUBSET_SEED)
        return sorted(torch.randperm(len(self.test), generator=g)[:n].tolist())

    def test_chunks(self, n: int | None,
                    chunk: int = DECODED_PER_STEP) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(Subset(self.test, self.test_indices(n)), batch_size=chunk, shuffle=False,
                            num_workers=self.workers, persistent_workers=False)
        yield from loader

    def train_size(self) -> int:
        if self.train is None:
            raise DataNotFound("no train/ folder beside val/: the gradients study draws training images")
        return len(self.train)

    def train_examples(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        self.train_size()
        pairs = [self.train[int(i)] for i in indices]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)

"""A dataset as four tensors, meant to live on the training or evaluation device."""
from __future__ import annotations

from dataclasses import dataclass

import torch


class DataNotFound(FileNotFoundError):
    """A dataset is not on disk where the spec says, and downloading was not asked for."""


@dataclass
class TensorDataset:
    name: str
    train_images: torch.Tensor   # [N, C, H, W] float32, normalised per channel; text: token ids [N, L] int64
    train_labels: torch.Tensor   # [N] int64; text: the next tokens [N, L] int64
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    augmentation: str            # "cifar" (pad 4, crop, flip) | "shift1" (pad 1, crop) | "none"
    streamed = False             # resident: the evaluator holds the whole test set on its device

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def to(self, device: torch.device | str) -> "TensorDataset":
        return TensorDataset(self.name, self.train_images.to(device), self.train_labels.to(device),
                             self.test_images.to(device), self.test_labels.to(device), self.num_classes,
                             self.augmentation)

    def test_size(self, n: int | None = None) -> int:
        return min(n or len(self.test_labels), len(self.test_labels))

    def test_chunks(self, n: int | None, chunk: int | None = None):
        """The first n test examples as one resident chunk (the engine splits it further)."""
        yield self.test_images[:n], self.test_labels[:n]

    def train_size(self) -> int:
        return len(self.train_labels)

    def train_examples(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.train_images[idx], self.train_labels[idx]


def normalise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean/std normalisation with statistics of the training set."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std

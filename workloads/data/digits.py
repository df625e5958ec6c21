"""scikit-learn's bundled digits: 1,797 real 8x8 grey images, the embedded default.

No download and no internet: the whole pipeline runs on a laptop. Split train/test with a
fixed seed (stratified), 1 channel, 10 classes, augmented by 1-pixel shifts.
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import TensorDataset, normalise


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits as _sklearn_digits  # imported here: a second at import time
    from sklearn.model_selection import train_test_split
    bunch = _sklearn_digits()
    images = bunch.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(images, bunch.target, test_size=test_fraction,
                                                        random_state=seed, stratify=bunch.target)
    train, test = normalise(torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(x_test).unsqueeze(1))
    return TensorDataset("digits", train.contiguous(), torch.from_numpy(y_train).long(), test.contiguous(),
                         torch.from_numpy(y_test).long(), 10, "shift1")

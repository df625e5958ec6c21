"""scikit-learn's bundled digits: 1,797 real 8x8 grey images, the embedded default.

No download and no internet: the whole pipeline runs on a laptop. Split train/test with a
fixed seed (stratified), 1 channel, 10 classes, augmented by 1-pixel shifts. Every Ray worker
(trial, evaluator) loads it, and importing scikit-learn costs a second: the split tensors are
kept in the user's cache folder, keyed by scikit-learn's version, the fraction and the seed.
"""
from __future__ import annotations

import os
import uuid
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from workloads.data.dataset import TensorDataset, normalise


def _cache_file(test_fraction: float, seed: int) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "unravel" / f"digits-sklearn{version('scikit-learn')}-{test_fraction:g}-{seed}.pt"


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> TensorDataset:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"digits test_fraction must be in (0, 1), got {test_fraction}")
    cache = _cache_file(test_fraction, seed)
    try:
        t = torch.load(cache, weights_only=True)
        return TensorDataset("digits", t["train_images"], t["train_labels"], t["test_images"], t["test_labels"], 10,
                             "shift1")
    except Exception:  # noqa: BLE001 - absent, or damaged: made again below
        pass
    data = _split(test_fraction, seed)
    tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}.tmp")
    try:  # a temporary name, then a rename: workers starting together never read half a file
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: getattr(data, k) for k in ("train_images", "train_labels", "test_images", "test_labels")},
                   tmp)
        os.replace(tmp, cache)
    except (OSError, RuntimeError):
        tmp.unlink(missing_ok=True)  # a read-only or full home: every load splits anew
    return data


def _split(test_fraction: float, seed: int) -> TensorDataset:
    from sklearn.datasets import load_digits as _sklearn_digits  # imported here: a second at import time
    from sklearn.model_selection import train_test_split
    bunch = _sklearn_digits()
    images = bunch.images.astype(np.float32) / 16.0
    x_train, x_test, y_train, y_test = train_test_split(images, bunch.target, test_size=test_fraction,
                                                        random_state=seed, stratify=bunch.target)
    train, test = normalise(torch.from_numpy(x_train).unsqueeze(1), torch.from_numpy(x_test).unsqueeze(1))
    return TensorDataset("digits", train.contiguous(), torch.from_numpy(y_train).long(), test.contiguous(),
                         torch.from_numpy(y_test).long(), 10, "shift1")

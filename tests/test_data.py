import pickle

import numpy as np
import pytest
import torch

from workloads.data import DataNotFound, augment, load_dataset
from workloads.data.augment import random_crop


def test_digits_split_is_fixed_and_normalised():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_images.shape == (1347, 1, 8, 8) and a.test_images.shape == (450, 1, 8, 8)
    assert torch.equal(a.test_labels, b.test_labels) and torch.equal(a.train_images, b.train_images)
    assert a.train_images.mean().abs() < 1e-5 and (a.train_images.std() - 1).abs() < 1e-3
    assert sorted(a.test_labels.unique().tolist()) == list(range(10))
    assert a.augmentation == "shift1" and a.in_channels == 1 and a.num_classes == 10


@pytest.mark.slow
def test_digits_split_is_cached_and_the_cache_is_the_split(tmp_path, monkeypatch):
    """Workers load digits from the cache without importing scikit-learn; a damaged cache is made again."""
    import subprocess
    import sys
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fresh = load_dataset("digits")  # split by scikit-learn, then cached
    (cached,) = list((tmp_path / "unravel").glob("digits-*.pt"))
    probe = ("import sys; from workloads.data import load_dataset; d = load_dataset('digits'); "
             "print('sklearn' in sys.modules, float(d.test_images.sum()), d.test_labels.tolist() == "
             f"{fresh.test_labels.tolist()})")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "XDG_CACHE_HOME": str(tmp_path)}).stdout.split()
    assert out[0] == "False" and float(out[1]) == pytest.approx(float(fresh.test_images.sum())) and out[2] == "True"
    cached.write_bytes(b"damaged")
    again = load_dataset("digits")
    assert torch.equal(again.train_images, fresh.train_images) and cached.stat().st_size > 1000


def test_cifar_through_torchvisions_real_loader(fake_cifar):
    data = load_dataset("cifar10", fake_cifar)
    assert data.train_images.shape == (30, 3, 32, 32) and data.test_images.shape == (10, 3, 32, 32)
    assert data.augmentation == "cifar" and data.num_classes == 10
    # the pixels are the ones written to disk, normalised per channel
    with open(fake_cifar / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    first = torch.from_numpy(raw["data"][0].reshape(3, 32, 32).astype(np.float32) / 255)
    corr = np.corrcoef(first.flatten(), data.test_images[0].flatten())[0, 1]
    assert corr > 0.99
    assert data.test_labels.tolist() == raw["labels"]


def test_missing_cifar_names_the_folder_and_the_flag(tmp_path):
    with pytest.raises(DataNotFound, match=rf"CIFAR-10 not found in {tmp_path}.*download"):
        load_dataset("cifar10", tmp_path)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_random_crop_shifts_whole_images():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop(x, 1, g)
    assert out.shape == x.shape
    for i in range(2):  # each output is a shifted window of the zero-padded input
        padded = torch.nn.functional.pad(x[i, 0], (1, 1, 1, 1))
        windows = [padded[r:r + 4, c:c + 4] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[i, 0], w) for w in windows)


def _windows_matched(out: torch.Tensor, source: torch.Tensor, pad: int) -> torch.Tensor:
    """Per image: is ``out`` one of the shifted windows of ``source`` zero-padded by ``pad``?"""
    h, w = source.shape[-2:]
    padded = torch.nn.functional.pad(source, (pad, pad, pad, pad))
    hit = torch.zeros(len(out), dtype=torch.bool)
    for r in range(2 * pad + 1):
        for c in range(2 * pad + 1):
            hit |= (out == padded[..., r:r + h, c:c + w]).flatten(1).all(1)
    return hit


@pytest.mark.parametrize("policy, pad, flips", [("cifar", 4, True), ("shift1", 1, False)])
def test_augmentation_is_seeded_and_flips_only_for_cifar(policy, pad, flips):
    x = torch.randn(128, 3, 16, 16)
    a = augment(x, policy, torch.Generator().manual_seed(1))
    assert torch.equal(a, augment(x, policy, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, augment(x, policy, torch.Generator().manual_seed(2)))
    flipped = []
    for seed in range(2):
        out = augment(x, policy, torch.Generator().manual_seed(seed))
        # random pixels: a window of the image and one of its mirror image never coincide,
        # so each output is exactly one of the two
        plain, mirrored = _windows_matched(out, x, pad), _windows_matched(out, x.flip(3), pad)
        assert (plain ^ mirrored).all()
        flipped += mirrored.tolist()
    if flips:
        assert 0.35 < sum(flipped) / len(flipped) < 0.65  # 256 fair coins
    else:
        assert not any(flipped)


def test_unknown_augmentation_is_refused():
    with pytest.raises(ValueError, match="augmentation"):
        augment(torch.randn(2, 3, 8, 8), "mixup", torch.Generator())

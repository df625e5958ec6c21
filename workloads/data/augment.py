"""The papers' augmentation on whole batches, on the device: no per-image Python.

CIFAR (He et al. 2015): 4-pixel zero padding, a random 32x32 crop, a random horizontal
flip. Digits: a random shift of up to one pixel (pad 1, crop), no flip.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = {"cifar": (4, True), "shift1": (1, False), "none": (0, False)}


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``pad`` and crop back to the original size at a random offset per image."""
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=generator.device).to(x.device)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    if policy not in POLICIES:
        raise ValueError(f"augmentation must be one of {', '.join(POLICIES)}, got {policy!r}")
    pad, flip = POLICIES[policy]
    x = random_crop(x, pad, generator)
    return random_flip(x, generator) if flip else x

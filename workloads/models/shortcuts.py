"""Shortcut connections of He et al. (2016), "Identity Mappings in Deep Residual Networks".

Two concerns live here: the *projection* a shortcut applies when a block changes shape
(option A: stride-2 subsample + zero channel padding; option B: 1x1 conv + BN), and the
*variant* that decides how shortcut and residual branch are mixed (Fig. 2 of the paper:
constant scaling, exclusive gating, shortcut-only gating, 1x1 conv shortcut, dropout).
All are modules, never lambdas, so networks pickle and state_dicts round-trip.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUT_VARIANTS = ("identity", "scaling", "exclusive_gating", "shortcut_gating", "conv", "dropout")


class SubsamplePad(nn.Module):
    """Option A: parameter-free; keeps every stride-th pixel, pads new channels with zeros."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            # zero channels split around the originals, as in the reference Torch code
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x


def projection(in_channels: int, out_channels: int, stride: int, option: str) -> nn.Module:
    """The shortcut's own map: identity for same-shape blocks, option A or B otherwise."""
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    if option == "A":
        return SubsamplePad(in_channels, out_channels, stride)
    if option == "B":
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                             nn.BatchNorm2d(out_channels))
    raise ValueError(f"shortcut option must be 'A' or 'B', got {option!r}")


class Gate(nn.Module):
    """g(x) = sigmoid(1x1 conv(x) + b), one gate per output channel and pixel."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bias_init: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride, bias=True)
        nn.init.constant_(self.conv.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))

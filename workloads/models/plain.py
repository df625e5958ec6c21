"""The plain comparison network of Veit et al. (2016): conv-BN-ReLU layers, no shortcuts.

Decision (PAPERS.md): 15 conv layers in 3 stages of 5, widths 64/128/256. The first layer
of each stage changes shape and cannot be deleted; the other 12 can, and deleting one
makes the layer the identity. Veit et al. report chance error (~90%) for any deletion.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.blocks import Block, BlockNetwork
from workloads.models.config import NetConfig


class PlainLayer(Block):
    """conv-BN-ReLU with no shortcut: deleting it (when shapes allow) passes x through."""

    residual = False

    def __init__(self, in_channels: int, out_channels: int, stride: int, stage: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.stage = stage
        self.changes_shape = in_channels != out_channels or stride != 1
        self.deletable = not self.changes_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        if not self.deletable:
            raise ValueError("a shape-changing layer of the plain net cannot be deleted")
        return x


def plain_net(cfg: NetConfig) -> BlockNetwork:
    layers: list[Block] = []
    cin = cfg.in_channels
    for stage, width in enumerate(cfg.widths):
        for j in range(cfg.layers_per_stage):
            stride = 2 if (j == 0 and stage > 0) else 1
            layers.append(PlainLayer(cin, width, stride, stage))
            cin = width
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg.num_classes))
    net = BlockNetwork(nn.Identity(), layers, head)
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # a skeleton has no values to draw
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return net

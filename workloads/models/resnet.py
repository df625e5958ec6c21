"""CIFAR ResNets of depth 6n+2 (basic) and 9n+2 (bottleneck), widths 16/32/64.

He et al. (2015) for the network, He et al. (2016, "Identity Mappings", Fig. 4) for the
residual-unit variants (a)-(e), Huang et al. (2016) for stochastic depth's test-time
scaling. Reference CIFAR-10 errors (PAPERS.md): ResNet-110 (a) 6.61%, (e) 6.37%;
ResNet-164 (a) 5.93%, (e) 5.46%; ResNet-1001 (e) 4.92%.

| unit | residual branch                 | after the addition |
|------|---------------------------------|--------------------|
| (a)  | conv-BN-ReLU-conv-BN            | ReLU               |
| (b)  | conv-BN-ReLU-conv               | BN, ReLU           |
| (c)  | conv-BN-ReLU-conv-BN-ReLU       | -                  |
| (d)  | ReLU-conv-BN-ReLU-conv-BN       | -                  |
| (e)  | BN-ReLU-conv-BN-ReLU-conv       | -                  |
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.blocks import Block, BlockNetwork
from workloads.models.config import NetConfig, blocks_per_stage
from workloads.models.shortcuts import Gate, projection


def _branch(channels: list[int], kernels: list[int], strides: list[int], unit: str) -> tuple[nn.Sequential, nn.Module]:
    """Residual branch and post-addition op for a unit variant; channels has len(kernels)+1."""
    layers: list[nn.Module] = []
    last = len(kernels) - 1
    for i, (k, s) in enumerate(zip(kernels, strides)):
        cin, cout = channels[i], channels[i + 1]
        conv = nn.Conv2d(cin, cout, k, s, padding=k // 2, bias=False)
        if unit == "e":
            layers += [nn.BatchNorm2d(cin), nn.ReLU(), conv]
        elif unit == "d":
            layers += [nn.ReLU(), conv, nn.BatchNorm2d(cout)]
        else:
            layers.append(conv)
            if unit == "b" and i == last:
                break
            layers.append(nn.BatchNorm2d(cout))
            if i < last or unit == "c":
                layers.append(nn.ReLU())
    if unit == "a":
        post: nn.Module = nn.ReLU()
    elif unit == "b":
        post = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU())
    else:
        post = nn.Identity()
    return nn.Sequential(*layers), post


class ResidualUnit(Block):
    """One residual unit: y = post(s(x) + r(x)), with the shortcut variant mixing s and r."""

    def __init__(self, cfg: NetConfig, in_channels: int, out_channels: int, stride: int, stage: int,
                 survival: float = 1.0):
        super().__init__()
        unit, shortcut = cfg.unit, cfg.shortcut
        if cfg.bottleneck:
            mid = out_channels // 4
            self.branch, self.post_op = _branch([in_channels, mid, mid, out_channels], [1, 3, 1], [1, stride, 1], unit)
        else:
            self.branch, self.post_op = _branch([in_channels, out_channels, out_channels], [3, 3], [stride, 1], unit)
        if shortcut == "conv":
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        else:
            self.shortcut = projection(in_channels, out_channels, stride, cfg.option)
        self.gate = Gate(in_channels, out_channels, stride, cfg.gate_bias) if shortcut.endswith("gating") else None
        self.dropout = nn.Dropout(cfg.dropout_p) if shortcut == "dropout" else None
        self.variant = shortcut
        self.scale = cfg.scale
        self.stage = stage
        self.changes_shape = in_channels != out_channels or stride != 1
        self.identity_skip = isinstance(self.shortcut, nn.Identity) and shortcut == "identity"
        self.post_is_relu = isinstance(self.post_op, nn.ReLU)
        # Stochastic depth: the branch survives training with this probability and is
        # scaled by it at test time (Huang et al. 2016, Eq. 5).
        self.survival = survival

    def _shortcut(self, x: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        s = self.shortcut(x)
        if self.variant == "scaling":
            s = s * self.scale
        elif g is not None:
            s = s * (1 - g)
        elif self.dropout is not None:
            s = self.dropout(s)
        return s

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.gate(x) if self.gate is not None else None
        r = self.branch(x)
        if self.variant == "scaling":
            r = r * self.scale
        elif self.variant == "exclusive_gating":
            r = r * g
        if self.survival < 1.0 and not self.training:
            r = r * self.survival
        return self._shortcut(x, g), r

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return self.post_op(z)

    def branch_chain(self) -> tuple[list, float] | None:
        if self.variant not in ("identity", "scaling", "conv", "dropout"):
            return None  # gated branches depend on x through the gate too
        factor = self.scale if self.variant == "scaling" else 1.0
        if self.survival < 1.0 and not self.training:
            factor *= self.survival
        return list(self.branch), factor

    def shortcut_only(self, x: torch.Tensor) -> torch.Tensor:
        return self._shortcut(x, self.gate(x) if self.gate is not None else None)


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):  # leaves conv biases alone: a gate keeps its b init
            if not m.weight.is_meta:  # a skeleton has no values to draw (on meta, normal_ imports torch._dynamo)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(cfg: NetConfig) -> BlockNetwork:
    """Build a CIFAR-style ResNet as a BlockNetwork (stem -> stages of n units -> head)."""
    unit, widths = cfg.unit, cfg.widths
    n = blocks_per_stage(cfg.depth, cfg.bottleneck)
    expansion = 4 if cfg.bottleneck else 1
    stem_width = widths[0]
    if unit == "e":
        stem: nn.Module = nn.Conv2d(cfg.in_channels, stem_width, 3, 1, 1, bias=False)
    elif unit == "d":
        stem = nn.Sequential(nn.Conv2d(cfg.in_channels, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width))
    else:
        stem = nn.Sequential(nn.Conv2d(cfg.in_channels, stem_width, 3, 1, 1, bias=False),
                             nn.BatchNorm2d(stem_width), nn.ReLU())
    total = n * len(widths)
    blocks: list[Block] = []
    cin = stem_width
    for stage, width in enumerate(widths):
        cout = width * expansion
        for j in range(n):
            index = len(blocks) + 1  # 1-based, as in p_l = 1 - (l/L)(1 - p_L)
            survival = 1.0 - index / total * (1.0 - cfg.final_survival) if cfg.stochastic_depth else 1.0
            stride = 2 if (j == 0 and stage > 0) else 1
            blocks.append(ResidualUnit(cfg, cin, cout, stride, stage, survival))
            cin = cout
    head_layers: list[nn.Module] = []
    if unit == "e":  # full pre-activation ends with BN-ReLU before pooling
        head_layers += [nn.BatchNorm2d(cin), nn.ReLU()]
    elif unit == "d":
        head_layers.append(nn.ReLU())
    head_layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, cfg.num_classes)]
    net = BlockNetwork(stem, blocks, nn.Sequential(*head_layers))
    _init(net)
    return net

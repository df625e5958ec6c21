"""Shared fixtures: tiny networks with non-trivial BatchNorm statistics, and tiny data."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from workloads.models import build_network


def randomise_bn(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, so eval mode is a real test."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return net.eval()


def tiny(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    overrides.setdefault("in_channels", 3)
    overrides.setdefault("num_classes", 10)
    return randomise_bn(build_network(name, **overrides), seed)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(40, 3, 16, 16, generator=g), torch.randint(0, 10, (40,), generator=g)

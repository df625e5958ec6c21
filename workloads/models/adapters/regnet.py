"""torchvision's RegNets (regnet_x_400mf ... regnet_y_128gf) seen as residual units.

Every block of a RegNet trunk is a ``ResBottleneckBlock``: activation(shortcut(x) + f(x)), where f is the
bottleneck transform (1x1, grouped 3x3 [+ squeeze-excitation], 1x1) and the shortcut is a 1x1 conv + BN
projection where the shape changes, the identity elsewhere. So each block is one unit, like a torchvision
ResNet's; deleting a projecting block keeps its projection. The stem is the model's 3x3 conv stem, the head
its pooling and classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor
from workloads.models.adapters.parts import ModelPart, activate, number_stages
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


class RegNetUnit(Block):
    """activation(proj(x) or x + f(x)) of one ResBottleneckBlock (shared with it, not copied)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.changes_shape = block.proj is not None
        self.identity_skip = block.proj is None
        self.post_is_relu = type(block.activation) is nn.ReLU

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.skip(x), self.block.f(x)

    def shortcut_only(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.proj(x)

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return activate(self.block.activation, z)


def _head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.fc(model.avgpool(x).flatten(1))


def from_torchvision_regnet(model: nn.Module) -> BlockNetwork:
    """Wrap a torchvision RegNet (any of its sizes, X or Y, trained or not) as a BlockNetwork."""
    from torchvision.models.regnet import RegNet, ResBottleneckBlock
    if not isinstance(model, RegNet):
        raise AdapterError(f"expected a torchvision RegNet, got {type(model).__name__}")
    blocks = [b for stage in model.trunk_output for b in stage]
    odd = [type(b).__name__ for b in blocks if type(b) is not ResBottleneckBlock]
    if odd:
        raise AdapterError(f"its trunk holds a {odd[0]}, not torchvision's ResBottleneckBlock: the unit it "
                           f"computes is not known")
    units = number_stages([RegNetUnit(b) for b in blocks])
    anchors = [a for i, b in enumerate(blocks) for a in (
        Anchor(i, b, "input"), Anchor(i, b.f, "branch"), Anchor(i, b, "output"))]
    return BlockNetwork(model.stem, units, ModelPart(model, _head), anchors=anchors, reference=model)

"""timm's ResNets (``timm.models.resnet.ResNet``: resnet10t ... resnet200d, ResNeXt, SE-ResNet/ResNeXt, ECA,
ResNet-D, anti-aliased) seen as residual units.

A timm BasicBlock or Bottleneck computes act(shortcut(x) + drop_path(se(bn(conv(... aa(... drop_block(...)))))),
where every optional piece is the identity or absent unless the model asks for it (drop_block and drop_path are
the identity in eval mode, kept inside the branch all the same). Each block is one unit; a block with a
``downsample`` keeps it as its shortcut when deleted. Where the branch is a plain chain of convolutions,
BatchNorms and ReLUs, the unit says so, and the gradient engine batches its VJPs as for torchvision's ResNets.
Blocks of other classes built on timm's ResNet (selective-kernel blocks) are refused.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor
from workloads.models.adapters.parts import ModelPart, activate, number_stages
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


class TimmResNetUnit(Block):
    """One timm BasicBlock or Bottleneck (shared with it, not copied)."""

    def __init__(self, block: nn.Module, bottleneck: bool):
        super().__init__()
        self.block = block
        b = block
        if bottleneck:
            ops = [b.conv1, b.bn1, b.act1, b.conv2, b.bn2, b.drop_block, b.act2, b.aa, b.conv3, b.bn3]
            self.act = b.act3
        else:
            ops = [b.conv1, b.bn1, b.drop_block, b.act1, b.aa, b.conv2, b.bn2]
            self.act = b.act2
        self.branch_ops = ops + [m for m in (b.se, b.drop_path) if m is not None]
        self.changes_shape = b.downsample is not None
        self.identity_skip = b.downsample is None
        self.post_is_relu = type(self.act) is nn.ReLU

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = x
        for op in self.branch_ops:
            r = op(r)
        return self.skip(x), r

    def shortcut_only(self, x: torch.Tensor) -> torch.Tensor:
        return self.block.downsample(x)

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return activate(self.act, z)

    def branch_chain(self) -> tuple[list, float] | None:
        ops = [op for op in self.branch_ops if type(op) is not nn.Identity]
        if not all(type(op) in (nn.Conv2d, nn.BatchNorm2d, nn.ReLU) for op in ops):
            return None  # an attention, an anti-aliasing pool, a BatchNorm with its own activation...
        return [nn.ReLU() if type(op) is nn.ReLU else op for op in ops], 1.0  # timm's ReLUs are in-place


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(model.act1(model.bn1(model.conv1(x))))


def _head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(x)


def from_timm_resnet(model: nn.Module) -> BlockNetwork:
    """Wrap a timm ResNet (any variant built from timm's BasicBlock or Bottleneck, trained or not) as a
    BlockNetwork."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet
    if not isinstance(model, ResNet):
        raise AdapterError(f"expected a timm ResNet, got {type(model).__name__}")
    blocks = [b for layer in (model.layer1, model.layer2, model.layer3, model.layer4) for b in layer]
    odd = [type(b).__name__ for b in blocks if type(b) not in (BasicBlock, Bottleneck)]
    if odd:
        raise AdapterError(f"its stages hold a {odd[0]}, not timm's BasicBlock or Bottleneck: the unit it "
                           f"computes is not known")
    units = number_stages([TimmResNetUnit(b, type(b) is Bottleneck) for b in blocks])
    anchors = [a for i, unit in enumerate(units) for a in (
        Anchor(i, unit.block, "input"), Anchor(i, unit.branch_ops[-1], "branch"), Anchor(i, unit.block, "output"))]
    return BlockNetwork(ModelPart(model, _stem), units, ModelPart(model, _head), anchors=anchors, reference=model)

"""torchvision's ResNets (resnet18 ... resnet152, resnext50_32x4d ..., wide_resnet50_2 ...) seen as block lists.

The adapter shares the torchvision modules (no copy), so a user's trained model, loaded
with torchvision's own code and state_dict, can be lesioned as it is. torchvision's
blocks compute relu(bn(conv(...)) + downsample(x)), i.e. unit (a) with option-B
projections where the shape changes; ResNeXt and wide ResNets are the same classes with
grouped or wider 3x3 convolutions. Each unit is anchored to its torchvision block (input,
branch up to the last BatchNorm, output), so ``check_adapter`` can prove it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from workloads.models.adapters.check import Anchor
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


class TorchvisionBlock(Block):
    def __init__(self, block: BasicBlock | Bottleneck, stage: int):
        super().__init__()
        self.block = block
        self.stage = stage
        self.changes_shape = block.downsample is not None
        self.identity_skip = block.downsample is None
        self.post_is_relu = True
        if isinstance(block, Bottleneck):
            self._branch = [block.conv1, block.bn1, F.relu, block.conv2, block.bn2, F.relu, block.conv3, block.bn3]
        else:
            self._branch = [block.conv1, block.bn1, F.relu, block.conv2, block.bn2]

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = x
        for op in self._branch:  # torchvision's own ReLU is in-place; F.relu keeps autograd simple
            r = op(r)
        return self.shortcut_only(x), r

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(z)

    def branch_chain(self) -> tuple[list, float] | None:
        return [nn.ReLU() if op is F.relu else op for op in self._branch], 1.0

    def shortcut_only(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.block.downsample is None else self.block.downsample(x)


def from_torchvision(model: ResNet) -> BlockNetwork:
    """Wrap a torchvision ResNet, ResNeXt or wide ResNet (any depth, trained or not) as a BlockNetwork."""
    if not isinstance(model, ResNet):
        raise AdapterError(f"expected a torchvision ResNet, got {type(model).__name__}")
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    odd = [type(b).__name__ for layer in layers for b in layer if type(b) not in (BasicBlock, Bottleneck)]
    if odd:
        raise AdapterError(f"its stages hold a {odd[0]}, not torchvision's BasicBlock or Bottleneck: the unit it "
                           f"computes is not known")
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    blocks = [TorchvisionBlock(b, stage) for stage, layer in enumerate(layers) for b in layer]
    head = nn.Sequential(model.avgpool, nn.Flatten(), model.fc)
    anchors = [a for i, unit in enumerate(blocks) for a in (
        Anchor(i, unit.block, "input"), Anchor(i, unit._branch[-1], "branch"), Anchor(i, unit.block, "output"))]
    return BlockNetwork(stem, blocks, head, anchors=anchors, reference=model)

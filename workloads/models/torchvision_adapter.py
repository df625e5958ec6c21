"""torchvision's ResNets (resnet18 ... resnet152, wide_resnet50_2) seen as block lists.

The adapter shares the torchvision modules (no copy), so a user's trained model, loaded
with torchvision's own code and state_dict, can be lesioned as it is. torchvision's
blocks compute relu(bn(conv(...)) + downsample(x)), i.e. unit (a) with option-B
projections where the shape changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .blocks import Block, BlockNetwork


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
    """Wrap a torchvision ResNet (any depth, trained or not) as a BlockNetwork."""
    if not isinstance(model, ResNet):
        raise TypeError(f"expected a torchvision ResNet, got {type(model).__name__}")
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    blocks = [TorchvisionBlock(b, stage)
              for stage, layer in enumerate([model.layer1, model.layer2, model.layer3, model.layer4])
              for b in layer]
    head = nn.Sequential(model.avgpool, nn.Flatten(), model.fc)
    return BlockNetwork(stem, blocks, head)

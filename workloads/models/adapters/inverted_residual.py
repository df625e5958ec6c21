"""torchvision's inverted-residual networks seen as residual units: MobileNetV2, MobileNetV3 (small, large),
EfficientNet B0-B7 and EfficientNetV2 (S, M, L).

Their blocks (``InvertedResidual`` of each MobileNet, ``MBConv`` and ``FusedMBConv``) add a shortcut only where
``use_res_connect`` (stride 1, as many channels out as in): x + sd(f(x)), where sd is the block's stochastic
depth (EfficientNet only; the identity in eval mode, kept inside the branch all the same). Those are the
units. A block without the shortcut changes the shape and is all branch: a ``Transition`` that always runs.
The stem is ``features[0]`` (the first conv), the head the last 1x1 conv, the pooling and the classifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.adapters.check import Anchor
from workloads.models.adapters.parts import ModelPart, Transition, number_stages
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


def _body(block: nn.Module) -> nn.Module:
    """The block's residual function: MobileNetV2 names it ``conv``, the others ``block``."""
    return block.conv if hasattr(block, "conv") else block.block


class InvertedResidualUnit(Block):
    """x + sd(f(x)) of one inverted-residual block with ``use_res_connect`` (shared with it, not copied)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block
        self.body = _body(block)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.body(x)
        if hasattr(self.block, "stochastic_depth"):
            r = self.block.stochastic_depth(r)
        return x, r


def _mobilenet_v2_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.classifier(torch.flatten(F.adaptive_avg_pool2d(model.features[-1](x), (1, 1)), 1))


def _pooled_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.classifier(torch.flatten(model.avgpool(model.features[-1](x)), 1))


def from_torchvision_inverted_residual(model: nn.Module) -> BlockNetwork:
    """Wrap a torchvision MobileNetV2, MobileNetV3 or EfficientNet (V1 or V2; trained or not) as a BlockNetwork."""
    from torchvision.models.efficientnet import EfficientNet, FusedMBConv, MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual as V2Block, MobileNetV2
    from torchvision.models.mobilenetv3 import InvertedResidual as V3Block, MobileNetV3
    from torchvision.ops import Conv2dNormActivation
    known = {MobileNetV2: (V2Block,), MobileNetV3: (V3Block,), EfficientNet: (MBConv, FusedMBConv)}
    kinds = next((blocks for cls, blocks in known.items() if isinstance(model, cls)), None)
    if kinds is None:
        raise AdapterError(f"expected a torchvision MobileNetV2, MobileNetV3 or EfficientNet, got "
                           f"{type(model).__name__}")
    features = list(model.features)
    ends = [type(m).__name__ for m in (features[0], features[-1]) if not isinstance(m, Conv2dNormActivation)]
    if ends:
        raise AdapterError(f"its features begin or end with a {ends[0]}, not the conv layer torchvision builds: "
                           f"its stem and head are not known")
    # EfficientNet groups its blocks in one Sequential per stage; the MobileNets list them directly
    blocks = [b for m in features[1:-1] for b in (m if isinstance(m, nn.Sequential) else [m])]
    odd = [type(b).__name__ for b in blocks if type(b) not in kinds]
    if odd:
        raise AdapterError(f"its features hold a {odd[0]}, not one of torchvision's "
                           f"{' or '.join(k.__name__ for k in kinds)}: the unit it computes is not known")
    units: list[Block] = number_stages([InvertedResidualUnit(b) if b.use_res_connect else Transition(b)
                                        for b in blocks])
    anchors = []
    for i, (unit, b) in enumerate(zip(units, blocks)):
        anchors += [Anchor(i, b, "input"), Anchor(i, b, "output")]
        if unit.residual:  # the branch as the block computes it, before its in-place add of the shortcut
            anchors.append(Anchor(i, getattr(b, "stochastic_depth", _body(b)), "branch"))
    head = _mobilenet_v2_head if isinstance(model, MobileNetV2) else _pooled_head
    return BlockNetwork(features[0], units, ModelPart(model, head), anchors=anchors, reference=model)

"""ConvNeXts seen as residual units: torchvision's (convnext_tiny ... convnext_large) and timm's (ConvNeXt and
ConvNeXt-V2, every size).

A ConvNeXt block is x + sd(layer_scale * f(x)), f the depthwise 7x7 conv, norm and MLP; sd its stochastic depth
(the identity in eval mode, kept inside the branch all the same). Each block is one unit. The downsampling layer
between stages (norm, 2x2 stride-2 conv) has no shortcut: a ``Transition`` that always runs. The stem is the
model's patchify stem, the head its pooling, norm and classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor
from workloads.models.adapters.parts import ModelPart, Transition, number_stages
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


class TorchvisionConvNeXtUnit(Block):
    """``x + stochastic_depth(layer_scale * block(x))`` of one torchvision CNBlock (shared, not copied)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.cn_block = block

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.cn_block
        return x, b.stochastic_depth(b.layer_scale * b.block(x))


class TimmConvNeXtUnit(Block):
    """``drop_path(gamma * mlp(norm(conv_dw(x)))) + shortcut(x)`` of one timm ConvNeXtBlock (shared, not copied);
    the MLP runs channels-last unless the block is built with ``conv_mlp``."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.cn_block = block
        self.identity_skip = isinstance(block.shortcut, nn.Identity)
        self.changes_shape = not self.identity_skip

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.cn_block
        r = b.conv_dw(x)
        if b.use_conv_mlp:
            r = b.mlp(b.norm(r))
        else:
            r = b.mlp(b.norm(r.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        if b.gamma is not None:
            r = r.mul(b.gamma.reshape(1, -1, 1, 1))
        return self.skip(x), b.drop_path(r)

    def shortcut_only(self, x: torch.Tensor) -> torch.Tensor:
        return self.cn_block.shortcut(x)


def _torchvision_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.classifier(model.avgpool(x))


def _timm_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm_pre(x))


def _anchors(units: list[Block], originals: list[nn.Module], branch_of) -> list[Anchor]:
    anchors = []
    for i, (unit, m) in enumerate(zip(units, originals)):
        anchors += [Anchor(i, m, "input"), Anchor(i, m, "output")]
        if unit.residual:
            anchors.append(Anchor(i, branch_of(m), "branch"))
    return anchors


def from_torchvision_convnext(model: nn.Module) -> BlockNetwork:
    """Wrap a torchvision ConvNeXt (any size, trained or not) as a BlockNetwork."""
    from torchvision.models.convnext import CNBlock, ConvNeXt
    if not isinstance(model, ConvNeXt):
        raise AdapterError(f"expected a torchvision ConvNeXt, got {type(model).__name__}")
    originals: list[nn.Module] = []
    units: list[Block] = []
    for layer in list(model.features)[1:]:
        if any(isinstance(m, CNBlock) for m in layer.children()):
            odd = [type(m).__name__ for m in layer.children() if type(m) is not CNBlock]
            if odd:
                raise AdapterError(f"a stage holds a {odd[0]} beside its CNBlocks: the unit it computes is not known")
            originals += list(layer)
            units += [TorchvisionConvNeXtUnit(b) for b in layer]
        else:
            if not _is_downsampling(layer):
                raise AdapterError(f"its features hold a {type(layer).__name__} that is neither a stage of "
                                   f"CNBlocks nor torchvision's downsampling layer (norm, conv)")
            originals.append(layer)
            units.append(Transition(layer))
    number_stages(units)
    anchors = _anchors(units, originals, lambda b: b.stochastic_depth)
    return BlockNetwork(model.features[0], units, ModelPart(model, _torchvision_head), anchors=anchors,
                        reference=model)


def from_timm_convnext(model: nn.Module) -> BlockNetwork:
    """Wrap a timm ConvNeXt (ConvNeXt or ConvNeXt-V2, any size, trained or not) as a BlockNetwork."""
    from timm.models.convnext import ConvNeXt, ConvNeXtBlock, ConvNeXtStage
    if not isinstance(model, ConvNeXt):
        raise AdapterError(f"expected a timm ConvNeXt, got {type(model).__name__}")
    originals: list[nn.Module] = []
    units: list[Block] = []
    for stage in model.stages:
        if type(stage) is not ConvNeXtStage:
            raise AdapterError(f"its stages hold a {type(stage).__name__}, not timm's ConvNeXtStage")
        if not isinstance(stage.downsample, nn.Identity):
            if not _is_downsampling(stage.downsample):
                raise AdapterError(f"a stage downsamples with a {type(stage.downsample).__name__}, not timm's "
                                   f"(norm, conv)")
            originals.append(stage.downsample)
            units.append(Transition(stage.downsample))
        odd = [type(b).__name__ for b in stage.blocks if type(b) is not ConvNeXtBlock]
        if odd:
            raise AdapterError(f"a stage holds a {odd[0]}, not timm's ConvNeXtBlock: the unit it computes is not "
                               f"known")
        originals += list(stage.blocks)
        units += [TimmConvNeXtUnit(b) for b in stage.blocks]
    number_stages(units)
    anchors = _anchors(units, originals, lambda b: b.drop_path)
    return BlockNetwork(model.stem, units, ModelPart(model, _timm_head), anchors=anchors, reference=model)


def _is_downsampling(layer: nn.Module) -> bool:
    """A Sequential of a norm and a conv: how both libraries downsample between stages."""
    children = list(layer.children()) if isinstance(layer, nn.Sequential) else []
    return len(children) == 2 and isinstance(children[1], nn.Conv2d) and not isinstance(children[0], nn.Conv2d)

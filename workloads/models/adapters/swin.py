"""torchvision's Swin Transformers, V1 (swin_t, swin_s, swin_b) and V2 (swin_v2_t, swin_v2_s, swin_v2_b), seen
as residual units at sublayer granularity, like the ViT (vit.py).

Each Swin block is two units, its (shifted-)window attention and its MLP, as torchvision computes them:
V1 is pre-norm, x + sd(attn(norm1(x))) then x + sd(mlp(norm2(x))); V2 is res-post-norm,
x + sd(norm1(attn(x))) then x + sd(norm2(mlp(x))); sd is the block's stochastic depth (the identity in eval
mode, kept inside the branches all the same). The patch-merging layer between stages has no shortcut: a
``Transition`` that always runs. The stem is the patch embedding; the head the final norm, pooling and classifier.
Activations are channels-last images [batch, height, width, channels] throughout.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor
from workloads.models.adapters.parts import ModelPart, Sublayer, Transition, number_stages
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


class _SwinSublayer(Sublayer):
    """A residual sublayer of one torchvision Swin block."""

    post_norm = False   # V2: the norm follows the sublayer instead of preceding it

    def __init__(self, block: nn.Module, layer: int, post_norm: bool):
        super().__init__(block, layer)
        self.post_norm = post_norm

    def _branch(self, x: torch.Tensor, sublayer: nn.Module, norm: nn.Module) -> torch.Tensor:
        h = norm(sublayer(x)) if self.post_norm else sublayer(norm(x))
        return self.owner.stochastic_depth(h)


class SwinAttentionUnit(_SwinSublayer):
    """``x + sd(attn(norm1(x)))`` (V1) or ``x + sd(norm1(attn(x)))`` (V2)."""
    kind = "attention"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self._branch(x, self.owner.attn, self.owner.norm1)


class SwinMlpUnit(_SwinSublayer):
    """``x + sd(mlp(norm2(x)))`` (V1) or ``x + sd(norm2(mlp(x)))`` (V2)."""
    kind = "mlp"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self._branch(x, self.owner.mlp, self.owner.norm2)


def _head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.head(model.flatten(model.avgpool(model.permute(model.norm(x)))))


def from_torchvision_swin(model: nn.Module) -> BlockNetwork:
    """Wrap a torchvision SwinTransformer (V1 or V2, any size, trained or not) as a BlockNetwork of two units per
    Swin block."""
    from torchvision.models.swin_transformer import (PatchMerging, PatchMergingV2, SwinTransformer,
                                                     SwinTransformerBlock, SwinTransformerBlockV2)
    if not isinstance(model, SwinTransformer):
        raise AdapterError(f"expected a torchvision SwinTransformer, got {type(model).__name__}")
    units: list[Block] = []
    anchors: list[Anchor] = []
    layer = 0
    for part in list(model.features)[1:]:
        if type(part) in (PatchMerging, PatchMergingV2):
            anchors += [Anchor(len(units), part, "input"), Anchor(len(units), part, "output")]
            units.append(Transition(part))
            units[-1].layer = layer
            layer += 1
            continue
        if not isinstance(part, nn.Sequential):
            raise AdapterError(f"its features hold a {type(part).__name__}, neither a stage of Swin blocks nor "
                               f"torchvision's PatchMerging")
        for block in part:
            if type(block) not in (SwinTransformerBlock, SwinTransformerBlockV2):
                raise AdapterError(f"a stage holds a {type(block).__name__}, not torchvision's SwinTransformerBlock "
                                   f"or SwinTransformerBlockV2: the sublayers it computes are not known")
            post_norm = type(block) is SwinTransformerBlockV2
            i = len(units)
            units += [SwinAttentionUnit(block, layer, post_norm), SwinMlpUnit(block, layer, post_norm)]
            # the branches as the block computes them (its stochastic depth, called twice, is the identity in
            # eval mode; check_adapter compares each unit's own branch, stochastic depth included)
            anchors += [Anchor(i, block, "input"),
                        Anchor(i, block.norm1 if post_norm else block.attn, "branch"),
                        Anchor(i + 1, block.norm2 if post_norm else block.mlp, "branch"),
                        Anchor(i + 1, block, "output")]
            layer += 1
    number_stages(units)
    return BlockNetwork(model.features[0], units, ModelPart(model, _head), anchors=anchors, reference=model)

"""timm's Vision Transformers (``timm.models.vision_transformer.VisionTransformer`` built from its pre-norm
``Block``: ViT, DeiT, DeiT-III, most CLIP and DINOv2 image towers) seen as residual units at sublayer
granularity, like torchvision's (vit.py).

Each Block is two units, as timm computes them: x + drop_path1(ls1(attn(norm1(x)))) (kind "attention") then
x + drop_path2(ls2(mlp(norm2(x)))) (kind "mlp"); ls is the layer scale and drop_path the stochastic depth (both
the identity unless the model has them; drop_path is the identity in eval mode, kept inside the branch all the
same). Models whose blocks compute something else are refused: res-post-norm blocks (x + norm(attn(x))),
parallel blocks (attention and MLP from one input), and any other block class. The stem is the patch embedding
with its class/register tokens and position embedding; the head the final norm, pooling and classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor
from workloads.models.adapters.parts import ModelPart, Sublayer
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError


class TimmAttentionUnit(Sublayer):
    """``x + drop_path1(ls1(attn(norm1(x))))`` of one Block."""
    kind = "attention"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.owner
        return x, b.drop_path1(b.ls1(b.attn(b.norm1(x))))


class TimmMlpUnit(Sublayer):
    """``x + drop_path2(ls2(mlp(norm2(x))))`` of one Block."""
    kind = "mlp"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.owner
        return x, b.drop_path2(b.ls2(b.mlp(b.norm2(x))))


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def _head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm(x))


def from_timm_vit(model: nn.Module) -> BlockNetwork:
    """Wrap a timm VisionTransformer of pre-norm Blocks (any size, trained or not) as a BlockNetwork of 2 units
    per Block."""
    from timm.models.vision_transformer import Block as TimmBlock, VisionTransformer
    if not isinstance(model, VisionTransformer):
        raise AdapterError(f"expected a timm VisionTransformer, got {type(model).__name__}")
    blocks = list(model.blocks)
    odd = [type(b).__name__ for b in blocks if type(b) is not TimmBlock]
    if odd:
        raise AdapterError(f"its blocks are {odd[0]}, not timm's pre-norm Block: the sublayers it computes are "
                           f"not known to be x + attn(norm(x)), x + mlp(norm(x))")
    units: list[Block] = [u for j, b in enumerate(blocks) for u in (TimmAttentionUnit(b, j), TimmMlpUnit(b, j))]
    anchors = [a for j, b in enumerate(blocks) for a in (
        Anchor(2 * j, b, "input"), Anchor(2 * j, b.drop_path1, "branch"),
        Anchor(2 * j + 1, b.drop_path2, "branch"), Anchor(2 * j + 1, b, "output"))]
    return BlockNetwork(ModelPart(model, _stem), units, ModelPart(model, _head), anchors=anchors, reference=model)

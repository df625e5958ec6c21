"""torchvision's Vision Transformers (vit_b_16 ... vit_h_14) seen as residual units at sublayer granularity.

Each encoder layer is two units of its own, the way the layer computes them:
``x + dropout(attention(ln_1(x)))`` (kind "attention") then ``x + mlp(ln_2(x))`` (kind "mlp"); so a
12-layer ViT has 24 units, every one with an identity shortcut, and a plan may delete an attention
sublayer, an MLP sublayer, or both units of a layer. The stem is the patch embedding, the class token and
the position embedding; the head is the final LayerNorm, the class token and the classifier.

The adapter shares torchvision's modules (no copy), so a user's trained model, loaded with torchvision's
own code and state_dict, is lesioned as it is; ``check_adapter`` proves it on a batch before any result is
computed from it.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor, check_adapter
from workloads.models.adapters.parts import Sublayer
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError

__all__ = ["AdapterError", "AttentionUnit", "MlpUnit", "check_adapter", "from_torchvision_vit"]


class _Stem(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m._process_input(x)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + m.encoder.pos_embedding)


class _Head(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.heads(self.model.encoder.ln(x)[:, 0])


class AttentionUnit(Sublayer):
    """``x + dropout(self_attention(ln_1(x)))`` of one encoder layer."""
    kind = "attention"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.owner.ln_1(x)
        h, _ = self.owner.self_attention(h, h, h, need_weights=False)
        return x, self.owner.dropout(h)


class MlpUnit(Sublayer):
    """``x + mlp(ln_2(x))`` of one encoder layer."""
    kind = "mlp"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.owner.mlp(self.owner.ln_2(x))


def from_torchvision_vit(model) -> BlockNetwork:
    """Wrap a torchvision VisionTransformer (any size, trained or not) as a BlockNetwork of 2 units per layer."""
    from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer
    if not isinstance(model, VisionTransformer):
        raise AdapterError(f"expected a torchvision VisionTransformer, got {type(model).__name__}")
    layers = list(model.encoder.layers)
    odd = [type(layer).__name__ for layer in layers if type(layer) is not EncoderBlock]
    if odd:
        raise AdapterError(f"its encoder holds a {odd[0]}, not torchvision's EncoderBlock: the sublayers it "
                           f"computes are not known to be x + attention(ln(x)), x + mlp(ln(x))")
    units: list[Block] = [unit for j, layer in enumerate(layers) for unit in (AttentionUnit(layer, j),
                                                                                MlpUnit(layer, j))]
    # the model's own tensors the units must reproduce: each layer's input (the attention unit's input), the
    # attention output it adds (after its dropout), and the layer's output (the MLP unit's)
    anchors = [a for j, layer in enumerate(layers) for a in (
        Anchor(2 * j, layer, "input"), Anchor(2 * j, layer.dropout, "branch"), Anchor(2 * j + 1, layer, "output"))]
    return BlockNetwork(_Stem(model), units, _Head(model), anchors=anchors, reference=model)

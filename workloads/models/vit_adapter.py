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

from .blocks import Block, BlockNetwork


class AdapterError(ValueError):
    """A model an adapter cannot reproduce: refused with a one-line reason, never lesioned."""


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


class _Sublayer(Block):
    """A residual sublayer of one torchvision EncoderBlock (shared with it, not copied)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer


class AttentionUnit(_Sublayer):
    """``x + dropout(self_attention(ln_1(x)))`` of one encoder layer."""
    kind = "attention"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.layer.ln_1(x)
        h, _ = self.layer.self_attention(h, h, h, need_weights=False)
        return x, self.layer.dropout(h)


class MlpUnit(_Sublayer):
    """``x + mlp(ln_2(x))`` of one encoder layer."""
    kind = "mlp"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.layer.mlp(self.layer.ln_2(x))


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
    units: list[Block] = [unit for layer in layers for unit in (AttentionUnit(layer), MlpUnit(layer))]
    return BlockNetwork(_Stem(model), units, _Head(model))


def check_adapter(model: nn.Module, net: BlockNetwork, example: torch.Tensor, *, rtol: float = 1e-4,
                  atol: float = 1e-5) -> None:
    """Raise AdapterError unless, on ``example`` in eval mode, the units compute the model's own tensors: the
    stem gives the first layer's input, each attention unit's shortcut is its layer's input and its branch is
    the attention output the layer adds (captured from the model by hooks), each MLP unit's output is its
    layer's output, and the head gives the model's output. The guard against an adapter (or a hook) that
    carries the wrong tensor: a model it cannot reproduce is refused, never lesioned."""
    layers = list(model.encoder.layers)
    seen: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for j, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(
            lambda mod, args, out, j=j: seen.update({(j, "in"): args[0], (j, "out"): out})))
        hooks.append(layer.dropout.register_forward_hook(
            lambda mod, args, out, j=j: seen.update({(j, "attention"): out})))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(example)
            x = net.stem(example)
            _same(x, seen[(0, "in")], "the stem: its output is not the first layer's input", rtol, atol)
            for i, unit in enumerate(net.blocks):
                j, kind = divmod(i, 2)
                shortcut, branch = unit.parts(x)
                y = unit(x)
                where = f"unit {i} (layer {j}, {unit.info(i).kind})"
                if kind == 0:
                    _same(shortcut, seen[(j, "in")], f"{where}: its shortcut is not the layer's input", rtol, atol)
                    _same(branch, seen[(j, "attention")], f"{where}: its branch is not the attention output the "
                                                          f"layer adds", rtol, atol)
                    _same(y, seen[(j, "in")] + seen[(j, "attention")], f"{where}: its output is not its shortcut "
                                                                       f"plus its branch", rtol, atol)
                else:
                    _same(y, seen[(j, "out")], f"{where}: its output is not the layer's output", rtol, atol)
                x = y
            _same(net.head(x), expected, f"the network assembled from its {len(net.blocks)} units: its output is "
                                         f"not the model's", rtol, atol)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _same(got: torch.Tensor, expected: torch.Tensor, problem: str, rtol: float, atol: float) -> None:
    if got.shape != expected.shape:
        raise AdapterError(f"{problem} (shape {tuple(got.shape)}, expected {tuple(expected.shape)})")
    if not torch.allclose(got, expected, rtol=rtol, atol=atol):
        worst = (got - expected).abs().max().item()
        raise AdapterError(f"{problem} (largest difference {worst:.3g}, tolerance {atol:g} + {rtol:g} x |y|)")

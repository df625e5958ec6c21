"""Hugging Face causal language models (GPT-2 and the Llama layout: Llama, Mistral, Qwen2) as residual units
at sublayer granularity.

Each decoder layer is two units, the way the layer computes them: ``x + attention(norm_1(x))`` (kind
"attention") then ``x + mlp(norm_2(x))`` (kind "mlp"), every one with an identity shortcut. The stem is the
token embedding (GPT-2: plus the position embedding, then its dropout); the head is the final norm and the
LM head, giving logits [N, T, V] for token ids [N, T].

The units call the model's own modules (shared, not copied) with the arguments its forward would give them:
the attention mask comes from the model's own mask function for the input's length (a plain causal mask, or a
sliding-window one where the model uses one), so the attention is causal and exact whatever
``attn_implementation`` the model was loaded with (sdpa infers causality from a missing mask, eager adds the
mask, flex gets its block mask); the rotary position embeddings come from the model's own rotary module.
``check_adapter`` proves it against the model's tensors before any result is computed from it.
"""
from __future__ import annotations

import torch
from torch import nn

from workloads.models.adapters.check import Anchor, check_adapter
from workloads.models.adapters.parts import Sublayer
from workloads.models.blocks import Block, BlockNetwork
from workloads.models.errors import AdapterError

__all__ = ["AdapterError", "CAUSAL_LMS", "check_adapter", "from_causal_lm"]

# model class -> decoder layer class; the Llama layout shares one unit code
CAUSAL_LMS = {"GPT2LMHeadModel": "GPT2Block", "LlamaForCausalLM": "LlamaDecoderLayer",
              "MistralForCausalLM": "MistralDecoderLayer", "Qwen2ForCausalLM": "Qwen2DecoderLayer"}


class _Positions(nn.Module):
    """What every attention unit needs besides its input, made by the model's own functions for the input's
    length: position ids, the attention mask of a layer's kind ("full_attention" or "sliding_attention") and,
    for the Llama layout, the rotary (cos, sin).

    All units of a forward see the same batch and length, so one slot of cached values serves them; it is
    dropped when the shape, dtype, device or inference mode changes (a tensor made under inference_mode cannot
    be saved for a backward), and when the adapter is copied or pickled.
    """

    def __init__(self, config, rotary: nn.Module | None):
        super().__init__()
        self.config = config
        self.rotary = rotary
        self._key = None
        self._cache: dict = {}

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_key"], state["_cache"] = None, {}
        return state

    def ids(self, x: torch.Tensor) -> torch.Tensor:
        return torch.arange(x.shape[1], device=x.device).unsqueeze(0)

    def get(self, x: torch.Tensor, mask_kind: str) -> tuple[torch.Tensor, object, tuple | None]:
        key = (tuple(x.shape[:2]), x.dtype, x.device, torch.is_inference_mode_enabled())
        if key != self._key:
            self._key, self._cache = key, {}
        if mask_kind not in self._cache:
            from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
            make = create_sliding_window_causal_mask if mask_kind == "sliding_attention" else create_causal_mask
            position_ids = self.ids(x)
            mask = make(config=self.config, inputs_embeds=x, attention_mask=None, cache=None,
                        position_ids=position_ids)
            rotary = self.rotary(x, position_ids) if self.rotary is not None else None
            self._cache[mask_kind] = (position_ids, mask, rotary)
        return self._cache[mask_kind]


class _Stem(nn.Module):
    """Token ids [N, T] -> the residual stream [N, T, hidden], as the model's forward starts it."""

    def __init__(self, tokens: nn.Module, positions: nn.Module | None = None, dropout: nn.Module | None = None):
        super().__init__()
        self.tokens, self.positions, self.dropout = tokens, positions, dropout

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids)
        if self.positions is not None:  # GPT-2's learned absolute positions
            x = x + self.positions(torch.arange(ids.shape[1], device=ids.device).unsqueeze(0))
        return self.dropout(x) if self.dropout is not None else x


class _Head(nn.Module):
    """The final norm and the LM head: logits [N, T, V]."""

    def __init__(self, norm: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x))


class Gpt2AttentionUnit(Sublayer):
    """``x + attn(ln_1(x))`` of one GPT2Block (attn ends with its residual dropout)."""
    kind = "attention"

    def __init__(self, decoder_layer: nn.Module, index: int, positions: _Positions):
        super().__init__(decoder_layer, index)
        self.positions = positions

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position_ids, mask, _ = self.positions.get(x, "full_attention")
        h, _ = self.owner.attn(self.owner.ln_1(x), attention_mask=mask, use_cache=False,
                                       position_ids=position_ids)
        return x, h


class Gpt2MlpUnit(Sublayer):
    """``x + mlp(ln_2(x))`` of one GPT2Block."""
    kind = "mlp"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.owner.mlp(self.owner.ln_2(x))


class LlamaAttentionUnit(Sublayer):
    """``x + self_attn(input_layernorm(x))`` of one Llama-layout decoder layer, with the rotary embeddings and
    the mask of the layer's kind."""
    kind = "attention"

    def __init__(self, decoder_layer: nn.Module, index: int, positions: _Positions, mask_kind: str):
        super().__init__(decoder_layer, index)
        self.positions = positions
        self.mask_kind = mask_kind

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        position_ids, mask, rotary = self.positions.get(x, self.mask_kind)
        h, _ = self.owner.self_attn(hidden_states=self.owner.input_layernorm(x),
                                            attention_mask=mask, position_ids=position_ids, cache=None,
                                            use_cache=False, position_embeddings=rotary)
        return x, h


class LlamaMlpUnit(Sublayer):
    """``x + mlp(post_attention_layernorm(x))`` of one Llama-layout decoder layer."""
    kind = "mlp"

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.owner.mlp(self.owner.post_attention_layernorm(x))


def _mask_kinds(model, count: int) -> list[str]:
    """The mask each layer's attention gets in the model's own forward."""
    name, config = type(model).__name__, model.config
    if name == "MistralForCausalLM" and config.sliding_window is not None:
        return ["sliding_attention"] * count
    if name == "Qwen2ForCausalLM":
        kinds = list(config.layer_types[:count])
        odd = sorted(set(kinds) - {"full_attention", "sliding_attention"})
        if odd:
            raise AdapterError(f"{name}: its layer_types hold {odd[0]!r}, an attention this adapter cannot reproduce")
        return kinds
    return ["full_attention"] * count


def from_causal_lm(model) -> BlockNetwork:
    """Wrap a GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM or Qwen2ForCausalLM (any size, trained or
    not) as a BlockNetwork of 2 units per decoder layer; anything else is refused with AdapterError."""
    name = type(model).__name__
    if name not in CAUSAL_LMS:
        raise AdapterError(f"{name} is not a causal language model this adapter knows "
                           f"({', '.join(CAUSAL_LMS)})")
    config = model.config
    if getattr(config, "is_causal", True) is False:
        raise AdapterError(f"{name} with is_causal=False: its attention sees later tokens, so its next-token "
                           f"loss is not a language model's")
    if name == "GPT2LMHeadModel":
        if config.add_cross_attention:
            raise AdapterError(f"{name} with add_cross_attention: its layers attend to an encoder's states, which "
                               f"this adapter does not feed")
        body = model.transformer
        layers = list(body.h)
        stem, norm = _Stem(body.wte, body.wpe, body.drop), body.ln_f
    else:
        body = model.model
        layers = list(body.layers[:config.num_hidden_layers])
        stem, norm = _Stem(body.embed_tokens), body.norm
    odd = [(j, type(layer).__name__) for j, layer in enumerate(layers) if type(layer).__name__ != CAUSAL_LMS[name]]
    if odd:
        raise AdapterError(f"{name}: its layer {odd[0][0]} is a {odd[0][1]}, not {CAUSAL_LMS[name]}: the sublayers it "
                           f"computes are not known to be x + attention(norm(x)), x + mlp(norm(x))")
    units: list[Block] = []
    if name == "GPT2LMHeadModel":
        positions = _Positions(config, None)
        for j, layer in enumerate(layers):
            units += [Gpt2AttentionUnit(layer, j, positions), Gpt2MlpUnit(layer, j)]
        attention = [layer.attn for layer in layers]
    else:
        positions = _Positions(config, body.rotary_emb)
        for j, (layer, kind) in enumerate(zip(layers, _mask_kinds(model, len(layers)))):
            units += [LlamaAttentionUnit(layer, j, positions, kind), LlamaMlpUnit(layer, j)]
        attention = [layer.self_attn for layer in layers]
    # the model's own tensors the units must reproduce: each layer's input (the attention unit's input), the
    # attention output it adds, and the layer's output (the MLP unit's)
    anchors = [a for j, layer in enumerate(layers) for a in (
        Anchor(2 * j, layer, "input"), Anchor(2 * j, attention[j], "branch"), Anchor(2 * j + 1, layer, "output"))]
    return BlockNetwork(stem, units, _Head(norm, model.lm_head), anchors=anchors,
                        reference=lambda ids: model(input_ids=ids, use_cache=False).logits)

"""One-forward importance scores: what the layer-pruning field ranks units by instead of deleting them.

Per unit (block index, as a single deletion names it): ShortGPT's Block Influence 1 - cos(input, output) (Men et
al. 2024), the cosine itself, and the relative magnitude ||f(x)|| / ||x + f(x)|| of the residual branch. Per span
of consecutive layers (start, length, as ``layer_spans`` enumerates them): Gromov et al.'s angular distance
arccos(cos(h_start, h_after_span)) / pi. Every score is a mean over vectors: for text the residual stream at the
last position of each sequence (as Gromov et al.) or at every position; for images the activation averaged over
its spatial positions (or tokens), whatever ``positions`` says.

What a unit is compared with is the stream its deletion would leave: the input itself behind an identity
shortcut, ``skip(input)`` behind a downsampling one (whose input has another shape). So the relative magnitude is
||output - skip(input)|| / ||output||, which is ||f(x)|| / ||x + f(x)|| for an identity shortcut, and a span
across a downsampling block compares its output with its input carried through that block's shortcut. Only for
such a span is a full activation kept beyond the forward's own (one per start before the last downsampling
block); a transformer keeps none.

The forward is the network's ordinary one, each unit called once per chunk; the vectors are compared in float32
(float64 for a float64 network) and summed in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch

from workloads.models.blocks import BlockNetwork
from workloads.surgery.evaluate import autocast_for, default_device, input_chunk_size
from workloads.surgery.plan import layer_spans, layer_units

POSITIONS = ("last", "all")


@dataclass(frozen=True)
class ProxyScores:
    """Means over ``examples`` vectors (sequences, positions or images). The per-unit lists are indexed by block
    index; a unit that cannot be deleted (``units`` lists those that can) has NaN."""

    units: tuple[int, ...]
    block_influence: list[float]
    relative_magnitude: list[float]
    cosine: list[float]
    angular: dict[tuple[int, int], float]   # (start layer, layers) -> d in [0, 1]
    examples: int
    positions: str   # last | all (text) | pooled (images)


def _features(x: torch.Tensor, text: bool, positions: str, channels_last: bool) -> torch.Tensor:
    """The vectors a score is a mean over, at least in float32: [M, C]."""
    x = x if x.dtype == torch.float64 else x.float()
    if text:
        return x[:, -1] if positions == "last" else x.flatten(0, -2)
    if x.dim() == 2:
        return x
    # a convolution's stream is [N, C, H, W]; a transformer's tokens (ViT [N, T, C], Swin [N, H, W, C]) keep C last
    dims = tuple(range(1, x.dim() - 1)) if channels_last else tuple(range(2, x.dim()))
    return x.mean(dim=dims)


def _direction(v: torch.Tensor) -> torch.Tensor:
    """Each vector over its norm: a cosine is then one dot product, and many spans share one normalisation."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of directions: the last axis summed."""
    return (a * b).sum(dim=-1).clamp(-1.0, 1.0)


def proxy_scores(net: BlockNetwork, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]], *, positions: str = "last",
                 device: torch.device | str | None = None, precision: str | None = None,
                 chunk_size: int | None = None) -> ProxyScores:
    """Every proxy of every unit and span from one intact forward over the test set arriving in ``chunks``
    ((inputs, labels) pairs, as ``evaluate_plans_over`` takes them; each split into ``chunk_size`` examples,
    by default the engine's). ``positions``: "last" or "all" for token inputs; images always use pooled features.
    ``precision``: fp32 unless asked (one forward is cheap, and a layer whose cosine is 0.999 is not resolved in
    bf16's 8 bits)."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    infos = net.block_infos()
    device = torch.device(device) if device is not None else default_device()
    precision = precision or "fp32"
    net.eval().to(device)
    layers = layer_units(infos)
    spans = layer_spans(infos, len(layers)) if layers else []
    last_unit = {units[-1]: layer for layer, units in enumerate(layers)}
    first_unit = {units[0]: layer for layer, units in enumerate(layers)}
    deletable = [i.index for i in infos if i.deletable]
    # the last downsampling unit a span can cross: full activations are kept only for starts before it
    shortcut_units = [b for b in deletable if not infos[b].identity_skip]
    last_shortcut = shortcut_units[-1] if shortcut_units else -1
    span_ends: dict[int, list[int]] = {}
    for start, length in spans:
        span_ends.setdefault(start + length, []).append(start)
    span_index = {span: i for i, span in enumerate(spans)}
    # summed on the device, read once at the end: no synchronisation per unit
    unit_sums = torch.zeros(3, len(infos), dtype=torch.float64, device=device)   # cosine, relative magnitude, BI
    angular_sums = torch.zeros(len(spans), dtype=torch.float64, device=device)
    examples, text = 0, None
    with torch.inference_mode(), autocast_for(device, precision):
        for inputs, _ in chunks:
            text = not inputs.is_floating_point() if text is None else text
            step = chunk_size or input_chunk_size(net, device, inputs)
            for begin in range(0, len(inputs), step):
                x = net.stem(inputs[begin:begin + step].to(device, non_blocking=True))
                # per start layer: the features of the stream its deletion leaves, and (while a downsampling unit
                # lies ahead) that stream in full
                kept_features: dict[int, torch.Tensor] = {}
                kept_full: dict[int, torch.Tensor] = {}
                examples += x.shape[0] * (x.shape[1] if text and positions == "all" else 1)
                features_out, wide_out = None, None   # the previous unit's output features: this unit's input's
                for b, block in enumerate(net.blocks):
                    wide = infos[b].kind in ("attention", "mlp")
                    features_in = features_out if wide == wide_out else _features(x, text, positions, wide)
                    if b in first_unit:
                        layer = first_unit[b]
                        kept_features[layer] = _direction(features_in)
                        if b <= last_shortcut:
                            kept_full[layer] = x
                    if not infos[b].deletable:  # no span runs through it
                        kept_features.clear()
                        kept_full.clear()
                    y = block(x)
                    out = features_out = _features(y, text, positions, wide)
                    wide_out = wide
                    if infos[b].deletable:
                        deleted = x if infos[b].identity_skip else block.skip(x)
                        reference = features_in if deleted is x else _features(deleted, text, positions, wide)
                        cos = _cosine(_direction(reference), _direction(out))
                        ratio = (out - reference).norm(dim=-1) / out.norm(dim=-1).clamp_min(torch.finfo(out.dtype).tiny)
                        unit_sums[0, b] += cos.sum(dtype=torch.float64)
                        unit_sums[1, b] += ratio.sum(dtype=torch.float64)
                        unit_sums[2, b] += (1.0 - cos).sum(dtype=torch.float64)
                        if not infos[b].identity_skip:
                            for start, stream in list(kept_full.items()):
                                carried = block.skip(stream)
                                kept_features[start] = _direction(_features(carried, text, positions, wide))
                                if b < last_shortcut:
                                    kept_full[start] = carried
                                else:
                                    del kept_full[start]
                    x = y
                    if b in last_unit:
                        end = last_unit[b] + 1
                        starts = span_ends.get(end, [])
                        if starts:  # every span ending here at once: [starts, M] angles
                            kept = torch.stack([kept_features[start] for start in starts])
                            angles = torch.arccos(_cosine(kept, _direction(out))) / math.pi
                            where = torch.tensor([span_index[(start, end - start)] for start in starts], device=device)
                            angular_sums.index_add_(0, where, angles.sum(dim=1, dtype=torch.float64))
    if not examples:
        raise ValueError("the test set is empty")
    nan = float("nan")
    means = [[s / examples if infos[b].deletable else nan for b, s in enumerate(row)] for row in unit_sums.tolist()]
    return ProxyScores(units=tuple(deletable), cosine=means[0], relative_magnitude=means[1], block_influence=means[2],
                       angular={span: s / examples for span, s in zip(spans, angular_sums.tolist())}, examples=examples,
                       positions=positions if text else "pooled")

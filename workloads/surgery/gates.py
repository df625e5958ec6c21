"""Veit et al.'s highway view (H): how much each gated block lets through, measured on the test set.

A gated shortcut (Identity Mappings, Fig. 2) mixes y = post((1 - g(x)) s(x) + w r(x)), with
g = sigmoid(1x1 conv + b) per example, channel and pixel; w = g for exclusive gating, 1 for
shortcut-only gating. The paper's reading: gates that lean to the shortcut favour short paths.

The gates are read by forward hooks during the network's ordinary eval-mode forward, so what is
measured is exactly what the network computes. Each gate keeps running sums, sums of squares and
a 1000-bin histogram of g on [0, 1] (percentiles to 0.001, clamped to the observed min and max),
so memory does not grow with the test set. Always fp32: a gate near sigmoid(-6) = 0.0025 has
fewer significant bits in bf16 than the bins resolve.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from workloads.models.blocks import BlockNetwork
from workloads.models.shortcuts import Gate
from workloads.surgery.evaluate import default_chunk_size, default_device

BINS = 1000
GATED = ("exclusive_gating", "shortcut_gating")


@dataclass(frozen=True)
class GateStatistics:
    """One gated block's gate g over examples x channels x positions of the test set."""

    block: int              # 0-based position in the block list
    stage: int
    changes_shape: bool
    gating: str             # exclusive_gating | shortcut_gating
    mean: float
    std: float
    p10: float
    p90: float
    branch_weight: float    # mean weight on the residual branch: g (exclusive), 1 (shortcut-only)
    shortcut_weight: float  # mean weight on the shortcut: 1 - g
    examples: int


class _Tally:
    """Running moments and a histogram of one gate's outputs, on the device (no sync per chunk)."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.squares = torch.zeros((), dtype=torch.float64, device=device)
        self.histogram = torch.zeros(BINS, dtype=torch.float64, device=device)
        self.low = torch.ones((), device=device)
        self.high = torch.zeros((), device=device)
        self.count = 0

    def __call__(self, module, inputs, g: torch.Tensor) -> None:
        g = g.detach().float()
        self.sum += g.sum(dtype=torch.float64)
        self.squares += (g.double() ** 2).sum()
        self.histogram += torch.histc(g, bins=BINS, min=0.0, max=1.0).double()
        self.low = torch.minimum(self.low, g.min())
        self.high = torch.maximum(self.high, g.max())
        self.count += g.numel()

    def percentile(self, q: float) -> float:
        """The q-quantile read from the histogram, linear within its bin, inside [min, max] seen."""
        cumulative = torch.cumsum(self.histogram, 0).cpu()
        target = q * float(cumulative[-1])
        i = int(torch.searchsorted(cumulative, torch.tensor([target], dtype=torch.float64))[0].clamp(max=BINS - 1))
        before = float(cumulative[i - 1]) if i else 0.0
        inside = float(self.histogram[i])
        value = (i + ((target - before) / inside if inside else 0.0)) / BINS
        return min(max(value, float(self.low)), float(self.high))


def gated_blocks(net: BlockNetwork) -> list[int]:
    """Positions of the blocks whose shortcut is gated."""
    return [i for i, b in enumerate(net.blocks) if isinstance(getattr(b, "gate", None), Gate)]


def gate_statistics(net: BlockNetwork, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    device: torch.device | str | None = None, chunk_size: int | None = None) -> list[GateStatistics]:
    """Per gated block, the statistics of g over the test set arriving in ``chunks`` ((images, labels)
    pairs, as ``evaluate_plans_over`` takes them; each split further into ``chunk_size`` examples).
    Raises ValueError for a network without gates."""
    gated = gated_blocks(net)
    if not gated:
        raise ValueError("the network has no gated shortcut (shortcut: exclusive_gating or shortcut_gating)")
    device = torch.device(device) if device is not None else default_device()
    net.eval().to(device)
    tallies = {i: _Tally(device) for i in gated}
    hooks = [net.blocks[i].gate.register_forward_hook(tallies[i]) for i in gated]
    examples = 0
    try:
        with torch.inference_mode():
            for images, _ in chunks:
                step = chunk_size or default_chunk_size(device, images.shape[1:])
                for start in range(0, len(images), step):
                    net(images[start:start + step].to(device, non_blocking=True))
                examples += len(images)
    finally:
        for h in hooks:
            h.remove()
    if examples == 0:
        raise ValueError("the test set is empty")
    stats = []
    for i in gated:
        t, block = tallies[i], net.blocks[i]
        mean = float(t.sum) / t.count
        std = max(float(t.squares) / t.count - mean * mean, 0.0) ** 0.5
        info = block.info(i)
        stats.append(GateStatistics(i, info.stage, info.changes_shape, block.variant, mean, std, t.percentile(0.1),
                                    t.percentile(0.9), mean if block.variant == "exclusive_gating" else 1.0,
                                    1.0 - mean, examples))
    return stats

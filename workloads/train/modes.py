"""Which blocks run on a training mini-batch: normal, stochastic depth, effective paths.

Stochastic depth (Huang et al. 2016): block l survives with p_l = 1 - (l/L)(1 - p_L);
a dropped block is its shortcut in forward and backward; at test time the branch is
scaled by p_l (done by the block itself). Effective paths (Veit et al. 2016, Table 1):
exactly m of the n blocks run per mini-batch (23 of 54 in the paper), the others are
their shortcut; at test time all run, combined by a rule the paper leaves open (inference_rules.py).
"""
from __future__ import annotations

import torch

from workloads.models.blocks import BlockNetwork

MODES = ("normal", "stochastic_depth", "effective_paths")


def survival_probabilities(net: BlockNetwork) -> list[float]:
    return [float(getattr(b, "survival", 1.0)) for b in net.blocks]


def stochastic_depth_mask(survival: list[float], generator: torch.Generator) -> list[bool]:
    draws = torch.rand(len(survival), generator=generator).tolist()
    return [d < p for d, p in zip(draws, survival)]


def effective_paths_mask(num_blocks: int, active: int, generator: torch.Generator) -> list[bool]:
    if not 0 <= active <= num_blocks:
        raise ValueError(f"effective-path training needs 0 <= m <= {num_blocks} active blocks, got {active}")
    chosen = set(torch.randperm(num_blocks, generator=generator)[:active].tolist())
    return [i in chosen for i in range(num_blocks)]


def scaled_active_count(num_blocks: int, paper_active: int = 23, paper_blocks: int = 54) -> int:
    """m for a network of n blocks, keeping the paper's ratio 23/54."""
    return max(1, round(num_blocks * paper_active / paper_blocks))


class BlockSampler:
    """Yields the active-block mask for each mini-batch of a training mode (None = all run)."""

    def __init__(self, net: BlockNetwork, mode: str, generator: torch.Generator, active: int | None = None):
        if mode not in MODES:
            raise ValueError(f"training mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.generator = generator
        self.num_blocks = net.num_blocks
        self.survival = survival_probabilities(net)
        if mode == "stochastic_depth" and all(p >= 1.0 for p in self.survival):
            raise ValueError("stochastic_depth training needs a network built with stochastic_depth=True")
        self.active = active if active is not None else scaled_active_count(net.num_blocks)
        if mode == "effective_paths" and not 0 < self.active <= self.num_blocks:
            raise ValueError(f"effective-path training needs 1..{self.num_blocks} active blocks, got {self.active}")

    def __call__(self) -> list[bool] | None:
        if self.mode == "stochastic_depth":
            return stochastic_depth_mask(self.survival, self.generator)
        if self.mode == "effective_paths":
            return effective_paths_mask(self.num_blocks, self.active, self.generator)
        return None

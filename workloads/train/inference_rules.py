"""What a network trained on effective paths computes at test time: a rule, chosen, not implied.

Training on effective paths (Veit et al. 2016, Table 1) runs m of the n blocks on each mini-batch,
so every residual branch is present with probability m/n; at test time all n run, and their sum is
about n/m times what any mini-batch showed the head. The paper states no rule. PAPERS.md decides
"scaled": each branch times m/n, as stochastic depth scales a branch by its survival probability
(``ResidualUnit.survival``, applied by the block in eval mode). "unscaled" is the network as trained;
"recalibrated" runs every block unscaled with each BatchNorm's statistics re-estimated on training
images with all blocks active.
"""
from __future__ import annotations

import copy

import torch

from workloads.models.blocks import BlockNetwork
from workloads.surgery import intact, recalibrated_copy

TEST_RULES = ("scaled", "unscaled", "recalibrated")


def apply_test_rule(net: BlockNetwork, rule: str, active: int, calibration_images: torch.Tensor | None = None,
                    chunk_size: int | None = None) -> BlockNetwork:
    """A copy of ``net`` (trained with ``active`` = m of its n blocks per mini-batch) under ``rule``."""
    if rule not in TEST_RULES:
        raise ValueError(f"test rule must be one of {', '.join(TEST_RULES)}, got {rule!r}")
    n = net.num_blocks
    if not 0 < active <= n:
        raise ValueError(f"a network trained on effective paths ran 1..{n} of its {n} blocks per mini-batch, "
                         f"got {active}")
    if rule == "recalibrated":
        if calibration_images is None:
            raise ValueError("test rule 'recalibrated' needs calibration images (a batch of training images)")
        return recalibrated_copy(net, intact(net.block_infos()), calibration_images, chunk_size)
    clone = copy.deepcopy(net)
    if rule == "scaled":
        for i, block in enumerate(clone.blocks):
            if not hasattr(block, "survival"):
                raise ValueError(f"test rule 'scaled' needs a test-time branch factor on every block; block {i} "
                                 f"({type(block).__name__}) has none")
            block.survival = block.survival * active / n  # the branch's share: m/n (times any survival it had)
    return clone

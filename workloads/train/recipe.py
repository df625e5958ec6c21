"""The training recipe of He et al. (2015, Sec. 4.2), in iterations so it scales.

SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50% and 75%
of the iterations (32k and 48k of 64k, ~164 CIFAR epochs); for networks of 110 layers or
more, a warm-up at lr 0.01 for the first 400 of 64k iterations (0.625%). A short run is
the same recipe with fewer iterations.
"""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from workloads.fields import FORBID, Flag, JsonConfig, count, number
from workloads.train.modes import MODES

PAPER_ITERATIONS = 64_000
PAPER_WARMUP = 400


@dataclass(frozen=True, config=FORBID)
class TrainConfig(JsonConfig):
    _noun = "training"

    iterations: count(1, 10**8) = PAPER_ITERATIONS          # optimizer steps in all
    batch_size: count(1, 65_536) = 128                      # images per step
    lr: number(0, 100) = 0.1                                # base learning rate, above 0
    momentum: number(0, 0.999999) = 0.9
    nesterov: Flag = False                                  # Huang et al. use Nesterov for stochastic depth
    weight_decay: number(0, 1) = 1e-4
    # fractions of the iterations where lr is divided
    milestones: Annotated[tuple[number(1e-9, 0.999999), ...], Field(max_length=100)] = (0.5, 0.75)
    lr_decay: number(0, 1) = 0.1                            # lr factor at each milestone
    warmup: Flag | None = None                              # None: on for networks of 110+ layers
    warmup_lr: number(0, 100) = 0.01
    warmup_fraction: number(0, 0.999999) = PAPER_WARMUP / PAPER_ITERATIONS
    mode: Literal[MODES] = "normal"                         # normal | stochastic_depth | effective_paths
    active_blocks: count(1, 100_000) | None = None          # effective paths: m of n blocks (default 23/54 of n)
    seed: count(0, 2**31 - 1) = 0
    eval_every: count(1, 10**8) | None = None               # iterations between reports; None: one epoch
    checkpoint_every: count(1, 10**6) = 1                   # reports between checkpoints

    def __post_init__(self) -> None:
        if self.lr == 0:
            raise ValueError("lr must be above 0")

    def warmup_iterations(self, depth: int) -> int:
        on = self.warmup if self.warmup is not None else depth >= 110
        return math.ceil(self.iterations * self.warmup_fraction) if on else 0

    def lr_at(self, iteration: int, depth: int) -> float:
        if iteration < self.warmup_iterations(depth):
            return self.warmup_lr
        passed = sum(1 for m in self.milestones if iteration >= round(m * self.iterations))
        return self.lr * self.lr_decay ** passed

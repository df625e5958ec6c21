"""The training recipe of He et al. (2015, Sec. 4.2), in iterations so it scales.

SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided by 10 at 50% and 75%
of the iterations (32k and 48k of 64k, ~164 CIFAR epochs); for networks of 110 layers or
more, a warm-up at lr 0.01 for the first 400 of 64k iterations (0.625%). A short run is
the same recipe with fewer iterations.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from .modes import MODES

PAPER_ITERATIONS = 64_000
PAPER_WARMUP = 400


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = PAPER_ITERATIONS      # optimizer steps in all
    batch_size: int = 128                   # images per step
    lr: float = 0.1                         # base learning rate
    momentum: float = 0.9
    nesterov: bool = False                  # Huang et al. use Nesterov for stochastic depth
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)   # fractions of iterations where lr is divided
    lr_decay: float = 0.1                   # lr factor at each milestone
    warmup: bool | None = None              # None: on for networks of 110+ layers
    warmup_lr: float = 0.01
    warmup_fraction: float = PAPER_WARMUP / PAPER_ITERATIONS
    mode: str = "normal"                    # normal | stochastic_depth | effective_paths
    active_blocks: int | None = None        # effective paths: m of n blocks (default 23/54 of n)
    seed: int = 0
    eval_every: int | None = None           # iterations between reports; None: one epoch
    checkpoint_every: int = 1               # reports between checkpoints

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        checks = [
            (self.iterations >= 1, f"iterations must be at least 1, got {self.iterations}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be non-negative, got {self.weight_decay}"),
            (all(0 < m < 1 for m in self.milestones), f"milestones must be fractions in (0, 1), got {list(self.milestones)}"),
            (self.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.eval_every is None or self.eval_every >= 1, f"eval_every must be at least 1, got {self.eval_every}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be at least 1, got {self.checkpoint_every}"),
            (0 <= self.warmup_fraction < 1, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def warmup_iterations(self, depth: int) -> int:
        on = self.warmup if self.warmup is not None else depth >= 110
        return math.ceil(self.iterations * self.warmup_fraction) if on else 0

    def lr_at(self, iteration: int, depth: int) -> float:
        if iteration < self.warmup_iterations(depth):
            return self.warmup_lr
        passed = sum(1 for m in self.milestones if iteration >= round(m * self.iterations))
        return self.lr * self.lr_decay ** passed

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training field(s): {', '.join(unknown)}")
        return cls(**d)

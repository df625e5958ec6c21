"""What the family adapters are built from, besides their own residual units.

A model's stem and head are pieces of its own forward (``ModelPart``); a layer between residual units that has
no shortcut (a downsampling layer, an inverted residual that changes the width) is a ``Transition``: it always
runs and stays in place. Units get their ``stage`` from ``number_stages``, so that a reorder only ever swaps
units of one shape.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.blocks import Block


class ModelPart(nn.Module):
    """``forward(x) = run(model, x)``: a stretch of the model's own forward (its stem, its head), on the model's
    own modules. ``run`` is a module-level function, so the network pickles."""

    def __init__(self, model: nn.Module, run: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(self.model, x)


class Sublayer(Block):
    """One residual half of a transformer layer (its attention or its MLP): the layer is shared with the model,
    not copied, and ``layer`` is its index (BlockInfo.layer), so spans delete both halves together."""

    def __init__(self, owner: nn.Module, layer: int):
        super().__init__()
        self.owner = owner
        self.layer = layer


class Transition(Block):
    """A layer of the model with no shortcut between its residual units: deleting or moving it would change
    every later shape, so it always runs, in place, and the gradient always passes through it."""

    residual = False
    deletable = False
    changes_shape = True
    identity_skip = False

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.body = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.body(x)
        return y.new_zeros(()), y  # no shortcut: the layer is all branch

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"a {type(self.body).__name__} has no shortcut: it cannot be deleted")


def activate(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """``act(z)`` without writing into ``z``: models build their activations in-place, and the gradient engine
    keeps the sum a unit's activation is applied to."""
    if type(act) is nn.ReLU:
        return F.relu(z)
    return act(z.clone()) if getattr(act, "inplace", False) else act(z)


def number_stages(units: list[Block]) -> list[Block]:
    """Give each unit the count of shape-changing units up to it as its stage: units of one stage have one
    shape, so BlockInfo.group lets them, and only them, trade places."""
    stage = 0
    for unit in units:
        if unit.changes_shape:
            stage += 1
        unit.stage = stage
    return units

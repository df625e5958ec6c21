"""Gradient magnitude by path length (Veit et al. 2016, Fig. 6b).

For a draw of k blocks, the gradient of the loss flows back only through the residual
branch of those k blocks and only through the shortcut of the others; we record the L2
norm of the gradient at the input of the first residual block. One forward pass (BN in
eval mode) serves every draw on a batch; each draw then costs vector-Jacobian products
through its k chosen branches (input gradients only, no weight gradients) instead of a
forward and a full backward of its own.

The norms fall by orders of magnitude per block, so in fp32 a plain backward underflows
to exactly 0 for long paths. The cotangent is carried renormalised block by block with
its log-scale accumulated: VJPs are linear in the cotangent, so this is exact, and every
k gets a finite log10 norm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.blocks import BlockNetwork
from .plan import PlanError

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class GradientResult:
    k: int                     # path length: residual branches the gradient passes through
    seed: int
    chosen: tuple[int, ...]    # the blocks whose residual branch carries the gradient
    log10_norm: float          # log10 of the L2 norm at the input of the first block
    batch_size: int

    @property
    def norm(self) -> float:
        return 10.0 ** self.log10_norm


def choose_blocks(num_blocks: int, k: int, seed: int) -> tuple[int, ...]:
    """The k blocks (seeded, uniform without replacement) whose branch carries the gradient."""
    if not 0 <= k <= num_blocks:
        raise PlanError(f"path length k={k} is out of range 0..{num_blocks}")
    rng = np.random.default_rng([int(seed), 3, int(k)])
    return tuple(sorted(int(i) for i in rng.choice(num_blocks, size=k, replace=False)))


class _Tape:
    """One forward through the network, each block a separate graph for its own VJPs."""

    def __init__(self, net: BlockNetwork, images: torch.Tensor, labels: torch.Tensor):
        self.steps = []
        with torch.no_grad():
            x = net.stem(images)
        for block in net.blocks:
            x_in = x.detach().requires_grad_(True)
            s, r = block.parts(x_in)
            z = s + r
            y = block.post(z)
            self.steps.append((x_in, s, r, z, y, block.identity_skip, y is z))
            x = y
        top = x.detach().requires_grad_(True)
        loss = F.cross_entropy(net.head(top), labels)
        (self.top_grad,) = torch.autograd.grad(loss, top)

    def log10_norm(self, chosen: set[int]) -> torch.Tensor:
        g = self.top_grad
        log_scale = torch.zeros((), dtype=torch.float64, device=g.device)
        for i in range(len(self.steps) - 1, -1, -1):
            x_in, s, r, z, y, identity_shortcut, post_is_identity = self.steps[i]
            norm = g.norm().clamp_min(torch.finfo(g.dtype).tiny)
            log_scale = log_scale + norm.double().log()
            g = g / norm
            if not post_is_identity:
                (g,) = torch.autograd.grad(y, z, g, retain_graph=True)
            if i in chosen:
                (g,) = torch.autograd.grad(r, x_in, g, retain_graph=True)
            elif not identity_shortcut:
                (g,) = torch.autograd.grad(s, x_in, g, retain_graph=True)
        return (log_scale + g.norm().double().log()) / _LN10


def gradient_norms(net: BlockNetwork, images: torch.Tensor, labels: torch.Tensor,
                   draws: Sequence[tuple[int, int]], *, device: torch.device | str | None = None) -> list[GradientResult]:
    """log10 gradient norm for each (k, seed) draw, all on one batch and one forward."""
    infos = net.block_infos()
    if not all(i.residual for i in infos):
        raise PlanError("gradient by path length needs a residual network; this one has non-residual layers")
    n = len(infos)
    chosen = [choose_blocks(n, k, seed) for k, seed in draws]
    device = torch.device(device) if device is not None else images.device
    net.eval().to(device)
    images, labels = images.to(device), labels.to(device)
    flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)  # input gradients only: no weight-gradient work
    try:
        with torch.enable_grad():
            tape = _Tape(net, images, labels)
            logs = [tape.log10_norm(set(c)) for c in chosen]
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)
    values = torch.stack(logs).cpu().tolist() if logs else []
    return [GradientResult(k=k, seed=seed, chosen=c, log10_norm=v, batch_size=len(images))
            for (k, seed), c, v in zip(draws, chosen, values)]


def naive_gradient_norm(net: BlockNetwork, images: torch.Tensor, labels: torch.Tensor, chosen: Sequence[int]) -> float:
    """The naive way: a full forward with the other branch detached, then one backward.

    Run it in float64 (``net.double()``) to see small norms that underflow in fp32.
    """
    net.eval()
    chosen_set = set(chosen)
    x0 = net.stem(images).detach().requires_grad_(True)
    x = x0
    for i, block in enumerate(net.blocks):
        s, r = block.parts(x)
        x = block.post(s.detach() + r) if i in chosen_set else block.post(s + r.detach())
    loss = F.cross_entropy(net.head(x), labels)
    loss.backward()
    return float(x0.grad.norm())

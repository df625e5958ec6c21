"""Gradient magnitude by path length (Veit et al. 2016, Fig. 6b).

For a draw of k blocks, the gradient of the loss flows back only through the residual
branch of those k blocks and only through the shortcut of the others; we record the L2
norm of the gradient at the input of the first residual block. A layer without a shortcut
(a downsampling layer between residual units) is on every path: k counts residual units
only, and only they are chosen. One forward pass (BN in eval mode) serves every draw on a
batch; each draw then costs vector-Jacobian products through its k chosen branches (input
gradients only, no weight gradients) instead of a forward and a full backward of its own.

The norms fall by orders of magnitude per block, so in fp32 a plain backward underflows
to exactly 0 for long paths. The cotangent is carried renormalised block by block with
its log-scale accumulated: VJPs are linear in the cotangent, so this is exact, and every
k gets a finite log10 norm.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workloads.models.blocks import BlockNetwork
from workloads.surgery.loss import mean_loss
from workloads.surgery.plan import PlanError

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class GradientResult:
    k: int                     # path length: residual branches the gradient passes through
    seed: int
    chosen: tuple[int, ...]    # the blocks whose residual branch carries the gradient
    log10_norm: float          # log10 of the L2 norm at the input of the first block
    batch_size: int


def choose_blocks(num_blocks: int, k: int, seed: int) -> tuple[int, ...]:
    """The k blocks (seeded, uniform without replacement) whose branch carries the gradient."""
    if not 0 <= k <= num_blocks:
        raise PlanError(f"path length k={k} is out of range 0..{num_blocks}")
    rng = np.random.default_rng([int(seed), 3, int(k)])
    return tuple(sorted(int(i) for i in rng.choice(num_blocks, size=k, replace=False)))



# the seed of a draw's batch is offset from the draw's number: the trainer seeds its generator with the run's seed,
# a small integer, and a draw's images should not be the shuffle some run of that seed was trained on
DRAW_BATCH_SEED = 1_000_003


def draw_batch(train_size: int, batch_size: int, draw: int) -> torch.Tensor:
    """Indices of the training images draw ``draw`` computes its norms on: a seeded random sample, the same on
    every evaluator and every rerun, shared by the draw's path lengths."""
    g = torch.Generator().manual_seed(DRAW_BATCH_SEED + draw)
    return torch.randperm(train_size, generator=g)[:batch_size]

class _LinearChain:
    """An eval-mode chain of Conv2d / BatchNorm2d / ReLU, linearised at one input.

    The forward records each ReLU's mask; the VJP then runs on a whole stack of
    cotangents [draws, batch, C, H, W] as one batch: transposed convolutions, per-channel
    BN scales and mask products, instead of one autograd backward per draw.
    """

    def __init__(self, ops: list, ref_ops: list, factor: float, x: torch.Tensor, fmt: torch.memory_format):
        self.factor = factor
        self.steps: list[tuple] = []
        x = x.detach()
        with torch.no_grad():
            for op, ref in zip(ops, ref_ops):
                if isinstance(op, nn.Conv2d):
                    self.steps.append(("conv", op, tuple(x.shape)))
                elif isinstance(op, nn.BatchNorm2d):
                    scale = op.weight / torch.sqrt(op.running_var + op.eps) if op.affine else \
                        1.0 / torch.sqrt(op.running_var + op.eps)
                    self.steps.append(("scale", scale.detach().view(1, -1, 1, 1)))
                else:  # ReLU
                    self.steps.append(("mask", None))
                x = ref(x)
                if self.steps[-1][0] == "mask":
                    self.steps[-1] = ("mask", (x > 0).contiguous(memory_format=fmt))
        self.output = x * factor if factor != 1.0 else x  # the branch's output, in the reference dtype

    @staticmethod
    def supports(ops: list) -> bool:
        return all(isinstance(op, (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)) for op in ops) and all(
            op.groups == 1 and op.dilation == (1, 1) and op.bias is None for op in ops if isinstance(op, nn.Conv2d))

    def vjp(self, g: torch.Tensor, d: int) -> torch.Tensor:
        """VJP for d stacked cotangents as one batch [d * batch, C, H, W]; updates ``g`` in place."""
        b = g.shape[0] // d
        if self.factor != 1.0:
            g.mul_(self.factor)
        for kind, *rest in reversed(self.steps):
            if kind == "scale":
                g.mul_(rest[0].to(g.dtype))
            elif kind == "mask":
                g.unflatten(0, (d, b)).mul_(rest[0])  # one mask for every draw
            else:
                conv, in_shape = rest
                (sh, sw), (ph, pw), (kh, kw) = conv.stride, conv.padding, conv.kernel_size
                extra = (in_shape[2] - ((g.shape[2] - 1) * sh - 2 * ph + kh),
                         in_shape[3] - ((g.shape[3] - 1) * sw - 2 * pw + kw))
                # the VJP of a convolution w.r.t. its input is the transposed convolution
                g = F.conv_transpose2d(g, conv.weight.to(g.dtype), stride=conv.stride, padding=conv.padding,
                                       output_padding=extra)
        return g


class _Tape:
    """One forward through the network, kept per block for the VJPs of every draw.

    With ``anchor`` (a float64 copy of the network), block inputs and ReLU masks come from
    a float64 forward and only the VJPs run in fp32: rounding no longer accumulates over
    the depth, so the norms match a float64 backward to ~1e-6 instead of ~1e-4, for one
    float64 forward per batch.
    """

    def __init__(self, net: BlockNetwork, images: torch.Tensor, labels: torch.Tensor, channels_last: bool,
                 anchor: BlockNetwork | None = None):
        self.steps = []
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        ref_net = anchor if anchor is not None else net
        with torch.no_grad():
            dtype = next(ref_net.parameters()).dtype
            inputs = images.to(dtype) if images.is_floating_point() else images  # token ids stay integers
            x = ref_net.stem(inputs.contiguous(memory_format=fmt))
        if x.dim() != 4:  # tokens (a transformer's units): no channels to put last
            fmt = torch.contiguous_format
        for block, ref in zip(net.blocks, ref_net.blocks):
            x_in = x.detach().float().contiguous(memory_format=fmt).requires_grad_(True)
            if not block.residual:  # no shortcut (a downsampling layer): every draw's gradient passes through it
                out = block(x_in)
                with torch.no_grad():
                    y = ref(x) if anchor is not None else out.detach()
                self.steps.append((x_in, None, out, None, False))
                x = y.detach()
                continue
            chain = block.branch_chain()
            if chain is not None and _LinearChain.supports(chain[0]):
                r: torch.Tensor | _LinearChain = _LinearChain(chain[0], ref.branch_chain()[0], chain[1], x, fmt)
                s = x_in if block.identity_skip else block.shortcut_only(x_in)
                with torch.no_grad():
                    z_ref = (x if block.identity_skip else ref.shortcut_only(x)) + r.output
            else:
                s, r = block.parts(x_in)
                with torch.no_grad():
                    z_ref = sum(ref.parts(x)) if anchor is not None else (s + r).detach()
            with torch.no_grad():
                y = ref.post(z_ref)
            if block.post_is_relu:  # the ReLU's VJP is a mask saved here
                post = (z_ref > 0).contiguous(memory_format=fmt)
            elif y is z_ref:
                post = None
            else:
                z_graph = z_ref.detach().float().requires_grad_(True)
                post = (block.post(z_graph), z_graph)
            self.steps.append((x_in, s, r, post, block.identity_skip))
            x = y.detach()
        top = x.requires_grad_(True)
        loss = mean_loss(ref_net.head(top), labels)
        (top_grad,) = torch.autograd.grad(loss, top)
        self.top_grad = top_grad.float()
        self.channels_last = fmt == torch.channels_last and self.top_grad.dim() == 4

    # Cotangents of all draws live in one tensor [draws, batch, ...]. With channels-last
    # the storage is [draws, batch, H, W, C] (contiguous), so selecting draws, and viewing
    # a selection as one channels-last batch [draws*batch, C, H, W], never copies.
    def _logical(self, g: torch.Tensor) -> torch.Tensor:
        return g.permute(0, 1, 4, 2, 3) if self.channels_last else g

    def _storage(self, g: torch.Tensor) -> torch.Tensor:
        return (g.permute(0, 1, 3, 4, 2) if self.channels_last else g).contiguous()

    def log10_norms(self, chosen: Sequence[set[int]], renorm_every: int) -> torch.Tensor:
        """All draws in lock-step: cotangents stacked on a leading draw dimension."""
        d = len(chosen)
        g = self._storage(self.top_grad.unsqueeze(0).expand(d, *self.top_grad.shape))
        log_scale = torch.zeros(d, dtype=torch.float64, device=g.device)
        tiny = torch.finfo(g.dtype).tiny
        for i in range(len(self.steps) - 1, -1, -1):
            x_in, s, r, post, identity_shortcut = self.steps[i]
            if i % renorm_every == 0 or i == len(self.steps) - 1:
                norm = torch.linalg.vector_norm(g.flatten(1), dim=1).clamp_min(tiny)
                log_scale += norm.double().log()
                g.div_(norm.view(-1, *([1] * (g.dim() - 1))))
            if isinstance(post, torch.Tensor):
                self._logical(g).mul_(post)
            elif post is not None:
                (gz,) = torch.autograd.grad(post[0], post[1], self._logical(g), retain_graph=True,
                                            is_grads_batched=True)
                g = self._storage(gz)
            through = [j for j in range(d) if s is None or i in chosen[j]]  # s None: a layer with no shortcut
            around = [j for j in range(d) if s is not None and i not in chosen[j]]
            out = g if identity_shortcut else self._storage(
                torch.empty((d, *x_in.shape), dtype=g.dtype, device=g.device))
            if through:
                idx = torch.tensor(through, device=g.device)
                gi = self._logical(g.index_select(0, idx))
                if isinstance(r, _LinearChain):
                    gr = r.vjp(gi.flatten(0, 1), len(through)).unflatten(0, (len(through), -1))
                else:
                    (gr,) = torch.autograd.grad(r, x_in, gi, retain_graph=True, is_grads_batched=True)
                out.index_copy_(0, idx, self._storage(gr))
            if around and not identity_shortcut:
                idx = torch.tensor(around, device=g.device)
                (gs,) = torch.autograd.grad(s, x_in, self._logical(g.index_select(0, idx)), retain_graph=True,
                                            is_grads_batched=True)
                out.index_copy_(0, idx, self._storage(gs))
            g = out
        return (log_scale + torch.linalg.vector_norm(g.flatten(1), dim=1).double().log()) / _LN10


def gradient_norms(net: BlockNetwork, images: torch.Tensor, labels: torch.Tensor,
                   draws: Sequence[tuple[int, int]], *, device: torch.device | str | None = None,
                   channels_last: bool = True, memory_mb: int = 256, anchor_float64: bool = True,
                   renorm_every: int = 2) -> list[GradientResult]:
    """log10 gradient norm for each (k, seed) draw, all on one batch and one forward.

    Draws run in lock-step groups whose stacked cotangents fit in ``memory_mb``. The
    cotangent is renormalised every ``renorm_every`` blocks: safe in fp32 while the norm
    falls by less than 1e-15 per block (observed: x0.2 to x0.4 per block).
    ``anchor_float64`` takes block inputs and ReLU masks from a float64 forward (see _Tape).
    """
    if renorm_every < 1:
        raise ValueError(f"renorm_every must be at least 1, got {renorm_every}")
    # k counts residual units: a layer without a shortcut is on every path, never chosen
    residual = [i.index for i in net.block_infos() if i.residual]
    if not residual:
        raise PlanError("gradient by path length needs a residual network; this one has no residual units")
    chosen = [tuple(residual[j] for j in choose_blocks(len(residual), k, seed)) for k, seed in draws]
    device = torch.device(device) if device is not None else images.device
    net.eval().to(device)
    channels_last = channels_last and images.dim() == 4
    if channels_last:
        net.to(memory_format=torch.channels_last)
    images, labels = images.to(device), labels.to(device)
    flags = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)  # input gradients only: no weight-gradient work
    try:
        with torch.enable_grad():
            anchor = copy.deepcopy(net).double() if anchor_float64 else None
            if anchor is not None and channels_last:
                anchor.to(memory_format=torch.channels_last)
            tape = _Tape(net, images, labels, channels_last, anchor)
            del anchor
            largest = max((step[0].numel() for step in tape.steps), default=1) * tape.top_grad.element_size()
            group = max(1, (memory_mb << 20) // (3 * largest))
            logs = [tape.log10_norms([set(c) for c in chosen[a:a + group]], renorm_every)
                    for a in range(0, len(chosen), group)]
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)
    values = torch.cat(logs).cpu().tolist() if logs else []
    return [GradientResult(k=k, seed=seed, chosen=c, log10_norm=v, batch_size=len(images))
            for (k, seed), c, v in zip(draws, chosen, values)]


def naive_gradient_norm(net: BlockNetwork, images: torch.Tensor, labels: torch.Tensor, chosen: Sequence[int]) -> float:
    """The naive way: a full forward with the other branch detached, then one backward.

    Run it in float64 (``net.double()``) to see small norms that underflow in fp32. The norm is
    taken as max|g| * ||g / max|g|||: squaring first would underflow below 1e-154 even in float64,
    where the gradients of ResNet-1001's longest paths (~1e-215) still are.
    """
    net.eval()
    chosen_set = set(chosen)
    x0 = net.stem(images).detach().requires_grad_(True)
    x = x0
    for i, block in enumerate(net.blocks):
        if not block.residual:
            x = block(x)
            continue
        s, r = block.parts(x)
        x = block.post(s.detach() + r) if i in chosen_set else block.post(s + r.detach())
    loss = mean_loss(net.head(x), labels)
    loss.backward()
    top = x0.grad.abs().max()
    return 0.0 if top == 0 else float(top) * float(torch.linalg.vector_norm(x0.grad / top))

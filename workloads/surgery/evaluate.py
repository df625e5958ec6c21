"""Many plans, one pass over the data: a depth-first walk of the plan trie per chunk.

For each chunk of test examples the stem runs once, then the trie is walked depth-first:
an activation is kept only at nodes where plans diverge, so memory is bounded by the
network's depth times one chunk, whatever the number of plans. At each leaf the head
turns the activation into loss and correct counts for the plans that end there.

Token data (labels [N, T]) is also scored against the intact model (divergence.py): per chunk one forward
of the intact network to its final hidden state, whatever the number of plans (exactly the intact leaf's
computation, so the intact plan's KL is 0 and its agreement 1); leaves wait, up to the logit budget's worth of
their activations, then the head runs slice by slice of positions over the intact state and each of them, so
the intact model's log-probabilities of a slice are computed once for all the leaves waiting.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import nn

from workloads.models.blocks import BlockNetwork
from workloads.surgery.divergence import SUMS, Reference, default_logit_budget, slice_length, slice_sums
from workloads.surgery.loss import summed
from workloads.surgery.plan import Plan, validate
from workloads.surgery.trie import PlanTrie, first_plans, walk


@dataclass(frozen=True)
class PlanResult:
    """One plan's score. For token data (logits [N, T, V], labels [N, T]) every token position is an example:
    ``correct`` and ``examples`` count positions, ``loss`` is the mean next-token cross-entropy and ``error``
    1 - next-token accuracy (loss.py); ``kl``, ``agreement`` and ``entropy`` are means over the positions of
    KL(intact || plan) in nats, of the plan's argmax equal to the intact model's, and of the entropy of the plan's
    next-token distribution in nats (divergence.py). None for images, and when not asked for."""

    error: float        # fraction misclassified
    loss: float         # mean cross-entropy
    correct: int
    examples: int
    kl: float | None = None
    agreement: float | None = None
    entropy: float | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_chunk_size(device: torch.device, example_shape: Sequence[int], floor: int = 16) -> int:
    """Examples per chunk: a power of two, at least ``floor``; CPU convolutions run fastest at 64-128 CIFAR
    images, a GPU wants thousands. Small inputs (8x8 digits) get larger chunks."""
    numel = 1
    for d in example_shape:
        numel *= int(d)
    budget, cap = ((1 << 23), 4096) if device.type == "cuda" else ((1 << 19), 1024)
    n = max(floor, min(cap, budget // max(numel, 1)))
    return 1 << (n.bit_length() - 1)


def input_chunk_size(net: BlockNetwork, device: torch.device, inputs: torch.Tensor) -> int:
    """``default_chunk_size`` for these inputs. Images are sized by their own shape; token ids (integers) by
    the stem's output for one sequence, since an int64 [T] is tiny and its activations are T x hidden, and may
    go down to one sequence a chunk (a long context of a wide model)."""
    if inputs.is_floating_point():
        return default_chunk_size(device, inputs.shape[1:])
    with torch.inference_mode():
        activation = net.stem(inputs[:1].to(device)).shape[1:]
    return default_chunk_size(device, activation, floor=1)


def default_precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" else "fp32"


def autocast_for(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def forward_plan(net: BlockNetwork, plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """The plan as one plain forward: the naive way, and the reference for the engine."""
    x = net.stem(x)
    for b, runs in plan.steps():
        block = net.blocks[b]
        x = block(x) if runs else block.skip(x)
    return net.head(x)


class _ImageLeaves:
    """Scores a leaf as soon as it is reached: the head and its loss on the whole chunk."""

    def __init__(self, net: BlockNetwork, num_plans: int, device: torch.device):
        self.net = net
        self.sums = torch.zeros(num_plans, len(SUMS), dtype=torch.float64, device=device)

    def start(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.y = y

    def leaf(self, plan: int, x: torch.Tensor) -> None:
        loss, correct = summed(self.net.head(x), self.y)
        self.sums[plan, 0] += loss
        self.sums[plan, 1] += correct

    def finish(self) -> None:
        pass


class _TokenLeaves:
    """Scores leaves of token data by slices of positions, against the intact model when ``divergence``.

    Memory beyond the walk's: the intact final state (one activation), the activations of the leaves waiting
    (at most max(budget, one activation) elements), and one slice's logits (divergence.py: at most
    20 x max(budget, V) bytes)."""

    def __init__(self, net: BlockNetwork, num_plans: int, device: torch.device, divergence: bool, budget: int):
        self.net, self.divergence, self.budget = net, divergence, budget
        self.sums = torch.zeros(num_plans, len(SUMS), dtype=torch.float64, device=device)
        self.waiting: list[tuple[int, torch.Tensor]] = []

    def start(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.y = y.flatten()
        self.step = slice_length(self.net.head(x[:1, :1]).shape[-1], self.budget)  # the vocabulary, from one position
        self.intact = None
        if self.divergence:
            for block in self.net.blocks:  # the intact plan's own operations (trie.plan_ops), in its order
                x = block(x)
            self.intact = x.flatten(0, -2)

    def leaf(self, plan: int, x: torch.Tensor) -> None:
        if self.waiting and sum(a.numel() for _, a in self.waiting) + x.numel() > self.budget:
            self.finish()
        self.waiting.append((plan, x.flatten(0, -2)))
        if not self.divergence:  # nothing to share: no intact log-probabilities
            self.finish()

    def finish(self) -> None:
        """Scores the waiting leaves, one slice of positions at a time."""
        head = self.net.head
        for start in range(0, len(self.y) if self.waiting else 0, self.step):
            end = start + self.step
            reference = Reference.of(head, self.intact[None, start:end]) if self.intact is not None else None
            for plan, x in self.waiting:
                self.sums[plan] += slice_sums(head, x[None, start:end], self.y[start:end], reference)
            del reference  # before the next slice's is made: two would be four [S, V] tensors
        self.waiting.clear()


def evaluate_plans(net: BlockNetwork, plans: Sequence[Plan], images: torch.Tensor, labels: torch.Tensor, *,
                   chunk_size: int | None = None, precision: str | None = None, channels_last: bool = True,
                   device: torch.device | str | None = None, recalibrate: torch.Tensor | None = None,
                   divergence: bool = True, logit_budget: int | None = None) -> list[PlanResult]:
    """Error, mean loss and example count of every plan on (images, labels); for token data (labels [N, T])
    also KL from the intact model, agreement with it and entropy, unless ``divergence`` is False.

    ``recalibrate``: a batch of training images; when given, each plan's BatchNorm
    statistics are re-estimated on it after the lesion (off by default, as in the paper),
    which means each plan runs on its own copy of the network, without sharing.
    ``logit_budget``: token data's logits per slice of positions (divergence.py; default by device).
    """
    infos = net.block_infos()
    for plan in plans:
        validate(plan, infos)
    if not plans:
        return []
    device = torch.device(device) if device is not None else default_device()
    precision = precision or default_precision(device)
    net.eval().to(device)
    if recalibrate is not None:
        out: list[PlanResult] = []
        for plan in plans:
            calibrated = recalibrated_copy(net, plan, recalibrate.to(device), chunk_size=chunk_size)
            out += evaluate_plans(calibrated, [plan], images, labels, chunk_size=chunk_size, precision=precision,
                                  channels_last=channels_last, device=device, divergence=divergence,
                                  logit_budget=logit_budget)
        return out
    trie = PlanTrie.build(plans, infos)
    if channels_last and images.dim() == 4:
        net.to(memory_format=torch.channels_last)
    chunk = chunk_size or input_chunk_size(net, device, images)
    tokens = labels.dim() > 1
    scorer = (_TokenLeaves(net, len(plans), device, divergence, logit_budget or default_logit_budget(device)) if tokens
              else _ImageLeaves(net, len(plans), device))
    with torch.inference_mode(), autocast_for(device, precision):
        for start in range(0, len(images), chunk):
            x = images[start:start + chunk].to(device, non_blocking=True)
            y = labels[start:start + chunk].to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            x = net.stem(x)
            scorer.start(x, y)
            walk(net, trie.root, x, scorer.leaf)
            scorer.finish()
    sums = scorer.sums.cpu()
    n = labels.numel()  # token data: every position
    first_of = first_plans(trie.root)
    results = []
    for i in range(len(plans)):
        loss, correct, kl, agreement, entropy = sums[first_of[i]].tolist()
        c = int(correct)
        measured = tokens and divergence
        results.append(PlanResult(error=1.0 - c / n, loss=loss / n, correct=c, examples=n,
                                  kl=kl / n if measured else None, agreement=agreement / n if measured else None,
                                  entropy=entropy / n if measured else None))
    return results


_MEANS = ("loss", "kl", "agreement", "entropy")  # PlanResult's means over examples


def evaluate_plans_over(net: BlockNetwork, plans: Sequence[Plan], chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        **options) -> list[PlanResult]:
    """``evaluate_plans`` over a test set that arrives in chunks (a DataLoader over images on
    disk): every plan sees each chunk while it is in memory, and counts are summed (means weighted by the
    chunk's examples)."""
    correct = [0] * len(plans)
    sums = [dict.fromkeys(_MEANS, 0.0) for _ in plans]
    total = 0
    for images, labels in chunks:
        for i, r in enumerate(evaluate_plans(net, plans, images, labels, **options)):
            correct[i] += r.correct
            for name in _MEANS:
                value = getattr(r, name)
                sums[i][name] = None if value is None else sums[i][name] + value * r.examples
        total += labels.numel()
    if total == 0:
        raise ValueError("the test set is empty")
    return [PlanResult(error=1.0 - c / total, correct=c, examples=total,
                       **{name: None if s[name] is None else s[name] / total for name in _MEANS})
            for c, s in zip(correct, sums)]



def recalibrated_copy(net: BlockNetwork, plan: Plan, images: torch.Tensor, chunk_size: int | None = None) -> BlockNetwork:
    """A copy of ``net`` whose BatchNorm statistics are re-estimated under ``plan``.

    Running statistics are reset and re-accumulated as a cumulative average
    (momentum=None) over ``images``; weights are untouched.
    """
    clone = copy.deepcopy(net).eval()
    bns = [m for m in clone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    chunk = chunk_size or len(images)
    with torch.no_grad():
        for start in range(0, len(images), chunk):
            forward_plan(clone, plan, images[start:start + chunk])
    for bn in bns:
        bn.eval()
    return clone

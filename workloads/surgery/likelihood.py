"""Loglikelihoods of continuations under many plans in one pass: lm-eval's loglikelihood requests answered by
the plan trie.

A row is the token ids a causal model reads (lm-eval's HF model feeds context + continuation less its last
token); a continuation is scored at the row's last positions (the log-probability of each of its tokens, summed,
and whether each is the argmax). Several continuations may share a row (a question's one-token choices), and it
is computed once. Rows are sorted by length, cut into chunks of about ``chunk_tokens`` tokens and padded on the
right with id 0, as lm-eval pads: exact for a causal model, whose real positions never attend to later ones.
Each chunk walks the plan trie depth-first as ``evaluate_plans`` does (memory bounded by depth times one chunk);
at each leaf the hidden states at the scored positions are gathered first, so the head and the softmax run on
the continuation tokens alone, in slices of at most ``HEAD_SLICE`` logits (64 MB in fp32, whatever the
vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from workloads.models.blocks import BlockNetwork
from workloads.surgery.evaluate import autocast_for, default_device, default_precision
from workloads.surgery.plan import Plan, validate
from workloads.surgery.trie import PlanTrie, first_plans, walk

HEAD_SLICE = 1 << 24   # logits (positions x vocabulary) computed at once at a leaf


@dataclass(frozen=True)
class Continuation:
    """Tokens scored at the last ``len(tokens)`` positions of row ``row`` (position i predicts token i + 1)."""

    row: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Likelihoods:
    """Per plan and continuation: the summed log-probability of its tokens (float64) and whether every one of
    them is the model's argmax (lm-eval's is_greedy)."""

    loglikelihood: torch.Tensor   # [plans, continuations] float64
    greedy: torch.Tensor          # [plans, continuations] bool


def default_chunk_tokens(device: torch.device) -> int:
    """Input tokens per chunk: a few thousand on a CPU (a GPT-2-small chunk's activations stay in cache-sized
    tensors), more on a GPU."""
    return 1 << 16 if device.type == "cuda" else 1 << 12


@dataclass
class _Chunk:
    """One padded chunk of rows and the positions scored in it."""

    ids: torch.Tensor        # [rows, T] int64
    rows: torch.Tensor       # [P] row of each scored position within the chunk
    positions: torch.Tensor  # [P] its position in the row
    targets: torch.Tensor    # [P] the token it is scored against
    owner: torch.Tensor      # [P] the continuation it belongs to


def _chunks(rows: Sequence[Sequence[int]], continuations: Sequence[Continuation], chunk_tokens: int,
            device: torch.device) -> list[_Chunk]:
    scored: dict[int, list[int]] = {}
    for c, cont in enumerate(continuations):
        scored.setdefault(cont.row, []).append(c)
    order = sorted(scored, key=lambda r: -len(rows[r]))
    chunks, start = [], 0
    while start < len(order):
        width = len(rows[order[start]])
        stop = start + max(1, chunk_tokens // max(width, 1))
        members = order[start:stop]
        ids = torch.zeros(len(members), width, dtype=torch.long)
        rows_, positions, targets, owner = [], [], [], []
        for local, r in enumerate(members):
            row = rows[r]
            ids[local, :len(row)] = torch.as_tensor(row, dtype=torch.long)
            for c in scored[r]:
                tokens = continuations[c].tokens
                first = len(row) - len(tokens)
                rows_ += [local] * len(tokens)
                positions += range(first, len(row))
                targets += tokens
                owner += [c] * len(tokens)
        chunks.append(_Chunk(ids.to(device), *(torch.as_tensor(v, dtype=torch.long, device=device)
                                               for v in (rows_, positions, targets, owner))))
        start = stop
    return chunks


class _Leaves:
    """Sums each leaf's log-probabilities and argmax misses per continuation, on the device."""

    def __init__(self, net: BlockNetwork, num_plans: int, num_continuations: int, vocabulary: int,
                 device: torch.device):
        self.net = net
        self.step = max(1, HEAD_SLICE // vocabulary)   # positions per slice of logits
        self.loglikelihood = torch.zeros(num_plans, num_continuations, dtype=torch.float64, device=device)
        self.misses = torch.zeros(num_plans, num_continuations, dtype=torch.int64, device=device)
        self.chunk: _Chunk | None = None

    def leaf(self, plan: int, x: torch.Tensor) -> None:
        chunk = self.chunk
        hidden = x[chunk.rows, chunk.positions]                     # [P, hidden]: the scored positions alone
        for start in range(0, len(hidden), self.step):
            part = slice(start, start + self.step)
            logits = self.net.head(hidden[part].unsqueeze(0)).squeeze(0).float()
            targets = chunk.targets[part]
            logp = F.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
            self.loglikelihood[plan].index_add_(0, chunk.owner[part], logp.double())
            self.misses[plan].index_add_(0, chunk.owner[part], (logits.argmax(-1) != targets).long())


def continuation_loglikelihoods(net: BlockNetwork, plans: Sequence[Plan], rows: Sequence[Sequence[int]],
                                continuations: Sequence[Continuation], *, chunk_tokens: int | None = None,
                                device: torch.device | str | None = None,
                                precision: str | None = None) -> Likelihoods:
    """Every continuation's loglikelihood and greediness under every plan of a causal language model (a
    BlockNetwork whose stem reads token ids [N, T] and whose head gives logits [N, T, V])."""
    infos = net.block_infos()
    for plan in plans:
        validate(plan, infos)
    for c in continuations:
        if not c.tokens or not 0 <= c.row < len(rows) or len(c.tokens) > len(rows[c.row]):
            raise ValueError(f"a continuation of {len(c.tokens)} tokens cannot be scored in row {c.row}")
    device = torch.device(device) if device is not None else default_device()
    precision = precision or default_precision(device)
    net.eval().to(device)
    if not plans or not continuations:
        empty = torch.zeros(len(plans), len(continuations))
        return Likelihoods(empty.double(), empty.bool())
    trie = PlanTrie.build(plans, infos)
    chunks = _chunks(rows, continuations, chunk_tokens or default_chunk_tokens(device), device)
    with torch.inference_mode(), autocast_for(device, precision):
        vocabulary = net.head(net.stem(chunks[0].ids[:1, :1])).shape[-1]
        leaves = _Leaves(net, len(plans), len(continuations), vocabulary, device)
        for chunk in chunks:
            leaves.chunk = chunk
            walk(net, trie.root, net.stem(chunk.ids), leaves.leaf)
    first_of = first_plans(trie.root)
    first = [first_of[i] for i in range(len(plans))]   # identical plans share their leaf's sums
    return Likelihoods(leaves.loglikelihood[first].cpu(), (leaves.misses[first] == 0).cpu())

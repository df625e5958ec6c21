"""How far a lesioned language model's next-token predictions move from the intact model's (Lad et al., "The
Remarkable Robustness of LLMs"; Csordas et al.): at every scored position, KL(intact || plan) in nats, whether
the two argmaxes agree, and the entropy of the plan's next-token distribution; with the next-token loss and
accuracy (loss.py's definitions) read from the same log-probabilities, so one softmax per position serves all.

A vocabulary of 256k tokens makes a chunk's logits larger than its activations by far, so they are never whole:
the head runs on slices of ``slice_length(V, budget)`` positions (S x V <= budget logits for V <= budget). What
one slice holds at its peak is five float32 [S, V] tensors (the intact model's log-probabilities and
probabilities, the plan's logits, log-probabilities and probabilities; then, the logits freed, one product at a
time), i.e. at most 20 x max(budget, V) bytes, whatever the chunk, the number of plans and the vocabulary.
Larger slices run the head faster (its weight is read once a slice: on 2 shared CPU cores 64 positions of a 128k
vocabulary cost 2.3x as much per position as 512), hence the CPU's budget: the logits a whole chunk had before
slicing (2**19 activations) for a vocabulary 32 times the width (Llama-3-8B's 128k over 4096).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workloads.surgery.loss import summed_log_probs

# logits per slice: 64 MiB (CPU: S=128 positions at a 128k vocabulary) or 128 MiB (GPU: S=256) a float32 tensor
LOGIT_BUDGET = {"cpu": 1 << 24, "cuda": 1 << 25}
# the sums a slice gives, in this order (float64: a count is exact below 2**53)
SUMS = ("loss", "correct", "kl", "agreement", "entropy")


def default_logit_budget(device: torch.device) -> int:
    return LOGIT_BUDGET.get(device.type, LOGIT_BUDGET["cuda"])


def slice_length(vocabulary: int, budget: int) -> int:
    """Positions per slice: as many as keep one [S, V] tensor within ``budget`` elements, at least one."""
    return max(1, budget // vocabulary)


@dataclass(frozen=True)
class Reference:
    """The intact model's next-token distribution on one slice of positions."""

    log_probs: torch.Tensor   # [S, V] float32
    probs: torch.Tensor       # [S, V] float32
    argmax: torch.Tensor      # [S]
    plogp: torch.Tensor       # [S] float32: sum_v p_v log p_v, the first term of every plan's KL

    @classmethod
    def of(cls, head: nn.Module, hidden: torch.Tensor) -> "Reference":
        """From the intact model's final hidden state of the slice."""
        logits = head(hidden).flatten(0, -2)
        argmax = logits.argmax(1)
        logits = logits.float()
        log_probs, probs = F.log_softmax(logits, 1), F.softmax(logits, 1)
        del logits
        return cls(log_probs, probs, argmax, (probs * log_probs).sum(1))


def slice_sums(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor,
               reference: Reference | None) -> torch.Tensor:
    """The SUMS of one slice of positions (the plan's final hidden state there and the next tokens) as a float64
    tensor [5] left on the device; kl, agreement and entropy are 0 without a reference (not asked for)."""
    logits = head(hidden).flatten(0, -2)
    labels = labels.flatten()
    predictions = logits.argmax(1)
    logits = logits.float()  # under bf16 a copy, the bf16 logits freed
    log_probs = F.log_softmax(logits, 1)
    probs = F.softmax(logits, 1) if reference is not None else None  # not exp(log_probs): denormals, 4x slower
    del logits
    loss, correct = summed_log_probs(log_probs, predictions, labels)
    out = torch.zeros(len(SUMS), dtype=torch.float64, device=labels.device)
    out[0], out[1] = loss, correct
    if reference is None:
        return out
    # KL(p || q) = sum_v p_v log p_v - sum_v p_v log q_v per position in float32 (exactly 0 where q is p), then
    # summed over positions in float64; products elementwise, never a matmul a bf16 autocast would round
    out[2] = (reference.plogp - (reference.probs * log_probs).sum(1)).double().sum()
    out[3] = (predictions == reference.argmax).sum()
    out[4] = -(probs * log_probs).sum(1).double().sum()
    return out

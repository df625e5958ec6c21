"""How far a lesioned language model's next-token predictions move from the intact model's (Lad et al., "The
Remarkable Robustness of LLMs"; Csordas et al.): at every scored position, KL(intact || plan) in nats, whether
the two argmaxes agree, and the entropy of the plan's next-token distribution; with the next-token loss and
accuracy (loss.py's definitions) read from the same log-probabilities, so one softmax per position serves all.

A vocabulary of 256k tokens makes a chunk's logits larger than its activations by far, so they are never whole:
the head runs on slices of ``slice_length(V, budget)`` positions (S x V <= budget logits for V <= budget). What
one slice holds at its peak is five float32 [S, V] tensors (the intact model's log-probabilities and
probabilities, the plan's logits, their log-probabilities, and one temporary: the logits' float32 copy under
bf16, then the KL's, then the entropy's), i.e. at most 20 x max(budget, V) bytes, whatever the chunk, the number
of plans and the vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workloads.surgery.loss import summed_log_probs

# logits per slice: 16 MiB (CPU: S=32 positions at a 128k vocabulary) or 128 MiB (GPU: S=256) a float32 tensor
LOGIT_BUDGET = {"cpu": 1 << 22, "cuda": 1 << 25}
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

    @classmethod
    def of(cls, logits: torch.Tensor) -> "Reference":
        logits = logits.flatten(0, -2).float()
        log_probs = F.log_softmax(logits, 1)
        return cls(log_probs, log_probs.exp(), logits.argmax(1))


def slice_sums(logits: torch.Tensor, labels: torch.Tensor, reference: Reference | None) -> torch.Tensor:
    """The SUMS of one slice (logits [..., V] and labels of its positions) as a float64 tensor [5] left on the
    device; kl, agreement and entropy are 0 without a reference (not asked for)."""
    logits, labels = logits.flatten(0, -2), labels.flatten()
    predictions = logits.argmax(1)
    log_probs = F.log_softmax(logits.float(), 1)
    loss, correct = summed_log_probs(log_probs, predictions, labels)
    out = torch.zeros(len(SUMS), dtype=torch.float64, device=labels.device)
    out[0], out[1] = loss, correct
    if reference is None:
        return out
    # KL(p || q) = sum_v p_v (log p_v - log q_v), per position in float32, then summed over positions in float64
    gap = reference.log_probs - log_probs
    out[2] = gap.mul_(reference.probs).sum(1).double().sum()
    del gap
    out[3] = (predictions == reference.argmax).sum()
    plogp = log_probs.exp().mul_(log_probs)
    out[4] = -plogp.sum(1).double().sum()
    return out

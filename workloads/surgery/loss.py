"""One definition of loss and accuracy, shared by the engine, its references and the gradients.

Images give logits [N, C] for labels [N]; a language model gives logits [N, T, V] for labels [N, T] (the next
token at every position). Both are scored as classifications of every labelled position: a token sequence
counts as T examples, so the loss is the mean next-token cross-entropy and the error 1 - next-token accuracy.
Every caller goes through here, so the engine and what it is checked against cannot drift apart.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def positions(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [P, classes], labels [P]): one row per labelled position (images: P = N; tokens: P = N x T)."""
    return logits.flatten(0, -2), labels.flatten()


def summed(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (float64) and correct count of a batch, left on its device (no sync)."""
    logits, labels = positions(logits.float(), labels)
    return summed_log_probs(F.log_softmax(logits, 1), logits.argmax(1), labels)


def summed_log_probs(log_probs: torch.Tensor, predictions: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``summed`` from log-probabilities [P, classes] a caller already has (and the logits' argmax [P]): the
    cross-entropy exactly as F.cross_entropy computes it (log_softmax, then nll_loss), bit for bit."""
    return F.nll_loss(log_probs, labels, reduction="sum").double(), (predictions == labels).sum()


def mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions, in the logits' dtype (the gradients' loss)."""
    return F.cross_entropy(*positions(logits, labels))



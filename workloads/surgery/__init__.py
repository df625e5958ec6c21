"""Test-time surgery: deletion (of blocks, or of spans of layers) and reordering plans, the plan-trie engine (and
its continuation loglikelihoods for lm-eval's requests), one-forward importance proxies, gradients by path length,
and the gates of gated shortcuts."""
from workloads.surgery.evaluate import PlanResult, evaluate_plans, evaluate_plans_over, forward_plan, recalibrated_copy
from workloads.surgery.gates import GateStatistics, gate_statistics, gated_blocks
from workloads.surgery.gradients import GradientResult, choose_blocks, draw_batch, gradient_norms, naive_gradient_norm
from workloads.surgery.likelihood import Continuation, Likelihoods, continuation_loglikelihoods
from workloads.surgery.plan import (Plan, PlanError, delete_blocks, delete_span, deletion_pool, intact, layer_spans, layer_units,
                   permutation_prefix, random_deletion, random_swaps, swap_pairs, validate)
from workloads.surgery.proxies import POSITIONS, ProxyScores, proxy_scores
from workloads.surgery.trie import PlanTrie

__all__ = ["Plan", "PlanError", "PlanResult", "PlanTrie", "Continuation", "GateStatistics", "GradientResult", "Likelihoods",
           "choose_blocks", "continuation_loglikelihoods",
           "delete_blocks", "delete_span", "deletion_pool", "draw_batch", "evaluate_plans", "evaluate_plans_over",
           "forward_plan", "gate_statistics", "gated_blocks", "gradient_norms", "intact", "layer_spans", "layer_units",
           "naive_gradient_norm", "permutation_prefix", "POSITIONS", "ProxyScores", "proxy_scores",
           "random_deletion", "random_swaps", "recalibrated_copy", "swap_pairs", "validate"]

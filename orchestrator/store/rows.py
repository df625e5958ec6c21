"""The row constructors: the one place each table's rows are made, from the objects that produced them
(a trial, a plan and its result, a gradient, a gate, a failure)."""
from __future__ import annotations

import math
import time

from orchestrator.store.schemas import SCHEMAS


def run_row(trial, *, dataset: str, iterations: int, epochs: int, test_error: float, test_loss: float,
            num_blocks: int, parameters: int, checkpoint: str, train_seconds: float) -> dict:
    """A runs row for a trial (``orchestrator.experiment.resolved.Trial``), trained here or imported."""
    return {"run_id": trial.run_id, "label": trial.label, "network": trial.network, "variant": trial.variant,
            "mode": trial.mode, "seed": trial.seed, "dataset": dataset, "iterations": iterations, "epochs": epochs,
            "test_error": test_error, "test_loss": test_loss, "num_blocks": num_blocks, "parameters": parameters,
            "checkpoint": checkpoint, "train_seconds": train_seconds, "net_config": trial.net_config.to_json(),
            "train_config": trial.train_config.to_json() if trial.train_config else ""}


def epoch_rows(run_id: str, history: list[dict]) -> list[dict]:
    """The epochs rows of one run, from the history its training loop kept."""
    return [{"run_id": run_id, **{k: m[k] for k in SCHEMAS["epochs"].names if k != "run_id"}} for m in history]


def lesion_row(unit, plan, result, *, test_rule: str, precision: str, bn_recalibrated: bool, seconds: float,
               metric: str = "classification") -> dict:
    """A lesion row: one plan (``workloads.surgery.Plan``) evaluated on the test set, under the run's test-time
    rule ("" where its mode needs none). ``metric`` next_token: error, loss and examples count the predicted
    tokens of a text (error = 1 - next-token accuracy), perplexity is exp(loss), and the result's divergence
    from the intact model fills kl_from_intact, agreement_with_intact and entropy (None for images)."""
    language = metric == "next_token"
    return {"unit_key": unit.key, "k": unit.k, "draw": unit.draw, "deleted": sorted(plan.deleted),
            "order": list(plan.order), "kendall_tau": plan.kendall_tau, "active_blocks": plan.active_blocks,
            "error": result.error, "loss": result.loss, "examples": result.examples, "precision": precision,
            "bn_recalibrated": bn_recalibrated, "seconds": seconds, "test_rule": test_rule, "metric": metric,
            "perplexity": math.exp(min(result.loss, 700.0)) if language else float("nan"),
            "kl_from_intact": result.kl, "agreement_with_intact": result.agreement, "entropy": result.entropy}


def gradient_row(unit, result, *, seconds: float) -> dict:
    """A gradients row: one draw's log10 gradient norm at path length k."""
    return {"unit_key": unit.key, "k": result.k, "draw": unit.draw, "chosen": list(result.chosen),
            "log10_norm": result.log10_norm, "batch_size": result.batch_size, "seconds": seconds}


def gate_row(unit, stats, *, seconds: float) -> dict:
    """A gates row: one gated block's gate over the test set (``workloads.surgery.GateStatistics``);
    ``seconds`` is the row's share of its unit, so a run's rows sum to the time of its one pass."""
    return {"unit_key": unit.key, "block": stats.block, "stage": stats.stage, "changes_shape": stats.changes_shape,
            "gate_mean": stats.mean, "gate_std": stats.std, "gate_p10": stats.p10, "gate_p90": stats.p90,
            "branch_weight": stats.branch_weight, "shortcut_weight": stats.shortcut_weight,
            "examples": stats.examples, "seconds": seconds}


# the per-unit lists of ``workloads.surgery.ProxyScores``, each a proxy of the proxies table
UNIT_PROXIES = ("block_influence", "relative_magnitude", "cosine")


def proxy_rows(unit, scores, *, seconds: float) -> list[dict]:
    """The proxies rows of one run's intact pass (``workloads.surgery.ProxyScores``): one per deletable unit and
    per-unit proxy (start the unit, length 1; a unit that cannot be deleted has no score), one per span's angular
    distance (start its first layer, length its layers); ``seconds`` is each row's share of the pass, so a run's
    rows sum to its time."""
    values = [(proxy, b, 1, getattr(scores, proxy)[b]) for proxy in UNIT_PROXIES for b in scores.units]
    values += [("angular_distance", start, length, v) for (start, length), v in sorted(scores.angular.items())]
    share = seconds / max(1, len(values))
    return [{"unit_key": unit.key, "proxy": proxy, "start": start, "length": length, "positions": scores.positions,
             "value": float(v), "examples": scores.examples, "seconds": share} for proxy, start, length, v in values]


def task_rows(unit, plan, scores, task: str, *, precision: str, seconds: float) -> list[dict]:
    """The tasks rows of one plan (``workloads.surgery.Plan``) scored on one task (``workloads.tasks.TaskScores``):
    one per metric and filter; ``stderr`` null where lm-eval gives none, ``seconds`` the unit's time."""
    head = {"unit_key": unit.key, "plan": unit.plan, "k": unit.k, "draw": unit.draw, "deleted": sorted(plan.deleted),
            "order": list(plan.order), "active_blocks": plan.active_blocks, "task": task}
    return [{**head, "metric": m.metric, "filter": m.filter, "value": m.value, "stderr": m.stderr,
             "documents": scores.documents, "num_fewshot": scores.num_fewshot, "precision": precision,
             "seconds": seconds, "test_rule": unit.test_rule} for m in scores.metrics]


def task_sample_rows(unit, plan, scores, task: str) -> list[dict]:
    """The task_samples rows of one plan on one task: per document, whether the plan answered it right (null for a
    perplexity task) and the gold answer's loglikelihood (a perplexity task: the document's)."""
    head = {"unit_key": unit.key, "plan": unit.plan, "k": unit.k, "draw": unit.draw, "deleted": sorted(plan.deleted),
            "task": task}
    return [{**head, "doc_id": s.doc_id, "correct": s.correct, "gold_loglikelihood": s.gold_loglikelihood}
            for s in scores.samples]


def error_row(unit, exc: BaseException | str, traceback: str = "") -> dict:
    """An errors row: one failed attempt at a unit (errors are history: attempts add rows); ``exc`` an exception,
    or its 'SomeError: message' line as text (one raised in another process)."""
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:2000]}"
    return {"unit_key": unit.key, "run_id": unit.run_id, "study": unit.study, "k": unit.k, "draw": unit.draw,
            "error": error[:2100], "traceback": traceback[-4000:], "time": time.time()}

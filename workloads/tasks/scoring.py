"""Task scores of many plans from one engine pass: lm-eval's own filters, metrics and aggregation on the
engine's answers.

The engine (``continuation_loglikelihoods``) answers every request of a task under every plan at once; then, per
plan, lm-eval's ``evaluate`` runs with a thin ``LM`` that returns that plan's answers, so the scores are lm-eval's
in every respect but where the loglikelihoods came from. No request cache is shared between plans (lm-eval's
``use_cache`` keys ignore the model).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

from workloads.models.blocks import BlockNetwork
from workloads.surgery.likelihood import continuation_loglikelihoods
from workloads.surgery.plan import Plan
from workloads.tasks.config import TaskConfig, TaskError
from workloads.tasks.loading import quiet
from workloads.tasks.requests import BUILD_OPTIONS, TaskRequests


@dataclass(frozen=True)
class TaskMetric:
    metric: str
    filter: str
    value: float
    stderr: float | None     # None where lm-eval gives none


@dataclass(frozen=True)
class TaskSample:
    doc_id: int
    correct: bool | None     # None for perplexity tasks
    gold_loglikelihood: float   # the gold choice's (perplexity tasks: the document's total) loglikelihood


@dataclass(frozen=True)
class TaskScores:
    metrics: list[TaskMetric]
    samples: list[TaskSample]
    documents: int
    num_fewshot: int


@functools.cache
def _answers_class():
    from lm_eval.api.model import LM

    class Answers(LM):
        """An LM that answers lm-eval's requests from one plan's precomputed loglikelihoods."""

        def __init__(self, answers: dict):
            super().__init__()
            self.answers = answers

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [self.answers[("loglikelihood", r.args)] for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [self.answers[("loglikelihood_rolling", r.args)] for r in requests]

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise TaskError(f"task {requests[0].task_name}: generate_until is out of scope here")

    return Answers


def _metrics(results: dict) -> list[TaskMetric]:
    out = []
    for key, value in results.items():
        if key == "alias" or "," not in key or "_stderr," in key:
            continue
        metric, filter_ = key.split(",", 1)
        stderr = results.get(f"{metric}_stderr,{filter_}")
        out.append(TaskMetric(metric, filter_, float(value),
                              float(stderr) if isinstance(stderr, (int, float)) else None))
    return out


def _gold(task, example: dict) -> int:
    """The gold choice's index, as lm-eval's process_results reads it (a choice's text, or the first of several)."""
    target = example["target"]
    if isinstance(target, list):
        target = target[0]
    if isinstance(target, str):
        return task.doc_to_choice(example["doc"]).index(target)
    return int(target)


def _samples(task, output_type: str, examples: list[dict]) -> list[TaskSample]:
    first_filter = examples[0]["filter"] if examples else None
    out = []
    for ex in examples:
        if ex["filter"] != first_filter:
            continue
        responses = ex["resps"]
        if output_type == "loglikelihood_rolling":
            out.append(TaskSample(int(ex["doc_id"]), None, float(responses[0][0])))
        elif output_type == "multiple_choice":
            out.append(TaskSample(int(ex["doc_id"]), bool(ex["acc"]), float(responses[_gold(task, ex)][0][0])))
        else:   # loglikelihood: one request, right when its continuation is the greedy one
            loglikelihood, greedy = responses[0][0]
            out.append(TaskSample(int(ex["doc_id"]), bool(ex.get("acc", greedy)), float(loglikelihood)))
    return sorted(out, key=lambda s: s.doc_id)


def score_tasks(net: BlockNetwork, plans: Sequence[Plan], requests: TaskRequests, config: TaskConfig, *,
                device=None, precision: str | None = None) -> list[TaskScores]:
    """One TaskScores per plan: lm-eval's metrics (each with its filter and stderr) and per-document results
    of the task in ``requests`` (from ``task_requests``), every plan's requests answered in one engine pass."""
    from lm_eval.evaluator import evaluate
    likelihoods = continuation_loglikelihoods(net, plans, requests.rows, requests.continuations,
                                              device=device, precision=precision)
    loglikelihood, greedy = likelihoods.loglikelihood.tolist(), likelihoods.greedy.tolist()
    task = requests.lm_task
    out = []
    for p in range(len(plans)):
        answers = {}
        for key, conts in requests.answers.items():
            if key[0] == "loglikelihood_rolling":
                answers[key] = sum(loglikelihood[p][c] for c in conts)
            else:
                answers[key] = (loglikelihood[p][conts[0]], greedy[p][conts[0]])
        task.set_fewshot_seed(seed=config.fewshot_seed)   # the same fewshot draws as task_requests
        with quiet():
            results = evaluate(lm=_answers_class()(answers), task_dict={"tasks": {requests.task: task}},
                               limit=config.limit, bootstrap_iters=config.bootstrap_iters, log_samples=True,
                               cache_requests=BUILD_OPTIONS["cache_requests"],
                               fewshot_as_multiturn=BUILD_OPTIONS["fewshot_as_multiturn"])
        out.append(TaskScores(_metrics(results["results"][requests.task]),
                              _samples(task, requests.output_type, results["samples"][requests.task]),
                              requests.documents, requests.num_fewshot))
    return out

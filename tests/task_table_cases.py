"""Tasks tables of a fake language run (beside ``language_cases.write_language_tables``' lesion tables): every plan of
the run's lesion table scored on tasks whose per-document answers the test chooses, written with the store's
writer as the tasks study writes them."""
from __future__ import annotations

import math
from typing import Callable

from orchestrator import store

# a plan as the scorer sees it: (plan, k, draw, deleted units) -> its accuracy (a fraction of the documents)
Scorer = Callable[[str, int, int, list[int]], float]


def write_task_tables(out, run_id: str, tasks: dict[str, Scorer], documents: int = 40,
                      perplexity_task: str | None = None) -> None:
    """For each task, every plan of ``run_id``'s lesion table (its intact plan included) answers the first
    round(accuracy x ``documents``) documents right and the rest wrong, so a plan's discordant documents against
    the intact model all go one way; metrics acc and acc_norm (filter none) with a binomial stderr.
    ``perplexity_task``: a task with a word_perplexity metric and no per-document correctness."""
    lesion = store.read_parts(out, "lesion")
    plans = [(s, int(k), int(d), [int(x) for x in deleted])
             for s, k, d, deleted in lesion.loc[lesion["run_id"] == run_id, ["study", "k", "draw", "deleted"]]
             .itertuples(index=False)]

    def key(plan, k, draw, task):
        return f"{run_id}-tasks-{plan}-{k}-{draw}-{task}"

    for task, score in tasks.items():
        rows, samples = [], []
        for plan, k, draw, deleted in plans:
            acc = score(plan, k, draw, deleted)
            right = round(acc * documents)
            stderr = math.sqrt(acc * (1 - acc) / (documents - 1))
            rows += [{"unit_key": key(plan, k, draw, task), "plan": plan, "k": k, "draw": draw, "deleted": deleted,
                      "order": [], "active_blocks": 0, "task": task, "metric": metric, "filter": "none",
                      "value": right / documents, "stderr": stderr, "documents": documents, "num_fewshot": 0,
                      "precision": "fp32", "seconds": 0.02, "test_rule": ""} for metric in ("acc", "acc_norm")]
            samples += [{"unit_key": key(plan, k, draw, task), "plan": plan, "k": k, "draw": draw, "deleted": deleted,
                         "task": task, "doc_id": doc, "correct": doc < right,
                         "gold_loglikelihood": -1.0 if doc < right else -3.0} for doc in range(documents)]
        store.write_part(out, "task_samples", "tasks", run_id, f"{run_id}-{task}", samples)
        store.write_part(out, "tasks", "tasks", run_id, f"{run_id}-{task}", rows)
    if perplexity_task:
        rows = [{"unit_key": key(plan, k, draw, perplexity_task), "plan": plan, "k": k, "draw": draw,
                 "deleted": deleted, "order": [], "active_blocks": 0, "task": perplexity_task,
                 "metric": "word_perplexity", "filter": "none", "value": 20.0 + 5 * k, "stderr": None,
                 "documents": 4, "num_fewshot": 0, "precision": "fp32", "seconds": 0.02, "test_rule": ""}
                for plan, k, draw, deleted in plans]
        samples = [{"unit_key": r["unit_key"], "plan": r["plan"], "k": r["k"], "draw": r["draw"],
                    "deleted": r["deleted"], "task": perplexity_task, "doc_id": doc, "correct": None,
                    "gold_loglikelihood": -40.0} for r in rows for doc in range(4)]
        store.write_part(out, "task_samples", "tasks", run_id, f"{run_id}-{perplexity_task}", samples)
        store.write_part(out, "tasks", "tasks", run_id, f"{run_id}-{perplexity_task}", rows)

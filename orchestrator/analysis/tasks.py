"""Task accuracy through lm-evaluation-harness: each plan's accuracy on each task, and which deletions hurt it.

The tasks study scores a language model's plans (intact, single units, spans, random deletions) on lm-eval's
tasks: the ``tasks`` table holds lm-eval's own metrics per plan, ``task_samples`` whether each document was
answered right, so a plan is compared with the intact model on the same documents. A task's accuracy is
lm-eval's ``acc`` (``acc_norm`` where a task reports no ``acc``), under its ``none`` filter; a task without one (a
perplexity task) is listed with its metrics, never plotted as an accuracy.

A plan against the intact model: McNemar's exact test on the discordant documents (right by the intact model
alone against right by the plan alone), Holm's correction over every plan of the run scored on the task. A
plan "significantly hurts" the task when its adjusted p is below SIGNIFICANCE and the intact model is right
alone more often; "not resolved" when the documents cannot separate the two.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from orchestrator.analysis.prose import markdown_table, plural
from orchestrator.analysis.results import SUBLAYER_KINDS, Results, Structure
from orchestrator.analysis.stats import holm, mcnemar_exact

ACCURACY_METRICS = ("acc", "acc_norm")   # lm-eval's accuracy of a multiple-choice task, in this preference
PLAIN_FILTER = "none"                    # lm-eval's filter of loglikelihood tasks: the answers as scored
SIGNIFICANCE = 0.05                      # family-wise level of the paired tests (Holm)
PLAN = ["run_id", "plan", "k", "draw"]   # what names a plan across tables (the lesion table's study is its plan)


def task_runs(results: Results) -> list[str]:
    """The runs with task scores, in the runs table's order."""
    scored = set(results.tasks["run_id"]) if len(results.tasks) else set()
    return [r for r in results.runs["run_id"] if r in scored]


def accuracy(results: Results) -> pd.DataFrame:
    """A row per (plan, task) with an accuracy: PLAN, deleted, task, metric (acc or acc_norm), accuracy (a
    fraction), stderr, documents, for the runs of the runs table. A run and task take one metric for all their
    plans."""
    t = results.tasks
    columns = [*PLAN, "deleted", "task", "metric", "accuracy", "stderr", "documents"]
    if not len(t):
        return pd.DataFrame(columns=columns)
    t = t[t["metric"].isin(ACCURACY_METRICS) & (t["filter"] == PLAIN_FILTER) & t["run_id"].isin(results.runs["run_id"])]
    chosen = (t.assign(rank=t["metric"].map(ACCURACY_METRICS.index)).groupby(["run_id", "task"])["rank"].min()
              .map(lambda i: ACCURACY_METRICS[i]).rename("chosen").reset_index())
    t = t.merge(chosen, on=["run_id", "task"])
    t = t[t["metric"] == t["chosen"]].rename(columns={"value": "accuracy"})
    return t[columns].astype({"k": int, "draw": int}).reset_index(drop=True)


def intact_accuracy(results: Results) -> dict[tuple[str, str], float]:
    """(run, task) -> the intact model's accuracy."""
    a = accuracy(results)
    a = a[a["plan"] == "intact"]
    return {(r, t): float(v) for r, t, v in zip(a["run_id"], a["task"], a["accuracy"])}


def plan_measures(results: Results) -> pd.DataFrame:
    """The lesion table's measures of each plan, by PLAN: next-token loss, and KL from the intact model where the
    lesion table has it (nan in parts written before it did)."""
    lesion = results.lesion
    if not len(lesion):
        return pd.DataFrame(columns=[*PLAN, "loss", "kl"])
    frame = pd.DataFrame({"run_id": lesion["run_id"], "plan": lesion["study"], "k": lesion["k"].astype(int),
                          "draw": lesion["draw"].astype(int), "loss": lesion["loss"].astype(float)})
    frame["kl"] = lesion["kl_from_intact"].astype(float) if "kl_from_intact" in lesion else np.nan
    return frame.drop_duplicates(PLAN)


def paired_documents(results: Results, run_id: str, task: str, plans: pd.DataFrame | None = None
                     ) -> tuple[np.ndarray, pd.DataFrame]:
    """The documents every plan of ``plans`` (rows with PLAN's plan, k, draw; default: all of the run's) and the
    intact model answered, as (intact correct [documents], plans' correct [plans x documents], indexed by
    (plan, k, draw)); empty where the task has no per-document correctness (a perplexity task)."""
    s = results.task_samples
    if not len(s):
        return np.zeros(0, bool), pd.DataFrame()
    s = s[(s["run_id"] == run_id) & (s["task"] == task) & s["correct"].notna()]
    table = s.pivot_table(index=["plan", "k", "draw"], columns="doc_id", values="correct", aggfunc="first")
    if ("intact", 0, 0) not in table.index:
        return np.zeros(0, bool), pd.DataFrame()
    if plans is not None:
        wanted = pd.MultiIndex.from_frame(plans[["plan", "k", "draw"]].astype({"k": int, "draw": int}))
        table = table.loc[[("intact", 0, 0), *[p for p in wanted if p in table.index]]]
    table = table.dropna(axis=1).astype(bool)
    return table.loc[("intact", 0, 0)].to_numpy(), table.drop(index=("intact", 0, 0))


def paired_tests(results: Results, run_id: str, task: str) -> pd.DataFrame:
    """Every plan of ``run_id`` against the intact model on ``task``, over the documents both answered: accuracy
    of each, documents right by the intact model alone (``hurt``) and by the plan alone (``helped``), McNemar's
    exact p, Holm's adjusted p over the run's plans on the task, and the outcome: hurts | helps | not resolved."""
    intact, plans = paired_documents(results, run_id, task)
    rows = []
    for (plan, k, draw), correct in plans.iterrows():
        correct = correct.to_numpy(bool)
        hurt, helped = int((intact & ~correct).sum()), int((~intact & correct).sum())
        rows.append({"plan": plan, "k": int(k), "draw": int(draw), "documents": len(intact),
                     "accuracy": float(correct.mean()), "intact": float(intact.mean()), "hurt": hurt,
                     "helped": helped, "p": mcnemar_exact(hurt, helped)})
    frame = pd.DataFrame(rows, columns=["plan", "k", "draw", "documents", "accuracy", "intact", "hurt", "helped",
                                        "p"])
    frame["p_holm"] = holm(frame["p"]) if len(frame) else []
    frame["outcome"] = np.where(frame["p_holm"] >= SIGNIFICANCE, "not resolved",
                                np.where(frame["hurt"] > frame["helped"], "hurts", "helps"))
    return frame


def _layers(start: int, length: int) -> str:
    return f"layer {start + 1}" if length == 1 else f"layers {start + 1}-{start + length}"


def plan_text(structure: Structure, plan: str, k: int, draw: int, deleted=()) -> str:
    """A plan in words: ``unit 3 (layer 2 attention)``, ``layers 2-3``, ``4 random units (draw 7)``."""
    if plan == "single_deletion":
        return structure.units_text(list(deleted) or [draw])
    if plan == "span_deletion":
        return _layers(draw, k)
    if plan == "random_deletion":
        return f"{plural(k, 'random unit')} (draw {draw})"
    if plan == "reorder":
        return f"{plural(k, 'swap')} (draw {draw})"
    return plan


def unit_kind(structure: Structure, unit: int) -> str:
    """The unit's kind as the report names it: attention, MLP (or what the network calls it)."""
    kind = structure.kinds[unit] if structure.kinds else "unit"
    return SUBLAYER_KINDS.get(kind, kind)


def _metrics_table(results: Results, runs: list[str]) -> pd.DataFrame:
    t = results.tasks[(results.tasks["plan"] == "intact") & results.tasks["run_id"].isin(runs)]
    return pd.DataFrame([{"model": results.name(r.run_id), "task": r.task, "metric": r.metric, "filter": r.filter,
                          "intact": f"{r.value:.4f}",
                          "stderr": "-" if not np.isfinite(r.stderr) else f"{r.stderr:.4f}",
                          "documents": int(r.documents), "few-shot": int(r.num_fewshot)}
                         for r in t.sort_values(["task", "metric", "filter"]).itertuples()])


INDIVIDUAL = ("single_deletion", "span_deletion")   # plans named one by one; random draws are counted per k


def _hurt_lines(results: Results, run_id: str, task: str) -> list[str]:
    tests = paired_tests(results, run_id, task)
    if not len(tests):
        return [f"- {results.name(run_id)}, {task}: no per-document correctness to compare plans on"]
    structure = results.structure(run_id)
    acc = accuracy(results)
    acc = acc[(acc["run_id"] == run_id) & (acc["task"] == task)]
    deleted = {(p, k, d): list(x) for p, k, d, x in acc[["plan", "k", "draw", "deleted"]].itertuples(index=False)}
    hurts = tests[tests["outcome"] == "hurts"].sort_values(["accuracy", "plan", "k", "draw"])
    named = hurts[hurts["plan"].isin(INDIVIDUAL)]
    words = [f"{plan_text(structure, p, k, d, deleted.get((p, k, d), []))} ({100 * (a - i):+.1f} points, "
             f"adjusted p {q:.2g})" for p, k, d, a, i, q in named[["plan", "k", "draw", "accuracy", "intact",
                                                                 "p_holm"]].itertuples(index=False)]
    for plan, group in tests[~tests["plan"].isin(INDIVIDUAL)].groupby("plan"):
        counts = [f"k={k}: {int((g['outcome'] == 'hurts').sum())} of {len(g)}" for k, g in group.groupby("k")
                  if (g["outcome"] == "hurts").any()]
        if counts:
            words.append(f"{plan.replace('_', ' ')}s, draws per k that hurt it: {', '.join(counts)}")
    line = (f"- {results.name(run_id)}, {task} ({plural(len(tests), 'plan')} over "
            f"{plural(int(tests['documents'].iloc[0]), 'document')}): "
            + (f"significantly hurt by {plural(len(hurts), 'plan')}: {'; '.join(words)}" if len(hurts)
               else "no deletion significantly hurts it"))
    helps = int((tests["outcome"] == "helps").sum())
    unresolved = int((tests["outcome"] == "not resolved").sum())
    line += f"; {plural(helps, 'plan')} significantly help" if helps else ""
    line += f"; not resolved: {plural(unresolved, 'plan')}" if unresolved else ""
    return [line]


def task_section(results: Results) -> list[str]:
    """lm-eval's metrics of each intact model, and per run and task the deletions that significantly hurt it."""
    runs = task_runs(results)
    if not runs:
        return []
    acc = accuracy(results)
    lines = ["## Task accuracy (lm-evaluation-harness)", "",
             "Each plan scored on lm-evaluation-harness's tasks, with its own task definitions, metrics and "
             "aggregation (stderr: lm-eval's). The intact models' metrics:", ""]
    lines += markdown_table(_metrics_table(results, runs)) + [""]
    lines += [f"Accuracy is lm-eval's `acc` (`acc_norm` where a task has no `acc`). Each plan against the intact "
              f"model on the same documents: McNemar's exact test on the documents one of the two gets right and the "
              f"other wrong (scipy's binomtest), Holm's correction over all the plans of a model scored on the task; "
              f"a deletion significantly hurts a task when its adjusted p is below {SIGNIFICANCE:g} and the intact "
              f"model is right alone more often; \"not resolved\": the documents cannot separate the plan from the "
              f"intact model at that level (more documents would).", ""]
    for r in runs:
        for task in sorted(set(acc.loc[acc["run_id"] == r, "task"])):
            lines += _hurt_lines(results, r, task)
    without = sorted(set(results.tasks.loc[results.tasks["run_id"].isin(runs), "task"]) - set(acc["task"]))
    if without:
        lines += [f"- no accuracy (perplexity tasks, their metrics above): {', '.join(without)}"]
    return lines + [""]

"""The tasks study on the orchestrator's side: its spec section and refusals, its units (a unit per plan of another
study and task, keys of their own, the other studies' keys unchanged), batches of one task, the tasks and
task_samples tables and their resume index, what `unravel plan` counts, the refusals before Ray starts, and one
sweep through the real CLI killed between a batch's two files and rerun, exactly once."""
from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from language_cases import save_word_tokenizer, write_corpus, write_llama_config
from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.resolved import ExperimentSpec
from orchestrator.experiment.spec import SpecError, parse_spec
from orchestrator.experiment.units import Unit, batch_count, batches, expand, plan_for, unit_groups
from orchestrator.planning.plan import Node, make_plan
from orchestrator.planning.rates import GivenRates
from orchestrator.planning.table import render
from orchestrator.store import query
from orchestrator.store.current import status
LAYERS = 3          # six units: attention and MLP of each layer
CHOICE_TASK = "tiny_mmlu"   # task_cases' task of MMLU's shape: four one-word choices


def save_llama(folder: Path, layers: int = 2, positions: int = 64, seed: int = 0) -> Path:
    """A Llama of ``layers`` layers with random weights and the word tokenizer, saved as save_pretrained does."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from language_cases import VOCAB
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                         initializer_range=0.2, bos_token_id=1, eos_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    save_word_tokenizer(folder)
    return Path(folder)


def write_tasks(folder: Path, documents: int = 4) -> Path:
    """task_cases' local tasks (lm-eval task YAMLs and their JSON-lines documents) in ``folder``."""
    from task_cases import write_tasks
    return write_tasks(folder, documents=documents)


def llama_spec(folder: Path, tasks: dict | None = None, **studies) -> dict:
    """A text spec of one Llama-layout model (its config.json: what a spec reads) with single deletions, spans of
    up to two layers and a tasks study."""
    model = folder / "llama"
    if not (model / "config.json").exists():
        write_llama_config(model, layers=LAYERS)
    return {"name": "llm-tasks", "data": {"dataset": "text", "root": str(folder / "corpus.txt"), "sequence_length": 8},
            "models": [{"network": "hf_causal_lm", "label": "llama", "checkpoint": str(model)}],
            "studies": {"single_deletion": {}, "span_deletion": {"max_length": 2},
                        "tasks": {"names": ["tiny_choice", "other"], "limit": 4} if tasks is None else tasks,
                        **studies}}


# -- the spec -----------------------------------------------------------------------------------------

def test_a_tasks_study_scores_intact_and_the_specs_deletion_studies_by_default(tmp_path):
    spec = parse_spec(llama_spec(tmp_path, random_deletion={"k_max": 2, "draws": 2}))
    study = spec.studies.study("tasks")
    assert study.runs == tuple(t.run_id for t in spec.runs)
    assert study.plans == ("intact", "single_deletion", "span_deletion", "random_deletion")   # reorder only if named
    config = study.tasks()
    assert (config.names, config.limit, config.num_fewshot, config.fewshot_seed) == (("tiny_choice", "other"), 4,
                                                                                      None, 1234)
    named = parse_spec(llama_spec(tmp_path, {"names": ["tiny_choice"], "plans": ["intact", "span_deletion"],
                                             "include_path": "tasks"}))
    assert named.studies.study("tasks").plans == ("intact", "span_deletion")
    assert Path(named.studies.study("tasks").tasks().include_path).is_absolute()   # as every node finds it
    record = json.loads(json.dumps(spec.record()))
    assert ExperimentSpec.from_record(record, spec.raw).studies == spec.studies    # OUT's spec.json reads it back


@pytest.mark.parametrize("tasks, message", [
    ({"names": ["a"], "plans": ["intact", "reorder"]},
     "studies.tasks.plans[1]: the spec has no study reorder (add studies.reorder: or leave reorder out)"),
    ({"names": ["a", "a"]}, "studies.tasks.names: has repeated tasks ['a', 'a']"),
    ({"names": []}, "studies.tasks.names: must hold at least 1 item"),
    ({"names": ["a"], "runs": ["nope"]}, "studies.tasks.runs[0]: no training run is labelled 'nope'"),
    ({"names": ["a"], "include_path": "s3://bucket/tasks"}, "studies.tasks.include_path: task YAMLs are read from a "
                                                            "local folder on every node"),
    ({"names": ["a"], "num_fewshot": -1}, "studies.tasks.num_fewshot: must be between 0"),
])
def test_tasks_spec_errors_name_the_field(tmp_path, tasks, message):
    with pytest.raises(SpecError) as e:
        parse_spec(llama_spec(tmp_path, tasks))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


# -- units and batches --------------------------------------------------------------------------------

def test_a_tasks_unit_per_plan_unit_and_task_with_keys_of_their_own(tmp_path):
    raw = llama_spec(tmp_path)
    spec = parse_spec(raw)
    units = expand(spec)
    lesion = [u for u in units if u.study != "tasks"]
    tasks = [u for u in units if u.study == "tasks"]
    spans = 3 + 2   # lengths 1 and 2 over three layers
    assert len(lesion) == 1 + 2 * LAYERS + spans
    for task in ("tiny_choice", "other"):   # every lesion unit of the run, on each task
        mine = [(u.plan, u.k, u.draw) for u in tasks if u.task == task]
        assert mine == [("intact" if u.study == "intact" else u.study, u.k, u.draw) for u in lesion]
    assert len({u.key for u in units}) == len(units)
    infos = spec.blocks_of(spec.runs[0])
    twins = {(u.study, u.k, u.draw): u for u in lesion}
    assert all(plan_for(u, infos, ()) == plan_for(twins[u.plan, u.k, u.draw], infos, ()) for u in tasks)

    without = dict(raw, studies={k: v for k, v in raw["studies"].items() if k != "tasks"})
    assert [u.key for u in expand(parse_spec(without))] == [u.key for u in lesion]   # other studies' keys unchanged
    one_more = json.loads(json.dumps(raw))
    one_more["studies"]["tasks"]["names"].append("third")
    grown = {u.key for u in expand(parse_spec(one_more))}
    assert {u.key for u in units} < grown                # adding a task computes only the new one
    fewer = json.loads(json.dumps(raw))
    fewer["studies"]["tasks"]["limit"] = 2
    changed = {u.key for u in expand(parse_spec(fewer)) if u.study == "tasks"}
    assert not changed & {u.key for u in tasks}          # another setting: other results


def test_batches_hold_one_task_and_plans_of_every_study(tmp_path):
    spec = parse_spec(llama_spec(tmp_path))
    work = [b for b in batches(expand(spec), 4) if b.study == "tasks"]
    assert all({u.task for u in b.units} == {b.task} and len(b.units) <= 4 for b in work)
    assert all(b.table == "tasks" and b.tables == ("task_samples", "tasks") for b in work)
    assert {u.plan for u in work[0].units} == {"intact", "single_deletion"}   # intact shares the first pass
    assert sum(len(b.units) for b in work) == 2 * 12
    assert batch_count(unit_groups(spec), 4) == len(batches(expand(spec), 4))


# -- the tables ---------------------------------------------------------------------------------------

def _scores(documents: int, deleted: int):
    from workloads.tasks import TaskMetric, TaskSample, TaskScores
    return TaskScores([TaskMetric("acc", "none", 0.6 - 0.1 * deleted, 0.2), TaskMetric("acc_norm", "none", 0.5, None)],
                      [TaskSample(d, d % 2 == 0, -1.0 - d) for d in range(documents)], documents, 0)


def test_task_rows_fill_both_tables_and_only_tasks_says_a_unit_is_written(tmp_path):
    spec = parse_spec(llama_spec(tmp_path))
    infos = spec.blocks_of(spec.runs[0])
    first, second = [b for b in batches(expand(spec), 4) if b.study == "tasks"][:2]
    out = tmp_path / "out"
    for batch, write_tasks in ((first, True), (second, False)):   # the second killed between its two files
        plans = [plan_for(u, infos, ()) for u in batch.units]
        samples = [r for u, p in zip(batch.units, plans)
                   for r in store.task_sample_rows(u, p, _scores(3, len(p.deleted)), batch.task)]
        store.write_part(out, "task_samples", "tasks", batch.run_id, batch.key, samples)
        if write_tasks:
            rows = [r for u, p in zip(batch.units, plans)
                    for r in store.task_rows(u, p, _scores(3, len(p.deleted)), batch.task, precision="fp32",
                                             seconds=0.5)]
            store.write_part(out, "tasks", "tasks", batch.run_id, batch.key, rows)
    assert store.done_keys(out) == {u.key for u in first.units}
    tasks = store.read_parts(out, "tasks")
    assert len(tasks) == 2 * len(first.units) and set(tasks["study"]) == {"tasks"}
    assert tasks["stderr"].isna().sum() == len(first.units)          # acc_norm: lm-eval gave none
    intact = tasks[tasks["plan"] == "intact"].set_index("metric")
    assert intact.loc["acc", "value"] == pytest.approx(0.6) and list(intact.loc["acc", "deleted"]) == []
    samples = store.read_parts(out, "task_samples")
    assert len(samples) == 3 * (len(first.units) + len(second.units)) and set(samples["doc_id"]) == {0, 1, 2}
    views = query.run(out, "select (select count(*) from tasks) as t, (select count(*) from task_samples) as s, "
                           "(select count(distinct unit_key) from task_samples where correct is null) as n", "csv")
    assert views.splitlines()[1] == f"{len(tasks)},{len(samples)},0"


def test_status_counts_tasks_units_by_the_tasks_table(tmp_path):
    spec = parse_spec(llama_spec(tmp_path))
    out = tmp_path / "out"
    batch = next(b for b in batches(expand(spec), 64) if b.study == "tasks")
    infos = spec.blocks_of(spec.runs[0])
    rows = [r for u in batch.units
            for r in store.task_rows(u, plan_for(u, infos, ()), _scores(2, 0), batch.task, precision="fp32",
                                     seconds=0.1)]
    store.write_part(out, "tasks", "tasks", batch.run_id, batch.key, rows)
    counts = {r["study"]: r for r in status(spec, out)}
    assert (counts["tasks"]["units"], counts["tasks"]["done"], counts["tasks"]["left"]) == (24, 12, 12)


# -- unravel plan -------------------------------------------------------------------------------------

def test_the_plan_counts_task_units_and_their_tokens(tmp_path):
    from workloads.data.text import load_tokenizer
    from workloads.tasks import task_requests
    tasks = write_tasks(tmp_path / "tasks")
    raw = llama_spec(tmp_path, {"names": [CHOICE_TASK], "include_path": str(tasks)})
    blind = make_plan(parse_spec(raw), [Node(2, 0)], "test", GivenRates())
    (row,) = blind["studies"]["tasks"]
    assert (row["plans"], row["tokens"]) == (12, None)               # no tokenizer in the model's folder
    assert "tokens unknown" in render(blind)
    save_word_tokenizer(tmp_path / "llama")
    spec = parse_spec(raw)
    doc = make_plan(spec, [Node(2, 0)], "test", GivenRates())
    (row,) = doc["studies"]["tasks"]
    requests = task_requests(spec.studies.study("tasks").tasks(), load_tokenizer(tmp_path / "llama"), 4096)
    per_plan = sum(r.tokens for r in requests)
    assert row == {"run_id": spec.runs[0].run_id, "task": CHOICE_TASK, "plans": 12,
                   "requests": sum(r.requests for r in requests), "tokens_per_plan": per_plan, "tokens": 12 * per_plan}
    assert {r["study"]: r["units"] for r in doc["studies"]["per_study"]}["tasks"] == 12
    assert f"task {CHOICE_TASK} on {spec.runs[0].run_id}: 12 plans, {per_plan:,} input tokens per plan" in render(doc)


# -- refused before Ray starts ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model = save_llama(folder / "model", layers=2)
    return model, write_corpus(folder / "corpus.txt", words=200), write_tasks(folder / "tasks")


def _cli_spec(tmp_path, model, corpus, tasks: dict, **data) -> Path:
    raw = {"name": "llm-tasks", "data": {"dataset": "text", "root": str(corpus), "sequence_length": 8, **data},
           "models": [{"network": "hf_causal_lm", "label": "llama", "checkpoint": str(model)}],
           "studies": {"single_deletion": {}, "span_deletion": {"max_length": 2}, "tasks": tasks,
                       "plans_per_batch": 3, "evaluators": {"count": 1, "cpu": 1}}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _refused(tmp_path, monkeypatch, path: Path) -> str:
    import orchestrator.run.cluster

    def no_ray(*args, **kwargs):
        raise AssertionError("the spec was accepted and the CLI went on to connect to Ray")
    monkeypatch.setattr(orchestrator.run.cluster, "connect", no_ray)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["lesion", str(path), "--out", str(out)])
    output = result.output.strip()
    assert result.exit_code == 2 and len(output.splitlines()) == 1, (result.exit_code, output, result.exception)
    assert not out.exists()
    return output


@pytest.mark.parametrize("name, task, words", [
    ("no_such_task", "", ["studies.tasks", "no_such_task"]),
    ("broken", "task: broken\ndataset_path: json\n  output_type: [unclosed\n", ["studies.tasks", "broken.yaml",
                                                                                "does not parse"]),
    ("hub", "task: hub\ndataset_path: some-org/some-dataset\noutput_type: multiple_choice\ntest_split: test\n"
            "doc_to_text: q\ndoc_to_choice: c\ndoc_to_target: a\n", ["studies.tasks", "hub"]),
    ("writes", "task: writes\ndataset_path: json\ndataset_kwargs: {data_files: {test: DOCS}}\ntest_split: test\n"
               "output_type: generate_until\ndoc_to_text: question\ndoc_to_target: answer\n",
     ["studies.tasks", "writes", "generate_until"]),
])
def test_a_task_lm_eval_cannot_score_is_one_line_before_ray(llama_folder, tmp_path, monkeypatch, name, task, words):
    model, corpus, tasks = llama_folder
    folder = tmp_path / "mine"
    folder.mkdir()
    if task:
        (folder / "docs.jsonl").write_text('{"question": "w1 w2", "answer": "w3"}\n')
        (folder / f"{name}.yaml").write_text(task.replace("DOCS", str(folder / "docs.jsonl")))
    output = _refused(tmp_path, monkeypatch, _cli_spec(tmp_path, model, corpus,
                                                       {"names": [name], "include_path": str(folder)}))
    assert all(w in output for w in words), output


def test_a_tokenizer_that_is_not_the_models_is_one_line_before_ray(llama_folder, tmp_path, monkeypatch):
    model, corpus, tasks = llama_folder
    other = save_word_tokenizer(tmp_path / "other", reversed_ids=True)
    output = _refused(tmp_path, monkeypatch, _cli_spec(tmp_path, model, corpus,
                                                       {"names": [CHOICE_TASK], "include_path": str(tasks)},
                                                       tokenizer=str(other)))
    assert output.startswith("Error: data.tokenizer:") and "vocabulary" in output, output


# -- the evaluator: a task's batches, its requests built once -----------------------------------------

@pytest.mark.slow   # lm-eval loads its task index
def test_the_evaluator_scores_a_tasks_batch_into_both_tables_building_its_requests_once(llama_folder, tmp_path):
    import io

    import torch

    from orchestrator.run.evaluator import Evaluator
    from workloads.models.adapters import adapt
    from workloads.models.adapters.hf_loading import load_causal_lm
    from workloads.models.checkpoint import checkpoint_of
    model, corpus, tasks = llama_folder
    spec = parse_spec(yaml.safe_load(_cli_spec(tmp_path, model, corpus, {"names": [CHOICE_TASK],
                                                                        "include_path": str(tasks)}).read_text()))
    original = load_causal_lm(model)
    blob = io.BytesIO()
    torch.save(checkpoint_of(spec.runs[0].net_config, adapt(original), original), blob)
    evaluator = Evaluator(spec.data, spec.studies)
    work = [b for b in batches(expand(spec), 3) if b.study == "tasks"]
    built = []
    for batch in work:
        tables, errors = evaluator.run(batch, blob.getvalue())
        assert not errors and sorted(tables) == ["task_samples", "tasks"]
        scores, samples = (pd.DataFrame(tables[t]) for t in ("tasks", "task_samples"))
        assert set(scores["unit_key"]) == set(samples["unit_key"]) == {u.key for u in batch.units}
        assert (samples.groupby("unit_key").size() == 4).all()          # every document of the task, per plan
        accuracy = scores[scores["metric"] == "acc"].set_index("unit_key")["value"]
        assert accuracy.to_dict() == pytest.approx(samples.groupby("unit_key")["correct"].mean().to_dict())
        built.append(next(iter(evaluator.task_requests.values())))
    assert len(evaluator.task_requests) == 1 and all(b is built[0] for b in built)   # built once, kept


# -- one sweep through the CLI, killed and rerun ------------------------------------------------------

@pytest.mark.slow
def test_a_tasks_sweep_killed_between_a_batchs_two_files_and_rerun_is_exactly_once(llama_folder, ray_session,
                                                                                    tmp_path):
    model, corpus, tasks = llama_folder
    path = _cli_spec(tmp_path, model, corpus, {"names": [CHOICE_TASK], "include_path": str(tasks)})
    wanted = [u for u in expand(parse_spec(yaml.safe_load(path.read_text()))) if u.study == "tasks"]
    assert len(wanted) == 1 + 4 + 3   # intact, four units, spans of one and two layers: three batches of three
    out = tmp_path / "out"
    args = ["lesion", str(path), "--out", str(out), "--address", ray_session]
    code, _, err = _cli(args, {"UNRAVEL_FAULTS": "kill_between_tables=2"})   # the second tasks batch: half written
    assert code == -signal.SIGKILL, err[-2000:]
    half = set(store.read_parts(out, "task_samples")["unit_key"]) - store.done_keys(out, "tasks")
    assert len(half) == 3, "the sweep was not killed between a batch's task_samples and its tasks file"
    code, said, err = _cli(args)
    assert code == 0 and f", {len(wanted) - 3} computed" in said, said + err[-2000:]   # the half batch, the last
    _assert_each_tasks_unit_once(out, wanted)
    code, said, err = _cli(args)
    assert code == 0 and " 0 computed" in said, said + err[-2000:]
    _assert_each_tasks_unit_once(out, wanted)

    document = json.loads(CliRunner().invoke(main, ["status", str(out), "--format", "json"]).output)
    counts = {r["study"]: r for r in document["studies"]}
    assert (counts["tasks"]["units"], counts["tasks"]["done"], counts["tasks"]["left"]) == (len(wanted), len(wanted), 0)
    answer = CliRunner().invoke(main, ["query", str(out), "select plan, count(distinct unit_key) as units, "
                                       "count(*) as docs from task_samples group by plan order by plan", "--format",
                                       "csv"])
    assert answer.exit_code == 0 and answer.output.splitlines()[1:] == [
        "intact,1,4", "single_deletion,4,16", "span_deletion,3,12"], answer.output
    metrics = CliRunner().invoke(main, ["query", str(out), f"select count(*) from tasks where task = '{CHOICE_TASK}' "
                                        "and metric = 'acc' and value between 0 and 1", "--format", "csv"])
    assert metrics.output.splitlines()[1:] == [str(len(wanted))], metrics.output
    figures = CliRunner().invoke(main, ["figures", str(out)])
    assert figures.exit_code == 0, figures.output
    assert (out / "report.md").is_file()


def _cli(args: list[str], env: dict | None = None) -> tuple[int, str, str]:
    """The real CLI in a process of its own: (exit code, stdout, stderr)."""
    from processes import cli
    proc = cli(*args, env=env)
    try:
        said, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            import os
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, said, err


def _assert_each_tasks_unit_once(out: Path, wanted: list[Unit]) -> None:
    tasks = pd.read_parquet(out / "tasks")
    keys = {u.key for u in wanted}
    assert set(tasks["unit_key"]) == keys
    assert not tasks.duplicated(["unit_key", "task", "metric", "filter"]).any()
    samples = pd.read_parquet(out / "task_samples")
    assert set(samples["unit_key"]) == keys
    assert not samples.duplicated(["unit_key", "task", "doc_id"]).any() and len(samples) == 4 * len(keys)

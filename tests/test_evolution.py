"""An output folder stays one consistent experiment as its spec changes (seeds added, a setting
changed), refuses another experiment's spec, moves with its files, and fails early and boundedly."""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.analysis.results import Results
from orchestrator.cli import main

SPEC = {
    "name": "evolving",
    "data": {"dataset": "digits"},
    "training": {"iterations": 6, "seeds": 1, "recipe": {"eval_every": 3}, "resources": {"cpu": 1},
                 "runs": [{"network": "preact_resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]}}]},
    "studies": {"test_examples": 60, "single_deletion": {}, "random_deletion": {"k_max": 2, "draws": 2},
                "evaluators": {"count": 1, "cpu": 1}},
}


def write(folder: Path, raw: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(raw))
    return path


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="session")  # session: made once per xdist worker
def evolved(ray_session, tmp_path_factory):
    """OUT after `unravel run` of SPEC, then of SPEC with a second seed and another test_examples."""
    folder = tmp_path_factory.mktemp("evolution")
    out = folder / "out"
    first = invoke("run", write(folder, SPEC, "v1.yaml"), "--out", out)
    assert first.exit_code == 0, first.output
    before = pd.read_parquet(out / "runs.parquet")
    grown = copy.deepcopy(SPEC)
    grown["training"]["seeds"] = 2
    grown["studies"]["test_examples"] = 80
    second = invoke("run", write(folder, grown, "v2.yaml"), "--out", out)
    assert second.exit_code == 0, second.output
    return out, before, second.output, grown


@pytest.mark.slow
def test_added_seeds_are_trained_beside_the_finished_runs(evolved):
    out, before, output, _ = evolved
    runs = pd.read_parquet(out / "runs.parquet")
    assert sorted(runs["seed"]) == [0, 1]
    kept = runs.set_index("run_id").loc[before["run_id"]]
    assert kept["train_seconds"].tolist() == before["train_seconds"].tolist()  # the first seed was not retrained
    assert sorted(p.name for p in (out / "tune" / "evolving").iterdir()) == ["attempt-1", "attempt-2"]
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert sorted(epochs["run_id"].unique()) == sorted(runs["run_id"])  # no run's epochs lost
    assert "0 failed" in output


@pytest.mark.slow
def test_the_report_and_status_use_exactly_the_current_spec(evolved):
    out, _, _, grown = evolved
    lesion = pd.read_parquet(out / "lesion")
    results = Results.load(out)
    assert set(results.lesion["examples"]) == {80}          # the new setting's rows only ...
    assert (lesion["examples"] == 60).sum() == results.stale["lesion"] > 0   # ... the old ones counted
    singles = results.study("single_deletion")
    assert len(singles) == singles["run_id"].nunique() * 9  # one row per deleted block and run
    report = (out / "report.md").read_text()
    assert f"{results.stale['lesion']:,} rows from earlier settings" in report and "unravel prune" in report
    status = invoke("status", out)
    assert status.exit_code == 0 and "left" in status.output
    single = next(line for line in status.output.splitlines() if line.strip().startswith("single_deletion"))
    assert [int(x) for x in single.split()[1:]] == [18, 18, 0, 0]   # 2 runs x 9 blocks, all done, current only


@pytest.mark.slow
def test_prune_removes_exactly_the_earlier_rows_once(evolved, tmp_path):
    out = tmp_path / "pruned"
    shutil.copytree(evolved[0], out)
    stale = Results.load(out).stale
    current = len(Results.load(out).lesion)
    first = invoke("prune", out)
    assert first.exit_code == 0 and f"removed {stale['lesion']:,} rows" in first.output, first.output
    assert len(pd.read_parquet(out / "lesion")) == current
    assert not any(Results.load(out).stale.values())
    again = invoke("prune", out)
    assert again.exit_code == 0 and "nothing to remove" in again.output
    figures = invoke("figures", out)
    assert figures.exit_code == 0 and "rows from earlier settings" not in (out / "report.md").read_text()


@pytest.mark.slow
def test_another_experiment_is_refused_before_anything_is_written(evolved, tmp_path):
    out = evolved[0]
    other = {**SPEC, "name": "someone-else"}
    spec = write(tmp_path, other)
    saved = {p: p.read_bytes() for p in (out / "spec.json", out / "runs.parquet", out / "epochs.parquet")}
    for command in ("lesion", "run", "train"):
        result = invoke(command, spec, "--out", out)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == f"Error: {out} holds experiment 'evolving', not 'someone-else'; use another --out"
    assert {p: p.read_bytes() for p in saved} == saved
    cifar = write(tmp_path, {**SPEC, "data": {"dataset": "cifar10", "root": str(tmp_path)}}, "cifar.yaml")
    (tmp_path / "cifar-10-batches-py").mkdir()
    result = invoke("lesion", cifar, "--out", out)
    assert result.exit_code == 2 and "holds experiment 'evolving' on digits" in result.output, result.output


@pytest.mark.slow
def test_a_moved_results_folder_reads_its_own_checkpoints(evolved, tmp_path):
    moved = tmp_path / "elsewhere" / "out"
    shutil.copytree(evolved[0], tmp_path / "copy")
    (tmp_path / "copy").rename(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").rename(tmp_path / "moved")
    moved = tmp_path / "moved"
    runs = pd.read_parquet(moved / "runs.parquet")
    assert not any(Path(p).is_absolute() for p in runs["checkpoint"])   # relative to OUT
    more = copy.deepcopy(evolved[3])
    more["studies"]["random_deletion"]["draws"] = 3
    result = invoke("lesion", write(tmp_path, more), "--out", moved)
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    assert "4 computed" in result.output   # draw 2 of k = 1, 2 on each of the two runs


def test_a_second_writer_is_refused_before_ray_starts(tmp_path, monkeypatch):
    import orchestrator.run.cluster

    def no_ray(*args, **kwargs):
        raise AssertionError("connected to Ray although OUT is locked")

    monkeypatch.setattr(orchestrator.run.cluster, "connect", no_ray)
    out = tmp_path / "out"
    with store.writer_lock(out):
        result = invoke("run", write(tmp_path, SPEC), "--out", out)
    assert result.exit_code == 2 and "is being written by another unravel process" in result.output, result.output


def test_an_address_that_does_not_answer_is_one_line(tmp_path):
    result = invoke("run", write(tmp_path, SPEC), "--out", tmp_path / "out", "--address", "127.0.0.1:1")
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith("Error: no Ray cluster answers at 127.0.0.1:1")
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()

"""Studies fanned out over Ray actors into Parquet: exactly once, resumable, failures recorded."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.spec import SpecError, parse_spec
from orchestrator.sweep import run_studies, status
from orchestrator.training import run_training
from orchestrator.units import expand

BASE = {
    "name": "studies",
    "training": {
        "iterations": 30, "recipe": {"eval_every": 10}, "resources": {"cpu": 1},
        "runs": [{"network": "preact_resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]}},
                 {"network": "plain15", "label": "plain", "overrides": {"widths": [4, 8, 16]}}],
    },
    "studies": {
        "test_examples": 120,
        "single_deletion": {},
        "random_deletion": {"k_max": 3, "draws": 2},
        "reorder": {"k_max": 2, "draws": 2},
        "gradients": {"draws": 2, "batch_size": 16},
        "evaluators": {"count": 2, "cpu": 1},
        "plans_per_batch": 5,
    },
}


def with_studies(**changes) -> dict:
    return {**BASE, "studies": {**BASE["studies"], **changes}}


@pytest.fixture(scope="module")
def trained(ray_session, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    outcome = run_training(parse_spec(BASE), out, progress=False)
    assert not outcome.failed
    return out


@pytest.fixture
def out(trained, tmp_path):
    """A fresh results folder holding the trained runs (training happens once per module)."""
    dst = tmp_path / "out"
    shutil.copytree(trained, dst)
    return dst


def table_keys(out: Path) -> list[str]:
    return (store.read_parts(out, "lesion")["unit_key"].tolist() + store.read_parts(out, "gradients")["unit_key"].tolist())


def test_units_per_study_and_tables(out):
    spec = parse_spec(BASE)
    outcome = run_studies(spec, out, progress=False)
    # res: 9 blocks, 9 deletable; plain: 12 of 15 deletable
    assert outcome.per_study == {"intact": 2, "single_deletion": 9 + 12, "random_deletion": 3 * 2,
                                 "reorder": 2 * 2, "gradients": 9 * 2}
    assert outcome.failed == 0 and outcome.computed == outcome.total == 51
    lesion = store.read_parts(out, "lesion")
    assert set(lesion["study"]) == {"intact", "single_deletion", "random_deletion", "reorder"}
    plain = lesion[(lesion["study"] == "single_deletion") & lesion["run_id"].str.startswith("plain")]
    assert sorted(d[0] for d in plain["deleted"]) == [i for i in range(15) if i not in (0, 5, 10)]
    assert (lesion["examples"] == 120).all()
    reorder = lesion[lesion["study"] == "reorder"]
    assert (reorder["kendall_tau"] < 1).all() and (reorder["active_blocks"] == 9).all()
    grads = store.read_parts(out, "gradients")
    assert sorted(grads["k"].unique()) == list(range(1, 10)) and (grads["batch_size"] == 16).all()
    # hive-partitioned Parquet: DuckDB reads it without project code
    n = duckdb.sql(f"select count(*) from read_parquet('{out}/lesion/*/*/*.parquet', hive_partitioning=true) "
                   f"where study = 'single_deletion'").fetchall()[0][0]
    assert n == 21
    assert len(set(table_keys(out))) == len(table_keys(out)) == 51


def test_rerun_skips_everything_and_new_draws_compute_only_the_new_units(out):
    spec = parse_spec(BASE)
    run_studies(spec, out, progress=False)
    again = run_studies(spec, out, progress=False)
    assert again.computed == 0 and again.skipped == again.total
    more = parse_spec(with_studies(random_deletion={"k_max": 3, "draws": 4}))
    grown = run_studies(more, out, progress=False)
    assert grown.computed == 3 * 2  # draws 2 and 3 of each k
    keys = table_keys(out)
    assert len(keys) == len(set(keys)) == grown.total


def test_a_lost_part_is_recomputed_and_nothing_duplicated(out):
    spec = parse_spec(BASE)
    run_studies(spec, out, progress=False)
    victim = sorted((out / "lesion").rglob("part-*.parquet"))[0]
    lost = len(pd.read_parquet(victim))
    victim.unlink()
    redo = run_studies(spec, out, progress=False)
    assert redo.computed == lost
    keys = table_keys(out)
    assert len(keys) == len(set(keys)) == redo.total


def test_gpu_evaluators_schedule_on_declared_gpus_without_cpus(out):
    """gpu: 0.25 and no CPU: four evaluators share the session's one declared GPU."""
    spec = parse_spec(with_studies(evaluators={"count": 4, "gpu": 0.25}))
    assert spec.studies.evaluators.cpu == 0.0
    outcome = run_studies(spec, out, progress=False)
    assert outcome.failed == 0 and outcome.computed == outcome.total


def _damage(kind: str, good: str, other: str, path: Path) -> None:
    import torch
    if kind == "not_a_checkpoint":
        path.write_bytes(b"not a checkpoint")
    elif kind == "cut_short":
        blob = Path(good).read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    elif kind == "other_shape":  # the plain net's config with the residual net's weights
        ckpt = torch.load(good, weights_only=True)
        ckpt["state_dict"] = torch.load(other, weights_only=True)["state_dict"]
        torch.save(ckpt, path)
    else:  # a pickled Python object inside: refused by weights_only=True, never executed
        ckpt = torch.load(good, weights_only=True)
        ckpt["extra"] = Path("somewhere")
        torch.save(ckpt, path)


@pytest.mark.parametrize("kind, message", [
    ("not_a_checkpoint", "not a readable PyTorch checkpoint"),
    ("cut_short", "not a readable PyTorch checkpoint, truncated or corrupt"),
    ("other_shape", "its weights are not those of plain15"),
    ("pickled_object", "refused, it holds pickled Python objects such as pathlib"),
])
def test_a_damaged_checkpoint_becomes_error_rows_naming_it_not_a_crash(kind, message, out):
    runs = store.read_table(out, "runs")
    plain = runs[runs["label"] == "plain"]["checkpoint"].iloc[0]
    res = runs[runs["label"] == "res"]["checkpoint"].iloc[0]
    broken = out / "broken.pt"
    _damage(kind, plain, res, broken)
    runs.loc[runs["label"] == "plain", "checkpoint"] = str(broken)
    store.write_table(out, "runs", runs)
    outcome = run_studies(parse_spec(BASE), out, progress=False)
    assert outcome.failed == 13 and outcome.computed == 51 - 13  # the plain net's intact + 12 deletions
    errors = store.read_parts(out, "errors")
    assert errors["run_id"].str.startswith("plain").all()
    assert errors["error"].str.contains(message, regex=False).all(), errors["error"].iloc[0]
    assert errors["error"].str.contains("checkpoint of plain", regex=False).all()
    rows = {r["study"]: r for r in status(parse_spec(BASE), out)}
    assert rows["single_deletion"]["failed"] == 12 and rows["single_deletion"]["left"] == 0
    # repaired, a rerun computes exactly the failed units
    runs.loc[runs["label"] == "plain", "checkpoint"] = plain
    store.write_table(out, "runs", runs)
    assert run_studies(parse_spec(BASE), out, progress=False).computed == 13


@pytest.mark.parametrize("change, message", [
    (dict(random_deletion={"k_max": 10, "draws": 1}), "studies.random_deletion.k_max: k_max=10 is larger than the 9"),
    (dict(reorder={"k_max": 2, "draws": 1, "runs": ["nope"]}), "studies.reorder.runs[0]: no training run is labelled"),
    (dict(gradients={"draws": 1, "runs": ["plain"]}), "plain network"),
    (dict(random_deletions={"k_max": 1}), "studies.random_deletions: unknown key"),
    (dict(random_deletion={"k_max": 1, "draws": -1}), "studies.random_deletion.draws: must be between 1"),
    (dict(precision="fp16"), "studies.precision"),
])
def test_study_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(with_studies(**change))


def test_cli_lesion_and_status(out, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(BASE))
    runner = CliRunner()
    result = runner.invoke(main, ["lesion", str(spec), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "51 computed" in result.output
    st = runner.invoke(main, ["status", str(out)])
    assert st.exit_code == 0 and "single_deletion" in st.output
    assert [int(x) for x in st.output.split("\n")[1].split()[1:]] == [2, 2, 0, 0]  # intact: units done failed left


def test_driver_sigkilled_mid_sweep_then_rerun_is_exactly_once(out, ray_session, tmp_path):
    raw = with_studies(random_deletion={"k_max": 9, "draws": 30}, plans_per_batch=2,
                       evaluators={"count": 1, "cpu": 1})
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(raw))
    total = len(expand(parse_spec(raw)))
    cmd = [sys.executable, "-m", "orchestrator.cli", "lesion", str(spec), "--out", str(out), "--address", ray_session]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list((out / "lesion").rglob("part-*.parquet"))) < 6:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    partial = len(table_keys(out))
    assert 0 < partial < total
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    keys = table_keys(out)
    assert len(keys) == len(set(keys)) == total


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("experiments/*.yaml")), ids=lambda p: p.name)
def test_shipped_experiment_specs_are_valid(path):
    from orchestrator.spec import load_spec
    spec = load_spec(path)
    assert spec.runs

"""The training sweep through the real Tune path on the session's local Ray."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.spec import parse_spec
from orchestrator.training import run_training
from workloads.train.loop import load_network

ALL_KINDS = {
    "name": "kinds",
    "data": {"dataset": "digits"},
    "training": {
        "iterations": 6, "seeds": 1, "resources": {"cpu": 1}, "recipe": {"eval_every": 3},
        "runs": [
            {"network": "resnet20", "overrides": {"widths": [4, 8, 16]}},
            {"network": "resnet164", "label": "bottleneck", "overrides": {"widths": [2, 4, 8]}},
            {"network": "plain15", "overrides": {"widths": [4, 8, 16]}},
            {"network": "resnet20", "label": "gated", "overrides": {"widths": [4, 8, 16], "shortcut": "exclusive_gating"}},
            {"network": "preact_resnet20", "overrides": {"widths": [4, 8, 16]},
             "modes": ["stochastic_depth", "effective_paths"]},
        ],
    },
}


def test_every_network_kind_and_mode_trains_through_tune(ray_session, tmp_path):
    spec = parse_spec(ALL_KINDS)
    outcome = run_training(spec, tmp_path, progress=False)
    assert outcome.failed == {}
    runs = outcome.runs
    assert len(runs) == 6
    assert set(runs["mode"]) == {"normal", "stochastic_depth", "effective_paths"}
    assert set(runs["network"]) == {"resnet20", "resnet164", "plain15", "preact_resnet20"}
    assert (runs["epochs"] == 2).all() and (runs["iterations"] == 6).all()
    # the tables are plain Parquet: pyarrow and DuckDB read them without project code
    epochs = pq.read_table(tmp_path / "epochs.parquet").to_pandas()
    assert len(epochs) == 12 and set(epochs["run_id"]) == set(runs["run_id"])
    assert pq.read_schema(tmp_path / "runs.parquet").metadata[b"unravel.schema_version"] == b"1"
    n = duckdb.sql(f"select count(*) from '{tmp_path / 'runs.parquet'}' where test_error <= 1").fetchall()[0][0]
    assert n == 6
    for row in runs.itertuples():
        net, ckpt = load_network(str(tmp_path / row.checkpoint))
        assert ckpt["net_config"] == row.net_config
        assert net.num_blocks == row.num_blocks


TINY = {
    "name": "tiny",
    "training": {"iterations": 4, "recipe": {"eval_every": 2}, "resources": {"cpu": 1},
                 "runs": [{"network": "preact_resnet20", "overrides": {"widths": [4, 8, 16]}}]},
}


def test_cli_train_again_retrains_nothing(ray_session, tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(main, ["train", str(spec), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "preact_resnet20.normal.s0" in first.output
    before = pq.read_table(out / "runs.parquet").to_pandas()
    for extra in ([], ["--resume"]):  # --resume: kept for scripts, the same as without
        again = runner.invoke(main, ["train", str(spec), "--out", str(out), *extra])
        assert again.exit_code == 0, again.output
        after = pq.read_table(out / "runs.parquet").to_pandas()
        assert after["train_seconds"].tolist() == before["train_seconds"].tolist()  # nothing retrained
    assert sorted(p.name for p in (out / "tune" / "tiny").iterdir()) == ["attempt-1"]  # no new Tune experiment


def test_bad_spec_is_one_line_exit_2_and_writes_nothing(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "runs": [{"network": "resnet21"}]}}))
    result = CliRunner().invoke(main, ["train", str(spec), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "training.runs[0].network: unknown network 'resnet21'" in result.output
    assert not (tmp_path / "out").exists()


KILL = {
    "name": "kill",
    "training": {
        "iterations": 40, "recipe": {"eval_every": 4}, "resources": {"cpu": 1},
        "runs": [{"network": "preact_resnet20", "label": "short", "overrides": {"widths": [2, 4, 8]}},
                 {"network": "preact_resnet20", "label": "long", "overrides": {"widths": [2, 4, 8]}}],
    },
}


def _model_files(out: Path, label: str) -> list[Path]:
    return sorted((out / "tune" / "kill").glob(f"attempt-*/*{label}*/checkpoint_*/model.pt"))


def _state_files(out: Path, label: str) -> list[Path]:
    return sorted((out / "tune" / "kill").glob(f"attempt-*/*{label}*/checkpoint_*/state.pt"))


def test_sigkilled_sweep_resumes_from_checkpoints(ray_session, tmp_path):
    spec = tmp_path / "kill.yaml"
    spec.write_text(yaml.safe_dump(KILL))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "orchestrator.cli", "train", str(spec), "--out", str(out), "--address", ray_session]
    # "long" holds in its 6th epoch (a fault point): still training when "short" is done
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "UNRAVEL_FAULTS": "hold_in_epoch.long=6"})
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            if _model_files(out, "short") and _state_files(out, "long") and not _model_files(out, "long"):
                break
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint appeared in time")
        time.sleep(1.2)  # let Tune save its experiment state once more (TUNE_GLOBAL_CHECKPOINT_S=1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    short_model = _model_files(out, "short")[-1]
    digest = hashlib.sha256(short_model.read_bytes()).hexdigest()
    killed_state = torch.load(_state_files(out, "long")[-1], weights_only=True)
    assert 0 < killed_state["iteration"] < 40

    rerun = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    runs = pq.read_table(out / "runs.parquet").to_pandas()
    assert sorted(runs["label"]) == ["long", "short"]
    # the finished trial was not retrained; the other continued from its checkpoint
    assert hashlib.sha256(_model_files(out, "short")[-1].read_bytes()).hexdigest() == digest
    final = torch.load(out / runs.set_index("label").loc["long", "checkpoint"], weights_only=True)
    assert [m["epoch"] for m in final["history"]] == list(range(1, 11))
    done_before = len(killed_state["history"])
    # resumed from a checkpoint, not from scratch: the first epoch is the one measured before the kill
    # (Tune restores the last checkpoint it had registered, which may be a step behind the newest file)
    assert final["history"][0] == killed_state["history"][0]
    # and training is deterministic across the kill
    assert [m["train_loss"] for m in final["history"][:done_before]] == [m["train_loss"] for m in killed_state["history"]]

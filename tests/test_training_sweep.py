"""The training sweep through the real Tune path on the session's local Ray. (A sweep SIGKILLed in training
and resumed from its checkpoints: test_object_storage.py, on the S3 server.)"""
import duckdb
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.experiment.spec import parse_spec
from orchestrator.run.training import run_training
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


@pytest.mark.slow
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


@pytest.mark.slow
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

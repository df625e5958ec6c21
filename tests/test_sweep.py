"""Studies fanned out over Ray actors into Parquet: exactly once, resumable, failures recorded."""
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.spec import SpecError, parse_spec
from orchestrator.store.current import status
from orchestrator.run.sweep import run_studies
from sweep_cases import BASE, table_keys, with_studies


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_gpu_evaluators_schedule_on_declared_gpus_without_cpus(out):
    """gpu: 0.25 and no CPU: evaluators share the session's one declared GPU (two: each evaluator's start-up
    imports torch, and a third or fourth shows nothing more about scheduling)."""
    spec = parse_spec(with_studies(evaluators={"count": 2, "gpu": 0.25}))
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
@pytest.mark.slow
def test_a_damaged_checkpoint_becomes_error_rows_naming_it_not_a_crash(kind, message, out):
    """The first kind runs every study (the good run's units still computed, a repaired rerun computes exactly
    the failed units); the others, whose path through the sweep is the same, only the broken run's deletions."""
    whole = kind == "not_a_checkpoint"
    only_plain = {k: v for k, v in BASE["studies"].items() if k not in ("random_deletion", "reorder", "gradients")}
    spec = parse_spec(BASE if whole else {**BASE, "studies": {**only_plain, "single_deletion": {"runs": ["plain"]}}})
    runs = store.read_table(out, "runs")
    plain = str(out / runs[runs["label"] == "plain"]["checkpoint"].iloc[0])
    res = str(out / runs[runs["label"] == "res"]["checkpoint"].iloc[0])
    broken = out / "broken.pt"
    _damage(kind, plain, res, broken)
    runs.loc[runs["label"] == "plain", "checkpoint"] = str(broken)
    store.write_table(out, "runs", runs)
    outcome = run_studies(spec, out, progress=False)
    # the plain net's intact + 12 deletions fail
    assert outcome.failed == 13 and outcome.computed == (51 - 13 if whole else 0)
    errors = store.read_parts(out, "errors")
    assert errors["run_id"].str.startswith("plain").all()
    assert errors["error"].str.contains(message, regex=False).all(), errors["error"].iloc[0]
    assert errors["error"].str.contains("checkpoint of plain", regex=False).all()
    rows = {r["study"]: r for r in status(spec, out)}
    assert rows["single_deletion"]["failed"] == 12 and rows["single_deletion"]["left"] == 0
    if whole:  # repaired, a rerun computes exactly the failed units
        runs.loc[runs["label"] == "plain", "checkpoint"] = plain
        store.write_table(out, "runs", runs)
        assert run_studies(spec, out, progress=False).computed == 13


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


@pytest.mark.slow
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

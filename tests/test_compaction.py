"""`unravel compact`: killed at each of its steps, every reader still reads each row once, and a rerun
finishes the job; after it, the resume index still knows every unit. Hand-made parts, as a sweep
names them (one per batch of the digits spec's units), written by store itself: no training, no Ray."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from orchestrator.store import compaction
from orchestrator.store import current
from orchestrator import faults
from orchestrator.store import layout, listing
from orchestrator import store
from orchestrator.cli import main
from orchestrator.experiment.units import expand
from compaction_cases import SPEC, Killed, kill_at, row, rows, snapshot, write_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def out(tmp_path):
    write_sweep(tmp_path / "out")
    return tmp_path / "out"


def globbed(out: Path) -> tuple[int, int]:
    """Lesion rows as plain readers count them: pandas over the folder, DuckDB over a glob."""
    pandas = len(pd.read_parquet(out / "lesion")) if (out / "lesion").exists() else 0
    glob = duckdb.sql(f"select count(*) from read_parquet('{out}/lesion/*/*/*.parquet', hive_partitioning=true)")
    return pandas, glob.fetchall()[0][0]


def folder_files(out: Path) -> dict[str, list[str]]:
    return {str(f.relative_to(out)): sorted(p.name for p in listing.files_in(f))
            for t in store.PART_SCHEMAS for f in listing.partition_folders(out, t)}


def assert_compact(out: Path) -> None:
    assert all(len(names) == 1 for names in folder_files(out).values()) and not compaction.pending(out)
    assert not (out / layout.COMPACTION).exists() and not list(out.rglob("*.tmp"))


def test_compacted_folders_read_as_before_and_a_rerun_computes_nothing(out):
    before, glob = snapshot(out), globbed(out)
    assert all(r["done"] == r["units"] for r in before[2])  # every unit of the spec is written
    merged, files = len(compaction.pending(out)), sum(map(len, folder_files(out).values()))
    result = CliRunner().invoke(main, ["compact", str(out)])
    assert result.exit_code == 0, result.output
    assert_compact(out)
    after, total = len(folder_files(out)), sum(map(len, before[0].values()))
    assert result.stdout.startswith(f"compacted {merged} folders: {files} files -> {after}, {total} rows, ")
    assert snapshot(out) == before and globbed(out) == glob == (len(before[0]["lesion"]),) * 2
    assert {u.key for u in expand(SPEC)} <= store.done_keys(out)  # what the sweep skips: nothing left to compute
    layout = {p: sorted((q, os.stat(out / p / q).st_mtime_ns) for q in names) for p, names in folder_files(out).items()}
    again = CliRunner().invoke(main, ["compact", str(out)])
    assert again.exit_code == 0 and again.stdout == f"nothing to compact: {after} files, {total} rows\n"
    assert {p: sorted((q, os.stat(out / p / q).st_mtime_ns) for q in names)
            for p, names in folder_files(out).items()} == layout


@pytest.mark.parametrize("point", ["compact_staged", "compact_absorbed", "compact_swapped"])
def test_killed_at_each_step_then_rerun(out, monkeypatch, point):
    before, glob = snapshot(out), globbed(out)
    table, _, files = compaction.pending(out)[1]  # the folder the kill stops in
    assert table == "lesion"
    hidden = sum(pq.read_metadata(p).num_rows for p in files) if point == "compact_absorbed" else 0
    kill_at(monkeypatch, point, 2)
    with pytest.raises(Killed):
        compaction.compact(out)
    assert snapshot(out) == before  # unravel's readers: every row once, in the state the kill left
    # plain glob readers: each row once, except the folder between its two renames, which they do not see
    assert globbed(out) == (glob[0] - hidden, glob[1] - hidden)
    monkeypatch.undo()
    result = CliRunner().invoke(main, ["compact", str(out)])
    assert result.exit_code == 0, result.output
    assert_compact(out)
    assert snapshot(out) == before and globbed(out) == glob


def test_a_write_between_the_two_renames_is_kept_with_the_staged_rows(out, monkeypatch):
    """A writer that did not settle first (a sweep called as a library) adds a part to the absorbed folder."""
    before = rows(out)
    kill_at(monkeypatch, "compact_absorbed", 1)
    with pytest.raises(Killed):
        compaction.compact(out)
    (folder, _), = listing.staged_in(out, "lesion")
    study, run_id = (n.split("=", 1)[1] for n in folder.relative_to(out / "lesion").parts)
    store.write_part(out, "lesion", study, run_id, "later", [row("lesion", "later")])
    assert len(rows(out)["lesion"]) == len(before["lesion"]) + 1 and "later" in store.done_keys(out)
    compaction.settle(out)
    assert len(listing.files_in(folder)) == 2 and not (out / layout.COMPACTION).exists()
    assert len(rows(out)["lesion"]) == len(before["lesion"]) + 1


def test_any_command_that_writes_out_first_finishes_an_interrupted_swap(out, monkeypatch):
    glob = globbed(out)
    kill_at(monkeypatch, "compact_absorbed", 1)
    with pytest.raises(Killed):
        compaction.compact(out)
    assert globbed(out) < glob
    result = CliRunner().invoke(main, ["prune", str(out)])  # removes the gates and errors rows the spec lacks
    assert result.exit_code == 0, result.output
    assert globbed(out) == glob and not (out / layout.COMPACTION).exists()


@pytest.mark.slow
def test_sigkilled_while_writing_a_compacted_file_then_rerun(out):
    """A real SIGKILL (UNRAVEL_FAULTS) between writing the second compacted file and renaming it into place."""
    before = snapshot(out)
    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", "compact", str(out)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                       faults.ENV: "kill_before_rename=2"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len(list((out / layout.COMPACTION).rglob(".compact-*.tmp"))) == 1  # written, fsynced, never renamed
    assert snapshot(out) == before
    result = CliRunner().invoke(main, ["compact", str(out)])
    assert result.exit_code == 0, result.output
    assert_compact(out)
    assert snapshot(out) == before


def test_parts_added_after_compaction_are_merged_and_pruned_like_the_rest(out):
    compaction.compact(out)
    store.write_part(out, "lesion", "intact", SPEC.runs[0].run_id, "more", [row("lesion", "old-setting")])
    folder = out / "lesion" / "study=intact" / f"run_id={SPEC.runs[0].run_id}"
    assert len(listing.files_in(folder)) == 2 and "old-setting" in store.done_keys(out)
    done = compaction.compact(out, max_rows=1)
    assert done.folders == 1 and len(listing.files_in(folder)) == len(store.read_parts(out, "lesion").query(
        f"study == 'intact' and run_id == '{SPEC.runs[0].run_id}'"))
    runs, keys = current.current_ids(SPEC)
    assert store.prune(out, runs, keys | {"gate0", "gate1", "failed0", "failed1"})["lesion"] == 1
    assert "old-setting" not in store.done_keys(out) and all(r["done"] == r["units"] for r in current.status(SPEC, out))


def test_compact_is_refused_while_another_process_writes_out(out):
    with store.writer_lock(out):
        result = CliRunner().invoke(main, ["compact", str(out)])
    assert result.exit_code == 2 and "is being written by another unravel process" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert any(len(names) > 1 for names in folder_files(out).values())  # nothing compacted


def test_a_folder_that_is_no_experiment_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["compact", str(tmp_path)])
    assert result.exit_code == 2 and "holds no unravel experiment" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_a_reader_listing_while_a_folder_is_swapped_in_misses_no_row(out, monkeypatch):
    """The race of a reader beside a running compaction: the folder is absent when the reader lists the
    folders, and swapped in (S/new renamed to it) before it lists the staging."""
    before = rows(out)
    kill_at(monkeypatch, "compact_absorbed", 1)
    with pytest.raises(Killed):
        compaction.compact(out)
    listed, swapped = listing.staged_in, []

    def staging_listed_after_the_swap(out, table):
        if table == "lesion" and not swapped:
            swapped.append(True)
            compaction.settle(out)  # compaction's step 3, between the reader's two listings
        return listed(out, table)
    monkeypatch.setattr(listing, "staged_in", staging_listed_after_the_swap)
    assert rows(out) == before and swapped

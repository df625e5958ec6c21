"""Every name in an experiment's output folder, OUT: its tables, partitions, spec, imported checkpoints,
Tune's state, the report and figures, the lock and compaction's staging. Nothing outside the store spells
one of these names; it asks for the path here.

OUT is one kind of object wherever it lives: a ``location.Location`` (``where``), a local folder or a
place on object storage.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from orchestrator.location import Location
from orchestrator.store.schemas import PART_SCHEMAS, SCHEMAS

SPEC_FILE = "spec.json"
DATA_RECORD = "data.json"   # the sha256 of the corpus and tokenizers a text experiment read (run/data_record.py)
LOCK_FILE = ".unravel.lock"
IMPORTED = "imported"       # users' checkpoints, converted: imported/<run_id>/model.pt beside source.json
IMPORTED_MODEL = "model.pt"
IMPORTED_SOURCE = "source.json"   # the source file's path and sha256, to refuse a changed source
TUNE = "tune"               # Ray Tune's experiment state and trial checkpoints
REPORT = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"
ERRORS = "errors"           # the errors table's folder: unpartitioned, a file per failed attempt
COMPACTION = ".compaction"  # `unravel compact`'s staging (compaction.py): outside every table's folder, since
#                             DuckDB's globs (lesion/*/*/*.parquet, lesion/**) read hidden names inside it too
DATA_PREFIXES = ("part-", "compact-")   # a batch's file (write_part, write_errors), a compacted one (write_compacted)
TEMPORARY = ".*.tmp"        # a file being written (Location.write_bytes): never read, removed if left


def where(out: "str | os.PathLike | Location") -> Location:
    """OUT as a Location, whatever the place: a local folder (relative to the working folder) or a URI."""
    return Location.of(out)


def table_path(out, name: str) -> Location:
    """A whole table's file (runs, epochs, training_errors)."""
    return where(out) / f"{name}.parquet"


def table_folder(out, table: str) -> Location:
    """A partitioned table's folder (lesion, gradients, gates, errors)."""
    return where(out) / table


def partition_folder(out, table: str, study: str, run_id: str) -> Location:
    """Hive-partitioned, as pandas, pyarrow and DuckDB (hive_partitioning) expect: the partition columns
    live in the folder names."""
    return table_folder(out, table) / f"study={study}" / f"run_id={run_id}"


def part_path(out, table: str, study: str, run_id: str, batch_key: str) -> Location:
    """One finished batch's file."""
    return partition_folder(out, table, study, run_id) / f"part-{batch_key}.parquet"


def errors_path(out, batch_key: str, attempt: str) -> Location:
    """One failed attempt's errors file (attempts add files: errors are history)."""
    return table_folder(out, ERRORS) / f"part-{batch_key}-{attempt}.parquet"


def compacted_path(folder: Location, name: str) -> Location:
    return folder / f"compact-{name}.parquet"


def is_data_file(name: str) -> bool:
    """A file holding a partitioned table's rows (never a temporary: those start with a dot)."""
    return name.startswith(DATA_PREFIXES) and name.endswith(".parquet")


def partition_of(relative: str) -> tuple[tuple[str, str], ...]:
    """(("study", s), ("run_id", r)) from a partition folder's path relative to its table ("" for errors)."""
    return tuple(tuple(part.split("=", 1)) for part in PurePosixPath(relative).parts) if relative else ()


def staging(out, folder: Location) -> Path:
    """Where compaction stages a partition folder of a local OUT: OUT/.compaction/<its path in OUT>."""
    root = where(out)
    return root.local_path / COMPACTION / root.relative(folder.path)


def spec_path(out) -> Location:
    return where(out) / SPEC_FILE


def data_record_path(out) -> Location:
    return where(out) / DATA_RECORD


def lock_path(out) -> Location:
    return where(out) / LOCK_FILE


def imported_checkpoint(out, run_id: str) -> Location:
    return where(out) / IMPORTED / run_id / IMPORTED_MODEL


def imported_source(out, run_id: str) -> Location:
    return where(out) / IMPORTED / run_id / IMPORTED_SOURCE


def tune_dir(out, experiment: str) -> Location:
    """Where Ray Tune keeps an experiment's state."""
    return where(out) / TUNE / experiment


def report_paths(out) -> tuple[Location, Location]:
    """(report.md, report.html)."""
    return where(out) / REPORT, where(out) / REPORT_HTML


def figures_folder(out) -> Location:
    return where(out) / FIGURES


def relative(out, path: Location) -> str:
    """A path inside OUT as stored in a table: relative to OUT, so the folder can be moved or copied
    (a path outside OUT is stored as it is)."""
    try:
        return where(out).relative(path.path)
    except ValueError:
        return path.path


def located(out, stored: str) -> Location:
    """A stored path (relative to OUT; absolute in tables written before 0.2) as a path to open."""
    return Location.of(stored) if os.path.isabs(stored) else where(out) / stored


class NotAnExperiment(ValueError):
    """A folder given as an experiment's OUT that holds none."""


def is_experiment(out) -> bool:
    """Whether OUT holds an experiment: its spec, a table, or a partitioned table's folder."""
    try:
        names = {PurePosixPath(i.path).name for i in where(out).children()}   # one listing, one request
    except (FileNotFoundError, NotADirectoryError):
        return False
    return bool(names & {SPEC_FILE, *(f"{t}.parquet" for t in SCHEMAS), *PART_SCHEMAS})


def experiment_folder(out) -> Location:
    """OUT, refused (NotAnExperiment) unless it holds an experiment: the one test every command that reads an
    experiment uses."""
    if not is_experiment(out):
        raise NotAnExperiment(f"{out}: holds no unravel experiment (no unravel tables or spec: runs.parquet, lesion/, "
                              f"spec.json, ...); OUT must be the folder of an unravel experiment")
    return where(out)

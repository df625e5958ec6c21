"""The output folder of an experiment: every file in it is named, shaped and written here.

Tables are Parquet with explicit, versioned schemas, and their rows are made by the
constructors below (a row with a key its schema lacks, or without one it has, is a bug, not
a silently dropped column). Every write goes to a temporary name in the same folder and is
renamed into place (``atomic_path``, the one way anything is written), so a reader (pandas,
pyarrow, DuckDB) never sees half a file. One process writes an output folder at a time (a
lock file); a file that cannot be read is reported by name, never read as data. A partitioned
table's rows are in the files ``data_files`` lists, the one listing every reader and writer uses: a
part per batch, or the few files `unravel compact` merged them into (compaction.py). Besides the
tables, OUT holds ``spec.json`` (the spec that made it), ``imported/`` (users' checkpoints
converted) and ``tune/`` (Ray Tune's state), each at a path this module gives.

OUT is a local folder (a ``Path``) or a place on object storage (a ``location.Location``, from a URI).
Functions take either and name files in the same kind; object storage differs only where it must
(see ``location``): each file is one PUT, the lock is a lease object (``writer_lock``), and
compaction declares the files a compacted file absorbs instead of renaming folders (compaction.py).
"""
from __future__ import annotations

import errno
import fcntl
import functools
import json
import math
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator import faults
from orchestrator.location import Location, is_uri

if TYPE_CHECKING:
    from orchestrator.experiment.resolved import ExperimentSpec

SCHEMA_VERSION = "1"
# tables whose schema grew since version 1: lesion 2 added test_rule (how an effective-paths run was evaluated),
# lesion 3 metric and perplexity (language models: error and loss are next-token error and loss)
TABLE_VERSIONS = {"lesion": "3"}
# the value a column added later reads as in parts written before it existed
ADDED_COLUMNS: dict[str, dict[str, object]] = {
    "lesion": {"test_rule": "", "metric": "classification", "perplexity": float("nan")}}
METRICS = ("classification", "next_token")   # what error and loss count: images, or tokens of a text

SCHEMAS: dict[str, pa.Schema] = {
    "runs": pa.schema([
        ("run_id", pa.string()), ("label", pa.string()), ("network", pa.string()), ("variant", pa.string()),
        ("mode", pa.string()), ("seed", pa.int64()), ("dataset", pa.string()), ("iterations", pa.int64()),
        ("epochs", pa.int64()), ("test_error", pa.float64()), ("test_loss", pa.float64()),
        ("num_blocks", pa.int64()), ("parameters", pa.int64()), ("checkpoint", pa.string()),
        ("train_seconds", pa.float64()), ("net_config", pa.string()), ("train_config", pa.string()),
    ]),
    "epochs": pa.schema([
        ("run_id", pa.string()), ("epoch", pa.int64()), ("iteration", pa.int64()), ("train_loss", pa.float64()),
        ("train_error", pa.float64()), ("test_error", pa.float64()), ("test_loss", pa.float64()),
        ("lr", pa.float64()), ("images_per_s", pa.float64()), ("seconds", pa.float64()),
    ]),
    "training_errors": pa.schema([
        ("run_id", pa.string()), ("error", pa.string()),
    ]),
}


# Study results: one file per finished batch, hive-partitioned by study and run
# (<out>/lesion/study=<study>/run_id=<run>/part-<batch>.parquet, merged by compaction into compact-*.parquet);
# the partition columns live in the folder names, as pandas, pyarrow and DuckDB (hive_partitioning) expect.
PART_SCHEMAS: dict[str, pa.Schema] = {
    "lesion": pa.schema([
        ("unit_key", pa.string()), ("k", pa.int64()), ("draw", pa.int64()), ("deleted", pa.list_(pa.int64())),
        ("order", pa.list_(pa.int64())), ("kendall_tau", pa.float64()), ("active_blocks", pa.int64()),
        ("error", pa.float64()), ("loss", pa.float64()), ("examples", pa.int64()), ("precision", pa.string()),
        ("bn_recalibrated", pa.bool_()), ("seconds", pa.float64()), ("test_rule", pa.string()),
        ("metric", pa.string()), ("perplexity", pa.float64()),
    ]),
    "gradients": pa.schema([
        ("unit_key", pa.string()), ("k", pa.int64()), ("draw", pa.int64()), ("chosen", pa.list_(pa.int64())),
        ("log10_norm", pa.float64()), ("batch_size", pa.int64()), ("seconds", pa.float64()),
    ]),
    "gates": pa.schema([  # H: one row per gated block of a run (every row of a run shares its unit_key)
        ("unit_key", pa.string()), ("block", pa.int64()), ("stage", pa.int64()), ("changes_shape", pa.bool_()),
        ("gate_mean", pa.float64()), ("gate_std", pa.float64()), ("gate_p10", pa.float64()),
        ("gate_p90", pa.float64()), ("branch_weight", pa.float64()), ("shortcut_weight", pa.float64()),
        ("examples", pa.int64()), ("seconds", pa.float64()),
    ]),
    "errors": pa.schema([
        ("unit_key", pa.string()), ("run_id", pa.string()), ("study", pa.string()), ("k", pa.int64()),
        ("draw", pa.int64()), ("error", pa.string()), ("traceback", pa.string()), ("time", pa.float64()),
    ]),
}


# every table an experiment can have, as `unravel query` names its views
TABLES = (*SCHEMAS, *PART_SCHEMAS)
# the tables of study results: their unit keys are the resume index
STUDY_TABLES = tuple(t for t in PART_SCHEMAS if t != "errors")
SPEC_FILE = "spec.json"
DATA_RECORD = "data.json"   # the sha256 of the corpus and tokenizers a text experiment read (data_record.py)
LOCK_FILE = ".unravel.lock"
IMPORTED = "imported"      # users' checkpoints, converted: imported/<run_id>/model.pt beside source.json
TUNE = "tune"              # Ray Tune's experiment state and trial checkpoints


def where(out: "str | Path | Location") -> "Path | Location":
    """OUT as a Path (a local folder) or a Location (object storage): the two kinds this module serves."""
    if isinstance(out, Location):
        return Path(os.fspath(out)) if out.local else out
    return Location.of(out) if is_uri(str(out)) else Path(out)


def remote(out) -> bool:
    """Whether OUT is on object storage."""
    return isinstance(where(out), Location)


def arrow_source(path: "Path | Location") -> tuple[str, object]:
    """(path, filesystem) for pyarrow's readers."""
    return (path.path, path.fs) if isinstance(path, Location) else (str(path), None)


def read_metadata(path: "Path | Location") -> pq.FileMetaData:
    if isinstance(path, Location):
        with path.fs.open_input_file(path.path) as f:
            return pq.read_metadata(f)
    return pq.read_metadata(path)


def read_parquet(path: "Path | Location", columns: list[str] | None = None) -> pa.Table:
    name, fs = arrow_source(path)
    return pq.read_table(name, columns=columns, filesystem=fs)


# -- row constructors: the one place each table's rows are made --------------------------------------

def run_row(trial, *, dataset: str, iterations: int, epochs: int, test_error: float, test_loss: float,
            num_blocks: int, parameters: int, checkpoint: str, train_seconds: float) -> dict:
    """A runs row for a trial (``orchestrator.experiment.spec.Trial``), trained here or imported."""
    return {"run_id": trial.run_id, "label": trial.label, "network": trial.network, "variant": trial.variant,
            "mode": trial.mode, "seed": trial.seed, "dataset": dataset, "iterations": iterations, "epochs": epochs,
            "test_error": test_error, "test_loss": test_loss, "num_blocks": num_blocks, "parameters": parameters,
            "checkpoint": checkpoint, "train_seconds": train_seconds, "net_config": trial.net_config.to_json(),
            "train_config": trial.train_config.to_json() if trial.train_config else ""}


def epoch_rows(run_id: str, history: list[dict]) -> list[dict]:
    """The epochs rows of one run, from the history its training loop kept."""
    return [{"run_id": run_id, **{k: m[k] for k in SCHEMAS["epochs"].names if k != "run_id"}} for m in history]


def lesion_row(unit, plan, result, *, test_rule: str, precision: str, bn_recalibrated: bool, seconds: float,
               metric: str = "classification") -> dict:
    """A lesion row: one plan (``workloads.surgery.Plan``) evaluated on the test set, under the run's test-time
    rule ("" where its mode needs none). ``metric`` next_token: error, loss and examples count the predicted
    tokens of a text (error = 1 - next-token accuracy), and perplexity is exp(loss)."""
    language = metric == "next_token"
    return {"unit_key": unit.key, "k": unit.k, "draw": unit.draw, "deleted": sorted(plan.deleted),
            "order": list(plan.order), "kendall_tau": plan.kendall_tau, "active_blocks": plan.active_blocks,
            "error": result.error, "loss": result.loss, "examples": result.examples, "precision": precision,
            "bn_recalibrated": bn_recalibrated, "seconds": seconds, "test_rule": test_rule, "metric": metric,
            "perplexity": math.exp(min(result.loss, 700.0)) if language else float("nan")}


def gradient_row(unit, result, *, seconds: float) -> dict:
    """A gradients row: one draw's log10 gradient norm at path length k."""
    return {"unit_key": unit.key, "k": result.k, "draw": unit.draw, "chosen": list(result.chosen),
            "log10_norm": result.log10_norm, "batch_size": result.batch_size, "seconds": seconds}


def gate_row(unit, stats, *, seconds: float) -> dict:
    """A gates row: one gated block's gate over the test set (``workloads.surgery.GateStatistics``);
    ``seconds`` is the row's share of its unit, so a run's rows sum to the time of its one pass."""
    return {"unit_key": unit.key, "block": stats.block, "stage": stats.stage, "changes_shape": stats.changes_shape,
            "gate_mean": stats.mean, "gate_std": stats.std, "gate_p10": stats.p10, "gate_p90": stats.p90,
            "branch_weight": stats.branch_weight, "shortcut_weight": stats.shortcut_weight,
            "examples": stats.examples, "seconds": seconds}


def error_row(unit, exc: BaseException | str, traceback: str = "") -> dict:
    """An errors row: one failed attempt at a unit (errors are history: attempts add rows); ``exc`` an exception,
    or its 'SomeError: message' line as text (one raised in another process)."""
    error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc)[:2000]}"
    return {"unit_key": unit.key, "run_id": unit.run_id, "study": unit.study, "k": unit.k, "draw": unit.draw,
            "error": error[:2100], "traceback": traceback[-4000:], "time": time.time()}


def _checked(schema: pa.Schema, rows: list[dict]) -> list[dict]:
    for r in rows:
        if r.keys() != set(schema.names):
            extra, missing = sorted(r.keys() - set(schema.names)), sorted(set(schema.names) - r.keys())
            raise ValueError(f"a row that does not fit its table: extra {extra}, missing {missing}")
    return rows


def _part_schema(table: str) -> pa.Schema:
    version = TABLE_VERSIONS.get(table, SCHEMA_VERSION)
    return PART_SCHEMAS[table].with_metadata({"unravel.table": table, "unravel.schema_version": version})


def part_path(out: str | Path, table: str, study: str, run_id: str, batch_key: str) -> Path:
    return where(out) / table / f"study={study}" / f"run_id={run_id}" / f"part-{batch_key}.parquet"


def write_part(out: str | Path, table: str, study: str, run_id: str, batch_key: str, rows: list[dict]) -> Path:
    """One finished batch, one file; a batch redone after a crash replaces its own file."""
    schema = _part_schema(table)
    data = pa.Table.from_pylist(_checked(schema, rows), schema=schema)
    path = part_path(out, table, study, run_id, batch_key)
    write_atomic(data, path)
    return path


def write_errors(out: str | Path, batch_key: str, rows: list[dict]) -> Path:
    """Error rows are history: each failed attempt adds a file."""
    schema = _part_schema("errors")
    data = pa.Table.from_pylist(_checked(schema, rows), schema=schema)
    path = where(out) / "errors" / f"part-{batch_key}-{uuid.uuid4().hex[:8]}.parquet"
    write_atomic(data, path)
    return path


# -- the files of a partitioned table: the one listing every reader and writer goes through -------------

COMPACTION = ".compaction"   # `unravel compact`'s staging (compaction.py): outside every table's folder, since
#                              DuckDB's globs (lesion/*/*/*.parquet, lesion/**) read hidden names inside it too
DATA_PREFIXES = ("part-", "compact-")   # a batch's file (write_part, write_errors), a compacted one (write_compacted)
_HIVE = pa.schema([("study", pa.string()), ("run_id", pa.string())])


@dataclass(frozen=True)
class DataFile:
    """A file holding rows of a partitioned table, and the partition (study, run_id) its rows belong to."""
    path: "Path | Location"
    partition: tuple[tuple[str, str], ...]   # (("study", s), ("run_id", r)); () for errors

    def expression(self) -> pc.Expression:
        """The partition as the constant columns Arrow gives the file's rows (taken literally from the folder
        names, as written)."""
        terms = [pc.field(name) == value for name, value in self.partition]
        return functools.reduce(lambda a, b: a & b, terms) if terms else pc.scalar(True)


def partition_folders(out: str | Path, table: str, base: str = "") -> list[Path]:
    """The folders of a table that hold its files (<table>/study=*/run_id=*; errors/ itself), under OUT, or
    under ``OUT/<base>`` (the staging of compaction, which mirrors them)."""
    root = Path(out) / base / table if base else Path(out) / table
    if table == "errors":
        return [root] if root.is_dir() else []
    return sorted(p for p in root.glob("study=*/run_id=*") if p.is_dir()) if root.is_dir() else []


def files_in(folder: Path) -> list[Path]:
    """The data files of one partition folder, sorted (never a temporary: those start with a dot)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(folder / n for n in names if n.startswith(DATA_PREFIXES) and n.endswith(".parquet"))


def staging(out: str | Path, folder: Path) -> Path:
    """Where compaction stages the partition folder ``folder`` of OUT: OUT/.compaction/<its path in OUT>."""
    return Path(out) / COMPACTION / Path(folder).relative_to(Path(out))


def staged_in(out: str | Path, table: str) -> list[tuple[Path, Path]]:
    """(partition folder, staged files' folder) of each partition of ``table`` whose compaction was stopped
    between its two renames (compaction.py): its rows are in the staged ``new`` folder, the absorbed
    files beside it in ``old``."""
    found = []
    for stage in partition_folders(out, table, COMPACTION):
        if (stage / "new").is_dir() and (stage / "old").is_dir():
            found.append((Path(out) / stage.relative_to(Path(out) / COMPACTION), stage / "new"))
    return found


def data_files(out: str | Path, table: str) -> list[DataFile]:
    """Every file that holds rows of a partitioned table now, once each: the files of its partition folders,
    plus the staged files of a partition whose compaction was stopped between its two renames (its folder
    is then gone, or holds only rows written since). Listed again if a folder came, went or was swapped
    (another inode) while listing, so a reader beside a running compaction misses no folder in the moment
    between the renames; a file that moves after listing fails to open (an error, never a row read twice)."""
    out = where(out)
    if isinstance(out, Location):
        return _remote_data_files(out, table)
    while True:
        folders = _inodes(partition_folders(out, table))
        listed = [(folder, files_in(folder)) for folder in folders]
        listed += [(folder, files_in(new)) for folder, new in staged_in(out, table)]
        if _inodes(partition_folders(out, table)) == folders:
            break
    found = []
    for folder, files in listed:
        partition = tuple(tuple(name.split("=", 1)) for name in folder.relative_to(out / table).parts)
        found += [DataFile(p, partition) for p in files]
    return found


def remote_partitions(out: Location, table: str) -> list[tuple[Location, tuple, list[str]]]:
    """On object storage, from one listing of the table's prefix: (folder, partition, names of every data
    file in it, live or not) per partition."""
    by_folder: dict[str, list[str]] = {}
    root = out / table
    for info in root.files():
        folder, _, name = root.relative(info.path).rpartition("/")
        depth_ok = folder == "" if table == "errors" else folder.count("/") == 1 and all(
            "=" in part for part in folder.split("/"))
        if depth_ok and name.startswith(DATA_PREFIXES) and name.endswith(".parquet"):
            by_folder.setdefault(folder, []).append(name)
    return [(root / folder if folder else root,
             tuple(tuple(part.split("=", 1)) for part in folder.split("/")) if folder else (), sorted(names))
            for folder, names in sorted(by_folder.items())]


def _remote_data_files(out: Location, table: str) -> list[DataFile]:
    """On object storage: each partition's files, less those a complete set of compacted files absorbed
    (and the members of a set not yet complete: see compaction.py)."""
    return [DataFile(folder / n, partition) for folder, partition, names in remote_partitions(out, table)
            for n in live_files(folder, names)]


ABSORBED = "unravel.absorbed"     # a compacted file's footer: the files its set replaces (object storage)
COMPACT_SET = "unravel.compact_set"   # "<set id>:<members>", the compacted files written together


def compact_footers(folder: Location, names: list[str]) -> dict[str, tuple[str, int, list[str]]]:
    """For each compacted file of a partition on object storage: (its set, the set's size, what it absorbs)."""
    found = {}
    for name in names:
        if name.startswith("compact-"):
            meta = read_metadata(folder / name).metadata or {}
            set_id, _, size = meta.get(COMPACT_SET.encode(), b":1").decode().partition(":")
            found[name] = (set_id, int(size or 1), json.loads(meta.get(ABSORBED.encode(), b"[]")))
    return found


def live_files(folder: Location, names: list[str]) -> list[str]:
    """The files of a partition whose rows are data: every compacted file of a complete set, and every
    other file no complete set absorbed (object storage has no rename, so a set declares what it replaces)."""
    footers = compact_footers(folder, names)
    members: dict[str, list[str]] = {}
    for name, (set_id, _, _) in footers.items():
        members.setdefault(set_id, []).append(name)
    complete = {s for s, names_ in members.items() if len(names_) == footers[names_[0]][1]}
    absorbed = {a for name, (set_id, _, gone) in footers.items() if set_id in complete for a in gone}
    return [n for n in names if n not in absorbed and (n not in footers or footers[n][0] in complete)]


def _inodes(folders: list[Path]) -> dict[Path, int]:
    found = {}
    for folder in folders:
        try:
            found[folder] = folder.stat().st_ino
        except FileNotFoundError:  # renamed since it was listed
            pass
    return found


def parts(out: str | Path, table: str) -> list[Path]:
    """The paths of ``data_files``: the resume index and every reader start here."""
    return [f.path for f in data_files(out, table)]


def read_schema(table: str) -> pa.Schema:
    """A partitioned table's columns as read: its files' columns, then study and run_id from the folders."""
    return PART_SCHEMAS[table] if table == "errors" else pa.unify_schemas([PART_SCHEMAS[table], _HIVE])


def dataset(out: str | Path, table: str):
    """A partitioned table as an Arrow dataset over exactly its data files (none opened yet), study and
    run_id from each file's partition; None when it has no file. ``read_parts`` and the query views read
    through it, in the current schema: a column a file predates reads as null (see ADDED_COLUMNS)."""
    import pyarrow.dataset as ds
    import pyarrow.fs as pafs
    files = data_files(out, table)
    if not files:
        return None
    out = where(out)
    fs = out.fs if isinstance(out, Location) else pafs.LocalFileSystem()
    paths = [f.path.path if isinstance(f.path, Location) else os.path.abspath(f.path) for f in files]
    return ds.FileSystemDataset.from_paths(paths, schema=read_schema(table), format=ds.ParquetFileFormat(),
                                           filesystem=fs, partitions=[f.expression() for f in files])


def read_parts(out: str | Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A partitioned table as one DataFrame (study and run_id from the folder names)."""
    try:
        return _read_parts(out, table, columns)
    except (OSError, pa.ArrowException) as e:
        check_parts(out, table)  # names the unreadable file
        raise CorruptResult(f"{where(out) / table}: cannot be read ({e})") from None


def check_parts(out: str | Path, table: str) -> None:
    """Raise CorruptResult naming the first data file that is not a readable Parquet file."""
    for p in parts(out, table):
        _check_file(p)


def _check_file(p: "Path | Location") -> None:
    try:
        read_metadata(p)
    except (OSError, pa.ArrowException) as e:
        raise CorruptResult(f"{p}: unreadable result file ({e}); delete it and rerun to recompute its "
                            f"units") from None


def _read_parts(out: str | Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    data = dataset(out, table)
    if data is None:
        names = columns or read_schema(table).names
        return pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    return _with_added_columns(table, data.to_table(columns=columns)).to_pandas()


def _with_added_columns(table: str, data: pa.Table) -> pa.Table:
    """Rows of files written before a column existed read it as ADDED_COLUMNS says, not as null."""
    for name, value in ADDED_COLUMNS.get(table, {}).items():
        if name in data.column_names:
            data = data.set_column(data.column_names.index(name), name, pc.fill_null(data[name], value))
    return data


def count_rows(out: str | Path, table: str) -> int:
    """The rows of a partitioned table, from its files' footers (no row read)."""
    return sum(read_metadata(f.path).num_rows for f in data_files(out, table))


def read_files(table: str, files: "list[Path | Location]") -> pa.Table:
    """The rows of some data files of one partition, in the table's current schema (without study and
    run_id, which stay in the folder names), for compaction to write as one."""
    import pyarrow.dataset as ds
    try:
        fs = files[0].fs if isinstance(files[0], Location) else None
        data = ds.dataset([arrow_source(p)[0] for p in files], schema=PART_SCHEMAS[table], format="parquet",
                          filesystem=fs).to_table()
    except (OSError, pa.ArrowException) as e:
        for p in files:
            _check_file(p)
        raise CorruptResult(f"{files[0].parent}: cannot be read ({e})") from None
    return _with_added_columns(table, data).replace_schema_metadata(_part_schema(table).metadata)


def write_compacted(folder: "Path | Location", data: pa.Table, max_rows: int | None = None,
                    absorbed: list[str] | None = None) -> list:
    """``data`` as compacted files in ``folder`` (one, or one per ``max_rows`` rows), each written whole.
    On object storage each file's footer names its set and the files the set absorbs (``live_files``)."""
    step = max_rows or max(len(data), 1)
    starts = range(0, max(len(data), 1), step)
    footer = {} if absorbed is None else {ABSORBED: json.dumps(absorbed),
                                          COMPACT_SET: f"{uuid.uuid4().hex}:{len(starts)}"}
    written = []
    for start in starts:
        path = folder / f"compact-{uuid.uuid4().hex[:16]}.parquet"
        chunk = data.slice(start, step)
        write_atomic(chunk.replace_schema_metadata({**(chunk.schema.metadata or {}), **footer}), path)
        written.append(path)
    return written


def sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def done_keys(out: str | Path, table: str | None = None) -> set[str]:
    """The resume index: unit keys already written (read from the data files themselves), in ``table``
    or, by default, in every table of study results."""
    keys: set[str] = set()
    for name in (table,) if table else STUDY_TABLES:
        data = dataset(out, name)  # the unit_key column of every file, read in parallel (on object storage,
        if data is None:           # one request after another took 20 s at 100k units)
            continue
        try:
            keys.update(data.to_table(columns=["unit_key"]).column(0).to_pylist())
        except (OSError, pa.ArrowException) as e:  # a corrupt part is never read as data: name it
            base = where(out)
            for f in data.files:
                p = base / base.relative(f) if isinstance(base, Location) else Path(f)
                try:
                    read_parquet(p, columns=["unit_key"])
                except Exception as bad:
                    raise CorruptResult(f"{p}: unreadable result file ({bad}); delete it and rerun to recompute "
                                        f"its units") from None
            raise CorruptResult(f"{where(out) / name}: cannot be read ({e})") from None
    return keys


class CorruptResult(RuntimeError):
    """A file in the output folder that cannot be read as what it claims to be."""


def table_path(out: str | Path, name: str) -> Path:
    return where(out) / f"{name}.parquet"


def _arrow(name: str, rows: list[dict] | pd.DataFrame) -> pa.Table:
    schema = SCHEMAS[name].with_metadata({"unravel.table": name, "unravel.schema_version": SCHEMA_VERSION})
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
    return pa.Table.from_pylist(_checked(schema, rows), schema=schema)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; fsynced and renamed over ``path`` on success,
    removed on failure (a full disk, an exception), so ``path`` is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.kill_point("kill_before_rename")
        os.replace(tmp, path)
        sync_folder(path.parent)  # the rename itself survives a power cut
    finally:
        if tmp.exists():
            tmp.unlink()


def write_atomic(table: pa.Table, path: "Path | Location") -> None:
    if isinstance(path, Location):  # one PUT: visible whole or not at all
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        path.write_bytes(sink.getvalue().to_pybytes())
        return
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_file(path: "Path | Location", data: bytes) -> None:
    """A file of OUT other than a table (a checkpoint, the report, a figure), written whole."""
    (path if isinstance(path, Location) else Location.of(path)).write_bytes(data)


def write_table(out: str | Path, name: str, rows: list[dict] | pd.DataFrame) -> Path:
    """Replace a whole table (runs, epochs): small tables rewritten as one file."""
    path = table_path(out, name)
    write_atomic(_arrow(name, rows), path)
    return path


def replace_rows(out: str | Path, name: str, rows: list[dict], run_ids) -> pd.DataFrame:
    """Write ``rows`` into a per-run table (runs, epochs, training_errors) in place of the rows of
    ``run_ids``, keeping every other run's rows: one command never drops another's."""
    existing = read_table(out, name)
    kept = existing[~existing["run_id"].isin(set(run_ids))].to_dict("records")
    write_table(out, name, sorted(kept + rows, key=lambda r: r["run_id"]))  # stable: epochs keep their order
    return read_table(out, name)


def replace_runs(out: str | Path, rows: list[dict]) -> pd.DataFrame:
    """Write ``rows`` into the runs table, replacing rows of the same run_id and keeping every other
    (trained and imported runs share the table; no run's row is ever dropped)."""
    return replace_rows(out, "runs", rows, [r["run_id"] for r in rows])


def relative(out: str | Path, path: str | Path) -> str:
    """A path inside OUT as stored in a table: relative to OUT, so the folder can be moved or copied."""
    out = where(out)
    if isinstance(out, Location):
        inside = path.path if isinstance(path, Location) else str(path)
        return out.relative(inside)
    path, root = Path(path).resolve(), Path(out).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def located(out: str | Path, stored: str) -> Path:
    """A stored path (relative to OUT; absolute in tables written before 0.2) as a path to open."""
    return where(out) / stored


def read_table(out: str | Path, name: str) -> pd.DataFrame:
    path = table_path(out, name)
    if not path.exists():
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in SCHEMAS[name]})
    try:
        return read_parquet(path).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise CorruptResult(f"{path}: unreadable table ({e}); rerun the command that writes it "
                            f"(unravel train or run for runs and epochs)") from None


def prune(out: str | Path, run_ids: set[str], unit_keys: set[str]) -> dict[str, int]:
    """Remove the rows of runs and units not in ``run_ids`` / ``unit_keys``; rows removed per table.

    Each file is rewritten whole (or deleted when nothing of it stays) by the atomic path, so a
    prune killed at any point leaves every file whole, and running it again finishes the job."""
    removed = {}
    for table in PART_SCHEMAS:
        count = 0
        for part in parts(out, table):
            data = read_parquet(part)  # hive columns stay in the folder names, not in the file
            keep = pa.array([k in unit_keys for k in data.column("unit_key").to_pylist()])
            dropped = len(keep) - sum(keep.to_pylist())
            if not dropped:
                continue
            if dropped == len(keep) and isinstance(part, Location) and part.name.startswith("compact-"):
                write_atomic(data.slice(0, 0), part)  # emptied, not deleted: its set stays complete (live_files)
            elif dropped == len(keep):
                part.delete() if isinstance(part, Location) else part.unlink()
            else:
                write_atomic(data.filter(keep), part)
            count += dropped
        removed[table] = count
    for table in SCHEMAS:
        frame = read_table(out, table)
        stale = ~frame["run_id"].isin(run_ids)
        if stale.any():
            write_table(out, table, frame[~stale])
        removed[table] = int(stale.sum())
    return removed


def remove_temporaries(out: str | Path) -> int:
    """Delete the temporary files a killed writer left behind (never read: they are not parts)."""
    out = where(out)
    if isinstance(out, Location):
        return 0  # object storage: an upload cut short leaves no object
    stale = [p for folder in (*PART_SCHEMAS, IMPORTED) if (out / folder).exists()
             for p in (out / folder).rglob(".*.tmp")] + list(out.glob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


class OutputBusy(RuntimeError):
    """Another unravel process is writing the same output folder."""


@contextmanager
def writer_lock(out: str | Path) -> Iterator[None]:
    """Hold ``<out>/.unravel.lock`` (flock) while writing: a second writer of the same folder is
    refused at once instead of racing the first. The lock goes with the process, even on SIGKILL.
    On object storage the lock is a lease object (``_lease``)."""
    out = where(out)
    if isinstance(out, Location):
        with _lease(out):
            yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise OutputBusy(f"{out} is being written by another unravel process ({holder}); wait for it to "
                             f"finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


LEASE_S = 60.0          # a lease not renewed for this long is lapsed (its writer is gone)
LEASE_SETTLE_S = 0.5    # between writing a lease and reading it back: a writer racing ours has written by then


def _holder(lease: dict) -> str:
    return f"pid {lease.get('pid')} on {lease.get('host')}"


def _read_lease(lock: Location) -> dict | None:
    try:
        return json.loads(lock.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # a torn or foreign file: treated as no lease
        return None


def _lapsed(lease: dict) -> bool:
    """Expired, or held by a process of this machine that is gone (a killed driver, rerun at once)."""
    if lease.get("expires", 0) < time.time():
        return True
    if lease.get("host") == os.uname().nodename:
        try:
            os.kill(int(lease["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, KeyError, ValueError):
            return False
    return False


@contextmanager
def _lease(out: Location) -> Iterator[None]:
    """OUT's writer lock on object storage: a lease object with an owner and an expiry, renewed while
    the command runs and deleted at its end. Taking it is write, wait, read back: of two writers that
    both found it free, the one whose lease is read back holds it; the other is refused."""
    import threading
    lock = out / LOCK_FILE
    held = _read_lease(lock)
    if held is not None and not _lapsed(held):
        raise OutputBusy(f"{out} is being written by another unravel process ({_holder(held)}, lease until "
                         f"{time.strftime('%H:%M:%S', time.localtime(held['expires']))}); wait for it to finish "
                         f"or choose another --out")
    mine = {"pid": os.getpid(), "host": os.uname().nodename, "token": uuid.uuid4().hex}

    def renew() -> None:
        lock.write_bytes(json.dumps({**mine, "expires": time.time() + LEASE_S}).encode())

    renew()
    time.sleep(LEASE_SETTLE_S)
    now = _read_lease(lock) or {}
    if now.get("token") != mine["token"]:
        raise OutputBusy(f"{out} is being written by another unravel process ({_holder(now)}); wait for it "
                         f"to finish or choose another --out")
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(LEASE_S / 4):
            try:
                renew()
            except Exception:  # a blip: the next renewal tries again well before the lease lapses
                pass

    keeper = threading.Thread(target=keep, name="unravel-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        if (_read_lease(lock) or {}).get("token") == mine["token"]:
            lock.delete()


def discard_if_unused(out: str | Path) -> None:
    """Remove an OUT that a command made, then met bad input in, if it holds nothing but the lock
    and the spec (and data record) the command recorded."""
    out = where(out)
    if isinstance(out, Location):
        names = {PurePosixPath(i.path).name for i in out.children()}
        if names <= {LOCK_FILE, SPEC_FILE, DATA_RECORD}:
            for name in names & {SPEC_FILE, DATA_RECORD}:
                (out / name).delete()
        (out / LOCK_FILE).delete()
        return
    try:
        if not any(p.name not in (LOCK_FILE, SPEC_FILE, DATA_RECORD) for p in out.iterdir()):
            (out / SPEC_FILE).unlink(missing_ok=True)
            (out / DATA_RECORD).unlink(missing_ok=True)
        (out / LOCK_FILE).unlink(missing_ok=True)
        out.rmdir()  # only if empty
    except OSError:
        pass


# -- the other files of an experiment ----------------------------------------------------------------

def save_spec(out: str | Path, experiment: "ExperimentSpec") -> None:
    """Keep the spec beside its results, as written and as resolved (every trial with its network config and
    blocks, every study's runs, the data's paths), so that `unravel status OUT`, the figures, the report and
    prune read OUT alone: never the spec's YAML, its data or its model folders."""
    text = json.dumps({"path": experiment.path, "spec": experiment.raw, "experiment": experiment.record()},
                      sort_keys=True)
    write_file(where(out) / SPEC_FILE, text.encode())


def read_spec_file(out: str | Path) -> dict | None:
    """OUT's spec.json (None if OUT holds none): ``spec``, the document; ``path``, where it was read;
    ``experiment``, the resolved experiment's record (absent where an earlier unravel wrote the file)."""
    path = where(out) / SPEC_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict) or not isinstance(recorded["spec"], dict):
            raise ValueError("not a mapping with the spec in it")
        return recorded
    except (OSError, ValueError, KeyError) as e:
        raise CorruptResult(f"{path}: unreadable ({e}); rerun unravel lesion or run to write it again") from None


def read_spec(out: str | Path) -> dict | None:
    """The spec document that made OUT (None if OUT holds none)."""
    recorded = read_spec_file(out)
    return recorded["spec"] if recorded else None


def imported_checkpoint(out: str | Path, run_id: str) -> Path:
    return where(out) / IMPORTED / run_id / "model.pt"


def tune_dir(out: str | Path, experiment: str) -> "Path | Location":
    """Where Ray Tune keeps an experiment's state (absolute: Tune resolves paths itself)."""
    out = where(out)
    return out / TUNE / experiment if isinstance(out, Location) else out.resolve() / TUNE / experiment


def has_results(out: str | Path, run_id: str) -> bool:
    """Whether any study result of ``run_id`` is in OUT."""
    return any(dict(f.partition).get("run_id") == run_id for table in STUDY_TABLES for f in data_files(out, table))


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (pyarrow reports it without an errno, hence the text)."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)

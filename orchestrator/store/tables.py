"""An experiment's tables read and written: whole tables (runs, epochs, training_errors) rewritten as one
file, partitioned ones (lesion, gradients, gates, errors) a file per finished batch; the resume index
(``done_keys``) and prune."""
from __future__ import annotations

import json
import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from orchestrator.location import Location
from orchestrator.store import layout
from orchestrator.store.files import CorruptResult, name_the_unreadable, read_parquet, write_parquet
from orchestrator.store.listing import ABSORBED, COMPACT_SET, data_files, dataset, parts
from orchestrator.store.schemas import (PART_SCHEMAS, RESUME_TABLES, SCHEMAS, STUDY_TABLES, part_arrow, part_schema,
                                        read_schema, table_arrow, with_added_columns)


# -- partitioned tables ---------------------------------------------------------------------------------

def write_part(out, table: str, study: str, run_id: str, batch_key: str, rows: list[dict]) -> Location:
    """One finished batch, one file; a batch redone after a crash replaces its own file."""
    path = layout.part_path(out, table, study, run_id, batch_key)
    write_parquet(part_arrow(table, rows), path)
    return path


def write_errors(out, batch_key: str, rows: list[dict]) -> Location:
    """Error rows are history: each failed attempt adds a file."""
    path = layout.errors_path(out, batch_key, uuid.uuid4().hex[:8])
    write_parquet(part_arrow("errors", rows), path)
    return path


def read_parts(out, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """A partitioned table as one DataFrame (study and run_id from the folder names)."""
    data = dataset(out, table)
    if data is None:
        names = columns or read_schema(table).names
        return pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    try:
        return with_added_columns(table, data.to_table(columns=columns)).to_pandas()
    except (OSError, pa.ArrowException) as e:
        name_the_unreadable(parts(out, table), columns)
        raise CorruptResult(f"{layout.table_folder(out, table)}: cannot be read ({e})") from None


def read_files(table: str, files: list[Location]) -> pa.Table:
    """The rows of some data files of one partition, in the table's current schema (without study and
    run_id, which stay in the folder names), for compaction to write as one."""
    try:
        data = ds.dataset([p.path for p in files], schema=PART_SCHEMAS[table], format="parquet",
                          filesystem=files[0].fs).to_table()
    except (OSError, pa.ArrowException) as e:
        name_the_unreadable(files)
        raise CorruptResult(f"{files[0].parent}: cannot be read ({e})") from None
    return with_added_columns(table, data).replace_schema_metadata(part_schema(table).metadata)


def write_compacted(folder: Location, data: pa.Table, max_rows: int | None = None,
                    absorbed: list[str] | None = None) -> list[Location]:
    """``data`` as compacted files in ``folder`` (one, or one per ``max_rows`` rows), each written whole.
    With ``absorbed`` (object storage) each file's footer names its set and the files the set absorbs
    (``listing.live_files``)."""
    step = max_rows or max(len(data), 1)
    starts = range(0, max(len(data), 1), step)
    footer = {} if absorbed is None else {ABSORBED: json.dumps(absorbed),
                                          COMPACT_SET: f"{uuid.uuid4().hex}:{len(starts)}"}
    written = []
    for start in starts:
        path = layout.compacted_path(folder, uuid.uuid4().hex[:16])
        chunk = data.slice(start, step)
        write_parquet(chunk.replace_schema_metadata({**(chunk.schema.metadata or {}), **footer}), path)
        written.append(path)
    return written


def done_keys(out, table: str | None = None) -> set[str]:
    """The resume index: unit keys already written (read from the data files themselves), in ``table``
    or, by default, in every table of study results whose keys say a unit is written (``RESUME_TABLES``)."""
    keys: set[str] = set()
    for name in (table,) if table else RESUME_TABLES:
        data = dataset(out, name)  # the unit_key column of every file, read in parallel (on object storage,
        if data is None:           # one request after another took 20 s at 100k units)
            continue
        try:
            keys.update(data.to_table(columns=["unit_key"]).column(0).to_pylist())
        except (OSError, pa.ArrowException) as e:  # a corrupt part is never read as data: name it
            name_the_unreadable(parts(out, name), ["unit_key"])
            raise CorruptResult(f"{layout.table_folder(out, name)}: cannot be read ({e})") from None
    return keys


def has_results(out, run_id: str) -> bool:
    """Whether any study result of ``run_id`` is in OUT."""
    return any(dict(f.partition).get("run_id") == run_id for table in STUDY_TABLES for f in data_files(out, table))


# -- whole tables ---------------------------------------------------------------------------------------

def write_table(out, name: str, rows: list[dict] | pd.DataFrame) -> Location:
    """Replace a whole table (runs, epochs): small tables rewritten as one file."""
    path = layout.table_path(out, name)
    write_parquet(table_arrow(name, rows), path)
    return path


def read_table(out, name: str) -> pd.DataFrame:
    path = layout.table_path(out, name)
    if not path.exists():
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in SCHEMAS[name]})
    try:
        return read_parquet(path).to_pandas()
    except (OSError, pa.ArrowException) as e:
        raise CorruptResult(f"{path}: unreadable table ({e}); rerun the command that writes it "
                            f"(unravel train or run for runs and epochs)") from None


def replace_rows(out, name: str, rows: list[dict], run_ids) -> pd.DataFrame:
    """Write ``rows`` into a per-run table (runs, epochs, training_errors) in place of the rows of
    ``run_ids``, keeping every other run's rows: one command never drops another's."""
    existing = read_table(out, name)
    kept = existing[~existing["run_id"].isin(set(run_ids))].to_dict("records")
    write_table(out, name, sorted(kept + rows, key=lambda r: r["run_id"]))  # stable: epochs keep their order
    return read_table(out, name)


def replace_runs(out, rows: list[dict]) -> pd.DataFrame:
    """Write ``rows`` into the runs table, replacing rows of the same run_id and keeping every other
    (trained and imported runs share the table; no run's row is ever dropped)."""
    return replace_rows(out, "runs", rows, [r["run_id"] for r in rows])


# -- prune ----------------------------------------------------------------------------------------------

def prune(out, run_ids: set[str], unit_keys: set[str]) -> dict[str, int]:
    """Remove the rows of runs and units not in ``run_ids`` / ``unit_keys``; rows removed per table.

    Each file is rewritten whole (or deleted when nothing of it stays), so a prune killed at any point
    leaves every file whole, and running it again finishes the job. On object storage a compacted file emptied
    is kept, empty: deleting it would leave its set incomplete and hide its other files' rows."""
    removed = {}
    for table in PART_SCHEMAS:
        count = 0
        for part in parts(out, table):
            data = read_parquet(part)  # hive columns stay in the folder names, not in the file
            keep = pa.array([k in unit_keys for k in data.column("unit_key").to_pylist()])
            dropped = len(keep) - sum(keep.to_pylist())
            if not dropped:
                continue
            if dropped == len(keep) and (part.local or not part.name.startswith("compact-")):
                part.delete()
            else:
                write_parquet(data.filter(keep), part)
            count += dropped
        removed[table] = count
    for table in SCHEMAS:
        frame = read_table(out, table)
        stale = ~frame["run_id"].isin(run_ids)
        if stale.any():
            write_table(out, table, frame[~stale])
        removed[table] = int(stale.sum())
    return removed


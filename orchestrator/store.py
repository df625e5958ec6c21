"""Parquet tables under an experiment's output folder; the only place results are written.

Every write goes to a temporary name in the same folder and is renamed into place, so a
reader (pandas, pyarrow, DuckDB) never sees half a file. Schemas are explicit and carry
a version in their metadata.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"

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


def table_path(out: str | Path, name: str) -> Path:
    return Path(out) / f"{name}.parquet"


def _arrow(name: str, rows: list[dict] | pd.DataFrame) -> pa.Table:
    schema = SCHEMAS[name].with_metadata({"unravel.table": name, "unravel.schema_version": SCHEMA_VERSION})
    if isinstance(rows, pd.DataFrame):
        return pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
    return pa.Table.from_pylist(rows, schema=schema)


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(out: str | Path, name: str, rows: list[dict] | pd.DataFrame) -> Path:
    """Replace a whole table (runs, epochs): small tables rewritten as one file."""
    path = table_path(out, name)
    write_atomic(_arrow(name, rows), path)
    return path


def read_table(out: str | Path, name: str) -> pd.DataFrame:
    path = table_path(out, name)
    if not path.exists():
        return pd.DataFrame({f.name: pd.Series(dtype=f.type.to_pandas_dtype()) for f in SCHEMAS[name]})
    return pq.read_table(path).to_pandas()

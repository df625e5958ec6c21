"""DuckDB over an experiment's Parquet tables: each table a view by its name."""
from __future__ import annotations

from pathlib import Path

import duckdb

from .store import TABLES


def connect(out: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per table found under ``out``."""
    out = Path(out)
    con = duckdb.connect()
    for name in TABLES:
        single, folder = out / f"{name}.parquet", out / name
        if single.exists():
            source = f"read_parquet('{_quote(single)}')"
        elif name == "errors" and folder.exists() and any(folder.glob("part-*.parquet")):
            source = f"read_parquet('{_quote(folder)}/part-*.parquet')"
        elif folder.exists() and any(folder.rglob("part-*.parquet")):
            source = f"read_parquet('{_quote(folder)}/*/*/part-*.parquet', hive_partitioning=true)"
        else:
            continue
        con.execute(f"create view {name} as select * from {source}")
    return con


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")


"""DuckDB over an experiment's Parquet tables: each table a view by its name, and nothing else.

Every table of ``store.TABLES`` is a view, with its schema even when OUT holds none of its rows
(a clean run's ``errors`` is empty, not missing). The views are Arrow datasets over the exact files
(``con.register``; a study table's are those ``store.data_files`` lists, as for every reader): no
path is ever written into SQL, so a folder named ``run[1]`` or ``it's`` is read as it is, never as
a glob or a quote. Then DuckDB's external access is switched off and its
configuration locked, so the SQL sees OUT's tables only: no other file read, no ``COPY ... TO``,
no ``ATTACH``, no extension installed or loaded, and no ``SET`` that turns any of it back on
(the registered datasets are read by pyarrow, so the views keep working). ``allow_external``
leaves DuckDB as it is, for joining other files.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from orchestrator import store

FORMATS = ("table", "csv", "json")
_SANDBOX_HINT = "the SQL sees only OUT's tables; --allow-external lets it reach other files"


class QueryError(ValueError):
    """Bad input to a query (the SQL, or OUT): the message is one line."""


def sources(out: str | Path) -> dict[str, pa.Table | ds.Dataset | ds.Scanner]:
    """Every table of OUT as Arrow data over exactly its files (none read yet), by table name;
    a table with no file is empty, with its schema."""
    out = store.where(out)
    found: dict[str, pa.Table | ds.Dataset | ds.Scanner] = {}
    for name in store.TABLES:
        if name in store.SCHEMAS:
            schema, path = store.SCHEMAS[name], store.table_path(out, name)
            data = ds.dataset([path.path], schema=schema, format="parquet",
                              filesystem=path.fs) if path.is_file() else None
        else:  # the data files store lists (study and run_id from their folders; errors rows carry their own)
            schema, data = store.read_schema(name), store.dataset(out, name)
        found[name] = schema.empty_table() if data is None else _with_added_columns(name, data)
    return found


def _with_added_columns(name: str, data: ds.Dataset) -> ds.Dataset | ds.Scanner:
    """A table whose schema grew: parts written before a column existed read it as its stated value
    (``store.ADDED_COLUMNS``), as ``store.read_parts`` does, not as NULL."""
    added = store.ADDED_COLUMNS.get(name)
    if not added:
        return data
    columns = {n: pc.coalesce(ds.field(n), pa.scalar(added[n])) if n in added else ds.field(n)
               for n in data.schema.names}
    return ds.Scanner.from_dataset(data, columns=columns)


def connect(out: str | Path, allow_external: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per table of OUT; sandboxed unless ``allow_external``."""
    out = store.experiment_folder(out)
    try:
        tables = sources(out)
    except (OSError, pa.ArrowException) as e:  # a file gone, or unreadable, while being listed
        raise QueryError(f"{out}: cannot be read ({_first_line(e)})") from None
    con = duckdb.connect()
    con.execute("set python_enable_replacements = false")  # the SQL never sees this module's variables
    for name, data in tables.items():
        con.register(name, data)
    if not allow_external:
        con.execute("set enable_external_access = false")
        con.execute("set autoinstall_known_extensions = false")
        con.execute("set autoload_known_extensions = false")
        con.execute("set lock_configuration = true")
    return con


def run(out: str | Path, sql: str, fmt: str = "table", allow_external: bool = False) -> str:
    """The result of ``sql`` over OUT's tables, as text in ``fmt`` (table, csv or json).
    Raises QueryError (one line) for SQL that cannot run or OUT that cannot be read."""
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError("the SQL is not valid UTF-8 text") from None
    con = connect(out, allow_external)
    try:
        if not con.extract_statements(sql):
            raise QueryError("no SQL statement given (e.g. \"select count(*) from runs\")")
        result = con.execute(sql)
        with warnings.catch_warnings():  # pandas' deprecation notices from inside DuckDB's conversion
            warnings.simplefilter("ignore")
            frame = result.df() if result is not None and result.description else None
            return _format(frame, fmt)
    except duckdb.Error as e:
        message = _first_line(e)
        if isinstance(e, duckdb.PermissionException) and not allow_external:
            message += f" ({_SANDBOX_HINT})"
        raise QueryError(f"query failed: {message}") from None
    finally:
        con.close()


def _format(frame, fmt: str) -> str:
    if frame is None:  # a statement without a result set
        return "[]\n" if fmt == "json" else "" if fmt == "csv" else "(no rows)\n"
    nested = [c for c in frame.columns if frame[c].dtype == object and frame[c].map(_is_nested).any()]
    if fmt == "json":
        for c in nested:
            frame[c] = frame[c].map(_plain)
        return frame.to_json(orient="records", indent=1, date_format="iso", default_handler=str) + "\n"
    for c in nested:  # lists and structs as JSON text ([1, 4]), not numpy's reprs ([1 4], array(...))
        frame[c] = frame[c].map(lambda v: json.dumps(_plain(v), default=str) if _is_nested(v) else v)
    if fmt == "csv":
        return frame.to_csv(index=False)
    return (frame.to_string(index=False) if len(frame) else "(no rows)") + "\n"


def _is_nested(value) -> bool:
    return isinstance(value, (np.ndarray, list, tuple, dict))


def _plain(value):
    """A value DuckDB handed to pandas (numpy arrays, masked arrays, dicts, numpy scalars) as plain
    Python: lists, dicts, ints, floats, None for a NULL element."""
    if isinstance(value, np.ma.MaskedArray):
        return [None if m else _plain(v) for v, m in zip(value.data, np.ma.getmaskarray(value))]
    if isinstance(value, (np.ndarray, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

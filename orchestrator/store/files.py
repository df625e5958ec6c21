"""One file of OUT, read or written: Parquet through pyarrow on the Location's filesystem, every write whole
(``Location.write_bytes``: a temporary renamed into place, or one PUT), and a file that cannot be read named,
never read as data."""
from __future__ import annotations

import errno

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.location import Location


class CorruptResult(RuntimeError):
    """A file in the output folder that cannot be read as what it claims to be."""


def read_metadata(path: Location) -> pq.FileMetaData:
    with path.fs.open_input_file(path.path) as f:
        return pq.read_metadata(f)


def read_parquet(path: Location, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(path.path, columns=columns, filesystem=path.fs)


def write_parquet(table: pa.Table, path: Location) -> None:
    """A table as one Parquet file, written whole (a reader never sees half of it)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path.write_bytes(sink.getvalue().to_pybytes())


def write_file(path: Location, data: bytes) -> None:
    """A file of OUT other than a table (a checkpoint, the report, a figure), written whole."""
    Location.of(path).write_bytes(data)


def name_the_unreadable(files: list[Location], columns: list[str] | None = None) -> None:
    """Raise CorruptResult naming the first of ``files`` whose ``columns`` (all, by default) cannot be read:
    the one place a reader that failed over many files finds which."""
    for path in files:
        try:
            read_parquet(path, columns=columns)
        except (OSError, pa.ArrowException) as e:
            raise CorruptResult(f"{path}: unreadable result file ({e}); delete it and rerun to recompute its "
                                f"units") from None


def is_disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (pyarrow reports it without an errno, hence the text)."""
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)

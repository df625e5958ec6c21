"""The files of a partitioned table: the one listing every reader and writer goes through.

A partitioned table's rows are in the files ``data_files`` lists: a part per batch, or the few files
`unravel compact` merged them into (compaction.py). In a local folder that listing sees a partition whose
compaction a kill stopped between its two renames (its rows staged under ``.compaction``); on object
storage, which has no rename, it reads a set of compacted files only once the set is complete, and then
never the files the set absorbed (their names are in its footers).
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

from orchestrator.location import Location
from orchestrator.store import layout
from orchestrator.store.files import read_metadata
from orchestrator.store.schemas import read_schema

ABSORBED = "unravel.absorbed"     # a compacted file's footer: the files its set replaces (object storage)
COMPACT_SET = "unravel.compact_set"   # "<set id>:<members>", the compacted files written together


@dataclass(frozen=True)
class DataFile:
    """A file holding rows of a partitioned table, and the partition (study, run_id) its rows belong to."""
    path: Location
    partition: tuple[tuple[str, str], ...]   # (("study", s), ("run_id", r)); () for errors

    def expression(self) -> pc.Expression:
        """The partition as the constant columns Arrow gives the file's rows (taken literally from the folder
        names, as written)."""
        terms = [pc.field(name) == value for name, value in self.partition]
        return functools.reduce(lambda a, b: a & b, terms) if terms else pc.scalar(True)


def data_files(out, table: str) -> list[DataFile]:
    """Every file that holds rows of a partitioned table now, once each."""
    return [DataFile(folder / name, partition) for folder, partition, names in partitions(out, table)
            for name in names]


def parts(out, table: str) -> list[Location]:
    """The paths of ``data_files``: the resume index and every reader start here."""
    return [f.path for f in data_files(out, table)]


def partitions(out, table: str) -> list[tuple[Location, tuple, list[str]]]:
    """(folder, partition, the names of its data files, sorted) of every partition of a table holding rows
    (the folder holding them: a partition's own, or the staging of one whose compaction was stopped)."""
    out = layout.where(out)
    if not out.local:
        return [(folder, partition, live_files(folder, names))
                for folder, partition, names in remote_partitions(out, table)]
    return [(out / out.relative(str(files[0].parent)), layout.partition_of(rel), [p.name for p in files])
            for rel, files in _local_partitions(out, table) if files]


def _local_partitions(out: Location, table: str) -> list[tuple[str, list[Path]]]:
    """(partition folder relative to the table, its files) of a local table: the files of its partition folders, plus
    the staged files of a partition whose compaction was stopped between its two renames (its folder is then
    gone, or holds only rows written since). Listed again if a folder came, went or was swapped (another
    inode) while listing, so a reader beside a running compaction misses no folder in the moment between
    the renames; a file that moves after listing fails to open (an error, never a row read twice)."""
    root = layout.table_folder(out, table).local_path
    while True:
        folders = _inodes(partition_folders(out, table))
        listed = [(folder, files_in(folder)) for folder in folders]
        listed += [(folder, files_in(new)) for folder, new in staged_in(out, table)]
        if _inodes(partition_folders(out, table)) == folders:
            break
    return [("/".join(folder.relative_to(root).parts), files) for folder, files in listed]


def partition_folders(out, table: str, base: str = "") -> list[Path]:
    """The folders of a local table that hold its files (<table>/study=*/run_id=*; errors/ itself), under
    OUT, or under ``OUT/<base>`` (the staging of compaction, which mirrors them)."""
    out = layout.where(out).local_path
    root = out / base / table if base else out / table
    if table == layout.ERRORS:
        return [root] if root.is_dir() else []
    return sorted(p for p in root.glob("study=*/run_id=*") if p.is_dir()) if root.is_dir() else []


def files_in(folder: Path) -> list[Path]:
    """The data files of one local partition folder, sorted."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(folder / n for n in names if layout.is_data_file(n))


def staged_in(out, table: str) -> list[tuple[Path, Path]]:
    """(partition folder, staged files' folder) of each partition of a local ``table`` whose compaction was
    stopped between its two renames (compaction.py): its rows are in the staged ``new`` folder, the
    absorbed files beside it in ``old``."""
    root = layout.where(out).local_path
    found = []
    for stage in partition_folders(out, table, layout.COMPACTION):
        if (stage / "new").is_dir() and (stage / "old").is_dir():
            found.append((root / stage.relative_to(root / layout.COMPACTION), stage / "new"))
    return found


def _inodes(folders: list[Path]) -> dict[Path, int]:
    found = {}
    for folder in folders:
        try:
            found[folder] = folder.stat().st_ino
        except FileNotFoundError:  # renamed since it was listed
            pass
    return found


def remote_partitions(out: Location, table: str) -> list[tuple[Location, tuple, list[str]]]:
    """On object storage, from one listing of the table's prefix: (folder, partition, names of every data
    file in it, live or not) per partition."""
    by_folder: dict[str, list[str]] = {}
    root = layout.table_folder(out, table)
    for info in root.files():
        folder, _, name = root.relative(info.path).rpartition("/")
        depth_ok = folder == "" if table == layout.ERRORS else folder.count("/") == 1 and all(
            "=" in part for part in folder.split("/"))
        if depth_ok and layout.is_data_file(name):
            by_folder.setdefault(folder, []).append(name)
    return [(root / folder if folder else root, layout.partition_of(folder), sorted(names))
            for folder, names in sorted(by_folder.items())]


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


def dataset(out, table: str) -> ds.FileSystemDataset | None:
    """A partitioned table as an Arrow dataset over exactly its data files (none opened yet), study and
    run_id from each file's partition; None when it has no file. ``read_parts`` and the query views read
    through it, in the current schema: a column a file predates reads as null (see ADDED_COLUMNS)."""
    files = data_files(out, table)
    if not files:
        return None
    return ds.FileSystemDataset.from_paths([f.path.path for f in files], schema=read_schema(table),
                                           format=ds.ParquetFileFormat(), filesystem=layout.where(out).fs,
                                           partitions=[f.expression() for f in files])


def count_rows(out, table: str) -> int:
    """The rows of a partitioned table, from its files' footers (no row read)."""
    return sum(read_metadata(f.path).num_rows for f in data_files(out, table))

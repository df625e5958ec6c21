"""`unravel compact`: a partitioned table's many small files (one per batch) merged into one per
partition folder (a study and run, or ``errors/``), each row kept exactly once wherever a kill stops it.

A folder P is compacted in four steps, staged in S = ``store.staging(OUT, P)``
(``OUT/.compaction/<P>``, outside every table's folder, so no glob reader ever sees it):

1. P's rows are written to S/new (each file whole, by ``store.atomic_path``); P is untouched.
2. P is renamed to S/old.
3. S/new is renamed to P.
4. S is deleted.

``store.data_files``, which every unravel reader goes through (read_parts, done_keys, the query
views, prune), reads P, and S/new while S/new and S/old both exist (between 2 and 3): each row once
in every state a kill can leave. A glob reader (pandas, DuckDB over ``OUT/lesion``) sees P only: the
parts up to 2, the compacted file from 3, and none of P's rows in between. ``settle`` ends that
state (does 3, then 4 everywhere); every command that writes OUT runs it first, so a rerun finishes
the job and a sweep never writes into a P whose rows are staged. Only folders with a batch's file and
more than one file are compacted, so compacting a compact folder does nothing. The kill points
(faults.py) after steps 1, 2 and 3 are ``compact_staged``, ``compact_absorbed`` and ``compact_swapped``.

On object storage, which has no rename, a partition is compacted in two steps: (1) its rows are written
as a set of compacted files whose footers name the set, its size and the files it absorbs; (2) the
absorbed files are deleted. ``store.data_files`` reads a set only once all its members exist, and then
never the files it absorbed, so each row is read once by unravel's readers after any kill; ``settle``
does (2) for complete sets and deletes the members of incomplete ones. A glob reader of the bucket may
see a partition's rows twice between (1) and (2). Kill points: ``compact_staged`` after (1),
``compact_swapped`` after (2).
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from orchestrator import faults, store
from orchestrator.location import Location


@dataclass
class Compacted:
    files_before: int
    files_after: int
    rows: int          # rows of the partitioned tables, all read back from the files' metadata
    folders: int       # partition folders compacted by this call
    seconds: float


def settle(out: str | Path) -> None:
    """Finish a compaction stopped by a kill: staged files between the two renames are moved into
    their folder, and the rest of the staging (a stale S/new, an absorbed S/old) is deleted."""
    out = store.where(out)
    if isinstance(out, Location):
        _settle_remote(out)
        return
    if not (out / store.COMPACTION).exists():
        return
    for table in store.PART_SCHEMAS:
        for folder, new in store.staged_in(out, table):
            _move_in(new, folder)
    shutil.rmtree(out / store.COMPACTION)  # only single S/new or S/old folders are left: never read


def _settle_remote(out: Location) -> None:
    for table in store.PART_SCHEMAS:
        for folder, _, names in store.remote_partitions(out, table):
            if not any(n.startswith("compact-") for n in names):
                continue
            live = set(store.live_files(folder, names))
            for name in names:
                if name not in live:  # absorbed by a complete set, or a member of a set a kill left short
                    (folder / name).delete()


def _move_in(new: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(new, folder)
    else:  # a writer that did not settle first has written into P since: the staged files join its own
        for path in store.files_in(new):
            os.rename(path, folder / path.name)
        shutil.rmtree(new)
    store.sync_folder(folder.parent)


def pending(out: str | Path) -> list[tuple[str, Path, list[Path]]]:
    """(table, folder, its data files) of each partition folder worth compacting: one that holds a
    batch's file and more than one file."""
    found = []
    if store.remote(out):
        for table in store.PART_SCHEMAS:
            for folder, _, names in store.remote_partitions(store.where(out), table):
                files = store.live_files(folder, names)
                if len(files) > 1 and any(n.startswith("part-") for n in files):
                    found.append((table, folder, [folder / n for n in files]))
        return found
    for table in store.PART_SCHEMAS:
        for folder in store.partition_folders(out, table):
            files = store.files_in(folder)
            if len(files) > 1 and any(p.name.startswith("part-") for p in files):
                found.append((table, folder, files))
    return found


def compact(out: str | Path, max_rows: int | None = None, progress: bool = False) -> Compacted:
    """Merge the files of every partition folder of OUT's partitioned tables into one (or one per
    ``max_rows`` rows). The caller holds OUT's writer lock."""
    out = store.where(out)
    started = time.perf_counter()
    settle(out)
    before = _count(out)
    todo = pending(out)
    for table, folder, files in tqdm(todo, desc="compacting", unit="folder", disable=not (progress and todo),
                                     dynamic_ncols=True):
        _compact_folder(out, table, folder, files, max_rows)
    settle(out)  # removes the emptied staging folders
    after = _count(out)
    rows = sum(store.count_rows(out, table) for table in store.PART_SCHEMAS)
    return Compacted(before, after, rows, len(todo), time.perf_counter() - started)


def _compact_folder(out, table: str, folder, files: list, max_rows: int | None) -> None:
    if isinstance(out, Location):
        data = store.read_files(table, files)
        store.write_compacted(folder, data, max_rows, absorbed=[f.name for f in files])   # 1
        faults.kill_point("compact_staged")
        for f in files:                                                                   # 2
            f.delete()
        faults.kill_point("compact_swapped")
        return
    stage = store.staging(out, folder)
    shutil.rmtree(stage, ignore_errors=True)  # settle left none; never read either way
    data = store.read_files(table, files)
    store.write_compacted(stage / "new", data, max_rows)              # 1
    faults.kill_point("compact_staged")
    os.rename(folder, stage / "old")                                  # 2
    store.sync_folder(stage)
    store.sync_folder(folder.parent)
    faults.kill_point("compact_absorbed")
    os.rename(stage / "new", folder)                                  # 3
    store.sync_folder(folder.parent)
    faults.kill_point("compact_swapped")
    shutil.rmtree(stage)                                              # 4


def _count(out) -> int:
    return sum(len(store.data_files(out, t)) for t in store.PART_SCHEMAS)

"""`unravel compact`: a partitioned table's many small files (one per batch) merged into one per
partition folder (a study and run, or ``errors/``), each row kept exactly once wherever a kill stops it.

A folder P is compacted in four steps, staged in S = ``layout.staging(OUT, P)``
(``OUT/.compaction/<P>``, outside every table's folder, so no glob reader ever sees it):

1. P's rows are written to S/new (each file whole, by ``Location.write_bytes``); P is untouched.
2. P is renamed to S/old.
3. S/new is renamed to P.
4. S is deleted.

``listing.data_files``, which every unravel reader goes through (read_parts, done_keys, the query
views, prune), reads P, and S/new while S/new and S/old both exist (between 2 and 3): each row once
in every state a kill can leave. A glob reader (pandas, DuckDB over ``OUT/lesion``) sees P only: the
parts up to 2, the compacted file from 3, and none of P's rows in between. ``settle`` ends that
state (does 3, then 4 everywhere); every command that writes OUT runs it first (``session.open_session``),
so a rerun finishes the job and a sweep never writes into a P whose rows are staged. Only folders with a
batch's file and more than one file are compacted, so compacting a compact folder does nothing. The kill points
(faults.py) after steps 1, 2 and 3 are ``compact_staged``, ``compact_absorbed`` and ``compact_swapped``.

On object storage, which has no rename, a partition is compacted in two steps: (1) its rows are written
as a set of compacted files whose footers name the set, its size and the files it absorbs; (2) the
absorbed files are deleted. ``listing.data_files`` reads a set only once all its members exist, and then
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

from orchestrator import faults
from orchestrator.location import Location, sync_folder
from orchestrator.store import layout, listing
from orchestrator.store.schemas import PART_SCHEMAS
from orchestrator.store.tables import read_files, write_compacted


@dataclass
class Compacted:
    files_before: int
    files_after: int
    rows: int          # rows of the partitioned tables, all read back from the files' metadata
    folders: int       # partition folders compacted by this call
    seconds: float


def settle(out) -> None:
    """Finish a compaction stopped by a kill: locally, staged files between the two renames are moved into
    their folder and the rest of the staging (a stale S/new, an absorbed S/old) is deleted; on object
    storage, the files a complete set absorbed and the members of an incomplete set are deleted."""
    out = layout.where(out)
    if out.local:
        _settle_local(out)
    else:
        _settle_remote(out)


def _settle_local(out: Location) -> None:
    staging = out.local_path / layout.COMPACTION
    if not staging.exists():
        return
    for table in PART_SCHEMAS:
        for folder, new in listing.staged_in(out, table):
            _move_in(new, folder)
    shutil.rmtree(staging)  # only single S/new or S/old folders are left: never read


def _settle_remote(out: Location) -> None:
    for table in PART_SCHEMAS:
        for folder, _, names in listing.remote_partitions(out, table):
            if not any(n.startswith("compact-") for n in names):
                continue
            live = set(listing.live_files(folder, names))
            for name in names:
                if name not in live:  # absorbed by a complete set, or a member of a set a kill left short
                    (folder / name).delete()


def _move_in(new: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(new, folder)
    else:  # a writer that did not settle first has written into P since: the staged files join its own
        for path in listing.files_in(new):
            os.rename(path, folder / path.name)
        shutil.rmtree(new)
    sync_folder(folder.parent)


def pending(out) -> list[tuple[str, Location, list[Location]]]:
    """(table, folder, its data files) of each partition folder worth compacting: one that holds a
    batch's file and more than one file."""
    return [(table, folder, [folder / n for n in names]) for table in PART_SCHEMAS
            for folder, _, names in listing.partitions(out, table)
            if len(names) > 1 and any(n.startswith("part-") for n in names)]


def compact(out, max_rows: int | None = None, progress: bool = False) -> Compacted:
    """Merge the files of every partition folder of OUT's partitioned tables into one (or one per
    ``max_rows`` rows). The caller holds OUT's writer lock."""
    out = layout.where(out)
    started = time.perf_counter()
    settle(out)
    before = _count(out)
    todo = pending(out)
    for table, folder, files in tqdm(todo, desc="compacting", unit="folder", disable=not (progress and todo),
                                     dynamic_ncols=True):
        (_swap if out.local else _absorb)(out, table, folder, files, max_rows)
    settle(out)  # removes the emptied staging folders
    after = _count(out)
    rows = sum(listing.count_rows(out, table) for table in PART_SCHEMAS)
    return Compacted(before, after, rows, len(todo), time.perf_counter() - started)


def _swap(out: Location, table: str, folder: Location, files: list[Location], max_rows: int | None) -> None:
    """A local folder: staged, then swapped in by two renames."""
    stage, here = layout.staging(out, folder), folder.local_path
    shutil.rmtree(stage, ignore_errors=True)  # settle left none; never read either way
    data = read_files(table, files)
    write_compacted(Location.of(stage / "new"), data, max_rows)       # 1
    faults.kill_point("compact_staged")
    os.rename(here, stage / "old")                                    # 2
    sync_folder(stage)
    sync_folder(here.parent)
    faults.kill_point("compact_absorbed")
    os.rename(stage / "new", here)                                    # 3
    sync_folder(here.parent)
    faults.kill_point("compact_swapped")
    shutil.rmtree(stage)                                              # 4


def _absorb(out: Location, table: str, folder: Location, files: list[Location], max_rows: int | None) -> None:
    """On object storage: a set of compacted files declaring what they absorb, then the absorbed deleted."""
    data = read_files(table, files)
    write_compacted(folder, data, max_rows, absorbed=[f.name for f in files])   # 1
    faults.kill_point("compact_staged")
    for f in files:                                                              # 2
        f.delete()
    faults.kill_point("compact_swapped")


def _count(out: Location) -> int:
    return sum(len(listing.data_files(out, t)) for t in PART_SCHEMAS)

"""A hand-made sweep of the digits spec (parts written by the store itself: no training, no Ray), what
unravel's readers see of it, and an in-process kill at one of the store's fault points: shared by the
compaction tests on a folder (test_compaction.py) and on object storage (test_object_storage.py)."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from orchestrator import faults, store
from orchestrator.experiment.spec import parse_spec
from orchestrator.experiment.units import batches, expand
from orchestrator.store import current, query
from sweep_cases import BASE

SPEC = parse_spec(BASE)
VALUES = {pa.string(): "x", pa.int64(): 3, pa.float64(): 0.25, pa.bool_(): False, pa.list_(pa.int64()): [1, 4]}


def row(table: str, key: str, **values) -> dict:
    return {f.name: values.get(f.name, VALUES[f.type]) for f in store.PART_SCHEMAS[table]} | {"unit_key": key}


def write_sweep(out: Path) -> None:
    """A part per batch of the spec's units, as the sweep writes them; gates (a row per block, one unit key
    per run) and two errors parts."""
    for i, batch in enumerate(batches(expand(SPEC), 5)):
        rows = [row(batch.table, u.key, k=u.k, draw=u.draw, error=i / 100) for u in batch.units]
        store.write_part(out, batch.table, batch.study, batch.run_id, batch.key, rows)
    for b in range(2):
        store.write_part(out, "gates", "gates", "gated", f"g{b}", [row("gates", f"gate{b}", block=k) for k in range(3)])
    for b in range(2):
        store.write_errors(out, f"e{b}", [row("errors", f"failed{b}")])
    store.save_spec(out, SPEC)


def rows(out: Path) -> dict[str, list[str]]:
    """Every partitioned table's rows as a sorted list (a multiset), read by read_parts."""
    return {t: sorted(map(repr, store.read_parts(out, t).itertuples(index=False))) for t in store.PART_SCHEMAS}


def queried(out: Path) -> str:
    sql = "select study, run_id, count(*), round(sum(error), 9) from lesion group by all order by all"
    return query.run(out, sql, "csv")


def snapshot(out: Path) -> tuple:
    """What unravel's readers see: rows, the resume index, `unravel status`, a query view."""
    return rows(out), store.done_keys(out), current.status(SPEC, out), queried(out)


class Killed(BaseException):
    """A kill, in-process: nothing after the point runs (compaction has no cleanup a kill would skip)."""


def kill_at(monkeypatch, name: str, nth: int) -> None:
    seen = []

    def point(at: str) -> None:
        seen.append(at)
        if seen.count(name) == nth and at == name:
            raise Killed(at)
    monkeypatch.setattr(faults, "kill_point", point)

"""Which rows of an experiment's tables belong to its current spec.

A spec evolves (seeds added, a setting changed): units of other settings have other keys, and
runs of other settings other run ids. Their rows stay on disk, since nothing is deleted
silently, but the report, the figures, the verdicts and ``unravel status`` use only the
current spec's; ``unravel prune`` removes the rest when asked.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import store
from .spec import ExperimentSpec, parse_spec
from .units import expand

PER_RUN = ("runs", "epochs", "training_errors")
PER_UNIT = (*store.STUDY_TABLES, "errors")


def current_ids(spec: ExperimentSpec) -> tuple[set[str], set[str]]:
    """(run ids, unit keys) the spec asks for."""
    return {t.run_id for t in spec.runs}, {u.key for u in expand(spec)}


def current_rows(raw: dict, tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """``tables`` restricted to the spec document ``raw``'s runs and units, and how many rows each lost."""
    runs, keys = current_ids(parse_spec(raw))
    kept, stale = {}, {}
    for name, frame in tables.items():
        column, wanted = ("run_id", runs) if name in PER_RUN else ("unit_key", keys)
        keep = frame[column].isin(wanted) if len(frame) else pd.Series(dtype=bool)
        kept[name] = frame[keep].reset_index(drop=True) if len(frame) else frame
        stale[name] = int((~keep).sum()) if len(frame) else 0
    return kept, stale


def status(spec: ExperimentSpec, out: str | Path) -> list[dict]:
    """Units of the current spec done, failed and left, per study (`unravel status`)."""
    out = Path(out)
    units = expand(spec)
    done = store.done_keys(out)
    errors = store.read_parts(out, "errors", columns=["unit_key"])
    failed_keys = set(errors["unit_key"]) - done if len(errors) else set()
    rows: dict[str, dict] = {}
    for u in units:
        r = rows.setdefault(u.study, {"study": u.study, "units": 0, "done": 0, "failed": 0, "left": 0})
        r["units"] += 1
        if u.key in done:
            r["done"] += 1
        elif u.key in failed_keys:
            r["failed"] += 1
        else:
            r["left"] += 1
    return list(rows.values())

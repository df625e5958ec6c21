"""Which rows of an experiment's tables belong to its current spec, as OUT records it.

A spec evolves (seeds added, a setting changed): units of other settings have other keys, and
runs of other settings other run ids. Their rows stay on disk, since nothing is deleted
silently, but the report, the figures, the verdicts and ``unravel status`` use only the
current spec's; ``unravel prune`` removes the rest when asked. The current spec is the resolved
experiment OUT/spec.json records, so all of this reads OUT alone.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from orchestrator import store
from orchestrator.experiment.resolved import ExperimentSpec
from orchestrator.experiment.units import expand

PER_RUN = ("runs", "epochs", "training_errors")


def current_ids(spec: ExperimentSpec) -> tuple[set[str], set[str]]:
    """(run ids, unit keys) the spec asks for."""
    return {t.run_id for t in spec.runs}, {u.key for u in expand(spec)}


def current_rows(spec: ExperimentSpec,
                 tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """``tables`` restricted to the runs and units ``spec`` asks for, and how many rows each lost."""
    runs, keys = current_ids(spec)
    kept, stale = {}, {}
    for name, frame in tables.items():
        column, wanted = ("run_id", runs) if name in PER_RUN else ("unit_key", keys)
        keep = frame[column].isin(wanted) if len(frame) else pd.Series(dtype=bool)
        kept[name] = frame[keep].reset_index(drop=True) if len(frame) else frame
        stale[name] = int((~keep).sum()) if len(frame) else 0
    return kept, stale


def _states(spec: ExperimentSpec, out: Path) -> list[tuple]:
    """(unit, "done" | "failed" | "left") for every unit of the spec; a unit counts as failed while its
    attempts are error rows and none is written."""
    done = store.done_keys(out)
    errors = store.read_parts(out, "errors", columns=["unit_key"])
    failed_keys = set(errors["unit_key"]) - done if len(errors) else set()
    return [(u, "done" if u.key in done else "failed" if u.key in failed_keys else "left") for u in expand(spec)]


def _tally(states: list[tuple], by_run: bool) -> list[dict]:
    rows: dict[tuple[str, ...], dict] = {}
    for u, state in states:
        key = (u.run_id, u.study) if by_run else (u.study,)
        r = rows.get(key)
        if r is None:
            r = rows[key] = {**({"run_id": u.run_id} if by_run else {}), "study": u.study, "units": 0, "done": 0,
                             "failed": 0, "left": 0}
        r["units"] += 1
        r[state] += 1
    return list(rows.values())


def status(spec: ExperimentSpec, out: str | Path, by_run: bool = False) -> list[dict]:
    """Units of the current spec done, failed and left, per study, or per run and study with ``by_run``
    (`unravel status`)."""
    return _tally(_states(spec, store.where(out)), by_run)


def trial_status(spec: ExperimentSpec, out: str | Path) -> dict:
    """The spec's training trials finished (in the runs table), failed (in training_errors) and left.
    Both tables are written when a training sweep ends, so a sweep in progress shows its trials left."""
    runs = set(store.read_table(out, "runs")["run_id"])
    errors = set(store.read_table(out, "training_errors")["run_id"])
    wanted = [t.run_id for t in spec.training.trials]
    finished = sum(r in runs for r in wanted)
    failed = sum(r in errors and r not in runs for r in wanted)
    return {"trials": len(wanted), "finished": finished, "failed": failed, "left": len(wanted) - finished - failed}


def status_document(spec: ExperimentSpec, out: str | Path) -> dict:
    """`unravel status --format json`: the trials, every study, and every run of each study."""
    states = _states(spec, store.where(out))
    by_run = _tally(states, by_run=True)
    totals = {k: sum(r[k] for r in by_run) for k in ("units", "done", "failed", "left")}
    return {"experiment": spec.name, "out": str(out), "trials": trial_status(spec, out), "units": totals,
            "studies": _tally(states, by_run=False), "runs": by_run}

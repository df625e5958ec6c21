"""The study driver: expand, skip what is written, fan batches out to evaluators, write.

The driver is the single writer. It keeps at most ``max_in_flight`` batches queued per
evaluator, takes results as they finish (``ray.wait``), and writes each finished batch
as one Parquet file named after its units; the files themselves are the resume index,
so a rerun after a crash or Ctrl-C computes only what is missing, and nothing twice.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from tqdm import tqdm

from . import store
from .evaluator import evaluator_actor
from .spec import ExperimentSpec
from .units import Batch, Unit, batches, expand

# an evaluator that died, or whose node did: Ray restarts the actor elsewhere, the batch is resubmitted
EVALUATOR_LOST = tuple(getattr(ray.exceptions, name) for name in (
    "RayActorError", "ActorUnavailableError", "ObjectLostError", "NodeDiedError") if hasattr(ray.exceptions, name))
MAX_BATCH_RETRIES = 3  # resubmissions of a batch whose evaluator died (on top of Ray's own task retries)


@dataclass
class SweepOutcome:
    total: int          # units in the spec
    skipped: int        # already written before this run
    computed: int       # written by this run
    failed: int         # units that raised (recorded in the errors table)
    seconds: float
    per_study: dict[str, int]
    driver_seconds: float = 0.0   # the driver's own work per batch (results taken, files written, batches sent)
    batches: int = 0


def pending_units(spec: ExperimentSpec, out: Path) -> tuple[list[Unit], list[Unit]]:
    """(all units, units not yet written)."""
    units = expand(spec)
    done = store.done_keys(out, "lesion") | store.done_keys(out, "gradients")
    return units, [u for u in units if u.key not in done]


def run_studies(spec: ExperimentSpec, out: str | Path, progress: bool = True) -> SweepOutcome:
    out = Path(out)
    started = time.perf_counter()
    runs = store.read_table(out, "runs")
    units, todo = pending_units(spec, out)
    per_study: dict[str, int] = {}
    for u in units:
        per_study[u.study] = per_study.get(u.study, 0) + 1
    missing = sorted({u.run_id for u in todo} - set(runs["run_id"]))
    if missing:
        imported = {m.run_id for m in spec.models}
        how = "unravel lesion or run imports it" if missing[0] in imported else "train first (unravel train, or run)"
        raise FileNotFoundError(f"no run {missing[0]} in {out / 'runs.parquet'}: {how}")
    if not todo:
        return SweepOutcome(len(units), len(units), 0, 0, time.perf_counter() - started, per_study)
    s = spec.studies
    work = batches(todo, s.plans_per_batch)
    # checkpoints travel once, through the object store; every batch of a run refers to the same object
    checkpoints = {r: ray.put(Path(path).read_bytes())
                   for r, path in zip(runs["run_id"], runs["checkpoint"]) if r in {b.run_id for b in work}}
    actor = evaluator_actor(s.evaluators)
    count = min(s.evaluators.count, len(work))
    evaluators = [actor.remote(spec.data, s) for _ in range(count)]
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="study units", unit="unit",
               dynamic_ncols=True, disable=not progress)
    computed = failed = 0
    busy = 0.0
    queue = list(reversed(work))
    attempts: dict[str, int] = {}
    in_flight: dict[ray.ObjectRef, tuple[Batch, int]] = {}
    load = [0] * count

    def submit(i: int) -> None:
        batch = queue.pop()
        ref = evaluators[i].run.remote(batch, checkpoints[batch.run_id])
        in_flight[ref] = (batch, i)
        load[i] += 1

    try:
        for i in range(count):
            while queue and load[i] < s.max_in_flight:
                submit(i)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            tick = time.perf_counter()
            ref = ready[0]
            batch, i = in_flight.pop(ref)
            load[i] -= 1
            try:
                rows, errors = ray.get(ref)
            except EVALUATOR_LOST as e:
                if getattr(e, "actor_init_failed", False):  # its constructor raised: no restart will help
                    raise EvaluatorsCannotStart(f"the evaluators cannot start: {_cause(e)}") from None
                # the evaluator (or its node) died: Ray restarts it; the batch goes back in the queue
                attempts[batch.key] = attempts.get(batch.key, 0) + 1
                if attempts[batch.key] <= MAX_BATCH_RETRIES:
                    _await_restart(evaluators[i])
                    queue.append(batch)
                    while queue and load[i] < s.max_in_flight:
                        submit(i)
                    continue
                rows, errors = [], _failed(batch, e)
            except ray.exceptions.RayTaskError as e:
                rows, errors = [], _failed(batch, e)
            if rows:
                store.write_part(out, batch.table, batch.study, batch.run_id, batch.key, rows)
            if errors:
                store.write_errors(out, batch.key, errors)
            computed += len(rows)
            failed += len(errors)
            bar.update(len(rows) + len(errors))
            if failed:
                bar.set_postfix_str(f"{failed} failed")
            while queue and load[i] < s.max_in_flight:
                submit(i)
            busy += time.perf_counter() - tick
    finally:
        bar.close()
        for ev in evaluators:
            ray.kill(ev)
    return SweepOutcome(len(units), len(units) - len(todo), computed, failed, time.perf_counter() - started,
                        per_study, busy, len(work))


class EvaluatorsCannotStart(RuntimeError):
    """An evaluator's constructor raised (data unreadable on a node, say): every batch would fail alike."""


def _cause(exc: BaseException) -> str:
    """The innermost 'SomeError: message' line of a Ray error, else its first line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    found = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|NotFound)\b.*:", ln)]
    return (found[-1] if found else lines[0] if lines else type(exc).__name__)[:500]


def _await_restart(evaluator, timeout: float = 120.0) -> None:
    """Block until a restarted evaluator answers (Ray moves it to a live node), or give up quietly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(evaluator.where.remote(), timeout=10)
            return
        except Exception:  # still restarting: unavailable, timed out, or died once more
            time.sleep(1.0)


def _failed(batch: Batch, exc: BaseException) -> list[dict]:
    return [store.error_row(u, exc) for u in batch.units]


def status(spec: ExperimentSpec, out: str | Path) -> list[dict]:
    """Units done, failed and left, per study."""
    out = Path(out)
    units = expand(spec)
    done = store.done_keys(out, "lesion") | store.done_keys(out, "gradients")
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

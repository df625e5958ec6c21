"""The study driver: expand, skip what is written, fan batches out to evaluators, write.

The driver is the single writer. It keeps at most ``max_in_flight`` batches queued per
evaluator, takes results as they finish (``ray.wait``), and writes each finished batch
as one Parquet file named after its units; the files themselves are the resume index,
so a rerun after a crash or Ctrl-C computes only what is missing, and nothing twice.
"""
from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import ray
from tqdm import tqdm

from orchestrator.run import interrupts
from orchestrator import faults, store
from orchestrator.run.evaluator import StartFailure, evaluator_actor
from orchestrator.experiment.resolved import ExperimentSpec
from orchestrator.experiment.units import Batch, Unit, batches, expand

# an evaluator that died, or whose node did: Ray restarts the actor elsewhere, the batch is resubmitted
EVALUATOR_LOST = tuple(getattr(ray.exceptions, name) for name in (
    "RayActorError", "ActorUnavailableError", "ObjectLostError", "NodeDiedError") if hasattr(ray.exceptions, name))
MAX_BATCH_RETRIES = 3  # resubmissions of a batch whose evaluator died (on top of Ray's own task retries)
STOP_GRACE_S = 10.0     # how long a stopping driver waits for batches still out before it kills the evaluators


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
    done = store.done_keys(out)
    return units, [u for u in units if u.key not in done]


def run_studies(spec: ExperimentSpec, out: str | Path, progress: bool = True) -> SweepOutcome:
    """Compute every unit of the spec not yet in OUT, writing each finished batch as it comes."""
    out = store.where(out)
    started = time.perf_counter()
    runs = store.read_table(out, "runs")
    units, todo = pending_units(spec, out)
    per_study = dict(Counter(u.study for u in units))
    _check_runs_exist(spec, out, runs, todo)
    if not todo:
        return SweepOutcome(len(units), len(units), 0, 0, time.perf_counter() - started, per_study)
    work = batches(todo, spec.studies.plans_per_batch)
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc="study units", unit="unit",
               dynamic_ncols=True, disable=not progress)
    dispatcher = _Dispatcher(spec, out, work, runs, bar)
    try:
        dispatcher.run()
    finally:
        bar.close()
        dispatcher.stop()
    return SweepOutcome(len(units), len(units) - len(todo), dispatcher.computed, dispatcher.failed,
                        time.perf_counter() - started, per_study, dispatcher.busy, len(work))


def _check_runs_exist(spec: ExperimentSpec, out: Path, runs, todo: list[Unit]) -> None:
    missing = sorted({u.run_id for u in todo} - set(runs["run_id"]))
    if missing:
        imported = {m.run_id for m in spec.models}
        how = "unravel lesion or run imports it" if missing[0] in imported else "train first (unravel train, or run)"
        raise RunNotTrained(f"no run {missing[0]} in {store.table_path(out, 'runs')}: {how}")


class _Dispatcher:
    """Keeps at most ``max_in_flight`` batches queued per evaluator, takes results as they finish,
    writes them (the driver is the single writer), and resubmits a batch whose evaluator died."""

    def __init__(self, spec: ExperimentSpec, out: Path, work: list[Batch], runs, bar):
        s = spec.studies
        self.out, self.bar, self.depth = out, bar, s.max_in_flight
        # checkpoints travel once, through the object store; every batch of a run refers to the same object
        wanted = {b.run_id for b in work}
        self.checkpoints = {r: ray.put(store.located(out, path).read_bytes())
                            for r, path in zip(runs["run_id"], runs["checkpoint"]) if r in wanted}
        actor = evaluator_actor(s.evaluators)
        self.evaluators = [actor.remote(spec.data, s) for _ in range(min(s.evaluators.count, len(work)))]
        self.queue = list(reversed(work))
        self.in_flight: dict[ray.ObjectRef, tuple[Batch, int]] = {}
        self.load = [0] * len(self.evaluators)
        self.attempts: dict[str, int] = {}
        self.computed = self.failed = 0
        self.busy = 0.0   # the driver's own work: results taken, files written, batches sent

    def fill(self, i: int) -> None:
        while self.queue and self.load[i] < self.depth:
            batch = self.queue.pop()
            ref = self.evaluators[i].run.remote(batch, self.checkpoints[batch.run_id])
            self.in_flight[ref] = (batch, i)
            self.load[i] += 1

    def run(self) -> None:
        for i in range(len(self.evaluators)):
            self.fill(i)
        while self.in_flight:
            ready, _ = ray.wait(list(self.in_flight), num_returns=1)
            tick = time.perf_counter()
            batch, i = self.in_flight.pop(ready[0])
            self.load[i] -= 1
            outcome = self.take(ready[0], batch, i)
            if outcome is not None:
                self.write(batch, *outcome)
            self.fill(i)
            self.busy += time.perf_counter() - tick

    def take(self, ref: ray.ObjectRef, batch: Batch, i: int) -> tuple[dict[str, list[dict]], list[dict]] | None:
        """(rows by table, error rows) of a finished batch; None when it went back in the queue."""
        try:
            outcome = ray.get(ref)
        except EVALUATOR_LOST as e:
            if getattr(e, "actor_init_failed", False):  # its constructor raised: no restart will help
                self.cannot_start(batch, _cause(e), str(e))
            # the evaluator (or its node) died: Ray restarts it; the batch goes back in the queue
            self.attempts[batch.key] = self.attempts.get(batch.key, 0) + 1
            if self.attempts[batch.key] <= MAX_BATCH_RETRIES:
                _await_restart(self.evaluators[i])
                self.queue.append(batch)
                return None
            return {}, _failed(batch, e)
        except ray.exceptions.RayTaskError as e:
            return {}, _failed(batch, e)
        if isinstance(outcome, StartFailure):
            self.cannot_start(batch, outcome.error, outcome.traceback)
        return outcome

    def cannot_start(self, batch: Batch, error: str, traceback: str) -> None:
        """Stop in one line: every batch would fail alike. The traceback goes to the errors table, as the failed
        attempt at the units of the batch that met it."""
        store.write_errors(self.out, batch.key, [store.error_row(u, error, traceback) for u in batch.units])
        raise EvaluatorsCannotStart(f"the evaluators cannot start: {error} (its traceback is in the errors table, "
                                    f"{store.table_folder(self.out, 'errors')})")

    def write(self, batch: Batch, rows: dict[str, list[dict]], errors: list[dict]) -> None:
        """A batch's files, one per table it writes, its resume table's last (``Batch.tables``)."""
        for table in batch.tables:
            if table != batch.tables[0]:
                faults.kill_point("kill_between_tables")   # a batch half written: its resume table's file not yet
            if rows.get(table):
                store.write_part(self.out, table, batch.study, batch.run_id, batch.key, rows[table])
        if errors:
            store.write_errors(self.out, batch.key, errors)
        # units, not rows: a gates unit writes a row per gated block, a tasks unit one per metric
        done = len({r["unit_key"] for r in rows.get(batch.table, ())})
        self.computed += done
        self.failed += len(errors)
        self.bar.update(done + len(errors))
        if self.failed:
            self.bar.set_postfix_str(f"{self.failed} failed")

    def stop(self) -> None:
        if interrupts.received():  # they end with this driver's job, without Ray printing each killed batch
            return
        if self.in_flight:  # batches still out (every evaluator that cannot start answers at once): let them
            #                 settle first, or Ray prints a retry of each as its evaluator is killed under it
            ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=STOP_GRACE_S)
        for ev in self.evaluators:
            ray.kill(ev)


class RunNotTrained(ValueError):
    """A study names a run OUT's runs table does not hold yet: bad input, found before any batch is sent."""


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

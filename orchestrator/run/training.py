"""The training sweep: one Ray Tune trial per (network, variant, mode, seed).

Each trial trains with ``workloads.train`` and reports once per epoch through
``tune.report``, with a checkpoint that carries the whole training state (weights,
optimizer, random-generator state, history). Every ``unravel train``/``run`` is a new Tune
experiment (an *attempt*, ``OUT/tune/<name>/attempt-N``) over the spec's trials that are not
finished: a trial finished in an earlier attempt is collected, not retrained; one interrupted
there continues from its newest checkpoint. So a spec that gains seeds or runs trains just
those, which ``Tuner.restore`` (fault tolerance for an unchanged grid, as Ray documents it)
cannot. The driver then writes the ``runs`` and ``epochs`` tables from the final checkpoints.
"""
from __future__ import annotations

import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from ray import tune
from tqdm import tqdm

from workloads.data import load_dataset
from workloads.models import skeleton
from workloads.runtime import set_threads
from workloads.train.loop import Trainer

from orchestrator import faults
from orchestrator.run import interrupts
from orchestrator import store
from orchestrator.run.cluster import quiet_tune
from orchestrator.run.data_cache import local_root
from orchestrator.location import Location
from orchestrator.experiment.resolved import ExperimentSpec, Trial

STATE_FILE = "state.pt"     # the whole training state, to resume
MODEL_FILE = "model.pt"     # the final network: state_dict + configs + history


def train_trial(config: dict) -> None:
    """The Tune trainable (function API). Runs in a Ray worker."""
    trial = Trial.from_dict(config["run"]["trial"])
    set_threads(max(1, int(config.get("cpu", 1))))
    use_gpu = config.get("gpu", 0) > 0 and torch.cuda.is_available()
    data = load_dataset(config["dataset"], local_root(config["data_root"]), download=config["download"])
    trainer = Trainer(trial.net_config, trial.train_config, data, "cuda" if use_gpu else "cpu")
    checkpoint = tune.get_checkpoint()  # this attempt's own, after a failure Tune retried
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / STATE_FILE, map_location=trainer.device,
                                               weights_only=True))
    elif config["run"]["resume_from"]:  # an earlier attempt's newest state of this run (a path or a URI)
        trainer.load_state_dict(_load(Location.of(config["run"]["resume_from"]), trainer.device))
    total = trial.train_config.iterations
    every = trial.train_config.checkpoint_every

    def report(metrics: dict, tr: Trainer) -> None:
        faults.raise_point("raise_in_epoch", metrics["epoch"], trial.label)
        faults.hold_point("hold_in_epoch", metrics["epoch"], trial.label)
        done = tr.iteration >= total
        row = {**metrics, "run_id": trial.run_id, "done": done}
        if not done and metrics["epoch"] % every:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(tr.state_dict(), Path(tmp) / STATE_FILE)
            if done:
                torch.save(tr.final_checkpoint(), Path(tmp) / MODEL_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(tmp))

    if trainer.iteration >= total:  # restored from the final checkpoint: say so again
        report(trainer.history[-1], trainer)
        return
    trainer.run(report)


class _Progress(tune.Callback):
    """One bar over trials; its postfix shows the latest epoch of any trial."""

    def __init__(self, total: int):
        self.total = total
        self.bar = tqdm(total=total, desc="training trials", unit="trial", dynamic_ncols=True)

    def __getstate__(self):  # Tune pickles its run config with the experiment state
        return {"total": self.total, "bar": None}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"{result.get('run_id', '')[:40]} epoch {result.get('epoch')} "
                                 f"test err {result.get('test_error', float('nan')):.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.bar is not None:
            self.bar.update(1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.on_trial_complete(iteration, trials, trial)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@dataclass
class TrainingOutcome:
    runs: "object"          # pandas DataFrame of the runs table
    failed: dict[str, str]  # run_id -> error message
    seconds: float


def _load(path: Location, device="cpu") -> dict:
    """A checkpoint file of the Tune state (on local disk or object storage)."""
    return torch.load(io.BytesIO(path.read_bytes()), map_location=device, weights_only=True)


def _params(trial_dir: Location) -> dict | None:
    try:
        return json.loads((trial_dir / "params.json").read_text())
    except (OSError, ValueError):
        return None


def earlier_checkpoints(tune_root: Location) -> dict[str, Location]:
    """The newest checkpoint folder of each run id over every earlier attempt (by the state's
    iteration count: a later attempt may hold an older state than the one it resumed from), from one
    listing of the Tune state."""
    root = tune_root
    trials: dict[str, list[str]] = {}   # attempt-N/<trial> -> its checkpoint folders holding a state
    for info in root.files():
        parts = root.relative(info.path).split("/")
        if len(parts) >= 3 and parts[0].startswith("attempt-"):
            trial = trials.setdefault("/".join(parts[:2]), [])
            if len(parts) == 4 and parts[2].startswith("checkpoint_") and parts[3] == STATE_FILE:
                trial.append(parts[2])
    newest: dict[str, tuple[int, Location]] = {}
    for trial, checkpoints in sorted(trials.items()):
        params = _params(root / trial)
        try:
            run_id = params["run"]["trial"]["run_id"]
        except (TypeError, KeyError):
            continue
        for name in checkpoints:
            folder = root / trial / name
            try:
                iteration = int(_load(folder / STATE_FILE)["iteration"])
            except Exception:  # noqa: BLE001 - a damaged state is never resumed from
                continue
            if run_id not in newest or iteration > newest[run_id][0]:
                newest[run_id] = (iteration, folder)
    return {run_id: folder for run_id, (_, folder) in newest.items()}


def _next_attempt(tune_root: Location) -> str:
    names = [PurePosixPath(i.path).name for i in tune_root.children()]
    numbers = [int(n.split("-", 1)[1]) for n in names if n.startswith("attempt-") and n.split("-", 1)[1].isdigit()]
    return f"attempt-{max(numbers, default=0) + 1}"


def run_training(spec: ExperimentSpec, out: str | Path, progress: bool = True) -> TrainingOutcome:
    """Train the spec's trials not yet finished in OUT (continuing interrupted ones) and write the
    runs, epochs and training_errors tables; finished runs are kept as they are."""
    quiet_tune()
    out = store.where(out)
    started = time.perf_counter()
    recorded = set(store.read_table(out, "runs")["run_id"])
    pending = [t for t in spec.training.trials if t.run_id not in recorded]
    tune_root = store.tune_dir(out, spec.name)
    found = earlier_checkpoints(tune_root) if pending else {}
    done_before = [(t, found[t.run_id]) for t in pending if t.run_id in found and (found[t.run_id] / MODEL_FILE).exists()]
    to_train = [t for t in pending if not (t.run_id in found and (found[t.run_id] / MODEL_FILE).exists())]
    results = [(t, folder, None) for t, folder in done_before]
    if to_train:
        results += _fit(spec, to_train, found, tune_root, progress)
    outcome = _collect(spec, out, results, time.perf_counter() - started)
    interrupts.raise_if_interrupted()  # Ctrl-C or SIGTERM stopped Tune: the finished trials are written
    return outcome


def _fit(spec: ExperimentSpec, trials: list[Trial], found: dict[str, Location], tune_root: Location,
         progress: bool) -> list[tuple[Trial, Location | None, str | None]]:
    """One new Tune experiment over ``trials``: (trial, final checkpoint folder or None, error)."""
    resources = spec.training.resources
    trainable = tune.with_resources(train_trial, {"cpu": resources.cpu, "gpu": resources.gpu})
    common = {"dataset": spec.data.dataset, "data_root": spec.data.resolved_root, "download": spec.data.download,
              "cpu": resources.cpu, "gpu": resources.gpu}
    configs = [{"trial": t.to_dict(), "resume_from": str(found[t.run_id] / STATE_FILE) if t.run_id in found else ""}
               for t in trials]
    bar = _Progress(len(trials)) if progress else None
    root = tune_root
    storage = {"storage_path": root.path} if root.local else {"storage_path": root.path, "storage_filesystem": root.fs}
    tuner = tune.Tuner(
        trainable,
        param_space={**common, "run": tune.grid_search(configs)},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(
            name=_next_attempt(tune_root), **storage, verbose=0, callbacks=[bar] if bar else [],
            failure_config=tune.FailureConfig(max_failures=spec.training.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        with interrupts.tune_stops_gracefully():
            grid = tuner.fit()
    finally:
        if bar:
            bar.close()
    by_id = {t.run_id: t for t in trials}
    results = []
    for result in grid:
        trial = by_id[result.config["run"]["trial"]["run_id"]]
        folder = root / root.relative(result.checkpoint.path) if result.checkpoint is not None else None
        if folder is None or not (folder / MODEL_FILE).exists():
            results.append((trial, None, str(result.error or "no final checkpoint")))
        else:
            results.append((trial, folder, None))
    return results


def _collect(spec: ExperimentSpec, out: Location, results: list, seconds: float) -> TrainingOutcome:
    """The tables, with this command's runs added to those already there (never replacing others')."""
    runs, epochs, failed = [], [], {}
    for trial, folder, error in results:
        if folder is None:
            if not interrupts.received():  # a trial a signal stopped is no failure: the rerun continues it
                failed[trial.run_id] = error
            continue
        final = _load(folder / MODEL_FILE)
        shape = skeleton(trial.net_config)  # counted on the meta device: no weights are made
        runs.append(store.run_row(
            trial, dataset=final["dataset"], iterations=int(final["iterations"]), epochs=len(final["history"]),
            test_error=float(final["test_error"]), test_loss=float(final["test_loss"]), num_blocks=shape.num_blocks,
            parameters=sum(p.numel() for p in shape.parameters()),
            checkpoint=store.relative(out, folder / MODEL_FILE),
            train_seconds=float(final["train_seconds"])))
        epochs += store.epoch_rows(trial.run_id, final["history"])
    all_runs = store.replace_runs(out, runs)
    store.replace_rows(out, "epochs", epochs, [r["run_id"] for r in runs])
    attempted = [t.run_id for t, _, _ in results]
    store.replace_rows(out, "training_errors", [{"run_id": k, "error": v} for k, v in sorted(failed.items())],
                       attempted)
    wanted = {t.run_id for t in spec.training.trials}
    return TrainingOutcome(all_runs[all_runs["run_id"].isin(wanted)].reset_index(drop=True), failed, seconds)

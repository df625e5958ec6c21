"""The training sweep: one Ray Tune trial per (network, variant, mode, seed).

Each trial trains with ``workloads.train`` and reports once per epoch through
``tune.report``, with a checkpoint that carries the whole training state (weights,
optimizer, random-generator state, history). An interrupted sweep resumes with
``Tuner.restore`` from those checkpoints without retraining finished trials. The driver
then writes the ``runs`` and ``epochs`` tables from the final checkpoints.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from ray import tune
from tqdm import tqdm

from workloads.data import load_dataset
from workloads.models import skeleton
from workloads.runtime import set_threads
from workloads.train.loop import Trainer

from . import faults, store
from .cluster import quiet_tune
from .spec import ExperimentSpec, Trial

STATE_FILE = "state.pt"     # the whole training state, to resume
MODEL_FILE = "model.pt"     # the final network: state_dict + configs + history


def train_trial(config: dict) -> None:
    """The Tune trainable (function API). Runs in a Ray worker."""
    trial = Trial.from_dict(config["trial"])
    set_threads(max(1, int(config.get("cpu", 1))))
    use_gpu = config.get("gpu", 0) > 0 and torch.cuda.is_available()
    data = load_dataset(config["dataset"], config["data_root"], config["download"])
    trainer = Trainer(trial.net_config, trial.train_config, data, "cuda" if use_gpu else "cpu")
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load_state_dict(torch.load(Path(d) / STATE_FILE, map_location=trainer.device,
                                               weights_only=True))
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


def _reattach(tuner: tune.Tuner, callbacks: list) -> None:
    """Callbacks are not saved with a Tune experiment, and ``Tuner.restore`` takes none
    (ray-project/ray#41364): the one place that reaches into the restored run config. If a Ray
    upgrade moves it, training goes on without the progress bar rather than failing."""
    try:
        tuner._local_tuner.get_run_config().callbacks = callbacks  # noqa: SLF001 - no public hook
    except AttributeError:
        import warnings
        warnings.warn("this Ray version offers no way to re-attach the training progress bar on resume",
                      stacklevel=2)


def run_training(spec: ExperimentSpec, out: str | Path, resume: bool = False, progress: bool = True) -> TrainingOutcome:
    """Train every trial of the spec (or resume them) and write the runs and epochs tables."""
    quiet_tune()
    out = Path(out)
    exp = store.tune_dir(out, spec.name)
    resources = spec.training.resources
    trainable = tune.with_resources(train_trial, {"cpu": resources.cpu, "gpu": resources.gpu})
    started = time.perf_counter()
    trials = [t.to_dict() for t in spec.training.trials]
    bar = _Progress(len(trials)) if progress else None
    callbacks = [bar] if bar else []
    if tune.Tuner.can_restore(str(exp)):
        if not resume:
            raise FileExistsError(f"{exp} holds an earlier training sweep; pass --resume to continue it "
                                  f"or choose another --out")
        tuner = tune.Tuner.restore(str(exp), trainable, resume_unfinished=True, resume_errored=True)
        _reattach(tuner, callbacks)
    else:
        common = {"dataset": spec.data.dataset, "data_root": spec.data.resolved_root,
                  "download": spec.data.download, "cpu": resources.cpu, "gpu": resources.gpu}
        tuner = tune.Tuner(
            trainable,
            param_space={**common, "trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=tune.RunConfig(
                name=spec.name, storage_path=str(exp.parent), verbose=0, callbacks=callbacks,
                failure_config=tune.FailureConfig(max_failures=spec.training.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
    try:
        grid = tuner.fit()
    finally:
        if bar:
            bar.close()
    return _collect(spec, out, grid, time.perf_counter() - started)


def _collect(spec: ExperimentSpec, out: Path, grid, seconds: float) -> TrainingOutcome:
    runs, epochs, failed = [], [], {}
    wanted = {t.run_id for t in spec.training.trials}
    for result in grid:
        trial = Trial.from_dict(result.config["trial"])
        if trial.run_id not in wanted:
            continue
        final = None
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as d:
                path = Path(d) / MODEL_FILE
                if path.exists():
                    final = torch.load(path, map_location="cpu", weights_only=True)
        if final is None:
            failed[trial.run_id] = str(result.error or "no final checkpoint")
            continue
        location = os.path.join(result.checkpoint.path, MODEL_FILE)
        shape = skeleton(trial.net_config)  # counted on the meta device: no weights are made
        runs.append(store.run_row(
            trial, dataset=final["dataset"], iterations=int(final["iterations"]), epochs=len(final["history"]),
            test_error=float(final["test_error"]), test_loss=float(final["test_loss"]), num_blocks=shape.num_blocks,
            parameters=sum(p.numel() for p in shape.parameters()), checkpoint=location,
            train_seconds=float(final["train_seconds"])))
        epochs += store.epoch_rows(trial.run_id, final["history"])
    all_runs = store.replace_runs(out, runs)
    store.write_table(out, "epochs", epochs)
    store.write_table(out, "training_errors", [{"run_id": k, "error": v} for k, v in sorted(failed.items())])
    return TrainingOutcome(all_runs[all_runs["run_id"].isin(wanted)].reset_index(drop=True), failed, seconds)

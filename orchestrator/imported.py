"""Runs trained elsewhere: a user's checkpoint, checked and converted once into unravel's format.

Each file named under ``models:`` is read with ``weights_only=True`` and fitted to its
network; a file of another network's shape, a truncated file or a pickled model is refused
with a message naming it. Every file is checked before any is written, then each is saved
as ``<out>/imported/<run_id>/model.pt`` (config + weights + the source's sha256), so the
evaluators read imported and trained runs alike. A source file that changes after import
is refused rather than mixed with results computed from the old weights.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch

from workloads.models import CheckpointError, network_from_weights, read_weights, state_dict_of

from . import store
from .spec import ExperimentSpec, SpecError, Trial

MODEL_FILE = "model.pt"


def imported_path(out: Path, run_id: str) -> Path:
    return Path(out) / "imported" / run_id / MODEL_FILE


def _fitted(model: Trial, index: int, blob: bytes):
    name = str(Path(model.checkpoint).expanduser())
    try:
        return network_from_weights(model.net_config, state_dict_of(read_weights(blob, name), name), name)
    except CheckpointError as e:
        raise SpecError(f"models[{index}].checkpoint: {e}") from None


def import_models(spec: ExperimentSpec, out: str | Path) -> pd.DataFrame:
    """Check every ``models:`` checkpoint, convert the new ones, and add them to the runs table."""
    out = Path(out)
    sources = []
    for i, model in enumerate(spec.models):  # every file is checked before anything is written
        blob = Path(model.checkpoint).expanduser().read_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        target = imported_path(out, model.run_id)
        if target.exists():
            kept = read_weights(str(target)).get("source_sha256")
            if kept != digest:
                raise SpecError(f"models[{i}].checkpoint: {model.checkpoint} changed since it was imported into "
                                f"{out} (sha256 {str(kept)[:12]}... then, {digest[:12]}... now); give it a new "
                                f"label or use another --out")
            sources.append((model, None, digest))
            continue
        _fitted(model, i, blob)
        sources.append((model, blob, digest))
    rows = []
    for i, (model, blob, digest) in enumerate(sources):
        target = imported_path(out, model.run_id)
        net = _fitted(model, i, blob) if blob is not None else None
        if net is not None:
            _save_atomic({"net_config": model.net_config.to_json(), "state_dict": net.state_dict(),
                          "source": str(Path(model.checkpoint).expanduser().resolve()), "source_sha256": digest,
                          "dataset": spec.data.dataset}, target)
        else:
            from workloads.models import load_checkpoint
            net, _ = load_checkpoint(str(target))
        rows.append({"run_id": model.run_id, "label": model.label, "network": model.network,
                     "variant": model.variant, "mode": model.mode, "seed": model.seed, "dataset": spec.data.dataset,
                     "iterations": 0, "epochs": 0, "test_error": float("nan"), "test_loss": float("nan"),
                     "num_blocks": net.num_blocks, "parameters": sum(p.numel() for p in net.parameters()),
                     "checkpoint": str(target.resolve()), "train_seconds": 0.0,
                     "net_config": model.net_config.to_json(), "train_config": ""})
    keep = {t.run_id for t in spec.training.trials}
    return store.replace_runs(out, rows, keep=keep)


def _save_atomic(checkpoint: dict, path: Path) -> None:
    with store.atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)

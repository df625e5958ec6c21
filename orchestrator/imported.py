"""Runs trained elsewhere: a user's checkpoint, checked and converted once into unravel's format.

Each file named under ``models:`` is read with ``weights_only=True`` and fitted to its
network; a file of another network's shape, a truncated file or a pickled model is refused
with a message naming it. Every file is checked before any is written, then each is saved
as ``<out>/imported/<run_id>/model.pt`` (config + weights) beside ``source.json`` (the
source's sha256), so the evaluators read imported and trained runs alike. A source file
that changes after import is refused rather than mixed with results computed from the old
weights; a damaged converted copy is converted again from the unchanged source.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import torch

from workloads.models import (CheckpointError, load_checkpoint, network_from_weights, read_weights, skeleton,
                              state_dict_of)

from . import store
from .spec import ExperimentSpec, SpecError, Trial

SOURCE_FILE = "source.json"   # the source file's path and sha256, to refuse a changed source


def _fitted(model: Trial, index: int, blob: bytes):
    name = str(Path(model.checkpoint).expanduser())
    try:
        return network_from_weights(model.net_config, state_dict_of(read_weights(blob, name), name), name)
    except CheckpointError as e:
        raise SpecError(f"models[{index}].checkpoint: {e}") from None


def _usable(target) -> bool:
    try:
        load_checkpoint(target.read_bytes(), str(target))
    except (OSError, CheckpointError):  # gone, or damaged
        return False
    return True


def import_models(spec: ExperimentSpec, out: str | Path) -> pd.DataFrame:
    """Check every ``models:`` checkpoint, convert the new ones, and add them to the runs table."""
    out = store.where(out)
    todo = []
    for i, model in enumerate(spec.models):  # every file is checked before anything is written
        source = Path(model.checkpoint).expanduser()
        try:
            blob = source.read_bytes()
        except OSError as e:
            raise SpecError(f"models[{i}].checkpoint: cannot read {source} ({e.strerror})") from None
        digest = hashlib.sha256(blob).hexdigest()
        target = store.imported_checkpoint(out, model.run_id)
        record = target.parent / SOURCE_FILE
        kept = json.loads(record.read_text())["sha256"] if record.exists() else None
        if kept is not None and kept != digest:
            raise SpecError(f"models[{i}].checkpoint: {model.checkpoint} changed since it was imported into {out} "
                            f"(sha256 {kept[:12]}... then, {digest[:12]}... now); give it a new label or use "
                            f"another --out")
        if kept is None and store.has_results(out, model.run_id):
            raise SpecError(f"models[{i}].checkpoint: {out} holds results of run {model.run_id} but not the "
                            f"weights they came from; use another --out")
        if kept is not None and _usable(target):
            continue
        _fitted(model, i, blob)  # new, or its converted copy was damaged: (re)convert from the same source
        todo.append((i, model, blob, digest))
    for i, model, blob, digest in todo:
        target = store.imported_checkpoint(out, model.run_id)
        net = _fitted(model, i, blob)
        converted = io.BytesIO()
        torch.save({"net_config": model.net_config.to_json(), "state_dict": net.state_dict(),
                    "source": str(Path(model.checkpoint).expanduser().resolve()), "dataset": spec.data.dataset},
                   converted)
        store.write_file(target, converted.getvalue())
        store.write_file(target.parent / SOURCE_FILE, json.dumps(
            {"source": str(Path(model.checkpoint).expanduser().resolve()), "sha256": digest}).encode())
    rows = []
    for model in spec.models:
        shape = skeleton(model.net_config)
        rows.append(store.run_row(
            model, dataset=spec.data.dataset, iterations=0, epochs=0, test_error=float("nan"),
            test_loss=float("nan"), num_blocks=shape.num_blocks, parameters=sum(p.numel() for p in shape.parameters()),
            checkpoint=store.relative(out, store.imported_checkpoint(out, model.run_id)), train_seconds=0.0))
    return store.replace_runs(out, rows)


"""Runs trained elsewhere: a user's checkpoint, checked and converted once into unravel's format.

Each file named under ``models:`` is read with ``weights_only=True`` and fitted to its
network (a Hugging Face model is a folder, read by ``from_pretrained`` with no download); a file of
another network's shape, a truncated file or a pickled model is refused with a message naming it. A
network of another library is adapted into units, and the adapter must prove itself on a batch
(``workloads.models.adapters.check``) before anything is written. Every source is checked before any is
written, then each is saved as ``<out>/imported/<run_id>/model.pt`` (config + weights) beside
``source.json`` (the source's sha256), so the evaluators read imported and trained runs alike. A source
that changes after import is refused rather than mixed with results computed from the old weights; a
damaged converted copy is converted again from the unchanged source.
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pandas as pd
import torch

from workloads.models import CheckpointError, load_checkpoint, read_weights, skeleton, state_dict_of
from workloads.models.adapters.check import AdapterError, check_adapter
from workloads.models.checkpoint import adapted_from_weights, checkpoint_of, network_from_weights
from workloads.models.registry import ADAPTED

from orchestrator import store
from orchestrator.experiment.messages import SpecError
from orchestrator.experiment.resolved import ExperimentSpec, Trial

def _fitted(model: Trial, index: int, source: Path):
    """(units, the library's model or None) of a source, with its adapter proven on a batch."""
    name = str(source)
    cfg = model.net_config
    try:
        if cfg.arch == "hf":
            from workloads.models.adapters import adapt
            from workloads.models.adapters.hf_loading import load_causal_lm
            original = load_causal_lm(source)
            net = adapt(original).eval()
        else:
            weights = state_dict_of(read_weights(source.read_bytes(), name), name)
            if cfg.arch not in ADAPTED:
                return network_from_weights(cfg, weights, name), None
            net, original = adapted_from_weights(cfg, weights, name)
        check_adapter(original, net, _example(cfg))
    except (CheckpointError, AdapterError) as e:
        raise SpecError(f"models[{index}].checkpoint: {e}") from None
    return net, original


def _example(cfg) -> torch.Tensor:
    """A small batch of the network's input, to prove its adapter on: token ids or images."""
    g = torch.Generator().manual_seed(0)
    if cfg.arch == "hf":
        return torch.randint(0, cfg.num_classes, (2, min(cfg.image_size, 16)), generator=g)
    return torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)


def content_digest(source: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 of a checkpoint file, or of a model folder's files (names and contents, in order), leaving out
    the files whose names end with one of ``skip``."""
    if not source.is_dir():
        return _file_digest(source, hashlib.sha256()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.endswith(skip)):
        h.update(str(f.relative_to(source)).encode() + b"\0")
        _file_digest(f, h)
    return h.hexdigest()


def _file_digest(path: Path, h):
    """``h`` updated with the file's bytes, read in blocks (a corpus or a shard may be larger than memory)."""
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h


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
            digest = content_digest(source)
        except OSError as e:
            raise SpecError(f"models[{i}].checkpoint: cannot read {source} ({e.strerror})") from None
        target = store.imported_checkpoint(out, model.run_id)
        record = store.imported_source(out, model.run_id)
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
        # new, or its converted copy was damaged: (re)convert from the same source
        todo.append((i, model, _fitted(model, i, source), digest))
    for i, model, (net, original), digest in todo:
        target = store.imported_checkpoint(out, model.run_id)
        converted = io.BytesIO()
        torch.save(checkpoint_of(model.net_config, net, original, dataset=spec.data.dataset,
                                 source=str(Path(model.checkpoint).expanduser().resolve())), converted)
        store.write_file(target, converted.getvalue())
        store.write_file(store.imported_source(out, model.run_id), json.dumps(
            {"source": str(Path(model.checkpoint).expanduser().resolve()), "sha256": digest}).encode())
    rows = []
    for model in spec.models:
        shape = skeleton(model.net_config)
        rows.append(store.run_row(
            model, dataset=spec.data.dataset, iterations=0, epochs=0, test_error=float("nan"),
            test_loss=float("nan"), num_blocks=shape.num_blocks, parameters=sum(p.numel() for p in shape.parameters()),
            checkpoint=store.relative(out, store.imported_checkpoint(out, model.run_id)), train_seconds=0.0))
    return store.replace_runs(out, rows)


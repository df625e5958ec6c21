"""The files a text experiment's results come from beyond its spec and its weights: the corpus and each tokenizer
folder, by content.

A unit's key names the corpus and the tokenizer by path (units.settings_of), not by what they hold: a corpus
replaced under the same name would give new rows of the new text beside old rows of the old one, in one table.
So the sha256 of each is recorded in OUT (``data.json``) when a command starts to write there, and a later
command whose corpus or tokenizer changed is refused in one line before Ray starts, as a changed checkpoint is
(imported.py). Image datasets record nothing here (see ``inputs``).
"""
from __future__ import annotations

import json
from pathlib import Path

from . import store   # store.DATA_RECORD: {path: sha256} of every corpus and tokenizer OUT's results were read from
from .imported import content_digest
from .spec import ExperimentSpec, SpecError

# a tokenizer folder may be a model's: its weights are guarded by the import (imported.py), and are not hashed twice
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def inputs(spec: ExperimentSpec) -> dict[str, str]:
    """{path: the spec field that names it} of what a text experiment reads beside its spec: the corpus and the
    tokenizer of each model. Empty for images: digits ships with scikit-learn, and an image folder's units are
    keyed by its path, like the corpus's before this record."""
    d = spec.data
    if not d.text:
        return {}
    found = {d.resolved_root: "data.root"}
    for i, m in enumerate(spec.models):
        found.setdefault(d.tokenizer_of(m.run_id), "data.tokenizer" if d.tokenizer else f"models[{i}].checkpoint")
    return found


def checked(spec: ExperimentSpec, out) -> dict[str, str]:
    """OUT's record with this spec's inputs added; SpecError (one line) if one of them changed since OUT's results
    were computed from it. Nothing is written: ``save`` writes the record once the command goes ahead."""
    path = store.where(out) / store.DATA_RECORD
    try:
        record = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: unreadable ({e}); it guards OUT's results against a changed corpus: restore it, "
                        f"or use another --out") from None
    for source, field in inputs(spec).items():
        try:
            digest = content_digest(Path(source), skip=WEIGHTS)
        except OSError as e:
            raise SpecError(f"{field}: cannot read {source} ({e.strerror})") from None
        kept = record.get(source)
        if kept is not None and kept != digest:
            raise SpecError(f"{field}: {source} changed since the results in {out} were computed from it (sha256 "
                            f"{kept[:12]}... then, {digest[:12]}... now); put the old one back, or use another "
                            f"--out for the new one")
        record[source] = digest
    return record


def save(out, record: dict[str, str]) -> None:
    if record:
        store.write_file(store.where(out) / store.DATA_RECORD, json.dumps(record, indent=1, sort_keys=True).encode())

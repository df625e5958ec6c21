"""The data an experiment's results come from beyond its spec and its weights: the corpus and each tokenizer
folder of a text, or the files under an image dataset's root, by content.

A unit's key names the data by its path (units.settings_of), not by what it holds: a corpus replaced under the
same name would give new rows of the new text beside old rows of the old one, in one table. So a digest of each
is recorded in OUT (``store.DATA_RECORD``) when a command starts to write there, and a later command whose data
changed is refused in one line before Ray starts, as a changed checkpoint is (imported.py). A corpus, a tokenizer
and CIFAR's few files are hashed whole; an image folder (ImageNet's val/, and train/ where a study reads it, or a
root on object storage) by its listing, the path and size of every file, as data_cache tells a changed source.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from workloads.data.cifar import CIFAR_FOLDERS   # dataset -> (its title, the folder torchvision reads under data.root)

from orchestrator import store   # store.DATA_RECORD: {source: digest} of the data OUT's results were computed from
from orchestrator.run.data_cache import files_of
from orchestrator.run.imported import content_digest
from orchestrator.location import Location, LocationError, is_uri

from orchestrator.experiment.messages import SpecError
from orchestrator.experiment.resolved import ExperimentSpec

# a tokenizer folder may be a model's: its weights are guarded by the import (imported.py), and not hashed twice
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")


def inputs(spec: ExperimentSpec) -> dict[str, tuple[str, str]]:
    """{source: (the spec field that names it, "content" | "listing")} of the data the spec reads that exists
    now. None for digits (it ships with scikit-learn); CIFAR that is still to be downloaded is recorded once it is
    there."""
    d = spec.data
    if d.text:
        found = {d.resolved_root: ("data.root", "content")}
        for i, m in enumerate(spec.models):
            field = "data.tokenizer" if d.tokenizer else f"models[{i}].checkpoint"
            found.setdefault(d.tokenizer_of(m.run_id), (field, "content"))
        return found
    root = Location.of(d.resolved_root)
    if d.dataset in CIFAR_FOLDERS:
        folders = [root / CIFAR_FOLDERS[d.dataset][1]]
        how = "listing" if is_uri(d.resolved_root) else "content"
    elif d.streamed:  # train/ is read only for gradients' batches and BatchNorm recalibration (1.28M files)
        reads_train = spec.studies.study("gradients") is not None or spec.studies.recalibrate_bn
        folders = [root / "val"] + ([root / "train"] if reads_train else [])
        how = "listing"
    else:
        return {}
    return {str(f): ("data.root", how) for f in folders if f.is_dir()}


def _digest(source: str, how: str) -> str:
    if how == "listing":
        return "listing:" + hashlib.sha256(json.dumps(files_of(source)).encode()).hexdigest()
    return content_digest(Path(source), skip=WEIGHTS)


def checked(spec: ExperimentSpec, out) -> dict[str, str]:
    """OUT's record with this spec's data added; SpecError (one line) if some of it changed since OUT's results
    were computed from it. Nothing is written: ``save`` writes the record once the command goes ahead."""
    path = store.data_record_path(out)
    try:
        record = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as e:
        raise SpecError(f"{path}: unreadable ({e}); it guards OUT's results against changed data: restore it, "
                        f"or use another --out") from None
    try:
        digests = {source: (field, how, _digest(source, how)) for source, (field, how) in inputs(spec).items()}
    except (OSError, LocationError) as e:
        raise SpecError(f"data.root: cannot read the data ({getattr(e, 'strerror', None) or e})") from None
    for source, (field, how, digest) in digests.items():
        kept = record.get(source)
        if kept is not None and kept != digest:
            what = "its files (names or sizes)" if how == "listing" else "its content"
            raise SpecError(f"{field}: {source} changed since the results in {out} were computed from it ({what}: "
                            f"sha256 {kept.removeprefix('listing:')[:12]}... then, "
                            f"{digest.removeprefix('listing:')[:12]}... now); put the old data back, or use "
                            f"another --out for the new")
        record[source] = digest
    return record


def save(out, record: dict[str, str]) -> None:
    if record:
        store.write_file(store.data_record_path(out), json.dumps(record, indent=1, sort_keys=True).encode())

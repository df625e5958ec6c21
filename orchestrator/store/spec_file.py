"""spec.json: the spec that made OUT, as written and as resolved, kept beside its results."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from orchestrator.store import layout
from orchestrator.store.files import CorruptResult, write_file

if TYPE_CHECKING:
    from orchestrator.experiment.resolved import ExperimentSpec


def save_spec(out, experiment: "ExperimentSpec") -> None:
    """Keep the spec beside its results, as written and as resolved (every trial with its network config and
    blocks, every study's runs, the data's paths), so that `unravel status OUT`, the figures, the report and
    prune read OUT alone: never the spec's YAML, its data or its model folders."""
    text = json.dumps({"path": experiment.path, "spec": experiment.raw, "experiment": experiment.record()},
                      indent=1, sort_keys=True)
    write_file(layout.spec_path(out), text.encode())


def read_spec_file(out) -> dict | None:
    """OUT's spec.json (None if OUT holds none): ``spec``, the document; ``path``, where it was read;
    ``experiment``, the resolved experiment's record (absent where an earlier unravel wrote the file)."""
    path = layout.spec_path(out)
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
        if not isinstance(recorded, dict) or not isinstance(recorded["spec"], dict):
            raise ValueError("not a mapping with the spec in it")
        return recorded
    except (OSError, ValueError, KeyError) as e:
        raise CorruptResult(f"{path}: unreadable ({e}); rerun unravel lesion or run to write it again") from None


def read_spec(out) -> dict | None:
    """The spec document that made OUT (None if OUT holds none)."""
    recorded = read_spec_file(out)
    return recorded["spec"] if recorded else None

"""spec.json: the spec that made OUT, kept beside its results."""
from __future__ import annotations

import json

from orchestrator.store import layout
from orchestrator.store.files import CorruptResult, write_file


def save_spec(out, raw: dict, path: str = "") -> None:
    """Keep the spec beside its results, so `unravel status OUT` and the report know what was asked."""
    text = json.dumps({"path": path, "spec": raw}, indent=1, sort_keys=True)
    write_file(layout.spec_path(out), text.encode())


def read_spec(out) -> dict | None:
    """The spec document that made OUT (None if OUT holds none)."""
    path = layout.spec_path(out)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["spec"]
    except (OSError, ValueError, KeyError) as e:
        raise CorruptResult(f"{path}: unreadable ({e}); rerun unravel lesion or run to write it again") from None

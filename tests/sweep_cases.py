"""The small two-run experiment the sweep, fault and cluster tests share (trained once per session,
by the ``trained`` fixture in conftest.py), and what those tests check of a sweep's tables."""
from __future__ import annotations

from pathlib import Path

import yaml

from orchestrator import store

BASE = {
    "name": "studies",
    "training": {
        "iterations": 30, "recipe": {"eval_every": 10}, "resources": {"cpu": 1},
        "runs": [{"network": "preact_resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]}},
                 {"network": "plain15", "label": "plain", "overrides": {"widths": [4, 8, 16]}}],
    },
    "studies": {
        "test_examples": 120,
        "single_deletion": {},
        "random_deletion": {"k_max": 3, "draws": 2},
        "reorder": {"k_max": 2, "draws": 2},
        "gradients": {"draws": 2, "batch_size": 16},
        "evaluators": {"count": 2, "cpu": 1},
        "plans_per_batch": 5,
    },
}


def with_studies(**changes) -> dict:
    return {**BASE, "studies": {**BASE["studies"], **changes}}


def table_keys(out: Path) -> list[str]:
    return store.read_parts(out, "lesion")["unit_key"].tolist() + store.read_parts(out, "gradients")["unit_key"].tolist()


def write_spec(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def assert_exactly_once(out: Path, total: int) -> None:
    keys = table_keys(out)  # reading every part: each is a whole Parquet file
    assert len(keys) == len(set(keys)) == total
    assert not list(out.rglob(".*.tmp")), "a temporary file was left behind"

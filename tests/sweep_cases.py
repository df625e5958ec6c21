"""The small two-run experiment the sweep, fault and cluster tests share (trained once per session,
by the ``trained`` fixture in conftest.py)."""
from __future__ import annotations

from pathlib import Path

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

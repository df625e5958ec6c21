"""Start-up: `unravel --help`, `unravel COMMAND --help` and `unravel query` import only what they need
(no torch, Ray, torchvision, scikit-learn or SciPy: seconds of imports a user waits through for nothing).
Each check runs in a fresh interpreter, since this one has imported everything already."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import store

pytestmark = pytest.mark.slow  # every test here starts a fresh interpreter

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "ray", "sklearn", "scipy")

# runs the CLI in-process on each argument list, then reports what each printed, its exit code, and
# which heavy packages were imported by then
PROBE = """
import contextlib, io, json, sys
from orchestrator.cli import main
ran = []
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(args)
        except SystemExit as e:
            ran.append({"code": e.code, "output": out.getvalue()})
print(json.dumps({"ran": ran, "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def imported(*commands: list[str]) -> dict:
    """``commands`` run in one fresh interpreter: what each printed and its exit code, and the heavy
    packages imported by the end."""
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_help_imports_nothing_heavy():
    from orchestrator.cli import main
    commands = [["--help"], *([name, "--help"] for name in sorted(main.commands))]
    result = imported(*commands)
    assert [r["code"] for r in result["ran"]] == [0] * len(commands), result
    assert all("Usage:" in r["output"] for r in result["ran"])
    assert result["heavy"] == []


def test_query_imports_neither_torch_nor_ray(tmp_path):
    store.write_part(tmp_path, "lesion", "single_deletion", "r", "a", [
        {"unit_key": "u", "k": 1, "draw": 0, "deleted": [0], "order": [1, 2], "kendall_tau": 1.0, "active_blocks": 2,
         "error": 0.5, "loss": 1.0, "examples": 10, "precision": "fp32", "bn_recalibrated": False, "seconds": 0.1,
         "test_rule": "", "metric": "classification", "perplexity": float("nan"),
         "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}])
    result = imported(["query", str(tmp_path), "select run_id, deleted from lesion", "--format", "csv"])
    assert result["ran"] == [{"code": 0, "output": 'run_id,deleted\nr,[0]\n'}], result
    assert result["heavy"] == []


def test_a_skeleton_draws_no_weights(monkeypatch):
    """`unravel status` and every spec check build each network as a meta-device skeleton to count its
    blocks; drawing its (absent) weights took a second there (torch._dynamo imported for normal_ on meta)."""
    import torch

    from workloads.models import build_network, network_config, skeleton
    drawn = []
    monkeypatch.setattr(torch.nn.init, "kaiming_normal_", lambda w, **kw: drawn.append(w.device.type) or w)
    for name in ("resnet20", "preact_resnet110", "resnet164", "plain15"):
        net = skeleton(network_config(name, in_channels=1, num_classes=10, image_size=8))
        assert net.num_blocks > 0 and next(net.parameters()).is_meta
    assert drawn == []
    build_network("resnet20", in_channels=1, num_classes=10, image_size=8)  # a real network is still initialised
    assert drawn and set(drawn) == {"cpu"}

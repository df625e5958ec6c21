"""`unravel status --format json` (a status scripts can read), on an OUT made by hand: no Ray session."""
from __future__ import annotations

import json
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.spec import parse_spec
from orchestrator.units import expand

TINY = {
    "name": "tiny-plan",
    "data": {"dataset": "digits"},
    "training": {"iterations": 50, "seeds": 2, "resources": {"cpu": 2},
                 "runs": [{"network": "preact_resnet20", "label": "res", "overrides": {"widths": [4, 8, 8]},
                           "modes": ["normal", "stochastic_depth"]},
                          {"network": "plain15", "overrides": {"widths": [4, 8, 8]}}]},
    "studies": {"test_examples": 64, "single_deletion": {}, "random_deletion": {"k_max": 2, "draws": 3},
                "gradients": {"draws": 2, "runs": ["res"], "batch_size": 8},
                "evaluators": {"count": 3, "cpu": 1}},
}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- status --format json ------------------------------------------------------------------------

def test_status_json_per_study_and_run(tmp_path):
    """On an OUT made by hand: one run's single deletions written, one unit failed, one trial finished."""
    out = tmp_path / "out"
    spec = parse_spec(TINY)
    store.save_spec(out, TINY)
    units = expand(spec)
    run = next(u.run_id for u in units if u.study == "single_deletion")
    written = [u for u in units if u.study == "single_deletion" and u.run_id == run]
    store.write_part(out, "lesion", "single_deletion", run, "b1", [
        {"unit_key": u.key, "k": 1, "draw": u.draw, "deleted": [u.draw], "order": [0], "kendall_tau": 1.0,
         "active_blocks": 1, "error": 0.5, "loss": 1.0, "examples": 64, "precision": "fp32",
         "bn_recalibrated": False, "seconds": 0.1, "test_rule": ""} for u in written])
    failed = next(u for u in units if u.study == "random_deletion")
    store.write_errors(out, "b2", [store.error_row(failed, RuntimeError("boom"))])
    trial = spec.training.trials[0]
    store.write_table(out, "runs", [store.run_row(trial, dataset="digits", iterations=50, epochs=1, test_error=0.5,
                                                  test_loss=1.0, num_blocks=9, parameters=10, checkpoint="c",
                                                  train_seconds=1.0)])
    result = invoke("status", out, "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["experiment"] == "tiny-plan" and doc["trials"] == {"trials": 6, "finished": 1, "failed": 0, "left": 5}
    assert doc["units"] == {"units": len(units), "done": len(written), "failed": 1,
                            "left": len(units) - len(written) - 1}
    studies = {s["study"]: s for s in doc["studies"]}
    assert studies["random_deletion"]["failed"] == 1 and studies["single_deletion"]["done"] == len(written)
    runs = {(r["run_id"], r["study"]): r for r in doc["runs"]}
    assert runs[(run, "single_deletion")] == {"run_id": run, "study": "single_deletion", "units": len(written),
                                              "done": len(written), "failed": 0, "left": 0}
    assert runs[(failed.run_id, "random_deletion")]["failed"] == 1
    assert sum(r["units"] for r in doc["runs"]) == len(units)

    table = invoke("status", out)   # the default table keeps its shape: a row per study
    assert table.exit_code == 0 and table.output.split("\n")[0].split() == ["study", "units", "done", "failed", "left"]
    by_run = invoke("status", out, "--by-run")
    assert by_run.exit_code == 0 and by_run.output.split("\n")[0].split()[:2] == ["run_id", "study"]
    assert len(by_run.output.strip().splitlines()) == len(doc["runs"]) + 1

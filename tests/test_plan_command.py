"""`unravel plan` (a dry run: counts, resources, fits, device time; nothing written) and
`unravel status --format json` (a status scripts can read). No Ray session: plans read nodes from
--node or this machine, and status reads an OUT made by hand."""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.plan import Node, NodeError, fit_at_once, parse_node, render
from orchestrator.rates import group_of
from orchestrator.spec import Evaluators, Resources, load_spec, parse_spec
from orchestrator.units import expand

ROOT = Path(__file__).resolve().parent.parent
VEIT = ROOT / "experiments" / "veit2016-cifar10.yaml"

# tiny networks on digits: a calibration of a few milliseconds each
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


def spec_file(folder: Path, raw: dict = TINY) -> Path:
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def clean_cwd(tmp_path, monkeypatch):
    """A working directory that a test checks is left as it was."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return cwd


def test_how_many_fit_on_nodes():
    nodes = [Node(8, 1)] * 4
    assert fit_at_once(Resources(cpu=4, gpu=1), nodes) == 4              # one GPU per node
    assert fit_at_once(Resources(cpu=3, gpu=0), nodes) == 8              # 2 per node by CPU
    assert fit_at_once(Evaluators(count=16, gpu=0.25), nodes) == 16      # no CPU asked: 4 per GPU
    assert fit_at_once(Evaluators(count=16, gpu=0.1), [Node(0, 1)]) == 10   # 1 / 0.1 is 9.999...
    assert fit_at_once(Resources(cpu=1, gpu=1), [Node(64, 0)]) == 0     # no GPU anywhere
    assert fit_at_once(Resources(cpu=16), [Node(8, 0), Node(16, 2), Node(32, 0)]) == 3


def test_node_descriptions():
    assert parse_node("cpu=8,gpu=1,count=3") == [Node(8, 1)] * 3
    assert parse_node("CPU=2") == [Node(2, 0)]
    for bad in ("8,1", "cpu=8,gpu=x", "gpu=1", "cpu=8,count=1.5", "cpu=-1", "cpu=4,cpu=4", "cpu=4,disk=1"):
        with pytest.raises(NodeError, match="--node"):
            parse_node(bad)


def test_plan_counts_resources_fits_and_given_rates(clean_cwd, tmp_path):
    """The JSON's counts are expand's, each time is count / rate, and no calibration runs when every
    rate is given (the most specific key wins); the table says the same."""
    path = spec_file(tmp_path)
    spec = load_spec(path)
    rates = ["--train-rate", "res=10", "--train-rate", "res.stochastic_depth=20", "--train-rate", "plain15=5",
             "--unit-rate", "single_deletion=2", "--unit-rate", "random_deletion=4", "--unit-rate", "intact=1",
             "--unit-rate", "res:gradients=8"]
    result = invoke("plan", path, "--node", "cpu=4,count=2", "--format", "json", *rates)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    units = expand(spec)
    assert doc["studies"]["units"] == len(units)
    assert {s["study"]: s["units"] for s in doc["studies"]["per_study"]} == Counter(u.study for u in units)
    assert {s["study"]: s["runs"] for s in doc["studies"]["per_study"]} == \
        {s: len({u.run_id for u in units if u.study == s}) for s in Counter(u.study for u in units)}
    t = doc["training"]
    assert t["trials"] == 6 and t["resources"] == {"cpu": 2.0, "gpu": 0.0}
    assert t["fit_at_once"] == 4 and t["at_once"] == 4        # two nodes of 4 CPUs, 2 CPUs per trial
    e = doc["studies"]
    assert e["evaluators"] == {"count": 3, "cpu": 1.0, "gpu": 0.0} and e["fit_at_once"] == 8 and e["at_once"] == 3
    groups = {g["group"]: g for g in t["groups"]}
    assert set(groups) == {group_of(x) for x in spec.training.trials}
    assert groups["res.stochastic_depth"]["iterations_per_s"] == 20 and groups["res.normal"]["iterations_per_s"] == 10
    assert groups["plain15.normal"]["device_hours"] == pytest.approx(2 * 50 / 5 / 3600)
    assert all(g["rate"] == "given" for g in t["groups"] + e["groups"])
    expected = (2 * 50 / 10 + 2 * 50 / 20 + 2 * 50 / 5) / 3600
    assert t["device_hours"] == pytest.approx(expected)
    gradients = next(s for s in e["per_study"] if s["study"] == "gradients")
    assert gradients["device_hours"] == pytest.approx(gradients["units"] / 8 / 3600)
    assert doc["device_hours"] == pytest.approx(t["device_hours"] + e["device_hours"])
    assert doc["estimate"]["calibration"] is None and doc["estimate"]["measured"] == 0
    assert doc["data"]["test_examples"] == 64 and doc["nodes"]["source"] == "declared"
    assert set(doc["rates"]["train"]) == set(groups)

    table = invoke("plan", path, "--node", "cpu=4,count=2", *rates)
    assert table.exit_code == 0, table.output
    assert f"studies: {len(units):,} units" in table.output
    assert "6 trials, each 2 CPU + 0 GPU; 4 fit at once" in table.output
    assert "device-hours" in table.output and "rates: 13 of 13 given" in table.output
    assert list(clean_cwd.iterdir()) == []


def test_a_calibrated_plan_reads_back_as_rates(clean_cwd, tmp_path):
    """Without figures the rates are measured here (tiny networks: a second); a plan's JSON given
    back with --rates is the same plan with nothing measured."""
    one_network = {**TINY, "training": {**TINY["training"], "runs": TINY["training"]["runs"][:1]}}
    path = spec_file(tmp_path, one_network)
    result = invoke("plan", path, "--format", "json", "--node", "cpu=4")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)   # stderr says what is being calibrated
    assert doc["estimate"]["measured"] > 0 and doc["estimate"]["given"] == 0
    assert doc["estimate"]["calibration"]["devices"] == ["cpu (1 thread)", "cpu (2 threads)"]
    assert all(g["rate"] == "measured" and g["device_hours"] > 0 for g in doc["training"]["groups"])
    assert doc["wall_hours"] > 0
    assert doc["wall_hours"] == pytest.approx(doc["training"]["wall_hours"] + doc["studies"]["wall_hours"])
    saved = tmp_path / "plan.json"
    saved.write_text(result.stdout)
    again = json.loads(invoke("plan", path, "--format", "json", "--rates", saved).stdout)   # on this machine's nodes
    assert again["nodes"] == {"source": "this machine", "nodes": [{"cpu": float(len(os.sched_getaffinity(0))),
                                                                   "gpu": float(torch.cuda.device_count())}]}
    assert again["estimate"]["measured"] == 0 and again["estimate"]["calibration"] is None
    assert again["device_hours"] == pytest.approx(doc["device_hours"])
    assert list(clean_cwd.iterdir()) == []


def test_the_veit_cifar10_spec_plans_without_its_data(clean_cwd):
    """The issue's done-when: the spec's units, resources and device-hours, with /mnt/shared/data absent."""
    lesions = ("intact", "single_deletion", "random_deletion", "reorder")
    rates = ["--train-rate", "resnet110=20", "--train-rate", "plain15=40", "--unit-rate", "gradients=500",
             *(x for study in lesions for x in ("--unit-rate", f"{study}=2"))]
    result = invoke("plan", VEIT, "--node", "cpu=8,gpu=1,count=8", "--format", "json", *rates)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    per_study = {s["study"]: s["units"] for s in doc["studies"]["per_study"]}
    # 15 ResNet-110 runs (3 modes x 5 seeds): 20 x 100 deletions, 27 x 100 reorderings, 1000 draws x 54 lengths
    assert per_study["random_deletion"] == 15 * 20 * 100 and per_study["reorder"] == 15 * 27 * 100
    assert per_study["gradients"] == 15 * 1000 * 54 and per_study["intact"] == 20
    t, s = doc["training"], doc["studies"]
    assert t["trials"] == 20 and t["resources"] == {"cpu": 4.0, "gpu": 1.0} and t["at_once"] == 8
    assert s["evaluators"]["gpu"] == 0.25 and s["fit_at_once"] == 32 and s["at_once"] == 16
    assert t["device_hours"] == pytest.approx((15 * 64000 / 20 + 5 * 64000 / 40) / 3600)
    assert doc["wall_hours"] == pytest.approx(t["device_hours"] / 8 + s["device_hours"] / 4)   # 16 share 4 GPUs
    assert doc["data"]["files_checked"] is False
    assert any("files not checked" in n for n in doc["notes"])
    assert list(clean_cwd.iterdir()) == []
    # the README shows this plan's table (with these rates); every line it shows is the table's
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"^```\n(plan of 'veit2016-cifar10'.*?)^```", readme, re.M | re.S).group(1).splitlines()
    table = render(doc).splitlines()
    assert shown[0].split(" (")[0] == table[0].split(" (")[0]   # the spec's path differs
    rest = iter(table[1:])
    assert all(any(line == t for t in rest) for line in shown[1:] if line.strip() != "..."), shown  # in order
    assert len(shown) > 15


def test_bad_plan_input_is_one_line_and_exit_2(clean_cwd, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "training": {**TINY["training"], "iterations": 0}}))
    good = spec_file(tmp_path)
    rates = tmp_path / "rates.json"
    rates.write_text('{"train": {"res": "fast"}}')
    cases = [
        (["plan", bad], "training.iterations"),
        (["plan", tmp_path / "missing.yaml"], "cannot read the spec"),
        (["plan", good, "--node", "cpu=8,gpu=one"], "--node"),
        (["plan", good, "--node", "cpu=8", "--address", "127.0.0.1:1"], "give one"),
        (["plan", good, "--train-rate", "resnet11=4"], "names no trained run"),
        (["plan", good, "--unit-rate", "reorder=4"], "names no study"),
        (["plan", good, "--unit-rate", "gradients=0"], "above 0"),
        (["plan", good, "--rates", rates], "train.res: must be a number"),
        (["plan", good, "--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    ]
    for args, expected in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)
    assert list(clean_cwd.iterdir()) == []


def test_known_split_sizes_match_the_loader():
    from workloads.data import SPLITS, load_digits
    digits = load_digits()
    assert SPLITS["digits"] == (len(digits.train_labels), len(digits.test_labels), digits.augmentation)


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
         "bn_recalibrated": False, "seconds": 0.1, "test_rule": "", "metric": "classification", "perplexity": float("nan")} for u in written])
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

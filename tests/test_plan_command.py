"""`unravel plan` (a dry run: counts, resources, fits, device time; nothing written) and
`unravel status --format json` (a status scripts can read). No Ray session: plans read nodes from
--node or this machine, and status reads an OUT made by hand."""
from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.cli import main
from orchestrator.planning.nodes import Node, NodeError, fit_at_once, parse_node
from orchestrator.planning.table import render
from orchestrator.experiment.document import Evaluators, Resources
from orchestrator.experiment.spec import load_spec, parse_spec
from orchestrator.experiment.units import batches, expand
from workloads.models import skeleton

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
    assert set(groups) == {x.group for x in spec.training.trials}
    assert groups["res.stochastic_depth"]["iterations_per_s"] == 20 and groups["res.normal"]["iterations_per_s"] == 10
    assert groups["plain15.normal"]["device_hours"] == pytest.approx(2 * 50 / 5 / 3600)
    assert all(g["rate"] == "given" for g in t["groups"] + e["groups"])
    expected = (2 * 50 / 10 + 2 * 50 / 20 + 2 * 50 / 5) / 3600
    assert t["device_hours"] == pytest.approx(expected)
    gradients = next(s for s in e["per_study"] if s["study"] == "gradients")
    assert gradients["device_hours"] == pytest.approx(gradients["units"] / 8 / 3600)
    assert doc["device_hours"] == pytest.approx(t["device_hours"] + e["device_hours"])
    assert doc["estimate"]["calibration"] is None and doc["estimate"]["measured"] == 0
    assert e["batches"] == len(batches(units, spec.studies.plans_per_batch))
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
    result = invoke("plan", path, "--format", "json", "--node", "cpu=4", "--calibrate")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)   # stderr says what is being calibrated
    assert doc["estimate"]["measured"] > 0 and doc["estimate"]["given"] == 0
    assert doc["estimate"]["calibration"]["devices"] == ["cpu (1 thread)", "cpu (2 threads)"]
    progress = [line for line in result.stderr.splitlines() if line.startswith("calibrating ")]
    assert len(progress) == len(doc["estimate"]["calibration"]["timed"]) > 1
    assert progress[0].startswith("calibrating 1/") and progress[0].endswith("of a 60 s budget spent)")
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


def test_a_plan_without_rates_measures_nothing_and_says_device_time_is_unknown(clean_cwd, tmp_path):
    """A dry run answers at once: no calibration unless asked, and no figure without a rate."""
    path = spec_file(tmp_path)
    result = invoke("plan", path, "--node", "cpu=4")
    assert result.exit_code == 0, result.output
    assert "calibrating" not in result.stderr
    assert "device time: unknown, give --rates or calibrate on a node like the spec's" in result.stdout
    assert "rates: none" in result.stdout
    doc = json.loads(invoke("plan", path, "--node", "cpu=4", "--format", "json").stdout)
    assert doc["estimate"]["calibration"] is None and doc["device_hours"] is None and doc["wall_hours"] is None
    assert doc["studies"]["units"] == len(expand(load_spec(path)))
    assert list(clean_cwd.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the spec's GPU is here: it would be measured")
def test_workers_asking_for_a_gpu_are_not_calibrated_on_the_cpu(clean_cwd, tmp_path):
    """A CPU figure standing for a GPU's misleads by orders of magnitude: even with --calibrate the
    GPU workers' rates stay unknown, and the plan says why; a CPU part is still measured."""
    gpu = {**TINY, "training": {**TINY["training"], "resources": {"cpu": 1, "gpu": 1},
                                "runs": TINY["training"]["runs"][:1]},
           "studies": {**TINY["studies"], "evaluators": {"count": 1, "cpu": 1}}}
    path = spec_file(tmp_path, gpu)
    result = invoke("plan", path, "--node", "cpu=4,gpu=1", "--calibrate", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert all(g["rate"] is None and g["device_hours"] is None for g in doc["training"]["groups"])
    assert all(g["rate"] == "measured" for g in doc["studies"]["groups"])   # the evaluators ask for CPUs
    assert doc["device_hours"] is None and doc["studies"]["device_hours"] > 0
    assert "training of" not in result.stderr and "calibrating 1/" in result.stderr
    assert any(n.startswith("not calibrated: the spec's trials ask for a GPU and this machine has none")
               for n in doc["notes"])
    table = invoke("plan", path, "--node", "cpu=4,gpu=1", "--calibrate")
    assert "device time: unknown, give --rates or calibrate on a node like the spec's (known: studies" in table.stdout


@pytest.mark.slow
def test_a_calibration_keeps_its_time_budget(clean_cwd, tmp_path):
    """Networks whose calibration takes seconds each, and a budget of half a second: it stops inside the
    first measurement, and what it did not measure stays unknown."""
    deep = {**TINY, "training": {**TINY["training"], "seeds": 1, "runs": [
        {"network": "preact_resnet110", "label": f"deep{i}", "overrides": {"widths": [16 + i, 32, 64]}}
        for i in range(3)]}, "studies": {"test_examples": 64, "single_deletion": {}}}
    path = spec_file(tmp_path, deep)
    started = time.perf_counter()
    result = invoke("plan", path, "--node", "cpu=4", "--calibrate", "--calibration-budget", "0.5",
                    "--format", "json")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    calibration = doc["estimate"]["calibration"]
    assert calibration["budget_seconds"] == 0.5 and calibration["seconds"] < 1.5 and elapsed < 10
    assert doc["estimate"]["measured"] < 6 and doc["device_hours"] is None
    assert any("the calibration's budget of 0.5 s was spent" in n for n in doc["notes"])
    bad = invoke("plan", path, "--calibrate", "--calibration-budget", "0")
    assert bad.exit_code == 2 and "--calibration-budget" in bad.output and len(bad.output.splitlines()) == 1


def test_a_mobilenet_with_gradients_plans_and_calibrates(clean_cwd, tmp_path):
    """Gradient path lengths count residual units only (a MobileNet has blocks without a shortcut): the
    calibration draws them as the sweep does. Neither the images nor the checkpoint exist."""
    mobile = {"name": "mobile", "data": {"dataset": "imagenet", "root": str(tmp_path / "images"), "image_size": 32,
                                         "resize": 32, "num_classes": 10},
              "models": [{"network": "tv_mobilenet_v2", "label": "mobile", "checkpoint": str(tmp_path / "m.pt"),
                          "overrides": {"arch_options": {"width_mult": 0.25}}}],
              "studies": {"test_examples": 8, "single_deletion": {}, "gradients": {"draws": 2, "batch_size": 4},
                          "evaluators": {"count": 1, "cpu": 1}}}
    path = spec_file(tmp_path, mobile)
    result = invoke("plan", path, "--node", "cpu=2", "--calibrate", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    infos = skeleton(load_spec(path).runs[0].net_config).block_infos()
    residual = sum(i.residual for i in infos)
    assert 0 < residual < len(infos)
    gradients = next(s for s in doc["studies"]["per_study"] if s["study"] == "gradients")
    assert gradients["units"] == 2 * residual and gradients["device_hours"] > 0
    assert all(g["rate"] == "measured" for g in doc["studies"]["groups"])


def test_the_language_model_spec_plans_without_its_model_folder(clean_cwd, tmp_path, monkeypatch):
    """experiments/llm-layer-deletion.yaml names models/Llama-3.2-1B: absent, the plan says in one note
    what it cannot know (the model's layers, so its units) and answers the rest; with the folder's
    config.json present it counts the units."""
    from language_cases import write_llama_config
    llm = ROOT / "experiments" / "llm-layer-deletion.yaml"
    result = invoke("plan", llm, "--node", "cpu=8,gpu=1", "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["studies"]["units"] == 0 and doc["studies"]["units_unknown_for"] == ["llama"]
    assert doc["studies"]["fit_at_once"] == 1 and doc["device_hours"] is None and doc["data"]["classes"] is None
    absent = [n for n in doc["notes"] if n.startswith("models[0] (llama): models/Llama-3.2-1B is not here")]
    assert len(absent) == 1 and "k_max, max_length) and data.sequence_length are not checked" in absent[0]
    table = invoke("plan", llm, "--node", "cpu=8,gpu=1", "--unit-rate", "single_deletion=2")
    assert table.exit_code == 0, table.output
    assert "studies: the units of llama unknown, 1 evaluator of 0 CPU + 1 GPU each" in table.stdout
    assert "device time: unknown, give --rates" in table.stdout
    assert list(clean_cwd.iterdir()) == []
    present = tmp_path / "present"
    write_llama_config(present / "models" / "Llama-3.2-1B", layers=4)
    monkeypatch.chdir(present)
    doc = json.loads(invoke("plan", llm, "--node", "cpu=8,gpu=1", "--format", "json").stdout)
    assert doc["studies"]["units_unknown_for"] == [] and doc["data"]["classes"] == 96
    per_study = {s["study"]: s["units"] for s in doc["studies"]["per_study"]}
    assert per_study["single_deletion"] == 8 and per_study["span_deletion"] == 4 + 3 + 2 + 1
    assert not any("is not here" in n for n in doc["notes"])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "experiments").glob("*.yaml")))
def test_every_shipped_spec_plans_in_seconds(clean_cwd, name):
    """No calibration, no unit made: counts, resources and fits at once (the Veit spec has 881,390
    units); the time here excludes importing torch."""
    started = time.perf_counter()
    result = invoke("plan", ROOT / "experiments" / name, "--node", "cpu=8,gpu=1,count=8")
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert "device time: unknown, give --rates or calibrate on a node like the spec's" in result.stdout
    assert "calibrating" not in result.stderr and elapsed < 10, elapsed


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
    store.save_spec(out, spec)
    units = expand(spec)
    run = next(u.run_id for u in units if u.study == "single_deletion")
    written = [u for u in units if u.study == "single_deletion" and u.run_id == run]
    store.write_part(out, "lesion", "single_deletion", run, "b1", [
        {"unit_key": u.key, "k": 1, "draw": u.draw, "deleted": [u.draw], "order": [0], "kendall_tau": 1.0,
         "active_blocks": 1, "error": 0.5, "loss": 1.0, "examples": 64, "precision": "fp32",
         "bn_recalibrated": False, "seconds": 0.1, "test_rule": "", "metric": "classification", "perplexity": float("nan"),
         "kl_from_intact": None, "agreement_with_intact": None, "entropy": None} for u in written])
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

"""T1's test-time rules: what each computes, the spec option, its units and rows, and the verdict."""
import copy
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import tiny
from orchestrator.store import query
from orchestrator import store
from orchestrator.analysis.effective_paths import t1_claim, t1_section
from orchestrator.analysis.results import Results
from orchestrator.experiment.resolved import Trial
from orchestrator.experiment.spec import SpecError, parse_spec
from orchestrator.experiment.units import batches, expand
from workloads.surgery import draw_batch, gradient_norms
from workloads.train.inference_rules import apply_test_rule

ROOT = Path(__file__).resolve().parent.parent


# -- the rules themselves ----------------------------------------------------------------------------

def _hand_scaled(net, x, factor):
    """stem -> each block as shortcut + factor x branch -> head, written out by hand."""
    h = net.stem(x)
    for block in net.blocks:
        s, r = block.parts(h)
        h = block.post(s + factor * r)
    return net.head(h)


def test_scaled_is_every_branch_times_m_over_n(images):
    net = tiny("preact_resnet20", widths=(4, 8, 16))
    x = images[0][:8]
    scaled = apply_test_rule(net, "scaled", 4)
    with torch.no_grad():
        assert torch.allclose(scaled(x), _hand_scaled(net, x, 4 / 9), atol=1e-5)
        assert not torch.allclose(scaled(x), net(x), atol=1e-3)
        assert torch.equal(apply_test_rule(net, "unscaled", 4)(x), net(x))   # unscaled: as trained
    assert all(b.survival == 1.0 for b in net.blocks)                       # the original is left alone


def test_scaled_needs_a_branch_factor_on_every_block():
    plain = tiny("plain15", widths=(4, 8, 16))
    with pytest.raises(ValueError, match="block 0 \\(PlainLayer\\) has none"):
        apply_test_rule(plain, "scaled", 5)
    with pytest.raises(ValueError, match="got 'halved'"):
        apply_test_rule(plain, "halved", 5)


def test_recalibrated_statistics_are_the_calibration_set_s_batch_statistics(images):
    net = tiny("preact_resnet20", widths=(4, 8, 16))
    calibration = images[0]
    recal = apply_test_rule(net, "recalibrated", 4, calibration)
    # reference: every BatchNorm in training mode over the whole set, with every block active and unscaled
    reference, seen = copy.deepcopy(net), []
    bns = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.train()
        bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        reference(calibration)
    after = [m for m in recal.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(seen) == len(after) == len(bns) > 10
    for x, bn in zip(seen, after):
        assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)
        assert torch.allclose(bn.running_var, x.var((0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert all(not m.training for m in recal.modules())
    with pytest.raises(ValueError, match="needs calibration images"):
        apply_test_rule(net, "recalibrated", 4)


# -- the spec option and its units -------------------------------------------------------------------

def _spec(studies=None, **entry) -> dict:
    return {"name": "t1", "training": {"iterations": 10, "seeds": 2, "runs": [
        {"network": "preact_resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]},
         "modes": ["normal", "effective_paths"], **entry}]}, "studies": studies or {}}


def test_rules_default_to_scaled_on_effective_paths_runs_only_and_round_trip():
    spec = parse_spec(_spec())
    assert {t.mode: t.test_rules for t in spec.runs} == {"normal": (), "effective_paths": ("scaled",)}
    ruled = parse_spec(_spec(test_rules=["recalibrated", "scaled"])).runs
    assert [t.test_rules for t in ruled if t.mode == "effective_paths"] == [("recalibrated", "scaled")] * 2
    assert all(Trial.from_dict(json.loads(json.dumps(t.to_dict()))) == t for t in ruled)


@pytest.mark.parametrize("entry, message", [
    ({"modes": ["normal"], "test_rules": ["scaled"]}, "training.runs[0].test_rules: applies only to mode effective_paths"),
    ({"test_rules": ["halved"]}, "training.runs[0].test_rules[0]: unknown test rule 'halved'"),
    ({"test_rules": ["scaled", "scaled"]}, "training.runs[0].test_rules: has repeated rules"),
    ({"test_rules": []}, "training.runs[0].test_rules: must list at least one test rule"),
])
def test_bad_rules_are_one_line(entry, message):
    with pytest.raises(SpecError) as e:
        parse_spec(_spec(**entry))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.slow
def test_rules_leave_the_shipped_experiments_run_ids_alone(shipped_cwd):
    """No retraining: the same checkpoint is evaluated under each rule."""
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        ruled = copy.deepcopy(raw)
        for entry in (ruled.get("training") or {}).get("runs", []):
            if "effective_paths" in entry.get("modes", []):
                entry["test_rules"] = ["unscaled", "recalibrated", "scaled"]
        assert [t.run_id for t in parse_spec(ruled).runs] == [t.run_id for t in parse_spec(raw).runs]


def test_one_intact_unit_per_rule_and_the_studies_use_the_first():
    rules = ["unscaled", "scaled", "recalibrated"]
    units = expand(parse_spec(_spec({"single_deletion": {}}, test_rules=rules)))
    eff = [u for u in units if ".effective_paths." in u.run_id]
    intact = [(u.run_id, u.test_rule) for u in eff if u.study == "intact"]
    assert sorted(intact) == sorted((r, rule) for r in {u.run_id for u in eff} for rule in rules)
    assert {u.test_rule for u in eff if u.study != "intact"} == {"unscaled"}
    assert {u.train_active for u in eff} == {4}            # m = round(9 * 23/54)
    assert len({u.key for u in units}) == len(units)
    # a normal run's units keep the keys they had without effective-paths runs beside them
    normal_only = expand(parse_spec(_spec({"single_deletion": {}}, modes=["normal"])))
    assert {u.key for u in normal_only} == {u.key for u in units if ".normal." in u.run_id}
    assert all(u.test_rule == "" for u in normal_only)
    # a batch holds one rule; and the intact rules are evaluated when no study names the run
    assert all(len({u.test_rule for u in b.units}) == 1 == len({b.test_rule}) for b in batches(units, 64))
    bare = expand(parse_spec(_spec(test_rules=rules)))
    assert sorted(u.test_rule for u in bare) == sorted(rules * 2) and {u.study for u in bare} == {"intact"}


# -- the evaluator: each rule's error on a batch of an effective-paths run ------------------------------

def test_the_evaluator_applies_each_rule_to_lesions_and_gradients():
    from orchestrator.run.evaluator import Evaluator
    spec = parse_spec({**_spec({"test_examples": 64, "precision": "fp32", "calibration_examples": 32,
                                "gradients": {"draws": 1, "batch_size": 8}},
                               test_rules=["scaled", "unscaled", "recalibrated"]),
                       "data": {"dataset": "digits"}})
    trial = next(t for t in spec.runs if t.mode == "effective_paths")
    net = tiny(trial.net_config.name, **{k: getattr(trial.net_config, k) for k in
                                         ("widths", "in_channels", "num_classes", "image_size")})
    blob = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "net_config": trial.net_config.to_json()}, blob)
    evaluator = Evaluator(spec.data, spec.studies)
    x, y = evaluator.test
    work = [b for b in batches(expand(spec), 64) if b.run_id == trial.run_id]
    losses = {}
    for batch in work:
        tables, errors = evaluator.run(batch, blob.getvalue())
        assert not errors and list(tables) == [batch.table]
        rows = tables[batch.table]
        calibration = evaluator.calibration_images if batch.test_rule == "recalibrated" else None
        expected = apply_test_rule(net, batch.test_rule, 4, calibration)
        if batch.study == "gradients":
            assert batch.test_rule == "scaled"
            batch_of_draw = draw_batch(evaluator.data.train_size(), evaluator.gradient_batch_size, 0)  # the evaluator's
            want = gradient_norms(expected, *evaluator.data.train_examples(batch_of_draw), [(1, 0)])
            assert rows[0]["log10_norm"] == pytest.approx(want[0].log10_norm, abs=1e-4)
            continue
        (row,) = rows
        with torch.no_grad():
            logits = expected(x)
        assert row["test_rule"] == batch.test_rule
        assert row["error"] == pytest.approx(float((logits.argmax(1) != y).float().mean()))
        assert row["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-4)
        losses[batch.test_rule] = row["loss"]
    assert len(set(losses.values())) == 3           # three rules, three different networks


# -- the lesion table: a part written before test_rule existed still reads -----------------------------

def test_parts_written_before_the_test_rule_column_still_read(tmp_path):
    old_schema = pa.schema([f for f in store.PART_SCHEMAS["lesion"] if f.name != "test_rule"])
    row = {"unit_key": "old", "k": 1, "draw": 0, "deleted": [0], "order": [0, 1], "kendall_tau": 1.0,
           "active_blocks": 1, "error": 0.5, "loss": 1.0, "examples": 10, "precision": "fp32",
           "bn_recalibrated": False, "seconds": 0.1}
    path = store.part_path(tmp_path, "lesion", "intact", "a", "old").local_path  # the first file: the older schema
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), path)
    store.write_part(tmp_path, "lesion", "intact", "b", "new", [
        {**row, "unit_key": "new", "test_rule": "scaled", "metric": "classification", "perplexity": float("nan"),
         "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}])
    frame = store.read_parts(tmp_path, "lesion").set_index("unit_key")
    assert frame.loc["old", "test_rule"] == "" and frame.loc["new", "test_rule"] == "scaled"
    assert store.read_parts(tmp_path, "lesion", columns=["test_rule"])["test_rule"].tolist() == ["", "scaled"]
    assert store.done_keys(tmp_path, "lesion") == {"old", "new"}
    assert query.run(tmp_path, "select unit_key from lesion where test_rule = '' and study = 'intact'", "csv") == \
        "unit_key\nold\n"                            # the view reads it as the store does: "", not NULL
    assert pq.read_schema(store.part_path(tmp_path, "lesion", "intact", "b", "new")).metadata[
        b"unravel.schema_version"] == b"4"


# -- T1's verdict on tables built here ---------------------------------------------------------------

def _tables(tmp_path, effective: dict[str, list[float]], normal: list[float]) -> Results:
    """Runs of resnet20 on digits: effective-paths seeds with intact errors per rule (%), normal seeds."""
    from workloads.models import network_config
    cfg = network_config("resnet20", in_channels=1, num_classes=10, image_size=8, widths=(4, 8, 16)).to_json()

    def run(run_id, mode, seed, error):
        return {"run_id": run_id, "label": "res", "network": "resnet20", "variant": "{}", "mode": mode, "seed": seed,
                "dataset": "digits", "iterations": 10, "epochs": 1, "test_error": error, "test_loss": 0.1,
                "num_blocks": 9, "parameters": 1, "checkpoint": "-", "train_seconds": 1.0, "net_config": cfg,
                "train_config": "{}"}

    seeds = len(next(iter(effective.values()), []))
    runs = [run(f"res.normal.s{s}", "normal", s, e / 100) for s, e in enumerate(normal)]
    runs += [run(f"res.effective_paths.s{s}", "effective_paths", s, 0.9) for s in range(seeds)]
    store.write_table(tmp_path, "runs", runs)
    for s in range(seeds):
        rows = [{"unit_key": f"{s}{rule}", "k": 0, "draw": 0, "deleted": [], "order": list(range(9)),
                 "kendall_tau": 1.0, "active_blocks": 9, "error": errors[s] / 100, "loss": 1.0, "examples": 100,
                 "precision": "fp32", "bn_recalibrated": False, "seconds": 0.01, "test_rule": rule, "metric": "classification", "perplexity": float("nan"),
                 "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}
                for rule, errors in effective.items()]
        store.write_part(tmp_path, "lesion", "intact", f"res.effective_paths.s{s}", "p", rows)
    return Results.load(tmp_path)


@pytest.mark.parametrize("effective, normal, verdict", [
    ({"scaled": [5.3, 5.1, 5.2], "unscaled": [80.0, 85.0, 82.0]}, [5.0, 5.2, 5.1], "reproduced"),
    ({"scaled": [20.0, 21.0, 22.0]}, [5.0, 5.2, 5.1], "not reproduced"),
    ({"scaled": [2.0, 12.0]}, [3.0, 9.0], "not resolved on this data"),
    ({"scaled": [5.0]}, [5.0], "one seed: not resolved"),
    ({"unscaled": [5.0, 5.5, 6.0], "scaled": [30.0, 31.0, 32.0]}, [5.0, 5.5, 6.0], "not reproduced"),  # on scaled
])
def test_t1_verdicts(tmp_path, effective, normal, verdict):
    results = _tables(tmp_path, effective, normal)
    claim = t1_claim(results)
    assert claim.key == "T1" and claim.verdict.startswith(verdict)
    for rule, errors in effective.items():
        assert f"{rule} {np.mean(errors):.2f}%" in claim.result
    assert f"normal training {np.mean(normal):.2f}%" in claim.result
    table = "\n".join(t1_section(results))
    for rule, errors in effective.items():
        assert f"| res | 4 of 9 blocks | {rule} | {len(errors)} (" in table
        assert f"| {np.median(errors):.2f}% | {min(errors):.2f}-{max(errors):.2f}% | {np.median(normal):.2f}% |" in table


def test_t1_without_effective_path_runs_is_not_run(tmp_path):
    results = _tables(tmp_path, {}, [5.0, 5.1])
    assert t1_claim(results).verdict == "not run" and t1_section(results) == []

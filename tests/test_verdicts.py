"""Verdicts decided by intervals, on tables built here with known spreads: each outcome, including
"not resolved on this data" and "cannot be computed", is reached on purpose."""
import json
import re

import numpy as np
import pytest

from orchestrator import store
from orchestrator.analysis import claims
from orchestrator.analysis.identity_mappings import im_section, im_shortcuts, im_units
from orchestrator.analysis.results import Results
from orchestrator.analysis.stats import difference_interval, mean_interval
from workloads.models import network_config

NET = dict(in_channels=1, num_classes=10, image_size=8, widths=(2, 2, 2))


def _run(label, seed, error, mode="normal", network="resnet20", **variant):
    cfg = network_config(network, **NET, **variant)
    tag = ".".join(f"{k}-{v}" for k, v in sorted(variant.items()))
    return {"run_id": f"{label}.{tag}.{mode}.s{seed}", "label": label, "network": network,
            "variant": json.dumps(variant, sort_keys=True), "mode": mode, "seed": seed, "dataset": "digits",
            "iterations": 10, "epochs": 1, "test_error": error, "test_loss": 0.1, "num_blocks": 9, "parameters": 1,
            "checkpoint": "-", "train_seconds": 1.0, "net_config": cfg.to_json(), "train_config": "{}"}


def _results(tmp_path, runs) -> Results:
    store.write_table(tmp_path, "runs", runs)
    return Results.load(tmp_path)


def _units(errors: dict[str, list[float]]):
    return [_run("units", s, e, unit=u) for u, es in errors.items() for s, e in enumerate(es)]


def test_e_best_when_every_interval_clears_zero(tmp_path):
    results = _results(tmp_path, _units({"a": [0.060, 0.061, 0.062], "b": [0.080, 0.081, 0.083],
                                         "e": [0.040, 0.041, 0.042]}))
    claim = im_units(results)
    assert claim.verdict == "reproduced"
    assert "a - e at depth 20: 2.00 [95% CI" in claim.result


def test_e_not_best_when_another_unit_is_clearly_better(tmp_path):
    results = _results(tmp_path, _units({"d": [0.020, 0.021, 0.022], "e": [0.040, 0.041, 0.042]}))
    assert im_units(results).verdict == "not reproduced"


def test_spread_larger_than_the_difference_is_not_resolved(tmp_path):
    results = _results(tmp_path, _units({"a": [0.02, 0.09, 0.05], "e": [0.03, 0.08, 0.045]}))
    claim = im_units(results)
    assert claim.verdict.startswith("not resolved on this data")
    assert "(a) original at depth 20" in claim.verdict


def test_one_seed_cannot_decide(tmp_path):
    results = _results(tmp_path, _units({"a": [0.06], "e": [0.04]}))
    assert im_units(results).verdict.startswith("cannot be computed: one seed")


def test_units_not_run_without_e(tmp_path):
    results = _results(tmp_path, _units({"a": [0.06, 0.07]}))
    assert im_units(results).verdict == "not run"


def test_shortcut_variants_against_identity(tmp_path):
    runs = _units({"a": [0.050, 0.051, 0.052]})
    runs += [_run("sc", s, e, shortcut="scaling") for s, e in enumerate([0.09, 0.091, 0.092])]
    runs += [_run("sc", s, e, shortcut="shortcut_gating", gate_bias=0.0) for s, e in enumerate([0.07, 0.071, 0.072])]
    results = _results(tmp_path, runs)
    claim = im_shortcuts(results)
    assert claim.verdict == "reproduced", claim
    assert "constant scaling 0.5 - identity at depth 20: 4.00" in claim.result
    assert "shortcut gating (bias 0) - identity" in claim.result
    # a variant that beats identity refutes the claim
    runs += [_run("sc", s, e, shortcut="conv") for s, e in enumerate([0.01, 0.011, 0.012])]
    assert im_shortcuts(_results(tmp_path, runs)).verdict == "not reproduced"


def test_identity_mapping_tables_in_the_report(tmp_path):
    runs = _units({"a": [0.050, 0.051, 0.052], "e": [0.040, 0.045, 0.041]})
    runs += [_run("sc", s, e, shortcut="dropout") for s, e in enumerate([0.3, 0.5, 0.4])]
    lines = "\n".join(im_section(_results(tmp_path, runs)))
    assert "### Identity Mappings: residual-unit variants" in lines
    assert "| (e) full pre-activation | 20 | 3 | 4.10 | 4.00-4.50 (IQR 4.05-4.30) | 6.37 (110) |" in lines
    assert "dropout p=0.5 on the shortcut | 20 | 3 | 40.00 |" in lines and "fail (>20) (110)" in lines


def _lesion(run_id, study, k, draw, deleted, error, tau=1.0):
    return {"unit_key": f"{run_id}-{study}-{k}-{draw}", "k": k, "draw": draw, "deleted": deleted,
            "order": list(range(9)), "kendall_tau": tau, "active_blocks": 9 - len(deleted), "error": error,
            "loss": 1.0, "examples": 100, "precision": "fp32", "bn_recalibrated": False, "test_rule": "", "seconds": 0.01, "metric": "classification", "perplexity": float("nan")}


def test_f5a_judges_the_mean_within_its_band(tmp_path):
    """Noisy draws whose means step by 20 points but whose bands overlap are smooth; a jump no band
    explains is not; two values of k cannot show a trend."""
    rng = np.random.default_rng(0)
    run = _run("res", 0, 0.01)
    noisy = [_lesion(run["run_id"], "random_deletion", k, d, [1 + d % 8], float(np.clip(0.1 * k + rng.normal(0, 0.3), 0, 1)))
             for k in range(1, 6) for d in range(8)]
    store.write_part(tmp_path, "lesion", "random_deletion", run["run_id"], "a", noisy)
    results = _results(tmp_path, [run])
    curve, rows = results.deletion_curve(run["run_id"]), results.random_deletions(run["run_id"])
    ok, text = claims._smooth(curve, rows)
    raw_step = 100 * np.max(np.abs(np.diff(curve["mean"])))
    assert raw_step > claims.SMOOTH_STEP and ok is True, (raw_step, text)
    jump = curve.assign(mean=[0.0, 0.01, 0.9, 0.91, 0.92], lo=[0.0, 0.0, 0.89, 0.9, 0.91], hi=[0.01, 0.02, 0.91, 0.92, 0.93])
    assert claims._smooth(jump, rows)[0] is False
    ok, text = claims._smooth(curve.iloc[:2], rows)
    assert ok is None and "only 2 values of k" in text


def test_f5a_too_few_k_is_said(tmp_path):
    run = _run("res", 0, 0.01)
    store.write_part(tmp_path, "lesion", "random_deletion", run["run_id"], "a",
                     [_lesion(run["run_id"], "random_deletion", 1, d, [1 + d], 0.1 + 0.01 * d) for d in range(3)])
    store.write_part(tmp_path, "lesion", "single_deletion", run["run_id"], "b",
                     [_lesion(run["run_id"], "single_deletion", 1, b, [b], 0.02) for b in range(9)])
    claim = claims.f5a(_results(tmp_path, [run]))
    assert claim.verdict == "cannot be computed: too few values of k"
    assert "nan" not in claim.result


def test_f6b_slope_interval_over_draws(tmp_path):
    run = _run("res", 0, 0.01)
    rng = np.random.default_rng(1)
    rows = [{"unit_key": f"g{k}-{d}", "k": k, "draw": d, "chosen": list(range(k)),
             "log10_norm": -0.7 * k - 1 + rng.normal(0, 0.05), "batch_size": 16, "seconds": 0.01}
            for k in range(1, 10) for d in range(6)]
    store.write_part(tmp_path, "gradients", "gradients", run["run_id"], "g", rows)
    results = _results(tmp_path, [run])
    b, c = claims.f6(results)
    assert b.verdict == "reproduced" and "over 6 draws" in b.result
    est, lo, hi = (float(x) for x in re.findall(r"x(0\.\d+)", b.result))
    assert lo < est < hi and est == pytest.approx(10 ** -0.7, abs=0.01)
    assert c.verdict == "reproduced"
    f7 = claims.f7(results)
    assert f7.verdict in ("reproduced", "not reproduced") and "deleting 2 blocks of 9" in f7.result


def test_f6a_is_exact(tmp_path):
    claim = claims.f6a(_results(tmp_path, [_run("res", 0, 0.01)]))
    assert claim.verdict == "reproduced"
    assert "n=54: 98.0% of 2^54 paths have length 19-35 (exact); n=9: 95% of paths have length 2-7" in claim.result


def test_f8_difference_interval_over_blocks(tmp_path):
    normal, sd = _run("res", 0, 0.01), _run("res", 0, 0.01, mode="stochastic_depth")
    rows_n = [_lesion(normal["run_id"], "single_deletion", 1, b, [b], 0.05) for b in range(9)]
    rows_s = [_lesion(sd["run_id"], "single_deletion", 1, b, [b], 0.02 + 0.001 * b) for b in range(9)]
    store.write_part(tmp_path, "lesion", "single_deletion", normal["run_id"], "n", rows_n)
    store.write_part(tmp_path, "lesion", "single_deletion", sd["run_id"], "s", rows_s)
    claim = claims.f8(_results(tmp_path, [normal, sd]))
    assert claim.verdict == "reproduced" and "difference -2.60 [95% CI" in claim.result


def test_intervals_follow_scipy():
    x = [1.0, 2.0, 3.0, 4.0, 10.0]
    ci = mean_interval(x)
    assert ci.lo < np.mean(x) < ci.hi and ci.n == 5
    assert not mean_interval([2.0]).known and "no interval: one value" in mean_interval([2.0]).text()
    d = difference_interval([1, 1.1, 0.9], [5, 5.2, 4.8])
    assert d.above(3) and d.estimate == pytest.approx(4.0)

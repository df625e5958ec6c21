"""Verdicts decided by intervals, on tables built here with known spreads: each outcome, including
"not resolved on this data", "one seed: not resolved" and "cannot be computed", is reached on purpose."""
import json
import re

import numpy as np
import pytest

from orchestrator import store
from orchestrator.analysis import veit_claims as claims
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
    claim = im_units(results)
    assert claim.verdict == "one seed: not resolved"
    assert claim.over.startswith("bootstrap over seeds")


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
            "loss": 1.0, "examples": 100, "precision": "fp32", "bn_recalibrated": False, "test_rule": "", "seconds": 0.01, "metric": "classification", "perplexity": float("nan"),
            "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}


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


def test_f5a_one_draw_at_k10_says_it_has_no_interval(tmp_path):
    run = _run("res", 0, 0.01)
    store.write_part(tmp_path, "lesion", "random_deletion", run["run_id"], "a",
                     [_lesion(run["run_id"], "random_deletion", k, 0, list(range(k % 9)), 0.05 * (k - 7)) for k in (8, 9, 10)])
    claim = claims.f5a(_results(tmp_path, [run]))
    assert "k=10 15.0% (no interval: one value)" in claim.result and "nan" not in claim.result, claim.result


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


def _singles(out, run, rises: list[float], intact: float = 0.01):
    """A run's intact error and its single deletions, block b raising the error by rises[b] points."""
    store.write_part(out, "lesion", "intact", run["run_id"], "i", [_lesion(run["run_id"], "intact", 0, 0, [], intact)])
    store.write_part(out, "lesion", "single_deletion", run["run_id"], "s",
                     [_lesion(run["run_id"], "single_deletion", 1, b, [b], intact + r / 100) for b, r in enumerate(rises)])


def test_f8_with_one_seed_a_side_is_not_resolved_whatever_the_blocks_say(tmp_path):
    """Stochastic depth against normal training compares two trainings: a bootstrap over the blocks of one
    network each shows how blocks vary, not how another training would, so it is shown but cannot decide."""
    normal, sd = _run("res", 0, 0.01), _run("res", 0, 0.01, mode="stochastic_depth")
    _singles(tmp_path, normal, [4.0] * 9)
    _singles(tmp_path, sd, [1.0 + 0.1 * b for b in range(9)])
    claim = claims.f8(_results(tmp_path, [normal, sd]))
    assert claim.verdict == "one seed: not resolved"
    assert "difference -2.60 [95% CI" in claim.result and "points over 9 blocks" in claim.result
    assert "(1 seed with stochastic depth, 1 seed normal)" in claim.result
    assert "one trained network a side" in claim.over and "not between trainings" in claim.over
    assert claim.line.endswith(f"one seed: not resolved (interval: {claim.over})")


@pytest.mark.parametrize("normal_rises, sd_rises, verdict", [
    ([5.0, 5.2, 4.9], [2.0, 2.1, 1.9], "reproduced"),
    ([2.0, 6.0, 4.0], [3.0, 1.0, 5.0], "not resolved on this data"),   # each seed alone would look decided
    ([1.0, 1.1, 0.9], [3.0, 3.2, 3.1], "not reproduced"),
])
def test_f8_with_seeds_is_decided_over_seeds(tmp_path, normal_rises, sd_rises, verdict):
    runs = []
    for mode, rises in (("normal", normal_rises), ("stochastic_depth", sd_rises)):
        for seed, rise in enumerate(rises):
            run = _run("res", seed, 0.01, mode=mode)
            _singles(tmp_path, run, [rise + 0.01 * b for b in range(9)])
            runs.append(run)
    claim = claims.f8(_results(tmp_path, runs))
    assert claim.verdict == verdict, claim.result
    diff = difference_interval(normal_rises, sd_rises)
    assert claim.result.startswith(f"res, stochastic depth: mean rise per deletion {np.mean(sd_rises) + 0.04:.2f} points")
    assert f"difference {diff.estimate:.2f} [95% CI" in claim.result
    assert "over seeds (3 with stochastic depth, 3 normal; 9 blocks each)" in claim.result
    assert claim.over.startswith("bootstrap over seeds")


def test_f5a_partly_reproduced_only_when_every_failing_run_has_critical_blocks(tmp_path):
    """A run whose curve jumps only through its critical block is smooth away from it; a run with no critical
    block whose curve jumps is not reproduced, and never gets the critical-blocks wording."""
    crit, plain_jump = _run("crit", 0, 0.01), _run("jump", 0, 0.01)

    def draws(run, error):
        """From k = 3 on, 10 of the 12 draws hold block 0; before, none does."""
        sets = {(k, d): ([0] if k >= 3 and d < 10 else []) + [1 + (d + i) % 8 for i in range(k - (k >= 3 and d < 10))]
                for k in range(1, 6) for d in range(12)}
        store.write_part(tmp_path, "lesion", "random_deletion", run["run_id"], "r",
                         [_lesion(run["run_id"], "random_deletion", k, d, b, error(k, b)) for (k, d), b in sets.items()])

    # crit: block 0 costs 60 points alone, and the draws that hold it; the others rise 1 point per block
    _singles(tmp_path, crit, [60.0] + [1.0] * 8)
    draws(crit, lambda k, b: 0.01 + 0.01 * k + (0.6 if 0 in b else 0))
    _singles(tmp_path, plain_jump, [1.0] * 9)
    draws(plain_jump, lambda k, b: 0.01 + (0.8 if k >= 3 else 0.01 * k))
    alone = claims.f5a(_results(tmp_path, [crit]))
    assert alone.verdict == "partly reproduced: only away from the critical blocks", alone.result
    both = claims.f5a(_results(tmp_path, [crit, plain_jump]))
    assert both.verdict == "not reproduced", both.result
    assert "critical" not in both.result.split("jump: ")[1]


def test_intervals_follow_scipy():
    x = [1.0, 2.0, 3.0, 4.0, 10.0]
    ci = mean_interval(x)
    assert ci.lo < np.mean(x) < ci.hi and ci.n == 5
    assert not mean_interval([2.0]).known and "no interval: one value" in mean_interval([2.0]).text()
    d = difference_interval([1, 1.1, 0.9], [5, 5.2, 4.8])
    assert d.above(3) and d.estimate == pytest.approx(4.0)

"""H, the highway view: gate statistics against a direct computation, the claim and the report on
tables built here, the spec's rules, and one tiny gated experiment through the real CLI."""
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from orchestrator import store
from orchestrator.analysis.highway import h_claim, h_figure, h_section
from orchestrator.analysis.results import Results
from orchestrator.cli import main
from orchestrator.experiment.spec import SpecError, parse_spec
from orchestrator.experiment.units import expand
from workloads.models import build_network, network_config
from workloads.surgery import gate_statistics

from conftest import randomise_bn


def _gated(shortcut: str, bias: float = -6.0, seed: int = 0):
    torch.manual_seed(seed)
    net = build_network("resnet20", widths=(4, 8, 16), shortcut=shortcut, gate_bias=bias, in_channels=1,
                        num_classes=10)
    return randomise_bn(net, seed)


def _images(n: int = 24):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 8, 8, generator=g), torch.zeros(n, dtype=torch.long)


@pytest.mark.parametrize("shortcut", ["exclusive_gating", "shortcut_gating"])
def test_a_gate_with_zero_weights_is_its_bias_everywhere(shortcut):
    net = _gated(shortcut)
    biases = [-3.0 + 0.75 * i for i in range(net.num_blocks)]
    for block, b in zip(net.blocks, biases):
        torch.nn.init.zeros_(block.gate.conv.weight)
        torch.nn.init.constant_(block.gate.conv.bias, b)
    stats = gate_statistics(net, [_images()], "cpu", chunk_size=5)
    assert [s.block for s in stats] == list(range(9))
    assert [s.stage for s in stats] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [s.changes_shape for s in stats] == [False] * 3 + [True, False, False] * 2
    for s, b in zip(stats, biases):
        g = torch.sigmoid(torch.tensor(b)).item()
        assert (s.mean, s.p10, s.p90) == pytest.approx((g, g, g), abs=1e-6)
        assert s.std == pytest.approx(0.0, abs=1e-6)
        assert s.branch_weight == pytest.approx(g if shortcut == "exclusive_gating" else 1.0)
        assert s.shortcut_weight == pytest.approx(1 - g)
        assert s.gating == shortcut and s.examples == 24


def test_gate_statistics_equal_a_direct_computation():
    """Gates with random weights: moments exact, percentiles to the histogram's bin (0.001)."""
    net = _gated("exclusive_gating", bias=0.0)
    images, labels = _images()
    direct = []
    with torch.no_grad():
        x = net.stem(images)
        for block in net.blocks:
            direct.append(block.gate(x).flatten().double())
            x = block(x)
    # the same test set in two chunks, split again by chunk_size: the chunking changes nothing
    stats = gate_statistics(net, [(images[:10], labels[:10]), (images[10:], labels[10:])], "cpu", chunk_size=4)
    for s, g in zip(stats, direct):
        assert s.mean == pytest.approx(float(g.mean()), abs=1e-6)
        assert s.std == pytest.approx(float(g.std(unbiased=False)), abs=1e-6)
        assert s.p10 == pytest.approx(float(torch.quantile(g, 0.1)), abs=1e-3)
        assert s.p90 == pytest.approx(float(torch.quantile(g, 0.9)), abs=1e-3)
        assert s.examples == 24
    assert 0.0 < min(s.std for s in stats)  # not a constant case in disguise


def test_a_network_without_gates_is_refused_in_one_line():
    net = build_network("resnet20", widths=(4, 8, 16), in_channels=1, num_classes=10)
    with pytest.raises(ValueError, match=r"^the network has no gated shortcut \(shortcut: exclusive_gating"):
        gate_statistics(net, [_images()], "cpu")


# -- the claim, the figure and the section, on tables with known gate means -------------------------

def _run(run_id: str, shortcut: str, bias: float, seed: int = 0) -> dict:
    cfg = network_config("resnet20", widths=(4, 8, 16), shortcut=shortcut, gate_bias=bias, in_channels=1,
                         num_classes=10, image_size=8)
    variant = {"shortcut": shortcut, **({"gate_bias": bias} if bias != -6.0 else {})}
    return {"run_id": run_id, "label": "res", "network": "resnet20", "variant": json.dumps(variant, sort_keys=True),
            "mode": "normal", "seed": seed, "dataset": "digits", "iterations": 10, "epochs": 1, "test_error": 0.1,
            "test_loss": 0.3, "num_blocks": 9, "parameters": 1, "checkpoint": "-", "train_seconds": 1.0,
            "net_config": cfg.to_json(), "train_config": "{}"}


def _gates(out, run_id: str, means: list[float]) -> None:
    rows = [{"unit_key": f"gates-{run_id}", "block": b, "stage": b // 3, "changes_shape": b in (3, 6),
             "gate_mean": m, "gate_std": 0.05, "gate_p10": max(m - 0.1, 0.0), "gate_p90": min(m + 0.1, 1.0),
             "branch_weight": m, "shortcut_weight": 1 - m, "examples": 100, "seconds": 0.01}
            for b, m in enumerate(means)]
    store.write_part(out, "gates", "gates", run_id, f"p-{run_id}", rows)


SHORTCUT = [0.1] * 7 + [0.8] * 2     # 7 of 9 blocks lean to the shortcut
BRANCH = [0.9] * 7 + [0.2] * 2       # 2 of 9


def test_gates_leaning_to_the_shortcut_reproduce_h_and_a_neutral_start_is_compared(tmp_path):
    store.write_table(tmp_path, "runs", [_run("ex6", "exclusive_gating", -6.0), _run("ex0", "exclusive_gating", 0.0)])
    _gates(tmp_path, "ex6", SHORTCUT)
    _gates(tmp_path, "ex0", BRANCH)
    results = Results.load(tmp_path)
    claim = h_claim(results)
    assert claim.verdict == "reproduced", claim.result
    assert "res [shortcut=exclusive_gating]: 7 of 9 blocks g < 0.5 (78% [95% CI 40, 97])" in claim.result
    assert ("at bias 0, res [shortcut=exclusive_gating, gate_bias=0]: 2 of 9 blocks g < 0.5" in claim.result
            and "the lean does not survive a neutral start" in claim.result)
    assert h_figure(results, tmp_path / "figures") == "h_gates.png"
    assert (tmp_path / "figures" / "h_gates.png").stat().st_size > 10_000
    section = "\n".join(h_section(results))
    assert "| res [shortcut=exclusive_gating] | exclusive_gating | -6 | 9 | 0.256 | 7 (78% " in section
    assert "| 0.100 / 0.800 |" in section


def test_gates_leaning_to_the_branch_do_not_reproduce_h(tmp_path):
    store.write_table(tmp_path, "runs", [_run("sg6", "shortcut_gating", -6.0), _run("sg0", "shortcut_gating", 0.0)])
    _gates(tmp_path, "sg6", BRANCH)
    _gates(tmp_path, "sg0", SHORTCUT)
    claim = h_claim(Results.load(tmp_path))
    assert claim.verdict == "not reproduced"
    assert "res [shortcut=shortcut_gating]: 2 of 9 blocks g < 0.5 (22%" in claim.result
    assert "the lean survives a neutral start" in claim.result


def test_several_seeds_give_the_mean_share_with_its_interval(tmp_path):
    store.write_table(tmp_path, "runs", [_run("s0", "exclusive_gating", -6.0, 0),
                                         _run("s1", "exclusive_gating", -6.0, 1)])
    _gates(tmp_path, "s0", SHORTCUT)
    _gates(tmp_path, "s1", [0.1] * 9)
    claim = h_claim(Results.load(tmp_path))
    assert claim.verdict == "reproduced"
    assert "res [shortcut=exclusive_gating] (2 seeds): 7, 9 of 9 blocks g < 0.5" in claim.result, claim.result
    assert "mean share 89% [95% CI 78, 100]" in claim.result
    assert "no exclusive_gating run at bias 0 to tell whether the lean survives" in claim.result


def test_no_gate_rows_is_not_run(tmp_path):
    store.write_table(tmp_path, "runs", [_run("ex6", "exclusive_gating", -6.0)])
    results = Results.load(tmp_path)
    assert h_claim(results).verdict == "not run"
    assert h_figure(results, tmp_path / "figures") is None and h_section(results) == []


# -- the spec --------------------------------------------------------------------------------------

SPEC = {
    "name": "gates",
    "data": {"dataset": "digits"},
    "training": {"iterations": 4, "recipe": {"eval_every": 4}, "resources": {"cpu": 1},
                 "runs": [{"network": "resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]},
                           "variants": [{"shortcut": "exclusive_gating"},
                                        {"shortcut": "shortcut_gating", "gate_bias": 0.0}]},
                          {"network": "resnet20", "label": "plain-shortcut", "overrides": {"widths": [4, 8, 16]}}]},
    "studies": {"test_examples": 40, "gates": {}, "evaluators": {"count": 1, "cpu": 1}},
}


def test_gates_default_to_every_gated_run_one_unit_each():
    spec = parse_spec(SPEC)
    gated = [t.run_id for t in spec.runs if t.net_config.shortcut != "identity"]
    assert spec.studies.study("gates").runs == tuple(gated) and len(gated) == 2
    units = expand(spec)
    assert [(u.run_id, u.study, u.k, u.draw) for u in units] == [(r, "gates", 0, 0) for r in gated]  # no intact units
    other = parse_spec({**SPEC, "studies": {**SPEC["studies"], "test_examples": 30}})
    assert {u.key for u in expand(other)}.isdisjoint(u.key for u in units)  # the test set is in the key


@pytest.mark.parametrize("gates, message", [
    ({"runs": ["plain-shortcut"]}, "studies.gates.runs[0]: run 'plain-shortcut' has no gated shortcut (shortcut: "
                                   "exclusive_gating or shortcut_gating)"),
    ({"runs": ["nope"]}, "studies.gates.runs[0]: no training run is labelled 'nope'"),
    ({"draws": 3}, "studies.gates.draws: unknown key"),
])
def test_gates_spec_errors_name_the_field(gates, message):
    with pytest.raises(SpecError) as e:
        parse_spec({**SPEC, "studies": {**SPEC["studies"], "gates": gates}})
    assert str(e.value).startswith(message), str(e.value)


def test_gates_with_no_gated_run_is_one_line():
    raw = {**SPEC, "training": {**SPEC["training"], "runs": SPEC["training"]["runs"][1:]}}
    with pytest.raises(SpecError, match=r"^studies.gates: no run has a gated shortcut"):
        parse_spec(raw)


# -- end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_gated_experiment_end_to_end_exactly_once(ray_session, tmp_path):
    spec = tmp_path / "gates.yaml"
    gated_only = {**SPEC, "training": {**SPEC["training"], "runs": SPEC["training"]["runs"][:1]}}  # train only these
    spec.write_text(yaml.safe_dump(gated_only))
    out = tmp_path / "out"
    first = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "units: 2 (gates 2); 0 already written, 2 computed, 0 failed" in first.output
    gates = store.read_parts(out, "gates")
    assert sorted(gates.groupby("run_id").size().tolist()) == [9, 9]        # a row per block and gated run
    assert (gates.groupby("run_id")["unit_key"].nunique() == 1).all()
    assert (gates["examples"] == 40).all() and gates["gate_mean"].between(0, 1).all()
    neutral = gates[gates["run_id"].str.contains("gate_bias")]
    assert len(neutral) == 9 and neutral["gate_mean"].between(0.05, 0.95).all()   # bias 0 starts gates at 0.5
    report = (out / "report.md").read_text()
    assert "H gates lean to the shortcut" in report and "## Highway view (H)" in report
    assert (out / "figures" / "h_gates.png").exists() and "figures/h_gates.png" in report
    again = CliRunner().invoke(main, ["run", str(spec), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "2 already written, 0 computed" in again.output
    counted = CliRunner().invoke(main, ["query", str(out), "select count(*) as n from gates", "--format", "csv"])
    assert counted.output.splitlines() == ["n", "18"]
    status = CliRunner().invoke(main, ["status", str(out)])
    assert [int(x) for x in status.output.splitlines()[1].split()[1:]] == [2, 2, 0, 0]

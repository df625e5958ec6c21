"""Analysis on tables built here (known inputs, known aggregates), the query command, and one
end-to-end run of the real CLI whose report must match its tables."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from figure_checks import assert_readable, legend_texts
from language_cases import write_language_tables
from orchestrator import store
from orchestrator.analysis.claims import all_claims
from orchestrator.analysis.results import Results
from orchestrator.analysis.report import write_report
from orchestrator.cli import main
from workloads.models import network_config


def _run(run_id, name, mode="normal", **kw):
    cfg = network_config(name, in_channels=1, num_classes=10, image_size=8, **kw)
    from workloads.models import build_network
    n = build_network(cfg).num_blocks
    return {"run_id": run_id, "label": run_id.split(".")[0], "network": name, "variant": "{}", "mode": mode,
            "seed": 0, "dataset": "digits", "iterations": 10, "epochs": 1, "test_error": 0.01, "test_loss": 0.1,
            "num_blocks": n, "parameters": 1, "checkpoint": "-", "train_seconds": 1.0, "net_config": cfg.to_json(),
            "train_config": "{}"}


def _lesion(k, draw, deleted, error, order=None, tau=1.0):
    return {"unit_key": f"{k}-{draw}-{error}-{tau}", "k": k, "draw": draw, "deleted": deleted,
            "order": order or list(range(9)), "kendall_tau": tau, "active_blocks": 9 - len(deleted), "error": error,
            "loss": 1.0, "examples": 100, "precision": "fp32", "bn_recalibrated": False, "seconds": 0.01,
            "test_rule": "", "metric": "classification", "perplexity": float("nan"),
            "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}


@pytest.fixture
def known(tmp_path):
    res, plain = "res.normal.s0.x", "plain.normal.s0.y"
    store.write_table(tmp_path, "runs", [_run(res, "resnet20", widths=(4, 8, 16)), _run(plain, "plain15")])
    store.write_table(tmp_path, "epochs", [{"run_id": res, "epoch": 1, "iteration": 10, "train_loss": 1.0,
                                            "train_error": 0.5, "test_error": 0.2, "test_loss": 1.0, "lr": 0.1,
                                            "images_per_s": 100.0, "seconds": 1.0}])
    store.write_part(tmp_path, "lesion", "intact", res, "a", [_lesion(0, 0, [], 0.01)])
    # block 0 costs 49 points (critical), downsampling block 3 costs 4, the rest 1
    singles = [_lesion(1, b, [b], 0.50 if b == 0 else 0.05 if b == 3 else 0.02) for b in range(9)]
    store.write_part(tmp_path, "lesion", "single_deletion", res, "b", singles)
    store.write_part(tmp_path, "lesion", "single_deletion", plain, "c",
                     [_lesion(1, b, [b], 0.9) for b in range(15) if b not in (0, 5, 10)])
    store.write_part(tmp_path, "lesion", "random_deletion", res, "d",
                     [_lesion(k, d, [1 + (d + i) % 8 for i in range(k)], 0.05 * k + 0.01 * d) for k in range(1, 6)
                      for d in range(3)])
    store.write_part(tmp_path, "lesion", "reorder", res, "e",
                     [_lesion(k, d, [], 0.1 * k, tau=1 - 0.1 * k) for k in range(1, 5) for d in range(2)])
    store.write_part(tmp_path, "gradients", "gradients", res, "f",
                     [{"unit_key": f"g{k}{d}", "k": k, "draw": d, "chosen": list(range(k)),
                       "log10_norm": -0.7 * k - 1, "batch_size": 16, "seconds": 0.01}
                      for k in range(1, 10) for d in range(2)])
    return tmp_path


def test_claims_from_known_tables(known):
    results = Results.load(known)
    assert results.critical_blocks("res.normal.s0.x") == (0,)
    claims = {c.key: c for c in all_claims(results)}
    assert claims["F3-resnet"].verdict.startswith("partly reproduced")
    assert "critical block 1" in claims["F3-resnet"].result  # 1-based in the text
    assert claims["F3-plain"].verdict == "reproduced" and "median error 90.0%" in claims["F3-plain"].result
    assert claims["F5a"].verdict == "reproduced"
    assert claims["F5b"].verdict == "reproduced" and "Spearman(tau, error) -1.00" in claims["F5b"].result
    assert claims["F6b"].verdict == "reproduced" and f"x{10 ** -0.7:.3f} per block" in claims["F6b"].result
    assert claims["F8"].verdict == "not run"
    prof = results.gradient_profile("res.normal.s0.x")
    assert prof["log10_mean"].tolist() == pytest.approx([-0.7 * k - 1 for k in range(1, 10)])


@pytest.mark.slow
def test_every_verdict_line_says_what_its_interval_is_over(known):
    """One trained network per run: intervals over its blocks, draws or layers say they leave training out; exact
    claims say they have none; the report's table and its one-line list carry it."""
    claims = {c.key: c for c in all_claims(Results.load(known))}
    untrained = "one trained network each, so the variance between trainings is not covered"
    assert claims["F3-resnet"].over.startswith("exact binomial (Clopper-Pearson) over the ordinary blocks")
    assert claims["F3-plain"].over.startswith("bootstrap over the deletable layers")
    assert "linregress over k" in claims["F5a"].over and "bootstrap bands per k" in claims["F5a"].over
    assert claims["F5b"].over.startswith("bootstrap over the reorderings")
    assert claims["F6b"].over.startswith("bootstrap over the gradient draws")
    for key in ("F3-resnet", "F3-plain", "F5a", "F5b", "F6b", "F6c"):
        assert claims[key].over.endswith(untrained), claims[key].over
    assert claims["F6a"].over == "none: exact binomial counts" and claims["F7"].over.startswith("none: exact")
    for c in claims.values():
        assert (c.verdict == "not run") == (not c.over), c
        assert c.line.endswith(f"(interval: {c.over})") if c.over else "(interval:" not in c.line
    text = write_report(known).read_text()
    assert "| claim | this experiment | verdict | interval over |" in text
    assert f"- {claims['F3-resnet'].line}" in text


def test_with_seeds_each_network_is_judged_on_each_seed(known):
    """Two seeds of one ResNet: the blocks' intervals are each seed's, and the claim says every seed must pass."""
    runs = store.read_table(known, "runs").to_dict("records")
    twin = {**runs[0], "run_id": "res.normal.s1.x", "seed": 1}
    store.write_table(known, "runs", runs + [twin])
    for study in ("intact", "single_deletion"):
        rows = store.read_parts(known, "lesion")
        rows = rows[(rows["run_id"] == "res.normal.s0.x") & (rows["study"] == study)]
        store.write_part(known, "lesion", study, twin["run_id"], "t" + study,
                         rows.drop(columns=["study", "run_id"]).to_dict("records"))
    f3 = {c.key: c for c in all_claims(Results.load(known))}["F3-resnet"]
    assert "res, seed 0: " in f3.result and "res, seed 1: " in f3.result
    assert f3.over.endswith("each of 2 seeds per network judged on its own, every one must pass"), f3.over


@pytest.mark.slow
def test_report_and_figures_from_known_tables(known):
    report = write_report(known)
    text = report.read_text()
    for section in ("## What was run", "## The papers' claims, tested", "## Critical blocks", "## Figures"):
        assert section in text
    for name in ("f3_single_deletion", "f5a_random_deletion", "f5b_reorder", "f6_paths_and_gradients",
                 "f7_surviving_paths", "training_curves"):
        assert (known / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (known / "figures" / f"{name}.pdf").exists()
        assert f"figures/{name}.png" in text
    html = (known / "report.html").read_text()
    assert "<table>" in html and "<img" in html and "partly reproduced" in html


@pytest.mark.slow
def test_report_sections_for_effective_paths_and_variants(known):
    """Veit et al. Table 1 and the Identity Mappings variants, beside the papers' numbers."""
    runs = store.read_table(known, "runs").to_dict("records")
    eff = {**_run("res.effective_paths.s0.w", "resnet20", mode="effective_paths", widths=(4, 8, 16)),
           "label": "res", "test_error": 0.03}
    variants = [{**_run(f"v.normal.s{seed}.q", "resnet110", widths=(2, 2, 2), unit="c"),
                 "label": "v", "variant": json.dumps({"unit": "c"}), "seed": seed, "test_error": 0.07 + 0.01 * seed}
                for seed in range(2)]
    store.write_table(known, "runs", runs + [eff] + variants)
    store.write_part(known, "lesion", "intact", eff["run_id"], "t", [{**_lesion(0, 0, [], 0.03), "test_rule": "scaled"}])
    text = write_report(known).read_text()
    assert "## Training on effective paths only (Veit et al. Table 1)" in text
    assert "| res | 4 of 9 blocks | scaled | 1 (0) | 3.00% | 3.00-3.00% | 1.00% | 1.00-1.00% | 5.96% / 6.10% |" in text
    assert "### Identity Mappings: residual-unit variants" in text
    assert "| (c) ReLU before addition | 110 | 2 | 7.50 | 7.00-8.00 (IQR 7.25-7.75) | 7.84 |" in text


@pytest.mark.slow
def test_the_report_builds_no_weights_and_each_skeleton_once(known, monkeypatch):
    """Analysis needs a network's blocks, never its weights: one meta-device skeleton per network, and
    each fact (here the effective-path range) computed once for the claims, figures and report together."""
    import torch

    from orchestrator.analysis import results as results_module
    from orchestrator.experiment import networks
    from workloads.models import registry

    build = registry.build_network

    def weightless_only(*args, **kwargs):
        assert torch.get_default_device().type == "meta", "analysis built a network with weights"
        return build(*args, **kwargs)

    monkeypatch.setattr(registry, "build_network", weightless_only)
    monkeypatch.setattr("workloads.models.build_network", weightless_only)
    skeletons, ranges = Counter(), Counter()
    networks.block_infos.cache_clear()   # OUT here has tables but no spec.json: blocks come from skeletons
    monkeypatch.setattr(networks, "skeleton", lambda cfg: skeletons.update([cfg.to_json()]) or registry.skeleton(cfg))
    effective_range = results_module.effective_range
    monkeypatch.setattr(results_module, "effective_range",
                        lambda *a: ranges.update(["calls"]) or effective_range(*a))
    write_report(known)
    configs = store.read_table(known, "runs")["net_config"]
    assert skeletons == Counter(set(configs))
    assert ranges == Counter(calls=1)  # one residual run has gradients


@pytest.mark.slow
def test_figures_leave_the_matplotlib_backend_and_style_alone(known):
    """A notebook's backend and style are the user's: importing and drawing select and change neither
    (run in a fresh interpreter, where the backend is still unresolved)."""
    code = f"""
import sys
from pathlib import Path
import matplotlib
before = dict(matplotlib.rcParams.copy())
from orchestrator.analysis.figures import all_figures
from orchestrator.analysis.results import Results
made = all_figures(Results.load({str(known)!r}), Path({str(known)!r}) / "figures")
assert len(made) == 7, made  # F3, F5a, F5b, F6, F7, training, and shares from the random deletions
assert matplotlib.rcParams._get_backend_or_none() is None, matplotlib.rcParams._get_backend_or_none()
after = dict(matplotlib.rcParams.copy())
assert before == after, sorted(k for k in before if before[k] != after[k])
assert "matplotlib.pyplot" not in sys.modules
"""
    root = Path(__file__).parent.parent
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env={**env, "PYTHONPATH": str(root)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_query_command_formats(known):
    runner = CliRunner()
    table = runner.invoke(main, ["query", str(known), "select study, count(*) as n from lesion group by study order by study"])
    assert table.exit_code == 0, table.output
    assert "single_deletion" in table.output and "21" in table.output
    csv = runner.invoke(main, ["query", str(known), "select k, count(*) as n from gradients group by k order by k",
                               "--format", "csv"])
    assert csv.output.splitlines()[:2] == ["k,n", "1,2"]
    js = runner.invoke(main, ["query", str(known), "select count(*) as n from runs", "--format", "json"])
    assert json.loads(js.output) == [{"n": 2}]
    bad = runner.invoke(main, ["query", str(known), "select nope from runs"])
    assert bad.exit_code == 2 and "query failed" in bad.output


# --- figures and report a paper can use --------------------------------------------------------------

def _keep_figures(monkeypatch, write: bool) -> dict:
    """The Figure objects all_figures saves, by file name, drawn with Agg so their layout can be measured;
    without ``write``, finished as save finishes them (drawing.finish) but not written as PNG and PDF."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from orchestrator.analysis import drawing
    from orchestrator.analysis import veit_figures as figures

    made = {}
    save = figures.save

    def keep(fig, folder, name):
        if write:
            path = save(fig, folder, name)
        else:
            drawing.finish(fig)
            path = f"{name}.png"
        FigureCanvasAgg(fig).draw()
        made[name] = fig
        return path

    monkeypatch.setattr(figures, "save", keep)
    return made


@pytest.fixture
def drawn(monkeypatch):
    """Veit's figures drawn with Agg as the PNG is, not written: these tests read the figures' layout and text;
    writing them (PNG and PDF, two more renderings each) is test_report_and_figures_from_known_tables' and
    test_a_cjk_label_draws_without_missing_glyphs'."""
    return _keep_figures(monkeypatch, write=False)


@pytest.fixture
def saved(monkeypatch):
    """Veit's figures written as PNG and PDF, as the report writes them, then drawn with Agg to be measured."""
    return _keep_figures(monkeypatch, write=True)


def _two_variants_two_seeds(known, label="v"):
    """Four more runs under one label: variants unit=d and shortcut=scaling (gate bias 0), seeds 0 and 1."""
    runs = store.read_table(known, "runs").to_dict("records")
    extra = []
    for variant in ({"unit": "d"}, {"shortcut": "scaling", "gate_bias": 0.0}):
        for seed in (0, 1):
            run_id = f"v.normal.s{seed}.{'d' if 'unit' in variant else 'sc'}"
            extra.append({**_run(run_id, "resnet20", widths=(4, 8, 16), **variant), "label": label,
                          "variant": json.dumps(variant), "seed": seed, "test_error": 0.05 + 0.01 * seed})
    store.write_table(known, "runs", runs + extra)
    epochs = store.read_table(known, "epochs").to_dict("records")
    store.write_table(known, "epochs", epochs + [{**epochs[0], "run_id": r["run_id"], "epoch": e}
                                                 for r in extra for e in (1, 2, 3)])
    return [r["run_id"] for r in extra]


def test_runs_are_told_apart_by_variant_and_seed(known, drawn):
    """Two variants under one label and two seeds: four names in the table, variant column in words,
    and the figures' legends say which variant is which and which marker is which seed."""
    extra = _two_variants_two_seeds(known)
    results = Results.load(known)
    names = [results.name(r) for r in extra]
    assert len(set(names)) == 4
    text = write_report(known).read_text()
    table = text.split("## What was run")[1].split("\n\n")[2].splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:4] == ["run", "variant", "mode", "seed"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    for r, name in zip(extra, names):
        assert name in rows, (name, list(rows))
    assert rows["v [unit=d], seed 1"][1:4] == ["unit=d", "normal", "1"]
    assert rows["v [shortcut=scaling, gate_bias=0], seed 0"][1] == "shortcut=scaling, gate_bias=0"
    assert rows["res, seed 0"][1] == "-"
    legend = legend_texts(drawn["training_curves"])
    assert "v [unit=d] (2 seeds)" in legend and "v [shortcut=scaling, gate_bias=0] (2 seeds)" in legend
    assert "seed 0" in legend and "seed 1" in legend
    # one colour per variant, one marker per seed
    lines = {(tuple(line.get_xdata()), line.get_color(), line.get_marker())
             for line in drawn["training_curves"].axes[0].get_lines() if line.get_linestyle() == "-"}
    assert len({(c, m) for x, c, m in lines if len(x) == 3}) == 4
    assert len({c for x, c, m in lines if len(x) == 3}) == 2


@pytest.mark.parametrize("label", ["v", "残差网络-with-a-label-long-enough-to-crowd-a-legend"])
@pytest.mark.slow
def test_figures_are_readable_at_their_printed_size(known, drawn, label):
    """At most a page wide, no text under 7 pt, no text outside the figure or on other text, and the
    figure-level legends off the axes (long labels too: CJK is drawn as code points where no font has it)."""
    _two_variants_two_seeds(known, label)
    write_report(known)
    assert set(drawn) == {"f3_single_deletion", "f5a_random_deletion", "f5b_reorder", "f6_paths_and_gradients",
                          "f7_surviving_paths", "training_curves"}
    for name, fig in drawn.items():
        assert_readable(name, fig)


@pytest.mark.slow
def test_f5a_band_is_the_bootstrap_interval_within_0_and_100(known, drawn):
    """Errors near 0 with a wide spread: the band is deletion_curve's 95% interval, never below 0%, and k
    has integer ticks."""
    res = "res.normal.s0.x"
    store.write_part(known, "lesion", "random_deletion", res, "d",
                     [_lesion(k, d, [1 + (d + i) % 8 for i in range(k)], [0.0, 0.0, 0.0, 0.3][d] * k / 3)
                      for k in range(1, 4) for d in range(4)])
    write_report(known)
    fig = drawn["f5a_random_deletion"]
    ax = fig.axes[0]
    assert "95% CI" in ax.get_ylabel()
    ys = np.concatenate([p.get_paths()[0].vertices[:, 1] for p in ax.collections if p.get_paths()])
    curve = Results.load(known).deletion_curve(res)
    assert ys.min() >= 0 and ys.max() <= 100
    assert ys.max() == pytest.approx(100 * curve["hi"].max()) and curve["lo"].min() >= 0
    assert all(float(t).is_integer() for t in ax.get_xticks())


@pytest.mark.slow
def test_f7_legend_and_report_wording(known, drawn):
    """'1 block deleted', a signed cost ('-1.0 points', never '+-'), and one unit failed in the singular."""
    res = "res.normal.s0.x"
    store.write_part(known, "lesion", "intact", res, "a", [_lesion(0, 0, [], 0.03)])  # block 7 now costs -1 point
    store.write_errors(known, "z", [{"unit_key": "u1", "run_id": res, "study": "reorder", "k": 1, "draw": 0,
                                     "error": "RuntimeError: boom", "traceback": "-", "time": 0.0}])
    text = write_report(known).read_text()
    assert "1 block deleted" in legend_texts(drawn["f7_surviving_paths"])
    assert "+-" not in text and "1 units" not in text and "1 runs" not in text
    assert "downsampling blocks 4, 7 (+2.0, -1.0 points)" in text
    assert "critical block 1 (+47.0 points)" in text


@pytest.mark.slow
def test_a_cjk_label_draws_without_missing_glyphs(known, saved, caplog):
    """Labels may be any alphanumeric text: the figures draw a character no installed font has as its
    code point (no boxes, no warning), and the report keeps the text itself."""
    import logging
    import warnings

    from orchestrator.analysis.drawing import drawable

    runs = store.read_table(known, "runs")
    runs.loc[runs["run_id"] == "res.normal.s0.x", "label"] = "残差网络"
    store.write_table(known, "runs", runs.to_dict("records"))
    assert drawable("残差a", ["DejaVu Sans"]) == "U+6B8B U+5DEE a"
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="matplotlib"):
        warnings.simplefilter("always")
        text = write_report(known).read_text()
    assert not [str(w.message) for w in caught if "lyph" in str(w.message) or "font" in str(w.message).lower()]
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("matplotlib")]
    assert "| 残差网络 |" in text
    legend = legend_texts(saved["f3_single_deletion"])
    shown = drawable("残差网络")
    assert shown in legend and (shown == "残差网络" or shown.startswith("U+6B8B"))


def test_an_axis_without_data_says_so(known, drawn):
    """Gradients that all underflowed: F6 still shows the path lengths, and its gradient panels say why
    they are empty instead of being blank."""
    from orchestrator.analysis.figures import all_figures

    store.write_part(known, "gradients", "gradients", "res.normal.s0.x", "f",
                     [{"unit_key": f"g{k}", "k": k, "draw": 0, "chosen": list(range(k)), "log10_norm": float("-inf"),
                       "batch_size": 16, "seconds": 0.01} for k in range(1, 10)])
    made = all_figures(Results.load(known), known / "figures")
    assert "F6" in made
    panels = drawn["f6_paths_and_gradients"].axes
    assert panels[0].get_lines() and not panels[1].get_lines() and not panels[2].get_lines()
    for ax in panels[1:]:
        assert [t.get_text() for t in ax.texts] == ["no finite gradient norm\nin the gradients table"]


def test_a_language_model_report_speaks_of_next_token_loss_and_maps_units_to_layers(tmp_path, drawn):
    """A report of two GPT-2s says next-token loss, perplexity and next-token error; numbers every unit with
    its layer and kind (attention, MLP), in the table, the critical units and the figures' axes; and plots
    loss in nats with legends and captions that say so, never test error."""
    write_language_tables(tmp_path, {"small": 2, "big": 3}, single={2: 2.0}, random_k=3)   # unit 3 costs 20 points
    text = write_report(tmp_path).read_text()
    section = text.split("## Language models: next-token loss, and what each unit is")[1].split("\n## ")[0]
    for words in ("**Next-token loss**", "**perplexity** = exp(loss)", "**next-token error**", "**attention**",
                  "**MLP**"):
        assert words in section
    assert "| small, pretrained | 4 | 2 | 3.000 | 20.09 | 80.00% |" in section
    assert "| small, pretrained | 3 | 2 | attention | +2.000 | +20.0 |" in section
    assert "| big, pretrained | 6 | 3 | MLP | +0.500 | +5.0 |" in section
    assert "## Critical units (found from the data)" in text and "raises the next-token error by more than 10" in text
    assert "- small, pretrained on text: critical unit 3 (layer 2 attention) (+20.0 points of next-token error)" in text
    assert "CIFAR-10" not in text.split("## Critical units")[1].split("\n## ")[0]
    claims = {c.key: c for c in all_claims(Results.load(tmp_path))}
    assert "ordinary units rise < 5 points of next-token error" in claims["F3-resnet"].result
    assert "critical unit 3 (layer 2 attention)" in claims["F3-resnet"].result
    assert "points of next-token error per deleted unit" in claims["F5a"].result
    f3 = drawn["f3_single_deletion"].axes[-1]
    assert f3.get_ylabel() == "next-token loss (nats)"
    assert f3.get_xlabel() == "deleted unit (1-based): unit 2l-1 is layer l's attention, 2l its MLP"
    assert "critical unit (deleting it costs > 10 points of next-token error)" in legend_texts(drawn["f3_single_deletion"])
    f5a = drawn["f5a_random_deletion"].axes[0]
    assert f5a.get_ylabel().startswith("next-token loss (nats)")
    assert "small, pretrained: draws sparing critical unit 3 (layer 2 attention)" in legend_texts(
        drawn["f5a_random_deletion"])
    figures = text.split("## Figures")[1]
    assert "Next-token loss (nats) after deleting each single unit" in figures and "Error after" not in figures
    for name in ("f3_single_deletion", "f5a_random_deletion"):
        assert_readable(name, drawn[name])

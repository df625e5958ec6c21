"""Span deletion: spans of consecutive layers as plans (a ResNet's blocks, never through a layer that cannot be
deleted; a ViT's layers, both units each, in test_vit.py; the engine on span plans of every registered network
in test_engine.py), the spec's section and its units, the figure and report section on tables built here, and
one sweep through the real CLI, exactly once."""
import copy
import hashlib
import json
from pathlib import Path

import matplotlib
import pytest
import yaml
from click.testing import CliRunner

from figure_checks import assert_readable, legend_texts
from language_cases import write_language_tables
from orchestrator import store
from orchestrator.analysis import spans
from orchestrator.analysis.drawing import STYLE
from orchestrator.analysis.report import write_report
from orchestrator.analysis.results import Results
from orchestrator.cli import main
from orchestrator.planning.plan import Node, make_plan
from orchestrator.planning.rates import GivenRates
from orchestrator.experiment.spec import SpecError, load_spec, parse_spec
from orchestrator.experiment.units import expand, plan_for
from sweep_cases import BASE
from workloads.models import build_network, network_config
from workloads.surgery import PlanError, delete_span, layer_spans, layer_units

RESNET20 = build_network("resnet20", widths=(4, 8, 16)).block_infos()   # 9 blocks, 9 layers; 3 and 6 downsample
PLAIN = build_network("plain15", widths=(4, 8, 16)).block_infos()      # layers 0, 5 and 10 cannot be deleted
ROOT = Path(__file__).resolve().parent.parent


# -- plans -------------------------------------------------------------------------------------------

def test_spans_of_a_resnet_are_every_start_of_every_length_by_length_then_start():
    assert layer_units(RESNET20) == [[b] for b in range(9)]
    assert layer_spans(RESNET20, 3) == [(s, n) for n, starts in ((1, 9), (2, 8), (3, 7)) for s in range(starts)]
    assert layer_spans(RESNET20, 9)[-1] == (0, 9)
    plan = delete_span(RESNET20, 2, 3)   # through downsampling block 3: deleted as a single deletion deletes it
    assert plan.deleted == {2, 3, 4} and plan.order == tuple(range(9)) and plan.active_blocks == 6


def test_spans_never_include_a_layer_that_cannot_be_deleted():
    found = layer_spans(PLAIN, 6)
    # three runs of four deletable layers (1-4, 6-9, 11-14): 4 + 3 + 2 + 1 spans in each, none longer than 4
    assert len(found) == 3 * (4 + 3 + 2 + 1) and max(length for _, length in found) == 4
    for start, length in found:
        plan = delete_span(PLAIN, start, length)
        assert all(PLAIN[b].deletable for b in plan.deleted) and not plan.deleted & {0, 5, 10}
    assert (4, 2) not in found
    with pytest.raises(PlanError, match="block 5 changes shape and cannot be deleted"):
        delete_span(PLAIN, 4, 2)


@pytest.mark.parametrize("start, length, message", [
    (0, 0, "cannot delete 0 layer"), (-1, 2, "from layer -1"), (8, 2, "the network has 9 layers"),
])
def test_an_impossible_span_is_refused_before_compute(start, length, message):
    with pytest.raises(PlanError, match=message):
        delete_span(RESNET20, start, length)
    with pytest.raises(PlanError, match="at least one layer"):
        layer_spans(RESNET20, 0)


# -- the spec and its units --------------------------------------------------------------------------

SPEC = {"name": "spans", "data": {"dataset": "digits"},
        "training": {"iterations": 4, "resources": {"cpu": 1},
                     "runs": [{"network": "resnet20", "label": "res", "overrides": {"widths": [4, 8, 16]}},
                              {"network": "plain15", "label": "plain", "overrides": {"widths": [4, 8, 16]}}]},
        "studies": {"test_examples": 40, "span_deletion": {"max_length": 3}, "evaluators": {"count": 1, "cpu": 1}}}


def with_spans(**section) -> dict:
    raw = copy.deepcopy(SPEC)
    raw["studies"]["span_deletion"] = section
    return raw


def test_a_unit_per_span_with_k_its_length_and_draw_its_first_layer():
    spec = parse_spec(SPEC)
    res, plain = (t.run_id for t in spec.runs)
    assert spec.studies.study("span_deletion").runs == (res,)   # plain networks only when named
    units = expand(spec)
    assert [(u.study, u.k, u.draw) for u in units] == [("intact", 0, 0)] + [
        ("span_deletion", length, start) for start, length in layer_spans(RESNET20, 3)]
    infos = RESNET20
    assert all(plan_for(u, infos, ()).deleted == set(range(u.draw, u.draw + u.k)) for u in units[1:])
    assert [u.key for u in expand(parse_spec(SPEC))] == [u.key for u in units]   # deterministic
    assert len({u.key for u in units}) == len(units)
    named = expand(parse_spec(with_spans(max_length=3, runs=["res", "plain"])))
    assert sum(u.run_id == plain and u.study == "span_deletion" for u in named) == 3 * (4 + 3 + 2)
    assert parse_spec(with_spans()).studies.study("span_deletion").max_length == 4   # the default
    plan = make_plan(parse_spec(with_spans(runs=["res", "plain"])), [Node(2, 0)], "test", GivenRates(),
                     measure=False)
    rows = {r["study"]: r for r in plan["studies"]["per_study"]}
    assert rows["span_deletion"] == {"study": "span_deletion", "runs": 2, "units": 9 + 8 + 7 + 6 + 3 * 10,
                                     "device_hours": None}


# the unit keys of the shipped specs, before span deletion existed: adding a study must not change them (the
# studies added to them since, proxies and shares, have keys of their own)
SHIPPED_KEYS = {"digits.yaml": (6241, "1d32aaa72976d523"), "identity-mappings-digits.yaml": (21, "94d782b2a4bace7e")}
LATER_STUDIES = ("proxies", "shares")


@pytest.mark.parametrize("name", sorted(SHIPPED_KEYS))
def test_the_shipped_specs_keep_their_unit_keys_and_spans_add_only_their_own(name):
    spec = load_spec(ROOT / "experiments" / name)
    keys = sorted(u.key for u in expand(spec) if u.study not in LATER_STUDIES)
    assert (len(keys), hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]) == SHIPPED_KEYS[name]
    if name == "digits.yaml":
        raw = copy.deepcopy(spec.raw)
        raw["studies"]["span_deletion"] = {"max_length": 2}
        grown = expand(parse_spec(raw))
        assert sorted(u.key for u in grown if u.study not in ("span_deletion", *LATER_STUDIES)) == keys
        assert {t.run_id for t in parse_spec(raw).runs} == {t.run_id for t in spec.runs}


@pytest.mark.parametrize("section, message", [
    ({"max_lenght": 2}, "studies.span_deletion.max_lenght: unknown key"),
    ({"max_length": 0}, "studies.span_deletion.max_length: must be between 1"),
    ({"max_length": 10}, "studies.span_deletion.max_length: max_length=10 is larger than the 9 layers of run 'res'"),
    ({"runs": ["nope"]}, "studies.span_deletion.runs[0]: no training run is labelled 'nope'"),
])
def test_span_spec_errors_name_the_field(section, message):
    with pytest.raises(SpecError) as e:
        parse_spec(with_spans(**section))
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


# -- the figure and the report section, on tables built here ------------------------------------------

def _run(run_id: str, seed: int = 0, label: str = "res") -> dict:
    cfg = network_config("resnet20", widths=(4, 8, 16), in_channels=1, num_classes=10, image_size=8)
    return {"run_id": run_id, "label": label, "network": "resnet20", "variant": "{}", "mode": "normal", "seed": seed,
            "dataset": "digits", "iterations": 10, "epochs": 1, "test_error": 0.1, "test_loss": 0.3, "num_blocks": 9,
            "parameters": 1, "checkpoint": "-", "train_seconds": 1.0, "net_config": cfg.to_json(),
            "train_config": "{}"}


def _lesion(run_id: str, study: str, k: int, draw: int, error: float) -> dict:
    deleted = list(range(draw, draw + k)) if study == "span_deletion" else []
    return {"unit_key": f"{run_id}-{study}-{k}-{draw}", "k": k, "draw": draw, "deleted": deleted,
            "order": list(range(9)), "kendall_tau": 1.0, "active_blocks": 9 - len(deleted), "error": error,
            "loss": 1.0, "examples": 100, "precision": "fp32", "bn_recalibrated": False, "seconds": 0.01,
            "test_rule": "", "metric": "classification", "perplexity": float("nan"),
            "kl_from_intact": None, "agreement_with_intact": None, "entropy": None}


def span_error(start: int, length: int, seed: int = 0) -> float:
    """2 points per deleted layer, 30 more where the span holds a downsampling block (3 or 6), 0.1 per start."""
    downsampling = any(start <= d < start + length for d in (3, 6))
    return 0.05 + (2 * length + 30 * downsampling + 0.1 * start + seed) / 100


def write_spans(out: Path, run_id: str, seed: int = 0) -> None:
    intact = [_lesion(run_id, "intact", 0, 0, 0.05 + seed / 100)]
    store.write_part(out, "lesion", "intact", run_id, f"i-{run_id}", intact)
    deleted = [_lesion(run_id, "span_deletion", n, s, span_error(s, n, seed)) for s, n in layer_spans(RESNET20, 3)]
    store.write_part(out, "lesion", "span_deletion", run_id, f"s-{run_id}", deleted)


LONG = "残差网络-with-a-label-long-enough-to-crowd-a-legend"


@pytest.fixture
def span_tables(tmp_path):
    """Two seeds of one ResNet-20 and a run with a long label, all with spans of 1 to 3 layers."""
    store.write_table(tmp_path, "runs", [_run("res.s0", 0), _run("res.s1", 1), _run("other.s0", 0, LONG)])
    for r in ("res.s0", "res.s1", "other.s0"):
        write_spans(tmp_path, r, seed=int(r[-1]))
    return tmp_path


def test_the_section_gives_each_length_its_rises_and_the_span_that_costs_least(span_tables):
    section = "\n".join(spans.span_section(Results.load(span_tables)))
    assert section.startswith("## Span deletion: consecutive layers deleted together")
    # length 1: rises 2 + 0.1 * start, 30 more at the downsampling layers 4 and 7 (1-based); best: layer 1
    assert "| res, seed 0 | 1 | 9 | +9.1 | +2.0 | +32.6 | layer 1 (+2.0) |" in section
    # length 3: every span but layers 1-3 holds a downsampling block (the intact error of seed 1 is a point higher)
    assert "| res, seed 1 | 3 | 7 | +32.0 | +6.0 | +36.6 | layers 1-3 (+6.0) |" in section
    assert section.count(f"| {LONG}, seed 0 |") == 3


def test_the_figure_has_a_panel_per_run_and_a_line_per_length_and_reads_at_print_size(span_tables, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    made = {}
    save = spans.save

    def keep(fig, folder, name):
        made[name] = fig
        path = save(fig, folder, name)
        FigureCanvasAgg(fig).draw()
        return path
    monkeypatch.setattr(spans, "save", keep)
    with matplotlib.rc_context(STYLE):   # as all_figures draws it
        assert spans.span_figure(Results.load(span_tables), span_tables / "figures") == "span_deletion.png"
    assert (span_tables / "figures" / "span_deletion.png").stat().st_size > 10_000
    assert (span_tables / "figures" / "span_deletion.pdf").exists()
    fig = made["span_deletion"]
    assert_readable("span_deletion", fig)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2                     # res (its two seeds pooled) and other
    assert panels[0].get_title() == "res (mean over 2 seeds)"
    lines = [line for line in panels[0].get_lines() if len(line.get_xdata()) > 2]
    assert [len(line.get_xdata()) for line in lines] == [9, 8, 7]    # a line per length, x = first layer 1..
    assert list(lines[0].get_xdata()) == list(range(1, 10))
    # the seeds' mean error for layer 1 alone
    assert lines[0].get_ydata()[0] == pytest.approx(100 * (span_error(0, 1) + span_error(0, 1, 1)) / 2)
    legend = legend_texts(fig)
    assert ["span of 1 layer", "span of 2 layers", "span of 3 layers"] == legend[:3]
    assert "layer with a downsampling block" in legend


def test_a_report_without_spans_neither_draws_nor_misses_them(span_tables):
    lesion = span_tables / "lesion" / "study=span_deletion"
    for part in lesion.rglob("*.parquet"):
        part.unlink()
    text = write_report(span_tables).read_text()
    assert "## Span deletion" not in text and "span_deletion.png" not in text
    assert "spans" not in text.split("Not drawn, as the tables hold no data for them:")[1].split("\n")[0]


def test_a_text_report_of_two_models_draws_their_spans_in_nats(tmp_path, monkeypatch):
    """Two language models of 2 and 3 layers: the panels share one loss axis from 0 to a little above the largest
    loss of either (it was set inside the panel loop, from panels not drawn yet: "Axis limits cannot be NaN or
    Inf"), and the section counts rises in nats of next-token loss."""
    made = {}
    save = spans.save
    monkeypatch.setattr(spans, "save", lambda fig, folder, name: made.setdefault(name, fig) and save(fig, folder, name))
    write_language_tables(tmp_path, {"small": 2, "big": 3}, spans=2)
    text = write_report(tmp_path).read_text()
    assert (tmp_path / "figures" / "span_deletion.png").stat().st_size > 10_000
    panels = [ax for ax in made["span_deletion"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["big, pretrained", "small, pretrained"]
    largest = 3.0 + sum(0.1 * u for u in range(2, 6))    # big's layers 2-3
    assert panels[0].get_ylim() == panels[1].get_ylim() == pytest.approx((0, 1.08 * largest))
    assert all(ax.get_ylabel() in ("next-token loss (nats)", "") for ax in panels)
    section = text.split("## Span deletion")[1].split("\n## ")[0]
    assert "| run | layers per span | spans | mean rise (nats) |" in section and "points" not in section
    # small: layer 1 is units 1-2 (0 + 0.1 nats), layer 2 units 3-4 (0.2 + 0.3)
    assert "| small, pretrained | 1 | 2 | +0.300 | +0.100 | +0.500 | layer 1 (+0.100) |" in section
    assert "Next-token loss (nats) after deleting each span" in text


# -- end to end ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_span_sweep_through_the_cli_writes_each_unit_exactly_once_and_prunes_a_shorter_bound(out, tmp_path):
    """BASE's trained runs (the session's): spans of up to 2 layers on the ResNet (9 + 8) and the plain net,
    named (3 runs of 4 deletable layers: 12 + 9), each unit once across a rerun; max_length 1 leaves the
    longer spans to prune."""
    def lesion(max_length: int):
        raw = {**BASE, "studies": {"test_examples": 40, "evaluators": {"count": 1, "cpu": 1},
                                   "span_deletion": {"max_length": max_length, "runs": ["res", "plain"]}}}
        (tmp_path / "spans.yaml").write_text(yaml.safe_dump(raw))
        result = runner.invoke(main, ["lesion", str(tmp_path / "spans.yaml"), "--out", str(out)])
        assert result.exit_code == 0, result.output
        return result.output

    runner = CliRunner()
    assert "units: 40 (intact 2, span_deletion 38); 0 already written, 40 computed, 0 failed" in lesion(2)
    assert "40 already written, 0 computed" in lesion(2)
    rows = store.read_parts(out, "lesion")
    span_rows = rows[rows["study"] == "span_deletion"]
    assert len(span_rows) == span_rows["unit_key"].nunique() == 38 and (span_rows["examples"] == 40).all()
    plain = span_rows[span_rows["run_id"].str.startswith("plain")]
    assert not any({0, 5, 10} & set(d) for d in plain["deleted"])
    assert sorted(len(d) for d in plain["deleted"]) == [1] * 12 + [2] * 9
    status = json.loads(runner.invoke(main, ["status", str(out), "--format", "json"]).output)
    assert {"study": "span_deletion", "units": 38, "done": 38, "failed": 0, "left": 0} in status["studies"]
    report = runner.invoke(main, ["figures", str(out)])
    assert report.exit_code == 0, report.output
    text = (out / "report.md").read_text()
    assert "## Span deletion" in text and "figures/span_deletion.png" in text
    assert "0 computed" in lesion(1)
    pruned = runner.invoke(main, ["prune", str(out)])
    assert pruned.exit_code == 0 and "removed 17 rows" in pruned.output, pruned.output
    left = store.read_parts(out, "lesion")
    assert sorted(left[left["study"] == "span_deletion"]["k"].unique()) == [1]

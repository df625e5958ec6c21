"""Span deletion: spans of consecutive layers as plans (a ResNet's blocks, never through a layer that cannot be
deleted; a ViT's layers, both units each, in test_vit.py; the engine on span plans of every registered network
in test_engine.py), and the spec's section and its units."""
import copy
import hashlib
from pathlib import Path

import pytest

from orchestrator.plan import Node, make_plan
from orchestrator.rates import Rates
from orchestrator.spec import SpecError, load_spec, parse_spec
from orchestrator.units import expand, plan_for
from workloads.models import build_network
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
    plan = make_plan(parse_spec(with_spans(runs=["res", "plain"])), [Node(2, 0)], "test", Rates({}, {}),
                     measure=False)
    rows = {r["study"]: r for r in plan["studies"]["per_study"]}
    assert rows["span_deletion"] == {"study": "span_deletion", "runs": 2, "units": 9 + 8 + 7 + 6 + 3 * 10,
                                     "device_hours": None}


# the unit keys of the shipped specs, before span deletion existed: adding a study must not change them
SHIPPED_KEYS = {"digits.yaml": (6241, "1d32aaa72976d523"), "identity-mappings-digits.yaml": (21, "94d782b2a4bace7e")}


@pytest.mark.parametrize("name", sorted(SHIPPED_KEYS))
def test_the_shipped_specs_keep_their_unit_keys_and_spans_add_only_their_own(name):
    spec = load_spec(ROOT / "experiments" / name)
    keys = sorted(u.key for u in expand(spec))
    assert (len(keys), hashlib.sha256("|".join(keys).encode()).hexdigest()[:16]) == SHIPPED_KEYS[name]
    if name == "digits.yaml":
        raw = copy.deepcopy(spec.raw)
        raw["studies"]["span_deletion"] = {"max_length": 2}
        grown = expand(parse_spec(raw))
        assert sorted(u.key for u in grown if u.study != "span_deletion") == keys
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

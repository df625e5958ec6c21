"""Span deletion: spans of consecutive layers as plans (a ResNet's blocks, never through a layer that cannot be
deleted; a ViT's layers, both units each, in test_vit.py; the engine on span plans of every registered network
in test_engine.py)."""
import pytest

from workloads.models import build_network
from workloads.surgery import PlanError, delete_span, layer_spans, layer_units

RESNET20 = build_network("resnet20", widths=(4, 8, 16)).block_infos()   # 9 blocks, 9 layers; 3 and 6 downsample
PLAIN = build_network("plain15", widths=(4, 8, 16)).block_infos()      # layers 0, 5 and 10 cannot be deleted


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

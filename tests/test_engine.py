"""The engine must equal the naive way: one full forward per plan."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny
from registry_cases import params, registry_cases
from workloads.surgery import (PlanTrie, delete_blocks, delete_span, deletion_pool, evaluate_plans, forward_plan,
                               intact, layer_spans, random_deletion, random_swaps, recalibrated_copy, swap_pairs)
from workloads.surgery.trie import naive_block_runs


pytestmark = pytest.mark.usefixtures("one_thread")


def study_plans(infos, swaps=2, draws=3, singles=None):
    """Every kind of plan a study makes; ``singles`` spreads that many single deletions over the
    network (first and last included) instead of one per deletable block."""
    pool = deletion_pool(infos)
    if singles is not None and singles < len(pool):
        pool = [pool[round(i * (len(pool) - 1) / max(singles - 1, 1))] for i in range(singles)]
    ks = [k for k in (2, 4) if k <= len(deletion_pool(infos))]
    swaps = min(swaps, len(swap_pairs(infos)))
    plans = [intact(infos)] + [delete_blocks(infos, [i]) for i in pool]
    plans += [random_deletion(infos, k, s) for k in ks for s in range(draws)]
    plans += [random_swaps(infos, k, s) for k in range(1, swaps + 1) for s in range(draws)]
    spans = layer_spans(infos, 3)   # ``draws`` of them, from the last (longest, cheapest: it shares the most prefix)
    plans += [delete_span(infos, start, length) for start, length in spans[::-max(1, len(spans) // draws)][:draws]]
    plans += [random_deletion(infos, ks[0], 0)]  # a duplicate, computed once
    return plans


def naive(net, plans, x, y):
    out = []
    with torch.no_grad():
        for p in plans:
            logits = forward_plan(net, p, x)
            out.append(((logits.argmax(1) != y).float().mean().item(), F.cross_entropy(logits, y).item()))
    return out


@pytest.mark.parametrize("case", params(registry_cases(deep_share=(1, 2))))  # gradients: the other deep one
def test_engine_equals_one_forward_per_plan(case, images):
    """Every registered network (and each unit and shortcut variant), made tiny by registry_cases."""
    budget = case.budget
    x, y = case.inputs(images[0])[:budget.examples], images[1][:budget.examples]
    net = case.build(x)
    plans = study_plans(net.block_infos(), swaps=budget.swaps, draws=budget.draws, singles=budget.singles)
    assert any(p.deleted for p in plans) and any(p.order != tuple(sorted(p.order)) for p in plans)
    got = evaluate_plans(net, plans, x, y, chunk_size=16)
    want = naive(net, plans, x, y)
    for plan, r, (err, loss) in zip(plans, got, want, strict=True):
        assert r.examples == len(y)
        assert abs(r.error - err) <= 1 / len(y) + 1e-9, plan
        assert r.loss == pytest.approx(loss, rel=1e-4, abs=1e-5), plan


def test_duplicates_and_shared_prefixes_are_computed_once():
    infos = tiny("resnet20").block_infos()
    plans = [delete_blocks(infos, [i]) for i in range(9)] * 2
    trie = PlanTrie.build(plans, infos)
    assert trie.num_leaves == 9
    # deleting block i shares blocks 0..i-1 with the intact prefix; option A keeps
    # the downsampling skips (3, 6) as non-trivial operations
    assert trie.block_runs < naive_block_runs(plans) / 2
    assert naive_block_runs(plans) == 18 * 8


def test_results_do_not_depend_on_chunk_size(images):
    net = tiny("resnet20")
    x, y = images
    plans = study_plans(net.block_infos())
    a = evaluate_plans(net, plans, x, y, chunk_size=7)
    b = evaluate_plans(net, plans, x, y, chunk_size=40)
    assert [r.correct for r in a] == [r.correct for r in b]
    assert [r.loss for r in a] == pytest.approx([r.loss for r in b], rel=1e-5)


def test_memory_holds_at_most_one_activation_per_branching_depth(images, monkeypatch):
    """Live activations never exceed the network's depth, whatever the number of plans."""
    import workloads.surgery.trie as trie
    net = tiny("resnet20")
    x, y = images
    infos = net.block_infos()
    plans = [random_deletion(infos, k, s) for k in range(0, 6) for s in range(40)]
    live, peak = [0], [0]
    original = trie.walk

    def counting_walk(net, node, act, leaf):  # each branch's recursion holds one activation
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        try:
            return original(net, node, act, leaf)
        finally:
            live[0] -= 1
    monkeypatch.setattr(trie, "walk", counting_walk)
    evaluate_plans(net, plans, x, y, chunk_size=40)
    assert len(plans) == 240
    assert peak[0] <= net.num_blocks + 1


def test_bn_recalibration_matches_a_manually_recalibrated_network(images):
    net = tiny("resnet20")
    x, y = images
    infos = net.block_infos()
    plan = delete_blocks(infos, [1, 4])
    calib = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    r = evaluate_plans(net, [plan], x, y, recalibrate=calib)[0]
    manual = recalibrated_copy(net, plan, calib)
    with torch.no_grad():
        logits = forward_plan(manual, plan, x)
    assert r.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4)
    plain = evaluate_plans(net, [plan], x, y)[0]
    assert r.loss != pytest.approx(plain.loss, rel=1e-3)  # statistics really changed
    bn = next(m for m in manual.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.momentum is None and not bn.training


def test_impossible_plan_fails_before_compute(images):
    net = tiny("plain15", widths=(8, 16, 32))
    from workloads.surgery import Plan, PlanError
    with pytest.raises(PlanError, match="block 5"):
        evaluate_plans(net, [intact(net.block_infos()), Plan(tuple(range(15)), frozenset({5}))], *images)


def test_bf16_is_close_to_fp32(images):
    net = tiny("resnet20")
    x, y = images
    plans = study_plans(net.block_infos())
    a = evaluate_plans(net, plans, x, y, precision="fp32")
    b = evaluate_plans(net, plans, x, y, precision="bf16")
    assert max(abs(p.loss - q.loss) for p, q in zip(a, b)) < 0.1

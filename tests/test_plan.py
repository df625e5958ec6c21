import pytest
from hypothesis import given, settings, strategies as st

from workloads.models import build_network
from workloads.surgery import (Plan, PlanError, delete_blocks, deletion_pool, intact, random_deletion,
                               random_swaps, swap_pairs, validate)

RESNET110 = build_network("resnet110").block_infos()
PLAIN = build_network("plain15").block_infos()


def test_intact_plan():
    p = intact(RESNET110)
    assert p.kendall_tau == 1.0 and p.active_blocks == 54 and p.num_paths == 2**54


def test_deletion_counts_paths():
    p = delete_blocks(RESNET110, [3, 10])
    assert p.active_blocks == 52 and p.num_paths == 2**52
    assert p.steps()[3] == (3, False) and p.steps()[4] == (4, True)


def test_downsampling_blocks_of_a_resnet_can_be_deleted():
    assert delete_blocks(RESNET110, [18, 36]).deleted == {18, 36}


@pytest.mark.parametrize("make, message", [
    (lambda: delete_blocks(PLAIN, [5]), "block 5 changes shape and cannot be deleted"),
    (lambda: delete_blocks(RESNET110, [54]), "out of range"),
    (lambda: delete_blocks(RESNET110, [-1]), "out of range"),
    (lambda: validate(Plan(tuple(range(53))), RESNET110), "53 positions but the network has 54"),
    (lambda: validate(Plan((1, 0) + tuple(range(2, 54))[:-1] + (2,)), RESNET110), "permutation"),
    (lambda: validate(Plan(_swapped(54, 18, 20)), RESNET110), "shape-changing blocks stay in place"),
    (lambda: validate(Plan(_swapped(54, 10, 20)), RESNET110), "only blocks of the same shape"),
    (lambda: random_deletion(RESNET110, 55, 0), "k=55"),
    (lambda: random_swaps(RESNET110, 10_000, 0), "k=10000"),
])
def test_impossible_plans_are_refused_before_compute(make, message):
    with pytest.raises(PlanError, match=message):
        make()


def _swapped(n, a, b):
    order = list(range(n))
    order[a], order[b] = order[b], order[a]
    return tuple(order)


def test_kendall_tau_of_one_adjacent_swap():
    p = validate(Plan(_swapped(54, 1, 2)), RESNET110)
    pairs = 54 * 53 / 2
    assert p.kendall_tau == pytest.approx(1 - 2 / pairs)


def test_random_plans_are_seeded():
    assert random_deletion(RESNET110, 10, 7) == random_deletion(RESNET110, 10, 7)
    assert random_deletion(RESNET110, 10, 7) != random_deletion(RESNET110, 10, 8)
    assert random_swaps(RESNET110, 5, 7) == random_swaps(RESNET110, 5, 7)


def test_exclusions_keep_blocks_out_of_the_pools():
    assert 0 not in deletion_pool(RESNET110, exclude=[0])
    for seed in range(20):
        assert 0 not in random_deletion(RESNET110, 20, seed, exclude=[0]).deleted
        assert random_swaps(RESNET110, 5, seed, exclude=[0]).order[0] == 0


def test_swap_pairs_are_same_shape_only():
    pairs = swap_pairs(RESNET110)
    assert len(pairs) == 18 * 17 // 2 + 2 * (17 * 16 // 2)  # stage 1 has no downsampling block
    assert all(RESNET110[a].stage == RESNET110[b].stage for a, b in pairs)
    assert not any(a in (18, 36) or b in (18, 36) for a, b in pairs)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 54), seed=st.integers(0, 2**31 - 1))
def test_random_deletion_properties(k, seed):
    p = random_deletion(RESNET110, k, seed)
    assert len(p.deleted) == k and p.active_blocks == 54 - k
    assert p.order == tuple(range(54))
    validate(p, RESNET110)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 27), seed=st.integers(0, 2**31 - 1))
def test_random_swap_properties(k, seed):
    p = random_swaps(RESNET110, k, seed)
    validate(p, RESNET110)
    assert sorted(p.order) == list(range(54))
    assert p.order[18] == 18 and p.order[36] == 36
    assert -1.0 <= p.kendall_tau <= 1.0
    assert sum(a != b for a, b in enumerate(p.order)) <= 2 * k


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.integers(-3, 20), max_size=6))
def test_plain_deletions_accept_exactly_the_deletable_layers(blocks):
    ok = all(0 <= b < 15 and b not in (0, 5, 10) for b in blocks)
    if ok:
        assert delete_blocks(PLAIN, blocks).deleted == set(blocks)
    else:
        with pytest.raises(PlanError):
            delete_blocks(PLAIN, blocks)

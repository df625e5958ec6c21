"""Gradient by path length must equal the naive way: one backward per draw, other branch detached."""
import copy
import math

import pytest
import torch

from conftest import tiny
from registry_cases import params, registry_cases
from workloads.surgery import PlanError, choose_blocks, gradient_norms, naive_gradient_norm


CASES = registry_cases(deep_share=(0, 2))  # test_engine runs the other deep network (registry_cases says why)


def tolerance(k: int) -> float:
    """log10 tolerance: 2e-5 for paths of up to 54 blocks (the deepest this test had before ResNet-1001);
    1e-4 beyond (ResNet-1001's paths of 166 to 333 blocks), where the fp32 VJPs' rounding, amplified
    along the path, moves the result by up to 5e-5 (1e-4 with renorm_every=1) depending on the batch
    and on how draws are grouped."""
    return 2e-5 if k <= 54 else 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("case", params([c for c in CASES if c.residual]))  # the rest: see test_plain_net_...
def test_engine_equals_naive_float64_backward(case, images):
    """Every registered residual network (and each unit and shortcut variant), made tiny by registry_cases."""
    budget = case.budget
    x, y = case.inputs(images[0])[:budget.gradient_examples], images[1][:budget.gradient_examples]
    net = case.build(x)
    ref = copy.deepcopy(net).double().requires_grad_(False)  # input gradients only, as the engine
    n = sum(i.residual for i in net.block_infos())   # path lengths count residual units (layers without one: always)
    draws = [(k, s) for k in sorted({0, 1, n // 2, n - 1, n}) for s in range(budget.gradient_seeds)]
    got = gradient_norms(net, x, y, draws)
    assert [(r.k, r.seed) for r in got] == draws
    for r in got:
        assert r.batch_size == len(y) and len(r.chosen) == r.k
        want = naive_gradient_norm(ref, x.double(), y, r.chosen)
        if want == 0.0:  # every path of this draw is cut by ReLU masks: exactly zero both ways
            assert r.log10_norm == -math.inf
        else:
            assert r.log10_norm == pytest.approx(math.log10(want), abs=tolerance(r.k)), (r.k, r.chosen)


def test_draws_are_seeded_and_distinct():
    assert choose_blocks(54, 10, 3) == choose_blocks(54, 10, 3)
    assert choose_blocks(54, 10, 3) != choose_blocks(54, 10, 4)
    assert len(set(choose_blocks(54, 54, 0))) == 54
    with pytest.raises(PlanError, match="k=55"):
        choose_blocks(54, 55, 0)


def test_long_paths_stay_finite_where_fp32_underflows():
    """A network whose branches shrink the gradient: fp32's naive backward reaches 0, the engine does not."""
    torch.manual_seed(0)
    net = tiny("resnet56", widths=(4, 8, 16))
    with torch.no_grad():
        for block in net.blocks:
            block.branch[-1].weight.mul_(1e-3)  # last BN gamma: each branch scales the gradient ~1e-3
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    n = net.num_blocks
    draws = [(k, 0) for k in range(0, n + 1, 3)]
    got = gradient_norms(net, x, y, draws)
    assert all(math.isfinite(r.log10_norm) for r in got)
    deep = got[-1]
    assert naive_gradient_norm(net, x, y, deep.chosen) == 0.0
    assert deep.log10_norm < -40
    # and the engine agrees with float64 where float64 still sees it
    ref = tiny("resnet56", widths=(4, 8, 16))
    ref.load_state_dict(net.state_dict())
    ref.double()
    mid = got[len(got) // 2]
    assert mid.log10_norm == pytest.approx(math.log10(naive_gradient_norm(ref, x.double(), y, mid.chosen)), abs=1e-4)
    slope = (got[-1].log10_norm - got[1].log10_norm) / (got[-1].k - got[1].k)
    assert slope < -1  # norms fall by orders of magnitude per block


@pytest.mark.parametrize("case", params([c for c in CASES if not c.residual]))
def test_plain_net_has_no_paths_to_choose(case, images):
    """A registered network with a block that has no residual branch (plain15) is refused."""
    x = case.inputs(images[0])[:4]
    net = case.build(x)
    with pytest.raises(PlanError, match="residual network"):
        gradient_norms(net, x, images[1][:4], [(1, 0)])


def test_weights_keep_requires_grad(images):
    net = tiny("resnet20")
    gradient_norms(net, images[0][:4], images[1][:4], [(3, 0)])
    assert all(p.requires_grad for p in net.parameters())

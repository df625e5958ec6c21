"""Gradient by path length must equal the naive way: one backward per draw, other branch detached."""
import math

import pytest
import torch

from conftest import tiny
from workloads.surgery import PlanError, choose_blocks, gradient_norms, naive_gradient_norm


def _double(net):
    return net.double()


@pytest.mark.parametrize("name, overrides", [
    ("resnet20", {}),
    ("preact_resnet20", {}),
    ("resnet20", {"unit": "b", "option": "B"}),
    ("resnet20", {"unit": "c"}),
    ("resnet20", {"shortcut": "exclusive_gating"}),
    ("resnet20", {"shortcut": "shortcut_gating"}),
    ("resnet20", {"shortcut": "scaling"}),
    ("resnet20", {"stochastic_depth": True}),
    ("resnet164", {"widths": (4, 8, 16)}),
    ("tv_resnet18", {}),
])
def test_engine_equals_naive_float64_backward(name, overrides, images):
    net = tiny(name, **overrides)
    x, y = images
    x, y = x[:8], y[:8]
    if name.startswith("tv_"):
        x = torch.nn.functional.interpolate(x, size=32)
    n = net.num_blocks
    draws = [(k, s) for k in sorted({0, 1, n // 2, n - 1, n}) for s in range(2)]
    got = gradient_norms(net, x, y, draws)
    ref = _double(tiny(name, **overrides))
    for r in got:
        want = naive_gradient_norm(ref, x.double(), y, r.chosen)
        assert r.batch_size == 8 and len(r.chosen) == r.k
        if want == 0.0:  # every path of this draw is cut by ReLU masks: exactly zero both ways
            assert r.log10_norm == -math.inf
        else:
            assert r.log10_norm == pytest.approx(math.log10(want), abs=2e-5), (r.k, r.chosen)


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


def test_plain_net_has_no_paths_to_choose(images):
    net = tiny("plain15", widths=(8, 16, 32))
    with pytest.raises(PlanError, match="residual network"):
        gradient_norms(net, images[0][:4], images[1][:4], [(1, 0)])


def test_weights_keep_requires_grad(images):
    net = tiny("resnet20")
    gradient_norms(net, images[0][:4], images[1][:4], [(3, 0)])
    assert all(p.requires_grad for p in net.parameters())

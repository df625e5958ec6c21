import pytest
import torch

from workloads.models import build_network
from workloads.train.modes import BlockSampler, scaled_active_count


def test_effective_paths_runs_exactly_m_blocks_per_batch():
    net = build_network("resnet110")
    sampler = BlockSampler(net, "effective_paths", torch.Generator().manual_seed(0))
    assert sampler.active == 23 == scaled_active_count(54)
    masks = [sampler() for _ in range(50)]
    assert all(sum(m) == 23 for m in masks)
    assert len({tuple(m) for m in masks}) == 50


def test_stochastic_depth_keeps_blocks_at_their_survival_rate():
    net = build_network("resnet110", stochastic_depth=True)
    sampler = BlockSampler(net, "stochastic_depth", torch.Generator().manual_seed(0))
    masks = torch.tensor([sampler() for _ in range(4000)], dtype=torch.float32)
    rate = masks.mean(0)
    assert rate[0] == pytest.approx(1 - 0.5 / 54, abs=0.02)
    assert rate[-1] == pytest.approx(0.5, abs=0.03)


def _composed(net, x, active):
    """stem -> each block, or only its shortcut where inactive -> head, written out by hand."""
    x = net.stem(x)
    for block, on in zip(net.blocks, active):
        x = block(x) if on else block.skip(x)
    return net.head(x)


def test_inactive_blocks_are_their_shortcut_in_forward_and_backward():
    torch.manual_seed(0)
    net = build_network("resnet20").train()  # training mode: BN on batch statistics
    x = torch.randn(4, 3, 8, 8)
    n = net.num_blocks
    none_active = [False] * n
    out = net(x, active=none_active)
    # no block runs: the stem's output through every block's shortcut module (nn.Identity, or
    # option A's subsample-pad where the shape changes), then the head
    h = net.stem(x)
    for block in net.blocks:
        h = block.shortcut(h)
    assert torch.allclose(out, net.head(h), atol=1e-6)
    assert torch.allclose(out, _composed(net, x, none_active), atol=1e-6)
    out.sum().backward()
    assert all(p.grad is None for b in net.blocks for p in b.parameters())

    net.zero_grad(set_to_none=True)
    some_active = [i % 3 == 1 for i in range(n)]
    out = net(x, active=some_active)
    assert torch.allclose(out, _composed(net, x, some_active), atol=1e-6)
    assert not torch.allclose(out, net(x), atol=1e-3) and not torch.allclose(out, net(x, active=none_active), atol=1e-3)
    assert torch.allclose(net(x, active=[True] * n), net(x), atol=1e-6)
    out.sum().backward()
    for on, block in zip(some_active, net.blocks):  # only the blocks that ran learn
        assert all((p.grad is not None) == on for p in block.parameters())


def test_bad_modes_are_refused():
    net = build_network("resnet20")
    with pytest.raises(ValueError, match="training mode"):
        BlockSampler(net, "dropout", torch.Generator())
    with pytest.raises(ValueError, match="stochastic_depth=True"):
        BlockSampler(net, "stochastic_depth", torch.Generator())
    with pytest.raises(ValueError, match="active blocks"):
        BlockSampler(net, "effective_paths", torch.Generator(), active=10)

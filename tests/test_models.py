import json

import pytest
import torch

from registry_cases import params, registry_cases, rule
from workloads.models import NETWORKS, NetConfig, build_network, network_config
from workloads.models.shortcuts import SubsamplePad


@pytest.mark.parametrize("case", params([c for c in registry_cases() if not c.variant or c.name in NETWORKS
                                         and rule(c.name).widths is None]))
def test_every_registered_network_runs_forward(case):
    # train-mode BN: at initialisation, eval-mode statistics (mean 0, var 1) let a
    # 333-block ResNet-1001 overflow, which says nothing about the network
    overrides = {k: v for k, v in case.overrides.items() if k != "widths"}
    net = build_network(case.name, num_classes=7, **overrides).train()
    size = max(rule(case.name).image_size, 8)
    with torch.no_grad():
        out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    infos = net.block_infos()
    assert len(infos) == net.num_blocks > 0
    assert [i.index for i in infos] == list(range(len(infos)))


def test_registry_cases_pick_up_a_new_name_and_refuse_an_unknown_family(monkeypatch):
    """tests/registry_cases.py: a newly registered network joins the engine and gradient tests by
    being registered; one whose family has no tiny rule fails collection instead of being skipped."""
    from registry_cases import NoTinyRule, registry_cases
    monkeypatch.setitem(NETWORKS, "resnet26", dict(arch="resnet", depth=26))
    assert "resnet26" in [c.id for c in registry_cases()]
    monkeypatch.setitem(NETWORKS, "vit_tiny", dict(arch="vit"))
    with pytest.raises(NoTinyRule, match="'vit_tiny'"):
        registry_cases()


@pytest.mark.parametrize("name", ["resnet20", "plain15", "tv_resnet18"])
def test_digits_shaped_networks(name):
    net = build_network(name, in_channels=1, num_classes=10).eval()
    x = torch.randn(3, 1, 8, 8) if not name.startswith("tv_") else torch.randn(3, 1, 32, 32)
    assert net(x).shape == (3, 10)


def test_resnet110_block_list_matches_the_paper():
    infos = build_network("resnet110").block_infos()
    assert len(infos) == 54
    assert [i.index + 1 for i in infos if i.changes_shape] == [19, 37]  # 1-based, PAPERS.md
    assert [i.stage for i in infos] == [0] * 18 + [1] * 18 + [2] * 18
    assert all(i.deletable and i.residual for i in infos)


def test_plain_net_has_fifteen_layers_three_fixed():
    infos = build_network("plain15").block_infos()
    assert len(infos) == 15
    assert [i.index for i in infos if not i.deletable] == [0, 5, 10]
    assert not any(i.residual for i in infos)


def test_bottleneck_depths():
    assert build_network("resnet164").num_blocks == 54
    assert build_network("resnet1001").num_blocks == 333


def test_config_round_trips_through_json():
    cfg = network_config("resnet56", unit="c", shortcut="exclusive_gating", in_channels=1, widths=(8, 16, 32))
    again = NetConfig.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(cfg.to_json())["widths"] == [8, 16, 32]
    a, b = build_network(cfg), build_network(again)
    assert a.state_dict().keys() == b.state_dict().keys()


@pytest.mark.parametrize("bad, message", [
    (dict(depth=111), r"6n\+2"),
    (dict(unit="f"), "unit"),
    (dict(option="C"), "option"),
    (dict(shortcut="magic"), "shortcut"),
    (dict(in_channels=0), "in_channels"),
])
def test_bad_configs_are_refused_with_the_field_named(bad, message):
    with pytest.raises(ValueError, match=message):
        network_config("resnet20", **bad)


def test_unknown_network_and_field():
    with pytest.raises(ValueError, match="unknown network 'resnet21'"):
        network_config("resnet21")
    with pytest.raises(ValueError, match="unknown network field"):
        NetConfig.from_dict({"depthh": 20})


def _layer_types(seq):
    return [type(m).__name__ for m in seq]


@pytest.mark.parametrize("unit, branch, post", [
    ("a", ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"], ["ReLU"]),
    ("b", ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d"], ["BatchNorm2d", "ReLU"]),
    ("c", ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"], []),
    ("d", ["ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d"], []),
    ("e", ["BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"], []),
])
def test_residual_unit_variants_follow_identity_mappings_fig4(unit, branch, post):
    block = build_network("resnet20", unit=unit).blocks[1]
    assert _layer_types(block.branch) == branch
    post_types = _layer_types(block.post_op) if isinstance(block.post_op, torch.nn.Sequential) else (
        [] if type(block.post_op).__name__ == "Identity" else [type(block.post_op).__name__])
    assert post_types == post


def test_full_preactivation_ends_with_bn_relu():
    head = build_network("preact_resnet20").head
    assert _layer_types(head)[:2] == ["BatchNorm2d", "ReLU"]


def test_option_a_and_b_shortcuts_at_downsampling():
    a = build_network("resnet20", option="A").blocks[3]
    b = build_network("resnet20", option="B").blocks[3]
    assert isinstance(a.shortcut, SubsamplePad)
    assert _layer_types(b.shortcut) == ["Conv2d", "BatchNorm2d"]
    x = torch.randn(2, 16, 8, 8)
    out = a.skip(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])  # zero padding split around the originals
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


def test_gating_shortcuts_start_near_the_shortcut():
    net = build_network("resnet20", shortcut="exclusive_gating").eval()
    block = net.blocks[1]
    x = torch.randn(2, 16, 8, 8)
    g = block.gate(x)
    assert g.mean() < 0.01  # b = -6: sigmoid(-6) = 0.0025
    s, r = block.parts(x)
    assert torch.allclose(s, (1 - g) * x)
    assert torch.allclose(r, g * block.branch(x))


def test_constant_scaling_and_dropout_shortcuts():
    block = build_network("resnet20", shortcut="scaling").eval().blocks[1]
    x = torch.randn(2, 16, 8, 8)
    s, r = block.parts(x)
    assert torch.allclose(s, 0.5 * x) and torch.allclose(r, 0.5 * block.branch(x))
    drop = build_network("resnet20", shortcut="dropout").blocks[1].train()
    s, _ = drop.parts(torch.ones(1, 16, 8, 8))
    assert set(s.unique().tolist()) == {0.0, 2.0}  # inverted dropout with p = 0.5, over 1,024 values
    drop.eval()
    s, _ = drop.parts(torch.ones(1, 16, 8, 8))
    assert torch.equal(s, torch.ones(1, 16, 8, 8))  # no dropout at test time


def test_conv_shortcut_is_a_1x1_conv_everywhere():
    net = build_network("resnet20", shortcut="conv")
    assert all(isinstance(b.shortcut, torch.nn.Conv2d) and b.shortcut.kernel_size == (1, 1) for b in net.blocks)
    assert not any(b.identity_skip for b in net.blocks)


def test_stochastic_depth_survival_decays_linearly_and_scales_at_test_time():
    net = build_network("resnet110", stochastic_depth=True)
    p = [b.survival for b in net.blocks]
    assert p == pytest.approx([1 - (i + 1) / 54 * 0.5 for i in range(54)])  # p_l = 1 - (l/L)(1 - p_L)
    block = net.blocks[-1]
    x = torch.randn(2, 64, 4, 4)
    # BN differs between modes, so each mode is compared against the branch itself in that mode
    block.train()
    _, r_train = block.parts(x)
    assert torch.allclose(r_train, block.branch(x))  # training: the whole branch, when it survives
    block.eval()
    _, r_eval = block.parts(x)
    assert torch.allclose(r_eval, 0.5 * block.branch(x))
    assert not torch.allclose(r_eval, block.branch(x))


def test_torchvision_adapter_shares_the_users_modules():
    import torchvision
    from workloads.models import from_torchvision
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    net = from_torchvision(model).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5)
    assert net.blocks[0].block is model.layer1[0]
    assert [i.changes_shape for i in net.block_infos()] == [False, False, True, False, True, False, True, False]

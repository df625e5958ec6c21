"""Every model family ``adapt`` knows, as residual units (adapters.py and the family adapters): each adapter checks
itself against the model's own tensors and refuses a unit that lost its branch, naming it; the engine equals one
full forward per plan (every single deletion, random deletions, reorders within a group); gradients by path length
equal a float64 backward with the other branches detached, layers without a shortcut on every path. Tiny models
built with each library's own classes, random weights: nothing downloaded."""
from __future__ import annotations

import copy
import importlib
import math
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable

import pytest
import torch
from torch import nn

from conftest import randomise_bn
from registry_cases import assert_engine_equals_forward
from workloads.models.adapters.check import AdapterError, check_adapter, describe
from workloads.models.adapters import ADAPTERS, TIMM_FAMILIES, TORCHVISION_BUILDERS, adapt
from workloads.surgery import (delete_blocks, gradient_norms, intact,
                               naive_gradient_norm, random_deletion, random_swaps, swap_pairs)


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]   # a tiny model of the family, from the library's own classes
    image_size: int                  # pixels: enough for every stride of the model
    adapter: str                     # the adapter module ``adapt`` must pick


def _resnext():
    from torchvision.models.resnet import Bottleneck, ResNet
    return ResNet(Bottleneck, [1, 3, 1, 1], groups=2, width_per_group=8, num_classes=10)  # grouped 3x3: no chain


def _regnet():
    from torchvision.models.regnet import BlockParams, RegNet
    params = BlockParams.from_init_params(depth=4, w_0=8, w_a=4.0, w_m=2.0, group_width=4, se_ratio=0.25)
    return RegNet(params, stem_width=8, num_classes=10)


def _mobilenet_v2():
    from torchvision.models import MobileNetV2
    return MobileNetV2(num_classes=10, width_mult=0.25, inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2],
                                                                                     [6, 32, 3, 2]])


def _mobilenet_v3():
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3
    c = partial(InvertedResidualConfig, width_mult=1.0)  # in, kernel, expanded, out, SE, activation, stride, dilation
    return MobileNetV3([c(8, 3, 8, 8, True, "RE", 2, 1), c(8, 3, 24, 16, False, "RE", 2, 1),
                        c(16, 3, 32, 16, False, "HS", 1, 1), c(16, 5, 32, 16, True, "HS", 1, 1)],
                       last_channel=32, num_classes=10)


def _efficientnet():
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig
    # expand ratio, kernel, stride, in, out, layers
    return EfficientNet([MBConvConfig(1, 3, 1, 8, 8, 1), MBConvConfig(4, 3, 2, 8, 16, 3)], dropout=0.2,
                        stochastic_depth_prob=0.2, num_classes=10)


def _efficientnet_v2():
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig
    return EfficientNet([FusedMBConvConfig(1, 3, 1, 8, 8, 2), FusedMBConvConfig(4, 3, 2, 8, 16, 2),
                         MBConvConfig(4, 3, 2, 16, 24, 2)], dropout=0.2, num_classes=10, last_channel=32)


def _convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 2)], stochastic_depth_prob=0.1, num_classes=10)


def _swin(v2: bool):
    from torchvision.models.swin_transformer import PatchMergingV2, SwinTransformer, SwinTransformerBlockV2
    extra = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(patch_size=[2, 2], embed_dim=8, depths=[2, 2], num_heads=[1, 2], window_size=[2, 2],
                           num_classes=10, **extra)


def _timm_resnet():
    from timm.models.resnet import BasicBlock, ResNet
    return ResNet(block=BasicBlock, layers=(3, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=10)  # a 64-wide stem


def _timm_se_resnet_d():
    """Squeeze-excitation, stochastic depth, a deep stem and average-pool shortcuts: a branch that is no chain."""
    from timm.models.resnet import Bottleneck, ResNet
    return ResNet(block=Bottleneck, layers=(2, 1, 1, 1), channels=(4, 8, 16, 32), stem_width=8, stem_type="deep",
                  avg_down=True, block_args=dict(attn_layer="se"), drop_path_rate=0.1, num_classes=10)


def _timm_convnext():
    from timm.models.convnext import ConvNeXt
    return ConvNeXt(depths=(2, 1, 1, 1), dims=(8, 16, 24, 32), ls_init_value=0.5, drop_path_rate=0.1,
                    num_classes=10)


def _timm_convnext_v2():
    """ConvNeXt-V2: global response norm in its MLP, here as 1x1 convs on channels-first tensors."""
    from timm.models.convnext import ConvNeXt
    return ConvNeXt(depths=(2, 1, 1, 1), dims=(8, 16, 24, 32), use_grn=True, conv_mlp=True, ls_init_value=None,
                    num_classes=10)


def _timm_vit():
    from timm.models.vision_transformer import VisionTransformer
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2,
                             init_values=0.5, drop_path_rate=0.1, num_classes=10)


FAMILIES = [
    Family("tv_resnext", _resnext, 32, "torchvision_resnet"),
    Family("tv_regnet", _regnet, 32, "regnet"),
    Family("tv_mobilenet_v2", _mobilenet_v2, 32, "inverted_residual"),
    Family("tv_mobilenet_v3", _mobilenet_v3, 32, "inverted_residual"),
    Family("tv_efficientnet", _efficientnet, 32, "inverted_residual"),
    Family("tv_efficientnet_v2", _efficientnet_v2, 32, "inverted_residual"),
    Family("tv_convnext", _convnext, 32, "convnext"),
    Family("tv_swin", partial(_swin, False), 16, "swin"),
    Family("tv_swin_v2", partial(_swin, True), 16, "swin"),
    Family("timm_resnet", _timm_resnet, 32, "timm_resnet"),
    Family("timm_se_resnet_d", _timm_se_resnet_d, 32, "timm_resnet"),
    Family("timm_convnext", _timm_convnext, 32, "convnext"),
    Family("timm_convnext_v2", _timm_convnext_v2, 32, "convnext"),
    Family("timm_vit", _timm_vit, 16, "timm_vit"),
]
PARAMS = [pytest.param(f, id=f.name) for f in FAMILIES]


def tiny(family: Family, seed: int = 0) -> nn.Module:
    """The family's tiny model in eval mode, every constant initialisation (norm weights, zero heads, layer scales
    of 1e-6) replaced by random values so that every unit matters and plans differ."""
    torch.manual_seed(seed)
    model = randomise_bn(family.build(), seed)
    with torch.no_grad():
        for p in model.parameters():
            flat = p.flatten()
            if flat.numel() > 1 and bool((flat == flat[0]).all()):
                p.copy_(torch.randn_like(p) * 0.3 if flat[0] == 0 else torch.rand_like(p) + 0.5)
    return model.eval()


def batch(family: Family, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    size = family.image_size
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("family", PARAMS)
def test_adapt_picks_the_family_adapter_and_it_checks_itself(family):
    model = tiny(family)
    net = adapt(model).eval()
    units = [b for b in net.blocks if b.residual]
    assert units and {type(b).__module__.rsplit(".", 1)[-1] for b in units} == {family.adapter}
    check_adapter(model, net, batch(family)[0])
    assert {id(p) for p in net.parameters()} <= {id(p) for p in model.parameters()}  # shared, never copied
    for info in net.block_infos():  # a layer without a shortcut changes the shape and stays put
        assert info.residual or (info.changes_shape and not info.deletable and info.group is None)


@pytest.mark.parametrize("family", PARAMS)
def test_a_unit_that_lost_its_branch_is_refused_naming_it(family):
    model = tiny(family)
    net = adapt(model)
    last = max(i for i, b in enumerate(net.blocks) if b.residual)
    original = net.blocks[last].parts
    net.blocks[last].parts = lambda x: (original(x)[0], torch.zeros_like(original(x)[1]))
    with pytest.raises(AdapterError) as err:
        check_adapter(model, net, batch(family, 4)[0])
    assert str(err.value).startswith(describe(net, last) + ":") and "\n" not in str(err.value)


@pytest.mark.parametrize("family", PARAMS)
def test_engine_equals_one_forward_per_plan(family):
    x, y = batch(family)
    net = adapt(tiny(family)).eval()
    infos = net.block_infos()
    deletable = [i.index for i in infos if i.deletable]
    plans = [intact(infos)] + [delete_blocks(infos, [i]) for i in deletable]
    plans += [random_deletion(infos, k, s) for k in (2, len(deletable) // 2) for s in range(2)]
    pairs = len(swap_pairs(infos))
    assert pairs, "a tiny model must leave units of one shape to swap"
    plans += [random_swaps(infos, k, s) for k in range(1, min(2, pairs) + 1) for s in range(2)]
    for p in plans:  # reorders move units within their group only; shape-changing layers stay put
        assert [infos[b].group for b in p.order] == [i.group for i in infos]
    assert any(p.order != tuple(sorted(p.order)) for p in plans)
    got = assert_engine_equals_forward(net, plans, x, y)
    assert len({round(r.loss, 6) for r in got}) > len(plans) // 2  # the plans really differ


@pytest.mark.parametrize("family", PARAMS)
def test_gradients_by_path_length_equal_a_float64_backward(family):
    x, y = batch(family, 6)
    net = adapt(tiny(family)).eval()
    ref = copy.deepcopy(net).double().requires_grad_(False)
    residual = [i.index for i in net.block_infos() if i.residual]
    n = len(residual)
    draws = [(k, s) for k in sorted({0, 1, n // 2, n}) for s in range(2)]
    for r in gradient_norms(net, x, y, draws):
        assert len(r.chosen) == r.k and set(r.chosen) <= set(residual)  # k counts residual units only
        want = naive_gradient_norm(ref, x.double(), y, r.chosen)
        assert r.log10_norm == pytest.approx(math.log10(want), abs=2e-5), (r.k, r.chosen)


def test_models_of_no_known_family_are_refused_in_one_line():
    import torchvision
    with torch.device("meta"):  # the class is all adapt looks at: no 130M weights to draw
        vgg = torchvision.models.vgg11()
    with pytest.raises(AdapterError) as err:
        adapt(vgg)
    message = str(err.value)
    assert message.startswith("VGG is not a residual network unravel can adapt (known: ") and "\n" not in message
    assert "timm ConvNeXt" in message and "torchvision SwinTransformer" in message


@pytest.mark.parametrize("module, function", sorted(set(ADAPTERS.values())))
def test_each_adapter_refuses_a_model_of_another_class(module, function):
    adapter = getattr(importlib.import_module(f"workloads.models.adapters.{module}"), function)
    with pytest.raises(AdapterError, match=r"^(expected a (torchvision|timm) \w+.*, got Linear|Linear is not a causal "
                                           r"language model this adapter knows \(.*\))$"):
        adapter(nn.Linear(2, 2))


def _timm_vit_with(block: str) -> nn.Module:
    import timm.models.vision_transformer as vit
    return vit.VisionTransformer(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=1,
                                 block_fn=getattr(vit, block))


def _timm_selective_kernel_resnet() -> nn.Module:
    from timm.models.resnet import ResNet
    from timm.models.sknet import SelectiveKernelBasic
    return ResNet(block=SelectiveKernelBasic, layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), num_classes=2)


def _convnext_with_foreign_block() -> nn.Module:
    from torchvision.models.convnext import ConvNeXt, CNBlockConfig
    model = ConvNeXt([CNBlockConfig(8, None, 2)])
    model.features[1][1] = nn.Identity()
    return model


@pytest.mark.parametrize("build, reason", [
    (partial(_timm_vit_with, "ResPostBlock"), "ResPostBlock, not timm's pre-norm Block"),
    (partial(_timm_vit_with, "ParallelScalingBlock"), "ParallelScalingBlock, not timm's pre-norm Block"),
    (_timm_selective_kernel_resnet, "SelectiveKernelBasic, not timm's BasicBlock or Bottleneck"),
    (_convnext_with_foreign_block, "a stage holds a Identity beside its CNBlocks"),
], ids=["timm-res-post-norm", "timm-parallel", "timm-selective-kernel", "convnext-foreign-block"])
def test_variants_an_adapter_cannot_reproduce_are_refused(build, reason):
    with pytest.raises(AdapterError, match=reason) as err:
        adapt(build())
    assert "\n" not in str(err.value)


def test_the_lists_a_registry_shows_name_real_builders_and_classes():
    import torchvision
    assert all(callable(getattr(torchvision.models, name)) for name in TORCHVISION_BUILDERS)
    assert {"resnext50_32x4d", "wide_resnet50_2", "regnet_y_400mf", "mobilenet_v3_small", "efficientnet_v2_s",
            "convnext_tiny", "swin_v2_t", "vit_b_16"} <= set(TORCHVISION_BUILDERS)
    for path in TIMM_FAMILIES:
        module, cls = path.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), cls), type)


def test_adapting_a_torchvision_model_never_imports_timm(monkeypatch):
    """The dispatcher reads class names: timm is imported only for a model that came from it."""
    class NoTimm:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.split(".")[0] == "timm":
                raise ImportError(f"{name} was imported")
    for name in [m for m in sys.modules if m.split(".")[0] == "timm"]:
        monkeypatch.delitem(sys.modules, name)  # put back when the test ends
    monkeypatch.setattr(sys, "meta_path", [NoTimm()] + sys.meta_path)
    for family in FAMILIES:
        if family.name.startswith("tv_"):
            adapt(family.build())
    with pytest.raises(ImportError, match="timm was imported"):  # the guard itself works
        importlib.import_module("timm")

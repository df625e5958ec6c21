"""Build a network by name from a config that serialises to JSON and back.

Names (timm-style registry): ``resnet{20,32,44,56,110}`` (basic, unit a),
``preact_resnet{20,...,110}`` (unit e), ``resnet{164,1001}`` / ``preact_resnet{164,1001}``
(bottleneck), ``plain15``; networks a researcher brings: torchvision's ``tv_<builder>`` (``tv_resnet50``,
``tv_resnext50_32x4d``, ``tv_vit_b_16``, ``tv_convnext_tiny``, ``tv_swin_t``, ...; ``tv_VisionTransformer``
and ``tv_SwinTransformer`` take every constructor argument from ``arch_options``), ``timm`` (any timm model
of a family the adapters know, named by ``timm_arch``) and ``hf_causal_lm`` (a Hugging Face causal language
model, its config read from the user's folder). Every field of NetConfig can override a name's defaults, e.g.
``network_config("resnet110", unit="c", shortcut="exclusive_gating", in_channels=1)``.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from workloads.models.adapters import adapt
from workloads.models.adapters.hf_loading import model_from_config
from workloads.models.blocks import BlockNetwork
from workloads.models.config import TORCHVISION_ARCHS, NetConfig
from workloads.models.plain import plain_net
from workloads.models.resnet import cifar_resnet


def _registry() -> dict[str, dict]:
    reg: dict[str, dict] = {}
    for depth in (20, 32, 44, 56, 110):
        reg[f"resnet{depth}"] = dict(arch="resnet", depth=depth)
        reg[f"preact_resnet{depth}"] = dict(arch="resnet", depth=depth, unit="e")
    for depth in (164, 1001):
        reg[f"resnet{depth}"] = dict(arch="resnet", depth=depth, bottleneck=True)
        reg[f"preact_resnet{depth}"] = dict(arch="resnet", depth=depth, bottleneck=True, unit="e")
    reg["plain15"] = dict(arch="plain", depth=15, widths=(64, 128, 256), layers_per_stage=5)
    for tv in TORCHVISION_ARCHS:
        reg[f"tv_{tv}"] = dict(arch="torchvision", torchvision_arch=tv, image_size=224, num_classes=1000)
    reg["timm"] = dict(arch="timm", image_size=224, num_classes=1000)
    reg["hf_causal_lm"] = dict(arch="hf")
    return reg


NETWORKS: dict[str, dict] = _registry()


def network_config(name: str, **overrides) -> NetConfig:
    """The config for a registered name, with any field overridden."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    fields = {**NETWORKS[name], **overrides}
    fields.setdefault("name", name)
    return NetConfig.from_dict(fields)


ADAPTED = ("torchvision", "timm", "hf")   # networks built by another library and adapted into units


def source_model(cfg: NetConfig) -> torch.nn.Module:
    """The model as its own library builds it (its own parameter names, to load a user's weights):
    torchvision's, timm's or Hugging Face's."""
    if cfg.arch == "torchvision":
        import torchvision  # a second to import: only for torchvision networks
        builder = getattr(torchvision.models, cfg.torchvision_arch)
        options = cfg.options if isinstance(builder, type) else {"weights": None, **cfg.options}
        with _regnet_widths_on_cpu() if cfg.torchvision_arch.startswith("regnet") else nullcontext():
            model = builder(num_classes=cfg.num_classes, **options)
        if cfg.in_channels != 3:
            model.conv1 = type(model.conv1)(cfg.in_channels, 64, 7, 2, 3, bias=False)
        return model
    if cfg.arch == "timm":
        import timm
        return timm.create_model(cfg.timm_arch, pretrained=False, num_classes=cfg.num_classes, **cfg.options)
    if cfg.arch == "hf":
        return model_from_config(cfg.hf_config, meta=torch.get_default_device().type == "meta")
    raise ValueError(f"arch {cfg.arch} is unravel's own, not built by another library")


@contextmanager
def _regnet_widths_on_cpu():
    """RegNet's builders compute their stage widths with tensors; on the meta device (a skeleton) those would
    hold no values, so that arithmetic alone runs on the CPU."""
    from torchvision.models.regnet import BlockParams
    original = BlockParams.__dict__["from_init_params"]

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return original.__func__(cls, *args, **kwargs)
    BlockParams.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        BlockParams.from_init_params = original


def skeleton(config: NetConfig | str, **overrides) -> BlockNetwork:
    """The network's structure without its memory (on the meta device): to count blocks and make
    plans for a spec, even of a network too large to allocate."""
    with torch.device("meta"):
        return build_network(config, **overrides)


def build_network(config: NetConfig | str, **overrides) -> BlockNetwork:
    """A freshly initialised network for a config or a registered name."""
    cfg = network_config(config, **overrides) if isinstance(config, str) else config
    if cfg.arch == "plain":
        return plain_net(cfg)
    if cfg.arch in ADAPTED:
        return adapt(source_model(cfg))
    return cifar_resnet(cfg)

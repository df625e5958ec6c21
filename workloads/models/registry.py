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
from typing import Annotated, Any, Literal

import torch
from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass

from workloads.fields import FORBID, Flag, JsonConfig, count, number
from workloads.models.adapters import TORCHVISION_BUILDERS
from workloads.models.blocks import BlockNetwork
from workloads.models.plain import plain_net
from workloads.models.resnet import UNITS, blocks_per_stage, cifar_resnet
from workloads.models.shortcuts import SHORTCUT_VARIANTS

# torchvision's builders, and two classes built from arch_options alone (a ViT or Swin of any size)
TORCHVISION_ARCHS = (*TORCHVISION_BUILDERS, "VisionTransformer", "SwinTransformer")
# the names that existed before arch_options, timm_arch and hf_config: a config that leaves those at their
# defaults serialises without them, so the run ids of every earlier spec stay what they were
_LATER_FIELDS = {"arch_options": (), "timm_arch": "", "hf_config": ""}
# builder arguments unravel sets itself: the classes come from the data, and weights only from a checkpoint file
# (a builder's pretrained weights would be downloaded)
_NOT_ARCH_OPTIONS = {"num_classes": "the classes come from the data (data.num_classes)",
                     "weights": "weights come from the model's checkpoint file, never downloaded",
                     "pretrained": "weights come from the model's checkpoint file, never downloaded"}


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def _pairs(value: Any) -> Any:
    """A mapping of keyword arguments as sorted (name, value) pairs, lists as tuples: a frozen config hashes."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _hashable(v)) for k, v in value.items()))
    return value


@dataclass(frozen=True, config=FORBID)
class NetConfig(JsonConfig):
    """Everything needed to rebuild a network; stored beside every checkpoint and result."""

    _noun = "network"

    name: str = "resnet110"
    arch: Literal["resnet", "plain", "torchvision", "timm", "hf"] = "resnet"
    depth: count(2, 1202) = 110
    bottleneck: Flag = False
    unit: Literal[UNITS] = "a"                       # residual-unit variant (a)-(e), Identity Mappings Fig. 4
    option: Literal["A", "B"] = "A"                  # shortcut at shape changes: A (subsample+pad) | B (1x1 conv)
    shortcut: Literal[SHORTCUT_VARIANTS] = "identity"    # Identity Mappings Fig. 2 variants
    gate_bias: number(-100, 100) = -6.0              # initial gate bias b for gating shortcuts
    scale: number(0, 100) = 0.5                      # constant scaling of both branches
    dropout_p: number(0, 1) = 0.5                    # dropout on the shortcut, below 1
    stochastic_depth: Flag = False                   # Huang et al. 2016: linear decay of survival
    final_survival: number(0, 1) = 0.5               # p_L of the last block, above 0
    widths: Annotated[tuple[count(1, 2048), ...], Field(min_length=1, max_length=8)] = (16, 32, 64)
    layers_per_stage: count(1, 100) = 5              # plain net only
    torchvision_arch: str = ""                       # torchvision only, e.g. resnet50
    in_channels: count(1, 4096) = 3
    num_classes: count(1, 10**6) = 10
    image_size: count(1, 8192) = 32                  # informational: networks pool globally
    # torchvision/timm: keyword arguments of the builder (a mapping in a spec; kept as sorted pairs so the
    # config hashes), e.g. {image_size: 32, patch_size: 8, num_layers: 4, ...} for tv_VisionTransformer
    arch_options: Annotated[tuple[tuple[str, Any], ...], BeforeValidator(_pairs, json_schema_input_type=dict)] = ()
    timm_arch: str = ""                              # timm only: the model's name, e.g. convnext_tiny
    hf_config: str = ""                              # hf only: the model's config.json, as JSON text

    def to_dict(self) -> dict:
        d = super().to_dict()
        for key, default in _LATER_FIELDS.items():
            if d[key] == default or d[key] == list(default):
                del d[key]
        if "arch_options" in d:
            d["arch_options"] = self.options
        return d

    @property
    def options(self) -> dict:
        """arch_options as keyword arguments."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.arch_options}

    def __post_init__(self) -> None:
        """The rules that tie fields together (bounds are in the field types)."""
        if self.arch == "resnet":
            blocks_per_stage(self.depth, self.bottleneck)
        if self.arch == "torchvision" and self.torchvision_arch not in TORCHVISION_ARCHS:
            raise ValueError(f"torchvision_arch must be one of {', '.join(TORCHVISION_ARCHS)}, "
                             f"got {self.torchvision_arch!r}")
        if self.arch_options and self.arch not in ("torchvision", "timm"):
            raise ValueError(f"arch_options applies only to torchvision and timm networks, not arch {self.arch}")
        for key, why in _NOT_ARCH_OPTIONS.items():
            if key in dict(self.arch_options):
                raise ValueError(f"arch_options.{key} cannot be set: {why}")
        if self.arch == "timm" and not self.timm_arch:
            raise ValueError("timm_arch must name the timm model (e.g. convnext_tiny)")
        if self.arch == "hf" and not self.hf_config:
            raise ValueError("hf_config must hold the model's config.json (read from its folder)")
        if self.arch in ("timm", "torchvision") and self.in_channels != 3 and not self.torchvision_arch.startswith(
                ("resnet", "wide_resnet", "resnext")):
            raise ValueError(f"{self.torchvision_arch or self.timm_arch} takes 3-channel images, the data has "
                             f"{self.in_channels}")
        if self.final_survival == 0.0:
            raise ValueError("final_survival must be above 0 (a last block that never runs)")
        if self.dropout_p == 1.0:
            raise ValueError("dropout_p must be below 1 (a shortcut that is always dropped)")


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
        from workloads.models.adapters.hf_loading import model_from_config
        return model_from_config(cfg.hf_config, meta=torch.get_default_device().type == "meta")
    raise ValueError(f"arch {cfg.arch} is unravel's own, not built by another library")


torchvision_model = source_model   # the name the ResNet-only code knew


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
        from workloads.models.adapters import adapt
        return adapt(source_model(cfg))
    return cifar_resnet(cfg)

"""NetConfig: everything needed to rebuild a network, serialised beside every checkpoint and result.

The config knows the rules that tie its fields together (a CIFAR ResNet's depth, the torchvision builders a
registry can name) but builds nothing: the builders (``resnet``, ``plain``, ``adapters``) read it, and the
registry (``registry``) names configs and hands each to its builder.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field
from pydantic.dataclasses import dataclass

from workloads.fields import FORBID, Flag, JsonConfig, count, number
from workloads.models.adapters import TORCHVISION_BUILDERS
from workloads.models.shortcuts import SHORTCUT_VARIANTS

UNITS = ("a", "b", "c", "d", "e")   # residual-unit variants (a)-(e), Identity Mappings Fig. 4 (resnet.py)
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


def blocks_per_stage(depth: int, bottleneck: bool) -> int:
    """Units per stage of a CIFAR ResNet of this depth (6n+2 basic, 9n+2 bottleneck: 3 stages of n units of 2
    or 3 layers, plus the stem and the classifier); ValueError for any other depth."""
    per_block = 9 if bottleneck else 6
    if depth < per_block + 2 or (depth - 2) % per_block:
        kind = "9n+2 (bottleneck)" if bottleneck else "6n+2 (basic)"
        raise ValueError(f"depth {depth} is not of the form {kind}")
    return (depth - 2) // per_block

"""Build a network by name from a config that serialises to JSON and back.

Names (timm-style registry): ``resnet{20,32,44,56,110}`` (basic, unit a),
``preact_resnet{20,...,110}`` (unit e), ``resnet{164,1001}`` / ``preact_resnet{164,1001}``
(bottleneck), ``plain15``, and torchvision's ``tv_resnet{18,34,50,101,152}`` /
``tv_wide_resnet50_2``. Every field of NetConfig can override a name's defaults, e.g.
``network_config("resnet110", unit="c", shortcut="exclusive_gating", in_channels=1)``.
"""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from pydantic.dataclasses import dataclass

from ..fields import FORBID, Flag, JsonConfig, count, number
from .blocks import BlockNetwork
from .plain import plain_net
from .resnet import UNITS, blocks_per_stage, cifar_resnet
from .shortcuts import SHORTCUT_VARIANTS

TORCHVISION_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2")


@dataclass(frozen=True, config=FORBID)
class NetConfig(JsonConfig):
    """Everything needed to rebuild a network; stored beside every checkpoint and result."""

    _noun = "network"

    name: str = "resnet110"
    arch: Literal["resnet", "plain", "torchvision"] = "resnet"
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

    def __post_init__(self) -> None:
        """The rules that tie fields together (bounds are in the field types)."""
        if self.arch == "resnet":
            blocks_per_stage(self.depth, self.bottleneck)
        if self.arch == "torchvision" and self.torchvision_arch not in TORCHVISION_ARCHS:
            raise ValueError(f"torchvision_arch must be one of {', '.join(TORCHVISION_ARCHS)}, "
                             f"got {self.torchvision_arch!r}")
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
    return reg


NETWORKS: dict[str, dict] = _registry()


def network_config(name: str, **overrides) -> NetConfig:
    """The config for a registered name, with any field overridden."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    fields = {**NETWORKS[name], **overrides}
    fields.setdefault("name", name)
    return NetConfig.from_dict(fields)


def torchvision_model(cfg: NetConfig) -> torch.nn.Module:
    """The torchvision model itself (its own parameter names, to load a user's state_dict)."""
    import torchvision  # a second to import: only for torchvision networks
    model = getattr(torchvision.models, cfg.torchvision_arch)(weights=None, num_classes=cfg.num_classes)
    if cfg.in_channels != 3:
        model.conv1 = type(model.conv1)(cfg.in_channels, 64, 7, 2, 3, bias=False)
    return model


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
    if cfg.arch == "torchvision":
        from .torchvision_adapter import from_torchvision
        return from_torchvision(torchvision_model(cfg))
    return cifar_resnet(cfg)

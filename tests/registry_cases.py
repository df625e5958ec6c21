"""Every registered network made tiny for the tests: the one place that says how.

timm's way: the cases are derived from ``workloads.models.NETWORKS``, so a network is tested by
being registered. Each registry entry belongs to a family (CIFAR ResNet with basic or bottleneck
blocks, the plain net, torchvision ResNets); each family has one rule that makes it cheap: narrow
widths, or, where the widths are not ours to choose (torchvision), a small input. A name whose
family has no rule fails at collection (``NoTinyRule``), never a skip.

Which cases:
- every registered name at its registered settings;
- where the Identity Mappings variants apply (CIFAR ResNets, ``TinyRule.variant_depth``): every
  residual unit (a)-(e) x every shortcut variant, and each unit with option B and with stochastic
  depth, for each block kind (basic, bottleneck) at that kind's ``variant_depth``. Depth only
  repeats the same block, so the product is not repeated over the registered depths (ResNet-1001
  x 40 variants would cost minutes); each registered depth runs at its own settings.
Two cases that build the same network (preact_resnet20 with unit a is resnet20) run once. The deep
networks (ResNet-1001 and its pre-activation twin) are shared out between the engine and gradient
oracles (``registry_cases(deep_share=...)``): each runs at full depth in one of them.

Large networks (``BIG_BLOCKS``, ``BIG_PARAMETERS``) still run, with fewer examples, plans and draws
(``Budget``).

Networks of another library (torchvision's ~50 builders, timm, Hugging Face) are adapted by one adapter per
family (``workloads.models.adapters``), and members of a family share its adapter and block classes: the
cases run one or two representatives per family (``ADAPTED_CASES``; the ViT and Swin classes made tiny through
``arch_options``), while tests/test_families.py runs every adapter on a tiny model of its own. The language
models' inputs are tokens, not images: their family's rule sends them to tests/test_language_models.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pytest
import torch

from workloads.models import NETWORKS, BlockNetwork, network_config, skeleton
from workloads.models.config import UNITS
from workloads.models.shortcuts import SHORTCUT_VARIANTS


class NoTinyRule(LookupError):
    """A registered network that no rule here knows how to make tiny: write one."""


@dataclass(frozen=True)
class TinyRule:
    widths: tuple[int, ...] | None   # stage widths; None: the network's own (torchvision fixes them)
    image_size: int                  # input height and width, pixels
    variant_depth: int | None = None  # the depth the unit x shortcut product runs at; None: no variants
    tested_in: str = ""              # a family whose inputs are not images: the test module that covers it


# one rule per family. Bottleneck blocks are 4x their stage width: (2, 4, 8) is 8/16/32 channels.
# Depths 20 and 29 are 3 blocks per stage, the fewest that leave same-shape blocks to swap.
RULES = {
    "cifar_basic": TinyRule(widths=(4, 8, 16), image_size=8, variant_depth=20),
    "cifar_bottleneck": TinyRule(widths=(2, 4, 8), image_size=8, variant_depth=29),
    "plain": TinyRule(widths=(8, 16, 32), image_size=8),
    "torchvision": TinyRule(widths=None, image_size=32),  # five stride-2 steps: 32 px end at 1x1
    "timm": TinyRule(widths=None, image_size=32),
    "hf": TinyRule(widths=None, image_size=0, tested_in="tests/test_language_models.py"),
}


def _pairs(**options) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))


# adapted networks: which registered names run, and at which settings (see the module's docstring)
ADAPTED_CASES: dict[str, list[tuple]] = {
    # basic and bottleneck blocks, grouped convolutions (resnet34/101/152 and the wide ResNets repeat these classes)
    **{f"tv_{name}": [()] for name in ("resnet18", "resnet50", "resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf",
                                       "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny")},
    "tv_VisionTransformer": [(("arch_options", _pairs(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                                                      hidden_dim=16, mlp_dim=32)),)],
    "tv_SwinTransformer": [(("arch_options", _pairs(patch_size=[2, 2], embed_dim=8, depths=[2, 2],
                                                    num_heads=[1, 2], window_size=[4, 4])),)],
    "timm": [(("timm_arch", "resnet18"),),  # test_resnet has one block per stage: none to swap
             (("timm_arch", "test_convnext"),),
             (("arch_options", _pairs(img_size=32)), ("timm_arch", "test_vit"))],
}

# a network over either bound is big: fewer examples, plans and draws (it still runs)
BIG_BLOCKS = 40
BIG_PARAMETERS = 10_000_000


def family(name: str) -> str:
    entry = NETWORKS[name]
    if entry.get("arch") == "resnet":
        return "cifar_bottleneck" if entry.get("bottleneck") else "cifar_basic"
    return str(entry.get("arch"))


def rule(name: str) -> TinyRule:
    fam = family(name)
    if fam not in RULES:
        raise NoTinyRule(f"registered network {name!r} (family {fam!r}) has no rule in tests/registry_cases.py "
                         f"that makes it tiny: add one to RULES")
    return RULES[fam]


@dataclass(frozen=True)
class Budget:
    """How much of a study the equivalence tests run on one network."""

    examples: int            # test images for the engine
    singles: int             # single-block deletions, spread from the first block to the last
    draws: int               # seeds per k of random deletions and swaps
    swaps: int               # random swaps for k = 1..swaps
    gradient_examples: int   # batch of the gradient test
    gradient_seeds: int      # draws per path length k in {0, 1, n/2, n-1, n}


SMALL = Budget(examples=24, singles=9, draws=2, swaps=2, gradient_examples=8, gradient_seeds=2)
BIG = Budget(examples=6, singles=2, draws=1, swaps=1, gradient_examples=2, gradient_seeds=1)

# randomise_bn's random running statistics compound block after block: past this many blocks the
# activations overflow (ResNet-1001 reaches inf). Such networks get their BatchNorm statistics
# estimated on the test inputs, as training leaves them, and keep randomise_bn's random affine weights.
STATISTICS_FROM_DATA_BLOCKS = 100


@lru_cache(maxsize=None)
def _size(name: str, variant: tuple) -> tuple[int, int, bool]:
    net = skeleton(name, **_overrides(name, variant))  # meta device: no memory, no init
    return net.num_blocks, sum(p.numel() for p in net.parameters()), any(i.residual for i in net.block_infos())


def _overrides(name: str, variant: tuple) -> dict[str, Any]:
    widths = rule(name).widths
    return {**({"widths": widths} if widths is not None else {}), **dict(variant)}


@dataclass(frozen=True)
class Case:
    """One registered network, some NetConfig fields overridden, made tiny by its family's rule."""

    name: str
    variant: tuple[tuple[str, Any], ...] = ()

    @property
    def overrides(self) -> dict[str, Any]:
        return _overrides(self.name, self.variant)

    @property
    def id(self) -> str:
        return "-".join([self.name] + [f"{k}={v}" for k, v in self.variant])

    @property
    def residual(self) -> bool:
        """Some block has a residual branch: gradients by path length have paths to choose."""
        return _size(self.name, self.variant)[2]

    @property
    def budget(self) -> Budget:
        blocks, parameters, _ = _size(self.name, self.variant)
        return BIG if blocks > BIG_BLOCKS or parameters > BIG_PARAMETERS else SMALL

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The test images resized to this family's input size."""
        size = rule(self.name).image_size
        return images if images.shape[-1] == size else torch.nn.functional.interpolate(images, size=size)

    def build(self, inputs: torch.Tensor, seed: int = 0) -> BlockNetwork:
        """The tiny network in eval mode, with non-trivial BatchNorm statistics (see conftest.tiny)."""
        from conftest import tiny
        net = tiny(self.name, seed, **self.overrides)
        if net.num_blocks > STATISTICS_FROM_DATA_BLOCKS:
            norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average: one batch sets the statistics
            with torch.no_grad():
                net.train()(inputs)
            for m in norms:
                m.momentum = 0.1
        return net.eval()


def assert_engine_equals_forward(net: BlockNetwork, plans: list, x: torch.Tensor, y: torch.Tensor,
                                 chunk_size: int = 8) -> list:
    """The engine's results for ``plans``, each checked against one full forward of its plan: error within one
    example, the same mean loss."""
    import torch.nn.functional as F

    from workloads.surgery import evaluate_plans, forward_plan
    got = evaluate_plans(net, plans, x, y, chunk_size=chunk_size)
    with torch.no_grad():
        for plan, r in zip(plans, got, strict=True):
            logits = forward_plan(net, plan, x)
            assert abs(r.error - (logits.argmax(1) != y).float().mean().item()) <= 1 / len(y) + 1e-9, plan
            assert r.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-4, abs=1e-5), plan
    return got


@contextmanager
def single_thread():
    """Tiny tensors on one intra-op thread: on a shared 2-core machine, two threads per op spend
    more time waiting for each other than computing (observed: 0.05 s -> 3-17 s per forward)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def deep(case: Case) -> bool:
    """Deeper than STATISTICS_FROM_DATA_BLOCKS (ResNet-1001 and its pre-activation twin, 333 blocks)."""
    return _size(case.name, case.variant)[0] > STATISTICS_FROM_DATA_BLOCKS


def registry_cases(deep_share: tuple[int, int] = (0, 1)) -> list[Case]:
    """The cases; of the deep ones (``deep``), in id order, those whose index is ``i`` modulo ``of`` for
    ``deep_share=(i, of)``. The deep ones repeat a block kind their family's depth-164 and depth-29 cases
    already run, and each costs the two oracles (engine, gradients) a minute or so together on a 2-core
    machine: the oracles share them out, so each network is run at full depth (statistics from data, paths of
    hundreds of blocks) by one oracle, and the other has the other network at full depth."""
    i, of = deep_share
    cases = _all_cases()
    deep_ids = sorted(c.id for c in cases if deep(c))
    return [c for c in cases if not deep(c) or deep_ids.index(c.id) % of == i]


def _all_cases() -> list[Case]:
    cases = []
    for name in sorted(NETWORKS):
        fam_rule = rule(name)  # a family with no rule fails here, at collection, naming the network
        if fam_rule.tested_in:
            continue
        if family(name) in ("torchvision", "timm"):
            cases += [Case(name, variant) for variant in ADAPTED_CASES.get(name, ())]
        else:
            cases.append(Case(name))
    for fam, fam_rule in sorted(RULES.items()):
        if fam_rule.variant_depth is None:
            continue  # the Identity Mappings variants do not apply to this family
        members = [n for n in NETWORKS if family(n) == fam]
        if not members:
            continue
        # built from the family's shallowest name with registered unit (a); its depth set to the rule's
        name = min(members, key=lambda n: (NETWORKS[n]["depth"], "unit" in NETWORKS[n], n))
        depth = () if NETWORKS[name]["depth"] == fam_rule.variant_depth else (("depth", fam_rule.variant_depth),)
        cases += [Case(name, depth + (("unit", u), ("shortcut", s))) for u in UNITS for s in SHORTCUT_VARIANTS]
        cases += [Case(name, depth + (("unit", u), ("option", "B"))) for u in UNITS]
        cases += [Case(name, depth + (("unit", u), ("stochastic_depth", True))) for u in UNITS]
    unique: dict[str, Case] = {}
    for case in cases:
        config = network_config(case.name, **case.overrides).to_dict()
        config.pop("name")
        unique.setdefault(repr(sorted(config.items())), case)
    return list(unique.values())


def params(cases: list[Case]) -> list:
    """pytest parameters with readable ids; the deep networks (hundreds of blocks: seconds each) marked slow."""
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if deep(c) else []) for c in cases]

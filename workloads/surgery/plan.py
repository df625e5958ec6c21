"""Execution plans: which block runs at each position, and which are deleted.

A plan is the paper's lesion made explicit: ``order[p]`` is the block run at position p
(a reordering permutes blocks of the same shape; shape-changing blocks stay put) and
``deleted`` holds the blocks whose residual branch is removed, keeping the shortcut
(Veit et al. 2016: y_i = y_{i-1}). Plans are validated against the network's block list
before any compute, so an impossible lesion fails fast with a clear message.

A span deletion is the layer-pruning literature's lesion: a run of consecutive model layers
deleted together (every unit of each: a transformer layer's attention and MLP both), at every
start and every length up to a bound.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from workloads.models.blocks import BlockInfo


class PlanError(ValueError):
    """A plan that cannot run on this network."""


@dataclass(frozen=True)
class Plan:
    order: tuple[int, ...]
    deleted: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(int(i) for i in self.order))
        object.__setattr__(self, "deleted", frozenset(int(i) for i in self.deleted))

    @property
    def num_blocks(self) -> int:
        return len(self.order)

    @property
    def active_blocks(self) -> int:
        return len(self.order) - len(self.deleted)

    @property
    def num_paths(self) -> int:
        """Paths through the unraveled network: 2^(active blocks)."""
        return 2 ** self.active_blocks

    @property
    def kendall_tau(self) -> float:
        """Kendall's tau between this order and the original, over all positions."""
        if list(self.order) == sorted(self.order):
            return 1.0
        from scipy.stats import kendalltau  # half a second to import: only where a tau is asked for
        return float(kendalltau(range(len(self.order)), self.order).statistic)

    def steps(self) -> list[tuple[int, bool]]:
        """(block index, runs its residual branch) for each position, in execution order."""
        return [(b, b not in self.deleted) for b in self.order]

    def to_dict(self) -> dict:
        return {"order": list(self.order), "deleted": sorted(self.deleted)}


def validate(plan: Plan, infos: Sequence[BlockInfo]) -> Plan:
    """Raise PlanError unless ``plan`` can run on a network with these blocks."""
    n = len(infos)
    if len(plan.order) != n:
        raise PlanError(f"plan has {len(plan.order)} positions but the network has {n} blocks")
    if sorted(plan.order) != list(range(n)):
        bad = sorted(set(plan.order) - set(range(n))) or sorted(i for i in set(plan.order) if plan.order.count(i) > 1)
        raise PlanError(f"plan order must be a permutation of 0..{n - 1}; bad or repeated block(s): {bad}")
    for b in sorted(plan.deleted):
        if not 0 <= b < n:
            raise PlanError(f"deleted block {b} is out of range 0..{n - 1}")
        if not infos[b].deletable:
            raise PlanError(f"block {b} changes shape and cannot be deleted")
    for p, b in enumerate(plan.order):
        if b == p:
            continue
        if infos[b].changes_shape or infos[p].changes_shape:
            raise PlanError(f"block {b} cannot move to position {p}: shape-changing blocks stay in place")
        if infos[b].group != infos[p].group:
            raise PlanError(f"block {b} (stage {infos[b].stage}) cannot move to position {p} "
                            f"(stage {infos[p].stage}): only blocks of the same shape may be reordered")
    return plan


def intact(infos: Sequence[BlockInfo]) -> Plan:
    return Plan(tuple(range(len(infos))))


def delete_blocks(infos: Sequence[BlockInfo], blocks: Iterable[int]) -> Plan:
    """The original order with ``blocks`` deleted."""
    return validate(Plan(tuple(range(len(infos))), frozenset(blocks)), infos)


def deletion_pool(infos: Sequence[BlockInfo], exclude: Iterable[int] = ()) -> list[int]:
    excluded = set(exclude)
    return [i.index for i in infos if i.deletable and i.index not in excluded]


def layer_units(infos: Sequence[BlockInfo]) -> list[list[int]]:
    """The units of each model layer, in the model's order (a ResNet block is a layer of its own; a
    transformer layer holds its attention and MLP units)."""
    by_layer: dict[int, list[int]] = {}
    for info in infos:
        by_layer.setdefault(info.layer, []).append(info.index)
    return [by_layer[layer] for layer in sorted(by_layer)]


def delete_span(infos: Sequence[BlockInfo], start: int, length: int) -> Plan:
    """The original order with ``length`` consecutive layers deleted from layer ``start`` (0-based), every
    unit of each."""
    units = layer_units(infos)
    if length < 1 or not 0 <= start <= len(units) - length:
        raise PlanError(f"cannot delete {length} layer(s) from layer {start}: the network has {len(units)} layers")
    return delete_blocks(infos, [b for layer in units[start:start + length] for b in layer])


def layer_spans(infos: Sequence[BlockInfo], max_length: int) -> list[tuple[int, int]]:
    """(start, length) of every span of 1..``max_length`` consecutive layers whose units are all deletable,
    by length then start. A layer that cannot be deleted (a shape-changing layer of the plain net) splits
    the spans rather than failing them; a ResNet's downsampling block can be deleted (its shortcut stays, as
    in a single deletion), so spans run through it."""
    if max_length < 1:
        raise PlanError(f"a span is at least one layer long, got max_length={max_length}")
    deletable = [all(infos[b].deletable for b in layer) for layer in layer_units(infos)]
    return [(start, length) for length in range(1, max_length + 1)
            for start in range(len(deletable) - length + 1) if all(deletable[start:start + length])]


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), *map(int, stream)])


def random_deletion(infos: Sequence[BlockInfo], k: int, seed: int, exclude: Iterable[int] = ()) -> Plan:
    """k distinct blocks drawn uniformly (seeded) from the deletable ones not in ``exclude``."""
    pool = deletion_pool(infos, exclude)
    if not 0 <= k <= len(pool):
        raise PlanError(f"cannot delete k={k} blocks: {len(pool)} are deletable")
    chosen = _rng(seed, 1, k).choice(pool, size=k, replace=False) if k else []
    return delete_blocks(infos, chosen)


def permutation_prefix(infos: Sequence[BlockInfo], k: int, draw: int, exclude: Iterable[int] = ()) -> Plan:
    """The first k blocks of permutation ``draw`` of the deletable ones not in ``exclude`` deleted: the prefixes
    of one draw are nested, so its k = 0..n plans walk one order in which Shapley values add each unit."""
    pool = deletion_pool(infos, exclude)
    if not 0 <= k <= len(pool):
        raise PlanError(f"cannot delete the first k={k} blocks of a permutation: {len(pool)} are deletable")
    return delete_blocks(infos, _rng(draw, 3).permutation(pool)[:k])


def swap_pairs(infos: Sequence[BlockInfo], exclude: Iterable[int] = ()) -> list[tuple[int, int]]:
    """Every pair of positions whose blocks have the same shape (and may swap)."""
    excluded = set(exclude)
    groups: dict = {}
    for info in infos:
        if info.group is not None and info.index not in excluded:
            groups.setdefault(info.group, []).append(info.index)
    return [(a, b) for members in groups.values() for i, a in enumerate(members) for b in members[i + 1:]]


def random_swaps(infos: Sequence[BlockInfo], k: int, seed: int, exclude: Iterable[int] = ()) -> Plan:
    """Apply k distinct random swaps of same-shape pairs (seeded) to the original order."""
    pairs = swap_pairs(infos, exclude)
    if not 0 <= k <= len(pairs):
        raise PlanError(f"cannot make k={k} swaps: the network has {len(pairs)} same-shape pairs")
    order = list(range(len(infos)))
    if k:
        for idx in _rng(seed, 2, k).choice(len(pairs), size=k, replace=False):
            a, b = pairs[idx]
            order[a], order[b] = order[b], order[a]
    return validate(Plan(tuple(order)), infos)


"""Plans merged into a prefix trie of block operations.

Two plans that run the same operations up to some position share every activation up to
there. An operation is ("run", b) (block b with its residual branch) or ("skip", b)
(block b's shortcut alone); deleting a block whose shortcut is the identity is no
operation at all, so e.g. "delete 3" and "delete 4" share everything after block 4.
Identical plans end at the same leaf and are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from workloads.models.blocks import BlockInfo, BlockNetwork
from workloads.surgery.plan import Plan

Op = tuple[str, int]


@dataclass
class Node:
    children: dict[Op, "Node"] = field(default_factory=dict)
    plans: list[int] = field(default_factory=list)  # indices of the plans that end here


def plan_ops(plan: Plan, infos: Sequence[BlockInfo]) -> list[Op]:
    ops: list[Op] = []
    for b, runs in plan.steps():
        if runs:
            ops.append(("run", b))
        elif not infos[b].identity_skip:
            ops.append(("skip", b))
    return ops


@dataclass
class PlanTrie:
    root: Node
    num_plans: int
    num_leaves: int       # distinct plans after merging duplicates
    block_runs: int       # residual-branch evaluations per example, all plans together
    skip_runs: int        # non-trivial shortcut evaluations per example

    @classmethod
    def build(cls, plans: Sequence[Plan], infos: Sequence[BlockInfo]) -> "PlanTrie":
        root = Node()
        runs = skips = leaves = 0
        for idx, plan in enumerate(plans):
            node = root
            for op in plan_ops(plan, infos):
                child = node.children.get(op)
                if child is None:
                    child = node.children[op] = Node()
                    if op[0] == "run":
                        runs += 1
                    else:
                        skips += 1
                node = child
            if not node.plans:
                leaves += 1
            node.plans.append(idx)
        return cls(root, len(plans), leaves, runs, skips)


def naive_block_runs(plans: Sequence[Plan]) -> int:
    """Residual-branch evaluations per example when every plan runs a full forward of its own."""
    return sum(p.active_blocks for p in plans)


def run_op(net: BlockNetwork, op: Op, x: torch.Tensor) -> torch.Tensor:
    block = net.blocks[op[1]]
    return block(x) if op[0] == "run" else block.skip(x)


def walk(net: BlockNetwork, node: Node, x: torch.Tensor, leaf: Callable[[int, torch.Tensor], None]) -> None:
    """Depth-first from ``node`` with its activation ``x``: ``leaf(plan, x)`` wherever plans end, ``plan`` the
    first of them (identical plans are computed once: ``first_plans``). An activation is kept only where plans
    diverge, a chain overwrites it, so live activations never exceed the trie's depth whatever the plans."""
    while True:
        if node.plans:
            leaf(node.plans[0], x)
        if len(node.children) != 1:
            break
        (op, child), = node.children.items()   # a chain: no other plan needs x
        x = run_op(net, op, x)
        node = child
    for op, child in node.children.items():
        walk(net, child, run_op(net, op, x), leaf)


def first_plans(root: Node) -> dict[int, int]:
    """Each plan's index -> the first plan ending at its leaf, whose results it shares."""
    out: dict[int, int] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        for i in node.plans:
            out[i] = node.plans[0]
        stack.extend(node.children.values())
    return out

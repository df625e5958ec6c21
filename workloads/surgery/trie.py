"""Plans merged into a prefix trie of block operations.

Two plans that run the same operations up to some position share every activation up to
there. An operation is ("run", b) (block b with its residual branch) or ("skip", b)
(block b's shortcut alone); deleting a block whose shortcut is the identity is no
operation at all, so e.g. "delete 3" and "delete 4" share everything after block 4.
Identical plans end at the same leaf and are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from workloads.models.blocks import BlockInfo
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

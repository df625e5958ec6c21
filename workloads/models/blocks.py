"""The block list every network exposes.

Veit et al. (2016) treat a residual network as an ordered list of blocks
y_i = post(s_i(y_{i-1}) + r_i(y_{i-1})), where s is the shortcut and r the residual
branch. Deleting block i keeps only its shortcut, y_i = s_i(y_{i-1}) (the identity for
most blocks; the subsample/projection at a downsampling block). Everything in
``workloads.surgery`` works on this list, so a lesion or a reordering is an edit of a
list of indices, never a patch of a model's code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BlockInfo:
    """What surgery needs to know about one block, without touching its weights."""

    index: int            # position in the original order (0-based)
    stage: int            # 0-based stage (resolution level)
    changes_shape: bool   # input and output shapes differ (downsampling / channel change)
    deletable: bool       # a deleted block still yields a tensor of the right shape
    residual: bool        # has a residual branch whose gradient path can be chosen (F6b)
    identity_skip: bool = True  # deleting it is a no-op (its shortcut is the identity)
    kind: str = "conv"    # what the unit computes: "conv" (a residual block), "attention", "mlp" (a sublayer)
    layer: int = -1       # the model's layer it belongs to (a transformer layer holds two units); -1: its index

    def __post_init__(self) -> None:
        if self.layer < 0:
            object.__setattr__(self, "layer", self.index)

    @property
    def group(self) -> tuple[int, str] | None:
        """Blocks with equal groups may swap places: same stage and kind (attention with attention); shape-changing
        blocks stay put."""
        return None if self.changes_shape else (self.stage, self.kind)


class Block(nn.Module):
    """One deletable, reorderable unit of a network.

    Subclasses implement ``parts`` (shortcut and residual outputs, before ``post``) and
    ``post``; ``forward`` and ``skip`` follow from them.
    """

    stage: int = 0
    changes_shape: bool = False
    deletable: bool = True
    residual: bool = True
    # True when skip(x) is x itself, so a deleted block costs nothing and plans that
    # differ only in such deletions share all later activations.
    identity_skip: bool = True
    # True when post() is a plain ReLU: its VJP is a mask saved from the forward.
    post_is_relu: bool = False
    kind: str = "conv"   # BlockInfo.kind
    layer: int = -1      # BlockInfo.layer: set by adapters whose layers hold several units

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def post(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def branch_chain(self) -> tuple[list, float] | None:
        """The residual branch as a chain of Conv2d / BatchNorm2d / ReLU ops and a constant
        factor, when it is one (None otherwise). In eval mode such a chain is linear given its
        ReLU masks, so its VJP batches over many cotangents (gradient engine)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, r = self.parts(x)
        return self.post(s + r)

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output when its residual branch is deleted: its shortcut."""
        if self.identity_skip:
            return x
        return self.shortcut_only(x)

    def shortcut_only(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def info(self, index: int) -> BlockInfo:
        return BlockInfo(index=index, stage=self.stage, changes_shape=self.changes_shape,
                          deletable=self.deletable, residual=self.residual,
                          identity_skip=self.identity_skip, kind=self.kind, layer=self.layer)


class BlockNetwork(nn.Module):
    """stem -> blocks -> head. The forward is a plain loop over the block list.

    ``active`` (one bool per block) runs a block's shortcut only where False: the
    mechanism behind stochastic depth and effective-path training.
    """

    def __init__(self, stem: nn.Module, blocks: list[Block], head: nn.Module, *, anchors=(), reference=None):
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        # an adapted model's checks (adapters/check.py): the original modules whose tensors the units must
        # reproduce, and the original model's own forward
        # (kept out of nn.Module's registry: the reference is the model whose modules the units already hold)
        self.__dict__["anchors"] = list(anchors)
        self.__dict__["reference"] = reference

    def forward(self, x: torch.Tensor, active: list[bool] | torch.Tensor | None = None) -> torch.Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x) if active is None or active[i] else block.skip(x)
        return self.head(x)

    def block_infos(self) -> list[BlockInfo]:
        return [b.info(i) for i, b in enumerate(self.blocks)]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

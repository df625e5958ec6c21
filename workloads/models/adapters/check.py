"""Every adapter proves itself before a lesion is computed from it.

An adapter turns a model it did not write (torchvision, timm, Hugging Face) into residual units. A unit that
carries the wrong tensor (the input where the output was meant, a branch that lost its layer scale) would give
lesion results that look plausible and are wrong; interpretability libraries have shipped hooks with exactly
that bug. So each adapter names *anchors*: modules of the original model whose own tensors, captured by hooks
while the model runs, a unit must reproduce. ``check_adapter`` runs the model once and the units once on the
same batch and refuses, in one line naming the unit and the module, anything that does not match.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from workloads.models.errors import AdapterError


@dataclass(frozen=True, eq=False)
class Anchor:
    """Unit ``unit`` must reproduce a tensor of ``module`` (part of the original model):
    ``input``: the unit's input (its shortcut's input) is the module's first input;
    ``branch``: the unit's residual branch is the module's output;
    ``output``: the unit's output is the module's output."""

    unit: int
    module: nn.Module
    what: str   # "input" | "branch" | "output"

    def __post_init__(self) -> None:
        if self.what not in ("input", "branch", "output"):
            raise ValueError(f"an anchor checks an input, a branch or an output, not {self.what!r}")


def first_tensor(value) -> torch.Tensor | None:
    """The tensor a module returned: itself, the first of a tuple (attention returns its weights too),
    or the first field of a ``ModelOutput``-like mapping."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    if isinstance(value, dict) and value:
        return first_tensor(next(iter(value.values())))
    return None


def describe(net: nn.Module, index: int) -> str:
    """How a unit is named in messages: ``unit 3 (layer 1, mlp)``."""
    info = net.blocks[index].info(index)
    return f"unit {index} (layer {info.layer}, {info.kind})"


def check_adapter(model: nn.Module, net: nn.Module, example: torch.Tensor, *, rtol: float = 1e-4,
                  atol: float = 1e-5) -> None:
    """Raise AdapterError unless, on ``example`` in eval mode, ``net`` (an adapter's BlockNetwork of ``model``)
    computes the model's own tensors: every anchor of every unit, each unit's output as its shortcut plus its
    branch, and the model's output from the assembled units."""
    anchors: list[Anchor] = list(getattr(net, "anchors", ()))
    reference: Callable[[torch.Tensor], torch.Tensor] | None = getattr(net, "reference", None)
    if reference is None:
        raise AdapterError(f"{type(model).__name__}: its adapter names no reference output to check against")
    names = {id(m): name or type(model).__name__ for name, m in model.named_modules()}
    seen: dict[tuple[int, str], torch.Tensor] = {}

    def capture(module: nn.Module):
        def hook(mod, args, kwargs, out):
            inp = first_tensor(args) if args else first_tensor(list(kwargs.values()))
            # copies: the model may write into a tensor after its module returned it (torchvision's MBConv and
            # MobileNetV3 add the shortcut in place into their branch's output)
            seen[(id(mod), "input")] = _copy(inp)
            seen[(id(mod), "output")] = _copy(first_tensor(out))
        return module.register_forward_hook(hook, with_kwargs=True)

    hooks = [capture(m) for m in {id(a.module): a.module for a in anchors}.values()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = reference(example)
            for h in hooks:
                h.remove()
            hooks = []
            by_unit: dict[int, list[Anchor]] = {}
            for a in anchors:
                by_unit.setdefault(a.unit, []).append(a)
            x = net.stem(example)
            for i, unit in enumerate(net.blocks):
                where = describe(net, i)
                shortcut, branch = unit.parts(x)
                y = unit(x)
                _same(y, unit.post(shortcut + branch), f"{where}: its output is not its shortcut plus its branch",
                      rtol, atol)
                for a in by_unit.get(i, ()):
                    name = names.get(id(a.module), type(a.module).__name__)
                    got = {"input": x, "branch": branch, "output": y}[a.what]
                    wanted = seen.get((id(a.module), "output" if a.what == "branch" else a.what))
                    if wanted is None:
                        raise AdapterError(f"{where}: {name} did not run in the model's forward, so the unit "
                                           f"cannot be checked against it")
                    _same(got, wanted, f"{where}: its {a.what} is not {name}'s "
                                       f"{'output' if a.what == 'branch' else a.what}", rtol, atol)
                x = y
            _same(net.head(x), expected, f"the network assembled from its {len(net.blocks)} units: its output is "
                                         f"not the model's", rtol, atol)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


def _same(got, expected, problem: str, rtol: float, atol: float) -> None:
    if not isinstance(got, torch.Tensor) or not isinstance(expected, torch.Tensor):
        raise AdapterError(f"{problem} (no tensor to compare)")
    if got.shape != expected.shape:
        raise AdapterError(f"{problem} (shape {tuple(got.shape)}, expected {tuple(expected.shape)})")
    if not torch.allclose(got.float(), expected.float(), rtol=rtol, atol=atol):
        worst = (got.float() - expected.float()).abs().max().item()
        raise AdapterError(f"{problem} (largest difference {worst:.3g}, tolerance {atol:g} + {rtol:g} x |y|)")

"""Reading weights safely: tensors only, and a one-line reason when a file is not what it claims.

Every checkpoint goes through ``torch.load(weights_only=True)``: a file that carries pickled
Python objects (``torch.save(model)``) is refused, never executed. A truncated file, a file
of another format and weights of another network's shape each get a message that names
the file and the problem, not a traceback.
"""
from __future__ import annotations

import argparse
import io
import pickle
import re
from pathlib import Path

import torch

from workloads.models.adapters import adapt
from workloads.models.blocks import BlockNetwork
from workloads.models.config import NetConfig
from workloads.models.errors import CheckpointError
from workloads.models.registry import ADAPTED, build_network, source_model

# plain attribute holders that training scripts save beside the weights (torchvision's reference
# script saves its argparse.Namespace): no code runs to rebuild them
SAFE_GLOBALS = [argparse.Namespace]
# keys under which training scripts commonly nest the weights
_NESTED = ("state_dict", "model_state_dict", "model", "net", "network")


def read_weights(source: str | Path | bytes, name: str | None = None) -> dict:
    """``torch.load(weights_only=True)`` of a path or of bytes, with one-line errors."""
    name = name or (str(source) if not isinstance(source, bytes) else "checkpoint")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu",
                             weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{name}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch's unpickler raises anything on a damaged file
        found = re.search(r"GLOBAL (\S+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise CheckpointError(f"{name}: refused, it holds pickled Python objects such as {found.group(1)}, "
                                  f"not only tensors; save model.state_dict() instead of the model") from None
        first = re.split(r"(?<=\.)\s|\n", str(e).strip())[0]
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise CheckpointError(f"{name}: not a readable PyTorch checkpoint, truncated or corrupt ({reason})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: holds a {type(obj).__name__}, expected a dict of tensors (a state_dict)")
    return obj


def state_dict_of(obj: dict, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The weights in a user's checkpoint: a state_dict, or one nested under a usual key;
    ``module.`` prefixes (DataParallel, DDP) are removed."""
    for key in _NESTED:
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    weights = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not weights:
        raise CheckpointError(f"{name}: holds no tensors (keys: {', '.join(map(str, list(obj)[:6]))})")
    if all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return weights


def _load_strict(module: torch.nn.Module, weights: dict, name: str, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{name}: its weights are not those of {what}: {'; '.join(parts)} parameter names")
    wrong = [k for k in own if tuple(own[k].shape) != tuple(weights[k].shape)]
    if wrong:
        k = wrong[0]
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise CheckpointError(f"{name}: does not fit {what}: {k} has shape {list(weights[k].shape)} in the "
                              f"checkpoint, {list(own[k].shape)} in the network{more}")
    module.load_state_dict(weights)


def network_from_weights(cfg: NetConfig, weights: dict[str, torch.Tensor], name: str = "checkpoint") -> BlockNetwork:
    """``cfg``'s network with a user's weights. Networks of another library (torchvision, timm, Hugging Face)
    take that library's own parameter names (a state_dict from ``torchvision.models.resnet50().state_dict()``)
    and are adapted into units after loading."""
    return adapted_from_weights(cfg, weights, name)[0] if cfg.arch in ADAPTED else _own(cfg, weights, name)


def adapted_from_weights(cfg: NetConfig, weights: dict[str, torch.Tensor],
                         name: str = "checkpoint") -> tuple[BlockNetwork, torch.nn.Module]:
    """(units, the library's model) of an adapted network with its library's weights."""
    what = cfg.name or cfg.torchvision_arch or cfg.timm_arch or cfg.arch
    model = source_model(cfg)
    _load_strict(model, weights, name, f"{what} with {cfg.num_classes} classes" if cfg.arch != "hf" else what)
    return adapt(model.eval()).eval(), model


def _own(cfg: NetConfig, weights: dict, name: str) -> BlockNetwork:
    net = build_network(cfg)
    _load_strict(net, weights, name, cfg.name or cfg.arch)
    return net.eval()


def checkpoint_of(cfg: NetConfig, net: BlockNetwork, model: torch.nn.Module | None = None, **extra) -> dict:
    """What unravel saves of a network: its config and weights. An adapted network is saved as its library's
    model (its own parameter names, each tensor once), and rebuilt by adapting that model again."""
    if model is not None:
        return {"net_config": cfg.to_json(), "state_dict": model.state_dict(), "weights_of": "source", **extra}
    return {"net_config": cfg.to_json(), "state_dict": net.state_dict(), **extra}


def load_checkpoint(source: str | Path | bytes, name: str | None = None) -> tuple[BlockNetwork, dict]:
    """(network, checkpoint) from unravel's own checkpoint format (``net_config`` + ``state_dict``)."""
    name = name or (str(source) if not isinstance(source, bytes) else "checkpoint")
    ckpt = read_weights(source, name)
    if "net_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{name}: not an unravel checkpoint (no net_config/state_dict)")
    try:
        cfg = NetConfig.from_json(ckpt["net_config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{name}: its net_config is invalid ({e})") from None
    if ckpt.get("weights_of") == "source":   # an adapted network, saved as its library's model
        return adapted_from_weights(cfg, ckpt["state_dict"], name)[0], ckpt
    return _own(cfg, ckpt["state_dict"], name), ckpt

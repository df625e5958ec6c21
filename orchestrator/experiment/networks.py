"""The networks a spec names, as configs and block lists: a network's config for the data it reads (a language
model's from its folder's config.json), refused in one line when its adapter cannot take it apart, and its
blocks counted on the meta device (what bounds its studies, and what its units are made of)."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from pydantic import ValidationError

from workloads.models import AdapterError, NetConfig, network_config, skeleton
from workloads.models.adapters.hf_loading import MODEL_TYPES, max_sequence_length, refuse_custom_code
from workloads.models.blocks import BlockInfo
from workloads.models.registry import ADAPTED
from workloads.surgery import deletion_pool, layer_units, swap_pairs

from orchestrator.experiment.messages import SpecError, one_line


def net_config(network: str, overrides: dict, mode: str, shape: tuple[int, int, int], where: str) -> NetConfig:
    """The config of ``network`` with ``overrides`` for data of ``shape`` (channels, classes, size) and ``mode``;
    SpecError naming ``where`` if it cannot be built."""
    channels, classes, size = shape
    fields = {**overrides, **({"stochastic_depth": True} if mode == "stochastic_depth" else {})}
    try:
        net = network_config(network, **{"in_channels": channels, "num_classes": classes, "image_size": size,
                                         **fields})
    except ValidationError as e:
        raise SpecError(one_line(e, NetConfig, where)) from None
    if net.arch == "timm":
        import timm  # only for a spec that names a timm network
        if not timm.is_model(net.timm_arch):
            raise SpecError(f"{where}.overrides.timm_arch: timm has no model {net.timm_arch!r}")
    if net.arch in ADAPTED:  # a model its adapter cannot take apart is refused here, before anything runs
        try:
            counts(net)
        except AdapterError as e:
            raise SpecError(f"{where}: {e}") from None
    return net


def language_model_fields(folder: str, where: str, sequence_length: int) -> dict:
    """A language model's config fields from its folder's config.json (what the network is, and part of its run
    id), with the sequence length checked against the positions it takes; SpecError naming ``where`` if not."""
    path = Path(folder).expanduser()
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except OSError:
        what = "no such folder" if not path.is_dir() else "no config.json in it"
        raise SpecError(f"{where}.checkpoint: {folder}: {what} (a Hugging Face model folder, as save_pretrained "
                        f"writes it)") from None
    except ValueError as e:
        raise SpecError(f"{where}.checkpoint: {path / 'config.json'} is not valid JSON ({e})") from None
    refuse_custom_code(path, lambda problem: SpecError(f"{where}.checkpoint: {problem}"))
    kind = config.get("model_type") if isinstance(config, dict) else None
    if kind not in MODEL_TYPES:
        raise SpecError(f"{where}.checkpoint: {path} holds a model of type {kind!r}; the layers unravel reproduces "
                        f"are those of {', '.join(MODEL_TYPES)}")
    longest = max_sequence_length(config)
    if sequence_length > longest:
        raise SpecError(f"data.sequence_length: {sequence_length} is beyond the {longest} positions the model of "
                        f"{where} takes")
    vocabulary = config.get("vocab_size")
    return {"hf_config": json.dumps(config, sort_keys=True),
            **({"num_classes": vocabulary} if isinstance(vocabulary, int) and vocabulary > 0 else {})}


def language_model_config(hf_config: str):
    """A language model's config.json (``NetConfig.hf_config``) as transformers' config object, as lm-eval reads a
    model's context length from it (``workloads.tasks.context_length``)."""
    from transformers import AutoConfig
    return AutoConfig.for_model(**json.loads(hf_config))


def has_config(folder: str) -> bool:
    """Whether a language model's folder is here (its config.json: what the spec reads of it)."""
    return (Path(folder).expanduser() / "config.json").is_file()


class Counts(NamedTuple):
    """What bounds a network's studies: its blocks, its deletable blocks and same-shape pairs outside the
    excluded blocks, and its layers."""

    blocks: int
    deletable: int
    pairs: int
    layers: int


@lru_cache(maxsize=256)  # many runs share a network (seeds, modes), counted once
def block_infos(cfg: NetConfig) -> tuple[BlockInfo, ...]:
    """The network's blocks, from its meta-device skeleton (no memory, even for depth 1202)."""
    return tuple(skeleton(cfg).block_infos())


def counts(cfg: NetConfig, exclude: tuple[int, ...] = ()) -> Counts:
    """The network's counts (its blocks outside ``exclude``)."""
    infos = list(block_infos(cfg))
    return Counts(len(infos), len(deletion_pool(infos, exclude)), len(swap_pairs(infos, exclude)),
                  len(layer_units(infos)))

"""Hugging Face causal language models from a local folder, and rebuilt from their config alone.

A spec names a folder (``save_pretrained``'s: config.json and its weights); nothing is ever downloaded. A
folder that is not what it should be (missing, no config.json, no weights, a model type the adapter does not
know, weights of another shape) is refused in one line that names it, never a traceback and never a model
that silently keeps random weights where the checkpoint lacked some. A folder's own Python code is never run:
one whose config.json or tokenizer_config.json has an ``auto_map`` (classes from .py files beside it, what
``trust_remote_code`` would import) is refused, and transformers is always told ``trust_remote_code=False``, so
it never prompts on the terminal or reads stdin. ``config_json`` and ``model_from_config``
carry a model's architecture between processes (a worker rebuilds it, then loads a state_dict; on the meta
device a spec counts the units of a 7B model without its memory).

transformers is imported inside the functions: the CIFAR path never pays for it.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from workloads.models.errors import AdapterError, CheckpointError

# config.json's model_type -> the causal LM class the adapter (hf.py) reproduces
MODEL_TYPES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
               "qwen2": "Qwen2ForCausalLM"}
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
CODE_MAPS = ("config.json", "tokenizer_config.json")   # where a folder may name classes of its own .py files


def custom_code(folder: str | Path) -> str | None:
    """Why loading ``folder`` would import Python code it holds (an ``auto_map`` in config.json or
    tokenizer_config.json), in one line; None when it names none. Read on every load, not once: a folder
    changed after the preflight is still refused where it is loaded (an evaluator)."""
    for name in CODE_MAPS:
        try:
            document = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent or unreadable: the loader that reads it says so
            continue
        found = auto_map_of(document)
        if found:
            return f"{Path(folder) / name} has an auto_map ({found})"
    return None


def auto_map_of(config) -> str:
    """The classes a config's ``auto_map`` takes from the folder's own code ('AutoTokenizer -> x.Y, ...'), or ''."""
    mapping = config.get("auto_map") if isinstance(config, dict) else None
    if not mapping:
        return ""
    if not isinstance(mapping, dict):
        return " ".join(repr(mapping).split())[:200]
    text = ", ".join(f"{k} -> {v if isinstance(v, str) else '/'.join(str(x) for x in v if x)}"
                     for k, v in mapping.items())
    return " ".join(text.split())[:200]   # one line, whatever the file holds


REMOTE_CODE_ADVICE = ("the folder asks to run its own Python code (trust_remote_code), which unravel never does: "
                      "use a model and tokenizer that transformers implements (no auto_map)")


def refuse_custom_code(folder: str | Path, error: Callable[[str], Exception] = CheckpointError) -> None:
    """Raise ``error(message)`` (one line) when loading ``folder`` would run code it holds (see ``custom_code``)."""
    found = custom_code(folder)
    if found:
        raise error(f"{found}: {REMOTE_CODE_ADVICE}")


def _supported(model_type, where: str) -> None:
    if model_type not in MODEL_TYPES:
        raise AdapterError(f"{where}: model type {model_type!r} is not supported; supported: "
                           f"{', '.join(MODEL_TYPES)} (causal language models whose layers the adapter reproduces)")


def read_config(folder: str | Path) -> dict:
    """config.json of a model folder, checked: the folder exists, holds a config.json of a supported model type
    and weights, and names no code of its own (``refuse_custom_code``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: no config.json, so not a Hugging Face model folder (save_pretrained "
                              f"writes config.json beside the weights)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: holds a {type(config).__name__}, expected a JSON object")
    refuse_custom_code(folder)
    _supported(config.get("model_type"), str(folder))
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES):
        raise CheckpointError(f"{folder}: no weights (no *.safetensors or pytorch_model.bin beside config.json)")
    check_weight_files(folder)
    return config


def check_weight_files(folder: Path) -> None:
    """The weight files are whole, read cheaply (no tensor is loaded): a safetensors file holds exactly the bytes
    its header describes, a pytorch_model*.bin (read only where no safetensors is) its zip directory, and every
    shard a sharded index names is there. A truncated download is then one line before anything starts."""
    import zipfile
    safetensors = sorted(folder.glob("*.safetensors"))
    for index in sorted(folder.glob("*.safetensors.index.json" if safetensors else "*.bin.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a readable shard index ({type(e).__name__}: {e})") from None
        missing = sorted(name for name in shards if not (folder / name).is_file())
        if missing:
            raise CheckpointError(f"{index}: names {len(missing)} missing shard(s), e.g. {missing[0]}")
    for path in safetensors:
        _check_safetensors(path)
    for path in [] if safetensors else sorted(folder.glob("pytorch_model*.bin")):
        with path.open("rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"   # torch.save's format since 1.6; older files are plain pickles
        if zipped and not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: damaged or truncated (its zip directory is missing)")


def _check_safetensors(path: Path) -> None:
    """Its header (8 bytes of length, then JSON) names where each tensor's bytes end: the file must end there."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < length <= size - 8:
                raise ValueError("no header")
            header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise CheckpointError(f"{path}: damaged or truncated (no readable safetensors header)") from None
    if size != 8 + length + end:
        raise CheckpointError(f"{path}: damaged or truncated ({size:,} bytes; its header describes "
                              f"{8 + length + end:,})")


@contextmanager
def _quiet():
    """transformers' load report and progress bars off while loading: problems are raised here, in one line."""
    from transformers.utils import logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def load_causal_lm(folder: str | Path):
    """The model saved in ``folder``, float32, eval mode; its weights must fit its config exactly."""
    read_config(folder)
    from transformers import AutoModelForCausalLM
    try:
        with _quiet():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False, dtype=torch.float32,
                output_loading_info=True, ignore_mismatched_sizes=True)  # mismatches are reported below, in one line
    except Exception as e:  # noqa: BLE001 - a damaged file raises anything; the message says which folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{folder}: cannot be loaded ({type(e).__name__}: {first})") from None
    problems = []
    if info.get("mismatched_keys"):
        key, *shapes = sorted(info["mismatched_keys"], key=str)[0]
        shown = f" (checkpoint {list(shapes[0])}, config {list(shapes[1])})" if len(shapes) == 2 else ""
        problems.append(f"{len(info['mismatched_keys'])} of another shape, e.g. {key}{shown}")
    if info.get("missing_keys"):
        problems.append(f"{len(info['missing_keys'])} missing, e.g. {sorted(info['missing_keys'])[0]}")
    if info.get("unexpected_keys"):
        problems.append(f"{len(info['unexpected_keys'])} unexpected, e.g. {sorted(info['unexpected_keys'])[0]}")
    if problems:
        raise CheckpointError(f"{folder}: its weights do not fit its config.json: {'; '.join(problems)}")
    return model.eval()


def config_json(model) -> str:
    """The model's config as JSON: enough for ``model_from_config`` to rebuild the architecture."""
    return model.config.to_json_string(use_diff=False)


def model_from_config(config_json: str, *, meta: bool = False):
    """A model of that config with fresh random weights (float32, eval), e.g. to load a state_dict into;
    ``meta=True`` builds it on the meta device, shapes without memory."""
    try:
        config = json.loads(config_json)
    except ValueError as e:
        raise CheckpointError(f"model config: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"model config: holds a {type(config).__name__}, expected a JSON object")
    _supported(config.get("model_type"), "model config")
    if auto_map_of(config):
        raise CheckpointError(f"model config: has an auto_map ({auto_map_of(config)}): {REMOTE_CODE_ADVICE}")
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        built = AutoConfig.for_model(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model config: not a valid {config['model_type']} config ({e})") from None
    with torch.device("meta") if meta else nullcontext(), _quiet():
        model = AutoModelForCausalLM.from_config(built, dtype=torch.float32, trust_remote_code=False)
    return model.eval()


def max_sequence_length(config_or_model) -> int:
    """The most positions the model takes (GPT-2: n_positions; the Llama layout: max_position_embeddings)."""
    config = getattr(config_or_model, "config", config_or_model)
    if isinstance(config, dict):
        value = config.get("n_positions") or config.get("max_position_embeddings")
    else:
        value = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if not isinstance(value, int) or value < 1:
        raise AdapterError(f"{type(config).__name__}: names no maximum sequence length (n_positions or "
                           f"max_position_embeddings)")
    return value

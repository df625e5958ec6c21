"""A local text corpus as next-token prediction examples for a causal language model.

The corpus is tokenised once, with the model's own tokenizer from a local folder, and cut into
non-overlapping sequences of L + 1 tokens: the first L are the input, the last L (shifted by one) the labels,
so every position is scored on the next token (PlanResult counts positions). Nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workloads.data.dataset import DataNotFound, TensorDataset

# what AutoTokenizer reads: a tokenizers serialisation, a sentencepiece model, or GPT-2's vocab and merges
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


class TextDataError(ValueError):
    """A corpus, tokenizer or sequence length that cannot give examples; the message is one line. ``field``
    names the loader argument at fault when it is not the corpus file itself (``column``)."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


def holds_tokenizer(folder: str | Path) -> bool:
    """Whether a folder holds what AutoTokenizer reads (a model folder may hold its own tokenizer, or not)."""
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def vocabulary_difference(tokenizer, other) -> str:
    """"" when both tokenizers give every token the same id, else the first difference, in words: text cut by
    one is another text to a model trained with the other."""
    mine, theirs = tokenizer.get_vocab(), other.get_vocab()
    if mine == theirs:
        return ""
    token = min((t for t in mine.keys() | theirs.keys() if mine.get(t) != theirs.get(t)), key=repr)
    return (f"{len(mine)} tokens against {len(theirs)}; {token!r} is id {mine.get(token, 'absent')} against "
            f"{theirs.get(token, 'absent')}")


def load_tokenizer(folder: str | Path):
    """``AutoTokenizer`` of a local folder, with one-line errors. A model folder may hold its tokenizer, but then it
    must be that model's own: there AutoTokenizer picks the tokenizer class from config.json's model_type (a qwen2
    folder builds a byte-level Qwen2Tokenizer from whatever tokenizer files it finds). A folder that names code of its
    own (an ``auto_map``) is refused, and transformers never asks to run it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataNotFound(f"{folder}: no such tokenizer folder")
    if not holds_tokenizer(folder):
        raise TextDataError(f"{folder}: holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    from workloads.models.adapters.hf_loading import refuse_custom_code
    refuse_custom_code(folder, TextDataError)
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer raises anything; the message names the folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TextDataError(f"{folder}: its tokenizer cannot be loaded ({type(e).__name__}: {first})") from None


def _texts(path: Path, column: str) -> list[str]:
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8", errors="replace")]
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types on a damaged file
        raise TextDataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    if column not in table.column_names:
        raise TextDataError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names[:8])})", "column")

    def is_text(name: str) -> bool:
        kind = table.schema.field(name).type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)
    if not is_text(column):
        texts = [n for n in table.column_names if is_text(n)]
        raise TextDataError(f"{path}: column {column!r} holds {table.schema.field(column).type}, not text "
                            f"(text columns: {', '.join(texts[:8]) or 'none'})", "column")
    return [t for t in table.column(column).to_pylist() if t]


def load_text_corpus(path: str | Path, tokenizer_folder: str | Path, sequence_length: int, *,
                     column: str = "text") -> TensorDataset:
    """Next-token examples of a local corpus: a ``.txt`` file (its whole text) or a ``.parquet`` file (the rows
    of ``column``, joined with the tokenizer's EOS token when it has one, else simply concatenated).

    Returns a TensorDataset whose test_images are the inputs [N, L] and test_labels the next tokens [N, L], both
    int64; the train split holds the same sequences (a corpus for lesions, not for training), num_classes is
    the tokenizer's vocabulary size, and in_channels / image_size mean nothing here. No special tokens (BOS)
    are added: the sequences are plain cuts of the running text.
    """
    path = Path(path)
    if sequence_length < 1:
        raise TextDataError(f"sequence_length must be at least 1, got {sequence_length}")
    if path.suffix not in (".txt", ".parquet"):
        kind = path.suffix or "a file without extension"
        raise TextDataError(f"{path}: a text corpus is a .txt or .parquet file, not {kind}")
    if not path.is_file():
        raise DataNotFound(f"{path}: no such corpus file")
    tokenizer = load_tokenizer(tokenizer_folder)
    texts = _texts(path, column)
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for i, row in enumerate(encoded):
        ids += (eos if i else []) + row
    need = sequence_length + 1
    if len(ids) < need:
        raise TextDataError(f"{path}: has {len(ids)} tokens; one sequence needs {need} "
                            f"(sequence_length {sequence_length} and the next token)")
    count = len(ids) // need
    sequences = torch.tensor(ids[:count * need], dtype=torch.int64).view(count, need)
    inputs, labels = sequences[:, :-1].contiguous(), sequences[:, 1:].contiguous()
    return TensorDataset("text", inputs, labels, inputs, labels, num_classes=len(tokenizer), augmentation="none")


def check_sequence_length(config_or_model, sequence_length: int) -> None:
    """Refuse a sequence length beyond what the model takes (its position embeddings end there)."""
    from workloads.models.adapters.hf_loading import max_sequence_length
    most = max_sequence_length(config_or_model)
    if sequence_length > most:
        config = getattr(config_or_model, "config", config_or_model)
        kind = getattr(config, "model_type", None) or type(config).__name__
        raise TextDataError(f"sequence_length {sequence_length} is beyond the model's maximum of {most} positions "
                            f"({kind})")


def check_vocabulary(config_or_model, data: TensorDataset) -> None:
    """Refuse token ids the model has no embedding for (another model's tokenizer): on a GPU they would stop
    the process with a device-side assert instead of an error."""
    config = getattr(config_or_model, "config", config_or_model)
    vocab = int(config.vocab_size)
    largest = int(max(data.test_images.max(), data.test_labels.max())) if data.test_labels.numel() else -1
    if largest >= vocab:
        raise TextDataError(f"the corpus holds token id {largest}, beyond the model's vocabulary of {vocab}: "
                            f"its tokenizer is not the model's")

"""A tiny language model with weights in the Llama layout and a local lm-evaluation-harness task it can be scored on:
a multiple-choice task of a few documents over language_cases' words, its documents a JSON-lines file and its YAML
naming that file (``dataset_path: json``), so nothing reaches a hub."""
from __future__ import annotations

import json
import random
from pathlib import Path

from language_cases import VOCAB, WORDS, save_word_tokenizer

CHOICE_TASK = "tiny_choice"


def save_llama(folder: Path, layers: int = 2, positions: int = 64, seed: int = 0) -> Path:
    """A Llama of ``layers`` layers with random weights and the word tokenizer, saved as save_pretrained does."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions,
                         initializer_range=0.2, bos_token_id=1, eos_token_id=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    save_word_tokenizer(folder)
    return Path(folder)


def write_choice_task(folder: Path, documents: int = 5, choices: int = 3, seed: int = 0,
                      name: str = CHOICE_TASK) -> Path:
    """A multiple-choice task (MMLU's shape: single-word answers) of ``documents`` documents in ``folder``:
    ``<name>.jsonl`` and ``<name>.yaml``, the folder a spec's ``include_path`` names."""
    rng = random.Random(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / f"{name}.jsonl"
    docs.write_text("".join(json.dumps({"question": " ".join(rng.sample(WORDS, 4)),
                                        "choices": rng.sample(WORDS, choices),
                                        "answer": rng.randrange(choices)}) + "\n" for _ in range(documents)))
    (folder / f"{name}.yaml").write_text(task_yaml(name, docs))
    return folder


def task_yaml(name: str, documents: Path) -> str:
    """The task's YAML, reading ``documents`` (a JSON-lines file) through the datasets library's json builder."""
    return (f"task: {name}\n"
            f"dataset_path: json\n"
            f"dataset_kwargs:\n"
            f"  data_files:\n"
            f"    test: {documents}\n"
            f"test_split: test\n"
            f"output_type: multiple_choice\n"
            f"doc_to_text: question\n"
            f"doc_to_choice: choices\n"
            f"doc_to_target: answer\n"
            f"metric_list:\n"
            f"  - metric: acc\n"
            f"    aggregation: mean\n"
            f"    higher_is_better: true\n"
            f"metadata:\n"
            f"  version: 1.0\n")

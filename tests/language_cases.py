"""Tiny language models and text the tests build: a word-level tokenizer trained here, a random corpus of its
words, and causal LMs of a few layers saved as ``save_pretrained`` folders. Nothing is downloaded."""
from __future__ import annotations

import random
from pathlib import Path

WORDS = [f"w{i}" for i in range(80)]
VOCAB = 96          # the models' vocabulary; the tokenizer's (82) is smaller


def save_word_tokenizer(folder: Path, reversed_ids: bool = False) -> Path:
    """A word-level tokenizer of WORDS plus <unk> and <eos>, saved as AutoTokenizer reads it; ``reversed_ids``:
    the same words with other ids (another model's vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<eos>": 1, **{w: 2 + i for i, w in enumerate(reversed(WORDS))}} if reversed_ids else None
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if vocab is None:
        tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)
    return Path(folder)


def write_corpus(path: Path, words: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    Path(path).write_text(" ".join(rng.choice(WORDS) for _ in range(words)))
    return Path(path)


def save_gpt2(folder: Path, layers: int = 2, width: int = 16, positions: int = 32, seed: int = 0,
              vocab: int = VOCAB) -> Path:
    """A GPT-2 of ``layers`` layers with random weights, saved with its config."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=2, n_positions=positions,
                        initializer_range=0.2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return Path(folder)


def write_llama_config(folder: Path, layers: int = 16) -> Path:
    """config.json alone of a Llama-layout model (what a spec reads to count its units), no weights."""
    from transformers import LlamaConfig
    Path(folder).mkdir(parents=True, exist_ok=True)
    LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096).to_json_file(
        Path(folder) / "config.json")
    return Path(folder)

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


def write_language_tables(out: Path, layers: dict[str, int], single: dict[int, float] | None = None,
                          spans: int = 2, random_k: int = 0) -> list[str]:
    """Lesion tables of GPT-2 configs (no weights: analysis reads only their structure), one imported run per
    label with ``layers`` layers, scored on next tokens: intact loss 3.0 nats at 80% next-token error; single
    deletions, unit u adding ``single.get(u, 0.1 * u)`` nats and ten times that in error points; spans of up to
    ``spans`` layers; random deletions of 1..``random_k`` units, 6 draws each. Returns the run ids."""
    import math

    from transformers import GPT2Config

    from orchestrator import store
    from workloads.models import network_config

    def row(run_id, study, k, draw, deleted, loss):
        return {"unit_key": f"{run_id}-{study}-{k}-{draw}", "k": k, "draw": draw, "deleted": deleted, "order": [],
                "kendall_tau": 1.0, "active_blocks": 0, "error": min(0.8 + (loss - 3.0) / 10, 1.0), "loss": loss,
                "examples": 96, "precision": "fp32", "bn_recalibrated": False, "seconds": 0.01, "test_rule": "",
                "metric": "next_token", "perplexity": math.exp(loss), "kl_from_intact": None,
                "agreement_with_intact": None, "entropy": None}

    runs = []
    for label, n in layers.items():
        config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=n, n_head=2, n_positions=32, bos_token_id=1,
                            eos_token_id=1).to_json_string(use_diff=False)
        cfg = network_config("hf_causal_lm", hf_config=config, in_channels=1, num_classes=VOCAB, image_size=8)
        runs.append({"run_id": f"{label}.pretrained.s0", "label": label, "network": "hf_causal_lm", "variant": "{}",
                     "mode": "pretrained", "seed": 0, "dataset": "text", "iterations": 0, "epochs": 0,
                     "test_error": float("nan"), "test_loss": float("nan"), "num_blocks": 2 * n, "parameters": 1,
                     "checkpoint": "-", "train_seconds": 0.0, "net_config": cfg.to_json(), "train_config": "{}"})
    store.write_table(out, "runs", runs)
    single = single or {}
    for run, n in zip(runs, layers.values()):
        r = run["run_id"]
        cost = {u: single.get(u, 0.1 * u) for u in range(2 * n)}
        store.write_part(out, "lesion", "intact", r, f"i-{r}", [row(r, "intact", 0, 0, [], 3.0)])
        store.write_part(out, "lesion", "single_deletion", r, f"s-{r}",
                         [row(r, "single_deletion", 1, u, [u], 3.0 + cost[u]) for u in range(2 * n)])
        store.write_part(out, "lesion", "span_deletion", r, f"p-{r}",
                         [row(r, "span_deletion", length, s, list(range(2 * s, 2 * (s + length))),
                              3.0 + sum(cost[u] for u in range(2 * s, 2 * (s + length))))
                          for length in range(1, spans + 1) for s in range(n - length + 1)])
        if random_k:
            draws = [sorted({(d + 2 * i) % (2 * n) for i in range(k)}) for k in range(1, random_k + 1) for d in range(6)]
            store.write_part(out, "lesion", "random_deletion", r, f"r-{r}",
                             [row(r, "random_deletion", len(b), j, b, 3.0 + sum(cost[u] for u in b))
                              for j, b in enumerate(draws)])
    return [run["run_id"] for run in runs]

"""The divergence columns of the lesion table on a large vocabulary: peak memory, and cost per plan.

A Llama-shaped causal language model of small width with a 128k-token vocabulary (random weights: width 256,
4 layers, 8 units), on random token sequences, in one run:
  (a) memory: the engine's peak rise over the loaded model for one chunk of sequences and a few plans, with
      divergence (the head by slices of positions), against the bound divergence.py states; and the head on the
      whole chunk at once (what the engine did before slicing: divergence off, a budget of the whole chunk),
      each in a fresh process under glibc's own malloc (the peak of live tensors); and the resident set under
      the tuned allocator (runtime.py), whose kept holes add to it (measured: 2.5x the live peak on one chunk,
      no more on 8);
  (b) cost: the lesion pass over intact, every single unit and every span of two layers, with the divergence
      columns and without (loss and error alone), seconds per plan.
Prints ``memory: peak/bound=X`` (at most 1 when the bound holds; a chunk of 8 sequences of 256 tokens, 2048
positions, against slices of 128 on a CPU) and ``divergence cost per plan=Y`` (with / without).
``vocabulary_memory`` and ``divergence_cost`` return the numbers for other benchmarks (tasks_engine.py).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import GLIBC_TUNABLES, reexec_with_tuned_allocator  # noqa: E402

if __name__ == "__main__":
    reexec_with_tuned_allocator()

import torch  # noqa: E402

from benchmarks.memory import PeakMemory  # noqa: E402
from workloads.surgery import delete_blocks, delete_span, evaluate_plans, intact, layer_spans  # noqa: E402
from workloads.surgery.divergence import default_logit_budget  # noqa: E402

SHAPE = {"vocab": 131072, "hidden": 256, "layers": 4, "sequences": 8, "length": 256}


def llama(vocab: int, hidden: int, layers: int, **_):
    """The BlockNetwork of a Llama-shaped model with random weights (4 heads, MLP 2.75 x wide, untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from workloads.models.adapters.hf import from_causal_lm
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=4096, initializer_range=0.2, tie_word_embeddings=False)
    return from_causal_lm(LlamaForCausalLM(config).eval())


def tokens(vocab: int, sequences: int, length: int, **_) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, vocab, (sequences, length), generator=g),
            torch.randint(0, vocab, (sequences, length), generator=g))


def lesion_plans(infos) -> list:
    """A lesion batch: intact, every single unit, every span of two layers."""
    spans = [delete_span(infos, start, length) for start, length in layer_spans(infos, 2) if length == 2]
    return [intact(infos)] + [delete_blocks(infos, [i]) for i in range(len(infos))] + spans


def _bound_mb(shape: dict, budget: int) -> float:
    """What divergence.py and evaluate.py state the engine holds for token data, in MiB: the walk's activations
    (depth x one chunk's), the intact final state, the leaves waiting (max(budget, one activation) elements) and one
    slice's logits (five float32 [S, V] tensors, S no more than the chunk's positions)."""
    positions = shape["sequences"] * shape["length"]
    activation = positions * shape["hidden"]
    depth = 2 * shape["layers"]
    slice_logits = min(max(1, budget // shape["vocab"]), positions) * shape["vocab"]
    return ((depth + 2) * activation + max(budget, activation) + 5 * slice_logits) * 4 / 2**20


def _measure(shape: dict, device: str, budget: int, divergence: bool) -> dict:
    """One evaluate_plans over one chunk, its peak rise in MiB (run in a fresh process)."""
    device = torch.device(device)
    net = llama(**shape).to(device)
    ids, labels = tokens(**shape)
    plans = lesion_plans(net.block_infos())[:3]
    # code and buffers the first call touches are not the engine's: a call on one short sequence first
    evaluate_plans(net, plans, ids[:1, :8], labels[:1, :8], device=device, precision="fp32", divergence=divergence,
                   logit_budget=budget)
    with PeakMemory(device) as mem:
        evaluate_plans(net, plans, ids, labels, chunk_size=shape["sequences"], device=device, precision="fp32",
                       divergence=divergence, logit_budget=budget)
    return {"peak_mb": mem.peak_mb}


def _in_fresh_process(shape: dict, device: str, budget: int, divergence: bool, tuned: bool = False) -> dict:
    """``_measure`` in a new process, under glibc's own malloc (memory freed goes back: the peak of live tensors)
    or ``tuned``, the allocator the benchmarks and evaluators run with (freed memory kept: the heap's high water,
    holes included)."""
    args = json.dumps({"shape": shape, "device": device, "budget": budget, "divergence": divergence})
    env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES if tuned else ""}  # "": set, so no re-exec, and empty
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", args], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def vocabulary_memory(vocab: int = SHAPE["vocab"], *, device: str | None = None, budget: int | None = None,
                      **shape) -> dict:
    """Peak memory (MiB) of the engine with divergence on a Llama-shaped model of ``vocab`` tokens: of its live
    tensors against the stated bound, and its resident set under the tuned allocator; and of the head on the whole
    chunk: {"vocab", "positions", "budget", "slice_positions", "peak_mb", "bound_mb", "tuned_peak_mb",
    "whole_chunk_peak_mb", "whole_chunk_logits_mb"}."""
    shape = {**SHAPE, **shape, "vocab": vocab}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    budget = budget or default_logit_budget(torch.device(device))
    positions = shape["sequences"] * shape["length"]
    sliced = _in_fresh_process(shape, device, budget, divergence=True)
    tuned = _in_fresh_process(shape, device, budget, divergence=True, tuned=True)
    whole = _in_fresh_process(shape, device, positions * vocab, divergence=False)
    return {"vocab": vocab, "positions": positions, "budget": budget, "slice_positions": max(1, budget // vocab),
            "peak_mb": sliced["peak_mb"], "bound_mb": _bound_mb(shape, budget), "tuned_peak_mb": tuned["peak_mb"],
            "whole_chunk_peak_mb": whole["peak_mb"], "whole_chunk_logits_mb": positions * vocab * 4 / 2**20}


def divergence_cost(vocab: int = SHAPE["vocab"], *, device: str | None = None, precision: str | None = None,
                    repeats: int = 2, **shape) -> dict:
    """Seconds per plan of a lesion batch with the divergence columns and without (the best of ``repeats``):
    {"plans", "with_s", "without_s", "ratio"}."""
    from workloads.surgery.evaluate import default_precision
    shape = {**SHAPE, **shape, "vocab": vocab}
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = precision or default_precision(device)
    net = llama(**shape).to(device)
    ids, labels = tokens(**shape)
    plans = lesion_plans(net.block_infos())
    evaluate_plans(net, plans[:2], ids[:1], labels[:1], device=device, precision=precision)  # warm-up
    seconds = {False: float("inf"), True: float("inf")}
    for _ in range(repeats):  # alternated, so a change of load on a shared machine falls on both
        for divergence in (False, True):
            t = time.perf_counter()
            results = evaluate_plans(net, plans, ids, labels, device=device, precision=precision,
                                     divergence=divergence)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[divergence] = min(seconds[divergence], (time.perf_counter() - t) / len(plans))
    assert results[0].kl == 0.0 and results[0].agreement == 1.0
    return {"plans": len(plans), "with_s": seconds[True], "without_s": seconds[False],
            "ratio": seconds[True] / seconds[False]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 sequences of 128 tokens")
    p.add_argument("--vocab", type=int, nargs="+", default=[131072], help="vocabularies to measure (e.g. 131072 262144)")
    p.add_argument("--sequences", type=int, default=None)
    p.add_argument("--length", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--measure", help=argparse.SUPPRESS)  # a child process: one memory measurement
    args = p.parse_args(argv)
    if args.measure:
        child = json.loads(args.measure)
        print(json.dumps(_measure(child["shape"], child["device"], child["budget"], child["divergence"])))
        return 0
    shape = {"sequences": args.sequences or (4 if args.quick else SHAPE["sequences"]),
             "length": args.length or (128 if args.quick else SHAPE["length"])}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"Llama-shaped, width {SHAPE['hidden']}, {SHAPE['layers']} layers, random weights, on {device} "
          f"({torch.get_num_threads()} threads), {shape['sequences']} sequences of {shape['length']} tokens, fp32")
    ratios = []
    for vocab in args.vocab:
        m = vocabulary_memory(vocab, device=device, **shape)
        print(f"vocabulary {vocab}: {m['positions']} positions a chunk, slices of {m['slice_positions']} "
              f"(budget {m['budget']:,} logits): live tensors peak +{m['peak_mb']:,.0f} MiB, bound "
              f"{m['bound_mb']:,.0f} MiB (resident under the tuned allocator, its holes included: "
              f"+{m['tuned_peak_mb']:,.0f} MiB); the head on the whole chunk: peak +{m['whole_chunk_peak_mb']:,.0f} MiB "
              f"(its logits alone {m['whole_chunk_logits_mb']:,.0f} MiB)")
        ratios.append(m["peak_mb"] / m["bound_mb"])
    c = divergence_cost(args.vocab[0], device=device, **shape)
    print(f"lesion batch of {c['plans']} plans, vocabulary {args.vocab[0]}: {c['without_s'] * 1e3:,.0f} ms a plan "
          f"for loss and error, {c['with_s'] * 1e3:,.0f} ms with KL, agreement and entropy")
    print(f"memory: peak/bound={max(ratios):.2f} divergence cost per plan={c['ratio']:.2f}")
    return 0 if max(ratios) <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())

"""An lm-eval task under many layer deletions: the field's way against unravel's one pass.

The field's way (LLM-Drop, ShortGPT and the others' public code): for each configuration, the model with those
layers taken out of its ModuleList, wrapped in lm-eval's ``HFLM`` and scored by ``simple_evaluate`` (a full
forward per request batch, logits at every position). unravel's way: ``task_requests`` once, then
``score_tasks`` over every configuration at once (the plan trie shares prefixes across configurations, a
question's one-token choices share their context's row, and the head runs at the continuation positions alone),
lm-eval's own metrics on its answers. Same configurations, task, documents and tokens, in one run; the scores
are checked equal (accuracies exactly, to a relative 1e-6).

The model is GPT-2-small-shaped (12 layers, width 768, 12 heads, vocabulary 50257, random weights); the task is
HellaSwag-shaped (``--task hellaswag``: four multi-token endings per context) or MMLU-shaped (``--task mmlu``:
four one-token answers) in the words of a word-level tokenizer trained here, written as local JSON files.
Configurations: the intact model, every single layer deleted and every span of 2..``--max-span`` layers.
Prints each way's wall time and configurations per hour, unravel's peak memory (resident set, above the start),
and a last line ``ratio=X`` (field wall / unravel wall). ``--vocabulary 128256`` gives the model Llama 3's.
Then (unless ``--no-divergence``) the lesion table's side of the same study, from ``divergence.py``: the engine's
peak memory with a 128k-token vocabulary against the bound it states, and the cost per plan of the divergence
columns (KL, agreement, entropy) against the loss alone.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

import torch  # noqa: E402

from benchmarks.memory import PeakMemory  # noqa: E402

WORDS = [f"w{i}" for i in range(200)]


def word_tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<eos>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def write_task(folder: Path, task: str, documents: int, context_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    if task == "mmlu":
        docs = [{"ctx": words(context_words), "endings": rng.sample(WORDS, 4), "label": rng.randrange(4)}
                for _ in range(documents)]
    else:
        docs = [{"ctx": words(context_words), "endings": [words(rng.randint(8, 20)) for _ in range(4)],
                 "label": rng.randrange(4)} for _ in range(documents)]
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    name = f"bench_{task}"
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {data}}}}}\ntest_split: test\n"
        f"output_type: multiple_choice\ndoc_to_text: \"{{{{ctx}}}}\"\ndoc_to_choice: endings\ndoc_to_target: label\n"
        f"metric_list:\n  - {{metric: acc, aggregation: mean, higher_is_better: true}}\n"
        f"  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}\n")
    return name


def without_layers(model, layers: set[int]):
    """The field's way: a copy of the model with those decoder layers out of its ModuleList."""
    model = copy.deepcopy(model)
    model.transformer.h = torch.nn.ModuleList(l for j, l in enumerate(model.transformer.h) if j not in layers)
    return model


def scores_of(results: dict, task: str) -> dict:
    return {k: v for k, v in results["results"][task].items() if "," in k and "_stderr," not in k}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["hellaswag", "mmlu"], default="hellaswag")
    p.add_argument("--documents", type=int, default=12, help="documents of the task (4 requests each)")
    p.add_argument("--context-words", type=int, default=40, help="tokens of each document's context")
    p.add_argument("--max-span", type=int, default=1, help="configurations: spans of 1..this many layers, and intact")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=16, help="HFLM's batch size (the field's way)")
    p.add_argument("--vocabulary", type=int, default=50257, help="the model's vocabulary (Llama 3: 128256)")
    p.add_argument("--no-divergence", action="store_true",
                   help="skip the lesion table's divergence memory and cost (divergence.py)")
    args = p.parse_args(argv)

    from lm_eval.evaluator import simple_evaluate  # both ways start with lm-eval imported
    from lm_eval.models.huggingface import HFLM
    from transformers import GPT2Config, GPT2LMHeadModel

    from workloads.models.adapters.hf import from_causal_lm
    from workloads.surgery import delete_span, intact
    from workloads.tasks import TaskConfig, context_length, score_tasks, task_requests
    from workloads.tasks.loading import task_manager

    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="tasks_engine_"))
    tokenizer = word_tokenizer(root / "tokenizer")
    name = write_task(root, args.task, args.documents, args.context_words)
    config = TaskConfig(names=(name,), include_path=str(root), bootstrap_iters=0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=args.layers, n_embd=768, n_head=12, vocab_size=args.vocabulary,
                                       bos_token_id=1, eos_token_id=1)).eval()
    spans = [(start, length) for length in range(1, args.max_span + 1) for start in range(args.layers - length + 1)]
    print(f"GPT-2-small shape ({args.layers} layers, width 768, vocabulary {args.vocabulary}, random weights) on the CPU "
          f"({torch.get_num_threads()} threads), fp32; task {args.task}-shaped, {args.documents} documents; "
          f"{len(spans) + 1} configurations (intact and spans of 1..{args.max_span} layers)")

    t = time.perf_counter()
    with PeakMemory(torch.device("cpu")) as memory:   # first, from a clean heap (the field's would reuse it)
        net = from_causal_lm(model)
        infos = net.block_infos()
        plans = [intact(infos)] + [delete_span(infos, start, length) for start, length in spans]
        (requests,) = task_requests(config, tokenizer, context_length(model.config, tokenizer))
        ours = score_tasks(net, plans, requests, config, device="cpu", precision="fp32")
    unravel_wall = time.perf_counter() - t
    print(f"unravel: {requests.requests} requests, {len(requests.rows)} distinct rows, {requests.tokens} tokens "
          f"per configuration; {unravel_wall:.1f} s, {len(plans) * 3600 / unravel_wall:.0f} configurations/h, "
          f"{len(plans) * requests.tokens / unravel_wall:.0f} tokens/s, peak memory +{memory.peak_mb:.0f} MB")

    manager = task_manager(config)
    theirs = []
    t = time.perf_counter()
    for layers in [set()] + [set(range(s, s + n)) for s, n in spans]:
        lm = HFLM(pretrained=without_layers(model, layers), tokenizer=tokenizer, batch_size=args.batch_size,
                  device="cpu")
        theirs.append(scores_of(simple_evaluate(model=lm, tasks=[name], task_manager=manager, bootstrap_iters=0,
                                                log_samples=False), name))
    field_wall = time.perf_counter() - t
    print(f"field (simple_evaluate on HFLM per configuration, batch {args.batch_size}): {field_wall:.1f} s, "
          f"{len(plans) * 3600 / field_wall:.0f} configurations/h")

    mismatches = []
    for p_, (mine, expected) in enumerate(zip(ours, theirs)):
        got = {f"{m.metric},{m.filter}": m.value for m in mine.metrics}
        if set(got) != set(expected) or any(abs(got[k] - v) > 1e-6 * max(1.0, abs(v)) for k, v in expected.items()):
            mismatches.append((p_, got, expected))
    accs = sorted({round(s["acc,none"], 4) for s in theirs})
    print(f"scores: {len(plans) - len(mismatches)} of {len(plans)} configurations identical "
          f"(acc values seen: {accs[:6]}{' ...' if len(accs) > 6 else ''})")
    for p_, got, expected in mismatches[:3]:
        print(f"  configuration {p_}: unravel {got} against the field's {expected}")
    if not args.no_divergence:
        from benchmarks.divergence import divergence_cost, vocabulary_memory
        m = vocabulary_memory(131072, device="cpu")
        print(f"lesion engine, vocabulary 131072, {m['positions']} positions a chunk: live tensors peak "
              f"+{m['peak_mb']:,.0f} MiB against the stated bound {m['bound_mb']:,.0f} MiB (the head on the whole "
              f"chunk: +{m['whole_chunk_peak_mb']:,.0f} MiB)")
        c = divergence_cost(131072, device="cpu")
        print(f"lesion batch of {c['plans']} plans: {c['without_s'] * 1e3:,.0f} ms a plan for loss and error, "
              f"{c['with_s'] * 1e3:,.0f} ms with KL, agreement and entropy (x{c['ratio']:.2f})")
    print(f"ratio={field_wall / unravel_wall:.2f} identical={not mismatches}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

"""Lesion engine vs the naive loop on ResNet-110, CIFAR-shaped inputs (PAPERS.md F3, F5a, F5b).

In one run, on one device and precision:
  (1) naive: one full forward per plan, fp32, batches of 128, no_grad, NCHW (as public code does);
  (2) the engine: all plans in one trie walk per chunk;
  (3) ceiling: the intact network's forward at its best settings.
``--model vit_b_16`` runs the same on a ViT-B/16-shaped torchvision Vision Transformer (random weights,
224 px inputs) seen as 24 residual units (an attention and an MLP unit per layer, vit_adapter.py), whose
reorders swap units of a kind. ``--model gpt2`` runs it on a GPT-2-small-shaped causal language model (12 layers,
width 768, 12 heads, vocabulary 50257, random weights) as 24 units (hf_adapter.py), on random token sequences
(``--sequence-length``, 256), scored on next-token loss and accuracy at every position (an example is a position).
Checks that (1) and (2) agree within one example per plan, then prints
``speedup=X ideal=Y efficiency=Z``: speedup = naive wall / engine wall; ideal = naive block
evaluations / engine block evaluations; efficiency = engine block evaluations per second /
the ceiling's. Targets on a 2-core CPU: speedup >= ideal, efficiency >= 0.9.
Both count blocks only. Each plan also runs the head and its loss once (naive and engine alike), which a
ResNet's pooling and classifier make negligible but a language model's vocabulary does not (GPT-2's head is
~10 units of work per token); a second line counts the head too, at its measured cost in units.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

import torch  # noqa: E402

from benchmarks.memory import PeakMemory  # noqa: E402
from workloads.models import build_network  # noqa: E402
from workloads.surgery import (PlanTrie, delete_blocks, deletion_pool, evaluate_plans, forward_plan, intact,  # noqa: E402
                               random_deletion, random_swaps)
from workloads.surgery.evaluate import autocast_for, default_precision, input_chunk_size  # noqa: E402
from workloads.surgery.loss import summed  # noqa: E402
from workloads.surgery.trie import naive_block_runs  # noqa: E402


def sweep_plans(infos, draws: int, studies: str):
    plans = [intact(infos)]
    if "F3" in studies:
        plans += [delete_blocks(infos, [i]) for i in deletion_pool(infos)]
    if "F5a" in studies:
        plans += [random_deletion(infos, k, d) for k in range(1, 21) for d in range(draws)]
    if "F5b" in studies:
        plans += [random_swaps(infos, k, d) for k in range(1, 28) for d in range(draws)]
    return plans


def trained_like(net):
    """Random weights with non-trivial BatchNorm statistics, so errors vary across plans."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.25)
    return net.eval()


def naive(net, plans, images, labels, device, batch=128):
    correct = []
    with torch.no_grad():
        for plan in plans:
            c = 0
            for s in range(0, len(images), batch):
                x = images[s:s + batch].to(device)
                c += int(summed(forward_plan(net, plan, x), labels[s:s + batch].to(device))[1])
            correct.append(c)
    return correct


def ceiling(net, images, device, precision, chunk, repeats):
    fmt = torch.channels_last if images.dim() == 4 else torch.contiguous_format  # token ids: no channels
    if images.dim() == 4:
        net = net.to(memory_format=fmt)
    with torch.inference_mode(), autocast_for(device, precision):
        for s in range(0, min(len(images), chunk * 2), chunk):  # warm-up
            net(images[s:s + chunk].to(device).contiguous(memory_format=fmt))
        _sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            for s in range(0, len(images), chunk):
                net(images[s:s + chunk].to(device).contiguous(memory_format=fmt))
        _sync(device)
    return repeats * len(images) / (time.perf_counter() - t)


def head_in_blocks(net, images, labels, device, precision, chunk) -> float:
    """The head and its loss on one chunk, in units of the mean block's time on it (measured, warm)."""
    x = images[:chunk].to(device)
    y = labels[:chunk].to(device)
    with torch.inference_mode(), autocast_for(device, precision):
        h = net.stem(x)
        for block in net.blocks:
            h = block(h)
        summed(net.head(h), y)       # warm-up
        _sync(device)
        t = time.perf_counter()
        top = net.stem(x)
        for block in net.blocks:
            top = block(top)
        _sync(device)
        blocks = time.perf_counter() - t
        t = time.perf_counter()
        summed(net.head(top), y)
        _sync(device)
        head = time.perf_counter() - t
    return head / (blocks / net.num_blocks)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small sweep that runs in under two minutes on 2 CPU cores")
    p.add_argument("--draws", type=int, default=None, help="random draws per k for F5a and F5b (paper: 100)")
    p.add_argument("--examples", type=int, default=None, help="test examples (CIFAR-10 test set: 10000)")
    p.add_argument("--studies", default="F3,F5a,F5b", help="comma-separated subset of F3,F5a,F5b")
    p.add_argument("--network", default="resnet110")
    p.add_argument("--model", choices=["vit_b_16", "gpt2"], default=None,
                   help="a transformer instead of --network: vit_b_16 (ViT-B/16 shape, random weights, 224 px) or "
                        "gpt2 (GPT-2-small shape, random weights, token sequences)")
    p.add_argument("--sequence-length", type=int, default=256, help="--model gpt2: tokens per sequence")
    p.add_argument("--chunk", type=int, default=None, help="engine chunk size (default: chosen for the device)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    draws = args.draws if args.draws is not None else (1 if args.quick else 100)
    if args.model == "gpt2":  # a sequence is 256 examples (positions), each forward ~60 GFLOP on a CPU
        examples = args.examples if args.examples is not None else (2 if args.quick else 64)
        if args.studies == p.get_default("studies"):
            args.studies = "F3,F5a"  # single-unit and k random unit deletions
    else:
        examples = args.examples if args.examples is not None else (128 if args.quick else 2000)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision or default_precision(device)
    torch.manual_seed(0)
    if args.model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        from workloads.models.adapters.hf import check_adapter, from_causal_lm
        lm = GPT2LMHeadModel(GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257,
                                        n_positions=max(1024, args.sequence_length))).eval()
        net = from_causal_lm(lm).to(device)
        check_adapter(lm.to(device), net, torch.randint(0, 50257, (2, args.sequence_length), device=device),
                      rtol=1e-3, atol=1e-4)
        args.network = args.model
    elif args.model:
        import torchvision

        from workloads.models.adapters.vit import check_adapter, from_torchvision_vit
        vit = getattr(torchvision.models, args.model)().eval()
        with torch.no_grad():  # torchvision zero-initialises the classifier: errors would not vary across plans
            vit.heads.head.weight.normal_(0, 0.02)
        net = from_torchvision_vit(vit).to(device)
        check_adapter(vit.to(device), net, torch.randn(2, 3, 224, 224, device=device), rtol=1e-3, atol=1e-4)
        args.network, size = args.model, 224
    else:
        net = trained_like(build_network(args.network)).to(device)
        size = 32
    infos = net.block_infos()
    if args.model == "gpt2":
        images = torch.randint(0, 50257, (examples, args.sequence_length))
        labels = torch.randint(0, 50257, (examples, args.sequence_length))
    else:
        images = torch.randn(examples, 3, size, size)
        labels = torch.randint(0, 10, (examples,))
    plans = sweep_plans(infos, draws, args.studies)
    trie = PlanTrie.build(plans, infos)
    chunk = args.chunk or input_chunk_size(net, device, images)
    what = f"sequences of {args.sequence_length} tokens" if args.model == "gpt2" else "images"
    print(f"{args.network} on {device} ({torch.get_num_threads()} threads), {precision}, "
          f"{examples} {what}, {len(plans)} plans ({args.studies}, {draws} draws per k), engine chunk {chunk}")

    with PeakMemory(device) as mem_naive:
        t = time.perf_counter()
        with autocast_for(device, precision):
            naive_correct = naive(net, plans, images, labels, device)
        _sync(device)
        naive_wall = time.perf_counter() - t
    with PeakMemory(device) as mem_engine:
        t = time.perf_counter()
        results = evaluate_plans(net, plans, images, labels, chunk_size=chunk, precision=precision, device=device)
        _sync(device)
        engine_wall = time.perf_counter() - t
    ceiling_rate = ceiling(net, images, device, precision, chunk, repeats=2)

    mismatches = [i for i, (a, r) in enumerate(zip(naive_correct, results)) if abs(a - r.correct) > 1]
    naive_blocks = naive_block_runs(plans) * examples  # sequences, not positions: the block counts of a ratio
    engine_blocks = trie.block_runs * examples
    speedup = naive_wall / engine_wall
    ideal = naive_blocks / engine_blocks
    efficiency = (engine_blocks / engine_wall) / (ceiling_rate * net.num_blocks)
    print(f"naive : {naive_wall:8.2f} s  {naive_blocks:>12,d} block evaluations  "
          f"{naive_blocks / naive_wall:12,.0f} blocks/s  peak +{mem_naive.peak_mb:,.0f} MiB")
    print(f"engine: {engine_wall:8.2f} s  {engine_blocks:>12,d} block evaluations  "
          f"{engine_blocks / engine_wall:12,.0f} blocks/s  peak +{mem_engine.peak_mb:,.0f} MiB  "
          f"({trie.num_leaves} distinct plans)")
    if args.network.startswith(("resnet", "preact")):  # the CIFAR ResNets' widest activation: 16 x 32 x 32
        act_mb = max(chunk, 1) * 16 * 32 * 32 * 4 / 2**20
        print(f"memory bound of the engine: depth {net.num_blocks} x one chunk's activation "
              f"({act_mb:.0f} MiB at chunk {chunk}) = {net.num_blocks * act_mb:,.0f} MiB, whatever the number of plans")
    print(f"ceiling: intact forward {ceiling_rate:,.0f} {what.split()[0]}/s = {ceiling_rate * net.num_blocks:,.0f} blocks/s")
    errs = [r.error for r in results]
    print(f"errors: intact {errs[0]:.4f}, min {min(errs):.4f}, max {max(errs):.4f}; "
          f"naive and engine agree within one example on {len(plans) - len(mismatches)}/{len(plans)} plans")
    print(f"speedup={speedup:.2f} ideal={ideal:.2f} efficiency={efficiency:.2f}")
    h = head_in_blocks(net, images, labels, device, precision, chunk)
    naive_work = naive_blocks + h * len(plans) * examples
    engine_work = engine_blocks + h * trie.num_leaves * examples
    print(f"counting each plan's head and loss as {h:.1f} blocks (measured): ideal={naive_work / engine_work:.2f} "
          f"efficiency={(engine_work / engine_wall) / (ceiling_rate * (net.num_blocks + h)):.2f}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

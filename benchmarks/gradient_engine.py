"""Gradient by path length (PAPERS.md F6b): the engine vs one forward + one backward per draw.

For k = 1..54 on ResNet-110 with CIFAR-shaped inputs, in one run: (1) the naive way, one
full forward with the other branch detached and one full backward per draw (fp32, as
public code does it); (2) the engine, one forward per batch and input-only VJPs through
the chosen branches with renormalised cotangents; (3) the naive way in float64, as the
reference for accuracy (fp32 underflows for long paths). Last line:
``speedup=X maxreldiff=Y``. Targets: speedup >= 2.5 on CPU, maxreldiff <= 1e-4.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

import torch  # noqa: E402

from benchmarks.lesion_engine import trained_like  # noqa: E402
from benchmarks.memory import PeakMemory  # noqa: E402
from workloads.models import build_network  # noqa: E402
from workloads.surgery import choose_blocks, gradient_norms, naive_gradient_norm  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="runs in under two minutes on 2 CPU cores")
    p.add_argument("--draws", type=int, default=None, help="draws per path length k (paper: 1000)")
    p.add_argument("--batch", type=int, default=None, help="training-batch size per forward (paper: 128)")
    p.add_argument("--network", default="resnet110")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    draws = args.draws if args.draws is not None else (1 if args.quick else 5)
    batch = args.batch if args.batch is not None else (16 if args.quick else 128)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    net = trained_like(build_network(args.network)).to(device)
    n = net.num_blocks
    images = torch.randn(batch, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (batch,), device=device)
    pairs = [(k, d) for k in range(1, n + 1) for d in range(draws)]
    print(f"{args.network} on {device}, batch {batch}, k = 1..{n}, {draws} draw(s) per k: {len(pairs)} draws")

    # warm-up both ways (kernel selection, allocator) outside the timings
    gradient_norms(net, images, labels, pairs[:2])
    naive_gradient_norm(net, images, labels, choose_blocks(n, 1, 0))
    with PeakMemory(device) as mem_engine:
        t = time.perf_counter()
        results = gradient_norms(net, images, labels, pairs)
        engine_wall = time.perf_counter() - t
    with PeakMemory(device) as mem_naive:
        t = time.perf_counter()
        naive32 = []
        for k, d in pairs:
            net.zero_grad(set_to_none=True)
            naive32.append(naive_gradient_norm(net, images, labels, choose_blocks(n, k, d)))
        naive_wall = time.perf_counter() - t
    net64 = trained_like(build_network(args.network)).to(device)
    net64.load_state_dict(net.state_dict())
    net64.double()
    t = time.perf_counter()
    naive64 = [naive_gradient_norm(net64, images.double(), labels, r.chosen) for r in results]
    wall64 = time.perf_counter() - t

    rel = [abs(10.0 ** (r.log10_norm - math.log10(ref)) - 1.0) for r, ref in zip(results, naive64) if ref > 0]
    underflow = sum(1 for v in naive32 if v == 0.0)
    by_k = {}
    for r in results:
        by_k.setdefault(r.k, []).append(r.log10_norm)
    slope = (sum(by_k[n]) / len(by_k[n]) - sum(by_k[1]) / len(by_k[1])) / (n - 1)
    print(f"naive fp32   : {naive_wall:8.2f} s  ({naive_wall / len(pairs) * 1e3:.1f} ms/draw)  peak +{mem_naive.peak_mb:,.0f} MiB"
          f"  underflowed to 0 on {underflow}/{len(pairs)} draws")
    print(f"engine       : {engine_wall:8.2f} s  ({engine_wall / len(pairs) * 1e3:.1f} ms/draw)  peak +{mem_engine.peak_mb:,.0f} MiB")
    print(f"naive float64: {wall64:8.2f} s  (reference for accuracy, {len(rel)} comparable draws)")
    print(f"log10 norm: k=1 {by_k[1][0]:.2f}, k={n // 2} {by_k[n // 2][0]:.2f}, k={n} {by_k[n][0]:.2f}; "
          f"mean slope {slope:.3f} per block (x{10 ** slope:.3f})")
    print(f"speedup={naive_wall / engine_wall:.2f} maxreldiff={max(rel):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

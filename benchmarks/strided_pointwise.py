"""Training speed of the AVX2 kernel-fault remedy: strided 1x1 convolutions as a subsample and a stride-1
convolution (``workloads/train/kernel_faults.py``) against oneDNN's own strided kernel.

Same trainer, network, data and steps, in one run; each measurement in its own process, because the
strided kernel corrupts the heap on CPUs without AVX-512 (a crash is reported, not fatal). Run it twice
to see both ISAs on an AVX-512 machine: as is, and with ``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``.
Prints images/s of both and ``ratio=`` (remedy / strided kernel; 1.00 = no cost) per network.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from workloads.runtime import reexec_with_tuned_allocator  # noqa: E402

reexec_with_tuned_allocator()

# networks of both papers with strided 1x1 convolutions, CIFAR-shaped (32x32, 3 channels, widths 16/32/64)
NETWORKS = {
    "resnet56 option B": ("resnet56", {"option": "B"}),
    "resnet56 1x1 conv shortcut": ("resnet56", {"shortcut": "conv"}),
    "resnet56 exclusive gating": ("resnet56", {"shortcut": "exclusive_gating"}),
    "resnet164 (bottleneck) option B": ("resnet164", {"option": "B", "depth": 56}),
}


def images_per_second(name: str, remedy: bool, steps: int, threads: int) -> float:
    """Train ``name`` for ``steps`` after 3 warm-up steps; the strided kernel put back unless ``remedy``."""
    import torch
    from torch import nn

    from workloads.data import TensorDataset
    from workloads.models import network_config
    from workloads.train.kernel_faults import SubsampledPointwiseConv2d
    from workloads.train.loop import Trainer
    from workloads.train.recipe import TrainConfig

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1024, 3, 32, 32, generator=g), torch.randint(0, 10, (1024,), generator=g)
    data = TensorDataset("cifar-shaped", x, y, x[:128], y[:128], 10, "cifar")
    arch, overrides = NETWORKS[name]
    trainer = Trainer(network_config(arch, **overrides), TrainConfig(iterations=steps + 3, seed=0), data)
    if not remedy:
        for m in trainer.net.modules():
            if type(m) is SubsampledPointwiseConv2d:
                m.__class__ = nn.Conv2d
    for _ in range(3):
        trainer.step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    return steps * trainer.config.batch_size / (time.perf_counter() - start)


def measure(name: str, remedy: bool, steps: int, threads: int) -> float | str:
    """images/s from a fresh process, or why it died."""
    cmd = [sys.executable, __file__, "--one", name, "--steps", str(steps), "--threads", str(threads)]
    result = subprocess.run(cmd + ([] if remedy else ["--strided-kernel"]), capture_output=True, text=True,
                            cwd=ROOT)
    if result.returncode != 0:
        sig = -result.returncode
        why = signal.Signals(sig).name if result.returncode < 0 else f"exit {result.returncode}"
        return f"crashed ({why}: {result.stderr.strip().splitlines()[-1][:60] if result.stderr.strip() else ''})"
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (about 2 minutes on 2 cores)")
    p.add_argument("--steps", type=int, default=None, help="timed steps of batch 128 per measurement")
    p.add_argument("--repeats", type=int, default=None, help="measurements per way (the median is printed)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--strided-kernel", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    steps = args.steps or (8 if args.quick else 30)
    if args.one:
        print(json.dumps(images_per_second(args.one, not args.strided_kernel, steps, args.threads)))
        return 0
    import torch
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN ISA cap "
          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none (native)')}, {args.threads} threads, batch 128, "
          f"{steps} timed steps, median of {repeats}")
    for name in NETWORKS:
        ways = {}
        for remedy in (False, True):
            runs = [measure(name, remedy, steps, args.threads) for _ in range(repeats)]
            crashed = [r for r in runs if isinstance(r, str)]
            ways[remedy] = crashed[0] if crashed else statistics.median(runs)
        strided, ours = ways[False], ways[True]
        ratio = f"ratio={ours / strided:.2f}" if isinstance(strided, float) and isinstance(ours, float) else "ratio=n/a"
        fmt = lambda v: f"{v:7.0f} img/s" if isinstance(v, float) else v  # noqa: E731
        print(f"{name:32s} strided kernel {fmt(strided)}   remedy {fmt(ours)}   {ratio}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

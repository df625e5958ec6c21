"""Process-level settings that decide CPU speed: allocator tuning and thread counts.

On CPU, PyTorch's large activations go through glibc malloc's mmap path and page-fault on
every batch; keeping freed memory in the heap makes large batches 2-3x faster. glibc reads
its tunables at process start, so they must be in the environment of a new process
(``reexec_with_tuned_allocator`` for scripts, Ray's runtime_env for workers).
"""
from __future__ import annotations

import os
import sys

GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def allocator_env() -> dict[str, str]:
    return {"GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", GLIBC_TUNABLES)}


def reexec_with_tuned_allocator() -> None:
    """Restart this script once with the tuned allocator unless the user chose their own."""
    if "GLIBC_TUNABLES" not in os.environ and sys.platform.startswith("linux"):
        env = {**os.environ, "GLIBC_TUNABLES": GLIBC_TUNABLES}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def set_threads(num_threads: int | None = None) -> int:
    """Pin torch's intra-op threads (a reused Ray worker keeps the count of its first import)."""
    import torch
    n = num_threads or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (num_threads or os.cpu_count() or 1)
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()

"""Benchmarks: each prints ratios measured in one run against the naive way."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def local_ray_workspace(prefix: str) -> Iterator[Path]:
    """A scratch folder and a private local Ray with every CPU; both gone afterwards."""
    import ray

    from orchestrator.run.cluster import connect
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        connect(None, num_cpus=os.cpu_count(), dashboard=False)
        yield work
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

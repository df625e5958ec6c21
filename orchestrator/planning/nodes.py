"""The nodes a plan is for: declared (``--node cpu=8,gpu=1,count=4``), this machine, or a live Ray cluster's;
and how many workers of one shape they hold at once."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from orchestrator.experiment.document import Resources


@dataclass(frozen=True)
class Node:
    cpu: float
    gpu: float


class NodeError(ValueError):
    """A --node description that cannot be read; the message is one line."""


def fit_at_once(ask: Resources, nodes: list[Node]) -> int:
    """How many workers asking ``ask`` the nodes hold at once (each node packed on its own)."""
    total = 0
    for node in nodes:
        room = [math.floor(have / want + 1e-9) for have, want in ((node.cpu, ask.cpu), (node.gpu, ask.gpu)) if want > 0]
        total += min(room) if room else 0
    return total


def parse_node(text: str) -> list[Node]:
    """``cpu=8,gpu=1,count=4``: four nodes of 8 CPUs and one GPU (gpu and count default to 0 and 1)."""
    fields: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ("cpu", "gpu", "count") or name in fields:
            raise NodeError(f"--node {text}: expected cpu=N[,gpu=N][,count=N], e.g. --node cpu=8,gpu=1,count=4")
        try:
            fields[name] = float(value)
        except ValueError:
            raise NodeError(f"--node {text}: {name} must be a number, got {value.strip()!r}") from None
        whole = name != "count" or fields[name] == int(fields[name])
        if not math.isfinite(fields[name]) or fields[name] < 0 or not whole:
            raise NodeError(f"--node {text}: {name} must be a {'whole ' * (name == 'count')}number of at least 0")
    if "cpu" not in fields:
        raise NodeError(f"--node {text}: says no cpu=N")
    return [Node(fields["cpu"], fields.get("gpu", 0.0))] * int(fields.get("count", 1))


def local_nodes() -> list[Node]:
    """This machine as the private local Ray would see it: its usable CPUs and CUDA devices."""
    import torch
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [Node(float(cpus), float(torch.cuda.device_count()))]


def cluster_nodes(address: str) -> list[Node]:
    """The live nodes of the Ray cluster at ``address``, read by a driver that submits no work.
    Raises cluster.ClusterUnreachable where nothing answers."""
    import ray

    from orchestrator.run.cluster import connect
    owned = not ray.is_initialized()
    connect(address)
    try:
        return [Node(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
                for n in ray.nodes() if n.get("Alive")]
    finally:
        if owned:
            ray.shutdown()

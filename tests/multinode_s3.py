"""Run by test_object_storage.py in its own process: a 4-node local Ray cluster (a head that runs no work and
three 1-CPU workers, each node with its own temporary folder under /tmp, none shared) runs
`unravel run SPEC --out s3://...`, the driver a process of its own in an empty working folder; once a few
parts are on the bucket, a node running an evaluator is removed (not gracefully).

Usage: python multinode_s3.py SPEC.yaml URI WORKDIR  -- prints "code=N removed=R" (the CLI's exit code; 1 once
a node running an evaluator was taken away mid-sweep), then the CLI's output.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ray._private import ray_constants
from ray.cluster_utils import Cluster

from orchestrator import store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raylet_pid(node) -> int:
    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def evaluator_raylets() -> set[int]:
    """The raylets whose workers run an evaluator (its process title, ``ray::Evaluator``; its parent, the
    raylet that started it). Read from /proc: a driver attached here could sit on the node taken away."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::Evaluator"):
                status = (entry / "status").read_text()
                found.add(int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("PPid:"))))
        except OSError:
            continue
    return found


def main() -> None:
    spec, uri, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    short = Path(tempfile.mkdtemp(prefix="u-", dir="/tmp"))  # Ray's socket paths must stay short
    # a port of its own: a head takes 6379 by default, which another test's cluster may hold at the same time
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": str(short / "h"),
                                                            "gcs_server_port": free_port()})
    # two evaluators of 1 CPU, three 1-CPU workers: a spare for the evaluator whose node dies
    # (add_node cannot run off the main thread: it installs signal handlers)
    workers = [cluster.add_node(num_cpus=1, temp_dir=str(short / name)) for name in ("a", "b", "c")]
    cluster.wait_for_nodes()
    driver_dir = workdir / "driver"
    driver_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    removed = []

    def remove_one() -> None:  # once a few batches are on the bucket, take a node away (not gracefully)
        while len(store.data_files(uri, "lesion")) < 3 or not evaluator_raylets() & set(map(raylet_pid, workers)):
            time.sleep(0.1)
        busy = evaluator_raylets()
        victim = next(w for w in workers if raylet_pid(w) in busy)
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(victim)

    threading.Thread(target=remove_one, daemon=True).start()
    try:
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", spec, "--out", uri,
                                 "--address", cluster.address], cwd=driver_dir, env=env, capture_output=True,
                                text=True, timeout=900)
        # flushed at once: Ray's test cluster has been seen to abort in its own teardown
        print(f"code={result.returncode} removed={len(removed)}", flush=True)
        print(result.stdout[-3000:], flush=True)
        print(result.stderr[-3000:], file=sys.stderr, flush=True)
    finally:
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    main()

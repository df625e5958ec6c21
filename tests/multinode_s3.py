"""Run by test_object_storage.py in its own process: a 4-node local Ray cluster (a head that runs no work and
three 1-CPU workers, each node with its own temporary folder under /tmp, none shared) runs
`unravel run SPEC --out s3://...`, the driver a process of its own in an empty working folder; once a few
parts are on the bucket, a node running an evaluator is removed (not gracefully).

Usage: python multinode_s3.py SPEC.yaml URI WORKDIR  -- prints "code=N", the CLI's output, "nodes=N" and
"removed=1" once a node running an evaluator was taken away mid-sweep.
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

import ray
import ray.util.state
from ray.cluster_utils import Cluster

from orchestrator import store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    ray.init(address=cluster.address, log_to_driver=False)  # only to see where the evaluators run
    driver_dir = workdir / "driver"
    driver_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    removed = []

    def remove_one() -> None:  # once a few batches are on the bucket, take a node away (not gracefully)
        while len(store.data_files(uri, "lesion")) < 3:
            time.sleep(0.1)
        busy = {a.node_id for a in ray.util.state.list_actors(filters=[("state", "=", "ALIVE")])
                if a.class_name == "Evaluator"}
        victim = next(w for w in workers if w.node_id in busy)
        cluster.remove_node(victim, allow_graceful=False)
        removed.append(victim)

    threading.Thread(target=remove_one, daemon=True).start()
    try:
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", spec, "--out", uri,
                                 "--address", cluster.address], cwd=driver_dir, env=env, capture_output=True,
                                text=True, timeout=900)
        print(f"code={result.returncode}")
        print(result.stdout[-3000:])
        print(result.stderr[-3000:], file=sys.stderr)
        print(f"nodes={len(cluster.list_all_nodes())} removed={len(removed)}")
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Run by test_cluster.py in its own process: a 3-node local Ray cluster loses a node mid-sweep.

Usage: python multinode_sweep.py SPEC.json OUT  -- prints "total=N keys=K unique=U".
"""
import json
import socket
import sys
import threading
import time
from pathlib import Path

import ray
import ray.util.state
from ray.cluster_utils import Cluster

from orchestrator import store
from orchestrator.cluster import worker_env
from orchestrator.spec import parse_spec
from orchestrator.sweep import run_studies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    spec = parse_spec(json.loads(Path(sys.argv[1]).read_text()))
    out = Path(sys.argv[2])
    # a port of its own: a head takes 6379 by default, which another test's cluster may hold at the same time
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "gcs_server_port": free_port()})
    # two evaluators of 1 CPU, three 1-CPU workers: a spare for the evaluator whose node dies
    # (add_node cannot run off the main thread: it installs signal handlers)
    workers = [cluster.add_node(num_cpus=1) for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)

    def remove_one() -> None:  # once a few batches are written, take a node away (not gracefully)
        while len(list((out / "lesion").rglob("part-*.parquet"))) < 3:
            time.sleep(0.05)
        busy = {a.node_id for a in ray.util.state.list_actors(filters=[("state", "=", "ALIVE")])}
        victim = next(w for w in workers if w.node_id in busy)
        cluster.remove_node(victim, allow_graceful=False)
        print("removed a node running an evaluator", flush=True)

    threading.Thread(target=remove_one, daemon=True).start()
    outcome = run_studies(spec, out, progress=False)
    keys = store.read_parts(out, "lesion")["unit_key"].tolist() + store.read_parts(out, "gradients")["unit_key"].tolist()
    errors = store.read_parts(out, "errors")
    for message in sorted(set(errors["error"])) if len(errors) else []:
        print("error:", message[:300])
    print(f"total={outcome.total} keys={len(keys)} unique={len(set(keys))} failed={outcome.failed}")
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()

"""Run by test_object_storage.py in its own process: a 3-node local Ray cluster (a head that runs no work, two
1-CPU workers, each node with its own temporary folder under /tmp) runs `unravel run SPEC --out s3://...`, the driver a
process of its own in an empty working folder.

Usage: python multinode_s3.py SPEC.yaml URI WORKDIR  -- prints the CLI's exit code and output, then "nodes=N".
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ray.cluster_utils import Cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    spec, uri, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    short = Path(tempfile.mkdtemp(prefix="u-", dir="/tmp"))  # Ray's socket paths must stay short
    temps = [short / name for name in ("h", "a", "b")]
    # a port of its own: a head takes 6379 by default, which another test's cluster may hold at the same time
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": str(temps[0]),
                                                            "gcs_server_port": free_port()})
    for temp in temps[1:]:
        cluster.add_node(num_cpus=1, temp_dir=str(temp))
    cluster.wait_for_nodes()
    driver_dir = workdir / "driver"
    driver_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    try:
        result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "run", spec, "--out", uri,
                                 "--address", cluster.address], cwd=driver_dir, env=env, capture_output=True,
                                text=True, timeout=900)
        print(f"code={result.returncode}")
        print(result.stdout[-3000:])
        print(result.stderr[-3000:], file=sys.stderr)
        print(f"nodes={len(cluster.list_all_nodes())}")
    finally:
        cluster.shutdown()
        shutil.rmtree(short, ignore_errors=True)


if __name__ == "__main__":
    main()

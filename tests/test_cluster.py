"""The cluster paths for real: a job submitted to a `ray start` head (a node lost mid-sweep, on a multi-node
cluster writing to object storage, is in test_object_storage.py)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sweep_cases import BASE

pytestmark = pytest.mark.slow  # every test here starts Ray or a process

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_job_submitted_to_a_ray_start_head(tmp_path):
    """`ray start --head` on 127.0.0.1, the digits-shaped spec submitted with `ray job submit`.
    Only this test's Ray processes are ended (`ray stop` would end every Ray on the machine)."""
    bin_dir = Path(sys.executable).parent
    port, dash = _free_port(), _free_port()
    # a second Ray on the machine (the session's) holds the default agent ports: give this head its own
    agent_ports = [f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port")]
    temp = Path("/tmp") / f"unravel-head-{os.getpid()}"
    head = subprocess.Popen([str(bin_dir / "ray"), "start", "--head", "--block", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=true",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={temp}",
                             *agent_ports],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    spec = tmp_path / "job.yaml"
    small = {**BASE, "name": "job", "training": {**BASE["training"], "iterations": 10},
             "studies": {"test_examples": 60, "single_deletion": {}, "evaluators": {"count": 1, "cpu": 1}}}
    spec.write_text(yaml.safe_dump(small))
    out = tmp_path / "out"
    try:
        # token authentication is on for a `ray start` head in Ray 2.60: the client sends the token
        # that `ray start` keeps in ~/.ray/auth_token
        env = {**os.environ, "RAY_ADDRESS": f"http://127.0.0.1:{dash}", "RAY_AUTH_MODE": "token"}
        deadline = time.time() + 120
        while True:  # the Jobs API answers once the dashboard is up
            probe = subprocess.run([str(bin_dir / "ray"), "job", "list"], env=env, capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert time.time() < deadline, probe.stderr[-2000:]
            time.sleep(2)
        for _ in range(30):  # the job agent comes up a little after the dashboard answers
            job = subprocess.run([str(bin_dir / "ray"), "job", "submit", "--working-dir", str(HERE.parent), "--",
                                  str(bin_dir / "unravel"), "run", str(spec), "--out", str(out)],
                                 env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in job.stderr + job.stdout:
                break
            time.sleep(2)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower()
        runs = pq.read_table(out / "runs.parquet").to_pandas()
        assert sorted(runs["label"]) == ["plain", "res"]
        assert (out / "lesion" / "study=single_deletion").exists()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> set[str]:
    """The addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        for line in (path.read_text().splitlines()[1:] if path.exists() else []):
            local, state = line.split()[1], line.split()[3]
            ip_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            if table == "tcp":
                found.add(socket.inet_ntoa(bytes.fromhex(ip_hex)[::-1]))
            else:  # four little-endian 32-bit words
                raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, 32, 8))
                found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def test_the_private_local_ray_binds_its_dashboard_to_loopback():
    code = ("from orchestrator.run.cluster import connect; import ray, sys; connect(num_cpus=1); "
            "print(ray._private.worker.global_worker.node.address_info['webui_url'], flush=True); "
            "sys.stdin.readline(); ray.shutdown()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=HERE.parent, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("127.0.0.1:"), (url, proc.stderr.read()[-2000:] if proc.poll() is not None else "")
        port = int(url.rsplit(":", 1)[1])
        deadline = time.time() + 60
        while not _listening(port) and time.time() < deadline:
            time.sleep(0.5)
        assert _listening(port) == {"127.0.0.1"}  # not 0.0.0.0: nothing outside this machine reaches it
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

"""Connecting to Ray: a named cluster, or a private local one (never a stray cluster).

With no ``--address`` and no ``RAY_ADDRESS``, a private local Ray starts
(``address="local"``: a bare ``ray.init()`` would attach to, or hang on, any cluster
started by ``ray start`` on this machine), its dashboard bound to 127.0.0.1.
"""
from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager

import ray

from workloads.runtime import allocator_env

from orchestrator import faults
from orchestrator.run import interrupts

# Tune saves its experiment state at most every 10 s by default: after a SIGKILL a restore
# then re-ran finished trials. Saving every second keeps a kill cheap.
TUNE_STATE_PERIOD_S = "1"


def worker_env() -> dict[str, str]:
    """What every Ray worker of a sweep needs in its environment (and the fault tests' switch)."""
    env = {**allocator_env(), "TUNE_GLOBAL_CHECKPOINT_S": os.environ.get("TUNE_GLOBAL_CHECKPOINT_S",
                                                                         TUNE_STATE_PERIOD_S)}
    if os.environ.get(faults.ENV):
        env[faults.ENV] = os.environ[faults.ENV]
    return env


def quiet_tune() -> None:
    """Driver-side Tune settings: frequent state saves, no console tables (we draw our own bar)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", TUNE_STATE_PERIOD_S)
    # Tune warns on every forced state snapshot, which our frequent checkpoints trigger by design
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address given."""


def probe(address: str, timeout: float = 10.0) -> None:
    """Fail in bounded time where Ray would retry a dead address for minutes: a TCP connection
    to ``host:port`` (or ``ray://host:port``) must open within ``timeout`` seconds."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or "://" in target:
        return  # "auto" and other forms: left to Ray
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterUnreachable(f"no Ray cluster answers at {address} ({e.strerror or e}); start one "
                                 f"(ray start --head) or check --address / RAY_ADDRESS") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            dashboard: bool = True) -> str:
    """Initialise Ray once per process; returns a description of where work runs."""
    quiet_tune()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        probe(address)  # a dead address is an error, even where this process holds a session already
    if ray.is_initialized():
        return "the Ray session already running in this process"
    runtime_env = {"env_vars": worker_env()}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        interrupts.after_ray_init()
        return f"Ray cluster at {address}"
    with _in_their_own_session():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", runtime_env=runtime_env, log_to_driver=False)
    interrupts.after_ray_init()
    return "a private local Ray (dashboard on 127.0.0.1)" if dashboard else "a private local Ray"


@contextmanager
def _in_their_own_session():
    """Start the private Ray's processes in a session of their own. A SIGTERM or Ctrl-C sent to the command's
    process group (``timeout``, a terminal, ``kill -- -PGID``) then reaches the driver alone, which stops
    and shuts its Ray down (interrupts.py). Sent to the Ray's processes too, it raced the driver: the raylet
    died first and Ray ended the driver (exit 1, no word) as its object store went away, before the driver's
    handler ran. The processes still die with the driver: Ray binds each to it (PR_SET_PDEATHSIG)."""
    from ray._private import services, utils
    if sys.platform == "win32" or not utils.detect_fate_sharing_support():
        yield  # no kernel fate-sharing: Ray's reaper cleans up by process group, so they must stay in ours
        return
    started = services.ConsolePopen

    class InOwnSession(started):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = InOwnSession
    try:
        yield
    finally:
        services.ConsolePopen = started

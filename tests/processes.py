"""The real CLI in a process of its own, for the tests that signal or SIGKILL it (faults, interrupts,
object storage)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The real CLI in its own process group (a SIGKILL ends it and nothing else)."""
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Its exit code and stderr once it ends; past ``timeout``, its process group SIGKILLed and TimeoutExpired."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err

"""Named fault points, armed only by ``UNRAVEL_FAULTS``, so tests can inject real faults exactly where
a crash hurts most (between writing a result and renaming it into place, inside a training epoch).

``UNRAVEL_FAULTS="kill_before_rename=3"`` SIGKILLs this process at its 3rd atomic rename;
``UNRAVEL_FAULTS="raise_in_epoch=3"`` makes a training trial raise in its 3rd epoch;
``UNRAVEL_FAULTS="hold_in_epoch.long=3"`` holds the trials labelled ``long`` in their 3rd epoch
(a window to kill a sweep in, without a network slow enough to open one). A point named
``name.label`` applies only to runs of that label. Several are separated by commas. Unset
(always, outside the fault tests) a point costs one lookup.
"""
from __future__ import annotations

import os
import signal
import time

ENV = "UNRAVEL_FAULTS"
_seen: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised by an armed ``raise_*`` point."""


def _armed() -> dict[str, int]:
    armed = {}
    for item in os.environ.get(ENV, "").split(","):
        name, _, value = item.partition("=")
        if name.strip() and value.strip().isdigit():  # anything else arms nothing
            armed[name.strip()] = int(value)
    return armed


def kill_point(name: str) -> None:
    """SIGKILL this process the Nth time ``name`` is reached, N from ``UNRAVEL_FAULTS``."""
    at = _armed().get(name)
    if at is None:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] == at:
        os.kill(os.getpid(), signal.SIGKILL)


def _hit(name: str, value: int, label: str) -> bool:
    armed = _armed()
    return value in (armed.get(name), armed.get(f"{name}.{label}"))


def raise_point(name: str, value: int, label: str = "") -> None:
    """Raise ``InjectedFault`` when ``value`` equals the number armed for ``name`` (or ``name.label``)."""
    if _hit(name, value, label):
        raise InjectedFault(f"fault injected by {ENV} at {name}={value}")


def hold_point(name: str, value: int, label: str = "", seconds: float = 600.0) -> None:
    """Sleep (until killed, or ``seconds``) when ``value`` equals the number armed for ``name``."""
    if _hit(name, value, label):
        time.sleep(seconds)

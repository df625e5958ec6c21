"""Named fault points, armed only by ``UNRAVEL_FAULTS``, so tests can inject real faults exactly where
a crash hurts most (between writing a result and renaming it into place, inside a training epoch).

``UNRAVEL_FAULTS="kill_before_rename=3"`` SIGKILLs this process at its 3rd atomic rename;
``UNRAVEL_FAULTS="raise_in_epoch=3"`` makes a training trial raise in its 3rd epoch. Several are
separated by commas. Unset (always, outside the fault tests) a point costs one lookup.
"""
from __future__ import annotations

import os
import signal

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


def raise_point(name: str, value: int) -> None:
    """Raise ``InjectedFault`` when ``value`` equals the number armed for ``name``."""
    if _armed().get(name) == value:
        raise InjectedFault(f"fault injected by {ENV} at {name}={value}")

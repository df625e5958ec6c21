"""One writer of an output folder at a time: a second is refused at once instead of racing the first.
Locally the lock is a flock on ``.unravel.lock`` (it goes with the process, even on SIGKILL); object
storage has no locks, so there it is a lease object, renewed while the command runs."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

from orchestrator.location import Location
from orchestrator.store import layout


class OutputBusy(RuntimeError):
    """Another unravel process is writing the same output folder."""


@contextmanager
def writer_lock(out) -> Iterator[None]:
    """Hold ``<out>/.unravel.lock`` (flock) while writing: a second writer of the same folder is
    refused at once instead of racing the first. The lock goes with the process, even on SIGKILL.
    On object storage the lock is a lease object (``_lease``)."""
    out = layout.where(out)
    if not out.local:
        with _lease(out):
            yield
        return
    out.local_path.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_path(out).local_path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise OutputBusy(f"{out} is being written by another unravel process ({holder}); wait for it to "
                             f"finish or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {os.uname().nodename}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


LEASE_S = 60.0          # a lease not renewed for this long is lapsed (its writer is gone)
LEASE_SETTLE_S = 0.5    # between writing a lease and reading it back: a writer racing ours has written by then


def _holder(lease: dict) -> str:
    return f"pid {lease.get('pid')} on {lease.get('host')}"


def _read_lease(lock: Location) -> dict | None:
    try:
        return json.loads(lock.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:  # a torn or foreign file: treated as no lease
        return None


def _lapsed(lease: dict) -> bool:
    """Expired, or held by a process of this machine that is gone (a killed driver, rerun at once)."""
    if lease.get("expires", 0) < time.time():
        return True
    if lease.get("host") == os.uname().nodename:
        try:
            os.kill(int(lease["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, KeyError, ValueError):
            return False
    return False


@contextmanager
def _lease(out: Location) -> Iterator[None]:
    """OUT's writer lock on object storage: a lease object with an owner and an expiry, renewed while
    the command runs and deleted at its end. Taking it is write, wait, read back: of two writers that
    both found it free, the one whose lease is read back holds it; the other is refused."""
    lock = layout.lock_path(out)
    held = _read_lease(lock)
    if held is not None and not _lapsed(held):
        raise OutputBusy(f"{out} is being written by another unravel process ({_holder(held)}, lease until "
                         f"{time.strftime('%H:%M:%S', time.localtime(held['expires']))}); wait for it to finish "
                         f"or choose another --out")
    mine = {"pid": os.getpid(), "host": os.uname().nodename, "token": uuid.uuid4().hex}

    def renew() -> None:
        lock.write_bytes(json.dumps({**mine, "expires": time.time() + LEASE_S}).encode())

    renew()
    time.sleep(LEASE_SETTLE_S)
    now = _read_lease(lock) or {}
    if now.get("token") != mine["token"]:
        raise OutputBusy(f"{out} is being written by another unravel process ({_holder(now)}); wait for it "
                         f"to finish or choose another --out")
    stop = threading.Event()

    def keep() -> None:
        while not stop.wait(LEASE_S / 4):
            try:
                renew()
            except Exception:  # a blip: the next renewal tries again well before the lease lapses
                pass

    keeper = threading.Thread(target=keep, name="unravel-lease", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        if (_read_lease(lock) or {}).get("token") == mine["token"]:
            lock.delete()

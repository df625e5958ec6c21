"""Ctrl-C (SIGINT) and SIGTERM in ``unravel train``, ``lesion`` and ``run``: stop, keep what is written,
say so in one line, exit 130 (SIGINT) or 143 (SIGTERM), without a traceback.

What a signal does, wherever it lands in a command:

- during training, Tune is asked to stop the way it stops on its own Ctrl-C: it saves the experiment
  state one last time and stops the trials; the driver then writes the runs of the trials that finished
  and records none of the interrupted ones as failed (the rerun resumes them from their checkpoints);
- anywhere else (connecting, the studies, writing), ``KeyboardInterrupt`` unwinds the command: a part
  being written is removed (writes are atomic), the evaluators are killed, finished parts stay;
- then the Ray this command started is shut down (a private local Ray with every process it started; on a
  cluster given by ``--address`` only this driver's work stops), one line says what was kept, and the
  process exits with 128 + the signal's number.

A second signal while stopping is ignored: unwinding the clean-up itself is how a double Ctrl-C used to
crash among Ray's threads. The private Ray's processes run in a session of their own (cluster.py), so a
signal to the command's process group (a terminal, ``timeout``) reaches the driver alone and it shuts that
Ray down itself. Stopping is bounded: when the Ray it talks to is gone anyway (Slurm and Kubernetes signal
every process of the job, the Ray's too, and Ray's calls then block for a minute), or after
``HURRY_AFTER_S`` whatever the cause, a watchdog says the same line and ends the process at once (the
private Ray's processes share its fate; Tune's state and every written file are already whole). Where the
Ray's object store dies before this handler runs, Ray itself ends the driver (exit 1): what was written is
kept as always, and the rerun continues.

The handlers replace the ones ``ray.init`` installs for SIGTERM (Ray's own dumps a C++ stack and aborts),
so they are installed again after connecting (``after_ray_init``). Tune's own SIGINT handler is kept out
(``TUNE_DISABLE_SIGINT_HANDLER``): it stayed installed after ``Tuner.fit`` and swallowed a later Ctrl-C,
and it did not tell the driver that the trials it stopped were interrupted rather than failed.
Outside the CLI (the library, the tests calling ``run_training``) nothing here is active.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
HURRY_AFTER_S = 60.0    # a stop that takes longer (a cluster that no longer answers) is cut short

_active = False                 # handlers installed by a running command (main thread only)
_received: int | None = None    # the first signal received, if any
_in_tune = False                # inside Tuner.fit: ask Tune to stop rather than unwind it
_parts: tuple[str, ...] = ()    # what the running command makes: "trials", "units" or both
_writing: tuple = ()            # (the experiment, OUT) the running command writes, once it holds OUT
_gcs: tuple[str, int] | None = None   # the Ray this command connected to, to notice it is gone
_ending = threading.Lock()      # taken by whoever says the last line and ends the process
_shutting_down: float | None = None   # when the main thread began shutting Ray down itself
SHUTDOWN_GRACE_S = 3.0          # a Ray found gone this long into our own shutdown was not gone by our hand


def received() -> int | None:
    """The signal that interrupted this command (SIGINT or SIGTERM), or None."""
    return _received


def _handler(signum: int, frame) -> None:
    global _received
    if _received is not None:  # stopping already: a second Ctrl-C must not unwind the clean-up
        return
    _received = signum
    threading.Thread(target=_watchdog, args=(_ending,), name="unravel-interrupted", daemon=True).start()
    if _in_tune and _stop_tune(frame):
        return
    raise KeyboardInterrupt


def _stop_tune(frame) -> bool:
    """Ask the running ``Tuner.fit`` to stop through its own stop handler (the one Tune registers on
    SIGUSR1 while it runs: it saves the experiment state, stops the trials, returns the results)."""
    tune_stop = signal.getsignal(signal.SIGUSR1)
    if not callable(tune_stop) or tune_stop is _handler:
        return False  # Tune is not running its loop yet (or any more): unwind instead
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # its hints name Python APIs, not the CLI
    tune_stop(signal.SIGINT, frame)
    return True


def _install() -> None:
    for s in SIGNALS:
        signal.signal(s, _handler)


def after_ray_init() -> None:
    """``ray.init`` installs its own SIGTERM handlers: put ours back (no-op outside a command)."""
    global _gcs
    if not _active or threading.current_thread() is not threading.main_thread():
        return
    _install()
    try:
        import ray
        host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
        _gcs = (host, int(port))
    except Exception:  # Ray Client or an unusual address: the watchdog then only has its time bound
        _gcs = None


@contextmanager
def tune_stops_gracefully():
    """Around ``Tuner.fit``: a signal asks Tune to stop instead of unwinding it; afterwards no handler
    Tune installed is left behind."""
    global _in_tune
    if not _active or threading.current_thread() is not threading.main_thread():
        yield
        return
    if _received is not None:
        raise KeyboardInterrupt
    previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    previous_usr1 = signal.getsignal(signal.SIGUSR1)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # until Tune's loop installs its own stop handler
    _in_tune = True
    try:
        yield
    finally:
        _in_tune = False
        if previous_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env
        signal.signal(signal.SIGUSR1, previous_usr1 if previous_usr1 is not None else signal.SIG_DFL)
        _install()


def writing(experiment, out) -> None:
    """The command holds OUT for ``experiment``: a signal from now on says what of it OUT holds."""
    global _writing
    if _active:
        _writing = (experiment, out)


def raise_if_interrupted() -> None:
    """After Tune stopped on a signal (and the finished trials were written): stop the command."""
    if _active and _received is not None:
        raise KeyboardInterrupt


def stoppable(*parts: str):
    """Decorate a command (train: "trials"; lesion: "units"; run: both) so that SIGINT and SIGTERM stop
    it as described above. The summary counts what ``writing`` names."""

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            global _active, _received, _parts, _writing, _gcs, _ending, _shutting_down
            if threading.current_thread() is not threading.main_thread():
                return command(*args, **kwargs)  # signals reach the main thread only
            _active, _received, _gcs, _ending, _shutting_down = True, None, None, threading.Lock(), None
            _parts, _writing = parts, ()
            previous = {s: signal.getsignal(s) for s in SIGNALS}
            _install()
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                if _received is None:  # raised by Python's own handler before ours was in place
                    _received = signal.SIGINT
            except BaseException:  # SystemExit, a click error, a Ray error caused by the signal
                if _received is None:
                    raise
            finally:
                if _received is None:
                    _active = False
                    for s, h in previous.items():
                        signal.signal(s, h if h is not None else signal.SIG_DFL)
            _stop()

        return wrapper

    return decorate


def _stop() -> None:
    """The command unwound on a signal: shut its Ray down, say what was kept, exit."""
    global _shutting_down
    if _ray_gone():  # its processes got the signal too: Ray's own shutdown would wait on them for seconds
        _end(_ending, hurried=True)
    _shutting_down = time.monotonic()
    try:
        import ray
        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # a Ray already gone is fine
        pass
    _end(_ending, hurried=False)


def _watchdog(ending: threading.Lock) -> None:
    """Cut the stop short when the Ray it waits on is gone (and not only because the main thread's own
    ``ray.shutdown``, which stops the GCS near its end, got there), or when stopping takes longer than
    HURRY_AFTER_S."""
    started = time.monotonic()
    while not ending.locked():
        now = time.monotonic()
        if now - started > HURRY_AFTER_S or (_ray_gone() and (_shutting_down is None
                                                              or now - _shutting_down > SHUTDOWN_GRACE_S)):
            _end(ending, hurried=True)
            return
        time.sleep(0.25)


def _ray_gone() -> bool:
    if _gcs is None:
        return False
    try:
        socket.create_connection(_gcs, timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:  # unreachable or slow: not known to be gone; the time bound still holds
        return False


def _end(ending: threading.Lock, hurried: bool) -> None:
    """Say what was kept and exit: the main thread after its clean-up, or at once (``hurried``)."""
    if not ending.acquire(blocking=False):
        if threading.current_thread() is not threading.main_thread():
            return  # the main thread is saying it
        while True:  # the watchdog is saying it and ending the process
            time.sleep(1)
    signum = _received
    kept = _kept(*_writing, _parts) if _writing else ""
    try:
        sys.stdout.flush()
        sys.stderr.write("\n" if hurried else "")  # a progress bar may be left open mid-line
        sys.stderr.write(f"interrupted by {signal.Signals(signum).name}: {kept + '; ' if kept else ''}"
                         f"rerun the same command to continue\n")
        sys.stderr.flush()
    except Exception:
        pass
    if hurried:
        os._exit(128 + signum)
    sys.exit(128 + signum)


def _kept(experiment, out, parts) -> str:
    """'2 of 4 trials finished, 120 of 400 units written', counted from OUT itself ('' if it cannot be)."""
    from orchestrator.store import current  # the experiment's modules import torch: `unravel --help` does not
    try:
        said = []
        trials = current.trial_status(experiment, out) if "trials" in parts else {"trials": 0}
        if trials["trials"]:
            said.append(f"{trials['finished']} of {trials['trials']} trial{'s' * (trials['trials'] != 1)} finished")
        if "units" in parts:
            studies = current.status(experiment, out)
            units, done = sum(s["units"] for s in studies), sum(s["done"] for s in studies)
            if units:
                said.append(f"{done} of {units} unit{'s' * (units != 1)} written")
        return ", ".join(said)
    except Exception:  # an unreadable table: the line still says how to continue
        return ""

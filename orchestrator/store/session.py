"""A command's hold on an output folder, from opening to closing: the one object every command that writes
OUT opens.

``open_session`` takes the writer lock, removes what a killed writer left (temporaries, a compaction stopped
between its renames), refuses an OUT that holds another experiment, and yields the ``Session`` the command
writes through. A folder the command made is removed again if the command fails before writing anything
but its spec; a write that fails for want of space, or an OUT that cannot be opened, is one error naming OUT.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Iterator

from orchestrator.location import Location
from orchestrator.store import layout
from orchestrator.store.compaction import settle
from orchestrator.store.files import is_disk_full
from orchestrator.store.lock import writer_lock
from orchestrator.store.schemas import PART_SCHEMAS
from orchestrator.store.spec_file import read_spec, save_spec

if TYPE_CHECKING:
    from orchestrator.experiment.resolved import ExperimentSpec


class OtherExperiment(ValueError):
    """OUT holds the results of another experiment."""


class UnusableOutput(ValueError):
    """OUT cannot be created or opened (a permission, a file where the folder should be)."""


class NoSpace(RuntimeError):
    """A write into OUT failed for want of space: what was written before is kept."""


@dataclass(frozen=True)
class Identity:
    """What makes results one experiment's: its name and dataset (the rest of a spec may evolve, see the
    README)."""
    name: str
    dataset: str


@dataclass(frozen=True)
class Session:
    """OUT, held by this command (``open_session``)."""
    out: Location

    def record_spec(self, experiment: "ExperimentSpec") -> None:
        """The experiment this command runs, as written and as resolved, kept beside its results."""
        save_spec(self.out, experiment)


@contextmanager
def open_session(out, identity: Identity | None = None) -> Iterator[Session]:
    """Hold OUT for writing (see the module's docstring); with ``identity``, OUT must be new or hold that
    same experiment."""
    out = layout.where(out)
    fresh = not out.exists()
    opened = False
    try:
        try:
            with writer_lock(out):
                remove_temporaries(out)
                settle(out)  # a compaction stopped between its two renames: finished first
                if identity is not None:
                    claim(out, identity)
                opened = True
                yield Session(out)
        except BaseException:
            if fresh:  # bad input found late (a checkpoint that does not fit): leave no folder behind
                discard_if_unused(out)
            raise
    except OSError as e:
        if is_disk_full(e):
            raise NoSpace(f"no space left on the device of {out}: every finished unit is kept; free space and rerun "
                          f"the same command to add the rest") from None
        if not opened:
            raise UnusableOutput(f"{e.filename or out}: {e.strerror or e}") from None
        raise


def claim(out, identity: Identity) -> None:
    """Refuse an OUT that holds another experiment (another name, or the same name on another dataset)."""
    recorded = read_spec(out)
    if not recorded:
        return
    name = recorded.get("name")
    if name != identity.name:
        raise OtherExperiment(f"{out} holds experiment {name!r}, not {identity.name!r}; use another --out")
    dataset = (recorded.get("data") or {}).get("dataset", "digits")
    if dataset != identity.dataset:
        raise OtherExperiment(f"{out} holds experiment {name!r} on {dataset}; a spec on {identity.dataset} is a "
                              f"different experiment: use another --out")


def remove_temporaries(out) -> int:
    """Delete the temporary files a killed writer left behind (never read: they are not data files). On
    object storage there are none: an upload cut short leaves no object."""
    out = layout.where(out)
    if not out.local:
        return 0
    root = out.local_path
    stale = [p for folder in (*PART_SCHEMAS, layout.IMPORTED) if (root / folder).exists()
             for p in (root / folder).rglob(layout.TEMPORARY)] + list(root.glob(layout.TEMPORARY))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def discard_if_unused(out) -> None:
    """Remove an OUT that a command made, then met bad input in, if it holds nothing but the lock
    and the spec (and data record) the command recorded; the lock file goes in any case."""
    out = layout.where(out)
    try:
        names = {PurePosixPath(i.path).name for i in out.children()}
        unused = names <= {layout.LOCK_FILE, layout.SPEC_FILE, layout.DATA_RECORD}
        for name in names if unused else names & {layout.LOCK_FILE}:
            (out / name).delete()
        if unused and out.local:  # object storage has no empty folders
            out.local_path.rmdir()
    except OSError:
        pass

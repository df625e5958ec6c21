"""A dataset root on object storage (``data.root: s3://bucket/cifar10``), copied once per node into a local
cache, so the loaders (``workloads.data``, which read local files) run unchanged on a cluster with no shared disk.

Each node's first trial or evaluator copies the files under a lock (the others wait for it, then use the copy);
the copy is renamed into place whole and carries the listing it was made from, so a changed source is copied
again and a copy cut short is never used.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.location import Location, is_uri

MANIFEST = ".unravel-source.json"   # in the copy: the source URI and the (path, size) of every file copied


def cache_dir() -> Path:
    """``$UNRAVEL_CACHE/data``, by default ``~/.cache/unravel/data``."""
    return Path(os.environ.get("UNRAVEL_CACHE", "~/.cache/unravel")).expanduser() / "data"


def files_of(root: str) -> list[tuple[str, int]]:
    """(relative path, size) of every file below a folder or URI, sorted: what tells a changed source."""
    source = Location.of(root)
    return sorted((source.relative(i.path), i.size) for i in source.files())


def local_root(root: str) -> str:
    """``root`` itself when it is a local folder; for a URI, the folder of this node's copy of it."""
    if not is_uri(root):
        return root
    source, listing = Location.of(root), files_of(root)
    folder = cache_dir() / hashlib.sha256(root.encode()).hexdigest()[:20]
    manifest = {"source": root, "files": listing}
    if _manifest(folder) == manifest:
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copier per node; the others find its copy when they get the lock
        if _manifest(folder) == manifest:
            return str(folder)
        staged = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            pafs.copy_files(source.path, str(staged), source_filesystem=source.fs,
                            destination_filesystem=pafs.LocalFileSystem(), use_threads=True)
            (staged / MANIFEST).write_text(json.dumps(manifest))
            shutil.rmtree(folder, ignore_errors=True)
            os.rename(staged, folder)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return str(folder)


def _manifest(folder: Path) -> dict | None:
    try:
        found = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    found["files"] = [tuple(f) for f in found.get("files", [])]
    return found

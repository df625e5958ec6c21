"""Where an experiment's files live: a local folder, or a URI on object storage (``s3://bucket/prefix``,
``gs://...``, any filesystem pyarrow resolves, or fsspec's through pyarrow's handler).

A ``Location`` is a filesystem and a path in it; ``/`` names a file or folder below it, ``str()`` gives
it back as the user wrote it. It pickles (the filesystem with it), so a Ray worker given one reads
and writes the same place as the driver. An experiment's OUT is always a Location (``store.where``), a
local folder too; everyone names OUT's files through the store.

Object stores have no rename and no append: a file is written in one PUT (``write_bytes``), which
makes it visible whole or not at all; an upload cut short is never listed. S3 options ride in the
URI's query, as pyarrow reads them: ``s3://bucket/prefix?endpoint_override=http://host:9000&scheme=http``;
credentials come from the usual places (environment, profile, instance role).
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator import faults


class LocationError(ValueError):
    """An --out (or data root) that names no usable place: the message is one line naming it."""


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


@dataclass(frozen=True)
class Location:
    fs: pafs.FileSystem
    path: str        # the path inside ``fs`` (no scheme: "bucket/prefix/x" on S3, an absolute path locally)
    uri: str         # as shown to the user: the local path, or the URI (with its query) it came from

    @classmethod
    def of(cls, where: "str | os.PathLike | Location") -> "Location":
        """A local path (relative to the working folder) or a URI. Raises LocationError for a scheme
        neither pyarrow nor fsspec knows, or a URI pyarrow refuses."""
        if isinstance(where, Location):
            return where
        text = str(where)
        if text.startswith("file://"):
            text = text[len("file://"):]
        if not is_uri(text):  # the real path, so paths another library reports (Tune's) are found inside OUT
            return cls(pafs.LocalFileSystem(), os.path.realpath(os.path.expanduser(text)), str(where))
        scheme = urlsplit(text).scheme
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            fs, path = _fsspec(text, scheme, e)
        except OSError as e:
            raise LocationError(f"{text}: {_first_line(e)}") from None
        path = path.rstrip("/")
        if not path:
            raise LocationError(f"{text}: names no bucket or folder")
        return cls(fs, path, text)

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        """The folder or file on this machine (local locations only)."""
        assert self.local, self.uri
        return Path(self.path)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parent(self) -> "Location":
        return Location(self.fs, str(PurePosixPath(self.path).parent), join(self.uri, ".."))

    def __truediv__(self, name: str) -> "Location":
        name = str(name).strip("/")
        return Location(self.fs, f"{self.path}/{name}", join(self.uri, name))

    def __str__(self) -> str:
        return self.uri

    def __fspath__(self) -> str:  # local only: a local Location is its path as the user wrote it
        if not self.local:
            raise TypeError(f"{self.uri} is not a local path")
        return self.uri

    def relative(self, path: str) -> str:
        """``path`` (inside this location's filesystem) relative to this location."""
        return str(PurePosixPath(path).relative_to(PurePosixPath(self.path)))

    # -- files -------------------------------------------------------------------------------------------

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder (on object storage: a prefix with at least one object below it)."""
        return self.info().type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """The whole file at once, or nothing: the one way a file is written. Locally a temporary name beside
        it (never read: a dot name ending .tmp), fsynced and renamed into place, the folder fsynced so the
        rename survives a power cut; on object storage one PUT (an upload cut short is never listed)."""
        if not self.local:
            faults.kill_point("kill_before_rename")
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
            return
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            faults.kill_point("kill_before_rename")
            os.replace(tmp, path)
            sync_folder(path.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def delete(self) -> None:
        """Remove a file (no error if it is gone)."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass

    def files(self, recursive: bool = True) -> list[pafs.FileInfo]:
        """The files below this folder (none if it does not exist)."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        return [i for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File]

    def children(self) -> list[pafs.FileInfo]:
        """Files and folders directly below this folder."""
        return self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))

    def check_reachable(self) -> None:
        """Raise LocationError if the filesystem cannot be reached, or its bucket does not exist
        (one request; nothing written)."""
        try:
            if self.local:
                return
            probe = _quick(self.fs)
            bucket = self.path.split("/", 1)[0]
            if probe.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise LocationError(f"{self.uri}: the bucket {bucket!r} does not exist (or these credentials "
                                    f"cannot see it)")
            probe.get_file_info(self.path)
        except OSError as e:
            said = _first_line(e)
            if any(sign in said for sign in ("ACCESS_DENIED", "HTTP status 403", "credentials")):
                said += "; check the credentials (environment, profile or instance role)"
            raise LocationError(f"{self.uri}: {said}") from None


def _quick(fs: pafs.FileSystem) -> pafs.FileSystem:
    """The same S3 filesystem with two attempts and short timeouts: for the one check at start-up, so an
    endpoint that does not answer is said in seconds, not after the SDK's retries (other stores as they are)."""
    if not isinstance(fs, pafs.S3FileSystem):
        return fs
    rebuild, (options,) = fs.__reduce__()
    return rebuild({**options, "connect_timeout": 5.0, "request_timeout": 10.0,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=2)})


def join(uri: str, name: str) -> str:
    """``uri`` (a local path or a URI) with ``name`` appended to its path, keeping a URI's query (the S3
    options) at the end."""
    if not is_uri(uri):
        return os.path.normpath(os.path.join(uri, name))
    head, sep, query = uri.partition("?")
    joined = str(PurePosixPath(head.split("://", 1)[1]) / name) if name != ".." else \
        str(PurePosixPath(head.split("://", 1)[1]).parent)
    return f"{head.split('://', 1)[0]}://{joined}{sep}{query}"


def _fsspec(text: str, scheme: str, arrow_error: Exception) -> tuple[pafs.FileSystem, str]:
    """A scheme pyarrow has no filesystem for, through fsspec's registry (``memory://``, ``az://``, ...)."""
    try:
        import fsspec
        from fsspec.core import split_protocol
        cls = fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError):
        raise LocationError(f"{text}: unknown scheme {scheme!r} (a local folder, s3://, gs://, hdfs://, or a "
                            f"scheme an installed fsspec package provides)") from None
    handler = pafs.FSSpecHandler(cls(**cls._get_kwargs_from_urls(text)))
    return pafs.PyFileSystem(handler), cls._strip_protocol(split_protocol(text)[1] and text)


def sync_folder(folder: Path) -> None:
    """fsync a local folder, so the renames in it survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

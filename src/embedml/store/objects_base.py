"""The object-store interface and what its implementations share (see :mod:`.objects`).

Types (:class:`StoredObject`, :class:`ObjectInfo`, :class:`Download`), key checks, the
abstract :class:`ObjectStore`, and :func:`hashing_file`: the verified, all-or-nothing
download target both implementations write through.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from ..errors import ConfigurationError, IntegrityError
from .safe_io import fsync_dir

__all__ = [
    "CHUNK_BYTES",
    "Download",
    "HashingFile",
    "ObjectInfo",
    "ObjectStore",
    "RESERVED",
    "StoredObject",
    "check_key",
    "check_prefix",
    "check_sha256",
    "fsync_dir",
    "hashing_file",
    "temporary_beside",
]

#: Bytes read per chunk when streaming a download: 8 MiB reads were measured as fast as the
#: raw client (1 MiB reads cost up to 1.3x through s3fs; notes/s3-design.md).
CHUNK_BYTES = 8 << 20

# Names of temporary files and lock folders start with this; no key component may, so a
# listing never shows them and a key can never name them.
RESERVED = ".~"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object's bytes and the ETag they had when read (pass it to ``put_if``)."""

    data: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed object: its key (relative to the store) and size in bytes."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class Download:
    """What :meth:`ObjectStore.download` wrote: where, how many bytes, their SHA-256."""

    path: Path
    size: int
    sha256: str


def check_key(key: str) -> str:
    """Returns ``key`` if it is a valid object key, else raises :class:`ConfigurationError`.

    A key is ``/``-separated, relative, with no empty, ``.`` or ``..`` component and no
    component starting with ``.~`` (reserved for temporary files), so that no key can leave
    a ``file://`` store's folder or mean different objects on the two backends.
    """
    parts = key.split("/") if isinstance(key, str) else [""]
    if not key or any(p in ("", ".", "..") or p.startswith(RESERVED) for p in parts):
        raise ConfigurationError(
            f"invalid object key {key!r}: expected a relative '/'-separated key without empty,"
            f" '.', '..' or '{RESERVED}...' components"
        )
    if "\\" in key or "\x00" in key:
        raise ConfigurationError(f"invalid object key {key!r}: no backslash or NUL allowed")
    return key


def check_prefix(prefix: str) -> str:
    prefix = prefix.strip("/")
    return check_key(prefix) if prefix else ""


def check_sha256(sha256: str | None) -> None:
    """Raises :class:`ConfigurationError` unless ``sha256`` is 64 lowercase hex digits (or None)."""
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256_HEX.fullmatch(sha256)):
        raise ConfigurationError(f"expected a SHA-256 as 64 lowercase hex digits, got {sha256!r}")


class ObjectStore(abc.ABC):
    """The operations a model store needs from the place that holds its objects.

    Keys are relative ``/``-separated strings (see :func:`check_key`). Every method raises
    a :class:`~embedml.errors.RemoteStoreError` subclass (naming ``url``, the operation and the
    key) for a failure of the store, and :class:`ConfigurationError` for an invalid key.
    Usable as a context manager; :meth:`close` releases connections.
    """

    #: The store's URL (``file:///...`` or ``s3://bucket/prefix``), as errors name it.
    url: str

    @abc.abstractmethod
    def get(self, key: str) -> StoredObject:
        """The object's bytes and ETag. Raises :class:`ObjectNotFoundError` if it is missing."""

    @abc.abstractmethod
    def get_if_changed(self, key: str, etag: str) -> StoredObject | None:
        """``None`` if the object still has ``etag`` (nothing is transferred), else like
        :meth:`get`. Raises :class:`ObjectNotFoundError` if it is missing."""

    @abc.abstractmethod
    def put_new(self, key: str, data: bytes) -> str:
        """Creates the object only if no object has that key; returns its ETag.

        Of any number of concurrent writers of different bytes exactly one succeeds; the
        others get :class:`ObjectExistsError` and the object holds the winner's bytes, whole.
        """

    @abc.abstractmethod
    def put_if(self, key: str, data: bytes, etag: str) -> str:
        """Replaces the object only if it still has ``etag``; returns the new ETag.

        Raises :class:`PreconditionFailedError` if it changed or no longer exists (re-read it
        and decide again).
        """

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """The objects under the folder-like ``prefix`` (all of them for ``""``), sorted by key.

        A prefix that holds nothing is an empty list.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; removing a missing object is not an error."""

    @abc.abstractmethod
    def download(
        self, key: str, dest: Path | str, *, sha256: str | None = None, size: int | None = None
    ) -> Download:
        """Streams the object into the file ``dest`` (replaced if it exists), hashing it on the way.

        The bytes go to a temporary file beside ``dest`` that is fsynced and renamed to ``dest``
        only when complete and, if given, of the expected ``sha256`` and ``size``: otherwise
        :class:`~embedml.errors.IntegrityError` and nothing is left. A failure of the store in
        the middle also leaves nothing. ``dest``'s folder must exist.
        """

    def close(self) -> None:  # noqa: B027 (a default no-op, not an abstract method)
        """Releases connections; the store reconnects if used again."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def temporary_beside(dest: Path) -> Path:
    return dest.with_name(f"{RESERVED}{dest.name}.{uuid.uuid4().hex}.part")


class HashingFile:
    """A new temporary file that hashes what is written; ``commit`` verifies and renames it."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.tmp = temporary_beside(dest)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        # Closed by commit() or discard(), which hashing_file() guarantees.
        self.file: BinaryIO = open(os.open(self.tmp, flags, 0o644), "wb")  # noqa: SIM115
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.file.write(chunk)
        self.hash.update(chunk)
        self.size += len(chunk)

    def restart(self) -> None:
        """Drops what was written (a retried download starts again)."""
        self.file.seek(0)
        self.file.truncate()
        self.hash = hashlib.sha256()
        self.size = 0

    def commit(self, what: str, sha256: str | None, size: int | None) -> Download:
        digest = self.hash.hexdigest()
        if size is not None and self.size != size:
            raise IntegrityError(f"{what}: expected {size} bytes, got {self.size}")
        if sha256 is not None and digest != sha256:
            raise IntegrityError(f"{what}: expected SHA-256 {sha256}, got {digest}")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.dest)
        fsync_dir(self.dest.parent)
        return Download(self.dest, self.size, digest)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@contextlib.contextmanager
def hashing_file(dest: Path) -> Iterator[HashingFile]:
    """A :class:`HashingFile` for ``dest``, removed unless it was committed."""
    out = HashingFile(dest)
    try:
        yield out
    finally:
        if not out.file.closed or out.tmp.exists():
            out.discard()

"""File operations on store metadata that never follow a planted symlink.

Anyone with write access to the store folder can replace a file by a symlink to a file
elsewhere. Every read and write of store metadata therefore opens with ``O_NOFOLLOW``
(a symlink in the last path component fails with ``ELOOP``), reads only regular files of
bounded size, and creates temporary files with ``O_EXCL`` so that a name planted in
advance is never written through. Folders above the file are checked by the store
(``ModelStore._model_dir``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import IntegrityError, StoreError

__all__ = ["append_line", "flock_held", "fsync_dir", "locked", "read_metadata", "write_atomic"]

#: The largest metadata file read (manifests, aliases, signatures, the store record).
MAX_METADATA_BYTES = 64 << 20

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _symlink_error(path: Path, exc: OSError, error: type[Exception]) -> Exception:
    if exc.errno == errno.ELOOP:
        return error(f"{path} is a symlink; refusing it")
    return error(f"cannot open {path}: {exc.strerror}")


def read_metadata(path: Path, limit: int = MAX_METADATA_BYTES) -> bytes:
    """The bytes of the regular file ``path`` (not through a symlink), at most ``limit``.

    Raises ``FileNotFoundError`` when it does not exist, :class:`IntegrityError` when it is a
    symlink, not a regular file, or larger than ``limit``.
    """
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _symlink_error(path, exc, IntegrityError) from None
    with open(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(f"{path} is not a regular file; refusing it")
        if info.st_size > limit:
            raise IntegrityError(f"{path} is larger than {limit} bytes; refusing it")
        # read(), not read(limit + 1): that would allocate `limit` bytes on every call
        return f.read()


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one ``rename`` of a fresh, fsynced temporary file.

    The temporary file is created exclusively (``O_EXCL | O_NOFOLLOW``), so a planted file
    or symlink of the same name is an error, never written through; the rename replaces a
    symlink at ``path`` itself rather than following it. Raises :class:`StoreError`.
    """
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, _CREATE, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot create {tmp}: {exc.strerror} (a planted file?)") from None
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> None:
    """Append one line to ``path`` (created if missing), never through a symlink.

    A line torn by a writer that died mid-append is kept apart by starting a new line.
    Raises :class:`StoreError` for a symlink or a file that cannot be opened.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise _symlink_error(path, exc, StoreError) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"{path} is not a regular file; refusing it")
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory ``flock`` on ``path`` (exclusive, or shared for readers).

    The exclusive lock creates the file; a shared lock on a file that does not exist is a
    no-op (no writer ever locked it, so there is nothing to wait for). Never follows a
    symlink: raises :class:`StoreError`.
    """
    flags = (os.O_RDONLY if shared else os.O_RDWR | os.O_CREAT) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        if not shared:
            raise
        yield
        return
    except OSError as exc:
        raise StoreError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    with flock_held(fd, shared=shared):
        yield


@contextlib.contextmanager
def flock_held(fd: int, *, shared: bool = False) -> Iterator[None]:
    """Hold an advisory ``flock`` on the open file ``fd`` (blocking until it is free),
    then release it and close ``fd``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            # Explicitly, not by closing: a child forked meanwhile shares this open file,
            # and would otherwise keep the lock for as long as it lives.
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""The object store over a local folder (``file://`` URLs and plain paths)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import (
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RemoteStoreError,
    StoreAccessError,
    StoreNotFoundError,
)
from .objects_base import (
    CHUNK_BYTES,
    RESERVED,
    Download,
    ObjectInfo,
    ObjectStore,
    StoredObject,
    check_key,
    check_prefix,
    check_sha256,
    fsync_dir,
    hashing_file,
    temporary_beside,
)
from .safe_io import flock_held

__all__ = ["LocalObjectStore"]


def _etag_of(data: bytes) -> str:
    # A content hash stands in for S3's ETag: equal bytes, equal tag (as S3's MD5 ETags).
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


class LocalObjectStore(ObjectStore):
    """Objects as files under a folder (created on the first write).

    Writes go to a temporary file that is fsynced, then made visible in one step: ``link``
    for :meth:`put_new` (fails if the name exists: exactly one writer wins, and a reader never
    sees a partial object) and ``rename`` for :meth:`put_if`. Compare-and-swap holds an
    ``flock`` on a per-key lock file (under ``.~locks/``) while it compares and renames, so
    it is safe between processes on one machine (and on file systems whose ``flock`` is
    coherent across machines). The ETag is a hash of the content.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    def _error(self, cls: type[RemoteStoreError], op: str, key: str | None, msg: str) -> Exception:
        return cls(msg, url=self.url, operation=op, key=key)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def _os_error(self, op: str, key: str | None, exc: OSError) -> Exception:
        if isinstance(exc, PermissionError):
            return self._error(StoreAccessError, op, key, f"permission denied ({exc.strerror})")
        if exc.errno in (errno.ENOTDIR, errno.ENOENT) and not self.root.is_dir():
            return self._error(StoreNotFoundError, op, key, "the store's folder does not exist")
        return self._error(RemoteStoreError, op, key, f"{exc.strerror or exc}")

    def _read(self, op: str, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise self._missing(op, key) from None
        except OSError as exc:
            raise self._os_error(op, key, exc) from exc

    def _missing(self, op: str, key: str | None) -> Exception:
        """The error for a key that names no object: is it the key, or the whole store?"""
        if self.root.exists() and not self.root.is_dir():
            return self._error(StoreNotFoundError, op, key, "the store's path is not a folder")
        return self._error(ObjectNotFoundError, op, key, "no such object")

    def get(self, key: str) -> StoredObject:
        data = self._read("get", key)
        return StoredObject(data, _etag_of(data))

    def get_if_changed(self, key: str, etag: str) -> StoredObject | None:
        data = self._read("get", key)
        current = _etag_of(data)
        return None if current == etag else StoredObject(data, current)

    def _write_temporary(self, op: str, key: str, data: bytes) -> tuple[Path, Path]:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_beside(path)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with open(os.open(tmp, flags, 0o644), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except (FileExistsError, NotADirectoryError) as exc:
            if self.root.exists() and not self.root.is_dir():
                raise self._missing(op, key) from exc
            raise self._error(RemoteStoreError, op, key, f"a file is in the way ({exc})") from exc
        except OSError as exc:
            raise self._os_error(op, key, exc) from exc
        return path, tmp

    @contextlib.contextmanager
    def _temporary(self, key: str, data: bytes) -> Iterator[tuple[Path, Path]]:
        """The object's path and a new temporary file beside it holding ``data``, for the
        caller to put in place; the temporary is removed after, and the folder fsynced
        once the caller succeeded."""
        path, tmp = self._write_temporary("put", key, data)
        try:
            yield path, tmp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(path.parent)

    def put_new(self, key: str, data: bytes) -> str:
        with self._temporary(key, data) as (path, tmp):
            try:
                os.link(tmp, path)  # atomic and exclusive: fails if the name exists
            except FileExistsError:
                raise self._error(
                    ObjectExistsError, "put", key, "an object already exists"
                ) from None
            except OSError as exc:
                raise self._os_error("put", key, exc) from exc
        return _etag_of(data)

    @contextlib.contextmanager
    def _locked(self, op: str, key: str) -> Iterator[None]:
        lock_dir = self.root / f"{RESERVED}locks"
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._os_error(op, key, exc) from exc
        with flock_held(fd):
            yield

    def put_if(self, key: str, data: bytes, etag: str) -> str:
        with self._temporary(key, data) as (path, tmp):
            try:
                with self._locked("put", key):
                    try:
                        current = self._read("put", key)
                    except ObjectNotFoundError:
                        raise self._error(
                            PreconditionFailedError, "put", key, f"expected ETag {etag}; it is gone"
                        ) from None
                    if _etag_of(current) != etag:
                        raise self._error(
                            PreconditionFailedError,
                            "put",
                            key,
                            f"expected ETag {etag}; it changed since it was read",
                        )
                    os.replace(tmp, path)
            except OSError as exc:
                raise self._os_error("put", key, exc) from exc
        return _etag_of(data)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_prefix(prefix)
        top = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        found = []
        try:
            for folder, dirs, files in os.walk(top, onerror=_raise):
                dirs[:] = [d for d in dirs if not d.startswith(RESERVED)]
                rel = Path(folder).relative_to(self.root).as_posix()
                for name in files:
                    if name.startswith(RESERVED):
                        continue
                    key = name if rel == "." else f"{rel}/{name}"
                    info = os.stat(os.path.join(folder, name), follow_symlinks=False)
                    found.append(ObjectInfo(key, info.st_size))
        except (FileNotFoundError, NotADirectoryError):
            if self.root.exists() and not self.root.is_dir():
                raise self._missing("list", prefix or None) from None
            return []
        except OSError as exc:
            raise self._os_error("list", prefix or None, exc) from exc
        return sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            with self._locked("delete", key):
                os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise self._os_error("delete", key, exc) from exc

    def download(
        self, key: str, dest: Path | str, *, sha256: str | None = None, size: int | None = None
    ) -> Download:
        check_sha256(sha256)
        source = self._path(key)
        what = f"download of {self.url}/{key}"
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing("download", key) from None
        except OSError as exc:
            raise self._os_error("download", key, exc) from exc
        with open(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise self._missing("download", key)
            with hashing_file(Path(dest)) as out:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
                return out.commit(what, sha256, size)


def _raise(exc: OSError) -> None:
    raise exc

"""Object stores: the few operations a remote model store needs, over a folder or S3.

A store URL names a place that holds objects by key (``models/churn/index.json``):

- ``file:///srv/models`` (or a plain path): :class:`LocalObjectStore`, a folder;
- ``s3://bucket/prefix``: :class:`S3ObjectStore`, any S3-compatible service, through fsspec's
  s3fs (the ``s3`` extra, imported only when such a store is opened).

Both keep one contract (tested by one suite, ``tests/test_object_store.py``):

- :meth:`~ObjectStore.get` returns the bytes and their ETag; :meth:`~ObjectStore.get_if_changed`
  is the cheap poll: ``None`` when the ETag still matches (S3 answers ``304`` with no body);
- :meth:`~ObjectStore.put_new` creates an object only if the key is free (one winner among any
  number of writers: :class:`~embedml.errors.ObjectExistsError` for the others);
- :meth:`~ObjectStore.put_if` replaces an object only if it still has the ETag the caller read
  (compare-and-swap: :class:`~embedml.errors.PreconditionFailedError` when it moved or vanished);
- :meth:`~ObjectStore.list` lists the keys under a folder-like prefix, :meth:`~ObjectStore.delete`
  removes one;
- :meth:`~ObjectStore.download` streams an object into a local file, hashing it on the way, and
  makes the file visible (one ``rename``) only once it is complete and matches the expected
  SHA-256: an interrupted or wrong download leaves nothing behind.

Every failure is a :class:`~embedml.errors.RemoteStoreError` naming the store URL, the operation
and the key; the backend's exception (botocore, aiohttp, ``OSError``) is only its ``__cause__``.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import os
import random
import re
import stat
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote, urlsplit

from ..errors import (
    ConfigurationError,
    IntegrityError,
    MissingExtraError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RemoteStoreError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)

__all__ = [
    "Download",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "S3ObjectStore",
    "StoredObject",
    "check_key",
    "check_sha256",
    "open_object_store",
]

#: Bytes read per chunk when streaming a download: 8 MiB reads were measured as fast as the
#: raw client (1 MiB reads cost up to 1.3x through s3fs; notes/s3-design.md).
CHUNK_BYTES = 8 << 20

# Names of temporary files and lock folders start with this; no key component may, so a
# listing never shows them and a key can never name them.
_RESERVED = ".~"
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
    if not key or any(p in ("", ".", "..") or p.startswith(_RESERVED) for p in parts):
        raise ConfigurationError(
            f"invalid object key {key!r}: expected a relative '/'-separated key without empty,"
            f" '.', '..' or '{_RESERVED}...' components"
        )
    if "\\" in key or "\x00" in key:
        raise ConfigurationError(f"invalid object key {key!r}: no backslash or NUL allowed")
    return key


def _check_prefix(prefix: str) -> str:
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


def open_object_store(
    url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None, **options: Any
) -> ObjectStore:
    """Opens the object store at ``url``: ``s3://bucket/prefix``, ``file:///path`` or a path.

    ``storage_options`` go to the backend (for S3: s3fs's ``key``, ``secret``, ``token``,
    ``endpoint_url``, ``client_kwargs``, ...); ``options`` to the store class (``retries``,
    timeouts). Raises :class:`ConfigurationError` for another scheme, and
    :class:`MissingExtraError` when ``s3://`` is asked for without the ``s3`` extra.
    """
    if isinstance(url, os.PathLike):
        return LocalObjectStore(Path(url), **options)
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "s3":
        return S3ObjectStore(url, storage_options=storage_options, **options)
    if scheme in ("", "file"):
        if storage_options:
            raise ConfigurationError("storage_options apply to remote stores, not to a folder")
        return LocalObjectStore(_file_url_path(url) if scheme else Path(url), **options)
    raise ConfigurationError(
        f"unsupported store URL {url!r}: expected s3://bucket/prefix, file:///path or a path"
    )


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"file:// URL with a host is not supported: {url!r}")
    return Path(unquote(parts.path))


def _temporary_beside(dest: Path) -> Path:
    return dest.with_name(f"{_RESERVED}{dest.name}.{uuid.uuid4().hex}.part")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashingFile:
    """A new temporary file that hashes what is written; ``commit`` verifies and renames it."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.tmp = _temporary_beside(dest)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        # Closed by commit() or discard(), which _hashing_file() guarantees.
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
        _fsync_dir(self.dest.parent)
        return Download(self.dest, self.size, digest)

    def discard(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


@contextlib.contextmanager
def _hashing_file(dest: Path) -> Iterator[_HashingFile]:
    """A :class:`_HashingFile` for ``dest``, removed unless it was committed."""
    out = _HashingFile(dest)
    try:
        yield out
    finally:
        if not out.file.closed or out.tmp.exists():
            out.discard()


# --------------------------------------------------------------------------------------
# A folder


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
            tmp = _temporary_beside(path)
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

    def put_new(self, key: str, data: bytes) -> str:
        path, tmp = self._write_temporary("put", key, data)
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if the name exists
        except FileExistsError:
            raise self._error(ObjectExistsError, "put", key, "an object already exists") from None
        except OSError as exc:
            raise self._os_error("put", key, exc) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        return _etag_of(data)

    @contextlib.contextmanager
    def _locked(self, op: str, key: str) -> Iterator[None]:
        lock_dir = self.root / f"{_RESERVED}locks"
        name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock"
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise self._os_error(op, key, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)  # explicitly: a forked child shares the fd
        finally:
            os.close(fd)

    def put_if(self, key: str, data: bytes, etag: str) -> str:
        path, tmp = self._write_temporary("put", key, data)
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
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(path.parent)
        return _etag_of(data)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = _check_prefix(prefix)
        top = self.root.joinpath(*prefix.split("/")) if prefix else self.root
        found = []
        try:
            for folder, dirs, files in os.walk(top, onerror=_raise):
                dirs[:] = [d for d in dirs if not d.startswith(_RESERVED)]
                rel = Path(folder).relative_to(self.root).as_posix()
                for name in files:
                    if name.startswith(_RESERVED):
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
            with _hashing_file(Path(dest)) as out:
                while chunk := src.read(CHUNK_BYTES):
                    out.write(chunk)
                return out.commit(what, sha256, size)


def _raise(exc: OSError) -> None:
    raise exc


# --------------------------------------------------------------------------------------
# S3, through s3fs

# Error codes of a request the server did not carry out: retrying it is safe even for a
# conditional write. (A timeout or a cut connection after sending is not in this list.)
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
              "ServiceUnavailable", "ConditionalRequestConflict", "TooManyRequests"}  # fmt: skip
_ACCESS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "Forbidden"}  # fmt: skip

# User metadata on every object written: a random id per put, to recognise our own write.
_WRITE_ID = "embedml-write"

# One lock guards client creation in every S3ObjectStore; re-made in a forked child, where
# a copy held by another thread of the parent would never be released.
_CLIENT_LOCK = threading.Lock()


def _new_client_lock() -> None:
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_client_lock)


@dataclass(frozen=True, slots=True)
class _Failure:
    """What a backend exception means: ``kind`` picks the embedml error and the retry."""

    kind: str  # missing-key, missing-bucket, exists, stale, not-modified, access, unsent,
    # throttled, ambiguous, other
    detail: str


@dataclass(slots=True)
class _Client:
    pid: int
    fs: Any  # s3fs.S3FileSystem
    s3: Any  # its aiobotocore client
    sync: Callable[..., Any]  # fsspec.asyn.sync


class S3ObjectStore(ObjectStore):
    """Objects in an S3 bucket under a prefix, through fsspec's s3fs (the ``s3`` extra).

    Credentials and endpoint come from botocore's usual chain (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, which may be
    ``http://``, instance roles, ...) unless ``storage_options`` give them (s3fs's ``key``,
    ``secret``, ``token``, ``endpoint_url``, ``client_kwargs``, ``config_kwargs``).

    The client is made on first use, and again in each process that uses the store (a
    store opened before ``fork`` works in the children; s3fs refuses a client reused across
    a fork). At creation the installed botocore is checked to know the conditional headers
    (s3fs would drop unknown parameters silently, turning a compare-and-swap into a blind
    write). Requests that fail on the network, time out or are throttled are retried
    ``retries`` times with exponential backoff and jitter, except a conditional write whose
    request may have reached the server: that one is settled by reading the object back.
    """

    def __init__(
        self,
        url: str,
        *,
        storage_options: dict[str, Any] | None = None,
        retries: int = 4,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        backoff: float = 0.1,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigurationError(f"expected s3://bucket[/prefix], got {url!r}")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"an s3:// store URL has no query or fragment: {url!r}")
        if retries < 0 or connect_timeout <= 0 or read_timeout <= 0 or backoff < 0:
            raise ConfigurationError(
                "retries must be >= 0, connect_timeout and read_timeout > 0, backoff >= 0"
            )
        self.bucket = parts.netloc
        self.prefix = _check_prefix(unquote(parts.path))
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.retries = retries
        self.backoff = backoff
        options = dict(storage_options or {})
        config = dict(options.pop("config_kwargs", None) or {})
        # Our own retry loop decides what is safe to retry; botocore's would retry a
        # conditional PUT whose first attempt may have been applied.
        config.setdefault("retries", {"mode": "standard", "max_attempts": 1})
        config.setdefault("connect_timeout", connect_timeout)
        config.setdefault("read_timeout", read_timeout)
        self._options = {
            **options,
            "config_kwargs": config,
            "skip_instance_cache": True,  # fsspec would share one client between stores
            "use_listings_cache": False,  # other publishers change the bucket
        }
        self._client: _Client | None = None
        _import_s3fs()  # fail now, not on the first request, without the extra

    # -- the client, once per process

    def _connect(self) -> _Client:
        client = self._client
        if client is not None and client.pid == os.getpid():
            return client
        with _CLIENT_LOCK:
            client = self._client
            if client is None or client.pid != os.getpid():
                client = self._client = self._new_client()
        return client

    def _new_client(self) -> _Client:
        s3fs, fsspec_asyn, botocore = _import_s3fs()
        try:
            fs = s3fs.S3FileSystem(**self._options)
            fs.retries = 1  # s3fs's own retry loop: off, ours decides
            s3 = fsspec_asyn.sync(fs.loop, fs.set_session)
        except Exception as exc:
            failure = self._classify(exc)
            raise self._translate("connect", None, failure) from exc
        model = s3.meta.service_model
        put = set(model.operation_model("PutObject").input_shape.members)
        get = set(model.operation_model("GetObject").input_shape.members)
        if not ({"IfMatch", "IfNoneMatch"} <= put and "IfNoneMatch" in get):
            raise MissingExtraError(
                f"botocore {botocore.__version__} does not know S3's conditional writes"
                " (If-Match / If-None-Match), which a remote store needs to publish safely;"
                " install botocore>=1.36: pip install -U 'embedml[s3]'",
                extra="s3",
                name="botocore",
            )
        return _Client(os.getpid(), fs, s3, fsspec_asyn.sync)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.pid == os.getpid():
            with contextlib.suppress(Exception):  # closing a connection that broke is done
                client.sync(client.fs.loop, client.s3.close)

    # -- running one operation, with retries and translation

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _run(
        self,
        op: str,
        key: str | None,
        call: Callable[[Any], Awaitable[T]],
        *,
        idempotent: bool = True,
        on_retry: Callable[[], None] | None = None,
    ) -> T:
        """Runs ``call(s3_client)`` on s3fs's event loop; retries what is safe to retry.

        ``idempotent=False`` (a conditional write): only failures where the request surely
        did not reach the server are retried; an ambiguous one is raised as
        ``_Ambiguous`` for the caller to settle.
        """
        attempt = 0
        while True:
            client = self._connect()
            try:
                return client.sync(client.fs.loop, call, client.s3)
            except Exception as exc:
                failure = self._classify(exc)
                retryable = failure.kind in ("unsent", "throttled") or (
                    idempotent and failure.kind == "ambiguous"
                )
                if not retryable or attempt >= self.retries:
                    if failure.kind == "ambiguous" and not idempotent:
                        raise _Ambiguous(failure) from exc
                    raise self._translate(op, key, failure) from exc
            attempt += 1
            # Full jitter (AWS's advice): many clients retrying at once spread out.
            time.sleep(random.uniform(0, self.backoff * 2**attempt))
            if on_retry is not None:
                on_retry()

    def _classify(self, exc: BaseException) -> _Failure:
        _, _, botocore = _import_s3fs()
        bex = botocore.exceptions
        if isinstance(exc, bex.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.get("Message") or code
            if code in ("NoSuchKey", "404") and status == 404:
                return _Failure("missing-key", "no such object")
            if code == "NoSuchBucket":
                return _Failure("missing-bucket", f"bucket {self.bucket!r} does not exist")
            if code in ("304", "NotModified") or status == 304:
                return _Failure("not-modified", "not modified")
            if code == "PreconditionFailed" or status == 412:
                return _Failure("stale", str(error.get("Condition") or message))
            if code in _ACCESS or status == 403:
                return _Failure("access", f"access refused ({code}: {message})")
            if code in _THROTTLED or status in (409, 429, 503):
                return _Failure("throttled", f"throttled ({code})")
            if status is not None and status >= 500:
                return _Failure("ambiguous", f"server error ({code}: {message})")
            return _Failure("other", f"{code}: {message}")
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return _Failure(
                "access",
                "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a"
                " profile, or pass storage_options={'key': ..., 'secret': ...})",
            )
        if isinstance(exc, bex.ConnectTimeoutError) or _connect_failed(exc, bex):
            return _Failure("unsent", f"cannot connect ({exc})")
        if isinstance(exc, bex.BotoCoreError):
            return _Failure("ambiguous", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TimeoutError | ConnectionError | EOFError) or _is_aiohttp_error(exc):
            return _Failure("ambiguous", f"{type(exc).__name__}: {exc}")
        return _Failure("other", f"{type(exc).__name__}: {exc}")

    def _translate(self, op: str, key: str | None, failure: _Failure) -> RemoteStoreError:
        cls: type[RemoteStoreError] = {
            "missing-key": ObjectNotFoundError,
            "missing-bucket": StoreNotFoundError,
            "exists": ObjectExistsError,
            "stale": PreconditionFailedError,
            "access": StoreAccessError,
            "unsent": StoreUnavailableError,
            "throttled": StoreUnavailableError,
            "ambiguous": StoreUnavailableError,
        }.get(failure.kind, RemoteStoreError)
        detail = failure.detail
        if cls is StoreUnavailableError and self.retries:
            detail += f", after {self.retries + 1} attempts"
        return cls(detail, url=self.url, operation=op, key=key)

    # -- the operations

    def get(self, key: str) -> StoredObject:
        return self._get("get", key, None)  # type: ignore[return-value]

    def get_if_changed(self, key: str, etag: str) -> StoredObject | None:
        return self._get("get", key, etag)

    def _get(self, op: str, key: str, etag: str | None) -> StoredObject | None:
        path = self._key(key)
        extra = {"IfNoneMatch": etag} if etag else {}

        async def call(s3: Any) -> StoredObject | None:
            try:
                response = await s3.get_object(Bucket=self.bucket, Key=path, **extra)
            except Exception as exc:
                if self._classify(exc).kind == "not-modified":
                    return None
                raise
            async with response["Body"] as body:
                data = await body.read()
            return StoredObject(data, response["ETag"])

        return self._run(op, key, call)

    def put_new(self, key: str, data: bytes) -> str:
        return self._put(key, data, {"IfNoneMatch": "*"}, expected_etag=None)

    def put_if(self, key: str, data: bytes, etag: str) -> str:
        return self._put(key, data, {"IfMatch": etag}, expected_etag=etag)

    def _put(
        self, key: str, data: bytes, condition: dict[str, str], expected_etag: str | None
    ) -> str:
        path = self._key(key)
        # Tells our own write apart from another writer's when an answer was lost.
        write_id = uuid.uuid4().hex

        async def call(s3: Any) -> str:
            response = await s3.put_object(
                Bucket=self.bucket, Key=path, Body=data, Metadata={_WRITE_ID: write_id}, **condition
            )
            return response["ETag"]

        for attempt in range(2):
            try:
                return self._run("put", key, call, idempotent=False)
            except _Ambiguous as ambiguous:
                # The request may have been applied: the object's write id says whether.
                etag, ours = self._written_by(key, write_id)
                if ours:
                    return etag  # type: ignore[return-value]
                untouched = etag == expected_etag  # (None for put_new: still missing)
                if attempt == 0 and untouched:  # not applied, nobody moved it: try again
                    continue
                raise self._translate("put", key, ambiguous.failure) from ambiguous.__cause__
            except (PreconditionFailedError, ObjectNotFoundError) as exc:
                # The conflict may be with our own write: aiohttp resends a PUT once when its
                # connection breaks after sending (measured), and the resend of an applied
                # conditional put fails its condition.
                etag, ours = self._written_by(key, write_id)
                if ours:
                    return etag  # type: ignore[return-value]
                raise self._conflict(key, expected_etag, etag is None) from exc.__cause__
        raise AssertionError("unreachable")

    def _written_by(self, key: str, write_id: str) -> tuple[str | None, bool]:
        """The object's ETag (``None`` if missing), and whether ``write_id`` wrote it."""
        path = self._key(key)

        async def call(s3: Any) -> tuple[str | None, bool]:
            try:
                head = await s3.head_object(Bucket=self.bucket, Key=path)
            except Exception as exc:
                if self._classify(exc).kind == "missing-key":
                    return None, False
                raise
            return head["ETag"], head.get("Metadata", {}).get(_WRITE_ID) == write_id

        return self._run("put", key, call)

    def _conflict(self, key: str, expected_etag: str | None, gone: bool) -> RemoteStoreError:
        if expected_etag is None:
            return ObjectExistsError(
                "an object already exists", url=self.url, operation="put", key=key
            )
        why = "it is gone" if gone else "it changed since it was read"
        return PreconditionFailedError(
            f"expected ETag {expected_etag}; {why}", url=self.url, operation="put", key=key
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = _check_prefix(prefix)
        full = "/".join(p for p in (self.prefix, prefix) if p)
        start = full + "/" if full else ""

        async def call(s3: Any) -> list[ObjectInfo]:
            found = []
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", ()):
                    rel = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                    found.append(ObjectInfo(rel, int(item["Size"])))
            return found

        return sorted(self._run("list", prefix or None, call), key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._key(key)

        async def call(s3: Any) -> None:
            await s3.delete_object(Bucket=self.bucket, Key=path)

        self._run("delete", key, call)

    def download(
        self, key: str, dest: Path | str, *, sha256: str | None = None, size: int | None = None
    ) -> Download:
        check_sha256(sha256)
        path = self._key(key)
        with _hashing_file(Path(dest)) as out:

            async def call(s3: Any) -> None:
                response = await s3.get_object(Bucket=self.bucket, Key=path)
                async with response["Body"] as body:
                    while chunk := await body.read(CHUNK_BYTES):
                        out.write(chunk)

            # A retry starts again from the first byte (simple, and rare).
            self._run("download", key, call, on_retry=out.restart)
            return out.commit(f"download of {self.url}/{key}", sha256, size)


class _Ambiguous(Exception):
    """A conditional write failed in a way that does not say whether it was applied."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _connect_failed(exc: BaseException, bex: Any) -> bool:
    """True if no connection was made, so the request surely did not reach the server.

    aiobotocore raises ``EndpointConnectionError`` for a refused connection, but also for a
    connection reset after the whole request was sent (measured: a create-only PUT applied
    by the server, its answer cut); only the first is safe to retry.
    """
    if not isinstance(exc, bex.EndpointConnectionError):
        return False
    cause = getattr(exc, "kwargs", {}).get("error")
    return type(cause).__name__ in ("ClientConnectorError", "ClientConnectorDNSError") or (
        isinstance(cause, OSError) and type(cause).__module__ == "socket"  # gaierror
    )


def _is_aiohttp_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "aiohttp"


def _import_s3fs() -> tuple[Any, Any, Any]:
    try:
        import botocore.exceptions
        import fsspec.asyn
        import s3fs
    except ImportError as exc:
        raise MissingExtraError(
            "s3:// stores need s3fs: pip install 'embedml[s3]'", extra="s3", name="s3fs"
        ) from exc
    return s3fs, fsspec.asyn, botocore

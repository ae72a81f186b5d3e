"""What the object stores over fsspec's cloud file systems share: :class:`FsspecObjectStore`.

S3 (:mod:`.objects_s3`, through s3fs) and Google Cloud Storage (:mod:`.objects_gcs`, through
gcsfs) differ in their requests and in what their errors look like, not in what a store does
around them. The base class holds that part: the ``<scheme>://bucket/prefix`` URL, the
client made once per process, the retry loop (what is safe to retry; exponential backoff
with full jitter), the settling of a conditional write whose answer was lost (by reading the
object back), the translation of a classified failure into the
:class:`~embedml.errors.RemoteStoreError` family, and each operation's frame (key checks,
listing relative to the prefix, the verified download).

A subclass supplies the rest through a few hooks: :meth:`~FsspecObjectStore._import_extra`,
:meth:`~FsspecObjectStore._fs_options`, :meth:`~FsspecObjectStore._new_client` and
:meth:`~FsspecObjectStore._close_client` (the file system), one async method per request
(``_read``, ``_write``, ``_stat``, ``_list_names``, ``_remove``, ``_download_into``, run on
the file system's event loop), and :meth:`~FsspecObjectStore._classify`, which says what a
backend exception means (a :class:`Failure`).

This module imports no fsspec: each subclass imports its extra when a store is made.
"""

from __future__ import annotations

import abc
import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import unquote, urlsplit

from .._fork import after_fork_in_child
from ..errors import (
    ConfigurationError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RemoteStoreError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from .objects_base import (
    Download,
    ObjectInfo,
    ObjectStore,
    StoredObject,
    check_key,
    check_prefix,
    check_sha256,
    hashing_file,
)

__all__ = ["Failure", "FsspecClient", "FsspecObjectStore"]

T = TypeVar("T")

# One lock guards client creation in every store; re-made in a forked child, where a copy
# held by another thread of the parent would never be released.
_CLIENT_LOCK = threading.Lock()


def _new_client_lock() -> None:
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()


after_fork_in_child(_new_client_lock)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a backend exception means: ``kind`` picks the embedml error and the retry.

    Kinds: ``missing-key``, ``missing-bucket``, ``stale`` (a write precondition failed),
    ``not-modified``, ``access``, ``unsent`` (the request surely did not reach the server),
    ``throttled`` (the server refused it without acting), ``ambiguous`` (it may have been
    carried out), ``other``. ``detail`` goes into the error message.
    """

    kind: str
    detail: str


# The embedml error of each kind of failure; a kind not listed is a plain RemoteStoreError.
_ERRORS: dict[str, type[RemoteStoreError]] = {
    "missing-key": ObjectNotFoundError,
    "missing-bucket": StoreNotFoundError,
    "stale": PreconditionFailedError,
    "access": StoreAccessError,
    "unsent": StoreUnavailableError,
    "throttled": StoreUnavailableError,
    "ambiguous": StoreUnavailableError,
}


@dataclass(slots=True)
class FsspecClient:
    """One process's connection: the fsspec file system and fsspec's ``sync`` for its loop.

    A subclass adds what its requests need besides (S3: the aiobotocore client).
    """

    pid: int
    fs: Any  # an fsspec AsyncFileSystem (s3fs.S3FileSystem, gcsfs.GCSFileSystem)
    sync: Callable[..., Any]  # fsspec.asyn.sync


C = TypeVar("C", bound=FsspecClient)


class FsspecObjectStore(ObjectStore, Generic[C]):
    """Objects in a bucket under a prefix, through an fsspec file system (see the module).

    ``storage_options`` go to the file system (after :meth:`_fs_options`); ``retries`` is
    how many times a failed request is sent again (network failures, timeouts, throttling),
    with a sleep drawn between 0 and ``backoff * 2**attempt`` seconds before each; the
    timeouts are those of one request's connection and of each read. Raises
    :class:`ConfigurationError` for a URL of another form or an option out of range, and
    :class:`~embedml.errors.MissingExtraError` when the backend's extra is not installed.

    The client is made on first use, and again in each process that uses the store (a store
    opened before ``fork`` works in the children; fsspec refuses a loop reused across a
    fork). A conditional write whose request may have reached the server is not resent
    blindly: it is settled by reading the object back (each write carries a random id).
    """

    #: The URL scheme (``s3``, ``gs``).
    scheme: ClassVar[str]
    #: How messages name this kind of URL (``an s3:// store URL``).
    store_url: ClassVar[str]
    #: What conflict messages call the token :meth:`put_if` compares (``ETag``).
    etag_name: ClassVar[str] = "ETag"

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
        if parts.scheme != self.scheme or not parts.netloc:
            raise ConfigurationError(f"expected {self.scheme}://bucket[/prefix], got {url!r}")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"{self.store_url} has no query or fragment: {url!r}")
        if retries < 0 or connect_timeout <= 0 or read_timeout <= 0 or backoff < 0:
            raise ConfigurationError(
                "retries must be >= 0, connect_timeout and read_timeout > 0, backoff >= 0"
            )
        self.bucket = parts.netloc
        self.prefix = check_prefix(unquote(parts.path))
        self.url = f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.retries = retries
        self.backoff = backoff
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._options = {
            **self._fs_options(dict(storage_options or {})),
            "skip_instance_cache": True,  # fsspec would share one client between stores
            "use_listings_cache": False,  # other publishers change the bucket
        }
        self._client: C | None = None
        self._import_extra()  # fail now, not on the first request, without the extra

    # -- hooks: the file system

    @abc.abstractmethod
    def _import_extra(self) -> None:
        """Imports the backend; raises :class:`~embedml.errors.MissingExtraError` without it."""

    @abc.abstractmethod
    def _fs_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The file system's keyword arguments, from a copy of the user's ``storage_options``."""

    @abc.abstractmethod
    def _new_client(self) -> C:
        """A new client for this process; a failure is raised translated (operation
        ``connect``)."""

    @abc.abstractmethod
    def _close_client(self, client: C) -> None:
        """Closes the client's connections (an exception here is ignored)."""

    @abc.abstractmethod
    def _classify(self, exc: BaseException) -> Failure:
        """What the backend's exception ``exc`` means."""

    def _check_etag(self, etag: str) -> str:
        """``etag`` if it can be one of this store's ETags, else :class:`ConfigurationError`."""
        return etag

    # -- hooks: the requests, each run on the file system's loop by :meth:`_run`

    @abc.abstractmethod
    async def _read(self, client: C, key: str, etag: str | None) -> StoredObject | None:
        """The object's bytes and ETag; ``None`` if ``etag`` is given and still matches."""

    @abc.abstractmethod
    async def _write(
        self, client: C, key: str, data: bytes, expected: str | None, write_id: str
    ) -> str:
        """Writes the object only if its ETag is ``expected`` (``None``: only if it does not
        exist), with ``write_id`` in its metadata; returns the new ETag."""

    @abc.abstractmethod
    async def _stat(self, client: C, key: str) -> tuple[str, str | None] | None:
        """The object's ETag and the write id in its metadata; ``None`` if it is missing."""

    @abc.abstractmethod
    async def _list_names(self, client: C, start: str) -> list[tuple[str, int]]:
        """The full name and size of every object whose name starts with ``start``."""

    @abc.abstractmethod
    async def _remove(self, client: C, key: str) -> None:
        """Deletes the object; a missing object is not an error."""

    @abc.abstractmethod
    async def _download_into(self, client: C, key: str, write: Callable[[bytes], None]) -> None:
        """Streams the object's bytes into ``write``, chunk by chunk."""

    # -- the client, once per process

    def _connect(self) -> C:
        client = self._client
        if client is not None and client.pid == os.getpid():
            return client
        with _CLIENT_LOCK:
            client = self._client
            if client is None or client.pid != os.getpid():
                client = self._client = self._new_client()
        return client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.pid == os.getpid():
            with contextlib.suppress(Exception):  # closing a connection that broke is done
                self._close_client(client)

    # -- running one operation, with retries and translation

    def _name(self, key: str) -> str:
        """The object's name in the bucket; raises :class:`ConfigurationError` for a bad key."""
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _run(
        self,
        op: str,
        key: str | None,
        request: Callable[..., Awaitable[T]],
        *args: Any,
        idempotent: bool = True,
        on_retry: Callable[[], None] | None = None,
    ) -> T:
        """Runs ``request(client, *args)`` on the file system's loop; retries what is safe.

        ``idempotent=False`` (a conditional write): only failures where the request surely
        did not reach the server are retried; an ambiguous one is raised as
        ``_Ambiguous`` for the caller to settle.
        """
        attempt = 0
        while True:
            client = self._connect()
            try:
                return client.sync(client.fs.loop, request, client, *args)
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

    def _translate(self, op: str, key: str | None, failure: Failure) -> RemoteStoreError:
        cls = _ERRORS.get(failure.kind, RemoteStoreError)
        detail = failure.detail
        if cls is StoreUnavailableError and self.retries:
            detail += f", after {self.retries + 1} attempts"
        return cls(detail, url=self.url, operation=op, key=key)

    # -- the operations

    def get(self, key: str) -> StoredObject:
        return self._get(key, None)  # type: ignore[return-value]

    def get_if_changed(self, key: str, etag: str) -> StoredObject | None:
        return self._get(key, self._check_etag(etag))

    def _get(self, key: str, etag: str | None) -> StoredObject | None:
        self._name(key)
        return self._run("get", key, self._read, key, etag)

    def put_new(self, key: str, data: bytes) -> str:
        return self._put(key, data, None)

    def put_if(self, key: str, data: bytes, etag: str) -> str:
        return self._put(key, data, self._check_etag(etag))

    def _put(self, key: str, data: bytes, expected: str | None) -> str:
        self._name(key)
        # Tells our own write apart from another writer's when an answer was lost.
        write_id = uuid.uuid4().hex
        for attempt in range(2):
            try:
                return self._run(
                    "put", key, self._write, key, data, expected, write_id, idempotent=False
                )
            except _Ambiguous as ambiguous:
                # The request may have been applied: the object's write id says whether.
                etag, ours = self._written_by(key, write_id)
                if ours:
                    return etag  # type: ignore[return-value]
                untouched = etag == expected  # (None for put_new: still missing)
                if attempt == 0 and untouched:  # not applied, nobody moved it: try again
                    continue
                raise self._translate("put", key, ambiguous.failure) from ambiguous.__cause__
            except (PreconditionFailedError, ObjectNotFoundError) as exc:
                # The conflict may be with our own write: aiohttp resends a request once when
                # its connection breaks after sending (measured on S3), and the resend of an
                # applied conditional write fails its condition.
                etag, ours = self._written_by(key, write_id)
                if ours:
                    return etag  # type: ignore[return-value]
                raise self._conflict(key, expected, etag is None) from exc.__cause__
        raise AssertionError("unreachable")

    def _written_by(self, key: str, write_id: str) -> tuple[str | None, bool]:
        """The object's ETag (``None`` if missing), and whether ``write_id`` wrote it."""
        found = self._run("put", key, self._stat, key)
        if found is None:
            return None, False
        etag, writer = found
        return etag, writer == write_id

    def _conflict(self, key: str, expected: str | None, gone: bool) -> RemoteStoreError:
        if expected is None:
            return ObjectExistsError(
                "an object already exists", url=self.url, operation="put", key=key
            )
        why = "it is gone" if gone else "it changed since it was read"
        return PreconditionFailedError(
            f"expected {self.etag_name} {expected}; {why}", url=self.url, operation="put", key=key
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_prefix(prefix)
        full = "/".join(p for p in (self.prefix, prefix) if p)
        start = full + "/" if full else ""
        names = self._run("list", prefix or None, self._list_names, start)
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted((ObjectInfo(name[cut:], size) for name, size in names), key=lambda o: o.key)

    def delete(self, key: str) -> None:
        self._name(key)
        self._run("delete", key, self._remove, key)

    def download(
        self, key: str, dest: Path | str, *, sha256: str | None = None, size: int | None = None
    ) -> Download:
        check_sha256(sha256)
        self._name(key)
        with hashing_file(Path(dest)) as out:
            # A retry starts again from the first byte (simple, and rare).
            self._run("download", key, self._download_into, key, out.write, on_retry=out.restart)
            return out.commit(f"download of {self.url}/{key}", sha256, size)


class _Ambiguous(Exception):
    """A conditional write failed in a way that does not say whether it was applied."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure

"""The object store over Google Cloud Storage, through fsspec's gcsfs.

The only module that imports gcsfs, fsspec, aiohttp and google-auth, and only when a store is
made (the ``gcs`` extra). gcsfs gives the HTTP session, the credentials (google-auth's chain,
or ``token="anon"`` for an emulator) and the endpoint; the requests themselves are GCS's JSON
API, written here because gcsfs's public API has no compare-and-swap (its ``pipe_file`` knows
only ``mode="create"``), and its ``_request`` retries every failure six times with up to 31 s
of sleep, resending a conditional write that may have been applied. Every failure is
classified here (:class:`_Failure`) and translated into the
:class:`~embedml.errors.RemoteStoreError` family.

The token a ``gs://`` store hands out as the ETag is the object's **generation**, not GCS's
``etag`` field: GCS guarantees a new generation for every write of a name (even of the same
bytes) and takes it as a write precondition (``ifGenerationMatch``, where ``0`` means "no live
object": create-only). The ``etag`` field is not a write precondition on object uploads, and
an emulator (fake-gcs-server) derives it from the MD5 of the bytes, so two writes of equal
bytes would share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from ..errors import (
    ConfigurationError,
    MissingExtraError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RemoteStoreError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from .objects_base import (
    CHUNK_BYTES,
    Download,
    ObjectInfo,
    ObjectStore,
    StoredObject,
    check_key,
    check_prefix,
    check_sha256,
    hashing_file,
)

__all__ = ["GCSObjectStore"]

T = TypeVar("T")

# Custom metadata on every object written: a random id per put, to recognise our own write.
_WRITE_ID = "embedml-write"
_GENERATION = "x-goog-generation"

# Guards client creation in every GCSObjectStore; re-made in a forked child (a copy held
# by another thread of the parent would never be released).
_CLIENT_LOCK = threading.Lock()


def _new_client_lock() -> None:
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_client_lock)


@dataclass(frozen=True, slots=True)
class _Failure:
    """What a backend exception means: ``kind`` picks the embedml error and the retry."""

    kind: str  # missing-key, missing-bucket, stale, not-modified, access, unsent,
    # throttled, ambiguous, other
    detail: str


class _HttpStatus(Exception):
    """A GCS answer with an error status (raised by :meth:`GCSObjectStore._send`)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.message = _error_message(body)
        super().__init__(f"HTTP {status}: {self.message}")


@dataclass(slots=True)
class _Client:
    pid: int
    fs: Any  # gcsfs.GCSFileSystem
    sync: Callable[..., Any]  # fsspec.asyn.sync
    aiohttp: Any  # the module, for its timeout and exception classes


class GCSObjectStore(ObjectStore):
    """Objects in a Google Cloud Storage bucket under a prefix, through gcsfs (``gcs`` extra).

    Credentials come from google-auth's usual chain (``GOOGLE_APPLICATION_CREDENTIALS``,
    ``gcloud auth application-default login``, the metadata server on Google Cloud), or from
    ``storage_options`` (gcsfs's ``token``, ``project``, ``endpoint_url``, ``requester_pays``,
    ``session_kwargs``). With ``STORAGE_EMULATOR_HOST`` set (an emulator, as Google's own
    client does) and no ``token`` given, requests are anonymous.

    The ETag of this store is the object's generation (see the module docstring). The client
    is made on first use and again in each process that uses the store (a store opened before
    ``fork`` works in the children). Requests that fail on the network, time out or are
    throttled are retried ``retries`` times with exponential backoff and jitter, except a
    conditional write whose request may have reached the server: that one is settled by
    reading the object back.
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
        if parts.scheme != "gs" or not parts.netloc:
            raise ConfigurationError(f"expected gs://bucket[/prefix], got {url!r}")
        if parts.query or parts.fragment:
            raise ConfigurationError(f"a gs:// store URL has no query or fragment: {url!r}")
        if retries < 0 or connect_timeout <= 0 or read_timeout <= 0 or backoff < 0:
            raise ConfigurationError(
                "retries must be >= 0, connect_timeout and read_timeout > 0, backoff >= 0"
            )
        self.bucket = parts.netloc
        self.prefix = check_prefix(unquote(parts.path))
        self.url = f"gs://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.retries = retries
        self.backoff = backoff
        self._timeouts = (connect_timeout, read_timeout)
        options = dict(storage_options or {})
        if os.environ.get("STORAGE_EMULATOR_HOST") and "token" not in options:
            options["token"] = "anon"  # an emulator takes no credentials
        self._options = {
            **options,
            "skip_instance_cache": True,  # fsspec would share one client between stores
            "use_listings_cache": False,
        }
        self._client: _Client | None = None
        _import_gcsfs()  # fail now, not on the first request, without the extra

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
        gcsfs, fsspec_asyn, aiohttp = _import_gcsfs()
        try:
            fs = gcsfs.GCSFileSystem(**self._options)
        except Exception as exc:
            raise self._translate("connect", None, self._classify(exc)) from exc
        return _Client(os.getpid(), fs, fsspec_asyn.sync, aiohttp)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.pid == os.getpid() and client.fs._session is not None:
            with contextlib.suppress(Exception):  # closing a connection that broke is done
                client.sync(client.fs.loop, client.fs._session.close)

    # -- one HTTP request, through gcsfs's session and credentials

    def _object_url(self, client: _Client, key: str, *, media: bool = False) -> str:
        name = quote(self._key(key), safe="")
        base = f"{client.fs._location}/{'download/' if media else ''}storage/v1"
        return f"{base}/b/{quote(self.bucket, safe='')}/o/{name}"

    def _bucket_url(self, client: _Client, *, upload: bool = False) -> str:
        base = f"{client.fs._location}/{'upload/' if upload else ''}storage/v1"
        return f"{base}/b/{quote(self.bucket, safe='')}/o"

    @contextlib.asynccontextmanager
    async def _send(
        self,
        client: _Client,
        method: str,
        url: str,
        params: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Any:
        """Yields the aiohttp response of one request; raises :class:`_HttpStatus` for >= 400.

        The same steps as gcsfs's ``_request`` (its session, ``_get_params`` for requester
        pays, ``_get_headers`` for the credentials) without its retry loop: ours decides.
        """
        fs = client.fs
        await fs._set_session()
        connect, read = self._timeouts
        timeout = client.aiohttp.ClientTimeout(sock_connect=connect, sock_read=read)
        async with fs._session.request(
            method,
            url,
            params=fs._get_params(params),
            headers=fs._get_headers(headers),
            data=data,
            timeout=timeout,
        ) as response:
            if response.status >= 400:
                raise _HttpStatus(response.status, await response.read())
            yield response

    # -- running one operation, with retries and translation

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _run(
        self,
        op: str,
        key: str | None,
        call: Callable[[_Client], Awaitable[T]],
        *,
        idempotent: bool = True,
        on_retry: Callable[[], None] | None = None,
        bucket_level: bool = False,
    ) -> T:
        """Runs ``call(client)`` on gcsfs's event loop; retries what is safe to retry.

        ``idempotent=False`` (a conditional write): only failures where the request surely
        did not reach the server are retried; an ambiguous one is raised as ``_Ambiguous``
        for the caller to settle. ``bucket_level``: the request names no object (a listing,
        an upload), so "not found" can only mean the bucket.
        """
        attempt = 0
        while True:
            client = self._connect()
            try:
                return client.sync(client.fs.loop, call, client)
            except Exception as exc:
                failure = self._classify(exc)
                if failure.kind == "missing-key" and bucket_level:
                    failure = _Failure("missing-bucket", f"bucket {self.bucket!r} not found")
                retryable = failure.kind in ("unsent", "throttled") or (
                    idempotent and failure.kind == "ambiguous"
                )
                if not retryable or attempt >= self.retries:
                    if failure.kind == "ambiguous" and not idempotent:
                        raise _Ambiguous(failure) from exc
                    raise self._translate(op, key, failure) from exc
            attempt += 1
            time.sleep(random.uniform(0, self.backoff * 2**attempt))  # full jitter
            if on_retry is not None:
                on_retry()

    def _classify(self, exc: BaseException) -> _Failure:
        _, _, aiohttp = _import_gcsfs()
        if isinstance(exc, _HttpStatus):
            status, message = exc.status, exc.message
            if status == 404:
                if "bucket" in message.lower():  # GCS: "The specified bucket does not exist."
                    return _Failure("missing-bucket", f"bucket {self.bucket!r} not found")
                return _Failure("missing-key", "no such object")
            if status == 304:
                return _Failure("not-modified", "not modified")
            if status == 412:
                return _Failure("stale", message)
            if status in (401, 403):
                return _Failure("access", f"access refused (HTTP {status}: {message})")
            if status == 429:
                return _Failure("throttled", f"throttled (HTTP 429: {message})")
            if status == 408 or status >= 500:
                return _Failure("ambiguous", f"server error (HTTP {status}: {message})")
            return _Failure("other", f"HTTP {status}: {message}")
        if type(exc).__module__.split(".")[0] == "google":  # google.auth's errors
            return _Failure(
                "access",
                f"no usable credentials ({type(exc).__name__}: {exc}); set"
                " GOOGLE_APPLICATION_CREDENTIALS or pass storage_options={'token': ...}",
            )
        # A refused connection or a connect timeout: the request was never sent.
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            return _Failure("unsent", f"cannot connect ({exc})")
        if isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError | EOFError):
            return _Failure("ambiguous", f"{type(exc).__name__}: {exc}")
        return _Failure("other", f"{type(exc).__name__}: {exc}")

    def _translate(self, op: str, key: str | None, failure: _Failure) -> RemoteStoreError:
        cls: type[RemoteStoreError] = {
            "missing-key": ObjectNotFoundError,
            "missing-bucket": StoreNotFoundError,
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
        return self._get("get", key, _generation(etag))

    def _get(self, op: str, key: str, generation: str | None) -> StoredObject | None:
        self._key(key)
        params = {"alt": "media"}
        if generation is not None:
            params["ifGenerationNotMatch"] = generation

        async def call(client: _Client) -> StoredObject | None:
            url = self._object_url(client, key, media=True)
            try:
                async with self._send(client, "GET", url, params) as response:
                    if response.status == 304:
                        return None
                    data = await response.read()
                    got = response.headers.get(_GENERATION)
            except _HttpStatus as exc:
                if exc.status == 304:
                    return None
                raise
            if not got:
                raise RemoteStoreError(
                    f"the server sent no {_GENERATION} header with the object",
                    url=self.url,
                    operation=op,
                    key=key,
                )
            # GCS answers 304 to ifGenerationNotMatch; an emulator may ignore it and send
            # the object: the same generation still means unchanged.
            return None if got == generation else StoredObject(data, got)

        return self._run(op, key, call)

    def put_new(self, key: str, data: bytes) -> str:
        return self._put(key, data, expected=None)

    def put_if(self, key: str, data: bytes, etag: str) -> str:
        return self._put(key, data, expected=_generation(etag))

    def _put(self, key: str, data: bytes, expected: str | None) -> str:
        name = self._key(key)
        # Tells our own write apart from another writer's when an answer was lost.
        write_id = uuid.uuid4().hex
        # One multipart request (metadata + bytes): the data is in memory already, and
        # fake-gcs-server honours ifGenerationMatch on multipart uploads (not on media ones).
        boundary = f"embedml-{uuid.uuid4().hex}"
        meta = json.dumps({"name": name, "metadata": {_WRITE_ID: write_id}})
        body = b"".join([
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            meta.encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ])  # fmt: skip
        params = {"uploadType": "multipart", "ifGenerationMatch": expected or "0"}
        headers = {"Content-Type": f'multipart/related; boundary="{boundary}"'}

        async def call(client: _Client) -> str:
            url = self._bucket_url(client, upload=True)
            async with self._send(client, "POST", url, params, headers=headers, data=body) as r:
                return str((await r.json(content_type=None))["generation"])

        for attempt in range(2):
            try:
                return self._run("put", key, call, idempotent=False, bucket_level=True)
            except _Ambiguous as ambiguous:
                # The request may have been applied: the object's write id says whether.
                generation, ours = self._written_by(key, write_id)
                if ours:
                    return generation  # type: ignore[return-value]
                untouched = generation == expected  # (None for put_new: still missing)
                if attempt == 0 and untouched:  # not applied, nobody moved it: try again
                    continue
                raise self._translate("put", key, ambiguous.failure) from ambiguous.__cause__
            except (PreconditionFailedError, ObjectNotFoundError) as exc:
                # The conflict may be with our own write, resent by aiohttp after its
                # connection broke: the resend of an applied conditional write fails.
                generation, ours = self._written_by(key, write_id)
                if ours:
                    return generation  # type: ignore[return-value]
                raise self._conflict(key, expected, generation is None) from exc.__cause__
        raise AssertionError("unreachable")

    def _written_by(self, key: str, write_id: str) -> tuple[str | None, bool]:
        """The object's generation (``None`` if missing), and whether ``write_id`` wrote it."""

        async def call(client: _Client) -> tuple[str | None, bool]:
            url = self._object_url(client, key)
            try:
                async with self._send(client, "GET", url, {}) as response:
                    meta = await response.json(content_type=None)
            except _HttpStatus as exc:
                if exc.status == 404:
                    return None, False
                raise
            ours = (meta.get("metadata") or {}).get(_WRITE_ID) == write_id
            return str(meta["generation"]), ours

        return self._run("put", key, call)

    def _conflict(self, key: str, expected: str | None, gone: bool) -> RemoteStoreError:
        if expected is None:
            return ObjectExistsError(
                "an object already exists", url=self.url, operation="put", key=key
            )
        why = "it is gone" if gone else "it changed since it was read"
        return PreconditionFailedError(
            f"expected generation {expected}; {why}", url=self.url, operation="put", key=key
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        prefix = check_prefix(prefix)
        full = "/".join(p for p in (self.prefix, prefix) if p)
        start = full + "/" if full else ""

        async def call(client: _Client) -> list[ObjectInfo]:
            found = []
            params = {"prefix": start, "fields": "items(name,size),nextPageToken"}
            while True:
                async with self._send(client, "GET", self._bucket_url(client), params) as r:
                    page = await r.json(content_type=None)
                for item in page.get("items", ()):
                    rel = item["name"][len(self.prefix) + 1 :] if self.prefix else item["name"]
                    found.append(ObjectInfo(rel, int(item["size"])))
                if not page.get("nextPageToken"):
                    return found
                params = {**params, "pageToken": page["nextPageToken"]}

        return sorted(
            self._run("list", prefix or None, call, bucket_level=True), key=lambda o: o.key
        )

    def delete(self, key: str) -> None:
        self._key(key)

        async def call(client: _Client) -> None:
            try:
                async with self._send(client, "DELETE", self._object_url(client, key), {}):
                    pass
            except _HttpStatus as exc:
                if exc.status != 404 or "bucket" in exc.message.lower():
                    raise

        self._run("delete", key, call)

    def download(
        self, key: str, dest: Path | str, *, sha256: str | None = None, size: int | None = None
    ) -> Download:
        check_sha256(sha256)
        self._key(key)
        with hashing_file(Path(dest)) as out:

            async def call(client: _Client) -> None:
                url = self._object_url(client, key, media=True)
                async with self._send(client, "GET", url, {"alt": "media"}) as response:
                    while chunk := await response.content.read(CHUNK_BYTES):
                        out.write(chunk)

            # A retry starts again from the first byte (simple, and rare).
            self._run("download", key, call, on_retry=out.restart)
            return out.commit(f"download of {self.url}/{key}", sha256, size)


class _Ambiguous(Exception):
    """A conditional write failed in a way that does not say whether it was applied."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _generation(etag: str) -> str:
    if not (isinstance(etag, str) and etag.isascii() and etag.isdigit()):
        raise ConfigurationError(
            f"a gs:// store's ETag is an object generation (decimal digits), got {etag!r}"
        )
    return etag


def _error_message(body: bytes) -> str:
    """GCS's JSON error message (``{"error": {"message": ...}}``), else the text, one line."""
    text = body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
        text = json.loads(text)["error"]["message"]
    return " ".join(str(text).split())[:300] or "no message"


def _import_gcsfs() -> tuple[Any, Any, Any]:
    try:
        import aiohttp
        import fsspec.asyn
        import gcsfs
    except ImportError as exc:
        raise MissingExtraError(
            "gs:// stores need gcsfs: pip install 'embedml[gcs]'", extra="gcs", name="gcsfs"
        ) from exc
    return gcsfs, fsspec.asyn, aiohttp

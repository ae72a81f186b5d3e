"""The object store over S3 (any S3-compatible service), through fsspec's s3fs.

The only module that imports s3fs, fsspec and botocore, and only when a store is made (the
``s3`` extra). Every backend exception is classified here (:class:`_Failure`) and
translated into the :class:`~embedml.errors.RemoteStoreError` family.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

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

__all__ = ["S3ObjectStore"]

T = TypeVar("T")

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
        self.prefix = check_prefix(unquote(parts.path))
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
        prefix = check_prefix(prefix)
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
        with hashing_file(Path(dest)) as out:

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

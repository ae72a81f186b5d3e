"""The object store over S3 (any S3-compatible service), through fsspec's s3fs.

The only module that imports s3fs, fsspec and botocore, and only when a store is made (the
``s3`` extra). It supplies what :class:`~.objects_fsspec.FsspecObjectStore` leaves to a
backend: the s3fs file system and its aiobotocore client, the S3 requests (conditional
writes as ``If-None-Match: *`` / ``If-Match``), and the classification of botocore's and
aiohttp's exceptions (:meth:`S3ObjectStore._classify`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import MissingExtraError, import_extra
from .objects_base import CHUNK_BYTES, StoredObject
from .objects_fsspec import Failure, FsspecClient, FsspecObjectStore

__all__ = ["S3ObjectStore"]

# Error codes of a request the server did not carry out: retrying it is safe even for a
# conditional write. (A timeout or a cut connection after sending is not in this list.)
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
              "ServiceUnavailable", "ConditionalRequestConflict", "TooManyRequests"}  # fmt: skip
_ACCESS = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "Forbidden"}  # fmt: skip

# User metadata on every object written: a random id per put, to recognise our own write.
_WRITE_ID = "embedml-write"


@dataclass(slots=True)
class _S3Client(FsspecClient):
    s3: Any  # the file system's aiobotocore client


class S3ObjectStore(FsspecObjectStore[_S3Client]):
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

    scheme = "s3"
    store_url = "an s3:// store URL"

    # -- the file system

    def _import_extra(self) -> None:
        _import_s3fs()

    def _fs_options(self, options: dict[str, Any]) -> dict[str, Any]:
        config = dict(options.pop("config_kwargs", None) or {})
        # Our own retry loop decides what is safe to retry; botocore's would retry a
        # conditional PUT whose first attempt may have been applied.
        config.setdefault("retries", {"mode": "standard", "max_attempts": 1})
        config.setdefault("connect_timeout", self.connect_timeout)
        config.setdefault("read_timeout", self.read_timeout)
        return {**options, "config_kwargs": config}

    def _new_client(self) -> _S3Client:
        s3fs, fsspec_asyn, botocore = _import_s3fs()
        try:
            fs = s3fs.S3FileSystem(**self._options)
            fs.retries = 1  # s3fs's own retry loop: off, ours decides
            s3 = fsspec_asyn.sync(fs.loop, fs.set_session)
        except Exception as exc:
            raise self._translate("connect", None, self._classify(exc)) from exc
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
        return _S3Client(os.getpid(), fs, fsspec_asyn.sync, s3)

    def _close_client(self, client: _S3Client) -> None:
        client.sync(client.fs.loop, client.s3.close)

    def _classify(self, exc: BaseException) -> Failure:
        _, _, botocore = _import_s3fs()
        bex = botocore.exceptions
        if isinstance(exc, bex.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.get("Message") or code
            if code in ("NoSuchKey", "404") and status == 404:
                return Failure("missing-key", "no such object")
            if code == "NoSuchBucket":
                return Failure("missing-bucket", f"bucket {self.bucket!r} does not exist")
            if code in ("304", "NotModified") or status == 304:
                return Failure("not-modified", "not modified")
            if code == "PreconditionFailed" or status == 412:
                return Failure("stale", str(error.get("Condition") or message))
            if code in _ACCESS or status == 403:
                return Failure("access", f"access refused ({code}: {message})")
            if code in _THROTTLED or status in (409, 429, 503):
                return Failure("throttled", f"throttled ({code})")
            if status is not None and status >= 500:
                return Failure("ambiguous", f"server error ({code}: {message})")
            return Failure("other", f"{code}: {message}")
        if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
            return Failure(
                "access",
                "no credentials found (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or a"
                " profile, or pass storage_options={'key': ..., 'secret': ...})",
            )
        if isinstance(exc, bex.ConnectTimeoutError) or _connect_failed(exc, bex):
            return Failure("unsent", f"cannot connect ({exc})")
        if isinstance(exc, bex.BotoCoreError):
            return Failure("ambiguous", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, TimeoutError | ConnectionError | EOFError) or _is_aiohttp_error(exc):
            return Failure("ambiguous", f"{type(exc).__name__}: {exc}")
        return Failure("other", f"{type(exc).__name__}: {exc}")

    # -- the requests

    async def _read(self, client: _S3Client, key: str, etag: str | None) -> StoredObject | None:
        extra = {"IfNoneMatch": etag} if etag else {}
        try:
            response = await client.s3.get_object(Bucket=self.bucket, Key=self._name(key), **extra)
        except Exception as exc:
            if self._classify(exc).kind == "not-modified":
                return None
            raise
        async with response["Body"] as body:
            data = await body.read()
        return StoredObject(data, response["ETag"])

    async def _write(
        self, client: _S3Client, key: str, data: bytes, expected: str | None, write_id: str
    ) -> str:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        response = await client.s3.put_object(
            Bucket=self.bucket,
            Key=self._name(key),
            Body=data,
            Metadata={_WRITE_ID: write_id},
            **condition,
        )
        return response["ETag"]

    async def _stat(self, client: _S3Client, key: str) -> tuple[str, str | None] | None:
        try:
            head = await client.s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as exc:
            if self._classify(exc).kind == "missing-key":
                return None
            raise
        return head["ETag"], head.get("Metadata", {}).get(_WRITE_ID)

    async def _list_names(self, client: _S3Client, start: str) -> list[tuple[str, int]]:
        found = []
        paginator = client.s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
            found.extend((item["Key"], int(item["Size"])) for item in page.get("Contents", ()))
        return found

    async def _remove(self, client: _S3Client, key: str) -> None:
        await client.s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    async def _download_into(
        self, client: _S3Client, key: str, write: Callable[[bytes], None]
    ) -> None:
        response = await client.s3.get_object(Bucket=self.bucket, Key=self._name(key))
        async with response["Body"] as body:
            while chunk := await body.read(CHUNK_BYTES):
                write(chunk)


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


def _import_s3fs() -> list[Any]:
    """s3fs, fsspec.asyn and botocore (with its exceptions module)."""
    return import_extra(
        "s3", "s3:// stores", "s3fs", "fsspec.asyn", "botocore", "botocore.exceptions"
    )[:3]

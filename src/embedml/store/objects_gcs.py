"""The object store over Google Cloud Storage, through fsspec's gcsfs.

The only module that imports gcsfs, fsspec, aiohttp and google-auth, and only when a store is
made (the ``gcs`` extra). It supplies what :class:`~.objects_fsspec.FsspecObjectStore` leaves
to a backend. gcsfs gives the HTTP session, the credentials (google-auth's chain, or
``token="anon"`` for an emulator) and the endpoint; the requests themselves are GCS's JSON
API, written here because gcsfs's public API has no compare-and-swap (its ``pipe_file`` knows
only ``mode="create"``), and its ``_request`` retries every failure six times with up to 31 s
of sleep, resending a conditional write that may have been applied. Every failure is
classified here (:meth:`GCSObjectStore._classify`).

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
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..errors import ConfigurationError, RemoteStoreError, import_extra
from .objects_base import CHUNK_BYTES, StoredObject
from .objects_fsspec import Failure, FsspecClient, FsspecObjectStore

__all__ = ["GCSObjectStore"]

# Custom metadata on every object written: a random id per put, to recognise our own write.
_WRITE_ID = "embedml-write"
_GENERATION = "x-goog-generation"


class _HttpStatus(Exception):
    """A GCS answer with an error status (raised by :meth:`GCSObjectStore._send`).

    ``bucket_level``: the request named no object (a listing, an upload), so "not found"
    can only mean the bucket.
    """

    def __init__(self, status: int, body: bytes, bucket_level: bool) -> None:
        self.status = status
        self.message = _error_message(body)
        self.bucket_level = bucket_level
        super().__init__(f"HTTP {status}: {self.message}")


@dataclass(slots=True)
class _GCSClient(FsspecClient):
    aiohttp: Any  # the module, for its timeout and exception classes


class GCSObjectStore(FsspecObjectStore[_GCSClient]):
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

    scheme = "gs"
    store_url = "a gs:// store URL"
    etag_name = "generation"

    # -- the file system

    def _import_extra(self) -> None:
        _import_gcsfs()

    def _fs_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if os.environ.get("STORAGE_EMULATOR_HOST") and "token" not in options:
            options["token"] = "anon"  # an emulator takes no credentials
        return options

    def _new_client(self) -> _GCSClient:
        gcsfs, fsspec_asyn, aiohttp = _import_gcsfs()
        try:
            fs = gcsfs.GCSFileSystem(**self._options)
        except Exception as exc:
            raise self._translate("connect", None, self._classify(exc)) from exc
        return _GCSClient(os.getpid(), fs, fsspec_asyn.sync, aiohttp)

    def _close_client(self, client: _GCSClient) -> None:
        if client.fs._session is not None:
            client.sync(client.fs.loop, client.fs._session.close)

    def _check_etag(self, etag: str) -> str:
        if not (isinstance(etag, str) and etag.isascii() and etag.isdigit()):
            raise ConfigurationError(
                f"a gs:// store's ETag is an object generation (decimal digits), got {etag!r}"
            )
        return etag

    def _classify(self, exc: BaseException) -> Failure:
        _, _, aiohttp = _import_gcsfs()
        if isinstance(exc, _HttpStatus):
            status, message = exc.status, exc.message
            if status == 404:
                # GCS says "The specified bucket does not exist."
                if exc.bucket_level or "bucket" in message.lower():
                    return Failure("missing-bucket", f"bucket {self.bucket!r} not found")
                return Failure("missing-key", "no such object")
            if status == 304:
                return Failure("not-modified", "not modified")
            if status == 412:
                return Failure("stale", message)
            if status in (401, 403):
                return Failure("access", f"access refused (HTTP {status}: {message})")
            if status == 429:
                return Failure("throttled", f"throttled (HTTP 429: {message})")
            if status == 408 or status >= 500:
                return Failure("ambiguous", f"server error (HTTP {status}: {message})")
            return Failure("other", f"HTTP {status}: {message}")
        if type(exc).__module__.split(".")[0] == "google":  # google.auth's errors
            return Failure(
                "access",
                f"no usable credentials ({type(exc).__name__}: {exc}); set"
                " GOOGLE_APPLICATION_CREDENTIALS or pass storage_options={'token': ...}",
            )
        # A refused connection or a connect timeout: the request was never sent.
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
            return Failure("unsent", f"cannot connect ({exc})")
        if isinstance(exc, aiohttp.ClientError | TimeoutError | ConnectionError | EOFError):
            return Failure("ambiguous", f"{type(exc).__name__}: {exc}")
        return Failure("other", f"{type(exc).__name__}: {exc}")

    # -- one HTTP request, through gcsfs's session and credentials

    def _object_url(self, client: _GCSClient, key: str, *, media: bool = False) -> str:
        name = quote(self._name(key), safe="")
        base = f"{client.fs._location}/{'download/' if media else ''}storage/v1"
        return f"{base}/b/{quote(self.bucket, safe='')}/o/{name}"

    def _bucket_url(self, client: _GCSClient, *, upload: bool = False) -> str:
        base = f"{client.fs._location}/{'upload/' if upload else ''}storage/v1"
        return f"{base}/b/{quote(self.bucket, safe='')}/o"

    @contextlib.asynccontextmanager
    async def _send(
        self,
        client: _GCSClient,
        method: str,
        url: str,
        params: dict[str, str],
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        bucket_level: bool = False,
    ) -> Any:
        """Yields the aiohttp response of one request; raises :class:`_HttpStatus` for >= 400.

        The same steps as gcsfs's ``_request`` (its session, ``_get_params`` for requester
        pays, ``_get_headers`` for the credentials) without its retry loop: ours decides.
        ``bucket_level``: ``url`` names no object (see :class:`_HttpStatus`).
        """
        fs = client.fs
        await fs._set_session()
        timeout = client.aiohttp.ClientTimeout(
            sock_connect=self.connect_timeout, sock_read=self.read_timeout
        )
        async with fs._session.request(
            method,
            url,
            params=fs._get_params(params),
            headers=fs._get_headers(headers),
            data=data,
            timeout=timeout,
        ) as response:
            if response.status >= 400:
                raise _HttpStatus(response.status, await response.read(), bucket_level)
            yield response

    # -- the requests

    async def _read(
        self, client: _GCSClient, key: str, generation: str | None
    ) -> StoredObject | None:
        params = {"alt": "media"}
        if generation is not None:
            params["ifGenerationNotMatch"] = generation
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
                operation="get",
                key=key,
            )
        # GCS answers 304 to ifGenerationNotMatch; an emulator may ignore it and send
        # the object: the same generation still means unchanged.
        return None if got == generation else StoredObject(data, got)

    async def _write(
        self, client: _GCSClient, key: str, data: bytes, expected: str | None, write_id: str
    ) -> str:
        # One multipart request (metadata + bytes): the data is in memory already, and
        # fake-gcs-server honours ifGenerationMatch on multipart uploads (not on media ones).
        boundary = f"embedml-{uuid.uuid4().hex}"
        meta = json.dumps({"name": self._name(key), "metadata": {_WRITE_ID: write_id}})
        body = b"".join([
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            meta.encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ])  # fmt: skip
        params = {"uploadType": "multipart", "ifGenerationMatch": expected or "0"}
        headers = {"Content-Type": f'multipart/related; boundary="{boundary}"'}
        url = self._bucket_url(client, upload=True)
        async with self._send(
            client, "POST", url, params, headers=headers, data=body, bucket_level=True
        ) as response:
            return str((await response.json(content_type=None))["generation"])

    async def _stat(self, client: _GCSClient, key: str) -> tuple[str, str | None] | None:
        try:
            async with self._send(client, "GET", self._object_url(client, key), {}) as response:
                meta = await response.json(content_type=None)
        except _HttpStatus as exc:
            if exc.status == 404:
                return None
            raise
        return str(meta["generation"]), (meta.get("metadata") or {}).get(_WRITE_ID)

    async def _list_names(self, client: _GCSClient, start: str) -> list[tuple[str, int]]:
        found = []
        url = self._bucket_url(client)
        params = {"prefix": start, "fields": "items(name,size),nextPageToken"}
        while True:
            async with self._send(client, "GET", url, params, bucket_level=True) as response:
                page = await response.json(content_type=None)
            found.extend((item["name"], int(item["size"])) for item in page.get("items", ()))
            if not page.get("nextPageToken"):
                return found
            params = {**params, "pageToken": page["nextPageToken"]}

    async def _remove(self, client: _GCSClient, key: str) -> None:
        try:
            async with self._send(client, "DELETE", self._object_url(client, key), {}):
                pass
        except _HttpStatus as exc:
            if exc.status != 404 or "bucket" in exc.message.lower():
                raise

    async def _download_into(
        self, client: _GCSClient, key: str, write: Callable[[bytes], None]
    ) -> None:
        url = self._object_url(client, key, media=True)
        async with self._send(client, "GET", url, {"alt": "media"}) as response:
            while chunk := await response.content.read(CHUNK_BYTES):
                write(chunk)


def _error_message(body: bytes) -> str:
    """GCS's JSON error message (``{"error": {"message": ...}}``), else the text, one line."""
    text = body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
        text = json.loads(text)["error"]["message"]
    return " ".join(str(text).split())[:300] or "no message"


def _import_gcsfs() -> list[Any]:
    """gcsfs, fsspec.asyn and aiohttp."""
    return import_extra("gcs", "gs:// stores", "gcsfs", "fsspec.asyn", "aiohttp")

"""Object stores: the few operations a remote model store needs, over a folder, S3 or GCS.

A store URL names a place that holds objects by key (``models/churn/index.json``):

- ``file:///srv/models`` (or a plain path): :class:`LocalObjectStore`, a folder;
- ``s3://bucket/prefix``: :class:`S3ObjectStore`, any S3-compatible service, through fsspec's
  s3fs (the ``s3`` extra, imported only when such a store is opened);
- ``gs://bucket/prefix``: :class:`GCSObjectStore`, Google Cloud Storage, through fsspec's
  gcsfs (the ``gcs`` extra, likewise imported only when such a store is opened).

All keep one contract (tested by one suite, ``tests/test_object_store.py``):

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
and the key; the backend's exception (botocore, aiohttp, google-auth, ``OSError``) is only its ``__cause__``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..errors import ConfigurationError
from .objects_base import (
    CHUNK_BYTES,
    Download,
    ObjectInfo,
    ObjectStore,
    StoredObject,
    check_key,
    check_sha256,
)
from .objects_local import LocalObjectStore

if TYPE_CHECKING:  # the names of __all__, for type checkers: imported on use (__getattr__)
    from .objects_gcs import GCSObjectStore
    from .objects_s3 import S3ObjectStore

__all__ = [
    "CHUNK_BYTES",
    "Download",
    "GCSObjectStore",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "S3ObjectStore",
    "StoredObject",
    "check_key",
    "check_sha256",
    "open_object_store",
]


def __getattr__(name: str) -> Any:
    # The S3 and GCS backends (and fsspec's base) are imported when a URL or this module's
    # attribute asks for them: a folder store, and so every first load from one, does
    # without them (7 ms of a fresh process's 165, `python -X importtime`).
    if name == "S3ObjectStore":
        from .objects_s3 import S3ObjectStore

        return S3ObjectStore
    if name == "GCSObjectStore":
        from .objects_gcs import GCSObjectStore

        return GCSObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_object_store(
    url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None, **options: Any
) -> ObjectStore:
    """Opens the object store at ``url``: ``s3://bucket/prefix``, ``gs://bucket/prefix``,
    ``file:///path`` or a path.

    ``storage_options`` go to the backend (for S3: s3fs's ``key``, ``secret``, ``token``,
    ``endpoint_url``, ``client_kwargs``, ...; for GCS: gcsfs's ``token``, ``project``,
    ``endpoint_url``, ...); ``options`` to the store class (``retries``, timeouts). Raises
    :class:`ConfigurationError` for another scheme, and :class:`MissingExtraError` when
    ``s3://`` or ``gs://`` is asked for without the ``s3`` or ``gcs`` extra.
    """
    if isinstance(url, os.PathLike):
        return LocalObjectStore(Path(url), **options)
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("s3", "gs"):
        backend = __getattr__("S3ObjectStore" if scheme == "s3" else "GCSObjectStore")
        return backend(url, storage_options=storage_options, **options)  # type: ignore[no-any-return]
    if scheme in ("", "file"):
        if storage_options:
            raise ConfigurationError("storage_options apply to remote stores, not to a folder")
        return LocalObjectStore(_file_url_path(url) if scheme else Path(url), **options)
    raise ConfigurationError(
        f"unsupported store URL {url!r}: expected s3://bucket/prefix, gs://bucket/prefix,"
        " file:///path or a path"
    )


def _file_url_path(url: str) -> Path:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(f"file:// URL with a host is not supported: {url!r}")
    return Path(unquote(parts.path))

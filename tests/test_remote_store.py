"""``ModelStore("s3://...")``: the store's API over a real S3 server (``s3_server.py``).

Versions, aliases, history, signatures, the verified local cache and offline mode, checked
against moto running as a separate process; concurrency with processes, not threads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import embedml
from embedml.errors import (
    ModelNotFoundError,
    VersionExistsError,
    VersionNotFoundError,
)
from embedml.store import RemoteStore, Store
from helpers_models import LINEAR_B, LINEAR_W, onnx_linear
from s3_server import S3Bucket

pytest.importorskip("s3fs", reason="the s3 extra is part of the dev extra")

X = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=np.float32)
KEY = "a-test-signing-key"


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("EMBEDML_CACHE_DIR", str(path))
    monkeypatch.delenv("EMBEDML_OFFLINE", raising=False)
    monkeypatch.delenv("EMBEDML_SIGNING_KEY", raising=False)
    return path


@pytest.fixture
def url(s3_bucket: S3Bucket, cache_dir: Path) -> str:
    return f"{s3_bucket.url}/models"


def _objects(bucket: S3Bucket) -> list[str]:
    admin = bucket.server.admin()
    pages = admin.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_save_and_load_over_s3(url: str, s3_bucket: S3Bucket, cache_dir: Path) -> None:
    store = embedml.ModelStore(url)
    assert isinstance(store, RemoteStore) and isinstance(store, embedml.ModelStore)
    assert isinstance(store, Store)
    assert store.models() == []  # an empty (missing) prefix is an empty store
    v1 = store.save("lin", onnx_linear())
    v2 = store.save("lin", onnx_linear(), version="2.0")
    assert (v1.version, v2.version) == ("1", "2.0")
    assert store.versions("lin") == ["1", "2.0"]
    assert store.models() == ["lin"]
    assert store.resolve("lin").version == "2.0"
    with store.load("lin@1") as handle:
        out = handle.predict_batch({"x": X})
    np.testing.assert_allclose(out, X @ LINEAR_W + LINEAR_B, rtol=1e-6)
    # a second store object (another machine) sees the same versions
    other = embedml.ModelStore(url)
    assert other.versions("lin") == ["1", "2.0"]
    with other.load("lin", "1") as handle:
        np.testing.assert_array_equal(handle.predict_batch({"x": X}), out)
    keys = _objects(s3_bucket)
    assert "models/.embedml-store.json" in keys
    assert f"models/blobs/sha256/{v1.manifest.sha256}" in keys
    # the artifact is in the cache, verified, once
    assert (cache_dir / "blobs" / "sha256" / v1.manifest.sha256[:2] / v1.manifest.sha256).is_file()
    with pytest.raises(VersionExistsError):
        store.save("lin", onnx_linear(), version=1)
    with pytest.raises(ModelNotFoundError):
        store.versions("nope")
    with pytest.raises(VersionNotFoundError, match="versions: 1, 2.0"):
        store.resolve("lin", "7")

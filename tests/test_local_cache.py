"""The local content-addressed cache: one verified download per machine, repairs, offline.

Downloads come from a real S3 server (``s3_server.py``); how many times the bytes were
fetched is counted in that server's own request log, not by a wrapper in the test.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import uuid
from pathlib import Path

import pytest

from embedml.errors import (
    CacheMissError,
    ConfigurationError,
    IntegrityError,
    StoreUnavailableError,
)
from embedml.store.local_cache import LocalCache, default_cache_dir
from embedml.store.objects import LocalObjectStore, S3ObjectStore
from helpers_processes import run_children
from s3_server import S3Bucket
from tcp_cut import CuttingRelay

pytest.importorskip("s3fs", reason="the s3 extra is part of the dev extra")


def _blob(store, size: int = 1 << 20) -> tuple[str, str, bytes]:
    """Puts random bytes under their content address; returns (key, sha256, bytes)."""
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()
    key = f"blobs/sha256/{digest}"
    store.put_new(key, data)
    return key, digest, data


def _downloads(bucket: S3Bucket, key: str) -> int:
    """GET requests for ``key`` in the server's log, once every earlier request is logged."""
    return bucket.logged_requests(f"GET /{bucket.name}/p/{key} ")


@pytest.fixture
def s3(s3_bucket: S3Bucket):
    with S3ObjectStore(f"{s3_bucket.url}/p") as store:
        yield store


def test_fetch_downloads_once_and_serves_the_verified_entry(
    s3, s3_bucket: S3Bucket, tmp_path: Path
):
    key, digest, data = _blob(s3)
    cache = LocalCache(tmp_path / "cache")
    path = cache.fetch(s3, key, digest, size=len(data))
    assert path == tmp_path / "cache" / "blobs" / "sha256" / digest[:2] / digest
    assert path.read_bytes() == data
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    inode = os.stat(path).st_ino
    assert cache.fetch(s3, key, digest, size=len(data)) == path
    assert LocalCache(tmp_path / "cache").fetch(s3, key, digest) == path
    assert os.stat(path).st_ino == inode
    assert _downloads(s3_bucket, key) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [digest, digest + ".lock"]


_FETCHER = """
import sys
from embedml.store.local_cache import LocalCache
from embedml.store.objects import open_object_store
url, key, digest, root = sys.argv[1:]
sys.stdin.read()  # start together: the parent closes stdin once all are running
path = LocalCache(root).fetch(open_object_store(url), key, digest)
print(path, flush=True)
"""


def test_eight_processes_fetching_one_new_entry_download_it_once(
    s3, s3_bucket: S3Bucket, tmp_path: Path
):
    key, digest, data = _blob(s3, 4 << 20)
    args = [f"{s3_bucket.url}/p", key, digest, str(tmp_path / "cache")]
    outputs = run_children(_FETCHER, [args] * 8, together=True)
    entry = LocalCache(tmp_path / "cache").path_for(digest)
    assert {out.split()[0] for out in outputs} == {str(entry)}
    assert entry.read_bytes() == data
    assert _downloads(s3_bucket, key) == 1


def _writable(path: Path) -> None:
    os.chmod(path, 0o644)


def test_a_corrupt_entry_is_detected_and_fetched_again(s3, s3_bucket: S3Bucket, tmp_path):
    key, digest, data = _blob(s3)
    cache = LocalCache(tmp_path / "cache")
    path = cache.fetch(s3, key, digest)
    _writable(path)
    with open(path, "r+b") as f:  # same size, one byte flipped
        f.seek(1000)
        f.write(bytes([data[1000] ^ 0xFF]))
    assert cache.get(digest) is None
    assert cache.get(digest, verify=False) == path  # a size check alone cannot see it
    assert cache.fetch(s3, key, digest).read_bytes() == data
    assert _downloads(s3_bucket, key) == 2


def test_a_truncated_entry_and_a_crashed_download_are_replaced(s3, s3_bucket, tmp_path):
    key, digest, data = _blob(s3)
    cache = LocalCache(tmp_path / "cache")
    path = cache.fetch(s3, key, digest, size=len(data))
    _writable(path)
    os.truncate(path, len(data) // 2)
    leftover = path.with_name(f".~{digest}.{uuid.uuid4().hex}.part")  # a process died here
    leftover.write_bytes(data[:100])
    # Even without hashing, the size says the entry is partial.
    assert cache.fetch(s3, key, digest, size=len(data), verify=False).read_bytes() == data
    assert not leftover.exists()
    assert _downloads(s3_bucket, key) == 2


def test_bytes_that_do_not_match_their_address_are_never_cached(s3, tmp_path: Path):
    data = b"not what the address says"
    wrong = hashlib.sha256(b"something else").hexdigest()
    s3.put_new(f"blobs/sha256/{wrong}", data)
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(IntegrityError, match="expected SHA-256"):
        cache.fetch(s3, f"blobs/sha256/{wrong}", wrong)
    assert [p.name for p in cache.path_for(wrong).parent.iterdir()] == [wrong + ".lock"]


def test_a_download_cut_in_the_middle_leaves_nothing_in_the_cache(
    s3, s3_bucket: S3Bucket, tmp_path: Path
):
    key, digest, data = _blob(s3, 4 << 20)
    relay = CuttingRelay(s3_bucket.server.port, cut_after=1 << 20)
    options = {**s3_bucket.server.storage_options(), "endpoint_url": relay.endpoint}
    cache = LocalCache(tmp_path / "cache")
    try:
        with (
            S3ObjectStore(
                f"{s3_bucket.url}/p", storage_options=options, retries=1, backoff=0.01
            ) as cut,
            pytest.raises(StoreUnavailableError),
        ):
            cache.fetch(cut, key, digest)
    finally:
        relay.join()
    assert [p.name for p in cache.path_for(digest).parent.iterdir()] == [digest + ".lock"]
    assert cache.fetch(s3, key, digest).read_bytes() == data  # the next fetch succeeds


def test_offline_serves_only_what_the_cache_holds(tmp_path: Path, monkeypatch):
    source = LocalObjectStore(tmp_path / "objects")
    key, digest, data = _blob(source, 1000)
    other_key, other_digest, _ = _blob(source, 1000)
    LocalCache(tmp_path / "cache").fetch(source, key, digest)
    # A store that cannot answer: offline mode must never need it.
    dead = S3ObjectStore("s3://nowhere/p", storage_options={"endpoint_url": "http://127.0.0.1:9"})
    monkeypatch.setenv("EMBEDML_OFFLINE", "1")
    offline = LocalCache(tmp_path / "cache")
    assert offline.offline
    assert offline.fetch(dead, key, digest).read_bytes() == data
    with pytest.raises(CacheMissError) as info:
        offline.fetch(dead, other_key, other_digest)
    assert info.value.key == other_key and "offline" in str(info.value)
    assert isinstance(info.value, LookupError)
    monkeypatch.setenv("EMBEDML_OFFLINE", "perhaps")
    with pytest.raises(ConfigurationError, match="EMBEDML_OFFLINE"):
        LocalCache(tmp_path / "cache")


def test_the_cache_folder_comes_from_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("EMBEDML_CACHE_DIR", str(tmp_path / "here"))
    assert LocalCache().root == tmp_path / "here" == default_cache_dir()
    monkeypatch.delenv("EMBEDML_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert default_cache_dir() == tmp_path / "xdg" / "embedml"


def test_malformed_addresses_are_refused(tmp_path: Path):
    cache = LocalCache(tmp_path / "cache")
    for bad in ("", "ABC", "0" * 63, "../" + "0" * 61, "g" * 64):
        with pytest.raises(ConfigurationError):
            cache.path_for(bad)

"""One contract for every object store: a folder (``file://``), S3 (a real moto server) and
GCS (a real fake-gcs-server emulator).

Each test of the contract runs against every implementation (the ``objects`` fixture); the
S3 side talks HTTP to the server of ``s3_server.py``, the GCS side to that of ``gcs_server.py``. Faults are real too: a server stopped,
a connection cut in the middle of a response (``tcp_cut.py``), wrong credentials, processes
racing for one key.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import uuid
from pathlib import Path

import pytest

from embedml.errors import (
    ConfigurationError,
    IntegrityError,
    NotFoundError,
    ObjectExistsError,
    ObjectNotFoundError,
    PreconditionFailedError,
    RemoteStoreError,
    StoreAccessError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from embedml.store.objects import (
    GCSObjectStore,
    LocalObjectStore,
    ObjectInfo,
    ObjectStore,
    S3ObjectStore,
    open_object_store,
)
from gcs_server import GCSBucket, start_gcs_server
from helpers_processes import run_children
from s3_server import S3Bucket, start_s3_server
from tcp_cut import CuttingRelay

KINDS = ["file", "s3", "gs"]
# Where the server starts its answer to a PUT it carried out (after any "100 Continue").
ANSWER = b"HTTP/1.1 200"


@pytest.fixture(params=KINDS)
def store_url(request, tmp_path: Path) -> str:
    """The URL of a new, empty store of each kind (S3, GCS: a prefix in a fresh bucket)."""
    if request.param == "file":
        return (tmp_path / "objects").as_uri()
    if request.param == "gs":
        pytest.importorskip("gcsfs", reason="the gcs extra is part of the dev extra")
        gcs: GCSBucket = request.getfixturevalue("gcs_bucket")
        return f"{gcs.url}/some/prefix"
    pytest.importorskip("s3fs", reason="the s3 extra is part of the dev extra")
    bucket: S3Bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket.url}/some/prefix"


@pytest.fixture
def objects(store_url: str):
    with open_object_store(store_url) as store:
        yield store


# -- the contract ------------------------------------------------------------------------


def test_put_new_then_get_returns_the_bytes_and_the_etag(objects: ObjectStore):
    etag = objects.put_new("models/m/manifest.json", b'{"v": 1}')
    got = objects.get("models/m/manifest.json")
    assert (got.data, got.etag) == (b'{"v": 1}', etag)


def test_create_only_put_refuses_an_existing_key(objects: ObjectStore):
    objects.put_new("models/m/versions/1/manifest.json", b"first")
    with pytest.raises(ObjectExistsError) as info:
        objects.put_new("models/m/versions/1/manifest.json", b"second")
    assert isinstance(info.value, FileExistsError | PreconditionFailedError)
    assert (info.value.url, info.value.operation, info.value.key) == (
        objects.url,
        "put",
        "models/m/versions/1/manifest.json",
    )
    assert str(info.value).startswith(f"put {objects.url}/models/m/versions/1/manifest.json: ")
    assert objects.get("models/m/versions/1/manifest.json").data == b"first"


def test_conditional_writes_are_strict_even_for_the_same_bytes(objects: ObjectStore):
    """Two writers of equal bytes are still two writers: one wins (no lost update)."""
    etag = objects.put_new("blobs/x", b"same")
    with pytest.raises(ObjectExistsError):
        objects.put_new("blobs/x", b"same")
    objects.put_if("blobs/x", b"next", etag)
    with pytest.raises(PreconditionFailedError):
        objects.put_if("blobs/x", b"next", etag)


def test_compare_and_swap_refuses_a_stale_etag_and_a_vanished_object(objects: ObjectStore):
    v1 = objects.put_new("index.json", b'{"seq": 1}')
    v2 = objects.put_if("index.json", b'{"seq": 2}', v1)
    assert v2 != v1
    assert objects.get("index.json").etag == v2
    with pytest.raises(PreconditionFailedError) as info:  # a second mover that read v1
        objects.put_if("index.json", b'{"seq": 3}', v1)
    assert not isinstance(info.value, ObjectExistsError)
    assert info.value.key == "index.json" and v1 in str(info.value)
    assert objects.get("index.json").data == b'{"seq": 2}'
    objects.delete("index.json")
    with pytest.raises(PreconditionFailedError):
        objects.put_if("index.json", b'{"seq": 3}', v2)
    with pytest.raises(ObjectNotFoundError):
        objects.get("index.json")


def test_conditional_get_says_unchanged_until_the_object_changes(objects: ObjectStore):
    etag = objects.put_new("index.json", b"one")
    assert objects.get_if_changed("index.json", etag) is None
    assert objects.get_if_changed("index.json", etag) is None
    new = objects.put_if("index.json", b"two", etag)
    changed = objects.get_if_changed("index.json", etag)
    assert changed is not None and (changed.data, changed.etag) == (b"two", new)
    assert objects.get_if_changed("index.json", new) is None
    with pytest.raises(ObjectNotFoundError):
        objects.get_if_changed("missing.json", new)


def test_list_a_prefix(objects: ObjectStore):
    assert objects.list() == []
    assert objects.list("models/never") == []
    for key in ("models/a/1", "models/a/2/x", "models/ab/1", "blobs/sha256/00", "top"):
        objects.put_new(key, key.encode())
    assert [o.key for o in objects.list()] == [
        "blobs/sha256/00",
        "models/a/1",
        "models/a/2/x",
        "models/ab/1",
        "top",
    ]
    # A prefix is a folder: models/a does not include models/ab.
    assert objects.list("models/a") == [
        ObjectInfo("models/a/1", 10),
        ObjectInfo("models/a/2/x", 12),
    ]
    assert objects.list("models/a/") == objects.list("models/a")
    assert objects.list("top/") == []


def test_delete_removes_and_tolerates_a_missing_key(objects: ObjectStore):
    objects.put_new("a/b", b"x")
    objects.delete("a/b")
    objects.delete("a/b")
    objects.delete("never/was")
    with pytest.raises(ObjectNotFoundError):
        objects.get("a/b")
    objects.put_new("a/b", b"again")  # a deleted key is free again
    assert objects.get("a/b").data == b"again"


def test_a_missing_key_is_a_typed_not_found_error(objects: ObjectStore, tmp_path: Path):
    with pytest.raises(ObjectNotFoundError) as info:
        objects.get("models/nothing/here.json")
    assert isinstance(info.value, NotFoundError | LookupError)
    assert info.value.key == "models/nothing/here.json"
    with pytest.raises(ObjectNotFoundError):
        objects.download("models/nothing/here.json", tmp_path / "dest")
    assert list(tmp_path.iterdir()) == _store_dirs(tmp_path)


def _store_dirs(tmp_path: Path) -> list[Path]:
    return [p for p in tmp_path.iterdir() if p.name == "objects"]


def test_download_streams_hashes_and_verifies(objects: ObjectStore, tmp_path: Path):
    data = os.urandom(3 << 20) + b"tail"
    digest = hashlib.sha256(data).hexdigest()
    objects.put_new("blobs/sha256/" + digest, data)
    dest = tmp_path / "out" / "artifact"
    dest.parent.mkdir()
    done = objects.download("blobs/sha256/" + digest, dest, sha256=digest, size=len(data))
    assert (done.path, done.size, done.sha256) == (dest, len(data), digest)
    assert dest.read_bytes() == data
    # The wrong hash or size: an IntegrityError, and nothing (not even a temporary) is left.
    for wrong in ({"sha256": "0" * 64}, {"size": len(data) + 1}):
        other = tmp_path / "out" / "other"
        with pytest.raises(IntegrityError):
            objects.download("blobs/sha256/" + digest, other, **wrong)
        assert sorted(p.name for p in dest.parent.iterdir()) == ["artifact"]


def test_invalid_keys_are_refused(objects: ObjectStore):
    for key in ("", "/abs", "a//b", "../escape", "a/../b", "a/./b", ".~tmp", "a/.~lock", "a\\b"):
        with pytest.raises(ConfigurationError):
            objects.put_new(key, b"x")
        with pytest.raises(ConfigurationError):
            objects.get(key)


def test_errors_pickle_with_their_fields(objects: ObjectStore):
    objects.put_new("k", b"x")
    with pytest.raises(ObjectExistsError) as info:
        objects.put_new("k", b"y")
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is ObjectExistsError
    assert (str(back), back.url, back.operation, back.key) == (
        str(info.value),
        objects.url,
        "put",
        "k",
    )


_CREATE_RACER = """
import json, sys
from embedml.errors import ObjectExistsError
from embedml.store.objects import open_object_store
store = open_object_store(sys.argv[1])
won = []
for key in sys.argv[3:]:
    try:
        store.put_new(key, sys.argv[2].encode())
        won.append(key)
    except ObjectExistsError:
        pass
print(json.dumps(won))
"""


def test_concurrent_create_only_puts_from_processes_have_one_winner_each(
    objects: ObjectStore, store_url: str
):
    keys = [f"models/m/versions/{i}/manifest.json" for i in range(15)]
    outs = run_children(_CREATE_RACER, [[store_url, f"writer-{n}", *keys] for n in range(4)])
    wins = {n: json.loads(out) for n, out in enumerate(outs)}
    assert sorted(k for won in wins.values() for k in won) == sorted(keys)  # one winner each
    for n, won in wins.items():
        assert all(objects.get(k).data == f"writer-{n}".encode() for k in won)


_CAS_INCREMENTER = """
import sys
from embedml.errors import PreconditionFailedError
from embedml.store.objects import open_object_store
store = open_object_store(sys.argv[1])
conflicts = 0
for _ in range(int(sys.argv[2])):
    while True:
        current = store.get("counter")
        try:
            store.put_if("counter", str(int(current.data) + 1).encode(), current.etag)
            break
        except PreconditionFailedError:
            conflicts += 1
print(conflicts)
"""


def test_compare_and_swap_from_processes_loses_no_update(objects: ObjectStore, store_url: str):
    objects.put_new("counter", b"0")
    outs = run_children(_CAS_INCREMENTER, [[store_url, "10"] for _ in range(4)])
    assert objects.get("counter").data == b"40"
    assert all(int(out) >= 0 for out in outs)


_FORKER = """
import os, sys
from embedml.store.objects import open_object_store
store = open_object_store(sys.argv[1])
assert store.get("from-parent").data == b"parent"  # the parent's client is in use
pid = os.fork()
if pid == 0:
    code = 1
    try:
        assert store.get("from-parent").data == b"parent"
        store.put_new("from-child", b"child")
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert store.get("from-child").data == b"child"  # and the parent's still works
print("ok")
"""


def test_a_store_opened_before_fork_works_in_the_child(objects: ObjectStore, store_url: str):
    objects.put_new("from-parent", b"parent")
    assert run_children(_FORKER, [[store_url]]) == ["ok\n"]


# -- what only one backend can show ------------------------------------------------------


def test_store_urls():
    assert isinstance(open_object_store("/srv/models"), LocalObjectStore)
    assert open_object_store("file:///srv/models").url == "file:///srv/models"
    assert open_object_store(Path("/srv/m")).url == "file:///srv/m"
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        open_object_store("ftp://host/models")
    with pytest.raises(ConfigurationError):
        open_object_store("file://otherhost/models")
    pytest.importorskip("s3fs")
    s3 = open_object_store("s3://bucket/a/prefix/")
    assert isinstance(s3, S3ObjectStore) and s3.url == "s3://bucket/a/prefix"
    for bad in ("s3://", "s3://bucket/a/../b", "s3://bucket/p?x=1"):
        with pytest.raises(ConfigurationError):
            open_object_store(bad)


def test_gs_store_urls(gcs_bucket: GCSBucket):
    gs = open_object_store("gs://bucket/a/prefix/")
    assert isinstance(gs, GCSObjectStore) and gs.url == "gs://bucket/a/prefix"
    for bad in ("gs://", "gs://bucket/a/../b", "gs://bucket/p?x=1"):
        with pytest.raises(ConfigurationError):
            open_object_store(bad)
    # A gs:// store's ETag is the object's generation: anything else is refused, not sent.
    with open_object_store(f"{gcs_bucket.url}/p") as store:
        store.put_new("k", b"x")
        for call in (
            lambda: store.put_if("k", b"y", '"abc"'),
            lambda: store.get_if_changed("k", ""),
        ):
            with pytest.raises(ConfigurationError, match="generation"):
                call()


def test_a_folder_store_whose_path_is_a_file_is_not_a_store(tmp_path: Path):
    (tmp_path / "file").write_bytes(b"not a folder")
    store = LocalObjectStore(tmp_path / "file")
    for call in (lambda: store.get("k"), lambda: store.put_new("k", b"x"), store.list):
        with pytest.raises(StoreNotFoundError, match="not a folder"):
            call()


def test_a_missing_bucket_is_a_store_not_found_error(s3_bucket: S3Bucket):
    pytest.importorskip("s3fs")
    name = f"missing-{uuid.uuid4().hex[:12]}"
    with S3ObjectStore(f"s3://{name}/prefix") as store:
        for call in (lambda: store.get("k"), lambda: store.put_new("k", b"x"), store.list):
            with pytest.raises(StoreNotFoundError) as info:
                call()
            assert name in str(info.value) and info.value.url == f"s3://{name}/prefix"


def test_a_missing_gcs_bucket_is_a_store_not_found_error(gcs_bucket: GCSBucket):
    name = f"missing-{uuid.uuid4().hex[:12]}"
    with GCSObjectStore(f"gs://{name}/prefix") as store:
        # (a get names an object: GCS's message says which is missing, the emulator's not)
        for call in (lambda: store.put_new("k", b"x"), lambda: store.put_if("k", b"x", "1"),
                     store.list):  # fmt: skip
            with pytest.raises(StoreNotFoundError) as info:
                call()
            assert name in str(info.value) and info.value.url == f"gs://{name}/prefix"


def test_wrong_credentials_are_a_clear_access_error(tmp_path: Path):
    pytest.importorskip("s3fs")
    with start_s3_server(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        options = {**server.storage_options(), "key": "not-a-key", "secret": "not-a-secret"}
        with S3ObjectStore("s3://bucket/models", storage_options=options) as store:
            for call in (lambda: store.get("k"), lambda: store.put_new("k", b"x"), store.list):
                with pytest.raises(StoreAccessError) as info:
                    call()
                assert isinstance(info.value, PermissionError)
                message = str(info.value)
                assert message.startswith(f"{info.value.operation} s3://bucket/models")
                assert "InvalidAccessKeyId" in message and "\n" not in message


@pytest.mark.parametrize("kind", ["s3", "gs"])
def test_a_stopped_server_is_a_typed_error_and_leaves_no_file(kind: str, tmp_path: Path):
    pytest.importorskip("s3fs" if kind == "s3" else "gcsfs")
    start, cls = (start_s3_server, S3ObjectStore) if kind == "s3" else (start_gcs_server, GCSObjectStore)  # fmt: skip
    with start(tmp_path) as server:
        server.create_bucket("bucket")
        store = cls(
            f"{kind}://bucket/p",
            storage_options=server.storage_options(),
            retries=2,
            backoff=0.01,
            connect_timeout=2,
        )
        store.put_new("blob", b"x" * 1000)
        server.stop()
        out = tmp_path / "dl"
        out.mkdir()
        calls = {
            "get": lambda: store.get("blob"),
            "put": lambda: store.put_new("other", b"y"),
            "list": store.list,
            "delete": lambda: store.delete("blob"),
            "download": lambda: store.download("blob", out / "blob"),
        }
        for op, call in calls.items():
            with pytest.raises(StoreUnavailableError) as info:
                call()
            assert info.value.operation == op and info.value.url == f"{kind}://bucket/p"
            assert "cannot connect" in str(info.value) and "after 3 attempts" in str(info.value)
            # the client library's exception is only the cause
            assert type(info.value.__cause__).__module__.split(".")[0] in ("aiohttp", "botocore")
        assert list(out.iterdir()) == []
        store.close()


@pytest.mark.parametrize("kind", ["create", "swap"])
def test_a_gcs_write_whose_answer_was_lost_is_settled_by_reading_back(
    gcs_bucket: GCSBucket, kind: str
):
    """The emulator applied the write but its answer was cut: the writer still knows it won."""
    with GCSObjectStore(f"{gcs_bucket.url}/p") as direct:
        before = direct.put_new("index.json", b"1") if kind == "swap" else None
    relay = CuttingRelay(gcs_bucket.server.port, cut_at=ANSWER, keep_listening=True)
    options = {"endpoint_url": f"http://127.0.0.1:{relay.port}", "token": "anon"}
    try:
        with GCSObjectStore(f"{gcs_bucket.url}/p", storage_options=options, retries=1) as store:
            if before is None:
                new = store.put_new("index.json", b"mine")  # the first answer never arrives
            else:
                new = store.put_if("index.json", b"mine", before)
            assert relay.cut.is_set()
            got = store.get("index.json")
            assert (got.data, got.etag) == (b"mine", new) and new != before
            with pytest.raises(PreconditionFailedError):  # and it is still conditional
                store.put_new("index.json", b"someone else")
    finally:
        relay.join()


@pytest.mark.parametrize("kind", ["s3", "gs"])
def test_a_download_cut_in_the_middle_leaves_no_file(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
):
    pytest.importorskip("s3fs" if kind == "s3" else "gcsfs")
    cls = S3ObjectStore if kind == "s3" else GCSObjectStore
    bucket = request.getfixturevalue("s3_bucket" if kind == "s3" else "gcs_bucket")
    data = os.urandom(4 << 20)
    with cls(f"{bucket.url}/p") as direct:
        direct.put_new("big", data)
    relay = CuttingRelay(bucket.server.port, cut_after=1 << 20)  # 1 MiB of 4 sent
    try:
        options = {**bucket.server.storage_options(), "endpoint_url": relay.endpoint}
        with (
            cls(f"{bucket.url}/p", storage_options=options, retries=2, backoff=0.01) as store,
            pytest.raises(StoreUnavailableError) as info,
        ):
            store.download("big", tmp_path / "big")
    finally:
        relay.join()
    assert relay.cut.is_set()
    assert info.value.operation == "download" and info.value.key == "big"
    assert list(tmp_path.iterdir()) == []


def test_a_create_only_put_whose_answer_was_lost_is_settled_by_reading_back(
    s3_bucket: S3Bucket,
):
    """The server applied the write but its answer was cut: the writer still knows it won."""
    pytest.importorskip("s3fs")
    relay = CuttingRelay(s3_bucket.server.port, cut_at=ANSWER, keep_listening=True)
    options = {**s3_bucket.server.storage_options(), "endpoint_url": relay.endpoint}
    try:
        with S3ObjectStore(f"{s3_bucket.url}/p", storage_options=options, retries=1) as store:
            etag = store.put_new("manifest.json", b"mine")  # the first answer never arrives
            assert relay.cut.is_set()
            assert store.get("manifest.json").etag == etag
            with pytest.raises(ObjectExistsError):  # and it still is create-only
                store.put_new("manifest.json", b"someone else")
    finally:
        relay.join()


def test_a_compare_and_swap_whose_answer_was_lost_is_settled_by_reading_back(
    s3_bucket: S3Bucket,
):
    pytest.importorskip("s3fs")
    with S3ObjectStore(f"{s3_bucket.url}/p") as direct:
        etag = direct.put_new("index.json", b'{"seq": 1}')
    relay = CuttingRelay(s3_bucket.server.port, cut_at=ANSWER, keep_listening=True)
    options = {**s3_bucket.server.storage_options(), "endpoint_url": relay.endpoint}
    try:
        with S3ObjectStore(f"{s3_bucket.url}/p", storage_options=options, retries=1) as store:
            new = store.put_if("index.json", b'{"seq": 2}', etag)
            assert relay.cut.is_set()
            assert store.get("index.json").etag == new != etag
    finally:
        relay.join()


def test_an_unanswered_write_with_the_server_gone_is_a_typed_error(s3_bucket: S3Bucket):
    pytest.importorskip("s3fs")
    relay = CuttingRelay(s3_bucket.server.port, cut_at=ANSWER)  # then refuse everything
    options = {**s3_bucket.server.storage_options(), "endpoint_url": relay.endpoint}
    try:
        with (
            S3ObjectStore(
                f"{s3_bucket.url}/p", storage_options=options, retries=1, backoff=0.01
            ) as store,
            pytest.raises(StoreUnavailableError) as info,
        ):
            store.put_new("manifest.json", b"mine")
    finally:
        relay.join()
    assert info.value.operation == "put" and info.value.key == "manifest.json"
    with S3ObjectStore(f"{s3_bucket.url}/p") as direct:
        assert direct.get("manifest.json").data == b"mine"  # it had been applied


def test_every_store_error_names_the_store(objects: ObjectStore):
    with pytest.raises(RemoteStoreError) as info:
        objects.get("missing")
    assert objects.url in str(info.value)


def test_no_credentials_at_all_is_a_clear_access_error(s3_bucket: S3Bucket, monkeypatch):
    pytest.importorskip("s3fs")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with S3ObjectStore(f"{s3_bucket.url}/p") as store, pytest.raises(StoreAccessError) as info:
        store.get("k")
    assert "no credentials found" in str(info.value) and s3_bucket.url in str(info.value)


_WITHOUT_S3FS = """
import sys
sys.modules["s3fs"] = None  # as if the s3 extra were not installed
from embedml.errors import MissingExtraError
from embedml.store.objects import open_object_store
assert "botocore" not in sys.modules and "fsspec" not in sys.modules  # nothing eager
try:
    open_object_store("s3://bucket/prefix")
except MissingExtraError as exc:
    print(exc.extra, exc.name, isinstance(exc, ImportError))
"""


def test_s3_without_the_extra_is_a_missing_extra_error():
    assert run_children(_WITHOUT_S3FS, [[]]) == ["s3 s3fs True\n"]


_WITHOUT_GCSFS = """
import sys
sys.modules["gcsfs"] = None  # as if the gcs extra were not installed
import embedml
from embedml.errors import MissingExtraError
from embedml.store.objects import open_object_store
assert not {"fsspec", "google.auth", "aiohttp"} & set(sys.modules)  # nothing eager
try:
    open_object_store("gs://bucket/prefix")
except MissingExtraError as exc:
    print(exc.extra, exc.name, isinstance(exc, ImportError))
"""


def test_gs_without_the_extra_is_a_missing_extra_error():
    assert run_children(_WITHOUT_GCSFS, [[]]) == ["gcs gcsfs True\n"]

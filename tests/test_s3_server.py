"""The S3 test server and the filesystem layer (fsspec + s3fs) do what a remote store needs.

Groundwork for remote stores: each test pins one property the store will rely on, against a
real S3-compatible server in its own process (``s3_server.py``), through the layer the store
will use. If moto or s3fs change behaviour, these fail first, with a precise message.

- create-only put (``If-None-Match: *``): publishing a manifest;
- compare-and-swap put (``If-Match: ETAG``): moving an alias, appending to an index;
- conditional get (``If-None-Match: ETAG`` -> 304): cheap polling for ``follow=True``;
- list and delete; endpoint and credentials taken from ``AWS_*`` (an ``http://`` endpoint);
- a client made in a parent is refused in a forked child, a fresh one works there;
- a stopped server, wrong credentials, a missing key or bucket: the exception types the store
  must translate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from helpers_processes import run_children
from s3_server import S3Bucket, start_s3_server

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is part of the dev extra")
botocore_exceptions = pytest.importorskip("botocore.exceptions")
fsspec_asyn = pytest.importorskip("fsspec.asyn")


def _fs(**options) -> s3fs.S3FileSystem:
    """A new s3fs client configured from the environment only (no instance cache)."""
    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


def _cause_error(exc: BaseException) -> dict:
    """The S3 error behind an exception s3fs translated (its ``__cause__`` is botocore's)."""
    cause = exc.__cause__
    assert isinstance(cause, botocore_exceptions.ClientError), repr(exc)
    return {
        **cause.response["Error"],
        "status": cause.response["ResponseMetadata"]["HTTPStatusCode"],
    }


async def _get_if_changed(fs, path: str, etag: str | None):
    """One GET with ``If-None-Match``: ``None`` when unchanged (304), else (etag, bytes)."""
    bucket, key, _ = fs.split_path(path)
    extra = {"IfNoneMatch": etag} if etag else {}
    try:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key, **extra)
    except OSError as exc:
        if (
            isinstance(exc.__cause__, botocore_exceptions.ClientError)
            and _cause_error(exc)["status"] == 304
        ):
            return None
        raise
    body = response["Body"]
    try:
        return response["ETag"], await body.read()
    finally:
        body.close()


def get_if_changed(fs, path: str, etag: str | None):
    return fsspec_asyn.sync(fs.loop, _get_if_changed, fs, path, etag)


def test_endpoint_and_credentials_come_from_the_environment(s3_bucket: S3Bucket):
    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    fs = _fs()  # no endpoint, key or secret given: botocore's usual chain reads AWS_*
    fs.pipe_file(f"{s3_bucket.name}/a/b.txt", b"hello")
    assert fs.cat_file(f"{s3_bucket.name}/a/b.txt") == b"hello"
    # ... and explicit storage_options work without the environment's endpoint.
    explicit = _fs(**s3_bucket.server.storage_options())
    assert explicit.cat_file(f"{s3_bucket.name}/a/b.txt") == b"hello"


def test_create_only_put_refuses_an_existing_key(s3_bucket: S3Bucket):
    fs = _fs()
    path = f"{s3_bucket.name}/m/manifest.json"
    created = fs.pipe_file(path, b"first", mode="create")
    assert created["ETag"].startswith('"')  # the ETag of what was written, for a later If-Match
    with pytest.raises(FileExistsError) as info:
        fs.pipe_file(path, b"second", mode="create")
    assert _cause_error(info.value)["Code"] == "PreconditionFailed"
    assert fs.cat_file(path) == b"first"


def test_compare_and_swap_put_refuses_a_stale_etag(s3_bucket: S3Bucket):
    fs = _fs()
    path = f"{s3_bucket.name}/m/aliases.json"
    v1 = fs.pipe_file(path, b'{"production": "1"}', mode="create")["ETag"]
    v2 = fs.pipe_file(path, b'{"production": "2"}', IfMatch=v1)["ETag"]
    assert v2 != v1
    # A second mover that read v1 loses: 412, and nothing is overwritten.
    with pytest.raises(OSError) as info:
        fs.pipe_file(path, b'{"production": "3"}', IfMatch=v1)
    assert not isinstance(info.value, FileExistsError)
    error = _cause_error(info.value)
    assert (error["Code"], error["Condition"], error["status"]) == (
        "PreconditionFailed",
        "If-Match",
        412,
    )
    assert fs.cat_file(path) == b'{"production": "2"}'
    # If-Match on a key that does not exist is a 404, not a precondition failure.
    with pytest.raises(FileNotFoundError):
        fs.pipe_file(f"{s3_bucket.name}/m/missing.json", b"{}", IfMatch=v2)


def test_s3fs_drops_parameters_its_botocore_does_not_know(s3_bucket: S3Bucket):
    """A precondition botocore's model lacks is dropped silently, and the write is blind.

    So the store must check, when it makes its client, that the model has the conditions it
    relies on (as here), and refuse to publish otherwise.
    """
    fs = _fs()
    path = f"{s3_bucket.name}/m/aliases.json"
    fs.pipe_file(path, b"1")
    fs.pipe_file(path, b"2", IfMatchTypo='"stale"')  # not sent: no 412
    assert fs.cat_file(path) == b"2"
    model = fs.s3.meta.service_model
    assert {"IfMatch", "IfNoneMatch"} <= set(model.operation_model("PutObject").input_shape.members)
    assert "IfNoneMatch" in model.operation_model("GetObject").input_shape.members


def test_conditional_get_answers_304_when_unchanged(s3_bucket: S3Bucket):
    fs = _fs()
    path = f"{s3_bucket.name}/m/index.json"
    etag = fs.pipe_file(path, b'{"latest": "1"}')["ETag"]
    assert get_if_changed(fs, path, None) == (etag, b'{"latest": "1"}')
    assert get_if_changed(fs, path, etag) is None  # 304 Not Modified: no body sent
    new_etag = fs.pipe_file(path, b'{"latest": "2"}', IfMatch=etag)["ETag"]
    assert get_if_changed(fs, path, etag) == (new_etag, b'{"latest": "2"}')


def test_list_and_delete(s3_bucket: S3Bucket):
    fs = _fs()
    root = f"{s3_bucket.name}/store"
    for key in ("m/1/manifest.json", "m/1/model.onnx", "m/2/manifest.json", "other.txt"):
        fs.pipe_file(f"{root}/{key}", key.encode())
    listed = fs.find(root, detail=True)
    assert sorted(p.removeprefix(root + "/") for p in listed) == [
        "m/1/manifest.json",
        "m/1/model.onnx",
        "m/2/manifest.json",
        "other.txt",
    ]
    assert all(info["ETag"].startswith('"') and info["size"] > 0 for info in listed.values())
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/m", detail=False)) == ["1", "2"]
    fs.rm_file(f"{root}/m/1/model.onnx")
    fs.invalidate_cache()
    assert not fs.exists(f"{root}/m/1/model.onnx")
    assert fs.exists(f"{root}/m/1/manifest.json")


def test_missing_key_and_missing_bucket_are_file_not_found(s3_bucket: S3Bucket):
    fs = _fs()
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{s3_bucket.name}/nothing/here")
    with pytest.raises(FileNotFoundError, match="bucket does not exist"):
        fs.cat_file(f"missing-{uuid.uuid4().hex[:12]}/key")


_CHILD = """
import os, signal, sys
signal.alarm(60)  # never hang a test run
import s3fs
fs = s3fs.S3FileSystem(skip_instance_cache=True)
fs.cat_file(sys.argv[1])  # the parent's client has connections and an event loop
pid = os.fork()
if pid == 0:
    try:
        fs.cat_file(sys.argv[1])
        reused = "worked"
    except RuntimeError as exc:
        reused = f"RuntimeError: {exc}"
    fresh = s3fs.S3FileSystem(skip_instance_cache=True).cat_file(sys.argv[1]).decode()
    print(reused, "|", fresh, flush=True)
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_client_made_before_fork_is_refused_in_the_child_and_a_fresh_one_works(
    s3_bucket: S3Bucket,
):
    """Why the store must create its client lazily, once per process (checked by pid)."""
    path = f"{s3_bucket.name}/fork/data"
    _fs().pipe_file(path, b"from-parent")
    # In a subprocess so that the fork happens in a process this test owns, not in pytest.
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, path], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "RuntimeError: This class is not fork-safe | from-parent"


def test_a_stopped_server_gives_a_typed_connection_error(tmp_path):
    with start_s3_server(tmp_path) as server:
        # Few attempts and a short connect timeout keep this test fast; the store will choose
        # its own (retries with backoff, then a typed StoreError naming the URL).
        fs = _fs(
            **server.storage_options(),
            config_kwargs={
                "connect_timeout": 2,
                "retries": {"mode": "standard", "max_attempts": 2},
            },
        )
        fs.retries = 1  # s3fs's own retry loop, on top of botocore's
        server.admin().create_bucket(Bucket="bucket")
        fs.pipe_file("bucket/key", b"data")
        assert fs.cat_file("bucket/key") == b"data"
        server.stop()
        assert not server.alive()
        with pytest.raises(botocore_exceptions.EndpointConnectionError) as read_error:
            fs.cat_file("bucket/key")
        with pytest.raises(botocore_exceptions.EndpointConnectionError):
            fs.pipe_file("bucket/other", b"data", mode="create")
    # What the store's translation will catch: botocore's base classes, not OSError.
    assert isinstance(read_error.value, botocore_exceptions.BotoCoreError)
    assert not isinstance(read_error.value, OSError)
    assert str(server.port) in str(read_error.value)


def test_wrong_credentials_are_a_permission_error(tmp_path):
    # moto checks signatures only when told to; then unknown keys get 403 InvalidAccessKeyId.
    with start_s3_server(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        options = {**server.storage_options(), "key": "not-a-key", "secret": "not-a-secret"}
        fs = _fs(**options)
        with pytest.raises(PermissionError) as info:
            fs.pipe_file("bucket/key", b"data")
    assert _cause_error(info.value)["status"] == 403


_RACER = """
import json, sys
import s3fs
fs = s3fs.S3FileSystem(skip_instance_cache=True)
won = []
for path in sys.argv[2:]:
    try:
        fs.pipe_file(path, sys.argv[1].encode(), mode="create")
        won.append(path)
    except FileExistsError:
        pass
print(json.dumps(won))
"""


def test_concurrent_create_only_puts_from_processes_have_exactly_one_winner(s3_bucket: S3Bucket):
    """The server decides conditional writes atomically: the store's publish tests rely on it."""
    paths = [f"{s3_bucket.name}/race/{i}/manifest.json" for i in range(20)]
    outputs = run_children(_RACER, [[f"writer-{n}", *paths] for n in range(4)], timeout=180)
    wins = [path for out in outputs for path in json.loads(out)]
    assert sorted(wins) == sorted(paths)  # each key created once, by exactly one writer
    fs = _fs()
    winners = {path: fs.cat_file(path).decode() for path in paths}
    for n, out in enumerate(outputs):
        assert all(winners[path] == f"writer-{n}" for path in json.loads(out))

"""``ModelStore("s3://...")``: the store's API over a real S3 server (``s3_server.py``).

Versions, aliases, history, signatures, the verified local cache and offline mode, checked
against moto running as a separate process; concurrency with processes, not threads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import embedml
from conftest import SRC
from embedml.errors import (
    AliasMovedError,
    CacheMissError,
    ConfigurationError,
    ModelNotFoundError,
    NotAStoreError,
    SignatureError,
    StoreAccessError,
    StoreError,
    StoreNotFoundError,
    StoreUnavailableError,
    VersionExistsError,
    VersionNotFoundError,
)
from embedml.serving.follow import Follower
from embedml.store import RemoteStore, Store
from embedml.store.transfer import copy_versions
from embedml.testing import FakeClock
from helpers_models import LINEAR_B, LINEAR_W, onnx_linear
from helpers_rollout import Affine
from s3_server import S3Bucket, start_s3_server
from tcp_cut import CuttingRelay

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


def test_aliases_history_promote_rollback_over_s3(three, url: str) -> None:
    store = three
    store.set_alias("m", "production", "1", who="ana")
    store.set_alias("m", "production", "2")
    other = embedml.ModelStore(url)  # another machine sees the moves at once
    assert other.aliases("m") == {"production": "2"}
    assert other.resolve("m", "@production").version == "2"
    gate = embedml.Gate(_mean, [[1.0, 1.0]], [0.0], min_score=-100, max_drop=100)
    assert other.promote("m", "3", gate=gate).version == "3"
    assert store.rollback("m").version == "2"
    assert store.rollback("m").version == "1"
    with pytest.raises(StoreError, match="no earlier version"):
        store.rollback("m")
    store.set_alias("m", "staging", "3")
    store.remove_alias("m", "staging")
    with pytest.raises(VersionNotFoundError):
        store.remove_alias("m", "staging")
    history = other.history("m")
    assert [(e["action"], e["alias"], e["from"], e["to"]) for e in history] == [
        ("set_alias", "production", None, "1"),
        ("set_alias", "production", "1", "2"),
        ("gate", "production", "2", "3"),
        ("promote", "production", "2", "3"),
        ("rollback", "production", "3", "2"),
        ("rollback", "production", "2", "1"),
        ("set_alias", "staging", None, "3"),
        ("remove_alias", "staging", "3", None),
    ]
    assert history[0]["who"] == "ana" and history[2]["passed"] is True
    assert [e["seq"] for e in history] == sorted(e["seq"] for e in history)
    assert len(store.history("m", alias="staging")) == 2
    with pytest.raises(StoreError, match="in use"):
        store.delete("m", "1")
    store.delete("m", "3")
    assert other.versions("m") == ["1", "2"]
    with store.load("m", "@production") as handle:
        assert handle.version == "1" and handle.predict([1.0, 1.0]) == 2.0


def _mean(y_true, y_pred) -> float:
    return float(np.mean(y_pred))


def test_a_gate_that_raced_an_alias_move_does_not_promote(three, url: str) -> None:
    three.set_alias("m", "production", "1")

    class MovingGate:
        def evaluate(self, store, candidate, current):
            embedml.ModelStore(url).set_alias("m", "production", "2")  # another process
            return {"candidate": 1.0}

    with pytest.raises(AliasMovedError):
        three.promote("m", "3", gate=MovingGate())
    assert three.aliases("m") == {"production": "2"}


def test_signed_remote_store(url: str, s3_bucket: S3Bucket) -> None:
    store = embedml.ModelStore(url, store_id="prod")
    store.save("m", Affine(1.0), format="tracked", signing_key=KEY)
    store.save("m", Affine(2.0), format="tracked")  # unsigned
    store.set_alias("m", "production", "1", signing_key=KEY)
    assert "models/.embedml-record.json" in _objects(s3_bucket)
    signed = dict(require_signature=True, signing_key=KEY)
    assert store.resolve("m", "@production", **signed).version == "1"
    with pytest.raises(SignatureError, match="not in the signed store record"):
        store.resolve("m", "latest", **signed)
    report = store.verify(signing_key=KEY, require_signature=True)
    assert report["m@1"] is None and "not signed" in report["m@2"]
    store.sign("m", "2", signing_key=KEY)
    fresh = embedml.ModelStore(url, store_id="prod")
    with fresh.load("m", **signed) as handle:
        assert handle.version == "2"
    assert fresh.verify(signing_key=KEY, require_signature=True) == {"m@1": None, "m@2": None}
    # a move without the key is refused by signed loads, and reported
    fresh.set_alias("m", "production", "2")
    with pytest.raises(SignatureError, match="moved without the key"):
        store.load("m", "@production", **signed)
    assert "moved without the key" in fresh.verify(signing_key=KEY)["m@production"]
    # a record of another store is refused
    with pytest.raises(SignatureError, match="not of 'staging'"):
        embedml.ModelStore(url, store_id="staging").resolve("m", "1", **signed)
    assert store.sign_store(signing_key=KEY) == {"m@1": None, "m@2": None, "m@production": None}
    assert store.resolve("m", "@production", **signed).version == "2"


def test_offline_serves_what_the_cache_holds_and_says_so(
    three, url: str, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    three.set_alias("m", "production", "2")
    with three.load("m", "@production") as handle:
        assert handle.predict([1.0, 1.0]) == -4.0
    elsewhere = embedml.ModelStore(url, cache_dir=tmp_path / "another-machine")
    elsewhere.set_alias("m", "production", "3")  # this machine never saw the move
    monkeypatch.setenv("EMBEDML_OFFLINE", "1")
    with caplog.at_level("WARNING", logger="embedml.store"):
        offline = embedml.ModelStore(url)
        with offline.load("m", "@production") as handle:  # the alias as last seen here
            assert handle.version == "2"
    assert "offline" in caplog.text
    with pytest.raises(CacheMissError):
        offline.load("m", "1")  # never downloaded here
    with pytest.raises(ConfigurationError, match="offline"):
        offline.set_alias("m", "production", "1")
    monkeypatch.delenv("EMBEDML_OFFLINE")
    assert embedml.ModelStore(url).resolve("m", "@production").version == "3"


def test_urls_that_are_not_stores(s3_bucket: S3Bucket, cache_dir: Path) -> None:
    admin = s3_bucket.server.admin()
    admin.put_object(Bucket=s3_bucket.name, Key="data/report.csv", Body=b"a,b\n")
    store = embedml.ModelStore(f"{s3_bucket.url}/data")
    with pytest.raises(NotAStoreError, match=f"{s3_bucket.url}/data.*not an embedml store"):
        store.models()
    with pytest.raises(NotAStoreError):
        store.save("m", Affine(1.0), format="tracked")
    assert _objects(s3_bucket) == ["data/report.csv"]  # nothing written
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        embedml.ModelStore("az://bucket/models")
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        embedml.ModelStore("s3://no-such-bucket-embedml/models").models()
    assert embedml.ModelStore(f"{s3_bucket.url}/empty").models() == []


def test_follow_polls_the_remote_index(
    three, url: str, s3_bucket: S3Bucket, threads_checked
) -> None:
    three.set_alias("m", "production", "1")
    clock = FakeClock()
    index = f"GET /{s3_bucket.name}/models/models/m/index.json HTTP/1.1"
    with three.load("m", "@production") as handle:
        follower = Follower(handle, three, "@production", 30.0, clock=clock)
        clock.wait_for_sleepers(1)
        unchanged = s3_bucket.logged_requests(index, '" 304')
        clock.advance(30.0)  # a poll while nothing moved: a conditional GET, answered 304
        clock.wait_for_sleepers(1)
        assert s3_bucket.logged_requests(index, '" 304') == unchanged + 1
        assert handle.version == "1" and follower.swaps == 0
        embedml.ModelStore(url).set_alias("m", "production", "3")  # another machine
        clock.advance(30.0)
        clock.wait_for_sleepers(1)
        assert handle.version == "3" and handle.predict([1.0, 1.0]) == 6.0
        assert follower.stop(60)


# ---------------------------------------------------------------- processes at once

_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import embedml
import helpers_rollout  # registers the "tracked" format
store = embedml.ModelStore(sys.argv[2])
job = json.loads(sys.argv[3])
sys.stdin.read(1)  # every process is started: go
out = []
if job["do"] == "save":
    try:
        v = store.save("m", helpers_rollout.Affine(job["k"]), format="tracked", version=job.get("version"))
        out.append(v.version)
    except embedml.VersionExistsError:
        out.append("exists")
elif job["do"] == "move":
    for version in job["versions"]:
        store.set_alias("m", "production", version, who=job["who"], signing_key=job.get("key"))
elif job["do"] == "load":
    with store.load("m", "@production") as handle:
        out.append(handle.predict([1.0, 1.0]))
print(json.dumps(out))
"""


def _at_once(url: str, jobs: list[dict], env: dict[str, str]) -> list[list]:
    """Runs one child per job, releases them together, returns what each printed."""
    tests = str(Path(__file__).parent)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, tests, url, json.dumps(job)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )  # fmt: skip
        for job in jobs
    ]
    for child in children:  # they all wait on stdin: released together
        child.stdin.write("g")
        child.stdin.close()
    results = []
    for child in children:
        out = child.stdout.read()
        assert child.wait(timeout=300) == 0, out
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.fixture
def env(s3_bucket: S3Bucket, cache_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_two_publishers_of_one_version_cannot_both_succeed(url: str, env) -> None:
    jobs = [{"do": "save", "k": float(k), "version": "5"} for k in range(4)]
    jobs += [{"do": "save", "k": 10.0 + k} for k in range(3)]  # automatic numbers
    results = [r[0] for r in _at_once(url, jobs, env)]
    assert sorted(results[:4]) == ["5", "exists", "exists", "exists"]
    store = embedml.ModelStore(url)
    automatic = results[4:]
    assert len(set(automatic)) == 3 and "5" not in automatic  # each got its own number
    assert store.versions("m") == sorted({"5", *automatic}, key=float)
    winner = jobs[results.index("5")]["k"]
    with store.load("m", "5") as handle:  # the winner's bytes, whole
        assert handle.predict([1.0, 1.0]) == 2 * winner


def test_concurrent_alias_movers_lose_no_move(three, url: str, env) -> None:
    jobs = [{"do": "move", "who": f"p{i}", "versions": ["1", "2", "3", "2", "1"]} for i in range(4)]
    _at_once(url, jobs, env)
    moves = three.history("m", alias="production")
    assert len(moves) == 20  # every move of every process
    assert sorted(m["who"] for m in moves) == sorted(f"p{i}" for i in range(4) for _ in range(5))
    for before, after in zip(moves, moves[1:]):  # one chain: each move saw the one before it
        assert after["from"] == before["to"] and after["seq"] > before["seq"]
    for i in range(4):  # each process's moves in its own order
        assert [m["to"] for m in moves if m["who"] == f"p{i}"] == ["1", "2", "3", "2", "1"]
    assert three.aliases("m") == {"production": moves[-1]["to"]}


def test_concurrent_signed_alias_moves_leave_the_record_agreeing_with_the_index(
    url: str, env
) -> None:
    store = embedml.ModelStore(url)
    for k in (1.0, 2.0, 3.0):
        store.save("m", Affine(k), format="tracked", signing_key=KEY)
    jobs = [
        {"do": "move", "who": f"p{i}", "versions": ["1", "2", "3"], "key": KEY} for i in range(4)
    ]
    _at_once(url, jobs, env)
    assert len(store.history("m", alias="production")) == 12
    assert store.verify(signing_key=KEY, require_signature=True) == {
        "m@1": None, "m@2": None, "m@3": None,
    }  # fmt: skip
    final = store.aliases("m")["production"]
    signed = store.resolve("m", "@production", require_signature=True, signing_key=KEY)
    assert signed.version == final


def test_processes_starting_at_once_on_an_empty_cache_download_once(
    three, url: str, env, s3_bucket: S3Bucket, cache_dir: Path
) -> None:
    three.set_alias("m", "production", "3")
    sha = three.resolve("m", "3").manifest.sha256
    shutil.rmtree(cache_dir)
    results = _at_once(url, [{"do": "load"}] * 4, env)
    assert results == [[6.0]] * 4
    assert _gets(s3_bucket, f"models/blobs/sha256/{sha}") == 1
    entries = list((cache_dir / "blobs" / "sha256" / sha[:2]).iterdir())
    assert sorted(p.name for p in entries) == [sha, sha + ".lock"]


def _gets(bucket: S3Bucket, key: str) -> int:
    """GET requests for ``key`` in the server's log, once every earlier request is logged."""
    return bucket.logged_requests(f"GET /{bucket.name}/{key} ")


# ---------------------------------------------------------------- faults


def _through(relay: CuttingRelay, bucket: S3Bucket, url: str, cache: Path) -> embedml.ModelStore:
    """The store at ``url`` reached through ``relay``, with its own cache, few retries."""
    options = {**bucket.server.storage_options(), "endpoint_url": relay.endpoint}
    return embedml.ModelStore(
        url, storage_options=options, cache_dir=cache, retries=1, backoff=0.01
    )


def test_a_server_gone_at_any_point_of_a_save_leaves_no_half_version(
    url: str, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    direct = embedml.ModelStore(url)
    direct.save("m", Affine(1.0), format="tracked")
    relay = CuttingRelay(s3_bucket.server.port)  # never cuts: measures a whole save
    try:
        _through(relay, s3_bucket, url, tmp_path / "c0").save("m", Affine(2.0), format="tracked")
    finally:
        relay.join()
    total = relay.sent
    for i, fraction in enumerate((0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95)):
        relay = CuttingRelay(s3_bucket.server.port, cut_after=int(total * fraction))
        try:
            with pytest.raises(StoreUnavailableError) as info:
                _through(relay, s3_bucket, url, tmp_path / f"c{i + 1}").save(
                    "m", Affine(10.0 + i), format="tracked"
                )
        finally:
            relay.join()
        assert info.value.url == url and info.value.operation
        versions = direct.versions("m")
        for version in versions:  # whatever is visible is whole
            with direct.load("m", version) as handle:
                handle.predict([1.0, 1.0])
        saved = direct.save("m", Affine(100.0 + i), format="tracked")  # the next save succeeds
        assert direct.versions("m")[-1] == saved.version
    assert direct.verify() == {f"m@{v}": None for v in direct.versions("m")}


def test_a_download_cut_in_the_middle_leaves_nothing_in_the_cache(
    url: str, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    big = Affine(3.0)
    big.padding = np.random.default_rng(0).random(1 << 19)  # 4 MiB of artifact
    sha = embedml.ModelStore(url).save("m", big, format="tracked").manifest.sha256
    cache = tmp_path / "fresh"
    relay = CuttingRelay(s3_bucket.server.port, cut_after=2 << 20)
    try:
        store = _through(relay, s3_bucket, url, cache)
        with pytest.raises(StoreUnavailableError, match="download"):
            store.load("m")
    finally:
        relay.join()
    blobs = cache / "blobs" / "sha256" / sha[:2]
    assert [p.name for p in blobs.iterdir()] == [sha + ".lock"]  # no entry, no partial file
    with embedml.ModelStore(url, cache_dir=cache).load("m") as handle:  # the next load works
        assert handle.predict([1.0, 1.0]) == 6.0


def test_an_unreachable_store_is_a_typed_error_naming_url_and_operation(url: str) -> None:
    dead = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}
    store = embedml.ModelStore(url, storage_options=dead, retries=1, backoff=0.01)
    with pytest.raises(StoreUnavailableError) as info:
        store.load("m")
    assert str(info.value).startswith(f"get {url}/") and "after 2 attempts" in str(info.value)
    assert info.value.__cause__ is not None  # botocore's error, only as the cause


def test_wrong_credentials_name_the_store(tmp_path: Path, cache_dir: Path) -> None:
    with start_s3_server(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        options = {**server.storage_options(), "key": "not-a-key", "secret": "not-a-secret"}
        store = embedml.ModelStore("s3://bucket/models", storage_options=options)
        for call in (store.models, lambda: store.load("m@production")):
            with pytest.raises(StoreAccessError) as info:
                call()
            message = str(info.value)
            assert "s3://bucket/models" in message and "InvalidAccessKeyId" in message
            assert "\n" not in message


# ---------------------------------------------------------------- CLI and copies


def test_cli_over_s3(three, url: str, tmp_path: Path, capsys, monkeypatch) -> None:
    from embedml.cli import main

    three.set_alias("m", "production", "2")
    assert main(["--store", url, "ls"]) == 0
    assert "production -> 2" in capsys.readouterr().out
    assert main(["alias", "m", "production", "3", "--store", url]) == 0
    assert main(["show", "m@production", "--store", url]) == 0
    assert main(["verify", "--store", url]) == 0
    assert "3 version(s) checked, 0 mismatch" in capsys.readouterr().out
    fresh = tmp_path / "container-cache"
    monkeypatch.setenv("EMBEDML_CACHE_DIR", str(fresh))
    assert main(["pull", "m@production", "--store", url]) == 0
    assert f"in the cache at {fresh}" in capsys.readouterr().out
    monkeypatch.setenv("EMBEDML_OFFLINE", "1")  # an air-gapped host: what was pulled loads
    with embedml.ModelStore(url).load("m@production") as handle:
        assert handle.predict([1.0, 1.0]) == 6.0
    monkeypatch.delenv("EMBEDML_OFFLINE")
    monkeypatch.setenv("EMBEDML_STORE", url)
    with embedml.load("m@2") as handle:  # the default store, from the environment
        assert handle.predict([1.0, 1.0]) == -4.0
    rows = tmp_path / "in.jsonl"
    rows.write_text("[1.0, 1.0]\n[2.0, 0.5]\n")
    assert (
        main(
            ["predict", "m@2", "-i", str(rows), "-o", str(tmp_path / "out.jsonl"), "--no-progress"]
        )
        == 0
    )
    assert main(["--store", "az://bucket/x", "ls"]) == 1
    assert "unsupported store URL" in capsys.readouterr().err


def test_copy_local_to_s3_and_back_keeps_bytes_and_signatures(
    url: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    from embedml.cli import main

    local = embedml.ModelStore(tmp_path / "local", store_id="staging")
    local.save("m", Affine(1.0), format="tracked", signing_key=KEY)
    local.save("m", Affine(2.0), format="tracked", signing_key=KEY, reference_data=[[1.0, 2.0]] * 5)
    monkeypatch.setenv("EMBEDML_SIGNING_KEY", KEY)
    assert main(["copy", str(local.root), url, "m", "--store-id", "prod"]) == 0
    assert capsys.readouterr().out.split() == ["copied", "m@1", "copied", "m@2"]
    assert main(["copy", str(local.root), url, "m@2"]) == 0  # again: nothing to do
    assert capsys.readouterr().out.split() == ["present", "m@2"]
    remote = embedml.ModelStore(url, store_id="prod")
    signed = dict(require_signature=True, signing_key=KEY)
    for version in ("1", "2"):
        here, there = local.resolve("m", version), remote.resolve("m", version, **signed)
        assert local.version_documents(here) == remote.version_documents(there)
    with remote.load("m", "2", **signed) as handle:
        assert handle.predict([1.0, 1.0]) == 4.0
        assert handle.reference_profile() is not None
    assert remote.verify(require_signature=True) == {"m@1": None, "m@2": None}
    back = tmp_path / "back"
    assert main(["copy", url, str(back), "m@1"]) == 0
    restored = embedml.ModelStore(back)
    assert restored.version_documents(restored.resolve("m", "1")) == local.version_documents(
        local.resolve("m", "1")
    )
    assert restored.verify(signing_key=KEY) == {"m@1": None}
    monkeypatch.delenv("EMBEDML_SIGNING_KEY")
    remote.save("m", Affine(9.0), format="tracked", version="3")  # unsigned
    with pytest.raises(SignatureError, match="not signed"):
        copy_versions(remote, restored, "m", "3", signing_key=KEY)
    assert restored.versions("m") == ["1"]


def test_a_store_used_before_fork_works_in_the_child(three) -> None:
    three.set_alias("m", "production", "3")
    assert three.resolve("m", "@production").version == "3"  # the parent's client is made
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a client of its own, made on first use
        code = 1
        try:
            with three.load("m", "@production") as handle:
                os.write(write, json.dumps(handle.predict([1.0, 1.0])).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    assert os.waitpid(pid, 0)[1] == 0 and json.loads(out) == 6.0
    assert three.versions("m") == ["1", "2", "3"]  # the parent's client still works


def test_the_store_layer_class_opens_urls_too(url: str) -> None:
    plain = Store(url)
    assert type(plain) is RemoteStore and not hasattr(plain, "load")
    assert embedml.default_store(plain).versions  # turned into a ModelStore on the same store
    assert isinstance(embedml.default_store(plain), embedml.ModelStore)
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        Store("az://container/models")


def test_a_version_deleted_and_published_again_is_not_served_from_a_stale_cache(
    three, url: str, tmp_path: Path
) -> None:
    elsewhere = embedml.ModelStore(url, cache_dir=tmp_path / "another-machine")
    with elsewhere.load("m", "3") as handle:  # its manifest and artifact cached there
        assert handle.predict([1.0, 1.0]) == 6.0
    three.delete("m", "3")
    three.save("m", Affine(7.0), format="tracked", version="3")
    with elsewhere.load("m", "3") as handle:
        assert handle.predict([1.0, 1.0]) == 14.0
    assert elsewhere.verify() == {"m@1": None, "m@2": None, "m@3": None}

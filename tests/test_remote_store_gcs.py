"""``ModelStore("gs://...")``: the store's API over a real GCS emulator (``gcs_server.py``).

The object-store contract itself runs over ``gs://`` in ``test_object_store.py``; these check
the model store on top of it: save/load, aliases and promotion, following, and processes
racing to publish one version or to move one alias.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import embedml
from conftest import SRC
from embedml.errors import ModelNotFoundError, VersionExistsError
from embedml.serving.follow import Follower
from embedml.store import RemoteStore
from embedml.testing import FakeClock
from gcs_server import GCSBucket
from helpers_models import LINEAR_B, LINEAR_W, onnx_linear
from test_remote_store import _at_once, _mean

pytest.importorskip("gcsfs", reason="the gcs extra is part of the dev extra")

X = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], dtype=np.float32)


@pytest.fixture
def url(gcs_bucket: GCSBucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("EMBEDML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("EMBEDML_OFFLINE", raising=False)
    monkeypatch.delenv("EMBEDML_SIGNING_KEY", raising=False)
    return f"{gcs_bucket.url}/models"


def test_save_and_load_over_gcs(url: str, gcs_bucket: GCSBucket) -> None:
    store = embedml.ModelStore(url)
    assert isinstance(store, RemoteStore) and store.models() == []
    v1 = store.save("lin", onnx_linear())
    store.save("lin", onnx_linear(), version="2.0")
    other = embedml.ModelStore(url)  # another machine sees the same versions
    assert other.versions("lin") == ["1", "2.0"] and other.resolve("lin").version == "2.0"
    with other.load("lin@1") as handle:
        out = handle.predict_batch({"x": X})
    np.testing.assert_allclose(out, X @ LINEAR_W + LINEAR_B, rtol=1e-6)
    names = {i["name"] for i in gcs_bucket.server.request("GET", f"/storage/v1/b/{gcs_bucket.name}/o")["items"]}  # fmt: skip
    assert {"models/.embedml-store.json", f"models/blobs/sha256/{v1.manifest.sha256}"} <= names
    with pytest.raises(VersionExistsError):
        store.save("lin", onnx_linear(), version=1)
    with pytest.raises(ModelNotFoundError):
        store.versions("nope")


def test_aliases_promote_rollback_over_gcs(three, url: str) -> None:
    three.set_alias("m", "production", "1", who="ana")
    three.set_alias("m", "production", "2")
    other = embedml.ModelStore(url)
    assert other.aliases("m") == {"production": "2"}
    gate = embedml.Gate(_mean, [[1.0, 1.0]], [0.0], min_score=-100, max_drop=100)
    assert other.promote("m", "3", gate=gate).version == "3"
    assert three.rollback("m").version == "2"
    history = other.history("m")
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("set_alias", None, "1"),
        ("set_alias", "1", "2"),
        ("gate", "2", "3"),
        ("promote", "2", "3"),
        ("rollback", "3", "2"),
    ]
    with three.load("m", "@production") as handle:
        assert handle.version == "2" and handle.predict([1.0, 1.0]) == -4.0


def test_follow_over_gcs(three, url: str, threads_checked) -> None:
    three.set_alias("m", "production", "1")
    clock = FakeClock()
    with three.load("m", "@production") as handle:
        follower = Follower(handle, three, "@production", 30.0, clock=clock)
        clock.wait_for_sleepers(1)
        clock.advance(30.0)  # a poll while nothing moved: no swap
        clock.wait_for_sleepers(1)
        assert handle.version == "1" and follower.swaps == 0
        embedml.ModelStore(url).set_alias("m", "production", "3")  # another machine
        clock.advance(30.0)
        clock.wait_for_sleepers(1)
        assert handle.version == "3" and handle.predict([1.0, 1.0]) == 6.0
        assert follower.swaps == 1
        assert follower.stop(60)


@pytest.fixture
def env(url: str) -> dict[str, str]:
    # STORAGE_EMULATOR_HOST (set by gcs_bucket) takes the children to the emulator too.
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_processes_publishing_one_version_over_gcs_have_one_winner(url: str, env) -> None:
    jobs = [{"do": "save", "k": float(k), "version": "5"} for k in range(4)]
    results = [r[0] for r in _at_once(url, jobs, env)]
    assert sorted(results) == ["5", "exists", "exists", "exists"]
    winner = jobs[results.index("5")]["k"]
    with embedml.ModelStore(url).load("m", "5") as handle:  # the winner's bytes, whole
        assert handle.predict([1.0, 1.0]) == 2 * winner


def test_processes_moving_one_alias_over_gcs_lose_no_move(three, url: str, env) -> None:
    jobs = [{"do": "move", "who": f"p{i}", "versions": ["1", "2", "3"]} for i in range(3)]
    _at_once(url, jobs, env)
    moves = three.history("m", alias="production")
    assert len(moves) == 9  # every move of every process, in one chain
    for before, after in zip(moves, moves[1:]):
        assert after["from"] == before["to"] and after["seq"] > before["seq"]
    assert three.aliases("m") == {"production": moves[-1]["to"]}

"""Features together, with real models and real threads: dynamic batching + a JSONL sink +
a DriftMonitor under repeated hot swaps, a Canary over two batched handles, ``follow=True``
with batching, and ``score()`` over a batched handle that other threads also call."""

from __future__ import annotations

import csv
import random
import threading
import time

import numpy as np
import pytest
from pydantic import BaseModel

import embedml
from embedml.observe.sinks import read_jsonl

NAMES = ["a", "b", "c", "d"]
BATCHING = embedml.Batching(max_batch_size=16, max_wait_ms=1.0)


class Features(BaseModel):
    a: float
    b: float
    c: float
    d: float


def _fit(coef, intercept):
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(len(coef) + int(intercept))
    X = rng.normal(size=(100, 4))
    return LinearRegression().fit(X, X @ np.asarray(coef, dtype=float) + intercept)


@pytest.fixture
def versions(store):
    """Three saved versions of model ``m`` (different linear models): version -> model."""
    models = {}
    for coef, intercept in [([1, 2, 3, 4], 0.5), ([-1, 0, 2, 1], -3.0), ([0.5, 0.5, -2, 0], 7.0)]:
        model = _fit(coef, intercept)
        models[store.save("m", model, input_schema=Features).version] = model
    return models


def _record(row) -> dict[str, float]:
    return dict(zip(NAMES, map(float, row)))


def _run(threads: int, body, done: threading.Event) -> list:
    """Run ``body(seed, results)`` on ``threads`` threads until ``done`` is set; every
    thread's results, and any exception a thread hit (re-raised here)."""
    results: list = []
    failures: list[BaseException] = []

    def target(seed):
        try:
            body(seed, results)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)
            done.set()

    workers = [threading.Thread(target=target, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    return workers, results, failures


def _caller(h, done: threading.Event, models, rounds: int = 3):
    """A worker calling ``h`` with single records and batches until ``done`` (at least
    ``rounds`` calls), checking every result against the version that produced it."""

    def body(seed, results):
        rng = np.random.default_rng(seed)
        i = 0
        while i < rounds or not done.is_set():
            X = rng.normal(size=(1 + i % 4, 4))
            if i % 2:
                p = h.predict(_record(X[0]), details=True)
                X, out = X[:1], [p.output]
            else:
                p = h.predict_batch(X, details=True)
                out = p.output
            want = models[p.version].predict(X)
            assert np.allclose(out, want), (p.version, out, want)
            results.append((p.request_id, p.version, X, np.asarray(out)))
            i += 1

    return body


def test_hot_swaps_under_16_threads_with_batching_jsonl_and_drift(store, versions, tmp_path, threads_checked):
    log = tmp_path / "logs" / "p.jsonl"
    sink = embedml.JsonlSink(log, rotate_bytes=40_000, keep=10_000, policy="block")
    reference = np.random.default_rng(9).normal(size=(400, 4))
    drift = embedml.DriftMonitor(reference, window=256)
    h = store.load("m", "1", batching=BATCHING, hooks=[sink, drift])
    done = threading.Event()
    workers, results, failures = _run(16, _caller(h, done, versions), done)
    rng = random.Random(1)
    swaps = []
    for _ in range(12):
        target = rng.choice([v for v in versions if v != h.version])
        swaps.append(h.swap(target))
        threading.Event().wait(0.02)
    # batching stats belong to the pipeline now serving: let the callers reach it first
    give_up = time.monotonic() + 30
    while h.batching_stats().requests == 0 and not failures and time.monotonic() < give_up:
        threading.Event().wait(0.005)
    batched = h.batching_stats().requests
    done.set()
    for t in workers:
        t.join(60)
    assert not failures, failures[0]
    assert not any(t.is_alive() for t in workers)
    assert swaps and all(v in versions for v in swaps)
    assert len({v for _, v, _, _ in results}) >= 2  # calls were served across swaps
    assert batched > 0
    h.close()

    stats = sink.stats()
    assert stats["accepted"] == stats["written"] == len(results)
    assert stats["dropped"] == stats["errors"] == stats["abandoned"] == 0
    assert len(sink.files()) > 1  # it rotated
    on_disk = {r["request_id"]: r for r in read_jsonl(log)}
    assert set(on_disk) == {rid for rid, _, _, _ in results}
    for rid, version, X, out in results:
        rec = on_disk[rid]
        assert rec["version"] == version and rec["error"] is None
        assert np.allclose([list(row.values()) for row in rec["inputs"]], X)
        assert np.allclose(rec["outputs"], out)
    assert drift.stats()["errors"] == 0
    assert drift.rows_seen == sum(len(X) for _, _, X, _ in results)


def test_canary_over_two_batched_handles(store, versions, threads_checked):
    with store.load("m", "1", batching=BATCHING) as primary, store.load("m", "2", batching=BATCHING) as cand:
        canary = embedml.Canary(primary, cand, fraction=0.3, key="a")
        arm_version = {"primary": "1", "candidate": "2"}
        done = threading.Event()

        def body(seed, results):
            rng = np.random.default_rng(seed)
            for i in range(40):
                X = rng.normal(size=(1 + i % 5, 4))
                records = [_record(x) for x in X]
                want = [versions[arm_version[canary.arm_for(r)]].predict(x[None])[0] for r, x in zip(records, X)]
                if i % 2:
                    p = canary.predict(records[0], details=True)
                    assert p.version == arm_version[canary.arm_for(records[0])]
                    got = [p.output]
                    want = want[:1]
                else:
                    got = canary.predict_batch(records)
                assert np.allclose(got, want)
                results.append(len(want))

        workers, results, failures = _run(8, body, done)
        for t in workers:
            t.join(60)
        assert not failures, failures[0]
        m = canary.metrics()
        assert m["primary"]["rows"] + m["candidate"]["rows"] == sum(results)
        assert m["primary"]["rows"] > m["candidate"]["rows"] > 0
        assert m["primary"]["errors"] == m["candidate"]["errors"] == 0
        assert primary.batching_stats().requests > 0 and cand.batching_stats().requests > 0


def test_follow_with_batching_moves_with_the_alias_under_load(store, versions, threads_checked):
    store.set_alias("m", "prod", "1")
    h = store.load("m", "@prod", follow=True, poll_s=0.02, batching=BATCHING)
    done = threading.Event()
    workers, results, failures = _run(8, _caller(h, done, versions), done)
    for target in ["2", "3", "1"]:
        store.set_alias("m", "prod", target)
        for _ in range(1000):  # wait (not a timing assertion) for the follower to swap
            if h.version == target or failures:
                break
            threading.Event().wait(0.01)
        assert h.version == target
        threading.Event().wait(0.05)
    done.set()
    for t in workers:
        t.join(60)
    assert not failures, failures[0]
    assert h.follower.swaps == 3 and h.follower.errors == 0
    assert {v for _, v, _, _ in results} == {"1", "2", "3"}
    h.close()
    assert not h.follower.alive


def test_score_over_a_batched_handle_shared_with_other_callers(store, versions, tmp_path, threads_checked):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(600, 4))
    bad = {17, 250, 599}
    src, dst = tmp_path / "in.csv", tmp_path / "out.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(NAMES)
        for i, row in enumerate(X):
            w.writerow(["oops" if i in bad and j == 1 else repr(float(v)) for j, v in enumerate(row)])
    with store.load("m", "2", batching=BATCHING) as h:
        done = threading.Event()
        workers, results, failures = _run(4, _caller(h, done, versions), done)
        summary = embedml.score(h, src, dst, batch_size=64)
        done.set()
        for t in workers:
            t.join(60)
        assert not failures, failures[0]
        assert results
    assert (summary.scored, summary.rejected, summary.version) == (597, 3, "2")
    with open(dst, newline="") as f:
        rows = list(csv.DictReader(f))
    got = {int(r["row"]): float(r["prediction"]) for r in rows}
    keep = [i for i in range(len(X)) if i not in bad]
    assert sorted(got) == [i + 1 for i in keep]  # 1-based row numbers
    assert np.allclose([got[i + 1] for i in keep], versions["2"].predict(X[keep]))
    rejected = [int(line.split('"row": ')[1].split(",")[0]) for line in summary.rejects.read_text().splitlines()]
    assert sorted(rejected) == [i + 1 for i in sorted(bad)]


def test_short_lived_handles_called_from_a_long_lived_thread_leave_nothing_behind(store, versions, tmp_path):
    """Metrics keep one shard per calling thread, retired when the thread ends; a thread
    that outlives many handles (a server's worker pool reloading models) must not keep
    every closed handle's shards."""
    import gc

    from embedml.observe.metrics import _Shard

    sink = embedml.JsonlSink(tmp_path / "p.jsonl")
    keep = store.load("m", "1", hooks=[sink])  # keeps the sink open across the reloads
    gc.collect()
    before = sum(type(o) is _Shard for o in gc.get_objects())
    for i in range(30):
        with store.load("m", str(1 + i % 3), batching=BATCHING, hooks=[sink]) as h:
            h.predict(_record([1.0, 2.0, 3.0, 4.0]))
            h.predict_batch(np.ones((3, 4)))
    gc.collect()
    after = sum(type(o) is _Shard for o in gc.get_objects())
    assert after - before <= 1, (before, after)
    keep.close()
    assert sink.closed and sink.stats()["written"] == 60

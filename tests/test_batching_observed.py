"""Observability of batched handles: every prediction record and the metrics carry the real
queue wait of each call and the rows of the joined model call it ran in (issue 4 x issue 3).

The model calls are seen independently of the batcher, by a ``preprocess`` callable that
runs once per model call on the joined batch: the records and the metrics must agree with it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import numpy as np
import pytest

import embedml
from embedml.observe.metrics import _size_bucket
from helpers_batching import Probe, expected

pytestmark = pytest.mark.timeout(60)

THREADS = 16
CALLS = 12  # per thread: single rows, plus one predict_batch of 3 rows


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4))


def assert_window_holds(monitor: embedml.DriftMonitor, sent: np.ndarray) -> None:
    """The monitor's window holds the rows sent, each once, seen through its public report:
    as many rows, and per feature the KS statistic scipy gives for the sent rows against
    the same reference sample (a row missing, doubled or from another call moves it)."""
    st = pytest.importorskip("scipy.stats")
    report = monitor.report()
    assert report.window_rows == len(sent)
    assert len(report.rows) == sent.shape[1]
    for r in report.rows:
        j = int(r["feature"][2:-1])  # "x[j]"
        sample = monitor.reference.features[r["feature"]].sample
        expected_ks = st.ks_2samp(sample, sent[:, j]).statistic
        assert r["ks"] == pytest.approx(expected_ks, abs=1e-12), r["feature"]


class Calls:
    """A preprocess hook that records the rows of every model call (the joined batches)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.sizes.append(len(batch))
        return batch


class Collect:
    """A callable hook keeping every record it is given."""

    def __init__(self) -> None:
        self.records: list[embedml.PredictionRecord] = []

    def __call__(self, record: embedml.PredictionRecord) -> None:
        self.records.append(record)  # runs on the sink's one writer thread


def load(store, *, batching, calls: Calls, hooks=()):
    store.save("probe", Probe(delay=0.003))
    return store.load("probe", batching=batching, preprocess=calls, hooks=list(hooks))


def hammer(handle) -> tuple[int, int]:
    """THREADS threads, each making CALLS single-row calls and one 3-row call, checking that
    each got exactly the output for its own input. Returns (calls, rows) made."""
    failures: list[BaseException] = []

    def work(t: int) -> None:
        try:
            X = rows(CALLS + 3, seed=t)
            for x in X[:CALLS]:
                got = handle.predict(x)
                assert np.isclose(got, expected(x)[0])
            np.testing.assert_allclose(handle.predict_batch(X[CALLS:]), expected(X[CALLS:]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not failures, failures[0]
    return THREADS * (CALLS + 1), THREADS * (CALLS + 3)


def check_records_match_model_calls(records, sizes: list[int]) -> None:
    """Each model call of ``B`` rows shows up as the ``batch_size`` of exactly the calls it
    served, whose own rows add up to ``B``."""
    assert all(r.error is None and 1 <= r.rows <= r.batch_size for r in records)
    rows_by_size: Counter[int] = Counter()
    for r in records:
        rows_by_size[r.batch_size] += r.rows
    calls_by_size = Counter(sizes)
    assert set(rows_by_size) == set(calls_by_size)
    for size, n_calls in calls_by_size.items():
        assert rows_by_size[size] == size * n_calls, size
    # equivalently: each model call's callers carry fractions rows/B adding up to one
    assert sum(r.rows / r.batch_size for r in records) == pytest.approx(len(sizes))


def test_records_and_metrics_show_joined_batches_and_queue_wait(store, tmp_path):
    before = set(threading.enumerate())
    calls, collect = Calls(), Collect()
    jsonl = embedml.JsonlSink(tmp_path / "p.jsonl", arrays="base64")
    batching = embedml.Batching(max_batch_size=64, max_wait_ms=2.0)
    handle = load(store, batching=batching, calls=calls, hooks=[collect, jsonl])
    n_calls, n_rows = hammer(handle)
    metrics = handle.metrics()
    stats = handle.batching_stats()
    handle.close()  # every accepted record reaches the hooks

    records = collect.records
    assert len(records) == n_calls and sum(r.rows for r in records) == n_rows
    assert stats.batches == len(calls.sizes) and sum(calls.sizes) == n_rows
    check_records_match_model_calls(records, calls.sizes)
    # 16 threads on a model taking milliseconds: calls were joined, and waited in the queue
    assert max(calls.sizes) > 1 and any(r.batch_size > 1 for r in records)
    assert any(r.queue_ms > 0 for r in records)
    assert all(0 <= r.queue_ms <= r.latency_ms for r in records)
    assert sum(r.queue_ms for r in records) / 1e3 == pytest.approx(
        stats.queue_wait_seconds_sum, rel=1e-6
    )

    # metrics: one count per model call, by its rows; queue stage timed on every call
    expected_sizes = Counter(_size_bucket(s) for s in calls.sizes)
    assert metrics["batch_size"] == dict(expected_sizes)
    assert sum(metrics["batch_size"].values()) == len(calls.sizes) < metrics["requests"]
    queue = metrics["latency_ms"]["queue"]
    assert queue["count"] == n_calls and queue["p99"] > 0
    assert queue["mean"] == pytest.approx(stats.queue_wait_seconds_sum * 1e3 / n_calls, rel=1e-3)

    # the JSON Lines file carries the same figures, record by record
    written = {d["request_id"]: d for d in embedml.read_jsonl(tmp_path / "p.jsonl")}
    assert len(written) == n_calls
    for r in records:
        d = written[r.request_id]
        assert (d["rows"], d["batch_size"]) == (r.rows, r.batch_size)
        assert d["queue_ms"] == pytest.approx(r.queue_ms, abs=1e-4)
    assert set(threading.enumerate()) <= before


def test_a_lone_caller_on_a_batched_handle_runs_alone(store):
    calls, collect = Calls(), Collect()
    handle = load(store, batching=embedml.Batching(), calls=calls, hooks=[collect])
    for x in rows(5, seed=1):
        handle.predict(x)
    handle.predict_batch(rows(4, seed=2))
    metrics = handle.metrics()
    handle.close()
    assert calls.sizes == [1, 1, 1, 1, 1, 4]
    assert [(r.rows, r.batch_size, r.queue_ms) for r in collect.records] == [(1, 1, 0.0)] * 5 + [
        (4, 4, 0.0)
    ]
    assert metrics["batch_size"] == {"1": 5, "4-7": 1}


def test_unbatched_handles_report_own_rows_and_no_queue(store):
    calls, collect = Calls(), Collect()
    handle = load(store, batching=None, calls=calls, hooks=[collect])
    n_calls, n_rows = hammer(handle)
    metrics = handle.metrics()
    handle.close()
    records = collect.records
    assert len(records) == n_calls and len(calls.sizes) == n_calls
    assert all(r.batch_size == r.rows and r.queue_ms == 0.0 for r in records)
    assert sum(r.rows for r in records) == n_rows
    assert metrics["batch_size"] == {"1": THREADS * CALLS, "2-3": THREADS}
    assert metrics["latency_ms"]["queue"]["p99"] == 0.0


def test_asyncio_tasks_see_their_joined_batches(store):
    calls, collect = Calls(), Collect()
    batching = embedml.Batching(max_batch_size=16, max_wait_ms=2.0)
    handle = load(store, batching=batching, calls=calls, hooks=[collect])
    X = rows(96, seed=3)

    async def main() -> list:
        return await asyncio.gather(*(handle.apredict(x) for x in X))

    got = asyncio.run(main())
    metrics = handle.metrics()
    handle.close()
    np.testing.assert_allclose(np.array(got), expected(X))
    assert len(collect.records) == len(X) and sum(calls.sizes) == len(X)
    check_records_match_model_calls(collect.records, calls.sizes)
    assert max(calls.sizes) > 1  # 96 tasks started at once are joined (up to 16 rows)
    assert metrics["batch_size"] == dict(Counter(_size_bucket(s) for s in calls.sizes))


def test_drift_monitor_counts_rows_not_batch_rows(store):
    calls = Calls()
    monitor = embedml.DriftMonitor(rows(500, seed=9), window=10_000)
    handle = load(store, batching=embedml.Batching(), calls=calls, hooks=[monitor])
    _, n_rows = hammer(handle)
    handle.close()
    assert max(calls.sizes) > 1
    assert monitor.rows_seen == n_rows
    # one offer per model call (the batch's rows at once), not one per call
    assert monitor.stats()["accepted"] == len(calls.sizes) < n_rows
    sent = np.concatenate([rows(CALLS + 3, seed=t) for t in range(THREADS)])
    assert_window_holds(monitor, sent)


def test_handles_sharing_a_loaded_model_offer_each_row_once(store):
    # Handles loaded from one ModelCache share the loaded model; each has its own pipeline
    # and batcher (batching is a per-handle option) and offers its own calls' rows to its
    # row sinks, here the same monitor, which must see every row exactly once.
    cache = embedml.ModelCache(max_models=2)
    store.save("probe", Probe(delay=0.003))
    monitor = embedml.DriftMonitor(rows(500, seed=9), window=10_000)
    batching = embedml.Batching()
    first = store.load("probe", batching=batching, cache=cache, hooks=[monitor])
    second = store.load("probe", batching=batching, cache=cache, hooks=[monitor])
    assert cache.stats()["misses"] == 1  # one loaded model for both handles
    X1, X2 = rows(240, seed=1), rows(240, seed=2)

    def work(handle, X):
        for x in X:
            assert np.isclose(handle.predict(x), expected(x[None])[0])

    threads = [
        threading.Thread(target=work, args=(h, X[k::4]))
        for h, X in ((first, X1), (second, X2)) for k in range(4)
    ]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert monitor.flush()
    sent = np.concatenate([X1, X2])
    assert monitor.rows_seen == len(sent)
    assert_window_holds(monitor, sent)
    stats = first.batching_stats()
    first.close()
    second.close()
    cache.clear()
    assert stats.rows > stats.batches  # calls were joined


def test_prometheus_batch_size_counts_model_calls(store):
    prometheus_client = pytest.importorskip("prometheus_client")
    from embedml.observe.metrics.prometheus import register

    calls = Calls()
    handle = load(store, batching=embedml.Batching(), calls=calls)
    registry = prometheus_client.CollectorRegistry()
    register(handle, registry=registry)
    _, n_rows = hammer(handle)
    labels = {"model": "probe", "version": "1"}
    count = registry.get_sample_value("embedml_batch_size_count", labels)
    total = registry.get_sample_value("embedml_batch_size_sum", labels)
    requests = registry.get_sample_value("embedml_requests_total", labels)
    handle.close()
    assert count == len(calls.sizes) and total == n_rows == sum(calls.sizes)
    assert requests > count  # calls were joined: fewer model calls than calls

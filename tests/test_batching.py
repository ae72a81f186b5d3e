"""Dynamic batching: correctness under many threads and asyncio tasks, isolation of a bad
record, one output per row, backpressure, deadlines, close-while-busy, thread hygiene."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from pydantic import BaseModel

import embedml
from embedml.serving.pipeline import BatchItem
from helpers_batching import POISON, SEEN, Probe, RowSum, expected
from helpers_models import (
    LINEAR_B,
    LINEAR_W,
    child_env,
    onnx_linear,
    sk_logreg,
    torch_reference,
    torch_scripted,
)

pytestmark = pytest.mark.timeout(60)


def wait_until(cond, what: str, limit: float = 20.0) -> None:
    """Poll ``cond`` (no timing is asserted: the limit only turns a hang into a failure)."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.002)


def run_threads(fn, args_list):
    """Run ``fn(*args)`` in one thread per item; return results or exceptions, in order."""
    results: list = [None] * len(args_list)

    def work(i, args):
        try:
            results[i] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    ts = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def rows(n: int, seed: int = 0, width: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width))


@pytest.fixture
def probe_store(store):
    """The store, with ``store.save_probe(**kw)`` saving a :class:`Probe` as "probe"."""

    class ProbeStore(type(store)):
        def save_probe(self, **kw):
            return self.save("probe", Probe(**kw))

    return ProbeStore(store.root)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "kw",
    [
        {"max_batch_size": 0},
        {"max_batch_size": 2.5},
        {"max_batch_size": True},
        {"max_queue": 0},
        {"max_batch_size": 64, "max_queue": 8},
        {"max_wait_ms": -1},
        {"max_wait_ms": float("nan")},
        {"max_wait_ms": "2"},
        {"timeout_ms": 0},
        {"timeout_ms": -5},
        {"timeout_ms": float("inf")},
        {"count": "bytes"},
        {"inline_ms": -1},
        {"inline_ms": "0.5"},
    ],
)
def test_settings_are_validated_when_built(kw):
    with pytest.raises(embedml.ConfigurationError) as info:
        embedml.Batching(**kw)
    assert any(k in str(info.value) for k in kw)


def test_load_option(store):
    store.save("lr", sk_logreg())
    with pytest.raises(embedml.ConfigurationError, match="batching"):
        store.load("lr", batching={"max_batch_size": 4})
    with store.load("lr", batching=True) as h:
        assert h.batching_stats().requests == 0
    with store.load("lr") as h:
        assert h.batching_stats() is None
    with embedml.load("lr", store=store, batching=embedml.Batching(max_batch_size=4)) as h:
        h.predict(np.zeros(4))
        assert h.batching_stats().requests == 1


def test_bad_timeout_argument(store):
    store.save("lr", sk_logreg())
    with store.load("lr", batching=True) as h, pytest.raises(embedml.ConfigurationError):
        h.predict(np.zeros(4), timeout_ms=-1)


# ---------------------------------------------------------------- correctness


def test_threads_each_get_their_own_output_onnx(store):
    store.save("lin", onnx_linear())
    X = rows(32 * 25, width=3).astype(np.float32)
    want = X @ LINEAR_W + LINEAR_B
    with store.load("lin", batching=embedml.Batching(max_batch_size=16)) as h:

        def caller(t):
            bad = []
            for i in range(t, len(X), 32):
                got = h.predict(X[i])
                if got.shape != (2,) or not np.allclose(got, want[i], atol=1e-5):
                    bad.append((i, got))
            return bad

        assert run_threads(caller, [(t,) for t in range(32)]) == [[]] * 32
        stats = h.batching_stats()
    assert stats.requests == stats.rows == len(X)
    assert sum(stats.batch_sizes.values()) == stats.batches
    assert sum(stats.queue_wait_buckets.values()) == stats.requests
    assert stats.failed == stats.timed_out == stats.rejected == 0


def test_batches_form_under_load_and_outputs_match(probe_store):
    probe_store.save_probe(delay=0.01)
    X = rows(24 * 8, seed=1)
    with probe_store.load("probe", batching=embedml.Batching(max_batch_size=8)) as h:
        got = run_threads(lambda i: h.predict(X[i]), [(i,) for i in range(len(X))])
        stats = h.batching_stats()
    assert np.allclose(np.asarray(got, dtype=float), expected(X))
    # 192 calls on a model that sleeps 10 ms per call: they cannot all run alone
    assert stats.batches < stats.requests
    assert stats.mean_batch_size > 1
    assert max(k for k, v in stats.batch_sizes.items() if v) <= 8


def test_asyncio_tasks_and_threads_mixed(probe_store):
    probe_store.save_probe(delay=0.002)
    X = rows(300, seed=2)
    want = expected(X)
    with probe_store.load("probe", batching=embedml.Batching(max_batch_size=32)) as h:

        async def tasks():
            outs = await asyncio.gather(*(h.apredict(X[i]) for i in range(200)))
            return [float(o) for o in outs]

        def sync_part(i):
            return float(h.predict(X[i]))

        box = {}
        loop_thread = threading.Thread(target=lambda: box.update(r=asyncio.run(tasks())))
        loop_thread.start()
        sync = run_threads(sync_part, [(i,) for i in range(200, 300)])
        loop_thread.join()
        stats = h.batching_stats()
    assert np.allclose(box["r"], want[:200])
    assert np.allclose(sync, want[200:])
    assert stats.requests == 300


def _inline_run(h, X, tasks=64, apredict=None):
    """64 tasks on one loop, each calling apredict on its share of X, in order."""
    call = apredict or (lambda x: h.apredict(x))

    async def work(part):
        return [np.asarray(await call(x), dtype=float).sum() for x in part]

    async def main():
        parts = await asyncio.gather(*(work(X[k::tasks]) for k in range(tasks)))
        return parts

    parts = asyncio.run(main())
    got = np.empty(len(X))
    for k, part in enumerate(parts):
        got[k::tasks] = part
    return got


def test_cheap_model_batches_run_inline_on_the_loop(probe_store):
    probe_store.save_probe()
    X = rows(3200, seed=5)
    with probe_store.load("probe", batching=embedml.Batching()) as h:
        got = _inline_run(h, X)
        stats = h.batching_stats()
    np.testing.assert_allclose(got, expected(X))  # each task got its own rows' outputs
    # after the first batches on the worker thread measured the model as cheap, batches
    # ran on the loop itself, and large (the leader lets the ready tasks join first)
    assert stats.inline_batches > stats.batches * 0.8
    assert stats.rows / stats.batches > 16
    assert stats.requests == len(X) and stats.failed == 0


def test_inline_ms_zero_and_slow_models_use_the_worker_thread(probe_store):
    X = rows(640, seed=6)
    probe_store.save_probe()
    with probe_store.load("probe", batching=embedml.Batching(inline_ms=0)) as h:
        np.testing.assert_allclose(_inline_run(h, X), expected(X))
        assert h.batching_stats().inline_batches == 0
    probe_store.save("slow", Probe(delay=0.002))  # 2 ms per model call > inline_ms=0.5
    with probe_store.load("slow", batching=embedml.Batching()) as h:
        np.testing.assert_allclose(_inline_run(h, X[:192]), expected(X[:192]))
        assert h.batching_stats().inline_batches == 0


def test_inline_batches_isolate_poison_and_mix_with_threads(probe_store):
    probe_store.save_probe()
    X = rows(1200, seed=7)
    bad = set(range(5, 1200, 97))
    for i in bad:
        X[i, 0] = POISON
    want = expected(np.where(X == POISON, 0.0, X))
    with probe_store.load("probe", batching=embedml.Batching()) as h:
        _inline_run(h, rows(640, seed=8))  # measure the model: inline from here on

        async def one(i):
            try:
                return float(await h.apredict(X[i]))
            except embedml.PredictionError:
                return "poison"

        async def tasks():
            return await asyncio.gather(*(one(i) for i in range(800)))

        box = {}
        loop_thread = threading.Thread(target=lambda: box.update(r=asyncio.run(tasks())))
        loop_thread.start()
        sync = run_threads(lambda i: float(h.predict(X[i])) if i not in bad else None,
                           [(i,) for i in range(800, 1200)])  # fmt: skip
        loop_thread.join()
        stats = h.batching_stats()
    for i, r in enumerate(box["r"]):
        assert r == "poison" if i in bad else r == pytest.approx(want[i])
    for i, r in zip(range(800, 1200), sync):
        assert r is None if i in bad else r == pytest.approx(want[i])
    assert stats.inline_batches > 0 and stats.isolation_runs > 0


def test_cancelled_inline_leader_hands_the_lead_on(probe_store):
    probe_store.save_probe()
    X = rows(640, seed=9)
    # inline_ms well above the probe's batches: on a loaded machine (load 10+) batches of
    # over 0.5 ms took the worker thread, and the first call could end before its cancel
    with probe_store.load("probe", batching=embedml.Batching(inline_ms=50)) as h:
        _inline_run(h, X)  # inline from here on
        assert h.batching_stats().inline_batches > 0

        async def main():
            first = asyncio.ensure_future(h.apredict(X[0]))  # leads, then yields a turn
            others = [asyncio.ensure_future(h.apredict(x)) for x in X[1:40]]
            await asyncio.sleep(0)  # the leader is now in its one-turn wait
            first.cancel()
            outs = await asyncio.gather(*others)
            with pytest.raises(asyncio.CancelledError):
                await first
            return outs

        outs = asyncio.run(asyncio.wait_for(main(), 20))
        np.testing.assert_allclose(np.array(outs, dtype=float), expected(X[1:40]))
        assert h.batching_stats().queued == 0
        metrics = h.metrics()
        assert metrics["in_flight"] == 0 and metrics["errors_by_type"] == {"CancelledError": 1}


@pytest.mark.parametrize("inline_ms", [0.5, 0])
def test_rows_checked_a_batch_at_once_still_fail_alone(store, inline_ms):
    # apredict leaves a float row's NaN/inf check to its batch; a bad row must still fail
    # alone, with the error validation gives, and every other call get its own output
    store.save("lin", onnx_linear())
    X = np.random.default_rng(3).normal(size=(640, 3)).astype(np.float32)
    bad = set(range(7, 640, 61))
    for i in bad:
        X[i, i % 3] = np.nan if i % 2 else np.inf
    with store.load("lin", batching=embedml.Batching(inline_ms=inline_ms)) as h:
        _inline_run(h, np.random.default_rng(4).normal(size=(640, 3)).astype(np.float32),
                    apredict=lambda x: h.apredict(x))  # fmt: skip

        async def one(i):
            try:
                return await h.apredict(X[i])
            except embedml.SchemaError as exc:
                return exc

        async def main():
            return await asyncio.gather(*(one(i) for i in range(len(X))))

        got = asyncio.run(main())
        with pytest.raises(embedml.SchemaError) as sync_error:
            h.predict(X[7])
        stats = h.batching_stats()
        assert h._pipe.quick_one(X[0]) is not None  # these rows took the deferred check
        wide = X[0].astype(np.float64)  # not the model's dtype: validated (cast) at once
        assert h._pipe.quick_one(wide) is None
        np.testing.assert_allclose(asyncio.run(h.apredict(wide)), X[0] @ LINEAR_W + LINEAR_B, rtol=1e-5)
    for i, r in enumerate(got):
        if i in bad:
            assert isinstance(r, embedml.SchemaError)
            assert str(r) == str(sync_error.value) or "NaN and infinity are refused" in str(r)
            assert r.field == "x" and r.version == "1" and r.index is None
        else:
            np.testing.assert_allclose(r, X[i] @ LINEAR_W + LINEAR_B, rtol=1e-5)
    assert (stats.inline_batches > 0) == (inline_ms > 0)
    assert stats.failed == 0  # refused rows are not model failures


def test_quick_rows_without_batching_are_checked_on_their_own(store):
    # without batching a plain float row takes the quick path too (shape and dtype only),
    # then its own NaN/inf check: a bad one gets the error full validation gives
    store.save("lin", onnx_linear())
    X = np.random.default_rng(8).normal(size=(6, 3)).astype(np.float32)
    with store.load("lin") as h:
        for i, bad in enumerate((np.nan, np.inf, -np.inf)):
            row = X[i].copy()
            row[i] = bad
            with pytest.raises(embedml.SchemaError) as info:
                h.predict(row)
            assert info.value.field == "x" and info.value.version == "1"
            assert "NaN and infinity are refused" in str(info.value)
        for x in X:
            np.testing.assert_allclose(h.predict(x), x @ LINEAR_W + LINEAR_B, rtol=1e-5)
        assert h.metrics()["errors_by_type"] == {"SchemaError": 3}


def test_thread_rows_checked_a_batch_at_once_still_fail_alone(store):
    # predict with batching leaves a float row's NaN/inf check to its batch too (as
    # apredict): bad rows queue like any other, fail alone with the error validation gives,
    # and the rest of their batch gets its outputs from one model call
    store.save("lin", onnx_linear())
    entered, release = threading.Event(), threading.Event()

    def hold_first(out):  # holds the first batch until every other call has queued
        if not entered.is_set():
            entered.set()
            assert release.wait(60)
        return out

    X = np.random.default_rng(6).normal(size=(12, 3)).astype(np.float32)
    bad = {3, 8}
    X[3, 0], X[8, 2] = np.nan, -np.inf
    settings = embedml.Batching(max_batch_size=64, max_wait_ms=60_000)
    with store.load("lin", batching=settings, postprocess=hold_first) as h:
        with pytest.raises(embedml.SchemaError) as expected_error:
            h._pipe.prepare_one(X[3])  # what validation says of that row
        first = threading.Thread(target=h.predict, args=(X[0],))
        first.start()
        assert entered.wait(60)
        others = threading.Thread(
            target=lambda: results.extend(run_threads(h.predict, [(x,) for x in X[1:]]))
        )
        results: list = []
        others.start()
        wait_until(lambda: h.batching_stats().queued == len(X) - 1, "every other call queued")
        release.set()
        first.join(60)
        others.join(60)
        stats = h.batching_stats()
    for i, r in enumerate(results, start=1):
        if i in bad:
            assert isinstance(r, embedml.SchemaError) and r.field == "x"
            assert str(r) == str(expected_error.value) or "NaN and infinity" in str(r)
        else:
            np.testing.assert_allclose(r, X[i] @ LINEAR_W + LINEAR_B, rtol=1e-5)
    assert stats.batches == 2 and stats.batch_sizes == {1: 1, 16: 1}  # 9 good rows joined
    assert stats.failed == 0  # refused rows are not model failures


def test_rows_checked_a_batch_at_once_respect_allow_nan(store):
    store.save("lin", onnx_linear())
    X = np.random.default_rng(5).normal(size=(128, 3)).astype(np.float32)
    X[::9, 1] = np.nan
    with store.load("lin", batching=embedml.Batching(), allow_nan=True) as h:

        async def main():
            return await asyncio.gather(*(h.apredict(x) for x in X))

        got = np.array(asyncio.run(main()))
    assert np.isnan(got[::9]).any(axis=1).all() and not np.isnan(np.delete(got, np.s_[::9], 0)).any()


def test_apredict_details_and_record_schema(store):
    class Features(BaseModel):
        a: float
        b: float
        c: float
        d: float

    store.save("lr", sk_logreg(), input_schema=Features)
    X = rows(64, seed=3)
    records = [dict(zip("abcd", map(float, r))) for r in X]
    with store.load("lr") as plain:
        want = [plain.predict(r) for r in records]
    with store.load("lr", batching=embedml.Batching(max_batch_size=8)) as h:

        async def go():
            return await asyncio.gather(*(h.apredict(r, details=True) for r in records))

        preds = asyncio.run(go())
        sync = run_threads(h.predict, [(r,) for r in records])
    assert [p.output for p in preds] == want == sync
    assert {(p.model, p.version) for p in preds} == {("lr", "1")}
    assert len({p.request_id for p in preds}) == len(preds)


def test_predict_batch_counts_rows(probe_store):
    probe_store.save_probe(delay=0.005)
    X = rows(30 * 3, seed=4)
    settings = embedml.Batching(max_batch_size=8, count="rows")
    with probe_store.load("probe", batching=settings) as h:
        got = run_threads(lambda i: h.predict_batch(X[3 * i : 3 * i + 3]), [(i,) for i in range(30)])
        big = h.predict_batch(rows(20, seed=5))  # more rows than a batch: runs alone
        stats = h.batching_stats()
    for i, out in enumerate(got):
        assert out.shape == (3,) and np.allclose(out, expected(X[3 * i : 3 * i + 3]))
    assert np.allclose(big, expected(rows(20, seed=5)))
    assert stats.rows == 90 + 20 and stats.requests == 31
    # rows are counted: 3-row calls never make a batch of more than 8 rows (2 calls); the
    # 20-row call is the one batch above max_batch_size
    assert {size for size, count in stats.batch_sizes.items() if count} <= {4, 8, float("inf")}
    assert stats.batch_sizes[float("inf")] == 1


def test_torchscript_model_threads(store):
    pytest.importorskip("torch")
    store.save("net", torch_scripted(), input_schema=embedml.TensorSchema(
        [embedml.TensorSpec("x", "float32", (-1, 4))]
    ))  # fmt: skip
    X = rows(16 * 10, seed=14).astype(np.float32)
    want = torch_reference(X)
    with store.load("net", batching=embedml.Batching(max_batch_size=16)) as h:
        got = run_threads(h.predict, [(x,) for x in X])
    assert all(g.shape == (2,) for g in got)
    assert np.allclose(np.stack(got), want, atol=1e-6)


@pytest.mark.parametrize(("count", "cap"), [("rows", 8), ("calls", 2)])
def test_batch_size_unit(probe_store, count, cap):
    probe_store.save_probe(delay=0.01)
    X = rows(12 * 5, seed=15)
    settings = embedml.Batching(max_batch_size=cap, max_queue=64, count=count)
    with probe_store.load("probe", batching=settings) as h:
        got = run_threads(lambda i: h.predict_batch(X[5 * i : 5 * i + 5]), [(i,) for i in range(12)])
        stats = h.batching_stats()
    assert all(np.allclose(g, expected(X[5 * i : 5 * i + 5])) for i, g in enumerate(got))
    if count == "rows":  # two 5-row calls never fit in 8 rows: every call is its own batch
        assert stats.batches == stats.requests == 12
    else:  # at most 2 calls (10 rows) per batch
        assert stats.batches >= 6
        assert set(stats.batch_sizes) <= {8, 16}


def test_invalid_input_fails_alone_before_batching(store):
    store.save("lin", onnx_linear())
    with store.load("lin", batching=True) as h:
        with pytest.raises(embedml.SchemaError):
            h.predict(np.zeros(5, dtype=np.float32))
        assert h.batching_stats().requests == 0
        assert np.allclose(h.predict(np.ones(3, dtype=np.float32)), LINEAR_W.sum(0) + LINEAR_B)


def test_variable_length_inputs_are_grouped_not_mixed(store):
    store.save("sum", RowSum(delay=0.01))
    # same width, different dtypes (joining them would turn the ints into floats), and
    # another width (cannot be joined at all)
    mixed = [
        r
        for i in range(12)
        for r in (np.arange(i, i + 3), np.arange(i, i + 3) / 2, np.arange(i, i + 5) / 4)
    ]
    with store.load("sum", batching=embedml.Batching(max_batch_size=16)) as h:
        got = run_threads(h.predict, [(r,) for r in mixed])
        stats = h.batching_stats()
    assert [str(g) for g in got] == [repr(r.sum().item()) for r in mixed]
    assert stats.batches < stats.requests  # the groups were still batched


def test_lone_caller_runs_at_once(probe_store):
    probe_store.save_probe()
    X = rows(20, seed=6)
    with probe_store.load("probe", batching=embedml.Batching(max_wait_ms=50)) as h:
        got = [h.predict(x) for x in X]
        stats = h.batching_stats()
    assert np.allclose(got, expected(X))
    assert stats.batches == 20 and stats.batch_sizes == {1: 20}
    assert stats.queue_wait_buckets[embedml.serving.batching.WAIT_BUCKETS[0]] == 20


# ---------------------------------------------------------------- failures


def test_poison_record_fails_only_its_caller(probe_store):
    probe_store.save_probe(delay=0.02)
    X = rows(16, seed=7)
    X[5, 0] = POISON
    X[11, 0] = POISON
    with probe_store.load("probe", batching=embedml.Batching(max_batch_size=16)) as h:
        for _ in range(3):
            barrier = threading.Barrier(16)

            def call(i, barrier=barrier):
                barrier.wait()
                return h.predict(X[i])

            got = run_threads(call, [(i,) for i in range(16)])
            for i, g in enumerate(got):
                if i in (5, 11):
                    assert isinstance(g, embedml.PredictionError), g
                    assert g.stage == "model" and isinstance(g.__cause__, ValueError)
                    assert "poison" in str(g)
                else:
                    assert not isinstance(g, BaseException), g
                    assert np.isclose(g, expected(X[i])[0])
        stats = h.batching_stats()
    assert stats.failed == 6
    assert stats.isolation_runs > 0 or stats.batches == stats.requests


def test_wrong_number_of_outputs_fails_the_batch_callers(probe_store):
    probe_store.save_probe(delay=0.02, drop_row=True)
    X = rows(8, seed=8)
    with probe_store.load("probe", batching=embedml.Batching(max_batch_size=8)) as h:
        barrier = threading.Barrier(8)

        def call(i):
            barrier.wait()
            return h.predict(X[i])

        got = run_threads(call, [(i,) for i in range(8)])
    for g in got:
        assert isinstance(g, embedml.PredictionError), g
        assert g.stage == "output" and "output rows" in str(g)
    joined = [g for g in got if "joined" in str(g)]
    assert all("all of them fail" in str(g) for g in joined)


def test_overload_and_waiting_for_room(probe_store):
    probe_store.save_probe(delay=0.4)
    X = rows(6, seed=9)
    settings = embedml.Batching(max_batch_size=2, max_queue=2, max_wait_ms=0)
    with probe_store.load("probe", batching=settings) as h:
        SEEN.clear()
        first = threading.Thread(target=h.predict, args=(X[0],))
        first.start()
        wait_until(lambda: X[0, 0] in SEEN, "the first call to reach the model")
        queued = [threading.Thread(target=h.predict, args=(X[i],)) for i in (1, 2)]
        for t in queued:
            t.start()
        wait_until(lambda: h.batching_stats().queued == 2, "two queued calls")
        with pytest.raises(embedml.OverloadedError, match="max_queue=2"):
            h.predict(X[3])
        with pytest.raises(embedml.PredictionTimeoutError):
            h.predict(X[4], timeout_ms=1)
        got = h.predict(X[5], timeout_ms=20_000)  # waits for room, then runs
        for t in [first, *queued]:
            t.join()
        stats = h.batching_stats()
    assert np.isclose(got, expected(X[5])[0])
    assert stats.rejected == 1 and stats.timed_out == 1
    assert X[3, 0] not in SEEN and X[4, 0] not in SEEN


def test_deadline_drops_request_before_the_model(probe_store):
    probe_store.save_probe(delay=0.3)
    X = rows(4, seed=10)
    with probe_store.load("probe", batching=embedml.Batching(max_wait_ms=0)) as h:
        SEEN.clear()
        first = threading.Thread(target=h.predict, args=(X[0],))
        first.start()
        wait_until(lambda: X[0, 0] in SEEN, "the first call to reach the model")
        with pytest.raises(TimeoutError) as info:
            h.predict(X[1], timeout_ms=20)
        assert isinstance(info.value, embedml.PredictionTimeoutError)
        first.join()
        assert np.isclose(h.predict(X[2]), expected(X[2])[0])  # the queue moved on
        assert h.batching_stats().timed_out == 1
    assert X[1, 0] not in SEEN


def test_default_deadline_and_late_result_is_not_delivered(probe_store):
    probe_store.save_probe(delay=0.3)
    X = rows(4, seed=11)
    settings = embedml.Batching(max_wait_ms=0, timeout_ms=150)
    with probe_store.load("probe", batching=settings) as h:
        SEEN.clear()
        first = threading.Thread(target=h.predict, args=(X[0],), kwargs={"timeout_ms": 60_000})
        first.start()
        wait_until(lambda: X[0, 0] in SEEN, "the first call to reach the model")
        # queued behind a 300 ms call, each with 150 ms (the default) or 60 s to live
        got = run_threads(
            lambda i, t: h.predict(X[i], timeout_ms=t), [(1, None), (2, 60_000)]
        )
        first.join()
    assert isinstance(got[0], embedml.PredictionTimeoutError)
    assert np.isclose(got[1], expected(X[2])[0])
    assert X[1, 0] not in SEEN


def test_apredict_deadline(probe_store):
    probe_store.save_probe(delay=0.3)
    X = rows(3, seed=12)
    with probe_store.load("probe", batching=embedml.Batching(max_wait_ms=0)) as h:

        async def go():
            slow = asyncio.ensure_future(h.apredict(X[0]))
            await asyncio.sleep(0.05)
            with pytest.raises(embedml.PredictionTimeoutError):
                await h.apredict(X[1], timeout_ms=10)
            return await slow

        assert np.isclose(asyncio.run(go()), expected(X[0])[0])
        assert h.batching_stats().timed_out == 1


def test_cancelled_apredict_is_dropped_from_the_queue(probe_store):
    probe_store.save_probe(delay=0.3)
    X = rows(3, seed=16)
    with probe_store.load("probe", batching=embedml.Batching(max_wait_ms=0)) as h:
        SEEN.clear()

        async def go():
            slow = asyncio.ensure_future(h.apredict(X[0]))
            while X[0, 0] not in SEEN:  # the first call is in the model
                await asyncio.sleep(0.002)
            doomed = asyncio.ensure_future(h.apredict(X[1]))
            while h.batching_stats().queued == 0:
                await asyncio.sleep(0.002)
            doomed.cancel()
            with pytest.raises(asyncio.CancelledError):
                await doomed
            return await slow, await h.apredict(X[2])

        first, third = asyncio.run(go())
        stats = h.batching_stats()
    assert np.isclose(first, expected(X[0])[0]) and np.isclose(third, expected(X[2])[0])
    assert X[1, 0] not in SEEN and stats.queued == 0
    # the cancelled call ended in the metrics too (else close() would wait for it)
    assert h.metrics()["errors_by_type"] == {"CancelledError": 1}


# ---------------------------------------------------------------- lifecycle


def test_close_while_busy_drains_and_leaves_no_thread(probe_store):
    probe_store.save_probe(delay=0.05)
    X = rows(12, seed=13)
    before = set(threading.enumerate())
    h = probe_store.load("probe", batching=embedml.Batching(max_batch_size=2))
    box = {}

    async def tasks():
        return await asyncio.gather(*(h.apredict(X[i]) for i in range(8, 12)))

    loop_thread = threading.Thread(target=lambda: box.update(r=asyncio.run(tasks())))
    results: list = [None] * 8

    def call(i):
        try:
            results[i] = h.predict(X[i])
        except BaseException as exc:  # noqa: BLE001
            results[i] = exc

    ts = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    loop_thread.start()
    wait_until(lambda: h.batching_stats().requests == 12, "all 12 calls to be queued")
    h.close()  # returns once the queue is drained
    assert h.batching_stats().queued == 0
    for t in [*ts, loop_thread]:
        t.join()
    assert np.allclose(np.asarray(results, dtype=float), expected(X[:8]))
    assert np.allclose(box["r"], expected(X[8:]))
    with pytest.raises(embedml.HandleClosedError):
        h.predict(X[0])
    with pytest.raises(embedml.HandleClosedError):
        asyncio.run(h.apredict(X[0]))
    assert set(threading.enumerate()) == before
    h.close()  # idempotent


def test_calls_after_close_of_the_batcher_raise(probe_store):
    probe_store.save_probe()
    h = probe_store.load("probe", batching=True)
    h.predict(np.zeros(4))
    pipe = h._pipe
    pipe.close()  # what a hot swap does to the old pipeline
    pipe.close()  # and again: safe
    with pytest.raises(embedml.HandleClosedError):
        pipe.batcher.submit(BatchItem(pipe.prepare_one(np.zeros(4)), None))
    h.close()


@pytest.mark.parametrize("inline_ms", [0, 0.5])
def test_batched_calls_leave_no_reference_cycles(probe_store, inline_ms):
    """A batched call's request and future are freed by reference counting when it returns:
    no cycle is left for the garbage collector, which under load ran every few batches
    (and held every call's request, future and arrays until then)."""
    probe_store.save_probe()
    X = rows(512, seed=11)
    settings = embedml.Batching(max_batch_size=16, inline_ms=inline_ms)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        with probe_store.load("probe", batching=settings) as h:
            got = _inline_run(h, X)  # worker-thread batches, or inline ones on the loop
            threads = run_threads(lambda i: float(h.predict(X[i])), [(i,) for i in range(64)])
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage if type(o) in (BatchItem, asyncio.Future)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    np.testing.assert_allclose(got, expected(X))
    np.testing.assert_allclose(threads, expected(X[:64]))
    assert cyclic == []


def test_interpreter_exit_does_not_hang(subprocess_env, store):
    store.save("probe", Probe(delay=0.01))
    code = f"""
import asyncio, threading
import numpy as np
import embedml
h = embedml.ModelStore({str(store.root)!r}).load("probe", batching=embedml.Batching(max_batch_size=4))
async def go():
    await asyncio.gather(*(h.apredict(np.full(4, i, dtype=float)) for i in range(20)))
asyncio.run(go())
ts = [threading.Thread(target=h.predict, args=(np.ones(4),)) for _ in range(8)]
for t in ts: t.start()
for t in ts: t.join()
# a call still running when the main thread ends, handle never closed
threading.Thread(target=h.predict, args=(np.ones(4),)).start()
print("done", h.batching_stats().requests)
"""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(subprocess_env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["done", "29"] or proc.stdout.split() == ["done", "28"]

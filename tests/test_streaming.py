"""Streaming: predict_stream / apredict_stream keep input order, micro-batch, flush partial
batches after max_wait_ms, apply back-pressure, isolate bad records, and clean up."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from pydantic import BaseModel

import embedml
from embedml.offline.streaming import predict_rows
from helpers_models import CALLS, CountingModel, sk_logreg

NAMES = ["a", "b", "c", "d"]


class Features(BaseModel):
    a: float
    b: float
    c: float
    d: float


def _records(n: int, seed: int = 0) -> list[dict[str, float]]:
    X = np.random.default_rng(seed).normal(size=(n, 4))
    return [dict(zip(NAMES, map(float, r))) for r in X]


@pytest.fixture
def handle(store):
    store.save("lr", sk_logreg(), input_schema=Features)
    with store.load("lr") as h:
        yield h


def test_results_in_input_order_equal_to_predict_batch(handle):
    records = _records(1000)
    before = set(threading.enumerate())
    got = list(handle.predict_stream(iter(records), batch_size=64))
    assert np.array_equal(np.array(got), handle.predict_batch(records))
    time.sleep(0.1)
    assert set(threading.enumerate()) == before


def test_micro_batches_are_at_most_batch_size(store):
    store.save("counter", CountingModel("stream-batches"), input_schema=Features)
    CALLS["stream-batches"] = 0
    with store.load("counter") as h:
        out = list(h.predict_stream(_records(250), batch_size=50, max_wait_ms=1000))
    assert len(out) == 250
    # the source never makes a batch wait, so all 5 batches are full: 5 model calls
    assert CALLS["stream-batches"] == 5


def test_a_partial_batch_is_flushed_after_max_wait(handle):
    gate = threading.Event()
    records = _records(4)

    def source():
        yield from records[:3]
        gate.wait(10)  # the producer stalls; the 3 waiting records must not
        yield records[3]

    stream = handle.predict_stream(source(), batch_size=100, max_wait_ms=20)
    first = [next(stream) for _ in range(3)]  # returns while the source is stalled
    assert not gate.is_set()
    gate.set()
    rest = list(stream)
    assert np.array_equal(np.array(first + rest), handle.predict_batch(records))


def test_back_pressure_bounds_what_is_read_ahead(handle):
    pulled = 0

    def source():
        nonlocal pulled
        for r in _records(10_000):
            pulled += 1
            yield r

    before = set(threading.enumerate())
    stream = handle.predict_stream(source(), batch_size=10, max_wait_ms=1)
    taken = [next(stream) for _ in range(25)]
    time.sleep(0.2)  # give the reader every chance to run ahead
    assert len(taken) == 25
    # consumed 25 (3 batches of 10), at most 2 * batch_size queued, one in the reader's hand
    assert pulled <= 30 + 20 + 1
    stream.close()  # an early close stops the reader thread
    time.sleep(0.1)
    assert set(threading.enumerate()) == before


def test_bad_records_raise_or_are_yielded_in_place(handle):
    records = _records(30)
    records[7] = {**records[7], "b": "oops"}
    records[20] = {"a": 1.0}
    got = list(handle.predict_stream(records, batch_size=8, on_error="yield"))
    assert len(got) == 30
    errors = {i: g for i, g in enumerate(got) if isinstance(g, embedml.SchemaError)}
    assert set(errors) == {7, 20}
    assert errors[7].index == 7 and errors[7].field == "b"
    assert errors[20].index == 20 and errors[20].field == "b"
    good = [r for i, r in enumerate(records) if i not in errors]
    assert np.array_equal(
        np.array([g for i, g in enumerate(got) if i not in errors]), handle.predict_batch(good)
    )

    seen = []
    with pytest.raises(embedml.SchemaError) as info:
        for result in handle.predict_stream(records, batch_size=8):
            seen.append(result)
    assert info.value.index == 7 and len(seen) == 7


def test_an_error_in_the_source_reaches_the_consumer_after_earlier_results(handle):
    def source():
        yield from _records(5)
        raise OSError("feed dropped")

    seen = []
    with pytest.raises(OSError, match="feed dropped"):
        for result in handle.predict_stream(source(), batch_size=2):
            seen.append(result)
    assert len(seen) == 5


def test_predict_rows_isolates_model_errors(store):
    class Features1(BaseModel):
        a: float

    from sklearn.linear_model import LinearRegression

    X = np.arange(20, dtype=float).reshape(-1, 1)
    store.save("lin", LinearRegression().fit(X, 2 * X[:, 0]), input_schema=Features1)
    with store.load("lin", allow_nan=True) as h:
        # NaN passes the schema when allowed, but sklearn refuses it: a PredictionError per row
        records = [{"a": float(i)} for i in range(10)]
        records[4] = {"a": float("nan")}
        results = predict_rows(h, records)
    assert isinstance(results[4], embedml.PredictionError) and results[4].index == 4
    assert [round(r, 6) for i, r in enumerate(results) if i != 4] == [
        2.0 * i for i in range(10) if i != 4
    ]


def test_argument_errors(handle):
    for kwargs in ({"batch_size": 0}, {"max_wait_ms": -1}, {"on_error": "ignore"}):
        with pytest.raises(embedml.ConfigurationError):
            handle.predict_stream([], **kwargs)
        with pytest.raises(embedml.ConfigurationError):
            handle.apredict_stream(_never(), **kwargs)


async def _never():
    await asyncio.sleep(3600)
    yield None


def test_apredict_stream_async_source(handle):
    records = _records(300)
    records[100] = {**records[100], "c": None}

    async def source():
        for i, r in enumerate(records):
            if i % 50 == 0:
                await asyncio.sleep(0.005)
            yield r

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        got = [r async for r in handle.apredict_stream(source(), batch_size=32, on_error="yield")]
        t.cancel()
        return got, ticks

    got, ticks = asyncio.run(main())
    assert ticks > 0  # the loop kept running while batches were scored
    assert isinstance(got[100], embedml.SchemaError) and got[100].index == 100
    good = [r for i, r in enumerate(records) if i != 100]
    assert np.array_equal(np.array(got[:100] + got[101:]), handle.predict_batch(good))


def test_apredict_stream_flushes_after_max_wait_and_closes_early(handle):
    records = _records(3)

    async def source():
        for r in records:
            yield r
        await asyncio.sleep(30)  # stalls: only an early close ends this
        yield records[0]

    async def main():
        stream = handle.apredict_stream(source(), batch_size=100, max_wait_ms=20)
        first = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        return first

    before = set(threading.enumerate())
    first = asyncio.run(asyncio.wait_for(main(), 10))
    assert np.array_equal(np.array(first), handle.predict_batch(records))
    time.sleep(0.1)
    assert set(threading.enumerate()) == before  # asyncio.run shut its worker threads down


def test_stream_into_a_two_input_model(store):
    from helpers_models import onnx_two_inputs

    store.save("two", onnx_two_inputs())
    rng = np.random.default_rng(2)
    records = [{"a": rng.normal(size=2).astype(np.float32), "b": rng.normal(size=2).astype(np.float32)} for _ in range(25)]
    records[6] = {"a": records[6]["a"]}  # b missing
    with store.load("two") as h:
        got = list(h.predict_stream(records, batch_size=10, on_error="yield"))
    assert isinstance(got[6], embedml.SchemaError) and got[6].index == 6
    for i, r in enumerate(got):
        if i != 6:
            np.testing.assert_allclose(r["sum"], records[i]["a"] + records[i]["b"], rtol=1e-6)
            np.testing.assert_allclose(r["prod"], records[i]["a"] * records[i]["b"], rtol=1e-6)

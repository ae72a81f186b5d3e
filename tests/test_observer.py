"""The observation path: what each kind of sink receives, how the handle's close and a
sink's flush wait (on conditions, with deadlines), and metrics measured on an injected clock."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import embedml
from embedml.observe.hooks import RowSink, Sink
from embedml.observe.metrics import Metrics
from embedml.observe.records import FinishedCall, PredictionRecord, RowBatch
from embedml.testing import FakeClock


@pytest.fixture
def lr(store, logreg):
    store.save("lr", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    return store


class Kept:
    """Keeps what its sink was given, in ``got``."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.got: list = []


class Rows(Kept, RowSink):
    def write_rows(self, batches: list[RowBatch]) -> None:
        self.got.extend(batches)


class Records(Kept, Sink):
    def write(self, records: list[PredictionRecord]) -> None:
        self.got.extend(records)


def test_a_row_sink_gets_the_rows_of_successful_calls_and_a_record_sink_every_call(
    lr, iris_like, threads_checked
):
    X, _ = iris_like
    rows, records = Rows(), Records()
    with lr.load("lr", hooks=[rows, records]) as h:
        h.predict(X[0])
        h.predict_batch(X[1:4])
        with pytest.raises(embedml.SchemaError):
            h.predict(np.zeros(3))
        assert rows.flush() and records.flush()
    assert [type(b) for b in rows.got] == [RowBatch, RowBatch]  # not the failed call
    assert [b.rows for b in rows.got] == [1, 3]
    np.testing.assert_array_equal(np.concatenate([b.inputs for b in rows.got]), X[:4])
    assert [type(r) for r in records.got] == [PredictionRecord] * 3
    assert [r.rows for r in records.got] == [1, 3, 0]  # validation failed: no rows
    assert records.got[2].error_type == "SchemaError" and records.got[2].inputs is None
    assert rows.stats()["written"] == 2 and records.stats()["written"] == 3


def test_a_sink_that_sets_the_old_wants_records_flag_is_refused_with_the_way_out():
    with pytest.raises(TypeError, match="RowSink"):

        class Old(Sink):
            wants_records = False

            def write(self, records):
                pass


class Gated(Records):
    """Its writes wait until ``gate`` is set."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.gate = threading.Event()

    def write(self, records: list[PredictionRecord]) -> None:
        assert self.gate.wait(60)
        super().write(records)


def test_flush_waits_for_the_writer_and_gives_up_at_its_deadline(lr, iris_like, threads_checked):
    X, _ = iris_like
    sink = Gated()
    with lr.load("lr", hooks=[sink]) as h:
        for x in X[:5]:
            h.predict(x)
        assert sink.flush(timeout=0.05) is False  # the writer is held: not written yet
        sink.gate.set()
        assert sink.flush(timeout=60) is True
        assert sink.stats()["written"] == 5 and sink.stats()["queued"] == 0


class HeldAtSubmit(Records):
    """The caller's thread stops in ``submit`` until ``gate`` is set."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def submit(self, item) -> bool:
        self.entered.set()
        assert self.gate.wait(60)
        return super().submit(item)


def test_close_waits_until_a_finished_call_has_reached_its_sinks(lr, iris_like, threads_checked):
    # A call counts as in flight until every sink has it: a close() that ran while the
    # call was still handing its record over must not close the sink under it (before,
    # the metrics counted the call as ended first, and the record was dropped).
    X, _ = iris_like
    sink = HeldAtSubmit()
    h = lr.load("lr", hooks=[sink])
    caller = threading.Thread(target=h.predict, args=(X[0],))
    caller.start()
    assert sink.entered.wait(60)
    closer = threading.Thread(target=h.close, kwargs={"timeout": 60})
    closer.start()
    closer.join(2)  # (before: close() returned here, having closed the sink)
    sink.gate.set()
    caller.join(60)
    closer.join(60)
    assert sink.closed
    assert sink.stats()["dropped"] == 0 and sink.stats()["written"] == 1
    assert [r.rows for r in sink.got] == [1]


def _call(rows: int, error: BaseException | None = None) -> FinishedCall:
    return FinishedCall(
        ("m", "1", None), 1.0, rows, validated=1.001, answered=1.003, ended=1.004, error=error
    )


def test_metrics_measure_uptime_and_the_throughput_window_on_their_clock():
    clock = FakeClock(1000.0, wall=1.8e9)
    metrics = Metrics(clock)
    for _ in range(30):
        metrics.begin()
        metrics.end(_call(2))
    metrics.begin()
    metrics.end(_call(1, ValueError("bad")))
    metrics.begin()  # still running
    clock.advance(10.0)
    snap = metrics.snapshot()
    assert snap["uptime_seconds"] == 10.0 and snap["in_flight"] == 1 == metrics.in_flight
    assert snap["requests"] == 31 and snap["rows"] == 60 and snap["errors"] == 1
    assert snap["throughput"] == {
        "window_seconds": 10.0, "requests_per_second": 3.1, "rows_per_second": 6.0
    }  # fmt: skip
    assert snap["last_error"]["time"] == 1.8e9
    assert snap["latency_ms"]["validation"]["mean"] == pytest.approx(1.0)
    assert snap["latency_ms"]["model"]["mean"] == pytest.approx(2.0)
    assert snap["latency_ms"]["total"]["count"] == 31
    clock.advance(61.0)  # the calls left the one-minute window
    snap = metrics.snapshot()
    assert snap["throughput"]["window_seconds"] == 60.0
    assert snap["throughput"]["requests_per_second"] == 0.0 and snap["requests"] == 31


class RaisingAtSubmit(Sink):
    def submit(self, item) -> bool:
        raise RuntimeError("a broken sink")

    def write(self, records) -> None:
        pass


def test_a_sink_that_raises_when_offered_a_call_costs_only_itself(lr, iris_like, caplog):
    X, _ = iris_like
    records = Records()
    with lr.load("lr", hooks=[RaisingAtSubmit(), records]) as h:
        assert h.predict(X[0]) in (0, 1, 2)
        assert records.flush()
    assert len(records.got) == 1 and h.metrics()["requests"] == 1
    assert any("broken sink" in r.getMessage() or r.exc_info for r in caplog.records)

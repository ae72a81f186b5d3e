"""Prediction records do not change after the fact: a caller that edits the output array it
got (in place) changes neither what sinks write nor what ``log_outcome`` scores against
(docs/security.md, "Guarantees"; docs/observability.md). Sinks and the outcome join get a
copy of the outputs; the caller keeps a normal, writable array."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import embedml
from embedml.observe.hooks import Sink
from helpers_models import CountingModel

pytestmark = pytest.mark.timeout(60)


class Collect(Sink):
    """Keeps the records it is given (on its writer thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list = []

    def write(self, records):
        self.records.extend(records)


class Pair:
    """Returns two columns per row: the row sum and its negation (2-D outputs, so that
    ``predict`` returns a writable row of the batch's output array)."""

    def predict(self, X):
        s = np.asarray(X, dtype=np.float64).sum(axis=1)
        return np.stack([s, -s], axis=1)


@pytest.mark.parametrize("batching", [None, embedml.Batching(max_wait_ms=0)])
def test_editing_the_output_in_place_does_not_change_the_record(store, batching):
    store.save("pair", Pair())
    store.save("sum", CountingModel("snapshots"))
    sink = Collect()
    log = store.root / "log.jsonl"
    jsonl = embedml.JsonlSink(log)
    with store.load("pair", batching=batching, hooks=[sink, jsonl]) as h:
        one = h.predict(np.ones(3), details=True)
        many = h.predict_batch(np.ones((2, 3)), details=True)
        via_async = asyncio.run(h.apredict(np.ones(3), details=True))
        for p in (one, many, via_async):
            p.output[..., 0] = -99.0  # the caller reuses its buffer
        assert sink.flush(30) and jsonl.flush(30)
        # the outcome join still sees what the model answered: class 0 (3 > -3) each row
        h.log_outcome(one.request_id, [0])
        h.log_outcome(many.request_id, [0, 0])
        assert h.metrics()["quality"]["accuracy"] == 1.0
    outputs = {r.request_id: np.asarray(r.raw_outputs).tolist() for r in sink.records}
    assert outputs[one.request_id] == [[3.0, -3.0]]
    assert outputs[many.request_id] == [[3.0, -3.0], [3.0, -3.0]]
    assert outputs[via_async.request_id] == [[3.0, -3.0]]
    written = {r["request_id"]: r["outputs"] for r in embedml.read_jsonl(log)}
    assert (
        written[one.request_id] == [[3.0, -3.0]] and written[many.request_id] == [[3.0, -3.0]] * 2
    )
    # and the caller's array stays its own to change
    assert one.output.flags.writeable and many.output.tolist() == [[-99.0, -3.0]] * 2


def test_editing_a_1d_output_in_place_does_not_change_the_record(store):
    store.save("sum", CountingModel("snapshots"))
    sink = Collect()
    with store.load("sum", hooks=[sink]) as h:
        out = h.predict_batch(np.ones((3, 2)), details=True)
        out.output[:] = -1.0
        assert sink.flush(30)
        h.log_outcome(out.request_id, [2.0, 2.0, 2.0])
        assert h.metrics()["quality"]["mae"] == 0.0
    assert np.asarray(sink.records[0].raw_outputs).tolist() == [2.0, 2.0, 2.0]

"""JsonlSink (``arrays="list"``) turns the arrays of a whole write batch into lists at once:
the text must be exactly what encoding each record's ``to_dict()`` on its own writes, for
every kind of record."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from pydantic import BaseModel
from sklearn.dummy import DummyRegressor

import embedml
from embedml.observe.records import encode_json
from helpers_models import onnx_linear, onnx_two_inputs, sk_logreg


class Visit(BaseModel):
    age: float
    city: str


def mixed_records(store) -> list[embedml.PredictionRecord]:
    """Records of real calls: single rows and batches, float32 / float64 / int inputs,
    int labels and 1-D / 2-D outputs, NaN inputs, failed calls, multi-input dicts, and
    record-schema rows; in one list, as one write batch would hold them."""
    records: list[embedml.PredictionRecord] = []
    store.save("lr", sk_logreg())
    store.save("lin", onnx_linear())
    store.save("two", onnx_two_inputs())
    store.save(
        "visits", DummyRegressor().fit(np.zeros((3, 2)), [1.0, 2.0, 3.0]), input_schema=Visit
    )
    rng = np.random.default_rng(0)
    with store.load("lr", hooks=[records.append], allow_nan=True) as lr:
        lr.predict(rng.normal(size=4))
        lr.predict_batch(rng.normal(size=(5, 4)))
        lr.predict(np.array([1, 2, 3, 4]))
        with pytest.raises(embedml.PredictionError):  # sklearn refuses NaN: a failed call
            lr.predict(np.array([np.nan, 1.0, 2.0, 3.0]))
    with store.load("lin", hooks=[records.append], allow_nan=True) as lin:
        lin.predict(rng.normal(size=3).astype(np.float32))
        lin.predict_batch(rng.normal(size=(3, 3)).astype(np.float32))
        lin.predict_batch(np.full((2, 3), np.inf, dtype=np.float32))
    with store.load("two", hooks=[records.append]) as two:
        two.predict({"a": np.ones(2, np.float32), "b": np.arange(2, dtype=np.float32)})
    with store.load("visits", hooks=[records.append]) as visits:
        visits.predict({"age": 40, "city": "Lyon, FR"})
    return records


def test_batch_encoding_writes_the_same_text_as_one_record_at_a_time(store, tmp_path):
    records = mixed_records(store)
    assert len(records) == 9 and sum(r.error is not None for r in records) == 1
    # the reference: each record on its own (copies, which have built no JSON values yet)
    alone = [encode_json(dataclasses.replace(r).to_dict()) + "\n" for r in records]
    sink = embedml.JsonlSink(tmp_path / "p.jsonl")
    sink.write(records)  # on the test thread: the writer thread is not started
    sink.close()
    batched = (tmp_path / "p.jsonl").read_text().splitlines(keepends=True)
    assert batched == alone
    for line, r in zip(batched, records):
        d = json.loads(line)
        # (compared as JSON text: NaN != NaN)
        assert json.dumps([d["inputs"], d["outputs"]]) == json.dumps([r.inputs, r.outputs])
        assert d["rows"] == r.rows and d["error"] == r.error


def test_encode_falls_back_to_json_for_values_pydantic_core_cannot_write():
    class Odd:
        def __str__(self) -> str:
            return "odd"

    value = {"a": [1.5, float("nan"), 2**70], "b": Odd()}
    assert json.loads(encode_json(value), parse_constant=str) == {
        "a": [1.5, "NaN", 2**70],
        "b": "odd",
    }
    assert encode_json([0.1, 1e-300, -float("inf")]) == "[0.1,1e-300,-Infinity]"

"""Property-based tests: arbitrary JSON-like values (and arrays) thrown at ``predict`` and
``predict_batch`` of record, tensor and schemaless handles. The only outcomes allowed are a
correct result or an :class:`EmbedMLError` subclass, and the handle serves a good call
correctly afterwards."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

import embedml
from helpers_models import (
    LINEAR_B,
    LINEAR_W,
    CountingModel,
    RowEcho,
    onnx_linear,
    onnx_two_inputs,
    sk_logreg,
)

SETTINGS = settings(
    max_examples=int(os.environ.get("EMBEDML_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["1.5", "nan", "inf", "true", "", "a", 10**400, -(2**64), 2**63])
)
# dict keys of mixed types too (sorting such keys for an error message used to raise)
keys = st.text(max_size=5) | st.integers(-3, 3) | st.none() | st.tuples(st.integers(0, 2))
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=20,
)


def _deep(depth: int, kind: str) -> object:
    value: object = 1.0
    for _ in range(depth):
        value = {"a": value} if kind == "dict" else [value]
    return value


# values nested far beyond the recursion limit (their repr used to raise RecursionError)
deep = st.builds(_deep, st.integers(1, 5000), st.sampled_from(["dict", "list"]))


def _frame(columns: list, values: np.ndarray):
    import pandas as pd

    return pd.DataFrame(values[:, : len(columns)], columns=columns)


# DataFrames whose columns may repeat, be missing or be unknown (ints among them)
frames = st.builds(
    _frame,
    st.lists(st.sampled_from(["a", "b", "c", "d", "a", "x", 1]), min_size=1, max_size=6),
    hnp.arrays(np.float64, st.tuples(st.integers(1, 3), st.just(6)), elements=st.floats(-1e3, 1e3)),
)


class Features(BaseModel):
    a: float
    b: float
    c: float
    d: float


class Mixed(BaseModel):
    x: float
    n: int
    flag: bool
    tag: str
    opt: float | None = None


FIELDS = ["a", "b", "c", "d"]
records = st.one_of(
    json_like,
    st.fixed_dictionaries({f: scalars for f in FIELDS}),
    st.fixed_dictionaries({f: scalars for f in FIELDS}, optional={"extra": scalars}),
)
mixed_records = st.one_of(
    json_like,
    st.fixed_dictionaries(
        {"x": scalars, "n": scalars, "flag": scalars, "tag": scalars, "opt": scalars}
    ),
)
arrays = hnp.arrays(
    dtype=st.sampled_from([np.float64, np.float32, np.int64, np.bool_, np.uint8, np.object_, "U3"]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


def outcome(call, *args):
    """Run a call; return ("ok", result) or ("error", exc). Anything else fails the test."""
    try:
        return "ok", call(*args)
    except embedml.EmbedMLError as exc:
        return "error", exc


@pytest.fixture(scope="module")
def handles(tmp_path_factory):
    store = embedml.ModelStore(tmp_path_factory.mktemp("props") / "store")
    store.save("record", sk_logreg(), input_schema=Features)
    store.save("mixed", RowEcho(), input_schema=Mixed)
    store.save("tensor", onnx_linear())
    store.save("free", CountingModel("props"))
    store.save("two", onnx_two_inputs())
    opened = {name: store.load(name) for name in ("record", "mixed", "tensor", "free", "two")}
    yield opened
    for h in opened.values():
        h.close()


GOOD = np.array([[0.5, -1.0, 2.0, 0.25]])


def _record_still_works(h):
    assert h.predict(dict(zip(FIELDS, GOOD[0]))) == sk_logreg().predict(GOOD)[0]


@SETTINGS
@given(record=records, batch=st.lists(records, max_size=4) | json_like)
@example(
    record={"a": 10**400, "b": 1, "c": 1, "d": 1}, batch=[{"a": 1, "b": 1, "c": 1, "d": -(10**400)}]
)
@example(
    record={"a": float("nan"), "b": 1, "c": 1, "d": 1}, batch=[{"a": "1", "b": 1, "c": 1, "d": 1}]
)
def test_record_handle(handles, record, batch):
    h = handles["record"]
    kind, got = outcome(h.predict, record)
    if kind == "ok":
        row = np.array([[float(record[f]) for f in FIELDS]])
        assert got == sk_logreg().predict(row)[0]
    kind, got = outcome(h.predict_batch, batch)
    if kind == "ok":
        rows = np.array([[float(r[f]) for f in FIELDS] for r in batch])
        np.testing.assert_array_equal(got, sk_logreg().predict(rows))
    _record_still_works(h)


@SETTINGS
@given(value=deep | frames | arrays | st.dictionaries(keys, scalars, max_size=6) | records)
@example(value={"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, 1: 5, "z": 6})
def test_record_handle_hostile_containers(handles, value):
    """Deep nesting, DataFrames with repeated or odd columns, arrays of any shape (0-d
    too), keys of mixed types: a correct answer or an EmbedMLError."""
    h = handles["record"]
    for call in (h.predict, h.predict_batch):
        kind, got = outcome(call, value)
        if kind == "ok":
            if hasattr(value, "columns"):
                rows = value[FIELDS].to_numpy(dtype=np.float64)
            elif isinstance(value, dict):
                rows = np.array([[float(value[f]) for f in FIELDS]])
            else:
                rows = np.asarray(value, dtype=np.float64).reshape(-1, 4)
            np.testing.assert_array_equal(np.ravel(got), sk_logreg().predict(rows))
    _record_still_works(h)


@SETTINGS
@given(record=mixed_records, batch=st.lists(mixed_records, max_size=4) | json_like)
def test_mixed_record_handle(handles, record, batch):
    h = handles["mixed"]
    for one, value in ((True, record), (False, batch)):
        kind, got = outcome(h.predict if one else h.predict_batch, value)
        if kind == "ok":
            rows = [value] if one else value
            out = [got] if one else list(got)
            assert len(out) == len(rows)
            for r, o in zip(rows, out):
                assert repr(r["tag"]) in o  # the string reached the model unchanged
    good = {"x": 1.0, "n": 2, "flag": True, "tag": "ok", "opt": None}
    assert h.predict(good) == "[1.0, 2, True, 'ok', nan]"


@SETTINGS
@given(value=json_like | arrays | deep)
def test_tensor_handle(handles, value):
    h = handles["tensor"]
    for call in (h.predict, h.predict_batch):
        kind, got = outcome(call, value)
        if kind == "ok":
            x = np.asarray(value, dtype=np.float32).reshape(-1, 3)
            expect = x @ LINEAR_W + LINEAR_B
            np.testing.assert_allclose(np.asarray(got).reshape(expect.shape), expect, rtol=1e-5)
    np.testing.assert_allclose(
        h.predict_batch(np.ones((2, 3), np.float32)),
        np.ones((2, 3)) @ LINEAR_W + LINEAR_B,
        rtol=1e-5,
    )


@SETTINGS
@given(value=json_like | arrays | deep | frames)
def test_schemaless_handle(handles, value):
    h = handles["free"]
    for one in (True, False):
        kind, got = outcome(h.predict if one else h.predict_batch, value)
        if kind == "ok":
            batch = np.asarray([value] if one else value, dtype=np.float64)
            expect = batch.sum(axis=1)
            np.testing.assert_array_equal([got] if one else got, expect)
    assert h.predict_batch(np.ones((2, 3))).tolist() == [3.0, 3.0]


two_inputs = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), json_like | arrays, max_size=3
) | st.fixed_dictionaries({"a": json_like | arrays, "b": json_like | arrays})


@SETTINGS
@given(value=two_inputs | json_like)
@example(value={"a": None, "b": [None, []]})
def test_multi_input_tensor_handle(handles, value):
    h = handles["two"]
    for one in (True, False):
        kind, got = outcome(h.predict if one else h.predict_batch, value)
        if kind == "ok":
            a = np.asarray(value["a"], dtype=np.float32).reshape(-1, 2)
            b = np.asarray(value["b"], dtype=np.float32).reshape(-1, 2)
            np.testing.assert_allclose(np.asarray(got["sum"]).reshape(-1, 2), a + b, rtol=1e-6)
            np.testing.assert_allclose(np.asarray(got["prod"]).reshape(-1, 2), a * b, rtol=1e-6)
    out = h.predict_batch({"a": np.ones((2, 2), np.float32), "b": np.full((2, 2), 3, np.float32)})
    assert out["sum"].tolist() == [[4.0, 4.0], [4.0, 4.0]]

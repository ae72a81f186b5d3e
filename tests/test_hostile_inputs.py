"""Hostile inputs found by the security review (issue 12, "Low"): each one is a typed
:class:`SchemaError` raised before the model runs, or a correct answer; never a raw
exception, and the handle serves the next call (docs/security.md, "Guarantees")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from helpers_models import CALLS, CountingModel, onnx_linear


class Floats(BaseModel):
    a: float
    b: float


class Ints(BaseModel):
    a: int
    b: float


def _nested(depth: int, leaf: object = 1.0, kind: type = dict) -> object:
    value = leaf
    for _ in range(depth):
        value = {"x": value} if kind is dict else [value]
    return value


@pytest.fixture(scope="module")
def handles(tmp_path_factory):
    store = embedml.ModelStore(tmp_path_factory.mktemp("hostile") / "store")
    store.save("floats", CountingModel("hostile-floats"), input_schema=Floats)
    store.save("ints", CountingModel("hostile-ints"), input_schema=Ints)
    store.save("free", CountingModel("hostile-free"))
    store.save("tensor", onnx_linear())
    hs = {n: store.load(n) for n in ("floats", "ints", "free", "tensor")}
    yield hs
    for h in hs.values():
        h.close()


def _refused(call, *args) -> embedml.SchemaError:
    """The call raises SchemaError, and the model never ran."""
    before = sum(CALLS.values())
    with pytest.raises(embedml.SchemaError) as exc:
        call(*args)
    assert sum(CALLS.values()) == before, "the model was called"
    return exc.value


@pytest.mark.parametrize("kind", [dict, list])
def test_deeply_nested_value_in_a_float_field(handles, kind):
    """The error message's repr used to raise RecursionError."""
    value = _nested(100_000, kind=kind)
    for name in ("floats", "ints"):
        h = handles[name]
        err = _refused(h.predict, {"a": value, "b": 1.0})
        assert err.field == "a" and len(str(err)) < 500
        err = _refused(h.predict_batch, [{"a": 1, "b": 1.0}, {"a": 2, "b": value}])
        assert err.field == "b" and err.index == 1
    _refused(handles["free"].predict_batch, _nested(100_000, kind=list))
    _refused(handles["tensor"].predict_batch, _nested(100_000, kind=list))
    assert handles["floats"].predict({"a": 1.0, "b": 2.0}) == 3.0


def test_dataframe_with_a_duplicated_column(handles):
    """Inputs match by name: two columns named "a" are ambiguous, whatever the model."""
    df = pd.DataFrame([[1.0, 2.0, 3.0]], columns=["a", "b", "a"])
    for name in ("floats", "ints", "free"):
        err = _refused(handles[name].predict_batch, df)
        assert err.field == "a" and "duplicated" in str(err)
    ok = pd.DataFrame([[1.0, 2.0]], columns=["a", "b"])
    assert handles["floats"].predict_batch(ok).tolist() == [3.0]


def test_predict_batch_of_a_0d_array(handles):
    for name in ("floats", "ints", "free", "tensor"):
        err = _refused(handles[name].predict_batch, np.array(5.0))
        assert "0-d" in str(err)


def test_unknown_keys_of_mixed_types(handles):
    """sorted() of unknown keys like "z" and 1 used to raise TypeError."""
    h = handles["floats"]
    weird = {"a": 1.0, "b": 2.0, 1: 3, "z": 4, None: 5, (1, ("deep",)): 6}
    err = _refused(h.predict, weird)
    assert "unknown field" in str(err) and err.index is None
    err = _refused(h.predict_batch, [{"a": 1.0, "b": 2.0}, weird])
    assert err.index == 1
    df = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], columns=["a", "b", 7, "z"])
    assert "unknown column" in str(_refused(h.predict_batch, df))


@pytest.mark.parametrize("big", [2**63, -(2**63) - 1, 2**70, 10**30, 10**400, -(10**400)])
def test_integers_beyond_int64_in_a_numeric_field(handles, big):
    """Refused before the model (they were rounded to float64 in silence, or failed in the
    model), in float and int fields, one record or a batch, and schemaless lists."""
    for name in ("floats", "ints"):
        h = handles[name]
        err = _refused(h.predict, {"a": big, "b": 1.0})
        assert err.field == "a"
        err = _refused(
            h.predict_batch, [{"a": 1, "b": 1.0}, {"a": 2, "b": 2.0}, {"a": big, "b": 1.0}]
        )
        assert err.field == "a" and err.index == 2
    frame = pd.DataFrame({"a": pd.Series([1, big], dtype=object), "b": [1.0, 2.0]})
    err = _refused(handles["floats"].predict_batch, frame)
    assert err.field == "a" and err.index == 1
    free = handles["free"]
    _refused(free.predict, [big, 1.0])
    _refused(free.predict_batch, [[1.0, 2.0], [big, 1.0]])
    _refused(free.predict_batch, np.array([[big, 1.0]], dtype=object))
    # the edges of int64 itself are numbers like any other
    edge = 2**63 - 1 if big > 0 else -(2**63)
    assert handles["ints"].predict({"a": edge, "b": 0.0}) == float(edge)
    assert free.predict_batch([[edge, 0.0]]).tolist() == [float(edge)]

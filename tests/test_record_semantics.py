"""Records follow pydantic's semantics: defaults fill left-out fields, a defaultdict or
Counter does not make up values, and outputs are validated as strictly as inputs."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Literal

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel, Field
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import FunctionTransformer

import embedml


class Visit(BaseModel):
    age: int = Field(ge=0)
    discount: float = 0.25
    plan: Literal[0, 1] = 1
    debt: float | None = None


def _visits_model() -> HistGradientBoostingRegressor:
    rng = np.random.default_rng(0)
    X = np.column_stack(
        [
            rng.integers(18, 80, 200),
            rng.uniform(0, 1, 200),
            rng.integers(0, 2, 200),
            rng.normal(size=200),
        ]
    ).astype(float)
    X[::7, 3] = np.nan
    y = X[:, 0] * 0.1 + X[:, 1] * 3 + X[:, 2] + np.nan_to_num(X[:, 3])
    return HistGradientBoostingRegressor(max_iter=20).fit(X, y)


@pytest.fixture
def visits(store):
    model = _visits_model()
    mv = store.save("visits", model, input_schema=Visit)
    return store, model, mv


def test_defaults_are_stored_in_the_manifest(visits):
    _, _, mv = visits
    fields = json.loads((mv.path / "manifest.json").read_text())["input_schema"]["fields"]
    assert {f["name"]: f.get("default", "-") for f in fields} == {
        "age": "-", "discount": 0.25, "plan": 1, "debt": None,
    }  # fmt: skip


def test_left_out_fields_take_their_defaults(visits):
    store, model, _ = visits
    full = np.array([[40, 0.25, 1, np.nan], [50, 0.5, 0, 2.0]])
    expected = model.predict(full)
    with store.load("visits") as h:
        assert h.predict({"age": 40}) == pytest.approx(expected[0])
        got = h.predict_batch([{"age": 40}, {"age": 50, "discount": 0.5, "plan": 0, "debt": 2.0}])
        np.testing.assert_allclose(got, expected)
        np.testing.assert_allclose(h.predict_batch(pd.DataFrame({"age": [40]})), expected[:1])
        np.testing.assert_allclose(h.predict(Visit(age=40)), expected[0])
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch([{"age": 40}, {"discount": 0.5}])
        assert (exc.value.field, exc.value.index) == ("age", 1)
        with pytest.raises(embedml.SchemaError, match="unknown field"):
            h.predict({"age": 40, "colour": "red"})


def test_defaults_that_pydantic_would_not_check_are_refused_at_save(store):
    class BadDefault(BaseModel):
        age: int = Field(default=-1, ge=0)

    class Factory(BaseModel):
        age: float = Field(default_factory=lambda: 1.0)

    model = LinearRegression().fit(np.array([[1.0], [2.0]]), [1.0, 2.0])
    with pytest.raises(embedml.SchemaError, match="default -1 is outside") as exc:
        store.save("bad", model, input_schema=BadDefault)
    assert exc.value.field == "age"
    with pytest.raises(embedml.SchemaError, match="default_factory"):
        store.save("bad", model, input_schema=Factory)
    assert store.models() == []


class Pair(BaseModel):
    a: float
    b: float


@pytest.mark.parametrize("kind", ["defaultdict", "Counter"])
def test_defaultdict_and_counter_do_not_fill_missing_fields(store, kind):
    model = LinearRegression().fit(np.array([[1.0, 2.0], [2.0, 1.0], [0.0, 0.0]]), [3.0, 1.0, 0.0])
    store.save("pair", model, input_schema=Pair)
    record = defaultdict(float, {"a": 1.0}) if kind == "defaultdict" else Counter({"a": 1})
    with store.load("pair") as h:
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict(record)
        assert exc.value.field == "b"
        with pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch([{"a": 1.0, "b": 2.0}, record])
        assert (exc.value.field, exc.value.index) == ("b", 1)
    assert dict(record) == {"a": 1}  # nor is the caller's record changed


class Label(BaseModel):
    label: int


def test_outputs_are_checked_as_strictly_as_inputs(store):
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    texts = LogisticRegression().fit(X, ["1", "1", "2", "2"])  # labels are strings
    store.save("texts", texts, output_schema=Label)
    with store.load("texts") as h:
        with pytest.raises(embedml.SchemaError, match="output does not match") as exc:
            h.predict(np.array([0.0]))
        assert exc.value.field == "label"
    numbers = LogisticRegression().fit(X, [1, 1, 2, 2])
    store.save("numbers", numbers, output_schema=Label)
    with store.load("numbers") as h:
        assert h.predict(np.array([0.0])).label == 1
        assert [o.label for o in h.predict_batch(X)] == numbers.predict(X).tolist()
    # a float array of whole numbers reads as an int column, as array inputs do
    store.save(
        "floats",
        DummyRegressor(strategy="constant", constant=2.0).fit(X, X[:, 0]),
        output_schema=Label,
    )
    with store.load("floats") as h:
        assert h.predict(np.array([1.0])).label == 2
    store.save(
        "halves",
        DummyRegressor(strategy="constant", constant=2.5).fit(X, X[:, 0]),
        output_schema=Label,
    )
    with store.load("halves") as h, pytest.raises(embedml.SchemaError, match="integer"):
        h.predict(np.array([1.0]))


class Value(BaseModel):
    value: float


class MaybeValue(BaseModel):
    value: float | None


def test_nan_outputs_follow_allow_nan(store):
    log = FunctionTransformer(np.log)
    store.save("log", log, output_schema=Value)
    store.save("maybe", log, output_schema=MaybeValue)
    with store.load("log", method="transform") as h:
        assert h.predict(np.array([np.e])).value == pytest.approx(1.0)
        with pytest.warns(RuntimeWarning), pytest.raises(embedml.SchemaError) as exc:
            h.predict_batch(np.array([[1.0], [-1.0]]))
        assert (exc.value.field, exc.value.index) == ("value", 1)
    with store.load("log", method="transform", allow_nan=True) as h, pytest.warns(RuntimeWarning):
        assert np.isnan(h.predict(np.array([-1.0])).value)
    with store.load("maybe", method="transform") as h, pytest.warns(RuntimeWarning):
        assert np.isnan(h.predict(np.array([-1.0])).value)

"""``embedml.to_jsonable``: every kind of output a handle returns becomes strict JSON."""

from __future__ import annotations

import datetime
import enum
import json

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from helpers_models import dataset, sk_logreg


def strict_json(value):
    """What a web framework sends: ``json.dumps`` without NaN, and back."""
    return json.loads(json.dumps(embedml.to_jsonable(value), allow_nan=False))


class Scored(BaseModel):
    label: int


def test_outputs_of_real_models_become_json(store):
    from skl2onnx import to_onnx

    X, y = dataset()
    store.save("clf", sk_logreg(), method="predict_proba")
    store.save("labels", sk_logreg(), output_schema=Scored)
    zipmap = to_onnx(sk_logreg(), X[:1].astype(np.float32))  # label + ZipMap probabilities
    store.save("zip", zipmap)
    with store.load("clf") as h:
        p = h.predict(X[0], details=True)
        body = strict_json(p)
        assert set(body) == {"output", "request_id", "model", "version"}
        assert body["output"]["probabilities"] == pytest.approx(
            sk_logreg().predict_proba(X[:1])[0].tolist()
        )
        assert body["output"]["classes"] == [0, 1]
        assert (body["model"], body["version"]) == ("clf", "1")
        np.testing.assert_allclose(
            strict_json(h.predict_batch(X[:3]))["probabilities"], sk_logreg().predict_proba(X[:3])
        )
    with store.load("labels") as h:
        assert strict_json(h.predict_batch(X[:2])) == [
            {"label": int(v)} for v in sk_logreg().predict(X[:2])
        ]
    with store.load("zip") as h:
        out = strict_json(h.predict_batch(X[:2].astype(np.float32)))
    assert isinstance(out, dict) and set(out) == {"output_label", "output_probability"}
    assert out["output_label"] == sk_logreg().predict(X[:2]).tolist()
    assert set(out["output_probability"][0]) == {"0", "1"}  # int class keys as strings


def test_numpy_values_nan_and_containers():
    value = {
        1.5: np.float32(0.5), np.int64(2): np.array([[1, 2]], dtype=np.int8),
        True: (np.bool_(True), np.str_("x")), "nan": [np.nan, np.inf, -np.inf, float("nan")],
        "set": frozenset({3}),
    }  # fmt: skip
    assert strict_json(value) == {
        "1.5": 0.5, "2": [[1, 2]], "true": [True, "x"], "nan": [None, None, None, None],
        "set": [3],
    }  # fmt: skip
    assert type(embedml.to_jsonable(np.float64(1.5))) is float
    assert type(embedml.to_jsonable(np.int32(7))) is int

    class Colour(enum.Enum):
        RED = "red"

    assert strict_json([Colour.RED, datetime.date(2026, 1, 2)]) == ["red", "2026-01-02"]


def test_dataframes_keep_a_meaningful_index():
    df = pd.DataFrame({"p": [0.25, np.nan]}, index=pd.Index(["a7", "b9"], name="customer"))
    assert strict_json(df) == [{"customer": "a7", "p": 0.25}, {"customer": "b9", "p": None}]
    assert strict_json(df.reset_index(drop=True)) == [{"p": 0.25}, {"p": None}]
    assert strict_json(pd.DataFrame({"p": [1]}, index=[5])) == [{"index": 5, "p": 1}]
    assert strict_json(df["p"]) == [0.25, None]


def test_what_json_cannot_hold_is_refused():
    for bad in (b"bytes", object(), {(1, 2): 3}):
        with pytest.raises(embedml.SchemaError, match="JSON"):
            embedml.to_jsonable(bad)

"""``predict_batch(df, as_frame=True)``: a DataFrame in comes back as a DataFrame with the
same index; off by default."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from pydantic import BaseModel

import embedml
from helpers_models import dataset, sk_logreg

COLUMNS = ["a", "b", "c", "d"]


def frame(rows: slice = slice(0, 5)) -> pd.DataFrame:
    X, _ = dataset()
    index = pd.Index([f"cust-{i}" for i in range(len(X))], name="customer")[rows]
    return pd.DataFrame(X[rows], columns=COLUMNS, index=index)


class Row(BaseModel):
    a: float
    b: float
    c: float
    d: float


class Out(BaseModel):
    label: int


def test_off_by_default_and_the_index_is_kept(store):
    X, _ = dataset()
    store.save("clf", sk_logreg(), input_schema=Row)
    df = frame().iloc[::-1]  # an index in no particular order
    with store.load("clf") as h:
        assert isinstance(h.predict_batch(df), np.ndarray)
        out = h.predict_batch(df, as_frame=True)
    assert isinstance(out, pd.DataFrame)
    assert out.index.equals(df.index) and out.index.name == "customer"
    assert list(out.columns) == ["prediction"]
    assert out["prediction"].tolist() == sk_logreg().predict(df.to_numpy()).tolist()


def test_vectors_schemas_and_details(store):
    df = frame()
    store.save("proba", sk_logreg(), input_schema=Row, method="predict_proba")
    store.save("labels", sk_logreg(), input_schema=Row, output_schema=Out)
    with store.load("proba") as h:
        out = h.predict_batch(df, as_frame=True)
        p = h.predict_batch(df, as_frame=True, details=True)
    assert list(out.columns) == ["probabilities_0", "probabilities_1"]  # named by class
    np.testing.assert_allclose(out.to_numpy(), sk_logreg().predict_proba(df.to_numpy()))
    assert isinstance(p, embedml.Prediction) and p.output.equals(out) and p.model == "proba"
    with store.load("labels") as h:
        out = h.predict_batch(df, as_frame=True)
    assert list(out.columns) == ["label"] and out.index.equals(df.index)
    assert out["label"].tolist() == sk_logreg().predict(df.to_numpy()).tolist()


def test_onnx_outputs_by_name(store):
    from skl2onnx import to_onnx

    X, _ = dataset()
    store.save("zip", to_onnx(sk_logreg(), X[:1].astype(np.float32)))
    df = pd.DataFrame(X[:4].astype(np.float32), index=[10, 20, 30, 40])
    with store.load("zip") as h:
        out = h.predict_batch(df, as_frame=True)
    assert list(out.columns) == ["output_label", "output_probability_0", "output_probability_1"]
    assert out.index.tolist() == [10, 20, 30, 40]
    np.testing.assert_allclose(
        out[["output_probability_0", "output_probability_1"]].to_numpy(),
        sk_logreg().predict_proba(X[:4]),
        atol=1e-6,
    )


def with_classes(p: np.ndarray) -> dict:
    """A postprocess returning probabilities with their class labels."""
    return {"probabilities": p, "classes": ["no", "yes"]}


def test_class_labels_name_the_probability_columns(store):
    df = frame(slice(0, 3))
    store.save("named", sk_logreg(), input_schema=Row, method="predict_proba")
    with store.load("named", postprocess=with_classes) as h:
        out = h.predict_batch(df, as_frame=True)
    assert list(out.columns) == ["probabilities_no", "probabilities_yes"]


def test_rows_stay_with_their_index_under_batching(store):
    """Calls joined into one model call each get their own rows back, indexed as sent."""
    store.save("clf", sk_logreg(), input_schema=Row, method="predict_proba")
    batching = embedml.Batching(max_batch_size=64, max_wait_ms=50)
    results: dict[int, pd.DataFrame] = {}
    start = threading.Barrier(4)
    with store.load("clf", batching=batching) as h:

        def call(k: int) -> None:
            start.wait(timeout=60)
            results[k] = h.predict_batch(frame(slice(k * 3, k * 3 + 3)), as_frame=True)

        threads = [threading.Thread(target=call, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    for k, out in results.items():
        df = frame(slice(k * 3, k * 3 + 3))
        assert out.index.equals(df.index)
        np.testing.assert_allclose(out.to_numpy(), sk_logreg().predict_proba(df.to_numpy()))
    assert len(results) == 4


def test_an_output_without_one_entry_per_row_is_refused():
    from embedml.schema.frames import output_frame

    with pytest.raises(embedml.SchemaError, match="'scale'"):
        output_frame({"y": np.zeros(3), "scale": np.float32(2.0)}, 3)

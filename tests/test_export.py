"""embedml.offline.export: real sklearn models converted with skl2onnx, ONNX versions quantised with
ONNX Runtime, the reports checked against predictions recomputed here on held-out rows."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from pydantic import BaseModel
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import embedml
from embedml.offline.export import ExportReport, quantize, to_onnx
from helpers_models import sk_logreg


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(600, 8, n_informative=5, n_classes=3, random_state=0)
    return X[:400], y[:400], X[400:], y[400:]  # train, then held-out rows


@pytest.fixture(scope="module")
def mlp(data):
    Xtr, ytr, _, _ = data
    with warnings.catch_warnings():
        # A few epochs are enough: the size of the weights, not their quality, is measured.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=5, random_state=0).fit(Xtr, ytr)


def _classifiers():
    return {
        "logreg": lambda: LogisticRegression(max_iter=500),
        "forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
        "scaled-pipeline": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
    }


@pytest.mark.parametrize("kind", list(_classifiers()))
def test_to_onnx_agrees_with_sklearn_on_held_out_rows(store, data, kind):
    Xtr, ytr, Xte, _ = data
    model = _classifiers()[kind]().fit(Xtr, ytr)
    mv = to_onnx(store, "clf", model, Xte)

    assert mv.manifest.format == "onnx" and mv.version == "1"
    assert mv.manifest.input_schema == {
        "kind": "tensors",
        "tensors": [{"name": "X", "dtype": "float32", "shape": [-1, 8]}],
    }
    report = ExportReport.of(mv)
    print(f"\n{kind}: {report}")
    with embedml.load("clf", mv.version, store=store, cache=False) as handle:
        out = handle.predict_batch(Xte)
    labels_agree = float(np.mean(out["label"] == model.predict(Xte)))
    diff = float(np.abs(out["probabilities"] - model.predict_proba(Xte)).max())
    assert report.kind == "to_onnx" and report.rows == len(Xte)
    assert report.outputs == ("label", "probabilities")
    assert report.agreement == pytest.approx(labels_agree)
    assert report.max_abs_diff == pytest.approx(diff, abs=1e-6)
    assert report.size_after == mv.manifest.size == mv.artifact_path.stat().st_size
    # float32 inputs may move a row sitting on a decision boundary, never many of them
    assert report.agreement >= 0.97
    assert report.source == f"sklearn.{type(model).__name__}"


def test_to_onnx_regressor_and_record_schema(store, data):
    Xtr, _, Xte, _ = data

    class Row(BaseModel):
        a: float
        b: float
        c: float

    model = LinearRegression().fit(Xtr[:, :3], Xtr[:, 3])
    mv = to_onnx(store, "reg", model, Xte[:, :3], input_schema=Row, metadata={"team": "edge"})
    assert mv.manifest.input_schema["kind"] == "record"
    assert mv.manifest.metadata["team"] == "edge"
    report = ExportReport.of(mv)
    with embedml.load("reg", store=store, cache=False) as handle:
        one = handle.predict({"a": Xte[0, 0], "b": Xte[0, 1], "c": Xte[0, 2]})
        many = handle.predict_batch(Xte[:, :3])
    expected = model.predict(Xte[:, :3])
    assert float(np.ravel(one)[0]) == pytest.approx(expected[0], rel=1e-4, abs=1e-4)
    assert report.outputs == ("variable",)
    assert report.max_abs_diff == pytest.approx(float(np.abs(many.ravel() - expected).max()), abs=1e-6)
    close = np.isclose(many.ravel(), expected, rtol=report.tolerance, atol=report.tolerance)
    assert report.agreement == pytest.approx(float(close.mean()))


def test_to_onnx_takes_a_dataframe_sample(store, data):
    pd = pytest.importorskip("pandas")
    Xtr, _, Xte, _ = data
    cols = [f"f{i}" for i in range(4)]
    train, held_out = pd.DataFrame(Xtr[:, :4], columns=cols), pd.DataFrame(Xte[:, :4], columns=cols)
    model = RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0)
    model.fit(train, Xtr[:, 4])
    report = ExportReport.of(to_onnx(store, "rf", model, held_out))
    with embedml.load("rf", store=store, cache=False) as handle:
        got = handle.predict_batch(held_out).ravel()
    expected = model.predict(held_out)
    close = np.isclose(got, expected, rtol=report.tolerance, atol=report.tolerance)
    assert report.agreement == pytest.approx(float(close.mean()))
    assert report.max_abs_diff == pytest.approx(float(np.abs(got - expected).max()), abs=1e-6)


def test_quantize_shrinks_an_mlp_and_stays_close(store, data, mlp):
    _, _, Xte, _ = data
    exported = to_onnx(store, "mlp", mlp, Xte, metadata={"owner": "ml"})
    q = quantize(store, "mlp", exported.version, Xte)

    report = ExportReport.of(q)
    print(f"\nMLP {ExportReport.of(exported)}\nMLP {report}")
    assert q.version == "2" and q.manifest.format == "onnx"
    assert report.kind == "quantize" and report.source == "mlp@1"
    assert report.size_before == exported.manifest.size
    assert report.size_after == q.manifest.size < exported.manifest.size / 2
    meta = q.manifest.metadata
    assert meta["quantized_from"] == "mlp@1" and meta["owner"] == "ml"
    assert q.manifest.input_schema == exported.manifest.input_schema

    with (
        embedml.load("mlp", "1", store=store, cache=False) as src,
        embedml.load("mlp", "2", store=store, cache=False) as dst,
    ):
        a, b = src.predict_batch(Xte), dst.predict_batch(Xte)
    agree = float(np.mean(a["label"] == b["label"]))
    diff = float(np.abs(a["probabilities"] - b["probabilities"]).max())
    assert report.agreement == pytest.approx(agree)
    assert report.max_abs_diff == pytest.approx(diff, abs=1e-6)
    # int8 weights move probabilities a little; labels of nearly all rows stay
    assert report.agreement >= 0.9 and report.max_abs_diff < 0.1


def test_quantize_takes_an_alias_and_an_explicit_version(store, data, mlp):
    _, _, Xte, _ = data
    to_onnx(store, "mlp", mlp, Xte)
    store.set_alias("mlp", "production", "1")
    q = quantize(store, "mlp", "@production", Xte[:20], new_version="1.1")
    assert q.version == "1.1" and q.manifest.metadata["quantized_from"] == "mlp@1"
    assert ExportReport.of(q).rows == 20


def test_unsupported_model(store, data):
    Xtr, ytr, Xte, _ = data

    class Homemade(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):
            self.classes_ = np.unique(y)
            return self

        def predict(self, X):
            return np.zeros(len(X), dtype=int)

    with pytest.raises(embedml.UnsupportedFormatError, match="cannot convert .*Homemade"):
        to_onnx(store, "x", Homemade().fit(Xtr, ytr), Xte)
    with pytest.raises(embedml.ConfigurationError, match="not fitted"):
        to_onnx(store, "x", LogisticRegression(), Xte)
    with pytest.raises(embedml.ConfigurationError, match="empty"):
        to_onnx(store, "x", LogisticRegression().fit(Xtr, ytr), Xte[:0])
    with pytest.raises(embedml.ConfigurationError, match="tolerance"):
        to_onnx(store, "x", LogisticRegression().fit(Xtr, ytr), Xte, tolerance=-1)
    assert store.models() == []  # nothing half-saved


def test_quantize_refuses_other_formats_and_bad_samples(store, data):
    _, _, Xte, _ = data
    store.save("pickled", sk_logreg())
    with pytest.raises(embedml.UnsupportedFormatError, match="quantize works on ONNX.*pickled@1 is 'joblib'"):
        quantize(store, "pickled", "1", Xte)
    Xtr, ytr, _, _ = data
    to_onnx(store, "lr", LogisticRegression(max_iter=500).fit(Xtr, ytr), Xte)
    # a linear model is written with ai.onnx.ml operators only: no weights to quantise
    with pytest.raises(embedml.UnsupportedFormatError, match="no weights to quantise"):
        quantize(store, "lr", "1", Xte)
    with pytest.raises(embedml.VersionNotFoundError):
        quantize(store, "lr", "7", Xte)
    assert store.versions("lr") == ["1"]


def test_quantize_checks_the_sample_against_the_schema(store, data, mlp):
    _, _, Xte, _ = data
    to_onnx(store, "mlp", mlp, Xte)
    with pytest.raises(embedml.SchemaError, match="mlp@1"):
        quantize(store, "mlp", "1", Xte[:, :5])  # 5 columns, the model takes 8
    assert store.versions("mlp") == ["1"]


def test_missing_optional_packages_name_the_extra(store, data, monkeypatch):
    Xtr, ytr, Xte, _ = data
    to_onnx(store, "lr", LogisticRegression(max_iter=500).fit(Xtr, ytr), Xte)
    monkeypatch.setitem(sys.modules, "skl2onnx", None)  # makes `import skl2onnx` fail
    with pytest.raises(embedml.UnsupportedFormatError, match=r"embedml\[sklearn\]"):
        to_onnx(store, "lr", LogisticRegression().fit(Xtr, ytr), Xte)
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    with pytest.raises(embedml.UnsupportedFormatError, match=r"embedml\[onnx\]"):
        quantize(store, "lr", "1", Xte)
    assert store.versions("lr") == ["1"]


def test_report_round_trip_and_versions_without_one(store):
    mv = store.save("plain", sk_logreg())
    with pytest.raises(embedml.ConfigurationError, match="no export report"):
        ExportReport.of(mv)
    r = ExportReport("quantize", "m@1", 400, 100, 10, ("label",), 0.9, None, 0.01)
    assert ExportReport.from_dict(r.to_dict()) == r and r.size_ratio == 0.25


def test_export_is_a_lazy_submodule(subprocess_env):
    code = (
        "import sys, embedml; loaded = 'embedml.offline.export' in sys.modules or 'onnx' in sys.modules;"
        "f = embedml.export.to_onnx; print(loaded, f.__module__, 'skl2onnx' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "embedml.offline.export", "False"]

"""The method a version calls is saved with it (``store.save(..., method=)``), loads may
override it, the command line takes ``--method``, and a restricted load calls only a
standard method (the saved name is the artifact owner's choice)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import LogisticRegression

import embedml
from embedml.cli import main
from helpers_models import dataset, onnx_linear, sk_logreg


def test_saved_method_is_used_by_every_load(store):
    X, _ = dataset()
    mv = store.save("clf", sk_logreg(), method="predict_proba")
    assert mv.manifest.method == "predict_proba"
    with store.load("clf") as h:
        out = h.predict_batch(X[:5])  # probabilities with their class labels
        np.testing.assert_allclose(out["probabilities"], sk_logreg().predict_proba(X[:5]))
        assert out["classes"] == [0, 1]
        np.testing.assert_allclose(
            h.predict(X[0])["probabilities"], sk_logreg().predict_proba(X[:1])[0]
        )
    # a fresh process reads it from the manifest alone
    data = json.loads((mv.path / "manifest.json").read_text())
    assert data["method"] == "predict_proba"


def test_load_overrides_the_saved_method(store):
    X, _ = dataset()
    store.save("clf", sk_logreg(), method="predict_proba")
    with store.load("clf", method="decision_function") as h:
        np.testing.assert_allclose(h.predict_batch(X[:5]), sk_logreg().decision_function(X[:5]))
    with store.load("clf", method="predict") as h:
        assert h.predict_batch(X[:5]).tolist() == sk_logreg().predict(X[:5]).tolist()


def test_versions_without_a_method_call_predict(store):
    X, _ = dataset()
    mv = store.save("clf", sk_logreg())
    assert mv.manifest.method is None
    with store.load("clf") as h:
        assert h.predict_batch(X[:5]).tolist() == sk_logreg().predict(X[:5]).tolist()


@pytest.mark.parametrize("method", ["predict_probas", "_private", "__reduce__", "a b", 3])
def test_save_refuses_a_method_the_model_lacks_or_a_private_name(store, method):
    with pytest.raises(embedml.ConfigurationError, match="method"):
        store.save("clf", sk_logreg(), method=method)
    assert store.models() == []


def test_save_refuses_method_for_formats_without_methods(store):
    with pytest.raises(embedml.ConfigurationError, match="pickle and joblib"):
        store.save("lin", onnx_linear(), method="predict_proba")


def test_restricted_load_refuses_a_non_standard_saved_method(store):
    X, _ = dataset()
    forest = IsolationForest(n_estimators=5, random_state=0).fit(X)
    store.save("iso", forest, method="score_samples")
    with store.load("iso") as h:  # unrestricted: the owner's choice is honoured
        np.testing.assert_allclose(h.predict_batch(X[:4]), forest.score_samples(X[:4]))
    with pytest.raises(embedml.UntrustedArtifactError, match="score_samples"):
        store.load("iso", restricted=True)
    # the caller may still name the method itself
    with store.load("iso", restricted=True, method="predict") as h:
        assert h.predict_batch(X[:4]).tolist() == forest.predict(X[:4]).tolist()
    report = store.verify()
    assert report["iso@1"] is not None and "score_samples" in report["iso@1"]


def test_cli_shows_and_verifies_the_saved_method(store, capsys):
    X, _ = dataset()
    store.save(
        "iso", IsolationForest(n_estimators=5, random_state=0).fit(X), method="score_samples"
    )
    assert main(["--store", str(store.root), "show", "iso"]) == 0
    assert "method:     score_samples" in capsys.readouterr().out
    assert main(["--store", str(store.root), "verify"]) == 1
    assert "score_samples" in capsys.readouterr().out


def test_restricted_load_accepts_standard_saved_methods(store):
    X, _ = dataset()
    store.save("clf", sk_logreg(), method="predict_log_proba")
    with store.load("clf", restricted=True) as h:
        np.testing.assert_allclose(
            h.predict_batch(X[:3])["probabilities"], sk_logreg().predict_log_proba(X[:3])
        )
    assert store.verify() == {"clf@1": None}


def test_cli_predict_and_bench_take_method(store, tmp_path, capsys):
    X, y = dataset()
    store.save("clf", LogisticRegression().fit(X[:, :2], y))
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(list(map(float, r))) + "\n" for r in X[:3, :2]))
    out = tmp_path / "out.jsonl"
    args = ["--store", str(store.root), "predict", "clf", "-i", str(src), "-o", str(out)]
    assert main([*args, "--method", "predict_proba", "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all({"probabilities_0", "probabilities_1"} <= set(r) for r in rows)
    assert main([*args, "--method", "nope", "--no-progress"]) == 1
    assert "nope" in capsys.readouterr().err
    store.save("rec", LogisticRegression().fit(X[:, :2], y), input_schema=_two_fields())
    capsys.readouterr()
    bench = ["--store", str(store.root), "bench", "rec", "--seconds", "0.01", "--threads", "2"]
    assert main([*bench, "--method", "predict_proba", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "rec@1"
    assert main([*bench, "--method", "nope"]) == 1


def _two_fields() -> type:
    from pydantic import BaseModel

    class Two(BaseModel):
        a: float
        b: float

    return Two

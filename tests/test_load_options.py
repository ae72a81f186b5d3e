"""One definition of load options (embedml.LoadOptions) for every entry point: keywords or
an options object, an unknown option is a TypeError, a bad value a ConfigurationError."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

import embedml
from helpers_models import dataset


@pytest.fixture
def lin(store):
    X, _ = dataset()
    store.save("lin", LinearRegression().fit(X, X @ np.arange(X.shape[1])), version="1")
    return store, X


def test_an_unknown_option_is_a_type_error_everywhere(lin):
    store, X = lin
    with pytest.raises(TypeError, match="'methd'.*method"):
        store.load("lin", methd="predict")
    with pytest.raises(TypeError, match="methd"):
        embedml.load("lin", store=store, methd="predict")
    with pytest.raises(TypeError, match="methd"):
        embedml.Gate(lambda y, p: 1.0, X, X[:, 0], load_options={"methd": "predict"})
    with pytest.raises(TypeError, match="methd"):
        embedml.LoadOptions.of({"methd": "predict"})


def test_bad_values_are_refused_when_the_options_are_built(lin):
    store, X = lin
    with pytest.raises(embedml.ConfigurationError, match="max_batch_rows"):
        embedml.LoadOptions(max_batch_rows=0)
    with pytest.raises(embedml.ConfigurationError, match="poll_s"):
        store.load("lin", follow=True, poll_s=-1)
    with pytest.raises(embedml.ConfigurationError, match="batching"):
        embedml.Gate(lambda y, p: 1.0, X, X[:, 0], load_options={"batching": "yes"})


def test_options_object_and_keywords_on_top(lin):
    store, X = lin
    options = embedml.LoadOptions(max_batch_rows=2)
    with store.load("lin", options=options) as handle:
        assert handle.predict_batch(X[:2]).shape == (2,)
        with pytest.raises(embedml.SchemaError):
            handle.predict_batch(X[:3])
    with store.load("lin", "1", options, max_batch_rows=5) as handle:  # keywords win
        assert handle.predict_batch(X[:5]).shape == (5,)
    gate = embedml.Gate(lambda y, p: -float(np.abs(y - p).max()), X, X @ np.arange(X.shape[1]),
                        min_score=-1e-6, load_options=options)  # fmt: skip
    assert gate.load_options is options
    with pytest.raises(embedml.SchemaError):  # the gate loads with its options: 300 rows > 2
        store.promote("lin", "1", gate=gate)
    relaxed = embedml.Gate(gate.metric, X, gate.y, min_score=-1e-6, load_options={})
    assert store.promote("lin", "1", gate=relaxed).version == "1"

"""Metrics snapshot, Prometheus export, health/warm-up, and quality from late outcomes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pydantic import BaseModel, Field

import embedml
from embedml.observe.metrics import Histogram
from helpers_models import exercised_pair


class House(BaseModel):
    rooms: int = Field(ge=1, le=9)
    area: float = Field(gt=10)
    city: str = Field(json_schema_extra={"enum": ["paris", "lyon"]})
    new: bool


def _area_model(X):
    return np.asarray([float(r[1]) for r in np.asarray(X)])


@pytest.fixture
def lr(store, logreg):
    store.save("lr", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    return store


def test_histogram_quantiles_close_to_exact():
    rng = np.random.default_rng(1)
    values = rng.lognormal(mean=-7, sigma=1.2, size=20_000)  # ~1 ms, wide spread
    h = Histogram()
    for v in values:
        h.add(float(v))
    for q in (0.5, 0.9, 0.99):
        exact = np.quantile(values, q)
        assert abs(h.quantile(q) / exact - 1) < 0.10, q  # 4 buckets per doubling: < 9%
    assert h.n == len(values) and h.total == pytest.approx(values.sum())
    # cumulative counts at bucket edges are exact
    edges = [2.0**k for k in range(-14, -4)]
    assert h.cumulative(edges) == [int((values <= e).sum()) for e in edges]


def test_snapshot_counts_stages_and_batches(lr, iris_like):
    X, _ = iris_like
    h = lr.load("lr")
    for i in range(10):
        h.predict(X[i])
    h.predict_batch(X[:5])
    h.predict_batch(X[:40])
    with pytest.raises(embedml.SchemaError):
        h.predict(np.zeros(7))
    m = h.metrics()
    assert (m["model"], m["version"], m["format"]) == ("lr", "1", "joblib")
    assert m["requests"] == 13 and m["rows"] == 55 and m["errors"] == 1
    assert m["errors_by_type"] == {"SchemaError": 1}
    assert m["last_error"]["type"] == "SchemaError"
    assert m["batch_size"] == {"1": 10, "4-7": 1, "32-63": 1}
    assert m["in_flight"] == 0 and m["load_seconds"] > 0
    lat = m["latency_ms"]
    assert set(lat) == {"validation", "queue", "model", "total"}
    assert lat["model"]["count"] == 12 and lat["total"]["count"] == 13
    for stage in ("model", "total"):
        s = lat[stage]
        assert 0 < s["p50"] <= s["p90"] <= s["p99"]
    assert lat["total"]["p50"] >= lat["model"]["p50"] * 0.9
    assert m["throughput"]["requests_per_second"] > 0
    assert m["throughput"]["rows_per_second"] > m["throughput"]["requests_per_second"]
    h.close()


def test_in_flight_counts_running_calls(lr, iris_like):
    X, _ = iris_like
    entered, release = threading.Event(), threading.Event()

    def slow(batch):
        entered.set()
        release.wait(10)
        return batch

    h = lr.load("lr", preprocess=slow)
    t = threading.Thread(target=h.predict, args=(X[0],))
    t.start()
    assert entered.wait(10)
    assert h.metrics()["in_flight"] == 1
    release.set()
    t.join(10)
    assert h.metrics()["in_flight"] == 0
    h.close()


def test_health_and_warmup(store):
    from sklearn.dummy import DummyRegressor

    store.save("house", DummyRegressor().fit(np.zeros((2, 4)), [1.0, 2.0]), input_schema=House)
    h = store.load("house")
    health = h.health()
    assert health["loaded"] and not health["ready"] and not health["warmed_up"]
    seconds = h.warmup(3)
    assert seconds > 0
    health = h.health()
    assert health["ready"] and health["warmed_up"] and health["last_error"] is None
    assert h.metrics()["requests"] == 0  # warm-up calls are not counted
    with pytest.raises(embedml.SchemaError):
        h.predict({"rooms": 0, "area": 50, "city": "paris", "new": True})
    assert h.health()["last_error"]["type"] == "SchemaError"
    with pytest.raises(embedml.ConfigurationError):
        h.warmup(0)
    h.close()
    assert h.health() | {"last_error": None} == health | {
        "ready": False, "loaded": False, "requests": 1, "errors": 1
    }  # fmt: skip


def test_warmup_without_schema_is_configuration_error(store, logreg):
    store.save("bare", logreg)
    with store.load("bare") as h, pytest.raises(embedml.ConfigurationError, match="schema"):
        h.warmup()


def test_ready_after_first_successful_call(lr, iris_like):
    X, _ = iris_like
    with lr.load("lr") as h:
        assert not h.health()["ready"]
        h.predict(X[0])
        assert h.health()["ready"]


def test_log_outcome_classifier_accuracy(lr, iris_like):
    from sklearn.metrics import accuracy_score

    X, y = iris_like
    h = lr.load("lr")
    rng = np.random.default_rng(3)
    truth = np.where(rng.random(len(y)) < 0.2, 1 - y, y)  # labels with 20% noise
    preds = []
    for i in range(200):
        p = h.predict(X[i], details=True)
        preds.append(int(p.output))
        assert h.log_outcome(p.request_id, truth[i])["task"] == "classification"
    q = h.metrics()["quality"]
    assert q["accuracy"] == pytest.approx(accuracy_score(truth[:200], preds))
    assert q["error_rate"] == pytest.approx(1 - q["accuracy"])
    assert q["window"] == 200 and q["outcomes"] == 200
    b = h.predict_batch(X[200:260], details=True)
    h.log_outcome(b.request_id, truth[200:260])
    assert h.metrics()["quality"]["window"] == 260
    with pytest.raises(embedml.RequestNotFoundError):
        h.log_outcome(b.request_id, truth[200:260])  # already joined
    with pytest.raises(embedml.RequestNotFoundError):
        h.log_outcome("nope", 1)
    b2 = h.predict_batch(X[:3], details=True)
    with pytest.raises(embedml.SchemaError, match="y_true"):
        h.log_outcome(b2.request_id, [1, 0])
    h.log_outcome(b2.request_id, truth[:3])  # retry with the right shape works
    h.close()


def test_log_outcome_regression_window(store):
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(4)
    X = rng.normal(size=(1300, 3))
    y = X @ [1.0, -2.0, 0.5] + rng.normal(scale=0.3, size=1300)
    store.save("reg", LinearRegression().fit(X, y))
    h = store.load("reg")
    errs = []
    for i in range(1300):  # more outcomes than the window (1,000): the old ones leave it
        p = h.predict(X[i], details=True)
        h.log_outcome(p.request_id, y[i])
        errs.append(float(p.output) - y[i])
    last = np.asarray(errs[-1000:])
    q = h.metrics()["quality"]
    assert q["task"] == "regression" and q["window"] == 1000
    assert q["mae"] == pytest.approx(np.abs(last).mean(), abs=1e-6)
    assert q["rmse"] == pytest.approx(np.sqrt((last**2).mean()), abs=1e-6)
    h.close()


def test_prometheus_text_output(lr, logreg, iris_like):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from embedml.observe.metrics import prometheus

    X, y = iris_like
    registry = CollectorRegistry()
    h, other = exercised_pair(lr, logreg, X, y, lambda h: prometheus.register(h, registry=registry))
    text = generate_latest(registry).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in fams.values() for s in f.samples
    }
    lab = (("model", "lr"), ("version", "1"))

    def val(name, *extra, labels=lab):
        return samples[(name, frozenset((*labels, *extra)))]

    assert val("embedml_requests_total") == 32
    assert val("embedml_rows_total") == 50
    assert val("embedml_errors_total", ("type", "SchemaError")) == 1
    buckets = {
        s.labels["le"]: s.value
        for s in fams["embedml_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["stage"] == "total" and s.labels["model"] == "lr"
    }
    assert buckets["+Inf"] == 32
    values = sorted(buckets.values())
    assert list(buckets.values()) == values  # cumulative
    other_lab = (("model", "lr2"), ("version", "1"))
    assert val("embedml_requests_total", labels=other_lab) == 1
    assert fams["embedml_request_duration_seconds"].type == "histogram"
    assert val("embedml_quality", ("metric", "accuracy")) > 0.5
    assert val(
        "embedml_hook_records_total",
        ("outcome", "written"),
        ("sink", h.hooks[0].name),
    ) == 32
    assert val("embedml_ready") == 1
    assert "embedml_batch_size_bucket" in text and "embedml_in_flight" in text
    other.close()
    h.close()
    assert "embedml_requests_total{" not in generate_latest(registry).decode()


def test_outcome_memory_is_bounded_by_rows_not_calls(lr, iris_like):
    X, y = iris_like
    with lr.load("lr") as h:
        ids = [h.predict_batch(X[:1], details=True).request_id for _ in range(10_050)]
        for rid in ids[:50]:  # the 50 oldest are forgotten
            with pytest.raises(embedml.RequestNotFoundError, match="last 10000 rows"):
                h.log_outcome(rid, y[:1])
        h.log_outcome(ids[50], y[:1])  # the oldest remembered one still joins
        assert h.metrics()["quality"]["pending"] == 10_000 - 1  # bounded, never more
        # 100-row batches: 100 of them fill the memory, whatever came before
        big = [h.predict_batch(X[:100], details=True).request_id for _ in range(120)]
        assert h.metrics()["quality"]["pending"] == 100
        h.log_outcome(big[-100], y[:100])
        with pytest.raises(embedml.RequestNotFoundError):
            h.log_outcome(big[0], y[:100])
        huge = np.resize(X, (10_001, X.shape[1]))  # more rows than the memory: not kept
        rid = h.predict_batch(huge, details=True).request_id
        with pytest.raises(embedml.RequestNotFoundError):
            h.log_outcome(rid, np.zeros(10_001))
        h.log_outcome(big[-1], y[:100])  # and it did not push out what was there


def test_outputs_are_remembered_only_when_the_request_id_can_be_known(lr, iris_like):
    X, y = iris_like
    with lr.load("lr") as h:
        h.predict(X[0])
        h.predict_batch(X[:10])
        p = h.predict(X[0], details=True)
        h.log_outcome(p.request_id, y[0])
        # nobody can join an outcome to the plain calls: nothing was kept for them
        assert h.metrics()["quality"]["pending"] == 0
        records = []
        h.add_hook(records.append)
        h.predict(X[1])  # a hook sees the id: kept, by the sink's thread before it writes
        assert h.hooks[0].flush()
        assert h.metrics()["quality"]["pending"] == 1
        h.close()
        h.log_outcome(records[0].request_id, y[1])

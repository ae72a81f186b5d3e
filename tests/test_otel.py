"""The OpenTelemetry bridge, read back through the SDK's in-memory metric reader."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import embedml

sdk = pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402

from embedml.observe.metrics import otel  # noqa: E402
from helpers_models import exercised_pair  # noqa: E402


@pytest.fixture
def meter():
    reader = InMemoryMetricReader()
    provider = sdk.MeterProvider(metric_readers=[reader])
    yield provider.get_meter("test"), reader
    provider.shutdown()


def collect(reader) -> dict[tuple[str, frozenset], float]:
    """Every data point, keyed by instrument name and attributes."""
    points = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for p in metric.data.data_points:
                    points[(metric.name, frozenset(p.attributes.items()))] = p.value
    return points


def test_handles_are_reported_with_their_model_and_version(meter, store, logreg, iris_like):
    meter, reader = meter
    X, y = iris_like
    store.save("lr", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    h, other = exercised_pair(store, logreg, X, y, lambda h: otel.register(h, meter=meter))
    points = collect(reader)
    lab = {("model", "lr"), ("version", "1")}

    def val(name, **extra):
        return points[(name, frozenset(lab | set(extra.items())))]

    snap = h.metrics()
    assert val("embedml.requests") == snap["requests"] == 32
    assert val("embedml.rows") == snap["rows"] == 50
    assert val("embedml.errors", type="SchemaError") == 1
    p50 = val("embedml.latency", stage="total", quantile="p50")
    assert p50 == pytest.approx(snap["latency_ms"]["total"]["p50"] / 1e3)
    assert 0 < p50 <= val("embedml.latency", stage="total", quantile="p99")
    assert val("embedml.in_flight") == 0 and val("embedml.ready") == 1
    assert val("embedml.model.load_time") == snap["load_seconds"] > 0
    assert val("embedml.observe.quality", metric="accuracy") == snap["quality"]["accuracy"]
    sink = snap["hooks"][0]["name"]
    assert val("embedml.hook.records", sink=sink, outcome="written") == 32  # the failed call too
    other_lab = frozenset({("model", "lr2"), ("version", "1")})
    assert points[("embedml.rows", other_lab)] == 3
    # a closed handle drops out; the others are still reported
    other.close()
    later = collect(reader)
    assert ("embedml.rows", other_lab) not in later
    assert later[("embedml.rows", frozenset(lab))] == 50
    assert otel.unregister(h, meter=meter) and not otel.unregister(h, meter=meter)
    h.close()


def test_drift_psi_and_no_cost_per_prediction(meter, store):
    meter, reader = meter
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 3))
    from sklearn.linear_model import LinearRegression

    store.save("lin", LinearRegression().fit(X, X.sum(axis=1)), reference_data=X)
    monitor = embedml.DriftMonitor(window=500)
    h = store.load("lin", hooks=[monitor])
    otel.register(h, meter=meter)
    shifted = rng.normal(size=(500, 3))
    shifted[:, 2] += 2.0
    h.predict_batch(shifted)
    report = monitor.report()
    points = collect(reader)
    psi = {dict(k[1])["feature"]: v for k, v in points.items() if k[0] == "embedml.observe.drift.psi"}
    assert psi == pytest.approx({r["feature"]: r["psi"] for r in report.rows})
    assert psi["x[2]"] > 0.2 > psi["x[0]"]
    h.close()
    del h
    gc.collect()
    # a collected handle is skipped, not kept alive by the bridge
    assert not [k for k in collect(reader) if k[0] == "embedml.rows"]

"""Reference profiles and drift detection: statistics vs scipy, detection, false alarms."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import scipy.stats as st
from pydantic import BaseModel
from scipy.spatial.distance import jensenshannon
from scipy.special import gammaincc

import embedml
from embedml.drift import _gammaincc, chi2_test, jensen_shannon, ks_2samp, psi
from embedml.profile import PROFILE_FILE


class Visit(BaseModel):
    age: float
    city: str


def _age_model(X):
    return np.asarray([float(r[0]) for r in np.asarray(X)])


# ---------------------------------------------------------------- statistics vs references


def test_psi_matches_the_textbook_formula():
    rng = np.random.default_rng(0)
    e = rng.integers(1, 100, size=10)
    a = rng.integers(0, 100, size=10)
    a[3] = 0  # an empty bin is floored, not infinite
    pe, pa = e / e.sum(), a / a.sum()
    pe, pa = np.maximum(pe, 1e-4), np.maximum(pa, 1e-4)
    expected = sum((x - y) * np.log(x / y) for x, y in zip(pa, pe))
    assert psi(e, a) == pytest.approx(expected, rel=1e-12)
    assert psi(e, e) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_ks_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=rng.integers(50, 3000))
    b = rng.normal(0.1 * seed, size=rng.integers(50, 3000))
    if seed == 4:  # heavy ties
        a, b = np.round(a), np.round(b)
    d, p = ks_2samp(a, b)
    ref = st.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, abs=1e-12)
    en = len(a) * len(b) / (len(a) + len(b))
    assert p == pytest.approx(st.kstwobign.sf(np.sqrt(en) * d), rel=1e-9, abs=1e-14)
    assert abs(p - ref.pvalue) < 0.03  # scipy refines the limit with a finite-n correction


@pytest.mark.parametrize(
    ("a", "b"),
    [([1.0], [1.0, 2.0]), ([3.0, 3.0, 3.0], [3.0]), ([-np.inf, 0.0, 5.0], [0.0, 0.0, np.inf]),
     ([2.0, 1.0, 1.0, 4.0], [4.0, 4.0, 1.0])],
)  # fmt: skip
def test_ks_statistic_with_ties_and_tiny_samples_matches_scipy(a, b):
    d, _ = ks_2samp(np.array(a), np.array(b))
    assert d == pytest.approx(st.ks_2samp(a, b).statistic, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_chi2_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    k = rng.integers(2, 8)
    e = rng.integers(0, 500, size=k)
    a = rng.integers(0, 80, size=k)
    e[0] = a[0] = 0 if seed == 3 else e[0]  # a category empty in both is left out
    stat, p = chi2_test(e, a)
    table = np.vstack([e, a])
    table = table[:, table.sum(axis=0) > 0]
    ref = st.chi2_contingency(table, correction=False)
    assert stat == pytest.approx(ref.statistic, rel=1e-10)
    assert p == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-300)


def test_gammaincc_and_js_match_scipy():
    for a in (0.5, 1, 2.5, 10, 60):
        for x in (0.01, 0.5, 1, 3, 10, 50, 200):
            assert _gammaincc(a, x) == pytest.approx(gammaincc(a, x), rel=1e-9, abs=1e-300)
    rng = np.random.default_rng(1)
    for _ in range(5):
        p, q = rng.random(6), rng.random(6)
        q[2] = 0
        assert jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2), rel=1e-10)


# ---------------------------------------------------------------- profiles in the store


@pytest.fixture
def reference():
    rng = np.random.default_rng(7)
    return rng.normal(size=(20_000, 3))


@pytest.fixture
def lin(store, reference):
    from sklearn.linear_model import LinearRegression

    y = reference @ [1.0, 2.0, -1.0]
    model = LinearRegression().fit(reference, y)
    store.save(
        "lin", model, input_schema=embedml.TensorSpec("x", "float64", (-1, 3)),
        reference_data=reference, reference_outputs=model.predict(reference),
    )  # fmt: skip
    return store


def test_profile_saved_hashed_and_verified(lin, reference):
    mv = lin.resolve("lin")
    assert set(mv.manifest.extra_files) == {PROFILE_FILE}
    with lin.load("lin") as h:
        prof = h.reference_profile()
    assert prof.rows == 20_000 and prof.sample_rows == 10_000
    f0 = prof.features["x[0]"]
    assert f0.kind == "numeric" and sum(f0.counts) == 20_000 and len(f0.sample) == 10_000
    np.testing.assert_allclose(f0.edges, np.quantile(reference[:, 0], np.arange(1, 10) / 10))
    assert set(prof.outputs) == {"output"}
    assert set(f0.sample) <= set(reference[:, 0].tolist())
    assert lin.verify("lin") == {"lin@1": None}
    # tampering with the profile is caught like tampering with the artifact
    path = mv.path / PROFILE_FILE
    doc = json.loads(path.read_text())
    doc["features"]["x[0]"]["counts"][0] += 1
    path.write_text(json.dumps(doc))
    assert "SHA-256" in lin.verify("lin")["lin@1"]
    with lin.load("lin") as h, pytest.raises(embedml.IntegrityError):
        h.reference_profile()


def test_reference_data_is_checked_against_the_schema(store):
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor().fit(np.zeros((2, 2)), [0.0, 1.0])
    with pytest.raises(embedml.SchemaError, match="reference_data") as info:
        store.save("v", model, input_schema=Visit, reference_data=[{"age": 3.0}])
    assert info.value.field == "city"
    assert store.models() == []


# ---------------------------------------------------------------- detection


def test_detector_fires_on_shifted_data_only_for_that_feature(lin, reference):
    fired = []
    monitor = embedml.DriftMonitor(window=2000, on_drift=lambda f, row: fired.append((f, row)))
    h = lin.load("lin", hooks=[monitor])
    rng = np.random.default_rng(11)
    for _ in range(4):
        h.predict_batch(rng.normal(size=(500, 3)))
    quiet = monitor.report()
    assert quiet.drifted == [] and all(r["psi"] < 0.1 for r in quiet.rows)
    assert fired == []
    shifted = rng.normal(size=(2000, 3))
    shifted[:, 1] += 1.0
    for i in range(0, 2000, 250):
        h.predict_batch(shifted[i : i + 250])
    rep = monitor.report()
    rows = {r["feature"]: r for r in rep.rows}
    assert rows["x[1]"]["status"] == "drift" and rows["x[1]"]["psi"] > 0.2
    assert rows["x[1]"]["ks_p"] < 1e-10
    assert rows["x[0]"]["status"] == "ok" and rows["x[2]"]["status"] == "ok"
    assert "output" in rep.drifted  # the model's outputs moved with x[1]
    assert {f for f, _ in fired} == {"x[1]", "output"}
    assert all(row["status"] in ("warn", "drift") for _, row in fired)
    ks = ks_2samp(np.asarray(monitor.reference.features["x[1]"].sample), shifted[:, 1])
    assert rows["x[1]"]["ks"] == pytest.approx(ks[0])
    text = str(rep)
    assert "x[1]" in text and "drift" in text
    frame = rep.to_frame()
    assert frame.loc["x[1]", "status"] == "drift"
    assert rep.to_dict()["features"]["x[0]"]["status"] == "ok"
    h.close()


def test_false_alarm_rate_on_same_distribution(lin):
    monitor = embedml.DriftMonitor(window=500)
    h = lin.load("lin", hooks=[monitor])
    rng = np.random.default_rng(12)
    drift = warn = checks = 0
    for _ in range(100):
        h.predict_batch(rng.normal(size=(500, 3)))
        rep = monitor.report()
        drift += len(rep.drifted)
        warn += len(rep.warned)
        checks += len(rep.rows)
        monitor.reset()
    h.close()
    assert drift == 0
    assert warn / checks <= 0.01  # the KS tests warn at p < 0.001


def test_categorical_features(store):
    from sklearn.dummy import DummyRegressor

    rng = np.random.default_rng(5)
    cities = ["paris", "lyon", "nice"]

    def visits(n, probs):
        return [
            {"age": float(a), "city": str(c)}
            for a, c in zip(rng.normal(40, 10, n), rng.choice(cities, n, p=probs))
        ]

    model = DummyRegressor().fit(np.zeros((2, 2)), [0.0, 1.0])
    store.save("visits", model, input_schema=Visit, reference_data=visits(5000, [0.5, 0.3, 0.2]))
    monitor = embedml.DriftMonitor(window=1000)
    h = store.load("visits", hooks=[monitor])
    h.predict_batch(visits(1000, [0.5, 0.3, 0.2]))
    city = {r["feature"]: r for r in monitor.report().rows}["city"]
    assert city["kind"] == "categorical" and city["status"] == "ok" and city["chi2_p"] > 0.001
    h.predict_batch(visits(1000, [0.2, 0.3, 0.5]))
    rows = {r["feature"]: r for r in monitor.report().rows}
    assert rows["city"]["status"] == "drift" and rows["city"]["chi2_p"] < 1e-10
    assert rows["city"]["js"] > 0.1 and rows["age"]["status"] == "ok"
    h.predict_batch([{"age": 40.0, "city": "rome"}] * 1000)  # unseen category
    rows = {r["feature"]: r for r in monitor.report().rows}
    assert rows["city"]["status"] == "drift"
    h.close()


def test_monitor_needs_a_reference(store, logreg):
    before = set(threading.enumerate())
    store.save("bare", logreg)
    with pytest.raises(embedml.ConfigurationError, match="reference"):
        store.load("bare", hooks=[embedml.DriftMonitor()])
    with store.load("bare") as h, pytest.raises(embedml.ConfigurationError, match="reference"):
        h.add_hook(embedml.DriftMonitor())
    with pytest.raises(embedml.ConfigurationError):
        embedml.DriftMonitor(psi_warn=0.3, psi_drift=0.2)
    with pytest.raises(embedml.ConfigurationError, match="not in the reference"):
        embedml.DriftMonitor(np.zeros((10, 2)), features=["age"])
    assert set(threading.enumerate()) == before


def test_explicit_reference_array(store, logreg, iris_like):
    X, _ = iris_like
    store.save("lr", logreg, input_schema=embedml.TensorSpec("x", "float64", (-1, 4)))
    monitor = embedml.DriftMonitor(X, window=100, features=["x[0]", "x[3]"])
    with store.load("lr", hooks=[monitor]) as h:
        h.predict_batch(X[:100] + [5.0, 0, 0, 0])
        rep = monitor.report()
    assert [r["feature"] for r in rep.rows] == ["x[0]", "x[3]"]
    assert rep.drifted == ["x[0]"]


def test_psi_exported_to_prometheus(lin):
    from prometheus_client import CollectorRegistry, generate_latest

    from embedml.metrics import prometheus

    monitor = embedml.DriftMonitor(window=500)
    registry = CollectorRegistry()
    with lin.load("lin", hooks=[monitor]) as h:
        prometheus.register(h, registry=registry)
        live = np.random.default_rng(3).normal(size=(500, 3))
        live[:, 2] -= 2.0
        h.predict_batch(live)
        rows = {r["feature"]: r for r in monitor.report().rows}
        text = generate_latest(registry).decode()
    line = next(x for x in text.splitlines() if x.startswith('embedml_drift_psi{feature="x[2]"'))
    assert float(line.split()[-1]) == pytest.approx(rows["x[2]"]["psi"])
    assert rows["x[2]"]["status"] == "drift"


def test_a_monitor_alone_keeps_no_outputs_for_outcomes(lin, reference):
    # nobody can read request ids from a monitor, so remembering outputs would only cost
    monitor = embedml.DriftMonitor(window=100)
    with lin.load("lin", hooks=[monitor]) as h:
        for row in reference[:50]:
            h.predict(row)
        assert monitor.flush()
        assert monitor.rows_seen == 50
        assert h._obs.quality._rows == 0
        # a caller that asks for the id still gets its outcome joined
        rid = h.predict(reference[:1], details=True).request_id
        h.log_outcome(rid, h.predict(reference[:1]))
        assert h.metrics()["quality"]["outcomes"] == 1


@pytest.mark.parametrize("case", ["continuous", "ties", "tiny", "nan"])
def test_vectorised_check_equals_the_per_feature_statistics(case):
    # the monitor's check computes all numeric features at once; the report must not change
    rng = np.random.default_rng(3)
    ref, live = rng.normal(size=(5000, 5)), rng.normal(size=(800, 5)) + np.linspace(0, 0.4, 5)
    if case == "ties":
        ref, live = np.round(ref), np.round(live)
    elif case == "tiny":
        live = live[:3]
    elif case == "nan":
        live[::7, 2] = np.nan
    monitor = embedml.DriftMonitor(ref, window=len(live))
    window, _, profiles = monitor._windows["x"]
    window.push(live)
    rows = monitor._compute().rows
    assert (monitor._numeric_rows(profiles, window.values()) is None) == (case == "nan")
    for j, (row, profile) in enumerate(zip(rows, profiles)):
        expected = monitor._row(profile, window.values()[:, j])
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            assert row[key] == (pytest.approx(value, rel=1e-12, abs=1e-15) if isinstance(value, float) else value)
        column = live[:, j][~np.isnan(live[:, j])]
        assert row["ks"] == pytest.approx(st.ks_2samp(profile.sample, column).statistic, abs=1e-12)

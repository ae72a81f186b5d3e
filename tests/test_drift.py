"""Reference profiles and drift detection: the statistics (scipy's) on real data with and
without drift, detection, false alarms, and the ``drift`` extra."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.stats as st
from pydantic import BaseModel
from scipy.spatial.distance import jensenshannon

import embedml
from embedml.observe.drift import jensen_shannon, ks_2samp, psi
from embedml.schema.profile import PROFILE_FILE
from embedml.testing import FakeClock


class Visit(BaseModel):
    age: float
    city: str


def _age_model(X):
    return np.asarray([float(r[0]) for r in np.asarray(X)])


# ---------------------------------------------------------------- statistics


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


@pytest.fixture(scope="module")
def cancer():
    """Real data: the Wisconsin breast cancer set (569 tumours, 30 numeric measurements)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, data.target, list(data.feature_names)


def _report(store, reference, live, names):
    """The drift report of a real model served with a monitor: reference vs live rows."""
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor().fit(reference, np.zeros(len(reference)))
    spec = embedml.TensorSpec("x", "float64", (-1, reference.shape[1]))
    store.save("tumours", model, input_schema=spec, reference_data=reference)
    monitor = embedml.DriftMonitor(window=len(live))
    with store.load("tumours", hooks=[monitor]) as h:
        h.predict_batch(live)
        report = monitor.report()
    assert report.window_rows == len(live)
    rows = {names[int(r["feature"][2:-1])]: r for r in report.rows}  # "x[j]"
    samples = {names[int(f[2:-1])]: p.sample for f, p in monitor.reference.features.items()}
    return rows, samples


def test_real_data_without_drift_is_not_flagged(store, cancer):
    X, _, names = cancer
    order = np.random.default_rng(0).permutation(len(X))
    reference, live = X[order[:285]], X[order[285:]]  # two random halves: no drift
    rows, samples = _report(store, reference, live, names)
    assert len(rows) == 30 and [r["status"] for r in rows.values()].count("drift") == 0
    for name, row in rows.items():
        sample = samples[name]
        j = names.index(name)
        scipy_ks = st.ks_2samp(sample, live[:, j], method="asymp")
        assert row["ks"] == pytest.approx(scipy_ks.statistic, abs=1e-12)
        # the Kolmogorov limit; scipy's "asymp" refines it for finite samples
        assert row["ks_p"] > 0.001 and abs(row["ks_p"] - scipy_ks.pvalue) < 0.03
        en = len(sample) * len(live) / (len(sample) + len(live))
        assert row["ks_p"] == pytest.approx(st.kstwobign.sf(math.sqrt(en) * row["ks"]), rel=1e-9)


def test_real_data_with_known_drift_is_flagged(store, cancer):
    X, y, names = cancer
    # reference: benign tumours; live: malignant ones, known to be larger and more concave
    rows, _ = _report(store, X[y == 1], X[y == 0], names)
    for name in ("mean radius", "mean perimeter", "worst concave points", "worst area"):
        assert rows[name]["status"] == "drift", rows[name]
        assert rows[name]["ks"] > 0.6 and rows[name]["ks_p"] < 1e-30
    # the measurements that barely differ between the classes are not called drift
    for name in ("texture error", "smoothness error", "symmetry error"):
        assert rows[name]["status"] in ("ok", "warn") and rows[name]["ks_p"] > 0.01, rows[name]


@pytest.mark.parametrize(
    ("a", "b"),
    [([1.0], [1.0, 2.0]), ([3.0, 3.0, 3.0], [3.0]), ([-np.inf, 0.0, 5.0], [0.0, 0.0, np.inf]),
     ([2.0, 1.0, 1.0, 4.0], [4.0, 4.0, 1.0])],
)  # fmt: skip
def test_ks_statistic_with_ties_and_tiny_samples_matches_scipy(a, b):
    d, _ = ks_2samp(np.array(a), np.array(b))
    assert d == pytest.approx(st.ks_2samp(a, b).statistic, abs=1e-12)


def test_jensen_shannon_of_near_equal_distributions_is_zero_not_nan():
    # scipy's jensenshannon returns NaN (with a RuntimeWarning) for about half of these
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.integers(1, 10**6, size=rng.integers(2, 40)).astype(np.float64)
        q = p * (1 + rng.normal(scale=1e-12, size=len(p)))
        assert jensen_shannon(p, q) == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(jensen_shannon(np.zeros(3), np.ones(3)))  # no distribution: no distance


def _run_child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )


def test_import_embedml_does_not_import_scipy(subprocess_env):
    code = "import sys, embedml, embedml.observe.drift; print('scipy' in sys.modules)"
    out = _run_child(code, subprocess_env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


_BLOCK_SCIPY = """
import importlib.abc, sys

class BlockScipy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockScipy())
for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
    del sys.modules[name]
"""


def test_without_scipy_the_monitor_names_the_extra(subprocess_env):
    code = _BLOCK_SCIPY + _MAKE_A_MONITOR
    out = _run_child(code, subprocess_env)
    assert out.returncode == 0, out.stderr
    first, message = out.stdout.strip().splitlines()
    assert first == "MissingExtraError drift scipy True True True"
    assert "pip install 'embedml[drift]'" in message and "scipy" in message


_MAKE_A_MONITOR = """
import pickle, threading
import numpy as np
import embedml

before = threading.active_count()
try:
    embedml.DriftMonitor(np.zeros((10, 2)))
except embedml.MissingExtraError as exc:
    back = pickle.loads(pickle.dumps(exc))
    print(type(back).__name__, back.extra, back.name, isinstance(exc, ImportError),
          isinstance(exc, embedml.ConfigurationError), threading.active_count() == before)
    print(exc)
else:
    print("no error")
"""


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
    ks = st.ks_2samp(monitor.reference.features["x[1]"].sample, shifted[:, 1])
    assert rows["x[1]"]["ks"] == pytest.approx(ks.statistic, abs=1e-12)
    text = str(rep)
    assert "x[1]" in text and "drift" in text
    frame = rep.to_frame()
    assert frame.loc["x[1]", "status"] == "drift"
    assert rep.to_dict()["features"]["x[0]"]["status"] == "ok"
    h.close()


def _written(monitor: embedml.DriftMonitor) -> None:
    """Wait until the monitor's thread wrote every accepted row, without forcing the check
    that :meth:`DriftMonitor.flush` would run (a check allowed by the interval runs inside
    that write)."""
    assert embedml.Sink.flush(monitor, timeout=60)


def test_checks_wait_for_the_interval_on_the_monitors_clock(lin, threads_checked):
    clock = FakeClock()
    fired: list[str] = []
    drifted = threading.Event()

    def on_drift(feature: str, row: dict) -> None:
        fired.append(feature)
        drifted.set()

    monitor = embedml.DriftMonitor(
        window=500, check_interval=60, clock=clock, on_drift=on_drift
    )
    rng = np.random.default_rng(21)
    shifted = rng.normal(size=(500, 3)) + [0.0, 0.0, 3.0]
    with lin.load("lin", hooks=[monitor]) as h:
        h.predict_batch(rng.normal(size=(500, 3)))
        _written(monitor)  # the first check runs at once: nothing drifted
        assert fired == [] and set(monitor.last_psi()) == {"x[0]", "x[1]", "x[2]", "output"}
        h.predict_batch(shifted)  # a check is due, but the last one was 0 s ago
        _written(monitor)
        clock.advance(59.9)
        h.predict(shifted[0])  # the monitor looks again at 59.9 s: still too soon
        _written(monitor)
        assert fired == []
        clock.advance(0.1)  # 60 s: the monitor's next look (within its write interval) checks
        assert drifted.wait(60)
        assert "x[2]" in fired and "x[0]" not in fired


def test_flush_waits_for_a_check_that_is_running(lin, threads_checked):
    clock = FakeClock()
    entered, release = threading.Event(), threading.Event()

    def on_drift(feature: str, row: dict) -> None:
        entered.set()
        release.wait(60)  # the check stays running until the test lets it go

    monitor = embedml.DriftMonitor(window=500, check_interval=60, clock=clock, on_drift=on_drift)
    rng = np.random.default_rng(22)
    with lin.load("lin", hooks=[monitor]) as h:
        h.predict_batch(rng.normal(size=(500, 3)))
        _written(monitor)
        h.predict_batch(rng.normal(size=(500, 3)) + [0.0, 3.0, 0.0])
        _written(monitor)
        clock.advance(60)  # the monitor's thread runs the check, and stays in on_drift
        assert entered.wait(60)
        try:
            # every row is written but the check has not finished: not flushed yet
            assert monitor.flush(timeout=0.2) is False
        finally:
            release.set()
        assert monitor.flush(timeout=60) is True


def test_flush_runs_a_due_check_whatever_the_interval(lin, threads_checked):
    fired: list[str] = []
    clock = FakeClock()
    monitor = embedml.DriftMonitor(
        window=500, check_interval=3600, clock=clock, on_drift=lambda f, row: fired.append(f)
    )
    rng = np.random.default_rng(23)
    with lin.load("lin", hooks=[monitor]) as h:
        h.predict_batch(rng.normal(size=(500, 3)))
        assert monitor.flush(timeout=60)
        h.predict_batch(rng.normal(size=(500, 3)) + [3.0, 0.0, 0.0])
        assert monitor.flush(timeout=60)  # the clock never moved: flush asked for the check
        assert "x[0]" in fired
        assert monitor.flush(timeout=60)  # nothing due: returns at once


def test_a_clock_must_be_a_clock():
    with pytest.raises(embedml.ConfigurationError, match="clock must have monotonic"):
        embedml.DriftMonitor(np.zeros((10, 2)), clock=object())


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
    visits_seen = visits(1000, [0.2, 0.3, 0.5])
    h.predict_batch(visits_seen)
    rows = {r["feature"]: r for r in monitor.report().rows}
    assert rows["city"]["status"] == "drift" and rows["city"]["chi2_p"] < 1e-10
    assert rows["city"]["js"] > 0.1 and rows["age"]["status"] == "ok"
    # the statistics are scipy's, on the reference and live category counts
    profile = monitor.reference.features["city"]
    window = list(profile.categories)
    live = [0] * len(window)
    for v in visits_seen:
        live[window.index(v["city"])] += 1
    table = np.array([profile.counts, live])
    table = table[:, table.sum(axis=0) > 0]
    scipy_chi2 = st.chi2_contingency(table, correction=False)
    assert rows["city"]["chi2"] == pytest.approx(scipy_chi2.statistic, rel=1e-12)
    assert rows["city"]["chi2_p"] == pytest.approx(scipy_chi2.pvalue, rel=1e-9, abs=1e-300)
    scipy_js = jensenshannon(profile.counts, live, base=2)
    assert rows["city"]["js"] == pytest.approx(scipy_js, rel=1e-12)
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

    from embedml.observe.metrics import prometheus

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
        # a caller that asks for the id still gets its outcome joined
        rid = h.predict(reference[:1], details=True).request_id
        h.log_outcome(rid, h.predict(reference[:1]))
        quality = h.metrics()["quality"]
        assert quality["outcomes"] == 1
        assert quality["pending"] == 0  # nothing kept for the 50 calls the monitor saw


@pytest.mark.parametrize("case", ["continuous", "ties", "tiny", "nan"])
def test_each_features_statistics_are_scipys_whatever_the_window(store, case):
    # the monitor computes all numeric features at once when it can (not with NaN in the
    # window); either way each row of the report is that feature's own statistics
    rng = np.random.default_rng(3)
    ref, live = rng.normal(size=(5000, 5)), rng.normal(size=(800, 5)) + np.linspace(0, 0.4, 5)
    if case == "ties":
        ref, live = np.round(ref), np.round(live)
    elif case == "tiny":
        live = live[:3]
    elif case == "nan":
        live[::7, 2] = np.nan
    from sklearn.dummy import DummyRegressor

    model = DummyRegressor().fit(ref, np.zeros(len(ref)))
    store.save("m", model, input_schema=embedml.TensorSpec("x", "float64", (-1, 5)))
    monitor = embedml.DriftMonitor(ref, window=len(live))
    with store.load("m", hooks=[monitor], allow_nan=True) as h:
        h.predict_batch(live)
        report = monitor.report()
    assert report.window_rows == len(live) and len(report.rows) == 5
    profiles = monitor.reference.features
    for j, row in enumerate(report.rows):
        profile = profiles[row["feature"]]
        column = live[:, j][~np.isnan(live[:, j])]
        assert row["n"] == len(column)
        assert row["psi"] == pytest.approx(psi(profile.counts, profile.live_counts(live[:, j])), rel=1e-12)
        assert row["ks"] == pytest.approx(st.ks_2samp(profile.sample, column).statistic, abs=1e-12)
        en = len(profile.sample) * len(column) / (len(profile.sample) + len(column))
        assert row["ks_p"] == pytest.approx(st.kstwobign.sf(math.sqrt(en) * row["ks"]), rel=1e-9)
        warn = row["psi"] >= monitor.psi_warn or row["ks_p"] < monitor.p_value
        assert row["status"] == ("drift" if row["psi"] >= monitor.psi_drift else "warn" if warn else "ok")

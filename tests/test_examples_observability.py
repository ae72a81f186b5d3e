"""The observability examples: the FastAPI service (TestClient) and the monitoring demo."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def app_module():
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    return _load("fastapi_app")


GOOD = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}


def test_fastapi_service(app_module, tmp_path):
    from fastapi.testclient import TestClient

    import embedml

    before = set(threading.enumerate())
    log = tmp_path / "preds.jsonl"
    handle = app_module.demo_handle(tmp_path / "store", hooks=[embedml.JsonlSink(log)])
    app = app_module.create_app(handle)
    cold = TestClient(app)  # without `with`, the lifespan (warm-up) has not run
    assert cold.get("/health").status_code == 503
    with TestClient(app) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["warmed_up"] is True
        r = client.post("/predict", json=GOOD)
        assert r.status_code == 200
        body = r.json()
        assert body["output"] == 0 and (body["model"], body["version"]) == ("iris", "1")
        bad = client.post("/predict", json={**GOOD, "petal_width": -1.0})
        assert bad.status_code == 422 and bad.json()["detail"]["field"] == "petal_width"
        missing = client.post("/predict", json={k: v for k, v in GOOD.items() if k != "sepal_width"})
        assert missing.status_code == 422 and missing.json()["detail"]["field"] == "sepal_width"
        ok = client.post("/outcome", json={"request_id": body["request_id"], "y_true": 0})
        assert ok.status_code == 200
        assert client.post("/outcome", json={"request_id": "nope", "y_true": 0}).status_code == 404
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        text = metrics.text
        assert 'embedml_requests_total{model="iris",version="1"} 3.0' in text
        assert 'embedml_errors_total{model="iris",type="SchemaError",version="1"} 2.0' in text
        assert 'embedml_quality{metric="accuracy",model="iris",version="1"} 1.0' in text
    # shutdown closed the handle: the log is complete and no thread is left behind
    assert handle.state is embedml.HandleState.CLOSED
    assert len(embedml.read_jsonl(log)) == 3
    assert set(threading.enumerate()) == before


def test_monitoring_example_runs(subprocess_env):
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "monitoring.py")],
        env=subprocess_env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "drift report (bigger houses)" in text
    assert "drift callback fired for: [('area', 'drift')" in text
    assert "2001 predictions logged" in text
    assert "field 'rooms'" in text

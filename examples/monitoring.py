"""Watch a model in production: log predictions, read metrics, join outcomes, catch drift.

    .venv/bin/python examples/monitoring.py

1. Train a house-price regressor and save it with a reference profile of its training data.
2. Load it with two hooks: a JSON Lines prediction log and a DriftMonitor.
3. Serve traffic like the training data, report the true prices later (log_outcome), and
   print the metrics snapshot and a quiet drift report.
4. Serve traffic where houses got bigger: the drift callback fires and the report shows
   which feature moved, while the live MAE shows what it did to the model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from sklearn.linear_model import LinearRegression

import embedml


class House(BaseModel):
    area: float = Field(gt=0)
    rooms: int = Field(ge=1, le=12)
    age: float = Field(ge=0)


def houses(rng: np.random.Generator, n: int, area_mean: float = 100.0) -> tuple[list[dict], np.ndarray]:
    area = rng.normal(area_mean, 25, n).clip(20, None)
    rooms = (area / 25 + rng.normal(0, 0.7, n)).round().clip(1, 12).astype(int)
    age = rng.exponential(30, n)
    # the true price is not linear in area: the model trained on ~100 m2 under-prices big houses
    price = 2.0 * area + 0.012 * (area - 100) ** 2 + 15 * rooms - 0.8 * age + rng.normal(0, 10, n)
    records = [{"area": float(a), "rooms": int(r), "age": float(g)} for a, r, g in zip(area, rooms, age)]
    return records, price


def main() -> None:
    rng = np.random.default_rng(0)
    root = Path(tempfile.mkdtemp(prefix="embedml-monitoring-"))
    store = embedml.ModelStore(root / "models")

    train, price = houses(rng, 5000)
    X = np.array([[r["area"], r["rooms"], r["age"]] for r in train])
    model = LinearRegression().fit(X, price)
    store.save("houses", model, input_schema=House, reference_data=train,
               reference_outputs=model.predict(X))  # fmt: skip

    alerts = []
    monitor = embedml.DriftMonitor(
        window=1000, on_drift=lambda feature, row: alerts.append((feature, row["status"]))
    )
    log_path = root / "predictions.jsonl"
    handle = store.load("houses", hooks=[embedml.JsonlSink(log_path), monitor])
    handle.warmup()
    print("health:", handle.health())

    def serve(records: list[dict], prices: np.ndarray) -> None:
        for record, true_price in zip(records, prices):
            p = handle.predict(record, details=True)
            handle.log_outcome(p.request_id, true_price)  # the sale price, known later

    serve(*houses(rng, 1000))
    m = handle.metrics()
    print("\n== metrics after 1000 normal requests ==")
    print(json.dumps({k: m[k] for k in ("requests", "errors", "latency_ms", "quality")}, indent=1))
    print("\n== drift report (same distribution) ==")
    print(monitor.report())

    serve(*houses(rng, 1000, area_mean=150.0))  # the market moved to bigger houses
    print("\n== drift report (bigger houses) ==")
    report = monitor.report()
    print(report)
    print("\ndrift callback fired for:", alerts)
    print("live quality:", handle.metrics()["quality"])

    try:
        handle.predict({"area": 80.0, "rooms": 0, "age": 3.0})
    except embedml.SchemaError as exc:
        print("\nrejected:", exc)
    handle.close()  # every accepted prediction record is on disk after close()
    logged = embedml.read_jsonl(log_path)
    print(f"\n{len(logged)} predictions logged in {log_path}; first: {json.dumps(logged[0])[:160]}...")
    assert "area" in report.drifted, "the demo expects drift on 'area'"


if __name__ == "__main__":
    main()

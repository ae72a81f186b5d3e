"""End-to-end demo: train, save two versions, alias, load, predict, and see a clear error;
then serve it: batching, a prediction log, metrics, hot swaps, and a scored file.

Run with ``make demo`` (or ``python examples/quickstart.py [STORE_DIR]``). It trains a small
scikit-learn model, saves it as version 1 (joblib) and version 2 (ONNX via skl2onnx), points the
alias ``production`` at version 2, loads by alias and by specifier, predicts single records and
batches, and shows the typed error a bad record gets. Part two loads the production version
with dynamic batching and a JSON Lines prediction log, calls it from 8 threads, prints the
metrics, hot-swaps to a retrained version 3 and back while serving, and scores a CSV file with a bad row.
Part three feeds the same handle from a Redis stream (a throw-away redis-server) and checks
every output entry and dead letter.
More: ``examples/monitoring.py`` (drift), ``examples/rollout.py`` (gates, canary, rollback).
"""

from __future__ import annotations

import csv
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from stream_redis import stream_demo  # examples/ is on sys.path when this file is run

import embedml


class Flower(BaseModel):
    """One input record: four measurements in centimetres."""

    sepal_length: float = Field(gt=0, lt=20)
    sepal_width: float = Field(gt=0, lt=20)
    petal_length: float = Field(gt=0, lt=20)
    petal_width: float = Field(gt=0, lt=20)


def train() -> tuple[object, np.ndarray]:
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    return model, X


def to_onnx(model: object) -> object:
    from skl2onnx import to_onnx as convert

    # zipmap=False: probabilities as a plain float tensor rather than a list of dicts.
    return convert(model, np.zeros((1, 4), np.float32), options={"zipmap": False},
                   target_opset=17)  # fmt: skip


def main(root: Path) -> None:
    started = time.perf_counter()
    store = embedml.ModelStore(root)
    model, X = train()

    v1 = store.save("iris", model, input_schema=Flower, metadata={"trained_on": "iris"})
    v2 = store.save("iris", to_onnx(model), input_schema=Flower)
    print(f"saved {v1} ({v1.manifest.format}) and {v2} ({v2.manifest.format}) in {root}")
    store.set_alias("iris", "production", v2.version)
    print(f"versions: {store.versions('iris')}, aliases: {store.aliases('iris')}")

    record = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
    # The ONNX graph has two outputs (label, probabilities): serve the label.
    with store.load("iris", "@production", outputs="label") as prod, \
            store.load("iris", "<2") as old:
        p = prod.predict(record, details=True)
        print(f"{p.model}@{p.version} ({prod.format}) predicts {p.output} for {record}")
        print(f"{old.name}@{old.version} ({old.format}) predicts {old.predict(record)}")

        batch = prod.predict_batch(X[::30])
        raw = model.predict(X[::30])
        print(f"batch of 5 rows (one every 30) -> {batch.tolist()}; sklearn itself says {raw.tolist()}")
        assert batch.tolist() == raw.tolist() == old.predict_batch(X[::30]).tolist()

        records = [record, {**record, "petal_width": -1.0}, record]
        try:
            prod.predict_batch(records)
        except embedml.SchemaError as exc:
            print(f"bad record rejected, model not called: {type(exc).__name__}: {exc}")
            print(f"  field={exc.field!r} index={exc.index} version={exc.version}")
        good = [r for i, r in enumerate(records) if i != 1]
        print(f"the other records still score: {prod.predict_batch(good).tolist()}")

    serve(store, root, X, model)
    print(f"done in {time.perf_counter() - started:.1f} s")


def serve(store: embedml.ModelStore, root: Path, X: np.ndarray, model: object) -> None:
    """Part two: what a service does with the production version."""
    names = list(Flower.model_fields)
    records = [dict(zip(names, map(float, row))) for row in X]
    # Version 3: a retrained candidate (weaker regularisation), also ONNX.
    y = model.predict(X)
    candidate = make_pipeline(StandardScaler(), LogisticRegression(C=0.05)).fit(X, y)
    store.save("iris", to_onnx(candidate), input_schema=Flower)
    expected = {"2": model.predict(X).tolist(), "3": candidate.predict(X).tolist()}
    log = root.parent / "predictions.jsonl"
    handle = store.load(
        "iris", "@production", outputs="label",
        batching=embedml.Batching(max_batch_size=32, max_wait_ms=2.0),
        hooks=[embedml.JsonlSink(log)],
    )  # fmt: skip
    wrong: list[int] = []
    versions_seen: list[str] = []

    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            time.sleep(0.001)  # a request arrives
            i = (i + 8) % len(records)
            p = handle.predict(records[i], details=True)
            versions_seen.append(p.version)
            if int(p.output) != expected[p.version][i]:
                wrong.append(i)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    # Hot swaps while the threads are calling: no call is lost or mixed up.
    for target in ("3", "@production", None):
        mark = len(versions_seen)
        while len(versions_seen) < mark + 100:
            time.sleep(0.001)
        if target is None:
            stop.set()
        else:
            handle.swap(target)
    for t in threads:
        t.join()
    m = handle.metrics()
    print(f"8 threads, {m['requests']} calls served by versions {sorted(set(versions_seen))}, "
          f"{len(wrong)} wrong; p50 {m['latency_ms']['total']['p50']:.2f} ms, "
          f"rows per model call {dict(m['batch_size'])}")  # fmt: skip

    source, sink = root.parent / "flowers.csv", root.parent / "scored.csv"
    with open(source, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *names])
        for i, row in enumerate(X[:20]):
            cells = row.tolist()
            if i == 7:
                cells[1] = "oops"  # a bad cell: this row is rejected, the others are scored
            w.writerow([f"f{i}", *cells])
    summary = embedml.score(handle, source, sink, id_column="id")
    print(f"scored {source.name}: {summary.scored} rows scored, {summary.rejected} rejected "
          f"(see {summary.rejects.name})")  # fmt: skip
    # Part three: the same handle scores events from a Redis stream (examples/stream_redis.py).
    stream_demo(handle, records, expected[handle.version])
    handle.close()  # writes out the prediction log
    print(f"prediction log: {len(log.read_text().splitlines())} records in {log.name}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "models")

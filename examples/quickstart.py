"""End-to-end demo: train, save two versions, alias, load, predict, and see a clear error.

Run with ``make demo`` (or ``python examples/quickstart.py [STORE_DIR]``). It trains a small
scikit-learn model, saves it as version 1 (joblib) and version 2 (ONNX via skl2onnx), points the
alias ``production`` at version 2, loads by alias and by specifier, predicts single records and
batches, and shows the typed error a bad record gets.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

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

    print(f"done in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "models")

"""What the hardening costs: input limits on every call, restricted unpickling and signature
checks on every load. Median and p99 per variant, and ratios against the raw model call
(calls) or the default load (loads), all measured in the same run.

    .venv/bin/python benchmarks/bench_security.py          # full
    .venv/bin/python benchmarks/bench_security.py --quick  # a few seconds
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import embedml  # noqa: E402


class Features(BaseModel):
    a: float
    b: float
    c: float
    d: float
    tag: str


class Numeric(BaseModel):
    a: float
    b: float
    c: float
    d: float


def timed(fn, repeat: int) -> tuple[float, float]:
    """(median, p99) in microseconds."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e6)
    return float(np.median(times)), float(np.percentile(times, 99))


def table(title: str, rows: list[tuple[str, float, float]], base: float, unit: str) -> None:
    print(f"\n### {title}\n\n| variant | median {unit} | p99 {unit} | median / baseline |")
    print("|---|---:|---:|---:|")
    for name, med, p99 in rows:
        print(f"| {name} | {med:.1f} | {p99:.1f} | {med / base:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_call, n_load = (300, 5) if args.quick else (3000, 30)

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    y = (X[:, 0] > 0).astype(int)
    lr = LogisticRegression().fit(X, y)
    store = embedml.ModelStore(tempfile.mkdtemp())
    store.save("num", lr, input_schema=Numeric, signing_key="k")
    rec = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    batch = [dict(zip("abcd", row)) for row in X[:1000].tolist()]

    handles = {
        "allow_nan=True (no limit checks)": store.load("num", allow_nan=True),
        "default (allow_nan=False)": store.load("num"),
        "default + max_batch_rows + max_string_length": store.load(
            "num", max_batch_rows=5000, max_string_length=64
        ),
    }
    row = X[:1]
    raw1 = timed(lambda: lr.predict(row), n_call)
    rows = [("raw model.predict (1-row array)", *raw1)]
    rows += [(k, *timed(lambda h=h: h.predict(rec), n_call)) for k, h in handles.items()]
    table("predict, one record (4 float fields)", rows, raw1[0], "us")

    rawb = timed(lambda: lr.predict(X[:1000]), max(30, n_call // 10))
    rows = [("raw model.predict (1000-row array)", *rawb)]
    rows += [
        (k, *timed(lambda h=h: h.predict_batch(batch), max(30, n_call // 10)))
        for k, h in handles.items()
    ]
    table("predict_batch, 1000 records", rows, rawb[0], "us")
    for h in handles.values():
        h.close()

    forest = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    store.save("rf", forest, signing_key="k")
    variants = {
        "default load": {},
        "require_signature=True": {"require_signature": True, "signing_key": "k"},
        "restricted=True": {"restricted": True},
        "restricted + require_signature": {
            "restricted": True,
            "require_signature": True,
            "signing_key": "k",
        },
    }
    rows = [
        (k, *timed(lambda o=o: store.load("rf", **o).close(), n_load)) for k, o in variants.items()
    ]
    size = store.resolve("rf").manifest.size / 1e6
    table(f"load a 50-tree random forest (joblib, {size:.1f} MB)", rows, rows[0][1], "us")


if __name__ == "__main__":
    main()

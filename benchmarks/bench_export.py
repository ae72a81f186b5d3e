"""Edge benchmark: a scikit-learn MLP exported to ONNX, then quantised to int8.

Run from the repository root::

    .venv/bin/python benchmarks/bench_export.py          # full run (~1-2 minutes)
    .venv/bin/python benchmarks/bench_export.py --quick  # smoke run (< 30 s)

One run measures, on the same noisy machine: artifact sizes (pickled sklearn, ONNX float32,
ONNX int8), agreement of labels and max abs difference of probabilities on held-out rows
(from the :class:`embedml.offline.export.ExportReport` of each step), the time ``to_onnx`` and
``quantize`` take, and per-call latency (median, p99) of one row and of a batch through
sklearn, the raw ONNX Runtime sessions and embedml handles. Cases are interleaved round by
round so load from other processes hits them alike; ratios are against the raw float32
``session.run`` of the same batch size.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # benchmark this checkout, not an installed copy

import embedml  # noqa: E402
from embedml.offline.export import ExportReport, quantize, to_onnx  # noqa: E402


def interleaved(cases: dict, rounds: int, per_round: int) -> dict[str, np.ndarray]:
    """Microseconds per call of every case, cases interleaved round by round."""
    for fn in cases.values():
        for _ in range(20):
            fn()
    out: dict[str, list[int]] = {k: [] for k in cases}
    gc.collect()
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in cases.items():
            samples = out[name]
            for _ in range(per_round):
                t0 = clock()
                fn()
                samples.append(clock() - t0)
    return {k: np.asarray(v, dtype=np.float64) / 1e3 for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run to check the script works")
    args = ap.parse_args()
    rounds, per_round, epochs = (5, 50, 5) if args.quick else (20, 200, 30)
    logging.disable(logging.WARNING)  # ONNX Runtime's "consider pre-processing" advice

    import onnxruntime as ort
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    X, y = make_classification(6000, 32, n_informative=16, n_classes=4, random_state=0)
    Xtr, ytr, Xte = X[:5000], y[:5000], X[5000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=epochs, random_state=0)
        mlp.fit(Xtr, ytr)

    with tempfile.TemporaryDirectory() as tmp:
        store = embedml.ModelStore(tmp)
        t0 = time.perf_counter()
        f32 = to_onnx(store, "mlp", mlp, Xte)
        t1 = time.perf_counter()
        i8 = quantize(store, "mlp", f32.version, Xte)
        t2 = time.perf_counter()
        r32, r8 = ExportReport.of(f32), ExportReport.of(i8)
        print(f"MLPClassifier(256, 256), 32 features, 4 classes, {epochs} epochs; {len(Xte)} held-out rows")
        print(f"to_onnx  {t1 - t0:6.2f} s  {r32}")
        print(f"quantize {t2 - t1:6.2f} s  {r8}")
        h32 = store.load("mlp", f32.version)
        h8 = store.load("mlp", i8.version)
        yte = y[5000:]
        acc32 = float(np.mean(h32.predict_batch(Xte)["label"] == yte))
        acc8 = float(np.mean(h8.predict_batch(Xte)["label"] == yte))
        print(f"held-out accuracy: sklearn {mlp.score(Xte, yte):.4f}, ONNX float32 {acc32:.4f}, int8 {acc8:.4f}")
        print()

        so = ort.SessionOptions()
        raw32 = ort.InferenceSession(store.read_artifact(f32), so, providers=["CPUExecutionProvider"])
        raw8 = ort.InferenceSession(store.read_artifact(i8), so, providers=["CPUExecutionProvider"])
        one64, one32 = Xte[:1], Xte[:1].astype(np.float32)
        many64, many32 = Xte[:256], Xte[:256].astype(np.float32)
        for label, x64, x32 in (("1 row", one64, one32), ("256 rows", many64, many32)):
            cases = {
                "sklearn predict_proba": lambda x=x64: mlp.predict_proba(x),
                "raw session.run, float32": lambda x=x32: raw32.run(None, {"X": x}),
                "raw session.run, int8": lambda x=x32: raw8.run(None, {"X": x}),
                "embedml predict_batch, float32": lambda x=x64: h32.predict_batch(x),
                "embedml predict_batch, int8": lambda x=x64: h8.predict_batch(x),
            }
            res = interleaved(cases, rounds, per_round)
            base = float(np.median(res["raw session.run, float32"]))
            print(f"| {label} | median us | p99 us | vs raw float32 |")
            print("|---|---|---|---|")
            for name, us in res.items():
                med = float(np.median(us))
                print(f"| {name} | {med:,.1f} | {float(np.percentile(us, 99)):,.1f} | {med / base:.2f}x |")
            print()
        h32.close()
        h8.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Foundation benchmark: what embedml's handle costs over the raw runtime, and over MLflow.

Run from the repository root::

    .venv/bin/python benchmarks/bench_foundation.py          # full run (~2-3 minutes)
    .venv/bin/python benchmarks/bench_foundation.py --quick  # smoke run (< 30 s)

Everything is measured in ONE run, so ratios compare like with like on the same noisy
machine. The model is a scikit-learn ``LogisticRegression`` on 20 float features, converted
to ONNX with skl2onnx (``zipmap=False``: outputs ``label`` and ``probabilities``). Per-call
latencies are timed one call at a time, with the cases interleaved round by round so that
load from other processes hits every case alike; the table reports the median and p99 of
those samples. Process-level figures (``import embedml``, cold load) run in fresh
subprocesses, alternating between the two sides.

MLflow (``pip install "embedml[bench]"``) is optional: without it those rows are skipped
with the reason printed.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))  # benchmark this checkout, not an installed copy

import embedml  # noqa: E402

N_FEATURES = 20
BATCH = 1024
FIELDS = [f"f{i}" for i in range(N_FEATURES)]
# Shorter names of the baselines in the ratio column.
SHORT = {
    "raw onnxruntime session.run": "raw session.run",
    f"raw onnxruntime session.run, {BATCH} rows": f"raw session.run, {BATCH} rows",
    "MLflow pyfunc, ONNX (numpy row)": "MLflow pyfunc, ONNX",
    "MLflow pyfunc, sklearn (DataFrame signature)": "MLflow pyfunc, sklearn DataFrame",
}


# ------------------------------------------------------------------ measuring


def stats(samples_ns: list[int] | list[float]) -> tuple[float, float]:
    """Median and p99 of samples, in microseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def time_calls(cases: dict[str, Callable[[], Any]], rounds: int, per_round: int) -> dict[str, list[int]]:
    """Time every call of every case on its own, interleaving cases round by round."""
    clock = time.perf_counter_ns
    for fn in cases.values():  # warm-up: first calls allocate, JIT-compile nothing, fill caches
        for _ in range(max(20, per_round // 5)):
            fn()
    samples: dict[str, list[int]] = {name: [] for name in cases}
    gc.collect()
    for _ in range(rounds):
        for name, fn in cases.items():
            out = samples[name]
            for _ in range(per_round):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return samples


def fresh(code: str, repeats: int) -> list[float]:
    """Run ``code`` (which prints seconds) in ``repeats`` fresh interpreters; return the values."""
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONSTARTUP", None)
    # An installed package has its .pyc files compiled at install time; without this a
    # checkout run under PYTHONDONTWRITEBYTECODE would recompile embedml on every start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    values = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        values.append(float(out.stdout.strip().splitlines()[-1]))
    return values


def alternate(codes: dict[str, str], repeats: int) -> dict[str, list[float]]:
    """Like :func:`fresh` for several snippets, alternating between them run by run."""
    results: dict[str, list[float]] = {name: [] for name in codes}
    for code in codes.values():  # not counted: writes .pyc files, warms the OS file cache
        fresh(code, 1)
    for _ in range(repeats):
        for name, code in codes.items():
            results[name].extend(fresh(code, 1))
    return results


# ------------------------------------------------------------------ the models


def lr_model() -> dict[str, Any]:
    """The benchmark model: its data ``X``, ``y``, the sklearn model and its ONNX graph.

    ``X`` is the first draw of ``np.random.default_rng(0)``, so a process without sklearn can
    make the same rows (``bench_compare.py``'s case scripts do).
    """
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 3] > 0).astype(np.int64)
    sk = LogisticRegression(max_iter=500).fit(X, y)
    onx = to_onnx(sk, X[:1], options={"zipmap": False}, target_opset=17)
    return {"X": X, "y": y, "sk": sk, "onx": onx}


def build(tmp: Path) -> dict[str, Any]:
    from pydantic import create_model

    m = lr_model()
    X, y, sk, onx = m["X"], m["y"], m["sk"], m["onx"]
    onnx_path = tmp / "model.onnx"
    onnx_path.write_bytes(onx.SerializeToString())

    Features = create_model("Features", **{f: (float, ...) for f in FIELDS})
    store = embedml.ModelStore(tmp / "store")
    store.save("lr", onx)  # tensor schema read from the ONNX graph
    store.save("lr_record", onx, input_schema=Features)  # record schema from pydantic
    return {"X": X, "y": y, "sk": sk, "onx": onx, "onnx_path": onnx_path, "store": store}


def build_mlflow(tmp: Path, m: dict[str, Any]) -> dict[str, Any] | str:
    """MLflow pyfunc models on the same ONNX graph and on the sklearn model, or why not."""
    try:
        import mlflow.onnx
        import mlflow.pyfunc
        import mlflow.sklearn
        import pandas as pd
        from mlflow.models import infer_signature
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        return f"MLflow is not installed ({exc}); install it with: pip install 'embedml[bench]'"
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    mlflow.onnx.save_model(
        m["onx"], tmp / "mlflow_onnx", pip_requirements=["onnxruntime"],
        onnx_execution_providers=["CPUExecutionProvider"],
    )  # fmt: skip
    # The sklearn model with a DataFrame signature, as MLflow users log it (fitted on the
    # DataFrame, so its coefficients equal the numpy-fitted model's).
    df = pd.DataFrame(m["X"], columns=FIELDS)
    sk_df = LogisticRegression(max_iter=500).fit(df, m["y"])
    mlflow.sklearn.save_model(
        sk_df, tmp / "mlflow_sk", signature=infer_signature(df, sk_df.predict(df)),
        pip_requirements=["scikit-learn"], serialization_format="pickle",
    )  # fmt: skip
    return {
        "onnx": mlflow.pyfunc.load_model(str(tmp / "mlflow_onnx")),
        "sk": mlflow.pyfunc.load_model(str(tmp / "mlflow_sk")),
        "row_df": df.iloc[:1],
        "version": mlflow.__version__,
    }


# ------------------------------------------------------------------ the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (< 30 s)")
    args = parser.parse_args()
    quick = args.quick
    rounds, per_round = (5, 300) if quick else (40, 1000)
    batch_rounds, batch_per_round = (5, 20) if quick else (40, 50)
    subprocess_runs = 3 if quick else 21

    import onnxruntime as ort

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="embedml-bench-") as d:
        tmp = Path(d)
        m = build(tmp)
        X, sk, store = m["X"], m["sk"], m["store"]
        sess = ort.InferenceSession(m["onnx_path"].read_bytes(), providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        h_arr = store.load("lr")
        h_rec = store.load("lr_record")
        h_nan = store.load("lr", allow_nan=True)  # without the default NaN/inf input check

        row = X[0]  # one row, no batch axis (what handle.predict takes)
        row2d = X[:1]  # the same row as the raw runtime takes it
        record = {f: float(v) for f, v in zip(FIELDS, row)}
        batch = np.ascontiguousarray(np.resize(X, (BATCH, N_FEATURES)))

        # Same answers before timing anything.
        raw_label, raw_proba = sess.run(None, {in_name: row2d})
        for got in (h_arr.predict(row), h_rec.predict(record)):
            assert int(got["label"]) == int(raw_label[0]), got
            np.testing.assert_allclose(got["probabilities"], raw_proba[0], rtol=1e-5)
        assert int(sk.predict(row2d)[0]) == int(raw_label[0])
        np.testing.assert_array_equal(
            h_arr.predict_batch(batch)["label"], sess.run(None, {in_name: batch})[0]
        )

        ml = build_mlflow(tmp, m)
        ml_reason = ml if isinstance(ml, str) else None

        cases: dict[str, Callable[[], Any]] = {
            "raw onnxruntime session.run": lambda: sess.run(None, {in_name: row2d}),
            "embedml predict (numpy row)": lambda: h_arr.predict(row),
            "embedml predict (numpy row, allow_nan=True)": lambda: h_nan.predict(row),
            "embedml predict (dict, pydantic schema)": lambda: h_rec.predict(record),
            "raw sklearn predict": lambda: sk.predict(row2d),
        }
        if not isinstance(ml, str):
            ml_onnx, ml_sk, row_df = ml["onnx"], ml["sk"], ml["row_df"]
            cases["MLflow pyfunc, ONNX (numpy row)"] = lambda: ml_onnx.predict(row2d)
            # MLflow's sklearn pyfunc is ~100x slower per call: fewer samples keep the run short.
        one = time_calls(cases, rounds, per_round)
        if not isinstance(ml, str):
            slow = {"MLflow pyfunc, sklearn (DataFrame signature)": lambda: ml_sk.predict(row_df)}
            one.update(time_calls(slow, rounds, max(5, per_round // 20)))
        many = time_calls(
            {
                f"raw onnxruntime session.run, {BATCH} rows": lambda: sess.run(None, {in_name: batch}),
                f"embedml predict_batch, {BATCH} rows": lambda: h_arr.predict_batch(batch),
                f"embedml predict_batch, {BATCH} rows, allow_nan=True": lambda: h_nan.predict_batch(batch),
            },
            batch_rounds,
            batch_per_round,
        )
        h_arr.close()
        h_rec.close()
        h_nan.close()
        # Loading again in this (warm) process: embedml's own work per load (resolve the
        # version, read and hash the artifact, build the pipeline) on top of the session.
        onnx_file = m["onnx_path"]
        warm = time_calls(
            {
                "InferenceSession, warm process": lambda: ort.InferenceSession(
                    onnx_file.read_bytes(), providers=["CPUExecutionProvider"]
                ),
                "store.load, warm process": lambda: store.load("lr").close(),
            },
            5 if quick else 30,
            3 if quick else 5,
        )

        # Fresh processes. Both cold-load sides include their own imports and read the same
        # bytes from disk; embedml also resolves "latest", hashes the artifact and builds
        # its pipeline. The "warm imports" variant imports everything first on both sides.
        root, onnx_path = str(store.root), str(m["onnx_path"])
        t = "import time; t0 = time.perf_counter()\n"
        done = "print(time.perf_counter() - t0)"
        imp = {"import embedml": f"{t}import embedml\n{done}"}
        load_incl = {
            "cold embedml.load (incl. imports)": f"{t}import embedml\nh = embedml.load('lr', store={root!r})\n{done}",
            "cold InferenceSession (incl. imports)": (
                f"{t}import onnxruntime as ort\n"
                f"s = ort.InferenceSession(open({onnx_path!r}, 'rb').read(), providers=['CPUExecutionProvider'])\n{done}"
            ),
        }
        load_excl = {
            "cold embedml.load (imports done first)": (
                "import onnxruntime, embedml, embedml.store.model_store, embedml.serving.handle\n"
                f"{t}h = embedml.load('lr', store={root!r})\n{done}"
            ),
            "cold InferenceSession (imports done first)": (
                f"import onnxruntime as ort\n{t}"
                f"s = ort.InferenceSession(open({onnx_path!r}, 'rb').read(), providers=['CPUExecutionProvider'])\n{done}"
            ),
        }
        procs = {name: [v * 1e9 for v in vs] for name, vs in alternate(imp, subprocess_runs).items()}
        for group in (load_incl, load_excl):
            procs.update(
                {n: [v * 1e9 for v in vs] for n, vs in alternate(group, subprocess_runs).items()}
            )
        if not isinstance(ml, str):
            procs["import mlflow.pyfunc"] = [
                v * 1e9 for v in fresh(f"{t}import mlflow.pyfunc\n{done}", 1 if quick else 5)
            ]

    # ------------------------------------------------------------------ report
    s = {name: stats(v) for name, v in {**one, **many, **warm, **procs}.items()}
    rows: list[tuple[str, str, str, str]] = []  # case, median/p99, ratio, target verdict
    verdicts: list[tuple[str, bool]] = []

    def ratio(case: str, base: str, limit: float | None = None, label: str = "") -> None:
        r = s[case][0] / s[base][0]
        verdict = ""
        if limit is not None:
            ok = r <= limit
            verdict = f"<= {limit:g}x: {'met' if ok else 'MISSED'}"
            verdicts.append((label or f"{case} vs {base}", ok))
        short = SHORT.get(base, base)
        text = f"{r:.2f}x {short}" if r >= 0.1 else f"{r:.3f}x {short} ({1 / r:.0f}x faster)"
        rows.append((case, fmt(s[case]), text, verdict))

    def fmt(ms: tuple[float, float]) -> str:
        med, p99 = ms
        if med >= 1000:
            return f"{med / 1000:,.1f} ms / {p99 / 1000:,.1f} ms"
        return f"{med:,.1f} us / {p99:,.1f} us"

    raw = "raw onnxruntime session.run"
    rows.append((raw, fmt(s[raw]), "1.00x (baseline)", ""))
    ratio("embedml predict (numpy row)", raw, 2.0)
    ratio("embedml predict (numpy row, allow_nan=True)", raw)
    ratio("embedml predict (dict, pydantic schema)", raw, 4.0)
    ratio("raw sklearn predict", raw)
    if ml_reason is None:
        for mlcase in ("MLflow pyfunc, ONNX (numpy row)", "MLflow pyfunc, sklearn (DataFrame signature)"):
            ratio(mlcase, raw)
    rows.append(("", "", "", ""))
    for case in ("embedml predict (numpy row)", "embedml predict (dict, pydantic schema)"):
        ratio(case, "raw sklearn predict")
        if ml_reason is None:
            for mlcase in ("MLflow pyfunc, ONNX (numpy row)", "MLflow pyfunc, sklearn (DataFrame signature)"):
                ratio(case, mlcase, 1.0, f"{case} faster than {mlcase}")
    rows.append(("", "", "", ""))
    braw = f"raw onnxruntime session.run, {BATCH} rows"
    rows.append((braw, fmt(s[braw]), "1.00x (baseline)", ""))
    ratio(f"embedml predict_batch, {BATCH} rows", braw, 1.2)
    ratio(f"embedml predict_batch, {BATCH} rows, allow_nan=True", braw)
    rows.append(("", "", "", ""))
    med_imp = s["import embedml"][0]
    ok = med_imp <= 100_000
    verdicts.append(("import embedml <= 100 ms", ok))
    rows.append(("import embedml (fresh process)", fmt(s["import embedml"]), "", f"<= 100 ms: {'met' if ok else 'MISSED'}"))
    base = "cold InferenceSession (incl. imports)"
    rows.append((base, fmt(s[base]), "1.00x (baseline)", ""))
    ratio("cold embedml.load (incl. imports)", base, 1.5, "cold load <= 1.5x (incl. imports)")
    base = "cold InferenceSession (imports done first)"
    rows.append((base, fmt(s[base]), "1.00x (baseline)", ""))
    ratio("cold embedml.load (imports done first)", base)
    base = "InferenceSession, warm process"
    rows.append((base, fmt(s[base]), "1.00x (baseline)", ""))
    ratio("store.load, warm process", base)
    if "import mlflow.pyfunc" in s:
        rows.append(("import mlflow.pyfunc (fresh process)", fmt(s["import mlflow.pyfunc"]), "", ""))

    widths = [max(len(r[i]) for r in rows + [("case", "median / p99", "ratio (medians)", "target")]) for i in range(4)]
    header = ("case", "median / p99", "ratio (medians)", "target")
    print()
    print(f"embedml {embedml.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, "
          f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
          + ("" if ml_reason else f", MLflow {ml['version']}")  # type: ignore[index]
          + (", --quick" if quick else ""))  # fmt: skip
    print(f"one row: {rounds * per_round} samples per case; batch: {batch_rounds * batch_per_round}; "
          f"fresh processes: {subprocess_runs} per case")  # fmt: skip
    if ml_reason:
        print(f"MLflow skipped: {ml_reason}")
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        if not any(r):
            continue
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    print()
    missed = [label for label, ok in verdicts if not ok]
    print(f"targets met: {len(verdicts) - len(missed)}/{len(verdicts)}"
          + (f"; missed: {'; '.join(missed)}" if missed else "")
          + ("; not measured: faster than MLflow (MLflow skipped)" if ml_reason else ""))  # fmt: skip
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Batch scoring throughput: embedml.score vs a hand-written pandas + model loop, peak memory,
predict_stream, and Ray Data on 2 CPUs -- all on the same files, in the same run.

    .venv/bin/python benchmarks/bench_scoring.py            # 200k rows, 5 repeats
    .venv/bin/python benchmarks/bench_scoring.py --quick    # 20k rows, 2 repeats
    .venv/bin/python benchmarks/bench_scoring.py --no-ray

The model is a scikit-learn LogisticRegression on 8 numeric features with a record schema
(pydantic, with one bound). Every path reads the input file, predicts, and writes an
output file of the same format. Times are wall-clock per full pass over the file; the
table shows the median and p99 of the repeats and rows/s from the median.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field
from sklearn.linear_model import LogisticRegression

import embedml

FEATURES = [f"f{i}" for i in range(8)]
CHUNK = 1024


class Row(BaseModel):
    f0: float = Field(ge=-100, le=100)
    f1: float
    f2: float
    f3: float
    f4: float
    f5: float
    f6: float
    f7: float


def make_data(root: Path, n: int) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(n, 8)).round(6), columns=FEATURES)
    df.insert(0, "id", np.arange(n))
    paths = {"csv": root / "in.csv", "jsonl": root / "in.jsonl", "parquet": root / "in.parquet"}
    df.to_csv(paths["csv"], index=False)
    df.to_json(paths["jsonl"], orient="records", lines=True)
    df.to_parquet(paths["parquet"], index=False)
    return paths


def pandas_loop(model, src: Path, dst: Path, fmt: str) -> None:
    """What a user writes by hand: chunked pandas read, model.predict, append output."""
    if fmt == "parquet":
        writer = None
        for batch in pq.ParquetFile(src).iter_batches(batch_size=CHUNK):
            chunk = batch.to_pandas()
            out = pd.DataFrame({"id": chunk["id"], "prediction": model.predict(chunk[FEATURES].to_numpy())})
            table = pa.Table.from_pandas(out, preserve_index=False)
            writer = writer or pq.ParquetWriter(dst, table.schema)
            writer.write_table(table)
        writer.close()
        return
    reader = (
        pd.read_csv(src, chunksize=CHUNK)
        if fmt == "csv"
        else pd.read_json(src, lines=True, chunksize=CHUNK)
    )
    with open(dst, "w") as f:
        for i, chunk in enumerate(reader):
            out = pd.DataFrame({"id": chunk["id"], "prediction": model.predict(chunk[FEATURES].to_numpy())})
            if fmt == "csv":
                out.to_csv(f, index=False, header=i == 0)
            else:
                out.to_json(f, orient="records", lines=True)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def p99(xs: list[float]) -> float:
    return float(np.percentile(xs, 99))


def peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def bench_ray(store_root: Path, src: Path, out_dir: Path, n: int, repeats: int) -> dict:
    import ray

    from embedml.integrations.ray import predict

    t = time.perf_counter()
    src_dir = str(Path(embedml.__file__).resolve().parents[1])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": src_dir}},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    init_s = time.perf_counter() - t
    results = {"init_s": init_s}
    try:
        for actors in (1, 2):
            times = []
            for r in range(repeats):
                target = out_dir / f"ray{actors}_{r}"
                t = time.perf_counter()
                ds = ray.data.read_parquet(str(src), override_num_blocks=8)
                # Leave CPU for Ray's read/write tasks: actors reserving both CPUs would starve
                # them and the job would never finish (concurrency * num_cpus < num_cpus).
                ds = predict(ds, store_root, "clf", batch_size=CHUNK * 4, concurrency=actors, num_cpus=1 / actors - 0.01 if actors > 1 else 1)
                ds.select_columns(["id", "prediction", "error"]).write_parquet(str(target))
                times.append(time.perf_counter() - t)
                rows = pq.read_table(str(target)).num_rows
                assert rows == n, rows
                shutil.rmtree(target)
            results[actors] = times
    finally:
        ray.shutdown()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k rows, 2 repeats")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    n = args.rows or (20_000 if args.quick else 200_000)
    repeats = args.repeats or (2 if args.quick else 5)

    root = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    try:
        rng = np.random.default_rng(1)
        X = rng.normal(size=(5000, 8))
        model = LogisticRegression().fit(X, (X[:, 0] + X[:, 1] - X[:, 2] > 0).astype(int))
        store = embedml.ModelStore(root / "models")
        store.save("clf", model, input_schema=Row)
        paths = make_data(root, n)
        handle = store.load("clf")
        raw_predict = model  # the same fitted estimator, called directly

        rows = []
        for fmt, src in paths.items():
            dst_e, dst_p = root / f"out_e.{fmt}", root / f"out_p.{fmt}"
            e = timed(lambda src=src, dst=dst_e: embedml.score(handle, src, dst, batch_size=CHUNK, id_column="id", progress=False), repeats)
            p = timed(lambda src=src, dst=dst_p, fmt=fmt: pandas_loop(raw_predict, src, dst, fmt), repeats)
            # same predictions from both paths
            got = pd.read_parquet(dst_e) if fmt == "parquet" else pd.read_csv(dst_e) if fmt == "csv" else pd.read_json(dst_e, lines=True)
            ref = pd.read_parquet(dst_p) if fmt == "parquet" else pd.read_csv(dst_p) if fmt == "csv" else pd.read_json(dst_p, lines=True)
            assert got["prediction"].tolist() == ref["prediction"].tolist()
            small = root / f"small.{fmt}"
            if fmt == "parquet":
                pq.write_table(pq.read_table(src).slice(0, n // 8), small)
            elif fmt == "csv":
                pd.read_csv(src, nrows=n // 8).to_csv(small, index=False)
            else:
                pd.read_json(src, lines=True, nrows=n // 8).to_json(small, orient="records", lines=True)
            mem_small = peak_mb(lambda small=small, dst=dst_e: embedml.score(handle, small, dst, batch_size=CHUNK, id_column="id", progress=False))
            mem_full = peak_mb(lambda src=src, dst=dst_e: embedml.score(handle, src, dst, batch_size=CHUNK, id_column="id", progress=False))
            mem_pandas = peak_mb(lambda src=src, dst=dst_p, fmt=fmt: pandas_loop(raw_predict, src, dst, fmt))
            rows.append(
                {
                    "format": fmt,
                    "file_mb": src.stat().st_size / 1e6,
                    "embedml_median_s": statistics.median(e),
                    "embedml_p99_s": p99(e),
                    "pandas_median_s": statistics.median(p),
                    "pandas_p99_s": p99(p),
                    "peak_mb_small": mem_small,
                    "peak_mb_full": mem_full,
                    "peak_mb_pandas": mem_pandas,
                }
            )

        # streaming: predict_stream over the records vs predict_batch on the same chunks
        records = pd.read_parquet(paths["parquet"], columns=FEATURES).head(min(n, 50_000)).to_dict("records")
        s = timed(lambda: sum(1 for _ in handle.predict_stream(iter(records), batch_size=256)), repeats)
        b = timed(lambda: [handle.predict_batch(records[i : i + 256]) for i in range(0, len(records), 256)], repeats)

        handle.close()
        print(f"\n{n} rows x 8 features, sklearn LogisticRegression, chunk {CHUNK}, {repeats} repeats\n")
        print("| format | file MB | embedml median s (p99) | pandas loop median s (p99) | embedml rows/s | pandas rows/s | embedml / pandas | peak MB embedml (1/8 file -> full) | peak MB pandas |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            er, pr = n / r["embedml_median_s"], n / r["pandas_median_s"]
            print(
                f"| {r['format']} | {r['file_mb']:.1f} | {r['embedml_median_s']:.2f} ({r['embedml_p99_s']:.2f}) | "
                f"{r['pandas_median_s']:.2f} ({r['pandas_p99_s']:.2f}) | {er:,.0f} | {pr:,.0f} | {er / pr:.2f}x | "
                f"{r['peak_mb_small']:.1f} -> {r['peak_mb_full']:.1f} | {r['peak_mb_pandas']:.1f} |"
            )
        m = len(records)
        print(f"\nstreaming {m} records, batch 256: predict_stream {m / statistics.median(s):,.0f} rows/s "
              f"(p99 pass {p99(s):.2f}s), predict_batch loop {m / statistics.median(b):,.0f} rows/s "
              f"-> ratio {statistics.median(b) / statistics.median(s):.2f}x")
        ray_res = None
        if not args.no_ray:
            try:
                ray_res = bench_ray(store.root, paths["parquet"], root, n, max(2, repeats // 2))
            except ImportError:
                print("ray is not installed; skipping the Ray rows", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if ray_res is not None:
        single = n / next(r["embedml_median_s"] for r in rows if r["format"] == "parquet")
        print(f"\nRay Data on 2 CPUs (parquet -> parquet, includes actor start-up; ray.init took {ray_res['init_s']:.1f}s):\n")
        print("| path | median s (p99) | rows/s | vs embedml.score |")
        print("|---|---|---|---|")
        print(f"| embedml.score, 1 process | {n / single:.2f} | {single:,.0f} | 1.00x |")
        for actors in (1, 2):
            t = ray_res[actors]
            rr = n / statistics.median(t)
            print(f"| Ray, {actors} actor(s) | {statistics.median(t):.2f} ({p99(t):.2f}) | {rr:,.0f} | {rr / single:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ray": ray_res}, indent=2, default=str))


if __name__ == "__main__":
    main()

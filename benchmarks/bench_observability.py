"""Throughput cost of observability: no hooks vs JsonlSink (100% sampling) vs DriftMonitor.

The model is an MLP in ONNX (20 -> 256 -> 256 -> 2, float32, ReLU), built here with
onnx.helper, run by ONNX Runtime with intra_op_num_threads=1. 64 threads call
``handle.predict`` on single records for a fixed time per scenario; the raw ONNX Runtime
session called the same way is the reference. When ``embedml.Batching`` exists, handles are
loaded with ``batching=embedml.Batching()``.

    .venv/bin/python benchmarks/bench_observability.py [--quick] [--threads 64] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import embedml  # noqa: E402

IN, HIDDEN, OUT = 20, 256, 2


def build_mlp():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    sizes = [IN, HIDDEN, HIDDEN, OUT]
    for i in range(3):
        w = rng.normal(scale=1 / np.sqrt(sizes[i]), size=(sizes[i], sizes[i + 1]))
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"W{i}"),
            numpy_helper.from_array(np.zeros(sizes[i + 1], np.float32), f"b{i}"),
        ]
        nodes += [helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"])]
        nodes += [helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        prev = f"a{i}"
        if i < 2:
            nodes += [helper.make_node("Relu", [prev], [f"r{i}"])]
            prev = f"r{i}"
    nodes += [helper.make_node("Identity", [prev], ["y"])]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, OUT])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(call, threads: int, seconds: float, rows: np.ndarray) -> dict[str, float]:
    """Run ``call(row)`` from ``threads`` threads for ``seconds``; calls/s and latencies."""
    stop = threading.Event()
    start_gate = threading.Barrier(threads + 1)
    lat: list[list[float]] = [[] for _ in range(threads)]

    def worker(k: int) -> None:
        mine = lat[k]
        i = k
        start_gate.wait()
        while not stop.is_set():
            t = time.perf_counter()
            call(rows[i % len(rows)])
            mine.append(time.perf_counter() - t)
            i += threads

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    return {
        "calls_per_s": len(all_lat) / elapsed,
        "p50_ms": float(np.median(all_lat)),
        "p99_ms": float(np.quantile(all_lat, 0.99)),
        "calls": len(all_lat),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (1 s per scenario)")
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the median is reported")
    args = ap.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    repeats = 1 if args.quick else args.repeats

    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="embedml-bench-"))
    store = embedml.ModelStore(tmp / "store")
    model = build_mlp()
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(20_000, IN)).astype(np.float32)
    store.save("mlp", model, reference_data=reference)
    rows = rng.normal(size=(4096, IN)).astype(np.float32)
    so = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    batching = {}
    if hasattr(embedml, "Batching"):
        batching = {"batching": embedml.Batching()}

    sess_opts = ort.SessionOptions()
    sess_opts.intra_op_num_threads = 1
    sess_opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), sess_opts)

    def raw(row):
        return sess.run(None, {"x": row[None]})[0][0]

    def scenario(name):
        hooks = []
        if name == "JsonlSink 100%":
            hooks = [embedml.JsonlSink(tmp / f"log-{time.monotonic_ns()}.jsonl")]
        elif name == "JsonlSink 100% base64":
            hooks = [embedml.JsonlSink(tmp / f"b-{time.monotonic_ns()}.jsonl", arrays="base64")]
        elif name == "JsonlSink 10%":
            hooks = [embedml.JsonlSink(tmp / f"s-{time.monotonic_ns()}.jsonl", sample=0.1)]
        elif name == "DriftMonitor":
            hooks = [embedml.DriftMonitor(window=10_000)]
        elif name == "JsonlSink + DriftMonitor":
            hooks = [
                embedml.JsonlSink(tmp / f"log-{time.monotonic_ns()}.jsonl"),
                embedml.DriftMonitor(window=10_000),
            ]
        return store.load("mlp", session_options=so, hooks=hooks, **batching)

    names = [
        "raw onnxruntime", "no hooks", "JsonlSink 100%", "JsonlSink 100% base64",
        "JsonlSink 10%", "DriftMonitor", "JsonlSink + DriftMonitor",
    ]  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    extra: dict[str, dict] = {}
    for _ in range(repeats):
        for name in names:  # interleaved rounds, so drift in machine load hits all alike
            if name == "raw onnxruntime":
                results[name].append(run(raw, args.threads, seconds, rows))
                continue
            h = scenario(name)
            h.warmup(10)
            results[name].append(run(h.predict, args.threads, seconds, rows))
            extra[name] = {s["name"]: s for s in h.metrics()["hooks"]}
            h.close()

    def med(name, key):
        return float(np.median([r[key] for r in results[name]]))

    base = med("no hooks", "calls_per_s")
    raw_tp = med("raw onnxruntime", "calls_per_s")
    print(f"# {args.threads} threads, {seconds:g} s x {repeats} rounds per scenario, "
          f"batching={'yes' if batching else 'no'}, cpus={os.cpu_count()}")  # fmt: skip
    print("| scenario | calls/s | vs no hooks | vs raw ORT | p50 ms | p99 ms | dropped |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        tp = med(name, "calls_per_s")
        dropped = sum(s["dropped"] for s in extra.get(name, {}).values())
        print(
            f"| {name} | {tp:,.0f} | {tp / base:.3f} | {tp / raw_tp:.3f} | "
            f"{med(name, 'p50_ms'):.3f} | {med(name, 'p99_ms'):.3f} | {dropped} |"
        )


if __name__ == "__main__":
    main()

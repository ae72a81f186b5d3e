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


class NoopSink(embedml.Sink):  # the public name: bench_compare runs this on older trees
    """The floor of any per-call hook: a record is built and queued, the writer drops it."""

    def write(self, records) -> None:
        pass


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


def cpu_per_call(call, hooks, rows: np.ndarray, n: int) -> float:
    """CPU microseconds per call on one thread, including the sinks' writer threads
    (process CPU time, measured after the sinks have written everything)."""
    t = time.process_time()
    for i in range(n):
        call(rows[i % len(rows)])
    for sink in hooks:
        sink.flush(120)
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short runs (1 s per scenario)")
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; the median is reported")
    ap.add_argument(
        "--only", help="comma-separated scenarios to run (default: all; 'no hooks' always runs)"
    )
    ap.add_argument("--skip-cpu", action="store_true", help="only the many-threads table")
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

    def scenario(name, max_queue=10_000):
        hooks = []
        log = tmp / f"log-{time.monotonic_ns()}.jsonl"
        q = {"max_queue": max_queue}
        if name == "JsonlSink 100%":
            hooks = [embedml.JsonlSink(log, **q)]
        elif name == "JsonlSink 100% base64":
            hooks = [embedml.JsonlSink(log, arrays="base64", **q)]
        elif name == "JsonlSink 100% block":
            hooks = [embedml.JsonlSink(log, policy="block", **q)]
        elif name == "JsonlSink 100% base64 block":
            hooks = [embedml.JsonlSink(log, arrays="base64", policy="block", **q)]
        elif name == "DriftMonitor block":
            hooks = [embedml.DriftMonitor(window=10_000, policy="block", **q)]
        elif name == "JsonlSink 10%":
            hooks = [embedml.JsonlSink(log, sample=0.1, **q)]
        elif name == "DriftMonitor":
            hooks = [embedml.DriftMonitor(window=10_000, **q)]
        elif name == "no-op sink":
            hooks = [NoopSink(**q)]
        elif name == "JsonlSink + DriftMonitor":
            hooks = [embedml.JsonlSink(log, **q), embedml.DriftMonitor(window=10_000, **q)]
        return store.load("mlp", session_options=so, hooks=hooks, **batching)

    # -- 1. CPU cost per call, one caller thread (no contention: the cleanest overhead figure)
    only = None if args.only is None else {"no hooks", *args.only.split(",")}

    def chosen(names: list[str]) -> list[str]:
        return [n for n in names if only is None or n in only or n == "raw onnxruntime"]

    n_cpu = 5_000 if args.quick else 30_000
    cpu: dict[str, list[float]] = {}
    for _ in range(0 if args.skip_cpu else repeats):
        cpu.setdefault("raw onnxruntime", []).append(cpu_per_call(raw, [], rows, n_cpu))
        for name in chosen(["no hooks", "no-op sink", "JsonlSink 100%", "JsonlSink 100% base64",
                            "JsonlSink 10%", "DriftMonitor"]):  # fmt: skip
            h = scenario(name, max_queue=10**7)
            h.warmup(10)
            cpu.setdefault(name, []).append(cpu_per_call(h.predict, h.hooks, rows, n_cpu))
            h.close()
    if cpu:
        base_cpu = float(np.median(cpu["no hooks"]))
        print(f"# CPU per call, 1 thread, {n_cpu} calls x {repeats} rounds (median)")
        print("| scenario | CPU µs/call | vs no hooks | throughput vs no hooks |")
        print("|---|---:|---:|---:|")
        for name, vals in cpu.items():
            us = float(np.median(vals))
            print(f"| {name} | {us:.1f} | {us / base_cpu:.3f} | {base_cpu / us:.3f} |")
        print()

    # -- 2. throughput under many threads
    names = chosen([
        "raw onnxruntime", "no hooks", "no-op sink", "JsonlSink 100%", "JsonlSink 100% block",
        "JsonlSink 100% base64", "JsonlSink 100% base64 block", "JsonlSink 10%",
        "DriftMonitor", "DriftMonitor block", "JsonlSink + DriftMonitor",
    ])  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    extra: dict[str, dict] = {}
    batch: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeats):
        for name in names:  # interleaved rounds, so drift in machine load hits all alike
            if name == "raw onnxruntime":
                results[name].append(run(raw, args.threads, seconds, rows))
                continue
            h = scenario(name)
            h.warmup(10)
            results[name].append(run(h.predict, args.threads, seconds, rows))
            m = h.metrics()
            extra[name] = {s["name"]: s for s in m["hooks"]}
            # rows per model call and queue wait, as the handle's own metrics report them
            calls = sum(m["batch_size"].values())
            batch.setdefault(name, []).append((m["rows"] / max(calls, 1), m["latency_ms"]["queue"]["p50"]))
            h.close()

    def med(name, key):
        return float(np.median([r[key] for r in results[name]]))

    base = med("no hooks", "calls_per_s")
    raw_tp = med("raw onnxruntime", "calls_per_s")
    print(f"# {args.threads} threads, {seconds:g} s x {repeats} rounds per scenario, "
          f"batching={'yes' if batching else 'no'}, cpus={os.cpu_count()}")  # fmt: skip
    print(
        "| scenario | calls/s | vs no hooks | vs raw ORT | p50 ms | p99 ms | records dropped "
        "| rows per model call | queue wait p50 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        tp = med(name, "calls_per_s")
        stats = list(extra.get(name, {}).values())
        dropped = sum(s["dropped"] for s in stats)
        offered = sum(s["dropped"] + s["accepted"] for s in stats)
        dropped = f"{dropped / offered:.0%}" if offered else "-"
        sizes = batch.get(name)
        joined = "-" if not sizes else f"{np.median([b for b, _ in sizes]):.1f}"
        waits = [q for _, q in sizes or () if q is not None]
        queue = "-" if not waits else f"{np.median(waits):.3f}"
        print(
            f"| {name} | {tp:,.0f} | {tp / base:.3f} | {tp / raw_tp:.3f} | "
            f"{med(name, 'p50_ms'):.3f} | {med(name, 'p99_ms'):.3f} | {dropped} | {joined} | {queue} |"
        )


if __name__ == "__main__":
    main()

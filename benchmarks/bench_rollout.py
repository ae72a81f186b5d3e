"""Rollout benchmark: routing overhead, the pause a hot swap causes, and cached vs cold loads.

Run from the repository root::

    .venv/bin/python benchmarks/bench_rollout.py           # full run (~1-2 minutes)
    .venv/bin/python benchmarks/bench_rollout.py --quick   # smoke run (~15 s)

The model is a scikit-learn ``MLPClassifier`` (20 features, hidden layers 64 and 32)
converted to ONNX with skl2onnx (``zipmap=False``); versions 1 and 2 are two trainings of it.
Everything is measured in one run so ratios compare like with like:

* **routing**: one-record ``predict`` through a bare handle, ``Canary`` (random, and sticky
  by a key), and ``ABTest`` (sticky, 50/50; keys the float32 of column 0, or integer ids)
  vs ``InferenceSession.run`` on the same row.
  Calls are timed one at a time with the cases interleaved round by round; 1,000
  different records (users) take turns, the same for every case.
* **swap pause**: client threads call ``predict`` non-stop while the main thread swaps
  between the versions; latencies of calls that overlapped a swap vs calls that did not.
* **cache**: ``store.load`` of a version already in a ``ModelCache`` vs a cold load.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout

import embedml  # noqa: E402

N_FEATURES = 20


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    """Median and p99 in microseconds."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return float(np.median(a)), float(np.percentile(a, 99))


def interleaved(cases: dict[str, Callable[[], Any]], rounds: int, per_round: int) -> dict[str, list[int]]:
    """Time each call on its own; cases take turns so machine noise hits them alike."""
    clock = time.perf_counter_ns
    for fn in cases.values():
        for _ in range(200):
            fn()
    out: dict[str, list[int]] = {name: [] for name in cases}
    gc.collect()
    order = list(cases)
    shuffle = np.random.default_rng(0).shuffle
    for _ in range(rounds):
        shuffle(order)  # no case always runs right after another one
        for name in order:
            fn, samples = cases[name], out[name]
            for _ in range(per_round):
                t0 = clock()
                fn()
                samples.append(clock() - t0)
    return out


def paired_ratio(case: list[int], base: list[int], per_round: int) -> float:
    """Median over rounds of (case median / base median) in the same round: pairs samples
    taken moments apart, so bursts of load from other processes cancel out."""
    ratios = [
        np.median(case[i : i + per_round]) / np.median(base[i : i + per_round])
        for i in range(0, len(case), per_round)
    ]
    return float(np.median(ratios))


def build_models(store: embedml.ModelStore) -> np.ndarray:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: the quality is irrelevant here
        for version, seed in (("1", 0), ("2", 1)):
            mlp = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=50, random_state=seed).fit(X, y)
            onx = to_onnx(mlp, X[:1], options={"zipmap": False})
            store.save("mlp", onx, version=version)
    return X


def bench_routing(store: embedml.ModelStore, X: np.ndarray, rounds: int, per_round: int) -> list[tuple[str, ...]]:
    import onnxruntime as ort

    # One intra-op thread per session: with two sessions alternating, ONNX Runtime's
    # spinning pool threads of the idle one would steal the CPU (2 cores here).
    opts = {"intra_op_num_threads": 1}
    h1 = store.load("mlp", "1", session_options=opts)
    h2 = store.load("mlp", "2", session_options=opts)
    mv = store.resolve("mlp", "1")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(mv.artifact_path.read_bytes(), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    # 1,000 users take turns; column 0 stands in for the user id field.
    users = [X[i] for i in range(1000)]
    turn = itertools.cycle(users)
    key = lambda r: r[0]  # noqa: E731
    # the same users by an integer id (the usual key type), looked up by the row's identity
    ids = {id(r): i for i, r in enumerate(users)}
    int_key = lambda r: ids[id(r)]  # noqa: E731
    row2d = X[:1]
    canary = embedml.Canary(h1, h2, fraction=0.1)
    sticky = embedml.Canary(h1, h2, fraction=0.1, key=key)
    ab = embedml.ABTest({"a": h1, "b": h2}, key=key)
    ab_int = embedml.ABTest({"a": h1, "b": h2}, key=int_key)
    same = embedml.ABTest({"a": h1, "b": h1}, key=key)  # routing cost alone: one session
    cases = {
        "onnxruntime session.run": lambda: session.run(None, {name: row2d}),
        "handle.predict": lambda: h1.predict(next(turn)),
        "Canary (random 10%)": lambda: canary.predict(next(turn)),
        "Canary (sticky by key)": lambda: sticky.predict(next(turn)),
        "ABTest (sticky, 50/50)": lambda: ab.predict(next(turn)),
        "ABTest (sticky, 50/50, int ids)": lambda: ab_int.predict(next(turn)),
        "ABTest (sticky, both arms one handle)": lambda: same.predict(next(turn)),
    }
    samples = interleaved(cases, rounds, per_round)
    base = percentiles(samples["handle.predict"])[0]
    raw = percentiles(samples["onnxruntime session.run"])[0]
    rows = []
    for case, s in samples.items():
        med, p99 = percentiles(s)
        rows.append((
            case, f"{med:.1f}", f"{p99:.1f}", f"{med / base:.3f}",
            f"{paired_ratio(s, samples['handle.predict'], per_round):.3f}", f"{med / raw:.2f}",
        ))  # fmt: skip
    h1.close()
    h2.close()
    return rows


def bench_swap(store: embedml.ModelStore, X: np.ndarray, swaps: int, threads: int) -> list[tuple[str, ...]]:
    h = store.load("mlp", "1")
    h.predict(X[0])
    stop = threading.Event()
    windows: list[tuple[int, int]] = []
    records: list[list[tuple[int, int]]] = [[] for _ in range(threads)]

    def client(i: int) -> None:
        clock, out, row = time.perf_counter_ns, records[i], X[i]
        while not stop.is_set():
            t0 = clock()
            h.predict(row)
            out.append((t0, clock()))

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    durations = []
    for i in range(swaps):
        t0 = time.perf_counter_ns()
        h.swap("2" if i % 2 == 0 else "1")
        t1 = time.perf_counter_ns()
        windows.append((t0, t1))
        durations.append(t1 - t0)
        time.sleep(0.15)
    stop.set()
    for w in workers:
        w.join()
    h.close()
    starts = np.array([w[0] for w in windows])
    ends = np.array([w[1] for w in windows])
    during, steady = [], []
    for rec in records:
        for t0, t1 in rec:
            # The call overlapped a swap window if it started before the window ended and
            # ended after it started.
            j = np.searchsorted(starts, t1)
            overlapped = j > 0 and t0 <= ends[j - 1]
            (during if overlapped else steady).append(t1 - t0)
    s_med, s_p99 = percentiles(steady)
    d_med, d_p99 = percentiles(during)
    sw_med, sw_p99 = percentiles(durations)
    return [
        ("calls not overlapping a swap", f"{len(steady)}", f"{s_med:.1f}", f"{s_p99:.1f}", "1.00"),
        ("calls overlapping a swap", f"{len(during)}", f"{d_med:.1f}", f"{d_p99:.1f}", f"{d_med / s_med:.2f}"),
        ("swap() itself (load + warm-up)", f"{swaps}", f"{sw_med:.1f}", f"{sw_p99:.1f}", ""),
    ]


def bench_cache(store: embedml.ModelStore, repeats: int) -> list[tuple[str, ...]]:
    cache = embedml.ModelCache()
    store.load("mlp", "1", cache=cache).close()
    cold, hit = [], []
    for _ in range(repeats):
        for cached, out in ((False, cold), (cache, hit)):
            gc.collect()
            t0 = time.perf_counter_ns()
            h = store.load("mlp", "1", cache=cached)
            out.append(time.perf_counter_ns() - t0)
            h.close()
            del h  # free the session here, not inside the next timed load
    cache.clear()
    c_med, c_p99 = percentiles(cold)
    h_med, h_p99 = percentiles(hit)
    return [
        ("cold load (cache=False)", f"{c_med:.1f}", f"{c_p99:.1f}", "1"),
        ("cache hit", f"{h_med:.1f}", f"{h_p99:.1f}", f"{c_med / h_med:.0f}x faster"),
    ]


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    rounds, per_round = (10, 100) if args.quick else (80, 250)
    swaps, repeats = (6, 10) if args.quick else (20, 40)
    with tempfile.TemporaryDirectory() as tmp:
        store = embedml.ModelStore(Path(tmp) / "store")
        X = build_models(store)
        routing = bench_routing(store, X, rounds, per_round)
        swap = bench_swap(store, X, swaps, threads=2)
        cache = bench_cache(store, repeats)
    print(f"## Routing overhead (one-record predict, {rounds * per_round} calls per case)\n")
    print(table(
        ("case", "median µs", "p99 µs", "ratio vs handle", "paired ratio vs handle", "ratio vs onnxruntime"),
        routing,
    ))  # fmt: skip
    print(f"\n## Hot swap pause (2 client threads, {swaps} swaps between versions 1 and 2)\n")
    print(table(("calls", "count", "median µs", "p99 µs", "median ratio"), swap))
    print(f"\n## Model cache ({repeats} loads each)\n")
    print(table(("load", "median µs", "p99 µs", "speed-up"), cache))


if __name__ == "__main__":
    main()

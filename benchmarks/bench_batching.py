"""Dynamic batching benchmark: many concurrent single-row calls on a small MLP.

Model: an ONNX MLP 20 -> 256 -> 256 -> 2 (float32, ReLU), built here with ``onnx.helper``,
run by ONNX Runtime with ``intra_op_num_threads=1``. Everything is measured in one run:

* 64 threads each sending single rows: (a) each thread calls ``session.run`` itself,
  (b) embedml with batching, (b') embedml without batching, (c) the offline limit: the same
  rows in batches of 64 by one thread, (d) thread wake-ups alone, (e) the batcher alone:
  ``Batcher.submit`` over a batch function that stacks the rows and runs the session, no
  handle (no validation, no observer, no output shaping). (b) against (e) is what the
  handle's call path costs per row; (e) against (d) what the batcher and the model add.
* 64 asyncio tasks calling ``apredict``, beside Ray Serve's ``@serve.batch`` (max 64, 2 ms)
  on the same session when ``ray[serve]`` is installed. Outside a deployment ``@serve.batch``
  asks for the replica context; that one check is patched out here.
* one caller, sequential calls: batching on vs off on the same model.

Run: ``python benchmarks/bench_batching.py`` (``--quick`` for a short run, ``--profile`` to
add a yappi CPU profile of the batched threads run: ``pip install -e .[bench]``). Each
threads case also reports CPU time and context switches per row (``getrusage``).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import embedml  # noqa: E402

THREADS = 64
BATCH = 64


def mlp_bytes(hidden: int = 256) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [20, hidden, hidden, 2]
    inits, nodes, prev = [], [], "x"
    for i in range(3):
        w = rng.normal(scale=1 / np.sqrt(sizes[i]), size=(sizes[i], sizes[i + 1]))
        b = rng.normal(scale=0.1, size=sizes[i + 1])
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(b.astype(np.float32), f"b{i}"),
        ]
        out = "y" if i == 2 else f"h{i}"
        gemm = f"g{i}" if i < 2 else out
        nodes.append(helper.make_node("Gemm", ["x" if i == 0 else prev, f"w{i}", f"b{i}"], [gemm]))
        if i < 2:
            nodes.append(helper.make_node("Relu", [gemm], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session(data: bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(data, sess_options=so, providers=["CPUExecutionProvider"])


def summary(name: str, rows: int, seconds: float, lat: list[float]) -> dict:
    lat_sorted = sorted(lat)
    p99 = lat_sorted[min(len(lat_sorted) - 1, int(0.99 * len(lat_sorted)))]
    return {
        "name": name,
        "rows_s": rows / seconds,
        "p50_ms": statistics.median(lat_sorted) * 1e3,
        "p99_ms": p99 * 1e3,
    }


def run_threads(name: str, fn, X: np.ndarray, threads: int = THREADS) -> dict:
    before = resource.getrusage(resource.RUSAGE_SELF)
    res = _run_threads(name, fn, X, threads)
    after = resource.getrusage(resource.RUSAGE_SELF)
    n = len(X) // threads * threads
    res["extra"] = (
        f"{(after.ru_utime - before.ru_utime) / n * 1e6:.1f} / "
        f"{(after.ru_stime - before.ru_stime) / n * 1e6:.1f} / "
        f"{(after.ru_nvcsw - before.ru_nvcsw + after.ru_nivcsw - before.ru_nivcsw) / n:.2f}"
    )
    return res


def _run_threads(name: str, fn, X: np.ndarray, threads: int) -> dict:
    """``threads`` threads share the rows of ``X``; each calls ``fn(row)`` one row at a time."""
    per = len(X) // threads
    lats: list[list[float]] = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def work(t: int) -> None:
        mine = X[t * per : (t + 1) * per]
        lat = lats[t]
        clock = time.perf_counter
        barrier.wait()
        for row in mine:
            t0 = clock()
            fn(row)
            lat.append(clock() - t0)

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in ts:
        t.join()
    seconds = time.perf_counter() - start
    return summary(name, per * threads, seconds, [x for lat in lats for x in lat])


def run_offline(sess, X: np.ndarray) -> dict:
    lat = []
    start = time.perf_counter()
    for i in range(0, len(X), BATCH):
        t0 = time.perf_counter()
        sess.run(None, {"x": X[i : i + BATCH]})
        lat.append(time.perf_counter() - t0)
    return summary("(c) offline, batches of 64, 1 thread", len(X), time.perf_counter() - start, lat)


def run_tasks(name: str, call, X: np.ndarray, tasks: int = THREADS) -> dict:
    per = len(X) // tasks
    lats: list[float] = []

    async def work(t: int) -> None:
        clock = time.perf_counter
        for row in X[t * per : (t + 1) * per]:
            t0 = clock()
            await call(row)
            lats.append(clock() - t0)

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(work(t) for t in range(tasks)))
        return time.perf_counter() - start

    loop_cpu, all_cpu = time.thread_time(), time.process_time()
    seconds = asyncio.run(main())
    loop_cpu, all_cpu = time.thread_time() - loop_cpu, time.process_time() - all_cpu
    res = summary(name, per * tasks, seconds, lats)
    rows = per * tasks
    res["extra"] = f"{loop_cpu / rows * 1e6:.1f} / {(all_cpu - loop_cpu) / rows * 1e6:.1f}"
    return res


def wake_ceiling(rows: int, threads: int = THREADS) -> dict:
    """(d) The most single-row results per second that ``threads`` blocked caller threads
    can receive in this CPython, whatever the batcher: a token handed along a chain of
    threads (each wakes the next, as a batcher must wake every caller), with no work at all.
    """
    locks = [threading.Lock() for _ in range(threads)]
    for lock in locks:
        lock.acquire()
    left = [rows]
    done = threading.Event()

    def work(i: int) -> None:
        me, nxt = locks[i], locks[(i + 1) % threads]
        while True:
            me.acquire()
            if done.is_set():
                nxt.release()
                return
            left[0] -= 1
            if left[0] <= 0:
                done.set()
            nxt.release()

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start = time.perf_counter()
    locks[0].release()
    done.wait()
    seconds = time.perf_counter() - start
    for t in ts:
        t.join()
    return {
        "name": "(d) ceiling: thread wake-ups alone, 64 threads, no model",
        "rows_s": rows / seconds,
    }


def async_ceiling(rows: int, tasks: int = THREADS) -> dict:
    """The most results per second ``tasks`` asyncio tasks can receive from a worker thread
    that completes their futures in batches of 64: no validation, no model."""
    import collections

    per = rows // tasks

    async def main() -> float:
        loop = asyncio.get_running_loop()
        queue: collections.deque = collections.deque()
        lock, wake = threading.Lock(), threading.Event()
        stop = False

        def finish(futures: list) -> None:
            for f in futures:
                f.set_result(None)

        def worker() -> None:
            while not stop:
                wake.wait(0.01)
                wake.clear()
                with lock:
                    batch = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
                if batch:
                    loop.call_soon_threadsafe(finish, batch)
                    if queue:
                        wake.set()

        thread = threading.Thread(target=worker)
        thread.start()

        async def task() -> None:
            for _ in range(per):
                f = loop.create_future()
                with lock:
                    queue.append(f)
                wake.set()
                await f

        start = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(tasks)))
        seconds = time.perf_counter() - start
        stop = True
        wake.set()
        thread.join()
        return seconds

    name = "ceiling: future round trips alone, 64 tasks, no model"
    return {"name": name, "rows_s": per * tasks / asyncio.run(main())}


def batcher_alone(sess) -> Any:
    """(e) A callable that sends one row through a :class:`Batcher` (the settings of the
    batched handle) whose batch function stacks the rows and runs ``sess``: the batcher
    and its wake-ups without the handle's call path."""
    # imported here: bench_compare runs this module against embedml trees from before the
    # serving/ layer (e7adc93), which only need the other cases
    from embedml.serving.batching import Batcher, Request

    class Row(Request):
        __slots__ = ("rows", "x")

        def __init__(self, x: np.ndarray) -> None:
            self.rows, self.x = 1, x

    def run(reqs: list[Row]) -> list[np.ndarray]:
        return list(sess.run(None, {"x": np.stack([r.x for r in reqs])})[0])

    batcher = Batcher(run, embedml.Batching(max_batch_size=BATCH, max_wait_ms=2.0))
    return lambda row: batcher.submit(Row(row))


def ray_serve_call(sess):
    """An async callable batching through Ray Serve's ``@serve.batch``, or ``None``."""
    try:
        from ray import serve
        from ray.serve import batching as serve_batching
    except ImportError:
        return None
    # Outside a deployment the batch queue asks the replica context for max_ongoing_requests
    # (only to log a warning); there is none, so skip that check.
    serve_batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: (
        None
    )

    class Model:
        @serve.batch(max_batch_size=BATCH, batch_wait_timeout_s=0.002)
        async def __call__(self, rows: list[np.ndarray]) -> list[np.ndarray]:
            out = sess.run(None, {"x": np.stack(rows)})[0]
            return list(out)

    return Model()


def lone_caller(handle_on, handle_off, X: np.ndarray) -> tuple[dict, dict]:
    """Sequential calls, alternating blocks of 250 between the two handles (so that a burst
    of load from elsewhere on the machine hits both alike)."""
    lat: dict[str, list[float]] = {"on": [], "off": []}
    secs = {"on": 0.0, "off": 0.0}
    for h in (handle_on, handle_off):
        for row in X[:200]:  # warm-up
            h.predict(row)
    clock = time.perf_counter
    for i in range(0, len(X), 250):
        for key, h in (("on", handle_on), ("off", handle_off)):
            start = clock()
            for row in X[i : i + 250]:
                t0 = clock()
                h.predict(row)
                lat[key].append(clock() - t0)
            secs[key] += clock() - start
    return (
        summary("batching on", len(X), secs["on"], lat["on"]),
        summary("batching off", len(X), secs["off"], lat["off"]),
    )


def median_run(runs: list[dict]) -> dict:
    """The repetition with the median throughput (runs are noisy on a shared machine)."""
    return sorted(runs, key=lambda r: r["rows_s"])[len(runs) // 2]


def table(rows: list[dict], base: dict, extra: str = "") -> str:
    out = [f"| case | rows/s | p50 ms | p99 ms | x {base['name'].split(' ')[0]} |{extra}"]
    out.append("|---|---:|---:|---:|---:|" + ("---:|" if extra else ""))
    for r in rows:
        lat = f"{r['p50_ms']:.3f} | {r['p99_ms']:.2f}" if "p50_ms" in r else "- | -"
        out.append(
            f"| {r['name']} | {r['rows_s']:,.0f} | {lat} "
            f"| {r['rows_s'] / base['rows_s']:.2f} |"
            + (f" {r.get('extra', '')} |" if extra else "")
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rows (about 10 s)")
    ap.add_argument("--rows", type=int, default=None, help="rows per concurrent case")
    ap.add_argument("--profile", action="store_true", help="yappi profile of the batched run")
    ap.add_argument("--hidden", type=int, default=256, help="width of the 2 hidden layers")
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (median shown)")
    args = ap.parse_args()
    n = args.rows or (4096 if args.quick else 20480)
    repeat = args.repeat or (1 if args.quick else 3)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, 20)).astype(np.float32)

    data = mlp_bytes(args.hidden)
    sess = session(data)
    store = embedml.ModelStore(tempfile.mkdtemp(prefix="bench-batching-"))
    store.save("mlp", data)
    opts = {"session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}
    settings = embedml.Batching(max_batch_size=BATCH, max_wait_ms=2.0, max_queue=1024)
    batched = store.load("mlp", **opts, batching=settings)
    plain = store.load("mlp", **opts)

    # correctness first: batched outputs equal the raw session's, row by row
    ref = sess.run(None, {"x": X[:256]})[0]
    got = np.stack([batched.predict(r) for r in X[:256]])
    assert np.allclose(got, ref, atol=1e-5), "batched outputs differ from the session's"

    def raw_call(row: np.ndarray) -> None:
        sess.run(None, {"x": row[None]})

    print(
        f"MLP 20 -> {args.hidden} -> {args.hidden} -> 2; "
        f"{n} rows per case, {THREADS} concurrent callers, median of {repeat} runs, "
        f"python {sys.version.split()[0]}"
    )
    run_threads("warm-up", raw_call, X[: THREADS * 8])
    run_threads("warm-up", batched.predict, X[: THREADS * 8])
    alone = batcher_alone(sess)
    run_threads("warm-up", alone, X[: THREADS * 8])
    runs: dict[str, list[dict]] = {
        "raw": [], "emb": [], "plain": [], "off": [], "wake": [], "alone": []
    }  # fmt: skip
    before = batched.batching_stats()
    for _ in range(repeat):  # interleaved, so that load from elsewhere hits every case
        runs["raw"].append(run_threads("(a) raw session.run, 64 threads", raw_call, X))
        runs["emb"].append(
            run_threads("(b) embedml predict, batching, 64 threads", batched.predict, X)
        )
        runs["plain"].append(
            run_threads("(b') embedml predict, no batching, 64 threads", plain.predict, X)
        )
        runs["off"].append(run_offline(sess, X))
        runs["wake"].append(wake_ceiling(len(X)))
        runs["alone"].append(run_threads("(e) the batcher alone, no handle, 64 threads", alone, X))
    after = batched.batching_stats()
    raw, emb, plain_r, off, wake, batcher_r = (
        median_run(runs[k]) for k in ("raw", "emb", "plain", "off", "wake", "alone")
    )
    mean_batch = (after.rows - before.rows) / max(1, after.batches - before.batches)
    print("\n## 64 threads, single rows\n")
    print(
        table(
            [raw, emb, plain_r, off, wake, batcher_r],
            raw,
            " user us / sys us / ctx switches, per row |",
        )
    )
    print(
        f"\n(b)/(a) = {emb['rows_s'] / raw['rows_s']:.2f}x (target >= 4x); "
        f"(b)/(c) = {emb['rows_s'] / off['rows_s']:.2f} of the offline limit; "
        f"(b)/(d) = {emb['rows_s'] / wake['rows_s']:.2f} of the wake-up ceiling, which is "
        f"{wake['rows_s'] / raw['rows_s']:.2f}x (a); mean batch {mean_batch:.1f} rows; "
        f"(e)/(c) = {batcher_r['rows_s'] / off['rows_s']:.2f}: the batcher without the handle"
    )

    # asyncio
    batched2 = store.load("mlp", **opts, batching=settings)
    aruns: dict[str, list[dict]] = {"emb": [], "ray": [], "ceil": []}
    for _ in range(repeat):
        aruns["ceil"].append(async_ceiling(len(X)))
        aruns["emb"].append(run_tasks("embedml apredict, batching, 64 tasks", batched2.apredict, X))
        # A @serve.batch queue is bound to the event loop of its first call: a fresh class
        # (so a fresh queue) for each asyncio.run.
        serve_model = ray_serve_call(sess)
        if serve_model is not None:
            aruns["ray"].append(
                run_tasks("Ray Serve @serve.batch(64, 2 ms), 64 tasks", serve_model, X)
            )
    st2 = batched2.batching_stats()
    res = [median_run(aruns["emb"])] + ([median_run(aruns["ray"])] if aruns["ray"] else [])
    ceil = median_run(aruns["ceil"])
    print("\n## 64 asyncio tasks, single rows\n")
    base = res[1] if len(res) > 1 else res[0]
    print(table([*res, ceil], base, " CPU µs per row: loop thread / other threads |"))
    if len(res) > 1:
        print(
            f"\nembedml / Ray Serve = {res[0]['rows_s'] / res[1]['rows_s']:.2f}x (target >= 2x), "
            f"p99 {res[0]['p99_ms']:.2f} vs {res[1]['p99_ms']:.2f} ms; "
            f"embedml mean batch {st2.mean_batch_size:.1f}; embedml = "
            f"{res[0]['rows_s'] / ceil['rows_s']:.2f} of the round-trip ceiling"
        )
    else:
        print("\nray[serve] is not installed: no Ray Serve comparison")

    on, off_ = lone_caller(batched, plain, X[: min(n, 5000)])
    print("\n## 1 caller, sequential\n")
    print(table([on, off_], off_))
    print(f"\nmedian latency ratio on/off = {on['p50_ms'] / off_['p50_ms']:.2f} (target <= 1.2)")

    if args.profile:
        profile(batched, X)
    for h in (batched, batched2, plain):
        h.close()


def profile(handle, X: np.ndarray) -> None:
    """CPU time per function (all threads) of the batched threads case, by yappi."""
    import yappi

    yappi.set_clock_type("cpu")
    yappi.start()
    run_threads("profiled", handle.predict, X)
    yappi.stop()
    stats = list(yappi.get_func_stats())
    total = sum(f.tsub for f in stats)
    print("\n## yappi CPU profile of (b): own time per function, share of all Python time\n")
    print("| function | calls | own time share |\n|---|---:|---:|")
    for f in sorted(stats, key=lambda f: f.tsub, reverse=True)[:15]:
        print(f"| {f.name} ({Path(f.module).name}) | {f.ncall} | {f.tsub / total:.0%} |")
    yappi.clear_stats()


if __name__ == "__main__":
    main()

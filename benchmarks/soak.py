"""Soak test (not a unit test): many threads, mixed good / bad / poison inputs, version swaps
and alias moves, for a bounded time. Every response is checked against the expected output.

    .venv/bin/python benchmarks/soak.py --minutes 3 --threads 8
    .venv/bin/python benchmarks/soak.py --quick          # 20 seconds

A forked child process joins in (``--no-fork`` to leave it out): the handles are loaded and
serve in the parent, which then forks (as gunicorn ``--preload`` does); the child runs
half as many worker threads on the inherited handles, sink and follower for the whole run,
and its counts join the parent's (the alias moves it follows are the parent's).

The calls go through three kinds of handle, all with dynamic batching and one shared
rotating ``JsonlSink``: one loaded with ``follow=True`` on ``@prod`` (the alias moves
under it), one moved with ``handle.swap(version)``, and one an application reloads and
retires itself. Reports calls by outcome, wrong and lost responses (target 0), RSS after
warm-up and at the end (target: growth under 5%), thread and file-descriptor counts
before, during and after, and checks the log files: every record accepted by the sink
written, every line on disk valid JSON whose outputs match the version that made them.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import embedml  # noqa: E402

POISON = 13.0


class Affine:
    """Version ``k`` predicts ``k * (a + b + c)``; raises on the poison value."""

    def __init__(self, k: int) -> None:
        self.k = k

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        if (X == POISON).any():
            raise FloatingPointError("poison")
        return self.k * X.sum(axis=1)


class Rec(BaseModel):
    a: float
    b: float
    c: float


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


class Router:
    """Holds the handle for ``@prod``; ``swap`` loads the alias again and retires the old
    handle after a grace period (how an application without hot swap moves versions)."""

    def __init__(self, store: embedml.ModelStore, **options) -> None:
        self.store, self.options = store, options
        self.handle = store.load("soak", "@prod", **options)
        self._retired: list[tuple[float, embedml.ModelHandle]] = []
        self.lock = threading.Lock()

    def get(self) -> embedml.ModelHandle:
        with self.lock:
            return self.handle

    def swap(self) -> None:
        new = self.store.load("soak", "@prod", **self.options)
        with self.lock:
            old, self.handle = self.handle, new
            self._retired.append((time.monotonic() + 1.0, old))
            due = [h for t, h in self._retired if t <= time.monotonic()]
            self._retired = [(t, h) for t, h in self._retired if t > time.monotonic()]
        for h in due:
            h.close()

    def close(self) -> None:
        self.handle.close()
        for _, h in self._retired:
            h.close()


class Handles:
    """The three ways the soak reaches a model; a worker picks one per call."""

    def __init__(self, store: embedml.ModelStore, sink: embedml.JsonlSink, **options) -> None:
        options = dict(options, batching=embedml.Batching(max_batch_size=32, max_wait_ms=1.0))
        self.follow = store.load("soak", "@prod", follow=True, poll_s=0.2, hooks=[sink], **options)
        self.swapped = store.load("soak", "@prod", hooks=[sink], **options)
        self.router = Router(store, hooks=[sink], **options)

    def pick(self, rng: random.Random) -> tuple[str, embedml.ModelHandle]:
        roll = rng.random()
        if roll < 0.4:
            return "follow", self.follow
        if roll < 0.8:
            return "swap", self.swapped
        return "reload", self.router.get()

    def close(self) -> None:
        self.follow.close()
        self.swapped.close()
        self.router.close()


def make_input(rng: random.Random):
    """(kind, value, batch?) where kind is the expected outcome."""
    batch = rng.random() < 0.3
    roll = rng.random()
    good = {"a": rng.uniform(-5, 5), "b": rng.uniform(-5, 5), "c": float(rng.randint(-3, 3))}
    if roll < 0.70:
        kind, rec = "good", good
    elif roll < 0.78:
        kind, rec = "schema", {**good, "a": float("nan")}
    elif roll < 0.84:
        kind, rec = "schema", {"a": "x" * rng.randint(1, 50), "b": 1.0, "c": 1.0}
    elif roll < 0.88:
        kind, rec = "schema", {"a": 1.0, "b": 2.0}
    elif roll < 0.92:
        kind, rec = "schema", [1, 2, 3] if not batch else {"a": 1}
    else:
        kind, rec = "poison", {**good, "c": POISON}
    if batch:
        rows = [
            {"a": rng.uniform(-5, 5), "b": 0.0, "c": 1.0} for _ in range(rng.randint(0, 6))
        ]
        pos = rng.randint(0, len(rows))
        rows.insert(pos, rec)
        return kind, rows, True
    return kind, rec, False


def expected(value, batch: bool, version: str):
    k = int(version)
    rows = value if batch else [value]
    out = [k * (r["a"] + r["b"] + r["c"]) for r in rows]
    return out if batch else out[0]


def worker(handles: Handles, seed: int, stop: threading.Event, stats: dict) -> None:
    rng = random.Random(seed)
    counts = collections.Counter()
    while not stop.is_set():
        kind, value, batch = make_input(rng)
        counts["sent"] += 1
        for _attempt in range(3):
            path, h = handles.pick(rng)
            try:
                if batch:
                    p = h.predict_batch(value, details=True)
                    ok = np.allclose(p.output, expected(value, True, p.version))
                else:
                    p = h.predict(value, details=True)
                    ok = np.isclose(p.output, expected(value, False, p.version))
                counts["ok" if ok and kind == "good" else "WRONG"] += 1
                counts[f"served by {path} handle"] += 1
            except embedml.HandleClosedError:
                counts["retried (handle retired)"] += 1
                continue
            except embedml.SchemaError:
                counts["SchemaError" if kind == "schema" else "WRONG"] += 1
            except embedml.PredictionError:
                counts["PredictionError" if kind == "poison" else "WRONG"] += 1
            except Exception as exc:  # noqa: BLE001 - the soak counts what it did not expect
                counts[f"UNEXPECTED {type(exc).__name__}"] += 1
            counts["answered"] += 1
            break
    with stats["lock"]:
        stats["counts"].update(counts)


def check_logs(sink: embedml.JsonlSink) -> dict[str, int]:
    """Every line of every file left is JSON (a torn last line is counted, not fatal) and
    each logged success matches the version that made it."""
    out = collections.Counter()
    files = sink.files()
    out["files"] = len(files)
    out["files beyond keep"] = len(files) - (sink.keep + 1)
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    out["bad lines"] += 1
                    continue
                out["records on disk"] += 1
                if d["error"] is not None:
                    continue
                rows = np.asarray([[r["a"], r["b"], r["c"]] for r in d["inputs"]])
                good = np.allclose(d["outputs"], int(d["version"]) * rows.sum(axis=1))
                out["records checked" if good else "records WRONG"] += 1
    return out


def fork_child(
    handles: Handles, sink: embedml.JsonlSink, threads: int, seconds: float, warmup: float, tmp: str
) -> int:
    """Fork a child that serves from ``threads`` worker threads on the inherited handles for
    ``seconds``, then writes its counts to ``tmp`` and exits; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        stats = {"lock": threading.Lock(), "counts": collections.Counter()}
        stop = threading.Event()
        workers = [
            threading.Thread(target=worker, args=(handles, 1000 + i, stop, stats))
            for i in range(threads)
        ]
        for t in workers:
            t.start()
        stop.wait(warmup)
        rss_warm = rss_kib()
        stop.wait(seconds - warmup)
        stop.set()
        for t in workers:
            t.join(30)
        rss_end = rss_kib()
        follows = handles.follow.follower.swaps
        handles.close()
        report = {
            "pid": os.getpid(), "threads": threads, "counts": dict(stats["counts"]),
            "sink": sink.stats(), "rss_warm": rss_warm, "rss_end": rss_end, "follows": follows,
        }  # fmt: skip
        with open(os.path.join(tmp, "child.json"), "w") as f:
            json.dump(report, f)
        code = 0
    finally:
        os._exit(code)


def join_child(pid: int, tmp: str) -> dict:
    status = os.waitpid(pid, 0)[1]
    path = os.path.join(tmp, "child.json")
    if not os.path.exists(path):
        return {"status": status or 1, "counts": {"sent": 1, "UNEXPECTED child died": 1},
                "sink": {"accepted": 0, "written": -1, "dropped": 0, "errors": 0}, "pid": pid,
                "threads": 0, "rss_warm": 1, "rss_end": 1, "follows": 0}  # fmt: skip
    with open(path) as f:
        report = json.load(f)
    report["status"] = status
    report["counts"] = collections.Counter(report["counts"])
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="20 seconds")
    ap.add_argument("--no-fork", action="store_true", help="no forked child process")
    ap.add_argument(
        "--warmup", type=float, default=None, metavar="S",
        help="seconds before the reference RSS is taken (default: 10%% of the run, at least 5)",
    )  # fmt: skip
    args = ap.parse_args()
    seconds = 20.0 if args.quick else args.minutes * 60
    warmup = args.warmup if args.warmup is not None else max(5.0, seconds * 0.1)

    tmp = tempfile.TemporaryDirectory()
    store = embedml.ModelStore(Path(tmp.name) / "store")
    key = "soak-key"
    for k in (1, 2):
        store.save("soak", Affine(k), input_schema=Rec, signing_key=key)
    store.set_alias("soak", "prod", "1", signing_key=key)  # signed: loads require_signature
    threads_before, fds_before = threading.active_count(), fd_count()
    # max_queue: a full queue holds about 1.4 KiB a record (10,000 records: +13.7 MiB of
    # RSS, measured): on a busy machine the default 10,000 filled up during a run and its
    # high-water mark read as +19.6% "growth"; 1,000 keeps the bound under 1.5 MiB
    sink = embedml.JsonlSink(
        Path(tmp.name) / "logs" / "soak.jsonl", rotate_bytes=2 << 20, keep=3, max_queue=1_000
    )
    options = dict(require_signature=True, signing_key=key, max_batch_rows=64, max_string_length=16)
    handles = Handles(store, sink, **options)

    stats = {"lock": threading.Lock(), "counts": collections.Counter()}
    stop = threading.Event()
    child = None
    if not args.no_fork:
        # serve first, so the batchers, the sink's writer and the follower run at the fork
        warm = random.Random(-1)
        for _ in range(200):
            _, h = handles.pick(warm)
            h.predict({"a": 1.0, "b": 2.0, "c": 3.0})
        child = fork_child(handles, sink, max(1, args.threads // 2), seconds, warmup, tmp.name)
    workers = [
        threading.Thread(target=worker, args=(handles, i, stop, stats), name=f"soak-{i}")
        for i in range(args.threads)
    ]
    start = time.monotonic()
    for t in workers:
        t.start()
    time.sleep(warmup)
    gc.collect()
    rss_warm = rss_kib()
    samples = [rss_warm]
    timeline = [(time.monotonic() - start, rss_warm)]  # RSS every ~30 s, to see a trend
    threads_max = fds_max = 0
    moves = swaps = saves = 0
    next_move = time.monotonic() + 2.0
    while time.monotonic() - start < seconds:
        time.sleep(0.5)
        threads_max = max(threads_max, threading.active_count() - len(workers))
        fds_max = max(fds_max, fd_count())
        if time.monotonic() >= next_move:
            # move the alias (the follow handle and the reloading router pick it up), and
            # swap the other handle to a random other version; now and then save a new one
            versions = store.versions("soak")
            if moves % 5 == 4 and len(versions) < 12:
                store.save("soak", Affine(len(versions) + 1), input_schema=Rec, signing_key=key)
                saves += 1
                versions = store.versions("soak")
            target = random.choice([v for v in versions if v != store.aliases("soak")["prod"]])
            store.set_alias("soak", "prod", target, signing_key=key)  # signed: loads require_signature
            handles.router.swap()
            moves += 1
            handles.swapped.swap(random.choice([v for v in versions if v != handles.swapped.version]))
            swaps += 1
            next_move = time.monotonic() + 2.0
        if len(samples) < 1000 and int(time.monotonic() - start) % 10 == 0:
            samples.append(rss_kib())
        if time.monotonic() - start - timeline[-1][0] >= 30:
            timeline.append((time.monotonic() - start, rss_kib()))
    stop.set()
    for t in workers:
        t.join(30)
    alive = [t.name for t in workers if t.is_alive()]
    elapsed = time.monotonic() - start
    gc.collect()
    rss_end = rss_kib()  # still serving state, before closing and reading the logs back
    follows = handles.follow.follower.swaps
    follow_errors = handles.follow.follower.errors
    handles.close()
    sink_stats = sink.stats()
    gc.collect()
    rss_closed = rss_kib()
    kid = join_child(child, tmp.name) if child is not None else None
    logs = check_logs(sink)
    c = stats["counts"]
    if kid is not None:
        c.update(kid["counts"])
    lost = c["sent"] - c["answered"]
    wrong = c["WRONG"] + sum(v for k, v in c.items() if k.startswith("UNEXPECTED"))
    growth = (rss_end - rss_warm) / rss_warm * 100
    threads_after, fds_after = threading.active_count(), fd_count()

    print(
        f"soak: {elapsed:.0f} s, {args.threads} threads, {moves} alias moves, {swaps} handle.swap, "
        f"{follows} follow swaps ({follow_errors} follower errors), {saves} new versions saved"
    )
    print(f"calls sent {c['sent']}, answered {c['answered']}, lost {lost}, wrong {wrong}")
    print("| outcome | count |\n|---|---|")
    for k, v in sorted(c.items()):
        if k not in ("sent", "answered"):
            print(f"| {k} | {v} |")
    print(
        f"sink: accepted {sink_stats['accepted']}, written {sink_stats['written']}, "
        f"dropped (queue full) {sink_stats['dropped']}, errors {sink_stats['errors']}, "
        f"queued at close {sink_stats['queued']}"
    )
    print(
        f"log files left {logs['files']} (keep={sink.keep} + current), records on disk "
        f"{logs['records on disk']}, outputs checked {logs['records checked']}, "
        f"wrong {logs['records WRONG']}, unreadable lines {logs['bad lines']}"
    )
    print(f"RSS after warm-up ({warmup:.0f} s) {rss_warm / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB, growth {growth:+.2f}% (target < 5%)")
    print(f"RSS after closing the handles {rss_closed / 1024:.1f} MiB")
    print(f"RSS min/max during run {min(samples) / 1024:.1f}/{max(samples) / 1024:.1f} MiB")
    print("RSS over time: " + ", ".join(f"{t:.0f} s {r / 1024:.1f} MiB" for t, r in timeline))
    half = [r for t, r in timeline if t >= elapsed / 2]
    if len(half) >= 2:
        print(f"RSS growth over the second half of the run: {(half[-1] - half[0]) / half[0] * 100:+.2f}%")
    print(
        f"threads before {threads_before}, most during run {threads_max} (besides the workers), "
        f"after {threads_after} (workers still alive: {alive or 'none'})"
    )
    print(f"fds before {fds_before}, most during run {fds_max}, after {fds_after}")
    kid_ok = True
    if kid is not None:
        ks = kid["sink"]
        kid_ok = kid["status"] == 0 and ks["written"] == ks["accepted"] and ks["errors"] == 0
        print(
            f"forked child (pid {kid['pid']}, {kid['threads']} threads, exit status "
            f"{kid['status']}): calls {kid['counts'].get('sent', 0)} (in the totals above), "
            f"follow swaps {kid['follows']}; its sink accepted {ks['accepted']}, written "
            f"{ks['written']}, dropped {ks['dropped']}, errors {ks['errors']}; RSS after "
            f"warm-up {kid['rss_warm'] / 1024:.1f} MiB, end {kid['rss_end'] / 1024:.1f} MiB "
            f"({(kid['rss_end'] - kid['rss_warm']) / kid['rss_warm'] * 100:+.2f}%)"
        )
    tmp.cleanup()
    sink_ok = (
        sink_stats["written"] == sink_stats["accepted"] and sink_stats["errors"] == 0
        and logs["records WRONG"] == 0 and logs["bad lines"] == 0 and logs["files beyond keep"] <= 0
        and kid_ok
    )  # fmt: skip
    ok = (
        lost == 0 and wrong == 0 and not alive and growth < 5.0 and sink_ok
        and threads_after == threads_before and fds_after == fds_before
    )  # fmt: skip
    print("RESULT:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

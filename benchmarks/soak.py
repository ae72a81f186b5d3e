"""Soak test (not a unit test): many threads, mixed good / bad / poison inputs, version swaps
and alias moves, for a bounded time. Every response is checked against the expected output.

    .venv/bin/python benchmarks/soak.py --minutes 4 --threads 8
    .venv/bin/python benchmarks/soak.py --quick          # 20 seconds

Reports calls by outcome, wrong and lost responses (target 0), RSS after warm-up and at the
end (target: growth under 5%), thread and file-descriptor counts before and after.
"""

from __future__ import annotations

import argparse
import collections
import gc
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


def worker(router: Router, seed: int, stop: threading.Event, stats: dict) -> None:
    rng = random.Random(seed)
    counts = collections.Counter()
    while not stop.is_set():
        kind, value, batch = make_input(rng)
        counts["sent"] += 1
        for _attempt in range(3):
            with router.lock:
                h = router.handle
            try:
                if batch:
                    p = h.predict_batch(value, details=True)
                    ok = np.allclose(p.output, expected(value, True, p.version))
                else:
                    p = h.predict(value, details=True)
                    ok = np.isclose(p.output, expected(value, False, p.version))
                counts["ok" if ok and kind == "good" else "WRONG"] += 1
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="20 seconds")
    args = ap.parse_args()
    seconds = 20.0 if args.quick else args.minutes * 60
    warmup = max(5.0, seconds * 0.1)

    tmp = tempfile.TemporaryDirectory()
    store = embedml.ModelStore(Path(tmp.name) / "store")
    key = "soak-key"
    for k in (1, 2):
        store.save("soak", Affine(k), input_schema=Rec, signing_key=key)
    store.set_alias("soak", "prod", "1")
    options = dict(require_signature=True, signing_key=key, max_batch_rows=64, max_string_length=16)
    router = Router(store, **options)

    threads_before, fds_before = threading.active_count(), fd_count()
    stats = {"lock": threading.Lock(), "counts": collections.Counter()}
    stop = threading.Event()
    workers = [
        threading.Thread(target=worker, args=(router, i, stop, stats), name=f"soak-{i}")
        for i in range(args.threads)
    ]
    start = time.monotonic()
    for t in workers:
        t.start()
    time.sleep(warmup)
    gc.collect()
    rss_warm = rss_kib()
    samples = [rss_warm]
    swaps = saves = 0
    next_swap = time.monotonic() + 2.0
    while time.monotonic() - start < seconds:
        time.sleep(0.5)
        if time.monotonic() >= next_swap:
            # alternate between moving the alias between the two versions and saving a new one
            versions = store.versions("soak")
            if swaps % 5 == 4 and len(versions) < 12:
                store.save("soak", Affine(len(versions) + 1), input_schema=Rec, signing_key=key)
                saves += 1
                versions = store.versions("soak")
            target = random.choice([v for v in versions if v != store.aliases("soak")["prod"]])
            store.set_alias("soak", "prod", target)
            router.swap()
            swaps += 1
            next_swap = time.monotonic() + 2.0
        if len(samples) < 1000 and int(time.monotonic() - start) % 10 == 0:
            samples.append(rss_kib())
    stop.set()
    for t in workers:
        t.join(30)
    alive = [t.name for t in workers if t.is_alive()]
    elapsed = time.monotonic() - start
    router.close()
    gc.collect()
    rss_end = rss_kib()
    c = stats["counts"]
    lost = c["sent"] - c["answered"]
    wrong = c["WRONG"] + sum(v for k, v in c.items() if k.startswith("UNEXPECTED"))
    growth = (rss_end - rss_warm) / rss_warm * 100

    print(f"soak: {elapsed:.0f} s, {args.threads} threads, {swaps} alias moves + swaps, {saves} new versions saved")
    print(f"calls sent {c['sent']}, answered {c['answered']}, lost {lost}, wrong {wrong}")
    print("| outcome | count |\n|---|---|")
    for k, v in sorted(c.items()):
        if k not in ("sent", "answered"):
            print(f"| {k} | {v} |")
    print(f"RSS after warm-up ({warmup:.0f} s) {rss_warm / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB, growth {growth:+.2f}% (target < 5%)")
    print(f"RSS min/max during run {min(samples) / 1024:.1f}/{max(samples) / 1024:.1f} MiB")
    print(f"threads before {threads_before}, after {threading.active_count()} (workers still alive: {alive or 'none'})")
    print(f"fds before {fds_before}, after {fd_count()}")
    tmp.cleanup()
    ok = lost == 0 and wrong == 0 and not alive and growth < 5.0
    print("RESULT:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

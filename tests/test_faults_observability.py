"""Faults in the observability and rollout machinery: hooks that raise or hang, a JSONL sink
on a full disk or an unwritable path, a process killed (SIGKILL) while its sink rotates
files, and errors in DriftMonitor / Shadow background work. Each fault is counted and
logged where the caller should not see it; predictions stay correct and nothing hangs or
leaks a thread."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import embedml
from embedml.observe.sinks import JsonlSink, read_jsonl
from helpers_batching import RowSum, expected, linreg
from helpers_models import child_env

X = np.random.default_rng(3).normal(size=(12, 4))
GATE = threading.Event()
ENTERED = threading.Event()


class Gated:
    """A real regressor whose call blocks until :data:`GATE` is set (a model that hangs)."""

    def __init__(self) -> None:
        self.inner = linreg()

    def predict(self, X):
        ENTERED.set()
        GATE.wait(60)
        return self.inner.predict(np.asarray(X, dtype=np.float64))


class Broken:
    """Raises on every call."""

    def predict(self, X):
        raise ArithmeticError("shadow model is broken")


class RaisingSink(embedml.Sink):
    def write(self, records):
        raise OSError("sink backend is down")


class HangingSink(embedml.Sink):
    """Its first write blocks until ``release`` is set; ``entered`` says it got there."""

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.seen = 0

    def write(self, records):
        self.entered.set()
        self.release.wait(60)
        self.seen += len(records)


def _raising_hook(record):
    raise ValueError(f"hook failed on {record.request_id}")


def _errors_logged(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and name in r.getMessage()]


@pytest.mark.parametrize("batching", [None, embedml.Batching(max_batch_size=8)])
def test_raising_hooks_are_counted_logged_once_and_never_raised(store, caplog, threads_checked, batching):
    store.save("m", linreg())
    caplog.set_level(logging.WARNING, logger="embedml")
    sink = RaisingSink(name="raising-sink")
    with store.load("m", batching=batching, hooks=[_raising_hook, sink]) as h:
        fn_sink = h.hooks[0]
        got = [h.predict(x) for x in X]
        got_batch = h.predict_batch(X)

        async def many():
            return await asyncio.gather(*(h.apredict(x) for x in X))

        got_async = asyncio.run(many())
        np.testing.assert_allclose(got, expected(X))
        np.testing.assert_allclose(got_batch, expected(X))
        np.testing.assert_allclose(got_async, expected(X))
        calls = 2 * len(X) + 1
        assert fn_sink.flush() and sink.flush()
        for s in (fn_sink, sink):
            stats = s.stats()
            assert stats["accepted"] == calls and stats["errors"] == calls, stats
            assert stats["written"] == 0 and stats["dropped"] == 0
        assert len(_errors_logged(caplog, "raising-sink")) == 1
        assert len(_errors_logged(caplog, "_raising_hook")) == 1
        assert h.metrics()["errors"] == 0  # hook failures are not prediction errors
        assert h.predict(X[0]) == pytest.approx(expected(X[:1])[0])


def test_hanging_hook_with_drop_policy_drops_and_close_abandons_it(store, caplog, threads_checked):
    store.save("m", linreg())
    caplog.set_level(logging.WARNING, logger="embedml")
    sink = HangingSink(max_queue=4, name="hanging")
    h = store.load("m", hooks=[sink])
    got = [h.predict(x) for x in X]
    np.testing.assert_allclose(got, expected(X))
    assert sink.entered.wait(10)
    calls = 50
    for _ in range(calls - len(X)):
        h.predict(X[0])
    stats = sink.stats()
    assert stats["accepted"] + stats["dropped"] == calls
    assert stats["accepted"] <= sink.max_queue and stats["dropped"] >= calls - sink.max_queue
    queued = stats["queued"]
    assert queued == stats["accepted"]  # nothing written: the first write never returned

    closer = threading.Thread(target=h.close, kwargs={"timeout": 0.5})
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "handle.close() hung on a stuck sink"
    assert len(_errors_logged(caplog, "abandoning")) == 1
    sink.release.set()  # the stuck write returns; the writer thread ends on its own
    assert sink.flush(60)  # (threads_checked: and the thread ends)
    stats = sink.stats()
    # what was in write() is written when it returns; what was still queued is abandoned
    assert stats["written"] == sink.seen >= 1
    assert stats["written"] + stats["abandoned"] == stats["accepted"] == queued


def test_hanging_hook_with_block_policy_bounds_the_callers_wait(store, caplog, threads_checked):
    """``policy="block"`` keeps every record while the sink keeps up; a sink stuck in
    write() holds each caller at most ``block_timeout`` seconds, then the record is
    dropped and counted, and one warning is logged."""
    store.save("m", linreg())
    caplog.set_level(logging.WARNING, logger="embedml")
    sink = HangingSink(max_queue=2, policy="block", name="blocking")
    sink.block_timeout = 0.2
    with store.load("m", hooks=[sink]) as h:
        assert h.predict(X[0]) == pytest.approx(expected(X[:1])[0])
        assert sink.entered.wait(10)  # the writer thread holds record 1 in write()
        results: list[float] = []
        workers = [
            threading.Thread(target=lambda x=x: results.append(h.predict(x))) for x in X[1:6]
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join(30)
        assert not any(t.is_alive() for t in workers)
        np.testing.assert_allclose(sorted(results), sorted(expected(X[1:6])))
        stats = sink.stats()
        # one record fits next to the one in write(); the other four waited and were dropped
        assert stats["accepted"] == 2 and stats["dropped"] == 4, stats
        warnings = [r for r in caplog.records if "waited" in r.getMessage() and "blocking" in r.getMessage()]
        assert len(warnings) == 1
        sink.release.set()
    assert sink.stats()["written"] == 2 and sink.stats()["abandoned"] == 0


def test_sink_on_full_disk_counts_errors_and_predictions_go_on(store, caplog, threads_checked):
    """``/dev/full`` fails every write with ENOSPC, as a full disk does."""
    store.save("m", linreg())
    caplog.set_level(logging.WARNING, logger="embedml")
    sink = JsonlSink("/dev/full")
    with store.load("m", hooks=[sink]) as h:
        for _ in range(3):
            np.testing.assert_allclose(h.predict_batch(X), expected(X))
            sink.flush()
        assert sink.stats()["errors"] == 3 and sink.stats()["written"] == 0
    assert len(_errors_logged(caplog, "jsonl:full")) == 1
    assert "No space left" in _errors_logged(caplog, "jsonl:full")[0].getMessage()
    assert sink.closed


def test_sink_on_unwritable_path_counts_errors(store, tmp_path, caplog, threads_checked):
    # A path under a regular file cannot be created, even by root.
    (tmp_path / "not-a-dir").write_text("x")
    store.save("m", linreg())
    caplog.set_level(logging.WARNING, logger="embedml")
    sink = JsonlSink(tmp_path / "not-a-dir" / "log.jsonl")
    with store.load("m", hooks=[sink]) as h:
        got = [h.predict(x) for x in X]
        sink.flush()
    np.testing.assert_allclose(got, expected(X))
    stats = sink.stats()
    assert stats["errors"] == len(X) and stats["written"] == 0
    assert len(_errors_logged(caplog, "jsonl:log.jsonl")) == 1


CHILD = """
import sys, numpy as np, embedml
store = embedml.ModelStore(sys.argv[1])
sink = embedml.JsonlSink(sys.argv[2], rotate_bytes=3000, keep=3, max_queue=8, policy="block")
h = store.load("rowsum", hooks=[sink])
base, limit = float(sys.argv[3]), int(sys.argv[4])
for i in range(limit):
    h.predict(np.array([base + i, 0.0, 0.0, 0.0]))
    if i == min(20, limit - 1):
        print("ready", flush=True)
sink.flush()
print("flushed", flush=True)
sys.stdin.read()  # wait to be killed
"""
TORN = b'{"request_id":"torn","model":"rowsum","inputs":[[1.0,'



def test_sigkill_during_jsonl_rotation_leaves_readable_ordered_logs(store, tmp_path, subprocess_env, caplog):
    """A child writes records (one thread, so in order) to a sink rotating every few
    records and is killed at random moments, several times, each run appending to the
    same files as a restarted service would. After each kill: at most ``keep`` rotated
    files plus the current one, every line JSON except torn last lines, which
    ``read_jsonl`` skips, and the records read back strictly in the order written (none
    duplicated, none from a later run before an earlier one). A kill rarely tears a line
    (each batch is one write call), so the test also leaves a torn line itself: the next
    run must not glue its first record to it."""
    store.save("rowsum", RowSum())
    log = tmp_path / "logs" / "p.jsonl"
    rng = random.Random(7)
    env = child_env(subprocess_env)
    for run in range(4):
        # run 1 writes a few records only, so that they are still on disk to check
        limit = 5 if run == 1 else 10**7
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(store.root), str(log), str(run * 1e6), str(limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
        )  # fmt: skip
        try:
            assert child.stdout.readline().strip() == "ready"
            if run == 1:
                assert child.stdout.readline().strip() == "flushed"
            else:
                threading.Event().wait(rng.uniform(0.05, 0.6))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        names = sorted(p.name for p in log.parent.iterdir())
        assert set(names) <= {"p.jsonl", "p.jsonl.1", "p.jsonl.2", "p.jsonl.3"}, names
        torn = 0
        for p in log.parent.iterdir():
            lines = p.read_bytes().split(b"\n")
            for line in lines[:-1]:  # complete lines
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    torn += 1  # a torn line from an earlier kill, now followed by others
                    assert line in (TORN, b""), line  # ended by the next run, not glued to it
            if lines[-1]:
                torn += 1
                with pytest.raises(json.JSONDecodeError):
                    json.loads(lines[-1])
        assert torn <= run + 2  # at most one per kill so far, plus the one made below
        firsts = [r["inputs"][0][0] for r in read_jsonl(log)]
        assert firsts, "nothing written"
        assert all(a < b for a, b in zip(firsts, firsts[1:])), "records out of order or duplicated"
        assert firsts[-1] >= run * 1e6 + min(20, limit - 1)  # this run's records are there
        if run == 1:  # the record after the torn line was not glued to it
            assert firsts[-5:] == [1e6 + i for i in range(5)]
            assert any("not a complete JSON record" in r.getMessage() for r in caplog.records)
        if run == 0:
            with open(log, "ab") as f:
                f.write(b"\n" + TORN)  # as if killed between two write calls


def test_drift_monitor_errors_are_counted_not_raised(store, caplog, threads_checked):
    store.save("m", linreg())
    caplog.set_level(logging.WARNING, logger="embedml")
    rng = np.random.default_rng(0)

    def on_drift(feature, row):
        raise RuntimeError(f"alerting is down ({feature})")

    monitor = embedml.DriftMonitor(rng.normal(size=(500, 4)), window=50, on_drift=on_drift)
    wrong = embedml.DriftMonitor({"not_a_feature": rng.normal(size=200)}, window=20)
    shifted = rng.normal(loc=5.0, size=(200, 4))
    with store.load("m", hooks=[monitor, wrong]) as h:
        for chunk in np.split(shifted, 10):
            np.testing.assert_allclose(h.predict_batch(chunk), expected(chunk))
        monitor.flush()
        wrong.flush()
        assert monitor.stats()["errors"] >= 1  # on_drift raised for each drifting feature
        assert len(monitor.report().drifted) == 4  # every feature was shifted
        assert wrong.stats()["errors"] == 10 and wrong.stats()["written"] == 0
    assert len(_errors_logged(caplog, "sink drift")) == 2  # once per monitor


def test_shadow_errors_are_counted_and_a_hung_shadow_does_not_hang_close(store, caplog, threads_checked):
    store.save("m", linreg())
    store.save("broken", Broken())
    store.save("slow", Gated())
    caplog.set_level(logging.WARNING, logger="embedml")
    with store.load("m") as primary, store.load("broken") as broken, store.load("slow") as slow:
        shadow = embedml.Shadow(primary, broken)
        np.testing.assert_allclose([shadow.predict(x) for x in X], expected(X))
        np.testing.assert_allclose(shadow.predict_batch(X), expected(X))
        assert shadow.wait(10)
        stats = shadow.stats()
        assert stats["errors"] == len(X) + 1 and stats["compared"] == 0
        assert shadow.close()

        GATE.clear()
        ENTERED.clear()
        hung = embedml.Shadow(primary, slow, queue_size=4)
        np.testing.assert_allclose([hung.predict(x) for x in X], expected(X))
        assert ENTERED.wait(10)  # the shadow thread is inside the hung call
        st = hung.stats()
        assert st["submitted"] + st["dropped"] == len(X) and st["dropped"] >= len(X) - 5
        assert hung.close(timeout=0.3) is False
        assert any("did not stop" in r.getMessage() for r in caplog.records)
        GATE.set()  # the hung call returns; the shadow thread then stops (threads_checked)
    warned = [r for r in caplog.records if "shadow" in r.getMessage() and "broken" in r.getMessage()]
    assert len(warned) == 1


def test_close_does_not_wait_forever_for_a_follower_stuck_in_a_swap(store, caplog, threads_checked):
    """The alias moves to a version whose warm-up call never returns: the handle keeps
    serving the old version, and ``close(timeout)`` gives up on the follower and logs it."""
    store.save("f", linreg())
    store.save("f", Gated())
    store.set_alias("f", "prod", "1")
    caplog.set_level(logging.WARNING, logger="embedml")
    GATE.clear()
    ENTERED.clear()
    h = store.load("f", "@prod", follow=True, poll_s=0.02)
    assert h.predict(X[0]) == pytest.approx(expected(X[:1])[0])  # also the warm-up sample
    store.set_alias("f", "prod", "2")
    assert ENTERED.wait(10)  # the follower is warming version 2 up, and hangs there
    assert h.version == "1" and h.predict(X[1]) == pytest.approx(expected(X[1:2])[0])
    closer = threading.Thread(target=h.close, kwargs={"timeout": 0.3})
    closer.start()
    closer.join(30)
    assert not closer.is_alive(), "handle.close() hung on a stuck follower"
    assert any("abandoning" in r.getMessage() and "follower" in r.getMessage() for r in caplog.records)
    GATE.set()  # the warm-up returns; the swap finds the handle closed and gives up
    assert h.follower.stop(timeout=30)
    assert not h.follower.alive and h.follower.swaps == 0

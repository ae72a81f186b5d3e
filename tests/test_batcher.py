"""The batcher on its own (:class:`embedml.serving.batching.Batcher` over a batch function),
in the style of Ray Serve's tests/test_batching.py: exact batch sizes, huge timeouts and
events, never a sleep that a result depends on, so no test depends on the machine's speed.
:class:`embedml.testing.FakeClock` drives windows and deadlines.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest

import embedml
from embedml.serving.batching import Batcher, Batching, Request
from embedml.serving.isolation import bisect_failures
from embedml.testing import FakeClock

pytestmark = pytest.mark.timeout(60)

HUGE_MS = 60_000  # a window or deadline no test may wait out


@dataclass(slots=True, eq=False, kw_only=True)
class Item(Request):
    """A call of one row carrying one value."""

    rows: int = 1
    value: Any = None


def item(value: Any) -> Item:
    return Item(value=value)


class Gate:
    """A batch function: records each batch of payloads, returns ``10 * p`` per payload
    (an exception payload is that call's outcome), and blocks in its first call until
    ``open`` is set. It reports one model call per batch, as a pipeline does."""

    def __init__(self, blocked: bool = True) -> None:
        self.batches: list[list] = []
        self.threads: list[threading.Thread] = []  # the thread that ran each batch
        self.entered = threading.Event()
        self.open = threading.Event()
        if not blocked:
            self.open.set()
        self.batcher: Batcher | None = None
        self._lock = threading.Lock()

    def __call__(self, requests: list) -> list:
        payloads = [r.value for r in requests]
        with self._lock:
            self.batches.append(payloads)
            self.threads.append(threading.current_thread())
        self.batcher.count_model_call(len(requests))  # type: ignore[union-attr]
        self.entered.set()
        assert self.open.wait(HUGE_MS / 1000)
        return [p if isinstance(p, Exception) else 10 * p for p in payloads]


def batcher(fn, **settings) -> Batcher:
    b = Batcher(fn, Batching(**settings), label="test")
    fn.batcher = b
    return b


def until(cond, what: str) -> None:
    """Wait for ``cond`` (a state another thread reaches); the limit only turns a hang
    into a failure, nothing is timed."""
    done = threading.Event()
    for _ in range(30_000):
        if cond():
            return
        done.wait(0.002)
    raise AssertionError(f"gave up waiting for {what}")


def in_threads(fn, args) -> tuple[list[threading.Thread], dict]:
    results: dict = {}

    def work(a):
        try:
            results[a] = fn(a)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            results[a] = exc

    threads = [threading.Thread(target=work, args=(a,)) for a in args]
    for t in threads:
        t.start()
    return threads, results


def join(threads) -> None:
    for t in threads:
        t.join(HUGE_MS / 1000)


def test_a_lone_caller_runs_at_once_on_its_own_thread():
    gate = Gate(blocked=False)
    b = batcher(gate, max_wait_ms=HUGE_MS)
    assert [b.submit(item(i)) for i in range(3)] == [(0, 0.0), (10, 0.0), (20, 0.0)]
    assert gate.threads == [threading.current_thread()] * 3
    stats = b.stats()
    assert (stats.requests, stats.batches, stats.batch_sizes) == (3, 3, {1: 3})


def test_calls_queued_behind_a_running_batch_are_the_next_batch_at_once():
    # A window of 60 s: a batcher that waited it for a batch of calls that already waited
    # for the running one would hang this test.
    gate = Gate()
    b = batcher(gate, max_batch_size=8, max_wait_ms=HUGE_MS)
    first, results = in_threads(lambda p: b.submit(item(p))[0], [1])
    assert gate.entered.wait(30)
    rest, more = in_threads(lambda p: b.submit(item(p))[0], [2, 3, 4, 5, 6])
    until(lambda: b.stats().queued == 5, "five queued calls")
    gate.open.set()
    join(first + rest)
    assert {**results, **more} == {p: 10 * p for p in range(1, 7)}
    assert gate.batches[0] == [1] and sorted(gate.batches[1]) == [2, 3, 4, 5, 6]
    stats = b.stats()
    assert stats.batches == 2 and stats.batch_sizes == {1: 1, 8: 1}
    assert stats.requests == stats.rows == 6 and stats.queued == 0
    assert sum(stats.queue_wait_buckets.values()) == 6


def test_batches_never_exceed_max_batch_size_and_keep_order():
    gate = Gate()
    b = batcher(gate, max_batch_size=3, max_wait_ms=HUGE_MS)
    first, _ = in_threads(lambda p: b.submit(item(p)), [0])
    assert gate.entered.wait(30)
    rest = []
    for p in range(1, 8):  # one at a time, so the queue order is known
        threads, _ = in_threads(lambda p: b.submit(item(p)), [p])
        rest += threads
        until(lambda p=p: b.stats().queued == p, f"{p} queued calls")
    gate.open.set()
    join(first + rest)
    assert gate.batches == [[0], [1, 2, 3], [4, 5, 6], [7]]


def test_asyncio_a_full_batch_ends_the_window():
    # inline_ms=0: the worker thread runs the batches; the first call found the batcher
    # idle, so its batch waits for others, but only until it is full (not 60 s).
    gate = Gate(blocked=False)
    b = batcher(gate, max_batch_size=4, max_wait_ms=HUGE_MS, inline_ms=0)

    async def main():
        return await asyncio.gather(*(b.asubmit(item(p)) for p in range(8)))

    got = asyncio.run(main())
    assert [outcome for outcome, _ in got] == [10 * p for p in range(8)]
    assert gate.batches[0] == [0, 1, 2, 3]  # the full batch ran without its 60 s window
    # calls 4-7 may queue while the worker runs that batch: queued behind a busy batcher,
    # their batch is due at once, so they may run as one batch or several (in order)
    assert sum(gate.batches[1:], []) == [4, 5, 6, 7]
    assert b.stats().inline_batches == 0
    assert b.close() and b.join(30)


def test_window_is_measured_on_the_clock_from_the_first_queued_call():
    clock = FakeClock()
    gate = Gate(blocked=False)
    b = batcher(gate, max_batch_size=64, max_wait_ms=10, inline_ms=0, clock=clock)

    async def main():
        first = asyncio.ensure_future(b.asubmit(item(1)))
        # 50 ms of real time, five times the window: on the fake clock none has passed,
        # so the batch must still be waiting (a window on the real clock has run it)
        await asyncio.sleep(0.05)
        assert not first.done()
        rest = [asyncio.ensure_future(b.asubmit(item(p))) for p in (2, 3)]
        await asyncio.sleep(0)  # they queue
        clock.advance(0.010)
        return await asyncio.gather(first, *rest)

    got = asyncio.run(main())
    assert [outcome for outcome, _ in got] == [10, 20, 30]
    assert gate.batches == [[1, 2, 3]]
    stats = b.stats()
    assert stats.queue_wait_seconds_max == pytest.approx(0.010)
    assert stats.queue_wait_seconds_sum == pytest.approx(0.030)
    assert [wait for _, wait in got] == pytest.approx([0.010] * 3)
    b.close()
    assert b.join(30)


def test_deadline_on_the_clock_drops_a_queued_call_before_it_runs():
    clock = FakeClock()
    gate = Gate()
    b = batcher(gate, max_wait_ms=0, clock=clock)
    first, results = in_threads(lambda p: b.submit(item(p))[0], [1])
    assert gate.entered.wait(30)
    doomed, late = in_threads(lambda p: b.submit(item(p), timeout_ms=HUGE_MS), [2])
    until(lambda: b.stats().queued == 1, "the queued call")
    clock.advance(HUGE_MS / 1000 + 1)  # its deadline passed while it was queued
    gate.open.set()
    join(first + doomed)  # at once: the batcher dropped it, nobody waited 60 s
    assert results == {1: 10}
    assert isinstance(late[2], embedml.PredictionTimeoutError)
    assert isinstance(late[2], TimeoutError) and "dropped" in str(late[2])
    assert gate.batches == [[1]]
    assert b.stats().timed_out == 1


def test_cancelled_tasks_are_dropped_from_the_queue():
    gate = Gate()
    b = batcher(gate, max_wait_ms=0, inline_ms=0)
    first, results = in_threads(lambda p: b.submit(item(p))[0], [1])
    assert gate.entered.wait(30)

    async def main():
        tasks = [asyncio.ensure_future(b.asubmit(item(p))) for p in (2, 3, 4)]
        while b.stats().queued < 3:
            await asyncio.sleep(0.002)
        tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert b.stats().queued == 2
        gate.open.set()
        return [(await t)[0] for t in (tasks[0], tasks[2])]

    assert asyncio.run(main()) == [20, 40]
    join(first)
    assert gate.batches == [[1], [2, 4]]


def test_an_error_of_the_batch_function_reaches_every_caller_of_the_batch():
    def boom(requests):
        raise RuntimeError(f"batch of {len(requests)} failed")

    gate = Gate()
    calls = []

    def run(requests):
        calls.append(len(requests))
        return gate(requests) if len(calls) == 1 else boom(requests)

    b = Batcher(run, Batching(max_wait_ms=0), label="test")
    gate.batcher = b
    first, results = in_threads(lambda p: b.submit(item(p))[0], [1])
    assert gate.entered.wait(30)
    rest, errors = in_threads(lambda p: b.submit(item(p))[0], [2, 3, 4])
    until(lambda: b.stats().queued == 3, "three queued calls")
    gate.open.set()
    join(first + rest)
    assert results == {1: 10} and calls == [1, 3]
    assert len({id(e) for e in errors.values()}) == 1  # one error, delivered to all three
    assert all(isinstance(e, RuntimeError) and "batch of 3" in str(e) for e in errors.values())


def test_one_outcome_per_call_is_checked():
    b = Batcher(lambda requests: requests[:-1], Batching(max_wait_ms=0), label="short")
    with pytest.raises(embedml.PredictionError, match="returned 0 outcomes for 1 calls") as info:
        b.submit(item(1))
    assert info.value.stage == "output"


def test_an_exception_outcome_is_raised_to_its_caller_alone():
    gate = Gate()
    b = batcher(gate, max_wait_ms=0)
    first, _ = in_threads(lambda p: b.submit(item(p))[0], [1])
    assert gate.entered.wait(30)
    bad = ValueError("row 3 is bad")
    rest, results = in_threads(lambda p: b.submit(item(p))[0], [2, bad, 4])
    until(lambda: b.stats().queued == 3, "three queued calls")
    gate.open.set()
    join(first + rest)
    assert results == {2: 20, bad: bad, 4: 40}
    assert len(gate.batches) == 2


def test_close_never_waits_for_a_running_batch():
    gate = Gate()
    b = batcher(gate, max_wait_ms=0, inline_ms=0)
    idle = threading.Event()

    async def one():
        return await b.asubmit(item(1))

    caller = threading.Thread(target=lambda: asyncio.run(one()))
    caller.start()
    assert gate.entered.wait(30)  # the worker thread runs it
    assert b.close(idle.set) is False  # busy: returns at once
    with pytest.raises(embedml.HandleClosedError):
        b.submit(item(2))
    assert not idle.is_set()
    gate.open.set()
    caller.join(30)
    assert idle.wait(30)  # called by the thread that ran the last batch
    assert b.join(30)  # and the worker thread has ended


def test_bisect_failures_isolates_the_bad_items():
    items = list(range(16))
    bad = {3, 12}
    calls = []

    def run(part):
        calls.append(len(part))
        if bad & set(part):
            raise ValueError(f"bad item in {part}")
        return [10 * i for i in part]

    results = bisect_failures(items, run, lambda exc: exc)
    assert [r for i, r in enumerate(results) if i not in bad] == [
        10 * i for i in items if i not in bad
    ]
    assert all(isinstance(results[i], ValueError) for i in bad)
    assert calls[0] == 16 and len(calls) < 2 * len(bad) * 4 + 1  # about 2k log2(n)
    with pytest.raises(KeyError):  # an error that is not about the items propagates
        bisect_failures(items, lambda part: {}[0], lambda exc: None)


def test_clock_setting_is_validated():
    with pytest.raises(embedml.ConfigurationError, match="clock"):
        Batching(clock=object())

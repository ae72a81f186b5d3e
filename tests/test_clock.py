"""The clock protocol and embedml.testing.FakeClock: it moves only with advance() (from any
thread), and timed waits on it end when advance() reaches their deadline or their condition
is notified, never on their own."""

from __future__ import annotations

import math
import threading

import pytest

import embedml
from embedml.clock import SYSTEM_CLOCK, Clock, check_clock, wait_for
from embedml.testing import FakeClock


def test_both_clocks_are_clocks():
    assert isinstance(SYSTEM_CLOCK, Clock) and isinstance(FakeClock(), Clock)
    assert check_clock(SYSTEM_CLOCK) is SYSTEM_CLOCK
    with pytest.raises(embedml.ConfigurationError, match="monotonic"):
        check_clock(object())


def test_a_fake_clock_moves_only_when_told():
    clock = FakeClock(start=5.0, wall=1_000.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 1_000.0)
    clock.advance(2.5)
    assert (clock.monotonic(), clock.time()) == (7.5, 1_002.5)
    clock.advance(0)
    assert clock.monotonic() == 7.5
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="forward"):
            clock.advance(bad)
    assert clock.monotonic() == 7.5


def test_advance_is_thread_safe(threads_checked):
    clock = FakeClock()
    start = threading.Barrier(8)

    def tick() -> None:
        start.wait(60)
        for _ in range(2000):
            clock.advance(0.5)  # exact in binary: any lost update shows

    threads = [threading.Thread(target=tick) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.monotonic() == 8 * 2000 * 0.5


def test_a_timed_wait_ends_when_advance_reaches_its_deadline(threads_checked):
    clock = FakeClock()
    cond = threading.Condition()
    results: list[bool] = []

    def waiter() -> None:
        with cond:
            results.append(wait_for(clock, cond, lambda: False, 10.0))

    thread = threading.Thread(target=waiter)
    thread.start()
    clock.wait_for_sleepers(1)
    clock.advance(9.0)
    clock.wait_for_sleepers(1)  # woke, found 9 s < 10 s, waits again
    assert results == [] and thread.is_alive()
    clock.advance(1.0)
    thread.join(60)
    assert results == [False] and clock.sleepers == 0


def test_a_timed_wait_ends_when_its_condition_is_notified(threads_checked):
    clock = FakeClock()
    cond = threading.Condition()
    done = False
    results: list[bool] = []

    def waiter() -> None:
        with cond:
            results.append(clock.wait_for(cond, lambda: done, 3600.0))

    thread = threading.Thread(target=waiter)
    thread.start()
    clock.wait_for_sleepers(1)
    with cond:
        done = True
        cond.notify_all()
    thread.join(60)
    assert results == [True] and clock.monotonic() == 0.0 and clock.sleepers == 0


def test_untimed_and_expired_waits():
    clock = FakeClock()
    cond = threading.Condition()
    with cond:
        assert clock.wait_for(cond, lambda: "ready", None) == "ready"  # the predicate's value
        assert clock.wait_for(cond, lambda: False, 0.0) is False  # no time to wait
        assert wait_for(SYSTEM_CLOCK, cond, lambda: False, 0.0) is False  # real seconds


def test_waiting_for_sleepers_that_never_come_times_out():
    with pytest.raises(TimeoutError, match="0 thread"):
        FakeClock().wait_for_sleepers(1, timeout=0.01)

"""The clock embedml reads, so that tests can replace it.

Components that wait or measure intervals (drift check intervals, alias polling, router
latencies, and later batching windows and metrics windows) take a ``clock=`` (default
:data:`SYSTEM_CLOCK`); :class:`embedml.testing.FakeClock` is one that only moves when a test
says so. A clock measures; waiting is done on ``threading.Event`` / ``Condition`` objects,
never by sleeping in a loop. A wait whose timeout is itself the interval being measured
(a follower sleeping ``poll_s`` seconds between polls) goes through :func:`wait_for`, so
that a fake clock decides when that time has passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from .errors import ConfigurationError

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "check_clock", "wait_for"]

T = TypeVar("T")


@runtime_checkable
class Clock(Protocol):
    """What embedml asks of a clock."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, deadlines)."""
        ...

    def time(self) -> float:
        """Wall-clock Unix seconds (timestamps in records and history)."""
        ...


class SystemClock:
    """The real clocks: :func:`time.monotonic` and :func:`time.time`."""

    # The functions themselves, not methods calling them: components read the clock on
    # every call (a router times each prediction), and a Python-level method adds ~50 ns.
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)

    def __repr__(self) -> str:
        return "SystemClock()"


#: The clock every component uses unless given another.
SYSTEM_CLOCK: Clock = SystemClock()


def check_clock(clock: object) -> Clock:
    """``clock`` if it is a :class:`Clock`; raises :class:`ConfigurationError` otherwise."""
    if not isinstance(clock, Clock):
        raise ConfigurationError(
            f"clock must have monotonic() and time() methods (an embedml.clock.Clock), got {clock!r}"
        )
    return clock


def wait_for(
    clock: Clock, cond: threading.Condition, predicate: Callable[[], T], timeout: float | None
) -> T:
    """``cond.wait_for(predicate, timeout)`` with ``timeout`` measured on ``clock``.

    Call it with ``cond`` held, like ``Condition.wait_for``; returns the predicate's last
    value (false on timeout). A clock with a ``wait_for(cond, predicate, timeout)`` method
    of its own (:class:`embedml.testing.FakeClock`) decides when the timeout has passed;
    for any other clock it is real seconds.
    """
    own = getattr(clock, "wait_for", None)
    if own is not None:
        return own(cond, predicate, timeout)  # type: ignore[no-any-return]
    return cond.wait_for(predicate, timeout)

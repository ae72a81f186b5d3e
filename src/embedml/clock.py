"""The clock embedml reads, so that tests can replace it.

Components that wait or measure intervals (batching windows, drift check intervals, alias
polling, metrics windows, shadows) take a ``clock=`` (default :data:`SYSTEM_CLOCK`);
:class:`embedml.testing.FakeClock` is one that only moves when a test says so. A clock
measures; waiting is done on ``threading.Event`` / ``Condition`` objects, never by sleeping
in a loop.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


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

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


#: The clock every component uses unless given another.
SYSTEM_CLOCK: Clock = SystemClock()

"""Dynamic request batching: concurrent calls joined into one call of a batch function.

A :class:`Batcher` is given a *batch function* ``run(requests) -> outcomes``: one outcome
per :class:`Request`, in order; an outcome that is an exception is raised to that caller
alone. Callers submit instances of a subclass of :class:`Request` that carries their data;
the batcher knows nothing else of what it batches: a handle's pipeline gives it
:meth:`~embedml.serving.pipeline.Pipeline.run_items`, which joins the callers' rows, runs
the model, checks one output row per input row and isolates a failing row.

How a call is served::

    submit / asubmit
      |-- idle batcher (nothing queued, no batch running) -> run alone, on the caller's thread
      |-- asyncio caller, idle batcher, cheap batches     -> lead an inline batch on the loop
      `-- otherwise -> queue.  The worker thread takes a batch when the batch function is
                       free and the batch is *due* (see below), runs it, hands out outcomes.

Waiting policy. A queued batch is due, and is taken as soon as the batch function is free,
when any of these holds:

* it is full (``max_batch_size`` rows, or calls with ``count="calls"``);
* its first request queued while a batch was running: it has already waited for a whole
  batch, and what arrived meanwhile is the batch (under load the model run *is* the wait);
* ``max_wait_ms`` have passed since its first request was queued (measured on the clock,
  :mod:`embedml.clock`).

Only a request reaching a batcher with nothing running waits for others (``max_wait_ms``);
and a thread that finds the batcher idle does not wait at all: it runs its call at once
(a lone caller pays two uncontended lock acquisitions). The worker is woken only when there
is something for it to do (a first request, a full batch, the batch function freed); no
sleeps, no polling.

Deadlines, cancellation, backpressure: a request past its deadline or cancelled before its
batch runs is dropped, never run; a result that comes after the caller left is dropped.
The queue holds at most ``max_queue`` rows (or calls): beyond it a call raises
:class:`~embedml.OverloadedError`, or waits for room until its deadline.

Closing never waits for the batch function: :meth:`Batcher.close` refuses new calls and
returns whether the batcher is idle; if not, whoever finishes the last batch (once a model
that hung returns) runs the clean-up ``close`` was given and lets the worker end. After
``os.fork()`` the child starts from an empty, idle batcher (the parent's threads do not
exist there).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..clock import SYSTEM_CLOCK, Clock, check_clock, wait_for
from ..errors import (
    ConfigurationError,
    HandleClosedError,
    OverloadedError,
    PredictionError,
    PredictionTimeoutError,
)

__all__ = ["WAIT_BUCKETS", "BatchFunction", "Batcher", "Batching", "BatchingStats"]

_log = logging.getLogger("embedml.serving.batching")

# Upper bounds of the queue-wait histogram, in seconds (the last bucket is +inf).
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0)

#: ``run(requests) -> outcomes``: one outcome per request, an exception for a failed one.
BatchFunction = Callable[[list[Any]], Sequence[Any]]


@dataclass(frozen=True)
class Batching:
    """Settings of dynamic batching, validated when built (``ConfigurationError``).

    * ``max_batch_size``: most rows (or calls, see ``count``) joined into one model call.
    * ``max_wait_ms``: longest a batch waits for more calls after its first call queued,
      when no batch was running (a batch that queued behind a running one is taken as soon
      as that one ends); a thread calling an idle batcher never waits. ``0`` never waits.
    * ``max_queue``: most rows (or calls) waiting; beyond it a call raises
      :class:`~embedml.OverloadedError` at once, or waits for room until its deadline.
    * ``timeout_ms``: default deadline of each call (``None``: none); a call's own
      ``timeout_ms=`` overrides it. Past it the call raises
      :class:`~embedml.PredictionTimeoutError` and its request never reaches the model.
    * ``count``: ``"rows"`` (a ``predict_batch`` of 10 rows counts 10) or ``"calls"``.
    * ``inline_ms``: for asyncio callers, while batches take at most this long (measured),
      a batch runs on the event loop's own thread, in the task that finds the batcher idle,
      with no hand-off to the worker thread; slower models run on the worker thread, so the
      loop is never blocked much longer than this. ``0``: always the worker thread.
    * ``clock``: what measures waits and deadlines (:mod:`embedml.clock`; tests pass
      :class:`embedml.testing.FakeClock`-like clocks).
    """

    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_ms: float | None = None
    count: Literal["rows", "calls"] = "rows"
    inline_ms: float = 0.5
    clock: Clock = field(default=SYSTEM_CLOCK, repr=False)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(f"Batching.{name} must be an integer >= 1, got {value!r}")
        if self.max_queue < self.max_batch_size:
            raise ConfigurationError(
                f"Batching.max_queue ({self.max_queue}) must be >= max_batch_size "
                f"({self.max_batch_size}), or a full batch could never be queued"
            )
        if not _is_number(self.max_wait_ms) or not 0 <= self.max_wait_ms <= 60_000:
            raise ConfigurationError(
                f"Batching.max_wait_ms must be a number in [0, 60000], got {self.max_wait_ms!r}"
            )
        check_timeout(self.timeout_ms, "Batching.timeout_ms")
        if not _is_number(self.inline_ms) or not 0 <= self.inline_ms <= 60_000:
            raise ConfigurationError(
                f"Batching.inline_ms must be a number in [0, 60000], got {self.inline_ms!r}"
            )
        if self.count not in ("rows", "calls"):
            raise ConfigurationError(
                f"Batching.count must be 'rows' or 'calls', got {self.count!r}"
            )
        check_clock(self.clock)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_timeout(value: Any, what: str = "timeout_ms") -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is ``None`` or a number > 0."""
    if value is not None and (not _is_number(value) or value <= 0):
        raise ConfigurationError(
            f"{what} must be None or a number of milliseconds > 0, got {value!r}"
        )


@dataclass(frozen=True)
class BatchingStats:
    """Counters of one handle's batcher since it was loaded (see ``handle.batching_stats()``).

    ``requests`` calls and ``rows`` rows entered the queue; ``batches`` model calls ran them.
    ``batch_sizes`` is a histogram of rows per batch: a batch of ``n`` rows counts under the
    smallest power of two >= ``n`` (not cumulative); with ``count="rows"``, ``math.inf``
    holds batches larger than ``max_batch_size`` (a big ``predict_batch`` that ran alone).
    ``queue_wait_*`` measure the time from joining the queue to being taken into a batch;
    ``queue_wait_buckets`` maps upper bounds in seconds (see ``WAIT_BUCKETS``) to counts.
    ``rejected`` calls got ``OverloadedError``, ``timed_out`` a ``PredictionTimeoutError``,
    ``failed`` a ``PredictionError``; ``isolation_runs`` counts re-runs made to isolate a
    failing record; ``inline_batches`` counts model calls run on an event loop's thread
    (``inline_ms``).
    """

    requests: int
    rows: int
    batches: int
    batch_sizes: dict[float, int]
    queue_wait_seconds_sum: float
    queue_wait_seconds_max: float
    queue_wait_buckets: dict[float, int]
    queued: int
    rejected: int
    timed_out: int
    failed: int
    isolation_runs: int
    inline_batches: int = 0

    @property
    def mean_batch_size(self) -> float:
        """Rows per model call (0.0 before the first batch)."""
        return self.rows / self.batches if self.batches else 0.0


def _latch() -> threading.Lock:
    """A one-shot latch for the one thread waiting on a request: a lock, held until the
    request's outcome is ready (``release()`` sets it; ``acquire(timeout=...)`` waits).

    ``threading.Event`` would do, but builds a ``Condition`` per request: 2.9 µs to make,
    set and wait on, against 0.2 µs for a lock (CPython 3.11 here, ``timeit``); and a class
    around the lock cost three Python frames per queued call (with 64 threads on the small
    MLP, 5.5 of 88 µs of profiled CPU per row, yappi; docs/batching.md)."""
    latch = threading.Lock()
    latch.acquire()
    return latch


# States of a request; each change is made under the batcher's lock.
_QUEUED, _RUNNING, _DONE, _EXPIRED, _LEFT = range(5)


class Request:
    """One call to a batcher. Subclass it with the call's own data, including ``rows``
    (the call's rows: what ``max_batch_size`` counts with ``count="rows"``); the pipeline's
    ``BatchItem`` is one. The batch function gets the requests themselves.

    The slots below are the batcher's, set when the request is queued; a call that runs at
    once, alone, never queues and pays for none of them. One object per call: a second one
    cost about 1 µs per row with 64 asyncio tasks (garbage-collector passes), and setting
    these slots at construction made a lone call 0.1 slower relative to no batching."""

    __slots__ = (
        "units", "deadline", "enqueued", "latch", "future", "loop", "state", "outcome",
        "wait", "collected", "behind", "next",
    )  # fmt: skip
    rows: int
    units: int  # rows or 1, in the unit of ``Batching.count``
    deadline: float | None  # on the batcher's clock
    enqueued: float
    latch: threading.Lock | None  # a thread caller waits here (see _latch) ...
    future: Any  # ... an asyncio caller here (on ``loop``)
    loop: Any
    state: int
    outcome: Any  # the batch function's outcome for this request
    wait: float  # seconds from joining the queue to being taken into a batch
    collected: bool  # the caller has woken up and stopped waiting
    behind: bool  # queued while the batcher was busy: its batch is due at once
    next: Request | None  # the thread caller this one wakes once woken (see _run_batch)

    def wake(self) -> None:
        """Wake the caller (from any thread)."""
        if self.latch is not None:
            self.latch.release()
        else:  # a closed loop raises RuntimeError: nobody waits there any more
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(_resolve, self.future)


# The asyncio module, imported by the first asyncio caller (thread callers never pay for
# it) and kept here: an import statement in asubmit, run on every call, cost 0.08 µs a
# call more than this global (timeit).
_asyncio: Any = None


def _import_asyncio() -> Any:
    global _asyncio
    import asyncio

    _asyncio = asyncio
    return asyncio


def _resolve(*futures: Any) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


# Live batchers, for the fork handler.
_LIVE: weakref.WeakSet[Batcher] = weakref.WeakSet()


class Batcher:
    """Runs a batch function over the requests of concurrent calls (see the module doc).

    Thread-safe; serves threads and asyncio tasks together. ``label`` names what is batched
    in error messages. ``close()`` drains: queued calls still run, later ones raise
    :class:`~embedml.HandleClosedError`; it never waits for a running batch.
    """

    def __init__(self, run: BatchFunction, settings: Batching, label: str = "the model") -> None:
        self.settings = settings
        self.label = label
        self._run = run
        self._clock = settings.clock
        # SystemClock.monotonic is a Python frame around time.monotonic; called 2-3 times
        # per queued call, the C function directly saves about 0.1 µs each (timeit).
        self._now = time.monotonic if settings.clock is SYSTEM_CLOCK else settings.clock.monotonic
        self._count_rows = settings.count == "rows"
        self._max = settings.max_batch_size
        self._max_queue = settings.max_queue
        self._max_wait = settings.max_wait_ms / 1000.0
        self._inline = settings.inline_ms / 1000.0
        self._deadlines = settings.timeout_ms is not None  # calls have a default deadline
        self._closed = False
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """The run-time state of a new batcher (also what a forked child starts from)."""
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the worker waits here
        self._room = threading.Condition(self._lock)  # callers waiting for queue room
        self._queue: deque[Request] = deque()
        self._queued = 0  # in the unit of ``count``
        self._busy = False  # the batch function is running (one call at a time)
        self._last: list[Request] = []  # callers of the last batch, until all have woken
        self._last_threads: list[Request] = []  # its thread callers, until all have woken
        self._worker: threading.Thread | None = None
        self._on_idle: list[Callable[[], None]] = []  # run when a closed batcher goes idle
        # Seconds the last batches took; the cheapest decides inline batches (a run that
        # waited for the GIL or a busy CPU is slow for reasons that are not the model's).
        self._costs: deque[float] = deque(maxlen=16)
        # counters, under _lock
        self._requests = self._rows = self._batches = 0
        self._rejected = self._timed_out = self._failed = self._isolation = self._inline_runs = 0
        self._sizes = [0] * 66  # model calls by (rows - 1).bit_length(); [-1]: too big
        self._wait_sum = self._wait_max = 0.0
        self._wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)

    # ------------------------------------------------------------------ callers
    def submit(self, req: Request, timeout_ms: float | None = None) -> tuple[Any, float]:
        """Run ``req`` in a batch; returns ``(outcome, wait)``: the batch function's outcome
        for it and the seconds it waited in the queue. Raises the outcome if it is an
        exception, :class:`OverloadedError`, :class:`PredictionTimeoutError`,
        :class:`HandleClosedError`."""
        deadline = self._deadline(timeout_ms) if self._deadlines or timeout_ms is not None else None
        with self._lock:
            if self._closed:
                raise self._closed_error()
            # _idle(), its common case first: every lone call comes this way
            if not self._busy and not self._queue and (not self._last or self._idle()):
                self._busy = True  # run it at once, here
                alone = True
            else:
                self._put(req, deadline, _latch())
                alone = False
        if alone:
            return self._run_alone(req), 0.0
        try:
            left = -1 if deadline is None else max(deadline - self._now(), 0.0)
            if not req.latch.acquire(timeout=left):  # type: ignore[union-attr]
                self._leave(req, _EXPIRED)
        except BaseException:  # e.g. KeyboardInterrupt: leave the queue, drop the result
            self._leave(req, _LEFT)
            raise
        finally:
            req.collected = True
            if req.next is not None:  # first thing once woken: wake the next caller
                req.next.latch.release()  # type: ignore[union-attr]
        return self._outcome(req)

    async def asubmit(self, req: Request, timeout_ms: float | None = None) -> tuple[Any, float]:
        """:meth:`submit` for asyncio tasks: waits on a future, not a thread. A cancelled
        task leaves the queue (its result, if its batch already runs, is dropped)."""
        asyncio = _asyncio or _import_asyncio()
        deadline = self._deadline(timeout_ms) if self._deadlines or timeout_ms is not None else None
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            # _idle(tasks_too=False) and _cheap(), the common cases (busy, or a batch
            # forming) first, without _idle's frame: every call
            lead = (
                not self._busy and not self._queue and self._idle(tasks_too=False)
                and self._cheap()
            )  # fmt: skip
            if lead:  # before _put, which would wake the worker for a first request
                self._busy = True
            self._put(req, deadline, None, future, loop)
        if lead:
            return await self._lead_inline(req)
        try:
            if deadline is None:
                await future
            else:
                left = max(0.0, deadline - self._now())
                await asyncio.wait_for(asyncio.shield(req.future), left)
        except asyncio.TimeoutError:
            self._leave(req, _EXPIRED)
        except BaseException:  # cancelled
            self._leave(req, _LEFT)
            raise
        finally:
            req.collected = True
        return self._outcome(req)

    def _idle(self, tasks_too: bool = True) -> bool:
        """Under _lock: nobody else is using the batcher: nothing queued, no batch running,
        and every caller of the last batch has woken up (``tasks_too=False``: every thread
        caller of it).

        Threads still being woken are about to call again, most of them: one of them
        running a lone call would hold the model for one row while the others queue (with
        1024-wide layers: 0.20 of the offline limit instead of 0.5-0.6), and their requests
        are the continuation of a busy batcher, so their batch is due at once (the model
        runs while the others are woken). Asyncio tasks of the last batch all resume in
        one turn of their loop, which holds the GIL until it has run them: their batch is
        best formed in that turn (an inline leader's, or a window the worker waits for),
        not run a row at a time by a worker that cannot get the GIL back (p50 latency 4 ms
        instead of 2.5 with 1024-wide layers)."""
        if self._busy or self._queue:
            return False
        if not tasks_too:  # the thread callers alone: no scan of a batch of asyncio tasks
            if self._last_threads:  # (asubmit and _put ask at each batch's first call)
                self._last_threads = [r for r in self._last_threads if not r.collected]
            return not self._last_threads
        if self._last:
            self._last = [r for r in self._last if not r.collected]
        return not self._last

    def _cheap(self) -> bool:
        """Whether batches are cheap enough to run inline, on an event loop's thread
        (unknown until a batch has run: the first ones run on the worker thread)."""
        return self._inline > 0 and bool(self._costs) and min(self._costs) <= self._inline

    def _deadline(self, timeout_ms: float | None) -> float | None:
        if timeout_ms is None:
            timeout_ms = self.settings.timeout_ms
            if timeout_ms is None:
                return None
        else:
            check_timeout(timeout_ms)
        return self._now() + timeout_ms / 1000.0

    def _closed_error(self) -> HandleClosedError:
        return HandleClosedError(f"the handle for {self.label} is closed")

    def _put(
        self, req: Request, deadline: float | None, latch: threading.Lock | None,
        future: Any = None, loop: Any = None,
    ) -> None:  # fmt: skip
        """Under _lock: queue a request, waiting for room until ``deadline`` if full."""
        units = req.rows if self._count_rows else 1
        while self._queued + units > self._max_queue and self._queue:  # (full: rare)
            if deadline is None:
                self._rejected += 1
                raise OverloadedError(
                    f"the batching queue of {self.label} is full ({self._queued} "
                    f"{self.settings.count} queued, max_queue={self.settings.max_queue}); "
                    "retry later or pass timeout_ms= to wait for room"
                )
            left = deadline - self._now()
            if left <= 0 or not self._room.wait(left):
                self._timed_out += 1
                raise PredictionTimeoutError(
                    f"no room in the batching queue of {self.label} before the deadline"
                )
            if self._closed:
                raise self._closed_error()
        req.units, req.deadline, req.enqueued = units, deadline, self._now()
        req.latch, req.future, req.loop = latch, future, loop
        req.state, req.outcome, req.wait, req.collected, req.next = _QUEUED, None, 0.0, False, None
        req.behind = self._busy or bool(self._queue) or not self._idle(tasks_too=False)
        self._queue.append(req)
        self._queued += units
        self._requests += 1
        self._rows += req.rows
        if not self._busy and (len(self._queue) == 1 or self._queued >= self._max):
            self._wake_worker()  # a first request starts a window; a full batch ends it

    def _outcome(self, req: Request) -> tuple[Any, float]:
        """The caller's outcome, taken out of the request: a pipeline's item is its own
        outcome (``Pipeline.run_items``), and a request left pointing at itself is a cycle
        that only the garbage collector frees, with its future and arrays (64 asyncio
        tasks, 1024-wide MLP: 39 collections per 12,288 rows, 1.55 µs per row; none)."""
        outcome, req.outcome = req.outcome, None
        if req.state == _DONE:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome, req.wait
        raise PredictionTimeoutError(
            f"the deadline of a call to {self.label} passed before its batch ran"
            + ("; the request was dropped" if req.wait == 0.0 else "; its result is dropped")
        )

    def _leave(self, req: Request, state: int) -> None:
        """The caller stops waiting (deadline, cancellation, interrupt): drop its request
        from the queue, or mark it so that its late result goes nowhere."""
        with self._lock:
            if req.state == _QUEUED:
                self._queue.remove(req)
                self._queued -= req.units
                self._room.notify_all()
            if req.state in (_QUEUED, _RUNNING):
                req.state = state
                if state == _EXPIRED:
                    self._timed_out += 1

    # ------------------------------------------------------------------ running batches
    def _run_alone(self, req: Request) -> Any:
        """An idle batcher: the caller's thread runs its own request (no queue, no wait).
        Every lone call takes this path: it calls the batch function directly."""
        outcome: Any = None
        try:
            outcomes = self._run([req])
            outcome = outcomes[0] if len(outcomes) == 1 else self._miscount(outcomes, 1)
        except Exception as exc:
            outcome = exc
        finally:  # interrupts too: the batcher must not stay busy
            with self._lock:
                self._requests += 1
                self._rows += req.rows
                self._wait_buckets[0] += 1
                if isinstance(outcome, PredictionError):
                    self._failed += 1
                # _free(), inlined, as are the lone cases of count_model_call and
                # Pipeline._model_call: the rewrite's frames had taken the lone caller's
                # latency ratio on/off from 1.15 to 1.20 (small MLP, bench_batching's
                # lone_caller); 1.15 again with these (docs/batching.md)
                self._busy = False
                if self._queue:
                    self._wake_worker()
                    close = False
                else:
                    close = self._closed
            if close:
                self._finish_close()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _lead_inline(self, req: Request) -> tuple[Any, float]:
        """An asyncio task found the batcher idle and batches cheap: it lets the tasks that
        are ready join (one turn of the loop), then runs the batch right here, on the
        loop's thread. No hand-off to the worker and back (a GIL hand-off between threads,
        often between cores): how Ray Serve's ``@serve.batch`` always runs."""
        import asyncio

        try:
            await asyncio.sleep(0)
        except BaseException:  # cancelled while gathering: leave, free the batcher
            self._leave(req, _LEFT)
            with self._lock:
                close = self._free()
            if close:
                self._finish_close()
            raise
        with self._lock:
            reqs = self._take()
        self._run_batch(reqs, loop=req.loop)
        req.collected = True
        return self._outcome(req)

    def _call(self, reqs: list[Request]) -> tuple[Sequence[Any], BaseException | None]:
        """The batch function on ``reqs``: ``(outcomes, interrupt)``. An exception it
        raises, or a wrong number of outcomes, becomes every request's outcome (one error
        for every caller of the batch). An interrupt (``KeyboardInterrupt``, a cancellation)
        is returned too, to be raised again once every caller has its error."""
        start = self._now()
        try:
            outcomes = self._run(reqs)
        except Exception as exc:
            return [exc] * len(reqs), None
        except BaseException as exc:
            error = PredictionError(
                f"a batch of {self.label} was interrupted ({type(exc).__name__})", stage="model"
            )
            error.__cause__ = exc
            return [error] * len(reqs), exc
        self._costs.append(self._now() - start)
        if len(outcomes) != len(reqs):
            return [self._miscount(outcomes, len(reqs))] * len(reqs), None
        return outcomes, None

    def _miscount(self, outcomes: Sequence[Any], calls: int) -> PredictionError:
        return PredictionError(
            f"the batch function of {self.label} returned {len(outcomes)} outcomes for "
            f"{calls} calls",
            stage="output",
        )

    def _run_batch(self, reqs: list[Request], loop: Any = None) -> None:
        """Run taken requests, hand each its outcome, wake them, free the batch function.
        ``loop``: the event loop whose thread runs this batch (an inline batch)."""
        before = self._batches
        outcomes, interrupt = self._call(reqs) if reqs else ((), None)
        done = []
        with self._lock:
            if loop is not None:
                self._inline_runs += self._batches - before
            for r, outcome in zip(reqs, outcomes):
                if r.state == _RUNNING:  # (not if its caller left)
                    r.outcome, r.state = outcome, _DONE
                    if isinstance(outcome, PredictionError):
                        self._failed += 1
                    done.append(r)
            # Thread callers are woken one after another, each by the one before it (a wake
            # chain), not all at once: 64 threads woken together fight over the GIL, the
            # worker thread among them (with 1024-wide layers: 3.4 context switches per row
            # and 0.48 of the offline limit; with the chain: see docs/batching.md).
            threads = [r for r in done if r.latch is not None]
            for r, after in zip(threads, threads[1:]):
                r.next = after
            self._last, self._last_threads = done, threads  # see _idle
            close = self._free()
        if threads:
            threads[0].latch.release()  # type: ignore[union-attr]
        if len(threads) < len(done):  # asyncio callers: one wake-up per event loop
            futures: dict[Any, list[Any]] = {}
            for r in done:
                if r.future is not None:
                    group = futures.get(r.loop)
                    if group is None:  # (not setdefault: a new list per request)
                        group = futures[r.loop] = []
                    group.append(r.future)
            for on, group in futures.items():
                if on is loop:  # this batch runs on that loop's thread (inline)
                    _resolve(*group)
                else:  # a closed loop raises RuntimeError: nobody waits there any more
                    with contextlib.suppress(RuntimeError):
                        on.call_soon_threadsafe(_resolve, *group)
        if close:
            self._finish_close()
        if interrupt is not None:
            raise interrupt

    def _free(self) -> bool:
        """Under _lock: the batch function returned. Returns whether the batcher is now
        closed and idle (then call :meth:`_finish_close`, outside the lock)."""
        self._busy = False
        if self._queue:
            self._wake_worker()
            return False
        return self._closed

    def _wake_worker(self) -> None:
        """Under _lock: make sure the worker thread exists, and wake it."""
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._serve, name="embedml-batcher", daemon=True
            )  # a daemon: a model that never returns must not keep the host from exiting
            self._worker.start()
        self._work.notify()

    def _serve(self) -> None:
        """The worker thread: takes each batch when it is due, until closed and idle."""
        while True:
            with self._lock:
                reqs = self._next_batch()
                if reqs is None:
                    return
            try:
                self._run_batch(reqs)
            except BaseException:  # its callers got an error; the worker goes on
                _log.exception("a batch of %s raised", self.label)

    def _next_batch(self) -> list[Request] | None:
        """Under _lock: wait until a batch is due and the batch function free, then take
        it (``None``: closed, nothing queued, nothing running: the worker ends)."""
        while True:
            if self._queue and not self._busy:
                left = self._window_left()
                if left <= 0:
                    self._busy = True
                    return self._take()
                # woken early by a full batch or closing; ``left`` on the batcher's clock
                wait_for(self._clock, self._work, self._window_ended, left)
            elif self._closed and not self._busy:
                return None
            else:
                self._work.wait()

    def _window_ended(self) -> bool:
        """Under _lock: what ends a window before its time (see _window_left)."""
        return self._queued >= self._max or self._closed or self._busy or not self._queue

    def _window_left(self) -> float:
        """Under _lock, with requests queued: seconds until the queued batch is due."""
        first = self._queue[0]
        if self._queued >= self._max or self._closed or first.behind:
            return 0.0  # full, draining, or it already waited for a batch to run
        return first.enqueued + self._max_wait - self._now()

    def _take(self) -> list[Request]:
        """Under _lock: pop the next batch (up to ``max_batch_size``), dropping requests
        whose deadline passed or whose task was cancelled."""
        now = self._now()
        taken: list[Request] = []
        size = popped = 0
        queue, cap = self._queue, self._max
        # the wait statistics in locals, stored once per batch: a batch of 64 asyncio rows
        # ran 90 bytecodes a row here with the attributes updated row by row, 82 with these
        wait_sum, wait_max, buckets = 0.0, self._wait_max, self._wait_buckets
        while queue:
            req = queue[0]
            units = req.units
            if taken and size + units > cap:
                break
            queue.popleft()
            popped += units
            if req.deadline is not None and now >= req.deadline:
                req.state = _EXPIRED
                self._timed_out += 1
                req.wake()
                continue
            if req.future is not None and req.future.cancelled():
                req.state = _LEFT
                continue
            req.state = _RUNNING
            req.wait = wait = now - req.enqueued
            wait_sum += wait
            if wait > wait_max:
                wait_max = wait
            buckets[bisect_left(WAIT_BUCKETS, wait)] += 1
            taken.append(req)
            size += units
        self._queued -= popped
        self._wait_sum += wait_sum
        self._wait_max = wait_max
        self._room.notify_all()
        return taken

    def count_model_call(self, rows: int, isolation: bool = False) -> None:
        """Count one model call of ``rows`` rows in the stats; the batch function calls
        this for each model call it makes (``isolation``: a re-run to find a bad row).
        Without the lock: the batch function runs in one thread at a time."""
        # by the bit length of rows - 1 (a power of two >= rows), a list slot rather than a
        # dict entry: every lone call counts here
        k = (rows - 1).bit_length()
        if self._count_rows and rows > self._max:
            k = -1  # the last slot: larger than a batch, math.inf in the stats
        self._batches += 1
        self._sizes[k] += 1
        if isolation:
            self._isolation += 1

    # ------------------------------------------------------------------ lifecycle
    def stats(self) -> BatchingStats:
        """A snapshot of the counters."""
        with self._lock:
            return BatchingStats(
                requests=self._requests,
                rows=self._rows,
                batches=self._batches,
                batch_sizes={
                    (math.inf if k == len(self._sizes) - 1 else 2**k): n
                    for k, n in enumerate(self._sizes)
                    if n
                },
                queue_wait_seconds_sum=self._wait_sum,
                queue_wait_seconds_max=self._wait_max,
                queue_wait_buckets=dict(zip((*WAIT_BUCKETS, math.inf), self._wait_buckets)),
                queued=self._queued,
                rejected=self._rejected,
                timed_out=self._timed_out,
                failed=self._failed,
                isolation_runs=self._isolation,
                inline_batches=self._inline_runs,
            )

    def close(self, on_idle: Callable[[], None] | None = None) -> bool:
        """Refuse new calls (they raise :class:`HandleClosedError`); queued calls still
        run. Never waits: returns whether the batcher is idle (its worker thread, if any,
        is then told to end). If not, whoever finishes the last batch calls ``on_idle``
        (from its own thread, once the batch function returned). Idempotent."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
            self._work.notify()
            if self._busy or self._queue:
                if on_idle is not None:
                    self._on_idle.append(on_idle)
                return False
        return True

    def _finish_close(self) -> None:
        """A closed batcher went idle: run the clean-up ``close`` left for this moment (the
        worker, woken by ``_free``, ends by itself)."""
        with self._lock:
            callbacks, self._on_idle = self._on_idle, []
            self._work.notify()
        for fn in callbacks:
            try:
                fn()
            except Exception:  # pragma: no cover - clean-up must not break the caller
                _log.exception("closing %s after its last batch failed", self.label)

    def join(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) for the worker thread of a closed batcher to
        end; returns whether no worker thread is left running."""
        worker = self._worker
        if worker is None or worker is threading.current_thread():
            return True
        worker.join(timeout)
        return not worker.is_alive()

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's worker and waiting callers do not exist here;
        start again from an empty, idle state (counters too: each process counts its own
        calls). A batcher closed in the parent stays closed."""
        self._reset()


def _after_fork_in_child() -> None:
    for batcher in list(_LIVE):
        batcher._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)

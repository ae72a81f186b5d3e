"""Dynamic request batching: concurrent single calls joined into one model call.

A handle loaded with ``batching=Batching(...)`` gets a :class:`Batcher` on its pipeline.
Each call validates its own input on its own thread, then joins a queue. There is no
background thread for thread callers: the caller that finds no batch running becomes the
*leader* ("group commit"): it takes what is queued, runs the model on the joined batch and
hands every other caller (a *follower*) its result through the caller's own one-shot latch
(a ``threading.Lock``). Followers are woken one after another (a wake chain), not all at
once; each one cuts its rows out of the batch's outputs on its own thread.

Waiting policy (why a lone caller pays nothing):

* an idle batcher runs a call at once when the same thread ran the last solo call, or when
  nothing ran in the last ``max_wait_ms``: a lone caller, however fast it calls, never waits;
* a call from *another* thread within ``max_wait_ms`` of the last solo run shows contention:
  it leads, but first naps (0.2 ms at a time, up to ``max_wait_ms``) while the queue grows,
  unless a solo model call is cheaper than handing requests between threads (50 us): such a
  model is fastest called by each thread in turn;
* under load the model run itself is the wait: what queued during a run is the next batch,
  and a leader waits (up to ``max_wait_ms``) for the callers of its last batch, who are still
  being woken and most of whom call again at once, so batches stay large.

A leader keeps leading while requests are queued, for a few batches after its own result is
ready, then hands the lead to the oldest queued thread caller (its latch says "lead"), so no
caller serves others for long. Asyncio callers have no thread to lend: when one of them finds
no batch running and the model is cheap (batches under ``inline_ms``), that task leads on
its own event loop (one turn of the loop for the ready tasks to join, then the batch runs
right there: no thread hand-off at all); otherwise a single worker thread (created on first
use, a daemon) leads, and results reach each event loop with one ``call_soon_threadsafe``
per batch.

Closing never waits for the model: ``close`` refuses new calls and returns whether the
batcher is idle; if a batch is still running (say, on the worker thread for callers who
stopped waiting, in a model that hangs), the leader that steps down last, once the model
returns, runs the pipeline's clean-up and stops the worker. After ``os.fork()`` the child
gets a fresh batcher state (no queue, no leader, no worker: a new one starts on first use),
since the parent's threads do not exist there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
import weakref
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from threading import get_ident
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import (
    ConfigurationError,
    HandleClosedError,
    OverloadedError,
    PredictionError,
    PredictionTimeoutError,
    SchemaError,
)
from ..tensors import concat, take

if TYPE_CHECKING:
    from .handle import Pipeline

__all__ = ["Batcher", "Batching", "BatchingStats"]

_log = logging.getLogger("embedml.serving.batching")

# Batches a leader may run after its own result is ready before handing the lead on: more
# keeps the model busy (a hand-off wakes a thread, which must then win the GIL), fewer bounds
# how long one caller serves others (at most this many batch runs).
_EXTRA_BATCHES = 4
# Below this cost of a solo model call, contention does not make callers wait for each other:
# handing a request from thread to thread costs about as much (a context switch and a GIL
# hand-off, ~10-20 us here), so gathering would only slow such a model down.
_WORTH_GATHERING = 50e-6
# How long a fresh leader naps between looks at a growing queue.
_NAP_SECONDS = 0.0002
# Upper bounds of the queue-wait histogram, in seconds (the last bucket is +inf).
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0)

# Marks the last caller of a wake chain (see Batcher._finish).
_TAIL: Any = object()

_QUEUED, _RUNNING, _DONE, _FAILED, _EXPIRED, _ABANDONED = range(6)


@dataclass(frozen=True)
class Batching:
    """Settings of dynamic batching, validated when built (``ConfigurationError``).

    * ``max_batch_size``: most rows (or calls, see ``count``) joined into one model call.
    * ``max_wait_ms``: longest a fresh leader waits for a batch to fill while others are
      arriving; a lone caller never waits. ``0`` never waits.
    * ``max_queue``: most rows (or calls) waiting; beyond it a call raises
      :class:`~embedml.OverloadedError` at once, or waits for room until its deadline.
    * ``timeout_ms``: default deadline of each call (``None``: none); a call's own
      ``timeout_ms=`` overrides it. Past it the call raises
      :class:`~embedml.PredictionTimeoutError` and its request never reaches the model.
    * ``count``: ``"rows"`` (a ``predict_batch`` of 10 rows counts 10) or ``"calls"``.
    * ``inline_ms``: for asyncio callers, while the model's batch calls take at most this
      long (measured), a batch runs on the event loop's own thread, in the task that leads
      it, with no hand-off to the worker thread; slower models run on the worker thread, so
      the loop is never blocked much longer than this. ``0``: always the worker thread.
    """

    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    timeout_ms: float | None = None
    count: Literal["rows", "calls"] = "rows"
    inline_ms: float = 0.5

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigurationError(
                    f"Batching.{name} must be an integer >= 1, got {value!r}"
                )
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


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_timeout(value: Any, what: str = "timeout_ms") -> None:
    """Raise :class:`ConfigurationError` unless ``value`` is ``None`` or a number > 0."""
    if value is not None and (not _is_number(value) or value <= 0):
        raise ConfigurationError(f"{what} must be None or a number of milliseconds > 0, got {value!r}")


@dataclass(frozen=True)
class BatchingStats:
    """Counters of one handle's batcher since it was loaded (see ``handle.batching_stats()``).

    ``requests`` calls and ``rows`` rows entered the queue; ``batches`` model calls ran them.
    ``batch_sizes`` is a histogram of rows per batch: a batch of ``n`` rows counts under the
    smallest power of two >= ``n`` (not cumulative); with ``count="rows"``, ``math.inf``
    holds batches larger than ``max_batch_size`` (a big ``predict_batch`` that ran alone). ``queue_wait_*`` measure the time
    from joining the queue to being taken into a batch; ``queue_wait_buckets`` maps upper
    bounds in seconds (see ``WAIT_BUCKETS``) to counts. ``rejected`` calls got
    ``OverloadedError``, ``timed_out`` a ``PredictionTimeoutError``, ``failed`` a
    ``PredictionError``; ``isolation_runs`` counts re-runs made to isolate a failing record;
    ``inline_batches`` counts model calls run on an event loop's thread (``inline_ms``).
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


class _Request:
    """One call in the queue; only its own caller ever reads its result."""

    __slots__ = (
        "batch", "n", "key", "deadline", "latch", "future", "loop", "state", "lead",
        "out", "off", "size", "wait", "error", "enqueued", "next", "obs", "unchecked",
    )  # fmt: skip

    def __init__(self, batch: Any, n: int, deadline: float | None) -> None:
        self.batch = batch
        self.n = n
        self.key = (batch.shape[1:], batch.dtype) if type(batch) is np.ndarray else _signature(batch)
        self.deadline = deadline
        self.latch: Any = None
        self.future: Any = None
        self.loop: Any = None
        self.state = _QUEUED
        self.lead = False
        self.out: Any = None
        self.off = 0
        self.size = n  # rows of the model call that served it (set by _finish)
        self.wait = 0.0  # seconds from joining the queue to being taken into a batch
        self.error: BaseException | None = None
        self.enqueued = 0.0
        self.next: _Request | None = None  # the caller to wake after this one (wake chain)
        self.obs: Any = None  # the caller's hooks.Observer: row sinks see its rows per batch
        self.unchecked = False  # its row still needs the NaN/inf check (Pipeline.quick_one)


def _signature(batch: Any) -> Any:
    """What must match for batches to be joined: trailing shapes and dtypes (``None``: never)."""
    if isinstance(batch, np.ndarray):
        return (batch.shape[1:], batch.dtype)
    if isinstance(batch, dict):
        try:
            return tuple((k, v.shape[1:], v.dtype) for k, v in batch.items())
        except AttributeError:
            return None
    if isinstance(batch, tuple):
        try:
            return tuple((v.shape[1:], v.dtype) for v in batch)
        except AttributeError:
            return None
    if hasattr(batch, "iloc") and hasattr(batch, "dtypes"):  # records by feature name
        return ("frame", tuple(zip(map(str, batch.columns), map(str, batch.dtypes))))
    return None


class _Worker:
    """The batcher's one worker thread: runs the jobs it is given, in order, until stopped.

    A daemon thread (unlike a ``ThreadPoolExecutor``'s, which interpreter exit joins): a
    model that never returns must not keep the host from exiting."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._jobs.put((fn, args))

    def stop(self) -> None:
        """Let the thread end after the jobs it already has."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args = job
            try:
                fn(*args)
            except BaseException:  # a model's SystemExit...: its callers already got an error
                _log.exception("a batch on the worker thread raised")


# Live batchers, for the fork handler (see _after_fork_in_child).
_LIVE: weakref.WeakSet[Batcher] = weakref.WeakSet()


class Batcher:
    """Joins concurrent calls on one :class:`~embedml.serving.handle.Pipeline` into batched model calls.

    Thread-safe; serves threads and asyncio tasks together. ``close()`` drains: queued calls
    finish, later ones raise :class:`~embedml.HandleClosedError`; it never waits for them.
    """

    def __init__(self, pipeline: Pipeline, settings: Batching) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self._rows = settings.count == "rows"
        self._max = settings.max_batch_size
        self._size_cap = self._max if self._rows else math.inf  # rows; see BatchingStats
        self._max_queue = settings.max_queue
        self._max_wait = settings.max_wait_ms / 1000.0
        self._default_timeout = settings.timeout_ms
        self._inline = settings.inline_ms / 1000.0
        self._closed = False
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """The run-time state of a new batcher (also what a forked child starts from)."""
        self._mutex = threading.Lock()
        self._queue: deque[_Request] = deque()
        self._queued = 0  # in the unit of ``count``
        self._running = False  # a leader exists (running, promoted, or submitted to the worker)
        self._on_idle: list[Callable[[], None]] = []  # run when a closed batcher goes idle
        self._room: list[threading.Lock] = []  # latches of calls waiting for queue room
        self._worker: _Worker | None = None
        self._stopped: _Worker | None = None  # a worker told to stop (joined by join())
        self._own: _Request | None = None  # the current leader's own request
        # The last caller that ran alone, and when it finished: a different thread coming
        # soon after shows contention (see submit).
        self._solo_thread = 0
        self._solo_end = -math.inf
        self._solo_cost = -1.0  # seconds a solo model call takes (see _run_alone), -1: unknown
        self._batch_cost = -1.0  # seconds a batched model call takes (see _run_group)
        self._on_loop: Any = None  # the event loop whose thread runs a batch now (inline)
        self._chain = False  # callers of the last batch are still being woken in turn
        self._leader_wait: threading.Lock | None = None  # a leader waiting for that chain
        # counters (updated under _mutex, or by the single leader)
        self._requests = self._rows_in = self._batches = 0
        self._rejected = self._timed_out = self._failed = self._isolation = self._inline_runs = 0
        self._sizes: dict[float, int] = {}
        self._wait_sum = self._wait_max = 0.0
        self._wait_buckets = [0] * (len(WAIT_BUCKETS) + 1)

    # ------------------------------------------------------------------ callers
    def _deadline(self, timeout_ms: float | None) -> float | None:
        if timeout_ms is None:
            timeout_ms = self._default_timeout
        else:
            check_timeout(timeout_ms)
        return None if timeout_ms is None else time.monotonic() + timeout_ms / 1000.0

    def _enqueue(self, req: _Request) -> bool:
        """Queue ``req``; returns whether the caller must lead. Caller holds no lock."""
        size = req.n if self._rows else 1
        while True:
            with self._mutex:
                if self._closed:
                    raise HandleClosedError(f"the handle for {self.pipeline.label} is closed")
                if self._queued + size <= self._max_queue or not self._queue:
                    self._append(req, size)
                    if self._running:
                        return False
                    self._running = True
                    return True
                if req.deadline is None:
                    self._rejected += 1
                    raise OverloadedError(
                        f"the batching queue of {self.pipeline.label} is full "
                        f"({self._queued} {self.settings.count} queued, max_queue="
                        f"{self._max_queue}); retry later or pass timeout_ms= to wait for room"
                    )
                room = threading.Lock()
                room.acquire()
                self._room.append(room)
            left = req.deadline - time.monotonic()
            if left <= 0 or not room.acquire(timeout=left):
                with self._mutex:
                    if room in self._room:
                        self._room.remove(room)
                    self._timed_out += 1
                raise PredictionTimeoutError(
                    f"no room in the batching queue of {self.pipeline.label} before the deadline"
                )

    def _append(self, req: _Request, size: int) -> None:
        """Under _mutex: put ``req`` in the queue (``size`` in the unit of ``count``)."""
        req.enqueued = time.monotonic()
        self._queue.append(req)
        self._queued += size
        self._requests += 1
        self._rows_in += req.n
        if self._leader_wait is not None and self._queued >= self._max:
            self._leader_wait.release()  # a full batch is waiting: no need to wait on
            self._leader_wait = None

    @staticmethod
    def _new_request(batch: Any, n: int, deadline: float | None) -> _Request:
        req = _Request(batch, n, deadline)
        req.latch = threading.Lock()
        req.latch.acquire()
        return req

    def submit(
        self, batch: Any, n: int, timeout_ms: float | None = None, obs: Any = None
    ) -> tuple[Any, int, int, float]:
        """Run a validated batch of ``n`` rows with others; returns ``(outputs, offset, size,
        wait)``: the joined batch's raw outputs, where this call's rows start, the rows of that
        model call and the seconds this call waited in the queue (0 when it ran at once). Raises
        :class:`PredictionError`, :class:`OverloadedError`, :class:`PredictionTimeoutError`,
        :class:`HandleClosedError`. ``obs``: the caller's ``hooks.Observer``, whose row
        sinks (a ``DriftMonitor``) get the rows of each model call that serves the call."""
        deadline = (
            None if timeout_ms is None and self._default_timeout is None
            else self._deadline(timeout_ms)
        )  # fmt: skip
        req = None
        size = n if self._rows else 1
        with self._mutex:
            # The common cases in one critical section; a closed or full queue goes slow.
            idle = not self._running and not self._closed
            if idle and (
                self._max_wait == 0
                or get_ident() == self._solo_thread
                or time.monotonic() - self._solo_end > self._max_wait
                or self._solo_cost < _WORTH_GATHERING
                or size > self._max_queue
            ):  # nobody else is calling (or waiting for them would not pay): run at once
                self._running = True
            elif idle or (not self._closed and self._queued + size <= self._max_queue):
                # (idle here means: another thread ran alone a moment ago, so callers are
                # contending; this one leads, but first lets the others join, see _lead)
                req = self._new_request(batch, n, deadline)
                req.obs = obs
                self._append(req, size)
                self._running = True
        if idle:
            if req is None:
                return self._run_alone(batch, n, obs)
            self._lead(req, fresh=True)
        elif req is None:  # closed, or the queue is full
            req = self._new_request(batch, n, deadline)
            req.obs = obs
            if self._enqueue(req):
                self._lead(req)
        latch = req.latch
        while req.state <= _RUNNING:
            try:
                if req.deadline is None:
                    acquired = latch.acquire()
                else:
                    acquired = latch.acquire(timeout=max(0.0, req.deadline - time.monotonic()))
            except BaseException:  # e.g. KeyboardInterrupt: leave, but never strand the lead
                self._leave(req, _ABANDONED)
                if req.next is not None:
                    self._pass_chain(req.next)
                raise
            if not acquired:
                self._leave(req, _EXPIRED)
            elif req.lead and req.state <= _RUNNING:
                req.lead = False
                self._lead(req)
        nxt = req.next
        if nxt is not None:  # pass the wake chain on before anything else
            if nxt is _TAIL:
                self._pass_chain(nxt)
            else:
                nxt.latch.release()
        if req.state == _DONE:
            return req.out, req.off, req.size, req.wait
        return self._result(req)

    async def asubmit(
        self, batch: Any, n: int, timeout_ms: float | None = None, obs: Any = None,
        unchecked: bool = False,
    ) -> tuple[Any, int, int, float]:
        """:meth:`submit` for asyncio tasks: waits on a future (a cheap model's batch may run
        on the loop, see ``Batching.inline_ms``). ``unchecked``: ``batch`` came from
        ``Pipeline.quick_one``; its NaN/inf check is made with its batch's, and a bad row
        raises the :class:`SchemaError` validation gives, for this call alone."""
        asyncio = _asyncio()

        deadline = (
            None if timeout_ms is None and self._default_timeout is None
            else self._deadline(timeout_ms)
        )  # fmt: skip
        req = _Request(batch, n, deadline)  # no latch: a future instead
        req.obs = obs
        req.unchecked = unchecked
        loop = req.loop = asyncio.get_running_loop()
        future = req.future = loop.create_future()
        size = n if self._rows else 1
        lead = None
        with self._mutex:  # the common case of _enqueue (open, room in the queue) inlined
            if not self._closed and self._queued + size <= self._max_queue:
                self._append(req, size)
                lead = not self._running
                self._running = True
        if lead is None:
            lead = self._enqueue(req)
        if lead:
            if 0.0 <= self._batch_cost <= self._inline:
                return await self._inline_lead(req, loop)
            self._pool_lead(True)
        try:
            if deadline is None:
                await future
            else:
                left = max(0.0, req.deadline - time.monotonic())
                await asyncio.wait_for(asyncio.shield(req.future), left)
        except asyncio.TimeoutError:
            self._leave(req, _EXPIRED)
        except asyncio.CancelledError:
            self._leave(req, _ABANDONED)
            raise
        return self._result(req)

    async def _inline_lead(self, req: _Request, loop: Any) -> tuple[Any, int, int, float]:
        """Lead from an asyncio task: let the tasks that are ready join (one turn of the
        loop), then run the batch right here, on the loop's thread, and wake the others
        directly; a cheap model is faster called here than handed to a thread and back
        (each hand-off moves the GIL between threads, often between cores)."""
        asyncio = _asyncio()

        try:
            await asyncio.sleep(0)
        except BaseException:  # cancelled while gathering: leave, and never strand the lead
            self._leave(req, _ABANDONED)
            self._pass_lead()
            raise
        self._own = None
        self._on_loop = loop
        try:
            for _ in range(1 + _EXTRA_BATCHES):
                with self._mutex:
                    reqs = self._take()
                    if not reqs:
                        break
                self._run(reqs)
                with self._mutex:  # more tasks of this loop queued (more than a batch)?
                    head = self._queue[0] if self._queue else None
                if head is None or head.loop is not loop:
                    break
        except BaseException:
            self._on_loop = None
            self._pass_lead()
            raise
        self._on_loop = None
        self._pass_lead()  # anyone still queued (threads, other loops): hand on
        if req.state <= _RUNNING:  # not in those batches (cannot happen to a head): wait
            try:
                await req.future
            except asyncio.CancelledError:
                self._leave(req, _ABANDONED)
                raise
        return self._result(req)

    def _run_alone(self, batch: Any, n: int, obs: Any = None) -> tuple[Any, int, int, float]:
        """The fast path of an idle batcher: the caller's own batch runs at once; whoever
        queued meanwhile is served next by this caller (for a few batches at most)."""
        start = time.perf_counter()
        try:
            out = self.pipeline.run(batch, n)
            if obs is not None and obs.row_sinks:
                obs.rows(self.pipeline.source, batch, out, n, copy=True)
        except BaseException as exc:
            with self._mutex:
                self._solo_counts(n)
                if isinstance(exc, PredictionError):
                    self._failed += 1
            self._lead(None)
            raise
        cost = time.perf_counter() - start
        self._solo_cost = _cheap_end(self._solo_cost, cost)
        with self._mutex:
            # _solo_counts and _step_down inlined: this is every lone caller's path
            self._requests += 1
            self._rows_in += n
            self._wait_buckets[0] += 1
            self._batches += 1
            bound: float = 1 if n == 1 else self._bound(n)
            self._sizes[bound] = self._sizes.get(bound, 0) + 1
            idle = not self._queue
            if idle:
                self._solo_thread = get_ident()
                self._solo_end = time.monotonic()
                self._running = False
        if not idle:
            self._lead(None)
        elif self._closed:
            self._finish_close()
        return out, 0, n, 0.0

    def _solo_counts(self, n: int) -> None:
        # under _mutex: a call that ran alone is one request and one batch, without waiting
        self._requests += 1
        self._rows_in += n
        self._wait_buckets[0] += 1
        self._count_batch(n)

    def _result(self, req: _Request) -> tuple[Any, int, int, float]:
        if req.state == _DONE:
            return req.out, req.off, req.size, req.wait
        if req.state == _FAILED:
            raise req.error  # type: ignore[misc]
        raise PredictionTimeoutError(
            f"the deadline of a call to {self.pipeline.label} passed before its batch ran; "
            "the request was dropped"
        )

    def _leave(self, req: _Request, state: int) -> None:
        """The caller stops waiting (deadline passed, cancelled, interrupted): drop its
        request from the queue, or mark it so that its late result goes nowhere."""
        with self._mutex:
            if req.state == _QUEUED:
                self._drop_queued(req)
            if req.state <= _RUNNING:
                req.state = state
                if state == _EXPIRED:
                    self._timed_out += 1
            promoted, req.lead = req.lead, False
        if promoted:
            self._pass_lead()

    def _drop_queued(self, req: _Request) -> None:
        try:
            self._queue.remove(req)
        except ValueError:
            return
        self._queued -= req.n if self._rows else 1
        self._wake_room()

    def _wake_room(self) -> None:
        while self._room:
            self._room.pop().release()

    # ------------------------------------------------------------------ leading
    def _pool_lead(self, fresh: bool = False) -> None:
        """Start a leader on the batcher's worker thread (for asyncio callers)."""
        with self._mutex:
            if self._worker is None:
                self._worker = _Worker("embedml-batcher")
            worker = self._worker
        worker.submit(self._lead, None, True, fresh)

    def _pass_lead(self) -> None:
        """Hand the lead to the oldest queued caller, or step down if nobody waits."""
        with self._mutex:
            head = self._queue[0] if self._queue else None
            if head is None:
                self._step_down()
            elif head.future is None:
                head.lead = True
                head.latch.release()
                return
        if head is not None:
            self._pool_lead()
        elif self._closed:
            self._finish_close()

    def _step_down(self, solo: int = 0) -> None:
        # Under _mutex, with an empty queue. ``solo``: the thread that ran alone, if one did
        # (a later call from another thread soon after shows contention, see submit). A
        # closed batcher's leader then calls _finish_close, outside the mutex.
        self._solo_thread = solo
        self._solo_end = time.monotonic()
        self._running = False

    def _finish_close(self) -> None:
        """A closed batcher went idle: run the clean-up ``close`` left for this moment and
        let the worker thread end (on the worker itself, it ends after this job)."""
        with self._mutex:
            if self._running:
                return
            callbacks, self._on_idle = self._on_idle, []
            worker, self._worker = self._worker, None
            if worker is not None:
                self._stopped = worker
        if worker is not None:
            worker.stop()
        for fn in callbacks:
            try:
                fn()
            except Exception:  # pragma: no cover - clean-up must not break the leader
                _log.exception("closing %s after its last batch failed", self.pipeline.label)

    def _lead(self, own: _Request | None, pool: bool = False, fresh: bool = False) -> None:
        """Run batches until the queue is empty or the lead is handed on (see module doc).

        ``own``: the leader's own queued request. ``pool``: the worker thread leads (it
        serves until the queue is empty, but yields to a queued thread caller now and then).
        ``fresh``: the batcher was idle; let callers who are arriving join (``_gather``).
        """
        extra = 0
        self._own = own
        try:
            while True:
                with self._mutex:
                    if fresh and self._max_wait > 0 and (len(self._queue) > 1 or own is not None):
                        self._gather()
                    elif self._chain and self._queued < self._max and self._max_wait > 0:
                        self._await_chain()
                    fresh = False
                    reqs = self._take()
                    if not reqs:  # _take empties the queue before it returns nothing
                        self._step_down()
                if not reqs:
                    if self._closed:
                        self._finish_close()
                    return
                self._run(reqs)
                if own is not None:
                    if own.state <= _RUNNING:
                        continue
                    if own.state != _DONE:  # expired or failed: hand on at once
                        break
                extra += 1
                if extra > _EXTRA_BATCHES:
                    if not pool:
                        break
                    with self._mutex:
                        if self._queue and self._queue[0].future is None:
                            break
        except BaseException:
            self._pass_lead()
            raise
        self._pass_lead()

    def _pass_chain(self, nxt: _Request) -> None:
        if nxt is not _TAIL:
            nxt.latch.release()
            return
        with self._mutex:  # the whole batch has its results: the leader may go on
            self._chain = False
            if self._leader_wait is not None:
                self._leader_wait.release()
                self._leader_wait = None

    def _await_chain(self) -> None:
        """Under _mutex: callers of the last batch are still being woken, one by one, and
        most will call again at once; wait (up to max_wait) until the last of them has been
        woken or a full batch is queued, so the next batch is large. This costs no
        throughput: while the leader waits, those callers use the GIL."""
        latch = self._leader_wait = threading.Lock()
        latch.acquire()
        self._mutex.release()
        try:
            woken = latch.acquire(timeout=self._max_wait)
        finally:
            self._mutex.acquire()
        if not woken:
            self._leader_wait = None
            self._chain = False

    def _gather(self) -> None:
        """Under _mutex: while others keep arriving, let them join (up to max_wait)."""
        end = time.monotonic() + self._max_wait
        while self._queued < self._max:
            seen = self._queued
            self._mutex.release()
            try:
                time.sleep(min(_NAP_SECONDS, max(0.0, end - time.monotonic())))
            finally:
                self._mutex.acquire()
            if self._queued == seen or time.monotonic() >= end:
                return

    def _take(self) -> list[_Request]:
        """Under _mutex: pop the next batch, dropping expired requests."""
        queue, rows, cap = self._queue, self._rows, self._max
        now = time.monotonic()
        taken: list[_Request] = []
        size = 0
        while queue:
            req = queue[0]
            step = req.n if rows else 1
            if taken and size + step > cap:
                break
            queue.popleft()
            self._queued -= step
            if req.deadline is not None and now >= req.deadline:
                req.state = _EXPIRED
                self._timed_out += 1
                self._wake([req])
                continue
            req.state = _RUNNING
            taken.append(req)
            size += step
            wait = req.wait = now - req.enqueued
            self._wait_sum += wait
            if wait > self._wait_max:
                self._wait_max = wait
            self._wait_buckets[bisect_left(WAIT_BUCKETS, wait)] += 1
        if self._room:
            self._wake_room()
        return taken

    def _run(self, reqs: list[_Request]) -> None:
        """Run taken requests: joined where their shapes allow, one group per shape."""
        key = reqs[0].key
        if key is not None and all(r.key == key for r in reqs):
            self._run_group(reqs)
            return
        groups: dict[Any, list[_Request]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(r.key if r.key is not None else ("one", i), []).append(r)
        for group in groups.values():
            self._run_group(group)

    def _run_group(self, reqs: list[_Request]) -> None:
        n = 0
        screen = False
        for r in reqs:
            n += r.n
            screen = screen or r.unchecked
        try:
            batch = reqs[0].batch if len(reqs) == 1 else concat([r.batch for r in reqs])
        except (ValueError, TypeError):
            for r in reqs:
                self._run_group([r])
            return
        if screen and not self.pipeline.rows_ok(batch):
            self._screen(reqs)
            return
        pipe = self.pipeline
        start = time.perf_counter()
        try:
            out = pipe.run(batch, n)
        except PredictionError as exc:
            self._failed_batch(reqs, exc)
            return
        except BaseException as exc:
            err = PredictionError(
                f"batch of {pipe.label} failed: {type(exc).__name__}: {exc}", stage="model"
            )
            err.__cause__ = exc
            self._fail(reqs, err)
            if not isinstance(exc, Exception):
                raise
            return
        cost = time.perf_counter() - start
        self._batch_cost = _cheap_end(self._batch_cost, cost)
        self._count_batch(n)
        if self._on_loop is not None:
            self._inline_runs += 1
        self._observe_rows(reqs, batch, out)
        self._finish(reqs, out, None, n)

    def _observe_rows(self, reqs: list[_Request], batch: Any, out: Any) -> None:
        """Hand the rows of a model call to the callers' row sinks: once per batch, not once
        per call (the common case: every call comes from the same handle)."""
        obs = reqs[0].obs
        source = self.pipeline.source
        if all(r.obs is obs for r in reqs):
            if obs is not None and obs.row_sinks:
                # a joined batch is the batcher's own array; a lone request's is the caller's
                obs.rows(source, batch, out, sum(r.n for r in reqs), copy=len(reqs) == 1)
            return
        off = 0
        for r in reqs:  # handles sharing one cached pipeline: each sees its own calls' rows
            o = r.obs
            if o is not None and o.row_sinks:
                part = slice(off, off + r.n)
                o.rows(source, take(batch, part), take(out, part), r.n, copy=True)
            off += r.n

    def _screen(self, reqs: list[_Request]) -> None:
        """A batch with unchecked rows failed the batch-wide NaN/inf check: each such call
        gets validation's own error, alone; the others run as a batch."""
        good = []
        for r in reqs:
            if r.unchecked:
                r.unchecked = False
                try:
                    self.pipeline.prepare_one(r.batch[0])
                except SchemaError as exc:
                    with self._mutex:
                        if r.state == _RUNNING:
                            r.error, r.state = exc, _FAILED
                    self._wake([r])
                    continue
            good.append(r)
        if good:
            self._run_group(good)

    def _failed_batch(self, reqs: list[_Request], exc: PredictionError) -> None:
        self._count_batch(sum(r.n for r in reqs))
        if exc.stage == "output" or len(reqs) == 1:
            if exc.stage == "output" and len(reqs) > 1:
                err = PredictionError(
                    f"{exc}; the batch joined {len(reqs)} calls, so all of them fail (no call "
                    "is given rows that may belong to another)",
                    stage="output",
                )
                err.__cause__ = exc.__cause__ or exc
                exc = err
            self._fail(reqs, exc)
            return
        # Isolate the offending record(s): run each half again; a call fails only if the
        # part it is in fails on its own.
        half = len(reqs) // 2
        for part in (reqs[:half], reqs[half:]):
            self._isolation += 1
            self._run_group(part)

    def _fail(self, reqs: list[_Request], exc: BaseException) -> None:
        self._finish(reqs, None, exc)

    def _finish(
        self, reqs: list[_Request], out: Any, error: BaseException | None, rows: int = 0
    ) -> None:
        """Hand each request its result (or ``error``) and wake its caller; ``rows``: the rows
        of the model call that produced ``out``.

        Thread callers are woken one after another (a wake chain: each caller wakes the next
        as it picks up its result), not all at once: a herd of threads woken together only
        fights over the GIL and multiplies context switches. Done under ``_mutex`` so that a
        caller leaving at its deadline either gets its result or is left out of the chain.
        """
        first = last = None
        loops: dict[Any, list[_Request]] | None = None
        own = self._own
        off = 0
        with self._mutex:
            for r in reqs:
                if r.state == _RUNNING:
                    if error is None:
                        r.out = out
                        r.off = off
                        r.size = rows
                        r.state = _DONE
                    else:
                        r.error = error
                        r.state = _FAILED
                        self._failed += 1
                    if r.future is not None:
                        if loops is None:
                            loops = {}
                        loops.setdefault(r.loop, []).append(r)
                    elif r is own:
                        r.latch.release()
                    elif last is None:
                        first = last = r
                    else:
                        last.next = r
                        last = r
                off += r.n
            if last is not None:
                last.next = _TAIL
                self._chain = True
        if first is not None:
            first.latch.release()
        if loops:
            for loop, group in loops.items():
                if loop is self._on_loop:  # on that loop's own thread (an inline batch)
                    _wake_futures(group)
                    continue
                # A closed loop raises RuntimeError: nobody waits there any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_wake_futures, group)

    def _count_batch(self, n: int) -> None:
        self._batches += 1
        bound: float = 1 if n == 1 else self._bound(n)
        self._sizes[bound] = self._sizes.get(bound, 0) + 1

    def _bound(self, n: int) -> float:
        """The batch-size histogram bucket of ``n`` > 1 rows (see BatchingStats)."""
        return 2 ** (n - 1).bit_length() if n <= self._size_cap else math.inf

    @staticmethod
    def _wake(reqs: list[_Request]) -> None:
        """Wake callers whose request ended without a batch (expired in the queue)."""
        for r in reqs:
            if r.future is None:
                r.latch.release()
            else:
                with contextlib.suppress(RuntimeError):
                    r.loop.call_soon_threadsafe(_wake_futures, [r])

    # ------------------------------------------------------------------ lifecycle
    def stats(self) -> BatchingStats:
        """A snapshot of the counters."""
        with self._mutex:
            buckets = dict(zip((*WAIT_BUCKETS, math.inf), self._wait_buckets))
            return BatchingStats(
                requests=self._requests,
                rows=self._rows_in,
                batches=self._batches,
                batch_sizes=dict(sorted(self._sizes.items())),
                queue_wait_seconds_sum=self._wait_sum,
                queue_wait_seconds_max=self._wait_max,
                queue_wait_buckets=buckets,
                queued=self._queued,
                rejected=self._rejected,
                timed_out=self._timed_out,
                failed=self._failed,
                isolation_runs=self._isolation,
                inline_batches=self._inline_runs,
            )

    def close(self, on_idle: Callable[[], None] | None = None) -> bool:
        """Refuse new calls (they raise :class:`HandleClosedError`); calls already queued
        still run. Never waits: returns whether the batcher is idle, in which case its
        worker thread has been told to stop; if not, the leader that finishes the last
        batch calls ``on_idle`` (from its own thread, once the model returned) and stops
        the worker. Idempotent and safe to call from several threads."""
        with self._mutex:
            self._closed = True
            self._wake_room()
            if self._running:
                if on_idle is not None:
                    self._on_idle.append(on_idle)
                return False
            worker, self._worker = self._worker, None
            if worker is not None:
                self._stopped = worker
        if worker is not None:
            worker.stop()
        return True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a stopped worker thread to end (at most ``timeout`` seconds); returns
        whether no worker thread is left running."""
        worker = self._stopped
        if worker is None or worker.thread is threading.current_thread():
            return worker is None
        worker.thread.join(timeout)
        return not worker.thread.is_alive()

    def _after_fork_in_child(self) -> None:
        """In a forked child: the parent's leader, worker thread and waiting callers do not
        exist here, so start again from an empty, idle state (counters included: each
        process counts its own calls). A batcher closed in the parent stays closed."""
        self._reset()


def _after_fork_in_child() -> None:
    for batcher in list(_LIVE):
        batcher._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _cheap_end(estimate: float, cost: float) -> float:
    """A run-time estimate that follows the cheap end of the runs (``estimate`` < 0:
    none yet): a run that waited for the GIL is slow for reasons that are not the model's,
    so slower runs move the estimate only a little."""
    if cost < estimate or estimate < 0:
        return cost
    return estimate + (cost - estimate) * 0.01


_asyncio_module: Any = None


def _asyncio() -> Any:
    """The asyncio module, imported on first use (thread-only users never load it) and
    then kept: ``asubmit`` runs on every call, and an import statement there costs more."""
    global _asyncio_module
    if _asyncio_module is None:
        import asyncio

        _asyncio_module = asyncio
    return _asyncio_module


def _wake_futures(reqs: list[_Request]) -> None:
    for r in reqs:
        if not r.future.done():
            r.future.set_result(None)


"""``Observer``: what a handle reports every finished call to.

After each call the handle hands one :class:`~embedml.observe.records.FinishedCall` to
:meth:`Observer.end`, which feeds, in this order:

1. the row sinks (:class:`~embedml.observe.hooks.RowSink`, e.g. a ``DriftMonitor``): the
   call's rows, if it succeeded and no batcher offered them already (a batcher offers
   each model call's rows once, through :meth:`Observer.rows`);
2. the record sinks (logs, callables) whose sampling draw takes the call: the call itself,
   turned into a :class:`~embedml.PredictionRecord` on each sink's own thread;
3. the outcome memory (``log_outcome``), when the caller saw the request id;
4. the metrics, last, so that a call counts as in flight until every sink has it (a
   closing handle waits for that before it closes its sinks).

Nothing here raises into the caller's prediction: sinks count and log their own faults,
and the handle logs anything else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..clock import SYSTEM_CLOCK, Clock
from .hooks import RowSink, Sink
from .metrics import Metrics
from .quality import QualityTracker
from .records import FinishedCall, RowBatch, Source, new_request_id

__all__ = ["Observer"]

log = logging.getLogger("embedml.observe.observer")


def _snapshot(batch: Any) -> Any:
    """A copy of the arrays of an input or output batch. The validated inputs may be the
    caller's own array, and the outputs are what the caller gets back: without a copy, a
    caller editing either in place would change what gets logged and scored."""
    if type(batch) is np.ndarray:
        return batch.copy()
    if isinstance(batch, dict):
        return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in batch.items()}
    if isinstance(batch, list | tuple) and any(isinstance(v, np.ndarray) for v in batch):
        return type(batch)(v.copy() if isinstance(v, np.ndarray) else v for v in batch)
    return batch


class Observer:
    """A handle's observability: its metrics, the outputs remembered for outcomes, and its
    sinks. ``clock`` measures the metrics' windows and stamps records (waits, such as
    :meth:`drain`, use real time)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.metrics = Metrics(clock)
        #: A call started (it is in flight until its :meth:`end`): the metrics count it
        #: (bound here rather than wrapped: one Python frame less per call).
        self.begin = self.metrics.begin
        self.quality = QualityTracker()
        self.sinks: tuple[Sink, ...] = ()
        # the same sinks split by what they take
        self.record_sinks: tuple[Sink, ...] = ()
        self.row_sinks: tuple[RowSink, ...] = ()
        self._lock = threading.Lock()
        # Set by drain(): from then on every finished call notifies _idle.
        self._draining = False
        self._idle = threading.Condition()

    def _set(self, sinks: tuple[Sink, ...]) -> None:
        self.record_sinks = tuple(s for s in sinks if not isinstance(s, RowSink))
        self.row_sinks = tuple(s for s in sinks if isinstance(s, RowSink))
        self.sinks = sinks

    def add(self, sink: Sink, handle: Any) -> None:
        with self._lock:
            if sink in self.sinks:
                return
            sink.attach(handle)
            self._set((*self.sinks, sink))

    def remove(self, sink: Sink, handle: Any) -> bool:
        with self._lock:
            if sink not in self.sinks:
                return False
            self._set(tuple(s for s in self.sinks if s is not sink))
        sink.detach(handle)
        return True

    def end(self, call: FinishedCall) -> None:
        """Report one finished call to the sinks, the outcome memory and the metrics (in
        that order, see the module docstring). Its outputs are kept for ``log_outcome``
        when the caller saw its ``request_id``, or on the thread of the first record sink
        that takes it and shows ids (:attr:`Sink.shows_ids`); otherwise nobody could join
        an outcome to them. A record sink that takes a call without an id gets one made
        here; ``call.request_id`` holds it afterwards."""
        try:
            # else the metrics alone (a batcher offered the rows of a batched call already)
            if (
                self.record_sinks
                or call.request_id is not None
                or (self.row_sinks and not call.rows_offered)
            ):
                self._feed(call)
        finally:
            self.metrics.end(call)
            if self._draining:
                with self._idle:
                    self._idle.notify_all()

    def _feed(self, call: FinishedCall) -> None:
        """The row sinks, the record sinks and the outcome memory (see :meth:`end`)."""
        ok = call.error is None
        if ok and self.row_sinks and not call.rows_offered:
            self.rows(call.source, call.inputs, call.outputs, call.rows, copy=True)
        remember = ok and call.request_id is not None
        sinks = self.record_sinks
        if len(sinks) == 1:  # the common case: no list built (172 -> 42 ns, timeit)
            takers = sinks if sinks[0].wants() else None
        else:
            takers = [s for s in sinks if s.wants()] if sinks else None
        if takers or remember:
            call.outputs = _snapshot(call.outputs)  # the caller may edit its result
        if takers:
            self._hand_over(call, takers, remember)
        if remember:
            self.quality.remember(call.request_id, call.outputs, call.rows)  # type: ignore[arg-type]

    def _hand_over(self, call: FinishedCall, takers: Sequence[Sink], remember: bool) -> None:
        # The sinks' threads build the records: the caller only stamps and queues the call.
        # Queued calls are objects the garbage collector tracks (the flat tuples of strings,
        # numbers and arrays they replaced were untracked at its first look, so that up to
        # max_queue waiting entries would not be promoted and bring full collections
        # sooner). Measured, that did not matter: with a JsonlSink taking every call, 64
        # threads, batched MLP (bench_observability), throughput vs no hooks was 0.40
        # (0.22-0.56) with the tuples and 0.52 (0.44-0.54) with these objects (medians of 5
        # alternating rounds; docs/observability.md, "The typed call path"). With one caller
        # they do bring collections (a DriftMonitor's 20,000 calls: 10 young, 1 full), but
        # waking the writers sooner, so that fewer wait at once, cost the caller more.
        call.inputs = _snapshot(call.inputs)  # the validated inputs may be the caller's array
        if call.request_id is None:
            call.request_id = new_request_id()
        call.timestamp = self.clock.time() - (call.ended - call.started)
        if call.error is None and not remember:
            for sink in takers:
                if sink.shows_ids:  # the first taker that shows ids keeps the outputs
                    call.kept_by, call.memory = sink, self.quality
                    break
        for sink in takers:
            try:
                sink.submit(call)
            except Exception:  # submit() never raises; an override that does costs only itself
                log.exception(
                    "sink %r raised in submit(); the other sinks still get the call", sink
                )

    def rows(self, source: Source, batch: Any, outputs: Any, n: int, copy: bool) -> None:
        """Offer the ``n`` rows of successful calls to the row sinks, each sampling per
        offer; ``copy``: the inputs may be a caller's array. Never raises."""
        try:
            offer = None
            for sink in self.row_sinks:
                if sink.wants():
                    if offer is None:
                        inputs = _snapshot(batch) if copy else batch
                        offer = RowBatch(source[2], inputs, _snapshot(outputs), n)
                    try:
                        sink.submit(offer)
                    except Exception:  # as in _hand_over
                        log.exception("sink %r raised in submit()", sink)
        except Exception:  # pragma: no cover - observability must not break a prediction
            log.exception("offering rows to the row sinks failed")

    def drain(self, timeout: float) -> bool:
        """Wait until every call that began has ended (at most ``timeout`` seconds);
        returns whether they all did."""
        deadline = time.monotonic() + timeout
        self._draining = True
        with self._idle:
            while self.metrics.in_flight:
                left = deadline - time.monotonic()
                if left <= 0.0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, handle: Any, deadline: float | None = None) -> None:
        """Detach every sink; each gets until ``deadline`` (``time.monotonic()``), at least
        one second, to write what it accepted."""
        with self._lock:
            sinks, self.sinks = self.sinks, ()
            self.record_sinks = self.row_sinks = ()
        for sink in sinks:
            left = 10.0 if deadline is None else max(deadline - time.monotonic(), 1.0)
            try:
                sink.detach(handle, left)
            except Exception:  # pragma: no cover - closing must go on
                log.exception("closing sink %r failed", sink)

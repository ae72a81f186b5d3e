"""Prediction hooks: sinks, the bounded queues that take records off the callers' path.

Every hook is a :class:`Sink`: a caller appends to its bounded queue in O(1) and the
sink's own background thread writes what accumulated, in batches, so the caller never
waits for I/O and never sees a sink's exception. A sink receives one of two shapes:

* :class:`Sink` (logs, callables): :meth:`Sink.write` gets
  :class:`~embedml.observe.records.PredictionRecord` objects, one per call, built on the
  sink's thread from what the handle queued;
* :class:`RowSink` (:class:`~embedml.DriftMonitor`): :meth:`RowSink.write_rows` gets
  :class:`~embedml.observe.records.RowBatch` objects, the rows of successful model calls,
  without a per-call record.

When the queue is full the item is dropped and counted (``policy="drop"``, the default) or
the caller writes a batch itself or waits for room (``policy="block"``: nothing is lost
while the sink keeps up, callers pay for it; a caller waits at most
``Sink.block_timeout`` seconds, then its item is dropped and counted, so a stuck sink
cannot hang the host). ``embedml.observe.observer.Observer`` decides what each sink gets.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from random import random as _random
from typing import Any

from .._fork import LiveObjects, after_fork_in_child
from ..errors import ConfigurationError
from .records import (
    FinishedCall,
    PredictionRecord,
    RowBatch,
    jsonable,
    new_id_prefix,
    new_request_id,
)

__all__ = ["PredictionRecord", "RowSink", "Sink", "jsonable", "new_request_id"]

log = logging.getLogger("embedml.observe.hooks")

# A forked child draws its own request-id prefix (ids stay unique across processes); then,
# registered after it, the sinks still open restart (see Sink._after_fork_in_child).
after_fork_in_child(new_id_prefix)
# Sinks still open: restarted in a forked child, closed (so flushed) at interpreter exit.
_LIVE: LiveObjects[Sink] = LiveObjects("sink")


@atexit.register
def _close_all() -> None:
    for sink in _LIVE:
        try:
            sink.close(timeout=5.0)
        except Exception:  # pragma: no cover - exit must go on
            log.exception("closing %r at exit failed", sink)


def _redactor(redact: Any) -> Callable[[Any], Any] | None:
    """``{"field": "drop" | "hash"}`` (or a list of fields to drop) -> a function on values."""
    if redact is None:
        return None
    rules = dict.fromkeys(redact, "drop") if not isinstance(redact, Mapping) else dict(redact)
    for key, how in rules.items():
        if how not in ("drop", "hash"):
            raise ConfigurationError(f"redact[{key!r}] must be 'drop' or 'hash', got {how!r}")

    def apply(value: Any) -> Any:
        if isinstance(value, list):
            return [apply(v) for v in value]
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                how = rules.get(k)
                if how is None:
                    out[k] = v
                elif how == "hash":
                    out[k] = "sha256:" + hashlib.sha256(repr(v).encode()).hexdigest()[:16]
            return out
        return value

    return apply


class Sink:
    """Base of every hook: a bounded queue drained by one background writer thread.

    Subclasses implement :meth:`write` (called on the writer thread with a list of
    :class:`PredictionRecord`, oldest first); sinks that need only the rows of successful
    calls subclass :class:`RowSink` instead. Options: ``sample`` (fraction of calls kept,
    0..1), ``redact`` (``{"field": "drop"|"hash"}`` or a list of fields to drop, applied by
    :meth:`redact` on input/output dicts), ``max_queue`` (items waiting at most) and
    ``policy`` (``"drop"``: count and drop when full; ``"block"``: the caller writes a
    batch itself, or waits while another thread does, for at most :attr:`block_timeout`
    seconds before its item is dropped and counted).
    An exception in :meth:`write` is logged once and counted in :meth:`stats`. A
    :meth:`write` that never returns holds only the sink's thread (and, under
    ``policy="block"``, a caller that happened to be writing a batch itself); :meth:`close`
    gives up on it after its ``timeout``, logs it and counts the items still queued as
    ``abandoned``.
    Raises :class:`ConfigurationError` for invalid options.
    """

    #: Whether the records' request ids reach someone who may call ``log_outcome`` with
    #: them (a log does); when no sink taking a call shows ids and the caller did not ask
    #: for it, the handle does not remember that call's outputs.
    shows_ids = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("wants_records") is False and not issubclass(cls, RowSink):
            # the flag of embedml <= 0.x, whose write() then got (names, inputs, outputs,
            # rows) tuples: refuse it rather than hand such a sink records it cannot read
            raise TypeError(
                f"{cls.__name__} sets wants_records = False: subclass "
                "embedml.observe.hooks.RowSink and implement write_rows(batches) instead"
            )

    def __init__(
        self,
        *,
        sample: float = 1.0,
        redact: Mapping[str, str] | Iterable[str] | None = None,
        max_queue: int = 10_000,
        policy: str = "drop",
        name: str | None = None,
    ) -> None:
        if not 0.0 <= float(sample) <= 1.0:
            raise ConfigurationError(f"sample must be in [0, 1], got {sample!r}")
        if policy not in ("drop", "block"):
            raise ConfigurationError(f"policy must be 'drop' or 'block', got {policy!r}")
        if int(max_queue) < 1:
            raise ConfigurationError(f"max_queue must be >= 1, got {max_queue!r}")
        self.sample = float(sample)
        self.policy = policy
        self.max_queue = int(max_queue)
        self.name = name or type(self).__name__
        #: Seconds between writes when few items arrive (the longest an item waits).
        self.interval = 0.05
        #: Longest a caller waits for room under ``policy="block"`` before its item is
        #: dropped (counted in ``dropped``, logged once): a stuck sink must not hang callers.
        self.block_timeout = 5.0
        self._wake_at = max(1, self.max_queue // 4)
        self._redact = _redactor(redact)
        self._closed = False
        self._users = 0
        self._reset()

    def _reset(self) -> None:
        """The writer-side state of a new sink (also what a forked child starts from)."""
        self._lock = threading.Lock()
        # Notified whenever the writer made progress (a batch written, its thread ended)
        # and when the sink closes: flush() and callers waiting for room wait on it.
        self._progress = threading.Condition(self._lock)
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = 0  # items taken off the queue, not yet written
        # Under _lock: taken (off the queue by a writer), written, errors, dropped,
        # abandoned. Callers append without a lock, so "accepted" is counted as what was
        # taken, abandoned or is still queued.
        self._counts = collections.Counter[str]()
        self._write_lock = threading.Lock()  # one write() at a time (thread or caller)
        self._logged_error = False
        self._logged_block = False
        self._skipped = 0  # records of the current write() that failed on their own
        self._finished = False  # the writer thread has left its loop
        self._gave_up = False  # a close() stopped waiting for a stuck writer thread

    # -- caller side
    def wants(self) -> bool:
        """Whether to take this call at all (the sampling draw, made before anything is
        built for the sink)."""
        return self.sample >= 1.0 or _random() < self.sample

    def submit(self, item: Any) -> bool:
        """Offer one item (O(1)): a :class:`~embedml.observe.records.FinishedCall` for a
        record sink, a :class:`~embedml.observe.records.RowBatch` for a :class:`RowSink`.
        Returns whether it was accepted; never raises. Sampling is decided before, by
        :meth:`wants`."""
        # No lock while there is room: deque.append is atomic under the GIL, and a lock
        # here makes many caller threads convoy behind each other. The size check can
        # overshoot max_queue by at most the number of caller threads.
        if self._closed:
            self._count("dropped")
            return False
        if self._thread is None:
            self._start()
        queue = self._queue
        if len(queue) + self._busy >= self.max_queue and not self._wait_for_room():
            return False
        queue.append(item)
        # Wake the writer only when a good batch is waiting (it also wakes every
        # `interval` seconds): waking it per item costs more than writing the item.
        if len(queue) >= self._wake_at and not self._wake.is_set():
            self._wake.set()
        return True

    def _full(self) -> bool:
        return len(self._queue) + self._busy >= self.max_queue  # items being written count

    def _wait_for_room(self) -> bool:
        """The queue is full. ``"drop"``: count the drop. ``"block"``: write a batch on
        this thread (with many busy caller threads the writer thread gets only its fair
        share of the GIL), or wait while another thread does, at most ``block_timeout``
        seconds. Returns whether there is room now."""
        if self.policy == "drop":
            self._count("dropped")
            return False
        if self._write_lock.acquire(blocking=False):
            try:
                self._deliver(self._take())
            finally:
                self._write_lock.release()
        give_up = time.monotonic() + self.block_timeout
        with self._progress:
            while self._full():
                left = give_up - time.monotonic()
                if self._closed or left <= 0.0:
                    self._counts["dropped"] += 1
                    if not self._closed:
                        self._blocked_too_long()
                    return False
                self._wake.set()
                self._progress.wait(left)
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=f"embedml-{self.name}", daemon=True)
            thread.start()
            self._thread = thread
            _LIVE.add(self)

    # -- writer side
    def _take(self) -> list[Any]:
        # Only the holder of _write_lock pops, so the first len() items are there to take;
        # callers appending meanwhile wait for the next round.
        with self._lock:
            queue = self._queue
            batch = [queue.popleft() for _ in range(len(queue))]
            self._busy = len(batch)
            self._counts["taken"] += len(batch)
        return batch

    def _deliver(self, batch: list[Any]) -> None:
        written = 0
        try:
            if batch:
                self._skipped = 0
                try:
                    self._write_batch(batch)
                    written = len(batch) - self._skipped
                except Exception as exc:
                    self._failed(exc, len(batch))
        finally:
            with self._progress:
                self._busy = 0
                self._counts["written"] += written
                self._progress.notify_all()

    def _write_batch(self, calls: list[FinishedCall]) -> None:
        """Turn queued calls into records and :meth:`write` them. The outputs of a call
        whose id only this sink shows are remembered for ``log_outcome`` first, so that
        an id read from a record is always known."""
        records = []
        for call in calls:
            if call.kept_by is self and call.memory is not None:
                call.memory.remember(call.request_id, call.outputs, call.rows)  # type: ignore[arg-type]
            records.append(PredictionRecord.of(call))
        self.write(records)

    def _run(self) -> None:
        try:
            while True:
                if not self._closed:  # closing: drain at once, however long `interval` is
                    self._wake.wait(self.interval)
                self._wake.clear()
                closing = self._closed
                with self._write_lock:
                    batch = self._take()
                    self._deliver(batch)
                    if not batch:
                        try:
                            self._idle()
                        except Exception as exc:
                            self._failed(exc, 0)
                if closing and not batch:
                    break
        finally:
            with self._progress:
                self._finished = True
                gave_up = self._gave_up
                self._progress.notify_all()
            if gave_up:  # close() gave up waiting for this thread: release resources here
                self._release()

    def _blocked_too_long(self) -> None:
        # Called with self._lock held (inside self._progress).
        if not self._logged_block:
            self._logged_block = True
            log.warning(
                "sink %s: a caller waited %.1f s for room (policy='block'); dropping its "
                "record (logged once; further drops are only counted)", self.name, self.block_timeout,
            )  # fmt: skip

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _failed(self, exc: BaseException, n: int) -> None:
        self._count("errors", n)
        if not self._logged_error:
            self._logged_error = True
            log.error(
                "sink %s raised %s: %s (logged once; further errors are only counted)",
                self.name, type(exc).__name__, exc, exc_info=exc,
            )  # fmt: skip

    def write(self, records: list[PredictionRecord]) -> None:
        """Handle a list of records on the writer thread. Subclasses override this."""
        raise NotImplementedError

    def _idle(self) -> None:
        """Called on the writer thread when it woke (every :attr:`interval` at least) and
        found nothing to write; subclasses may do deferred work here."""

    def redact(self, value: Any) -> Any:
        """Apply this sink's redaction rules to a JSON-ready input/output value."""
        return value if self._redact is None else self._redact(value)

    def record_dict(self, record: PredictionRecord, arrays: str = "list") -> dict[str, Any]:
        """``record.to_dict(arrays)`` with this sink's redaction applied (inputs given
        as ``{field: value}`` rows are redacted, never packed as base64)."""
        d = record.to_dict(arrays)
        if self._redact is not None:
            d["inputs"] = self._redact(record.inputs)
            d["outputs"] = self._redact(d["outputs"])
        return d

    # -- lifecycle
    def attach(self, handle: Any) -> None:
        """Called when a handle starts using this sink (a sink may serve several handles)."""
        with self._lock:
            self._users += 1

    def detach(self, handle: Any, timeout: float | None = 10.0) -> None:
        """Called by ``handle.close()``: the last handle to detach closes the sink
        (waiting at most ``timeout`` seconds, see :meth:`close`)."""
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close(timeout)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every accepted item is written; returns ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._progress:
            while self._queue or self._busy:
                if self._thread is None or self._finished:  # no writer left to wait for
                    return not self._queue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0.0:
                    return False
                self._wake.set()  # write now rather than at the next `interval`
                self._progress.wait(left)
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Write everything accepted, stop the writer thread and release resources. Idempotent.

        Waits at most ``timeout`` seconds for the writer thread; if it is stuck in a
        :meth:`write` that does not return, the items still queued are discarded
        (counted as ``abandoned`` in :meth:`stats`, logged) and the thread is left to
        release the sink's resources if it ever finishes."""
        with self._progress:
            self._closed = True
            self._progress.notify_all()
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            first = False
            with self._lock:
                stuck = thread.is_alive() and not self._finished
                if stuck and not self._gave_up:
                    # Give up on a write that does not return: what is still queued is
                    # discarded (counted); the thread releases resources if it ever ends.
                    first = self._gave_up = True
                    abandoned = len(self._queue)
                    self._queue.clear()
                    self._counts["abandoned"] += abandoned
            if first:
                log.error(
                    "sink %s: its writer thread did not finish within %s s (a write() that "
                    "hangs?); abandoning it with %d queued record(s) discarded",
                    self.name, timeout, abandoned,
                )  # fmt: skip
            if stuck:
                _LIVE.discard(self)
                return
            # a caller may have appended just after the writer's last look
            with self._write_lock:
                self._deliver(self._take())
        _LIVE.discard(self)
        self._release()

    def _release(self) -> None:
        """Free files or other resources after the writer stopped (override)."""

    def _after_fork_in_child(self) -> None:
        """In a forked child: the writer thread does not exist here, and the items queued
        at the fork are the parent's to write. Start again empty, with zero counts (each
        process counts its own records); the writer thread starts on the next item.
        Subclasses extend this to drop what they hold for the parent (files, locks)."""
        self._reset()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def wants_records(self) -> bool:
        """Whether :meth:`write` gets records (``False`` for a :class:`RowSink`)."""
        return not isinstance(self, RowSink)

    def stats(self) -> dict[str, Any]:
        """Counts: ``accepted``, ``written``, ``dropped`` (queue full, closed, or waited
        longer than ``block_timeout``), ``errors`` (records a write failed on),
        ``abandoned`` (discarded by a :meth:`close` that gave up on a stuck writer) and
        ``queued`` (waiting now)."""
        with self._lock:
            c, queued = self._counts, len(self._queue)
            return {
                "name": self.name,
                "accepted": c["taken"] + c["abandoned"] + queued,
                "written": c["written"],
                "dropped": c["dropped"],
                "errors": c["errors"],
                "abandoned": c["abandoned"],
                "queued": queued + self._busy,
            }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{' closed' if self._closed else ''}>"


class RowSink(Sink):
    """A sink that looks only at the rows of successful calls (like
    :class:`~embedml.DriftMonitor`): it gets :class:`~embedml.observe.records.RowBatch`
    objects, no per-call record and no request id, which costs callers a fraction of a
    record. On a batched handle a model call's rows come as one batch, whatever the
    number of calls it served; ``sample`` then samples model calls rather than calls.
    Subclasses implement :meth:`write_rows`."""

    shows_ids = False  # nobody reads request ids from rows: no outputs kept for them

    def _write_batch(self, batches: list[RowBatch]) -> None:
        self.write_rows(batches)

    def write_rows(self, batches: list[RowBatch]) -> None:
        """Handle row batches (oldest first) on the writer thread. Subclasses override this."""
        raise NotImplementedError

    def write(self, records: list[PredictionRecord]) -> None:
        """A row sink gets no records (see :meth:`write_rows`)."""
        raise TypeError(f"{type(self).__name__} is a RowSink: it takes write_rows(batches)")

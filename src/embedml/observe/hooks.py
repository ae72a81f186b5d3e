"""Prediction hooks: what a handle hands to sinks after every call, and how it gets there.

A handle builds one :class:`PredictionRecord` per call (``predict``, ``predict_batch``,
``apredict``) and offers it to each attached :class:`Sink`. A sink accepts it into a
bounded queue in O(1) and a background thread (one per sink) writes it; the caller never
waits for I/O and never sees a sink's exception. When the queue is full the record is
dropped and counted (``policy="drop"``, the default) or the caller writes a batch
itself or waits for room (``policy="block"``: nothing is lost while the sink keeps up,
callers pay for it; a caller waits at most ``Sink.block_timeout`` seconds, then its
record is dropped and counted, so a stuck sink cannot hang the host). Turning arrays into
JSON-ready values happens on the writer thread, the first time a sink reads
``record.inputs`` / ``record.outputs``.
"""

from __future__ import annotations

import atexit
import collections
import hashlib
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from random import random as _random
from typing import Any

import numpy as np

from ..errors import ConfigurationError

__all__ = ["PredictionRecord", "Sink", "jsonable"]

log = logging.getLogger("embedml.observe.hooks")
_ID_PREFIX = os.urandom(4).hex()  # drawn again in a forked child (see _after_fork_in_child)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A process-unique request id (cheap: a random per-process prefix and a counter)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (lists, dicts, str, int, float, bool, None).

    numpy arrays become nested lists, pydantic models dicts, DataFrames lists of records;
    anything else unknown becomes its ``repr``.
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "to_dict") and hasattr(value, "columns"):
        return value.to_dict(orient="records")
    return repr(value)


#: What every record of one loaded version shares: ``(model, version, input_names)``. A
#: plain tuple of strings, so that the entries callers queue for sinks hold no object the
#: garbage collector tracks (see ``Observer.end``).
Source = tuple[str, str, "tuple[str, ...] | None"]

# Quality trackers by key: queued entries name theirs by an int, for the same reason.
_TRACKERS: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
_TRACKER_KEYS = itertools.count(1)


class PredictionRecord:
    """One call to a handle, as hooks see it.

    Attributes: ``request_id`` (the id ``predict(..., details=True)`` returns, the key of
    ``log_outcome``), ``model``, ``version``, ``timestamp`` (Unix seconds at the start of
    the call), ``rows`` (the call's own rows), ``batch_size`` (rows of the model call that
    served it: with batching, the joined batch, else ``rows``), ``latency_ms`` (whole call),
    ``validation_ms``, ``queue_ms`` (time waiting in the batching queue until taken into a
    batch; 0 without batching or when the call ran at once), ``model_ms`` (the rest of the
    wait for the result: preprocess + model + postprocess), ``error`` (``"TypeName:
    message"`` or ``None``) and ``error_type``. A call that failed reports its own rows as
    ``batch_size`` and no queue wait. ``inputs`` (after validation; a list of ``{field: value}`` rows for
    record schemas) and ``outputs`` are JSON-ready values built on first access.
    """

    __slots__ = (
        "request_id", "_source", "timestamp", "batch_size", "rows", "_timings", "_error",
        "_raw_inputs", "_raw_outputs", "_inputs", "_outputs",
    )  # fmt: skip

    def __init__(
        self,
        request_id: str,
        source: Source,
        timestamp: float,
        batch_size: int,
        timings: tuple[float, float, float, float],
        raw_inputs: Any,
        raw_outputs: Any,
        error: BaseException | None = None,
        rows: int | None = None,
    ) -> None:
        self.request_id = request_id
        self._source = source
        self.timestamp = timestamp
        self.batch_size = batch_size
        self.rows = batch_size if rows is None else rows
        self._timings = timings  # seconds; the *_ms properties convert when read
        self._error = error
        self._raw_inputs = raw_inputs
        self._raw_outputs = raw_outputs
        self._inputs: Any = _UNSET
        self._outputs: Any = _UNSET

    @property
    def validation_ms(self) -> float:
        return self._timings[0] * 1e3

    @property
    def queue_ms(self) -> float:
        return self._timings[1] * 1e3

    @property
    def model_ms(self) -> float:
        return self._timings[2] * 1e3

    @property
    def latency_ms(self) -> float:
        return self._timings[3] * 1e3

    @property
    def error(self) -> str | None:
        e = self._error
        return None if e is None else f"{type(e).__name__}: {e}"

    @property
    def error_type(self) -> str | None:
        return None if self._error is None else type(self._error).__name__

    @property
    def model(self) -> str:
        return self._source[0]

    @property
    def version(self) -> str:
        return self._source[1]

    @property
    def input_names(self) -> tuple[str, ...] | None:
        """Field names of the input rows (record schemas), else ``None``."""
        return self._source[2]

    @property
    def raw_inputs(self) -> Any:
        """The validated input batch as the model got it (arrays); do not modify it."""
        return self._raw_inputs

    @property
    def raw_outputs(self) -> Any:
        """The output batch (arrays) after postprocessing; do not modify it."""
        return self._raw_outputs

    @property
    def inputs(self) -> Any:
        """The validated inputs as JSON-ready values (``None`` if validation failed)."""
        if self._inputs is _UNSET:
            raw, names = self._raw_inputs, self._source[2]
            if names is not None and getattr(raw, "ndim", 0) == 2:
                self._inputs = [dict(zip(names, row)) for row in raw.tolist()]
            else:
                self._inputs = jsonable(raw)
        return self._inputs

    @property
    def outputs(self) -> Any:
        """The outputs as JSON-ready values (``None`` if the call failed)."""
        if self._outputs is _UNSET:
            self._outputs = jsonable(self._raw_outputs)
        return self._outputs

    def to_dict(self) -> dict[str, Any]:
        """All fields as one JSON-ready dict (what :class:`~embedml.JsonlSink` writes)."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "timestamp": self.timestamp,
            "rows": self.rows,
            "batch_size": self.batch_size,
            "latency_ms": round(self.latency_ms, 4),
            "validation_ms": round(self.validation_ms, 4),
            "queue_ms": round(self.queue_ms, 4),
            "model_ms": round(self.model_ms, 4),
            "error": self.error,
            "inputs": self.inputs,
            "outputs": self.outputs,
        }

    def __repr__(self) -> str:
        status = self.error or "ok"
        return f"<PredictionRecord {self.request_id} {self.model}@{self.version} n={self.rows}/{self.batch_size} {status}>"


_UNSET: Any = object()

# Sinks still open, closed (so flushed) at interpreter exit.
_LIVE: weakref.WeakSet[Sink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child draws its own request-id prefix (ids stay unique across processes)
    and restarts its sinks (see ``Sink._after_fork_in_child``)."""
    global _ID_PREFIX
    _ID_PREFIX = os.urandom(4).hex()
    for sink in list(_LIVE):
        try:
            sink._after_fork_in_child()
        except Exception:  # pragma: no cover - the child must go on
            log.exception("restarting sink %r after fork failed", sink)
    for tracker in list(_TRACKERS.values()):
        tracker._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _close_all() -> None:
    for sink in list(_LIVE):
        try:
            sink.close(timeout=5.0)
        except Exception:  # pragma: no cover - exit must go on
            log.exception("closing %r at exit failed", sink)


def _value(counter: itertools.count[int]) -> int:
    """Current value of an ``itertools.count`` without advancing it."""
    return int(repr(counter)[6:-1])  # "count(N)"


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
    records, oldest first). Options: ``sample`` (fraction of calls kept, 0..1),
    ``redact`` (``{"field": "drop"|"hash"}`` or a list of fields to drop, applied by
    :meth:`redact` on input/output dicts), ``max_queue`` (records waiting at most) and
    ``policy`` (``"drop"``: count and drop when full; ``"block"``: the caller writes a
    batch itself, or waits while another thread does, for at most :attr:`block_timeout`
    seconds before its record is dropped and counted).
    An exception in :meth:`write` is logged once and counted in :meth:`stats`. A
    :meth:`write` that never returns holds only the sink's thread (and, under
    ``policy="block"``, a caller that happened to be writing a batch itself); :meth:`close`
    gives up on it after its ``timeout``, logs it and counts the records still queued as
    ``abandoned``.
    Raises :class:`ConfigurationError` for invalid options.
    """

    #: Whether the records' request ids reach someone who may call ``log_outcome`` with
    #: them (a log does); when no sink taking a call shows ids and the caller did not ask
    #: for it, the handle does not remember that call's outputs.
    shows_ids = True
    #: ``False`` for sinks that only look at the rows of successful calls (like
    #: :class:`~embedml.DriftMonitor`): the handle builds no record for them and
    #: :meth:`write` receives ``(input_names, inputs, outputs, rows)`` tuples instead of
    #: records, which costs callers a fraction of a record.
    wants_records = True

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
        #: Seconds between writes when few records arrive (the longest a record waits).
        self.interval = 0.05
        #: Longest a caller waits for room under ``policy="block"`` before its record is
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
        self._room = threading.Condition(self._lock)
        self._queue: collections.deque[PredictionRecord] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = 0  # records taken off the queue, not yet written
        self._counts = collections.Counter[str]()  # writer-side counts, under _lock
        self._accepted = itertools.count()
        self._write_lock = threading.Lock()  # one write() at a time (thread or caller)
        self._dropped = itertools.count()
        self._logged_error = False
        self._logged_block = False
        self._skipped = 0  # records of the current write() that failed on their own
        self._finished = False  # the writer thread has left its loop
        self._gave_up = False  # a close() stopped waiting for a stuck writer thread

    # -- caller side
    def wants(self) -> bool:
        """Whether to build a record for this call at all (the sampling draw)."""
        return self.sample >= 1.0 or _random() < self.sample

    def submit(self, record: Any) -> bool:
        """Offer one record (O(1)); returns whether it was accepted. Never raises.
        Sampling is decided before, by :meth:`wants`. A :class:`PredictionRecord`, or what
        a handle queues instead (see ``Observer.end`` and :attr:`wants_records`)."""
        # No lock on this path: deque.append and next(itertools.count) are atomic under
        # the GIL, and a lock here makes many caller threads convoy behind each other.
        # The size check can overshoot max_queue by at most the number of caller threads.
        if self._closed:
            next(self._dropped)
            return False
        if self._thread is None:
            self._start()
        queue = self._queue
        if len(queue) + self._busy >= self.max_queue:  # records being written count too
            if self.policy == "drop":
                next(self._dropped)
                return False
            # With many busy caller threads the writer thread gets only its fair share of
            # the GIL, so a caller that finds the queue full writes a batch itself rather
            # than wait for it (one writer at a time; the others wait for room).
            if self._write_lock.acquire(blocking=False):
                try:
                    self._deliver(self._take())
                finally:
                    self._write_lock.release()
            give_up = time.monotonic() + self.block_timeout
            with self._room:
                while len(queue) + self._busy >= self.max_queue:
                    if self._closed:
                        next(self._dropped)
                        return False
                    if time.monotonic() >= give_up:
                        next(self._dropped)
                        self._blocked_too_long()
                        return False
                    self._wake.set()
                    self._room.wait(0.1)
        queue.append(record)
        next(self._accepted)
        # Wake the writer only when a good batch is waiting (it also wakes every
        # `interval` seconds): waking it per record costs more than writing the record.
        if len(queue) >= self._wake_at and not self._wake.is_set():
            self._wake.set()
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
    def _take(self) -> list[PredictionRecord]:
        # Only this thread pops, so the first len() records are there to take; callers
        # appending meanwhile wait for the next round.
        pop = self._queue.popleft
        self._busy = -1  # taking: flush() must not see an empty queue and nothing in hand
        batch = [pop() for _ in range(len(self._queue))]
        self._busy = len(batch)
        return batch

    def _deliver(self, batch: list[Any]) -> None:
        if not batch:
            self._busy = 0
            return
        self._skipped = 0
        try:
            self.write(_records(batch) if self.wants_records else batch)
            self._count("written", len(batch) - self._skipped)
        except Exception as exc:
            self._failed(exc, len(batch))
        finally:
            self._busy = 0
            if self.policy == "block":
                with self._room:
                    self._room.notify_all()

    def _run(self) -> None:
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
        with self._lock:
            self._finished = True
            gave_up = self._gave_up
        if gave_up:  # close() gave up waiting for this thread: release resources here
            self._release()

    def _blocked_too_long(self) -> None:
        # Called with self._lock held (inside self._room).
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

    def record_dict(self, record: PredictionRecord) -> dict[str, Any]:
        """``record.to_dict()`` with this sink's redaction applied."""
        d = record.to_dict()
        if self._redact is not None:
            d["inputs"] = self._redact(d["inputs"])
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
        """Wait until every accepted record is written; returns ``False`` on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue or self._busy:
            if self._thread is None or not self._thread.is_alive():
                return not self._queue
            if deadline is not None and time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.002)
        return True

    def close(self, timeout: float | None = 10.0) -> None:
        """Write everything accepted, stop the writer thread and release resources. Idempotent.

        Waits at most ``timeout`` seconds for the writer thread; if it is stuck in a
        :meth:`write` that does not return, the records still queued are discarded
        (counted as ``abandoned`` in :meth:`stats`, logged) and the thread is left to
        release the sink's resources if it ever finishes."""
        with self._room:
            self._closed = True
            self._room.notify_all()
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
        """In a forked child: the writer thread does not exist here, and the records queued
        at the fork are the parent's to write. Start again empty, with zero counts (each
        process counts its own records); the writer thread starts on the next record.
        Subclasses extend this to drop what they hold for the parent (files, locks)."""
        self._reset()

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, Any]:
        """Counts: ``accepted``, ``written``, ``dropped`` (queue full, closed, or waited
        longer than ``block_timeout``), ``errors`` (records a write failed on),
        ``abandoned`` (discarded by a :meth:`close` that gave up on a stuck writer) and
        ``queued`` (waiting now)."""
        with self._lock:
            c = self._counts
            return {
                "name": self.name,
                "accepted": _value(self._accepted),
                "written": c["written"],
                "dropped": _value(self._dropped),
                "errors": c["errors"],
                "abandoned": c["abandoned"],
                "queued": len(self._queue) + max(self._busy, 0),
            }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{' closed' if self._closed else ''}>"


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


def _records(entries: list[Any]) -> list[PredictionRecord]:
    """The records of queued entries (see ``Observer.end``), built on the sink's thread;
    outputs are remembered for ``log_outcome`` first, so an id read from a sink is known."""
    records = []
    for e in entries:
        if type(e) is not tuple:  # a PredictionRecord given to submit() directly
            records.append(e)
            continue
        rid = e[0]
        if type(rid) is int:
            rid = f"{_ID_PREFIX}-{rid:x}"
        if e[12]:
            tracker = _TRACKERS.get(e[12])
            if tracker is not None:
                tracker.remember(rid, e[9], e[11])
        records.append(
            PredictionRecord(rid, e[1], e[2], e[3], e[4:8], e[8], e[9], e[10], e[11])
        )
    return records


class Observer:
    """A handle's observability state: metrics, remembered outputs for outcomes, sinks.

    ``end`` is the one call the handle makes after each prediction; it costs O(1) plus
    one queue append per sink.
    """

    def __init__(self) -> None:
        from .metrics import Metrics
        from .quality import QualityTracker

        self.metrics = Metrics()
        self.quality = QualityTracker()
        self._tracker_key = next(_TRACKER_KEYS)
        _TRACKERS[self._tracker_key] = self.quality
        self.sinks: tuple[Sink, ...] = ()
        # the same sinks split by what they take (see Sink.wants_records)
        self._record_sinks: tuple[Sink, ...] = ()
        self.row_sinks: tuple[Sink, ...] = ()
        self._lock = threading.Lock()

    def _set(self, sinks: tuple[Sink, ...]) -> None:
        self._record_sinks = tuple(s for s in sinks if s.wants_records)
        self.row_sinks = tuple(s for s in sinks if not s.wants_records)
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

    def end(
        self,
        source: Source,
        request_id: str | None,
        batch: Any,
        outputs: Any,
        n: int,
        stamps: tuple[float, float, float, float],
        error: BaseException | None = None,
        queue: float = 0.0,
        size: int = 0,
        first: bool = True,
        remember: bool = True,
        rows_seen: bool = False,
    ) -> str | None:
        """Record one finished call of ``n`` rows; returns its request id.

        ``stamps``: perf_counter at start, after validation, after the model (including any
        queue wait ``queue``), and at the end.
        ``size``: rows of the model call that served it (0: ``n``, no batching); ``first``:
        its rows came first in that model call, so this call counts the model call in the
        batch-size distribution (each joined batch is counted once). ``remember``: the
        caller saw the request id; outputs are also kept whenever a sink that shows ids
        (:attr:`Sink.shows_ids`) takes the record, and otherwise not, since nobody could
        join an outcome to them. ``request_id=None``: the caller does not see
        the id; a sink that takes the record gets one made from a counter value on its own
        thread (the first such sink that shows ids also remembers the outputs there, before
        writing), and ``None`` is returned. ``rows_seen``: a batcher already gave the
        row sinks this call's rows (see :meth:`rows`)."""
        t0, t1, t2, t3 = stamps
        model = t2 - t1 - queue
        timings = (t1 - t0, queue, model if model > 0.0 else 0.0, t3 - t0)
        if not size:
            size = n
        self.metrics.end(n, timings, error, size if first else 0, t3)
        if self.row_sinks and error is None and not rows_seen:
            self.rows(source, batch, outputs, n, copy=True)
        sinks = self._record_sinks
        if not sinks:
            takers: Any = None
        elif len(sinks) == 1:  # the common case, without building a list per call
            takers = sinks if sinks[0].sample >= 1.0 or _random() < sinks[0].sample else None
        else:
            takers = [s for s in sinks if s.sample >= 1.0 or _random() < s.sample]
        if takers or (remember and error is None):
            outputs = _snapshot(outputs)  # the caller may edit its result in place
        if takers:
            # The caller hands over a plain tuple; the sink's thread turns it into a
            # PredictionRecord (and formats an id made of a bare counter value): per call
            # that is a fraction of building the record here, on the callers' GIL time.
            # Flat, and only of strings, numbers, arrays and a tuple of strings: the garbage
            # collector stops tracking such a tuple at its first look, so entries waiting in
            # a queue are not promoted and do not make full collections come sooner.
            rid: Any = request_id if request_id is not None else next(_ID_COUNTER)
            v, q, m, t = timings
            entry = (
                rid, source, time.time() - t, size if error is None else n, v, q, m, t,
                _snapshot(batch), outputs, error, n, 0,
            )  # fmt: skip
            keep = error is None and not remember  # the first sink that shows ids remembers
            for sink in takers:
                if keep and sink.shows_ids:
                    keep = False
                    sink.submit((*entry[:12], self._tracker_key))  # type: ignore[arg-type]
                else:
                    sink.submit(entry)  # type: ignore[arg-type]
        if remember and error is None:
            if request_id is None:
                request_id = new_request_id()
            self.quality.remember(request_id, outputs, n)
        return request_id

    def rows(self, source: Source, batch: Any, outputs: Any, n: int, copy: bool) -> None:
        """Offer the ``n`` rows of successful calls to the row sinks (``Sink.wants_records
        = False``), each sampling per offer; ``copy``: the inputs may be a caller's array.
        Never raises."""
        try:
            entry = None
            for s in self.row_sinks:
                if s.sample >= 1.0 or _random() < s.sample:
                    if entry is None:
                        entry = (source[2], _snapshot(batch) if copy else batch, _snapshot(outputs), n)
                    s.submit(entry)
        except Exception:  # pragma: no cover - observability must not break a prediction
            log.exception("offering rows to the row sinks failed")

    def close(self, handle: Any, deadline: float | None = None) -> None:
        """Detach every sink; each gets until ``deadline`` (``time.monotonic()``), at least
        one second, to write what it accepted."""
        with self._lock:
            sinks, self.sinks = self.sinks, ()
        for sink in sinks:
            left = 10.0 if deadline is None else max(deadline - time.monotonic(), 1.0)
            try:
                sink.detach(handle, left)
            except Exception:  # pragma: no cover - closing must go on
                log.exception("closing sink %r failed", sink)

"""``ModelHandle``: one loaded model version behind a fixed pipeline, and its lifecycle.

Every call runs the same stages, in this order::

    validate input (schema) -> preprocess -> model -> postprocess -> validate output

A :class:`Pipeline` holds one loaded version and runs those stages on a batch; the handle
owns a pipeline, exposes ``predict`` / ``predict_batch`` / ``apredict``, and is closed with
``close()`` or ``with``. Errors: :class:`SchemaError` (bad input, the model is not called),
:class:`PredictionError` (a stage raised; the original is chained), :class:`HandleClosedError`.

Hot swap: ``handle.swap(spec)`` builds and warms up the new pipeline before replacing the
handle's pipeline in one assignment. Each call holds a use of the pipeline it started on, and
a pipeline closes when its last use is released, so calls in flight finish on the old version
and no call ever waits for a swap.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import (
    ConfigurationError,
    HandleClosedError,
)
from ..observe.hooks import Sink
from ..observe.observer import Observer
from ..observe.records import FinishedCall, new_request_id
from ..observe.sinks import as_sink
from ..schema import Schema
from ..schema.frames import is_frame, output_frame
from ..schema.profile import PROFILE_FILE, ReferenceProfile
from ..schema.synthetic import synthetic_batch
from ..store import ModelVersion, Store
from ..store.manifest import Manifest
from ..tensors import n_rows, take
from .batching import BatchingStats
from .cache import ModelCache
from .follow import Follower
from .options import LoadOptions
from .pipeline import _LIVE, BatchItem, Pipeline, build_pipeline
from .stream import apredict_stream, predict_stream

__all__ = ["HandleState", "LoadOptions", "ModelHandle", "Pipeline", "Prediction", "new_request_id"]

_log = logging.getLogger("embedml.serving.handle")


@dataclass(frozen=True)
class Prediction:
    """What ``predict(..., details=True)`` returns: the output and where it came from.

    ``request_id`` identifies the call in prediction records (and for ``log_outcome``);
    ``version`` is the version that actually produced ``output`` (it can differ from the
    handle's current version during a hot swap).
    """

    output: Any
    request_id: str
    model: str
    version: str


class HandleState(enum.Enum):
    """Lifecycle of a handle: ``OPEN`` until ``close()``, then ``CLOSED`` for good."""

    OPEN = "open"
    CLOSED = "closed"


class ModelHandle:
    """A loaded model version you can call: ``predict``, ``predict_batch``, ``apredict``.

    Get one from :meth:`ModelStore.load` or :func:`embedml.load`. Safe to share between
    threads and asyncio tasks. Close it (or use ``with``) when done; a closed handle raises
    :class:`HandleClosedError`.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        options: LoadOptions,
        *,
        store: Store | None = None,
        cache: ModelCache | None = None,
        follow: str | None = None,
    ) -> None:
        """A handle owning ``pipeline`` (made by :mod:`embedml.serving.load`); with
        ``follow`` (a version spec such as ``"@production"``) and a ``store``, it follows
        that spec (see :class:`~embedml.serving.follow.Follower`)."""
        self._pipe = pipeline  # this handle owns one use of it (see Pipeline.acquire)
        self._options = options
        self._state = HandleState.OPEN
        self._lock = threading.Lock()
        self._store = store
        self._cache = cache
        self._sample: Any = None  # the last record predicted: swap's default warm-up input
        self._follower: Follower | None = None
        self._obs = Observer()
        self._warmed = False
        self._abandoned = 0  # model calls close() or swap() stopped waiting for
        _LIVE.add(self)
        try:
            for hook in options.hooks:
                self.add_hook(hook)
            if follow is not None and store is not None:
                self._follower = Follower(
                    self, store, follow, options.poll_s, resolve_options=options.resolve_options()
                )
        except BaseException:
            self.close()
            raise

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()

    # -- identity
    @property
    def name(self) -> str:
        """The model's name."""
        return self._pipe.mv.name

    @property
    def version(self) -> str:
        """The version being served."""
        return self._pipe.mv.version

    @property
    def format(self) -> str:
        """The artifact's format name (``"onnx"``, ``"joblib"``, ...)."""
        return self._pipe.mv.manifest.format

    @property
    def manifest(self) -> Manifest:
        """The manifest of the version being served."""
        return self._pipe.mv.manifest

    @property
    def input_schema(self) -> Schema:
        """The input schema enforced on every call: the declared one, or what the model
        declares (see ``docs/concepts.md``, "How embedml reads a model's interface")."""
        return self._pipe.input_schema

    @property
    def row_wise(self) -> bool:
        """Whether the model's outputs are one per input row (see ``docs/concepts.md``):
        only then are rows validated one by one, calls batched, streams micro-batched."""
        return self._pipe.row_wise

    def check_row_wise(self, what: str) -> None:
        """Raise :class:`ConfigurationError` if the model is not row-wise, for ``what``
        (a feature that cuts inputs into rows or joins them, e.g. ``"predict_stream"``)."""
        pipe = self._pipe
        if not pipe.row_wise:
            raise ConfigurationError(
                f"{what} needs a row-wise model; {pipe.label} is not row-wise "
                f"({pipe.row_wise_reason}): pass its tensors whole to predict_batch"
            )

    @property
    def follower(self) -> Follower | None:
        """The alias follower of a handle loaded with ``follow=True`` (its ``swaps``,
        ``errors``, ``last_error``), else ``None``."""
        return self._follower

    @property
    def state(self) -> HandleState:
        """``HandleState.OPEN`` or ``HandleState.CLOSED``."""
        return self._state

    def __repr__(self) -> str:
        return f"<ModelHandle {self._pipe.label} ({self.format}, {self._state.value})>"

    # -- calls
    def _pipeline(self) -> Pipeline:
        """The current pipeline, with one use taken: give it back with ``release()``."""
        while True:
            if self._state is not HandleState.OPEN:
                raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
            pipe = self._pipe
            if pipe.acquire():
                return pipe
            # Swapped out and drained between the read and the acquire: read again.

    def predict(
        self, record: Any, *, details: bool = False, timeout_ms: float | None = None
    ) -> Any:
        """Predict one record (dict, pydantic instance, or array without the batch axis).

        Returns the model's output for that record (output-schema instance when declared),
        or a :class:`Prediction` with ``details=True``. Raises :class:`SchemaError`,
        :class:`PredictionError`, :class:`HandleClosedError`. With batching, also
        :class:`OverloadedError` (queue full) and :class:`PredictionTimeoutError` (past
        ``timeout_ms``, default ``Batching.timeout_ms``); without batching the call runs at
        once and ``timeout_ms`` is not checked.

        For a model that is not row-wise (:attr:`row_wise`) the inputs are the model's
        tensors whole, as for :meth:`predict_batch`; an example that lacks a first dimension
        the model declares as 1 or dynamic gets one, and loses it again in the outputs.
        """
        pipe = self._pipe  # _pipeline()'s common case, without its frame
        if self._state is not HandleState.OPEN or not pipe.acquire():
            pipe = self._pipeline()
        return self._call(pipe, record, True, timeout_ms, details)

    def predict_batch(
        self,
        records: Any,
        *,
        details: bool = False,
        timeout_ms: float | None = None,
        as_frame: bool = False,
    ) -> Any:
        """Predict many records: a list of records, a 2-D array, a DataFrame, or a dict of
        arrays for multi-input models. Returns the batch of outputs (a list of output-schema
        instances when declared), or a :class:`Prediction` with ``details=True`` (one request
        id for the whole batch). A bad record raises :class:`SchemaError` with its index.
        With batching the rows join other calls' (``timeout_ms`` as in :meth:`predict`).

        ``as_frame=True`` returns the outputs as a pandas DataFrame with the index of the
        input DataFrame (``0..n-1`` for other inputs), columns named as in
        :mod:`embedml.schema.frames`.

        A model that is not row-wise (:attr:`row_wise`) gets the tensors whole and returns
        its outputs whole, checked against every declared dimension; ``as_frame=True`` is
        then a :class:`ConfigurationError`.
        """
        if as_frame:
            self.check_row_wise("as_frame=True (a row of outputs per input row)")
        pipe = self._pipe  # _pipeline()'s common case, without its frame
        if self._state is not HandleState.OPEN or not pipe.acquire():
            pipe = self._pipeline()
        out = self._call(pipe, records, False, timeout_ms, details)
        if not as_frame:
            return out
        index = records.index if is_frame(records) else None
        raw = out.output if details else out
        frame = output_frame(raw, len(index) if index is not None else n_rows(raw), index)
        return dataclasses.replace(out, output=frame) if details else frame

    # The call path: one FinishedCall per call, filled in stage by stage (_validate,
    # _joined or _shape) and handed to the observer when the call is over (_end). _call (sync)
    # and apredict (async) are its two thin wrappers; they differ only in how they wait for
    # the model or the batcher. Stamps are time.perf_counter() (4 reads per call): stage
    # timings need its resolution, and nothing here waits or keeps a window (the metrics'
    # window and uptime are on the observer's injectable clock).
    # The record and these helpers cost a 1-row numpy predict ~0.6 µs (11.0 -> 11.6 µs,
    # bench_compare percall; docs/observability.md, "The typed call path").
    def _call(
        self, pipe: Pipeline, records: Any, one: bool, timeout_ms: float | None, details: bool
    ) -> Any:
        """validate -> (batcher or model) -> shape, on the caller's thread."""
        self._obs.begin()
        call = FinishedCall(pipe.source, time.perf_counter())
        try:
            batch, whole, unchecked = self._validate(pipe, call, records, one)
            if pipe.batcher is None:
                raw = pipe.run(batch, call.rows, whole)
                out = self._shape(pipe, call, raw, one and not whole)
            else:  # (batching needs a row-wise model: never whole)
                item = BatchItem(batch, self._obs, call.rows, unchecked)
                out = self._joined(pipe, call, pipe.batcher.submit(item, timeout_ms), one)  # type: ignore[union-attr]
        except BaseException as exc:  # interrupted calls too: each begin needs its end
            self._end(call, exc)
            raise
        finally:
            pipe.release()
        if one:
            self._sample = records  # only records that worked: a bad one must not break swap
        self._end(call, show_id=details)
        if not details:
            return out
        return Prediction(out, call.request_id, pipe.mv.name, pipe.mv.version)  # type: ignore[arg-type]

    async def apredict(
        self, record: Any, *, details: bool = False, timeout_ms: float | None = None
    ) -> Any:
        """``predict`` for asyncio code: the model runs in a worker thread, not on the loop.

        With batching the record is validated on the loop, then waits (without a thread of
        its own) for a batch, run by the batcher's worker thread or, for a model measured
        to take under ``Batching.inline_ms`` per batch, on the loop itself by the task that
        leads it; ``timeout_ms`` as in :meth:`predict`.
        """
        pipe = self._pipe  # _pipeline()'s common case, without its frame (as in predict)
        if self._state is not HandleState.OPEN or not pipe.acquire():
            pipe = self._pipeline()
        batcher = pipe.batcher
        if batcher is None:
            import asyncio  # here: importing asyncio costs start-up ~10 ms for sync users

            pipe.release()
            return await asyncio.to_thread(
                self.predict, record, details=details, timeout_ms=timeout_ms
            )
        self._obs.begin()
        call = FinishedCall(pipe.source, time.perf_counter())
        try:
            batch, _, unchecked = self._validate(pipe, call, record, True)
            item = BatchItem(batch, self._obs, 1, unchecked)
            out = self._joined(pipe, call, await batcher.asubmit(item, timeout_ms), True)
        except BaseException as exc:  # a cancelled task too: each begin needs its end
            self._end(call, exc)
            raise
        finally:
            pipe.release()
        self._sample = record
        self._end(call, show_id=details)
        if not details:
            return out
        return Prediction(out, call.request_id, pipe.mv.name, pipe.mv.version)  # type: ignore[arg-type]

    @staticmethod
    def _validate(
        pipe: Pipeline, call: FinishedCall, records: Any, one: bool
    ) -> tuple[Any, bool, bool]:
        """The validated batch, whether it is whole (tensors of a model that is not
        row-wise, not cut into rows) and whether its NaN/inf check is left to its batch.
        Raises :class:`SchemaError`.

        A plain float row (one row of the single input tensor, shape and dtype checked by
        ``quick_one``) skips the rest of validation: with batching its NaN/inf check is
        left to its batch, which checks all its rows at once (prepare_one 1.1 µs,
        quick_one 0.3 µs a row, timeit); without, it is checked here, and a row that
        fails is validated in full, for the error. A 1-row predict without batching:
        2.04x -> 1.93x raw session.run (bench_compare percall, docs/benchmarks.md "Issue
        13, the last guard rails")."""
        batched = pipe.batcher is not None
        batch = pipe.quick_one(records) if one and pipe.row_wise else None
        if batch is not None and (batched or pipe.rows_ok(batch)):
            call.inputs, call.rows, call.validated = batch, 1, time.perf_counter()
            return batch, False, batched
        if pipe.row_wise:
            batch = pipe.prepare_one(records) if one else pipe.prepare_many(records)
            call.rows, whole = 1 if one else n_rows(batch), False
        else:  # tensors whole; one example may get a batch axis (then whole is False)
            batch, whole = pipe.prepare_whole(records, one)
            call.rows = 1
        call.inputs, call.validated = batch, time.perf_counter()
        return batch, whole, False

    @staticmethod
    def _joined(
        pipe: Pipeline, call: FinishedCall, joined: tuple[BatchItem, float], row: bool
    ) -> Any:
        """This call's rows of the outputs of the batch the batcher ran it in, shaped for
        the caller as :meth:`_shape` does (``row``: one example's row).

        _shape's lines are repeated here, not called: with Pipeline.quick_one bound to the
        schema's method, two frames less per batched call (64 asyncio tasks, 1024-wide MLP,
        6 alternating processes: 1227 -> 1203 bytecodes a row, loop CPU 11.2-11.4 -> 11.0
        us a row)."""
        item, call.queue = joined
        out, off, size = item.out, item.offset, item.size
        call.batch_size, call.counts_batch, call.rows_offered = size, off == 0, True
        n = call.rows
        raw = out if size == n else take(out, slice(off, off + n))  # ran alone: all of it
        call.outputs, call.answered = raw, time.perf_counter()
        if pipe.plain:
            return take(raw, 0) if row else raw
        return pipe.row(raw, 0) if row else pipe.rows(raw, n)

    @staticmethod
    def _shape(pipe: Pipeline, call: FinishedCall, raw: Any, row: bool) -> Any:
        """Raw outputs -> what the caller gets (``row``: one example's row)."""
        call.outputs, call.answered = raw, time.perf_counter()
        if pipe.plain:  # Pipeline.row / rows without a schema, inlined
            return take(raw, 0) if row else raw
        return pipe.row(raw, 0) if row else pipe.rows(raw, call.rows)

    def _end(
        self, call: FinishedCall, error: BaseException | None = None, show_id: bool = False
    ) -> None:
        """Hand a finished call to the observer. ``show_id``: the caller sees the request
        id (made here, only then; a record sink that takes the call gets one anyway).
        Never raises."""
        if show_id:
            call.request_id = new_request_id()
        call.error, call.ended = error, time.perf_counter()
        try:
            self._obs.end(call)
        except Exception:  # pragma: no cover - observability must not break a prediction
            _log.exception("recording prediction %s failed", call.request_id)

    def batching_stats(self) -> BatchingStats | None:
        """Counters of dynamic batching (requests, batches, batch sizes, queue wait), or
        ``None`` when the handle was loaded without ``batching=``."""
        batcher = self._pipe.batcher
        return None if batcher is None else batcher.stats()

    # -- observability (see docs/observability.md)
    def add_hook(self, hook: Sink | Callable[[Any], Any]) -> Sink:
        """Attach a hook: a :class:`~embedml.observe.hooks.Sink` (``JsonlSink``, ``LoggingSink``,
        ``DriftMonitor``...) or a callable taking a :class:`~embedml.PredictionRecord`
        (run on a background thread). Returns the sink. Raises :class:`ConfigurationError`
        for anything else, :class:`HandleClosedError` on a closed handle.
        """
        if self._state is not HandleState.OPEN:
            raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
        if not callable(hook) and not isinstance(hook, Sink):
            raise ConfigurationError(f"a hook must be a Sink or a callable, got {hook!r}")
        sink = as_sink(hook)
        self._obs.add(sink, self)
        return sink

    def remove_hook(self, hook: Sink) -> bool:
        """Detach a sink (closing it if no other handle uses it); ``False`` if not attached."""
        return self._obs.remove(hook, self)

    @property
    def hooks(self) -> tuple[Sink, ...]:
        """The attached sinks."""
        return self._obs.sinks

    def metrics(self) -> dict[str, Any]:
        """A snapshot of this handle's metrics.

        Keys: ``model``, ``version``, ``format``, ``load_seconds``, ``uptime_seconds``,
        ``requests`` (calls), ``rows``, ``errors``, ``errors_by_type``, ``in_flight``,
        ``last_error``, ``latency_ms`` (per stage ``validation`` / ``queue`` / ``model`` /
        ``total``: ``count``, ``mean``, ``p50``, ``p90``, ``p99``), ``throughput``
        (requests and rows per second over the last minute), ``batch_size`` (model calls
        per power-of-two range of rows: with batching, each joined batch counts once, by the
        rows of all the calls it served; without, each call counts by its own rows), ``quality`` (see :meth:`log_outcome`; ``None`` before
        the first outcome), ``hooks`` (per-sink ``accepted`` / ``written`` /
        ``dropped`` / ``errors`` / ``abandoned`` / ``queued``) and ``abandoned`` (model
        calls that :meth:`close` or :meth:`swap` stopped waiting for, their threads left
        to finish on their own).
        """
        pipe = self._pipe
        snap = self._obs.metrics.snapshot()
        return {
            "model": pipe.mv.name, "version": pipe.mv.version, "format": self.format,
            "load_seconds": round(pipe.load_seconds, 6), **snap,
            "quality": self._obs.quality.snapshot(),
            "hooks": [s.stats() for s in self._obs.sinks],
            "abandoned": self._abandoned,
        }  # fmt: skip

    def health(self) -> dict[str, Any]:
        """Readiness for probes: ``ready`` (open, and warmed up or has served a call),
        ``loaded``, ``warmed_up``, ``model``, ``version``, ``requests``, ``errors`` and
        ``last_error`` (``{"type", "message", "time"}`` or ``None``)."""
        m = self._obs.metrics
        loaded = self._state is HandleState.OPEN
        served = m.requests > m.errors
        return {
            "ready": loaded and (self._warmed or served),
            "loaded": loaded,
            "warmed_up": self._warmed,
            "model": self.name,
            "version": self.version,
            "requests": m.requests,
            "errors": m.errors,
            "last_error": None if m.last_error is None else dict(m.last_error),
        }

    def warmup(self, n: int = 1) -> float:
        """Run ``n`` single-row calls on synthetic inputs built from the input schema, so
        the first real call does not pay for lazy initialisation. Warm-up calls are not
        counted in metrics nor sent to hooks. Returns the seconds taken. Raises
        :class:`ConfigurationError` (no schema to build inputs from, or ``n < 1``) and the
        errors of :meth:`predict_batch`.
        """
        if int(n) < 1:
            raise ConfigurationError(f"warmup(n) needs n >= 1, got {n!r}")
        pipe = self._pipeline()
        start = time.perf_counter()
        try:
            records = synthetic_batch(pipe.input_schema, 1)
            for _ in range(int(n)):
                if pipe.row_wise:
                    pipe.rows(pipe.run(pipe.prepare_many(records), 1), 1)
                else:
                    pipe.rows(pipe.run(pipe.prepare_whole(records, False)[0], 1, True), 1)
        finally:
            pipe.release()
        self._warmed = True
        return time.perf_counter() - start

    def log_outcome(self, request_id: str, y_true: Any) -> dict[str, Any]:
        """Join the ground truth of an earlier call with its prediction.

        ``request_id`` is ``predict(..., details=True).request_id`` (also in every
        :class:`~embedml.PredictionRecord`); ``y_true`` is the true value (one per row for
        ``predict_batch``). The result feeds a sliding window of accuracy (classifiers) or
        MAE / RMSE (regressors), shown in ``metrics()["quality"]``. The handle remembers
        the outputs of its last 10,000 predicted rows (a call of more rows is not
        remembered). Raises :class:`RequestNotFoundError` for an unknown,
        forgotten or already joined id, :class:`SchemaError` when ``y_true`` has the wrong
        number of values.
        """
        return self._obs.quality.join(request_id, y_true, self._pipe.label)

    def reference_profile(self) -> Any:
        """The reference profile saved with this version (``store.save(...,
        reference_data=X)``), verified against the manifest's SHA-256, or ``None``."""
        mv = self._pipe.mv
        if self._store is None or PROFILE_FILE not in mv.manifest.extra_files:
            return None
        return ReferenceProfile.from_json(self._store.read_extra_file(mv, PROFILE_FILE))

    # -- versions
    def swap(
        self, version: str | int = "latest", *, warmup: Any = None, timeout: float = 30.0
    ) -> str:
        """Serve another version of the same model, without dropping or pausing a call.

        Resolves ``version`` (a spec such as ``"2"``, ``"latest"`` or ``"@production"``),
        loads it fully and warms it up by predicting ``warmup`` (default: the last record
        ``predict`` succeeded on, if any) before switching. Calls already running finish on the
        old version, which is closed once they are done; new calls go to the new one. Use
        ``predict(..., details=True)`` to see which version produced a result. When no call
        is left on the old version but its batcher still runs a batch (for callers who
        stopped waiting), ``swap`` waits at most ``timeout`` seconds for it, then abandons
        it (logged, counted in ``metrics()["abandoned"]``): the old version is released by
        that thread if the model ever returns.

        Returns the version now served. Raises the errors of :meth:`ModelStore.load`, and
        :class:`SchemaError` / :class:`PredictionError` if the warm-up fails, in which case
        the old version keeps serving. Raises :class:`HandleClosedError` on a closed handle.
        """
        if self._store is None:
            raise ConfigurationError("this handle was not opened from a store; it cannot swap")
        if self._state is not HandleState.OPEN:
            raise HandleClosedError(f"the handle for {self._pipe.label} is closed")
        mv = self._store.resolve(self.name, version, **self._options.resolve_options())
        return self._swap_to(mv, warmup, timeout)

    def _swap_to(self, mv: ModelVersion, warmup: Any = None, timeout: float = 30.0) -> str:
        current = self._pipe
        if mv.version == current.mv.version and mv.manifest.sha256 == current.mv.manifest.sha256:
            return mv.version
        new = (
            self._cache.pipeline(self._store, mv, self._options)
            if self._cache is not None
            else None
        )
        if new is None:
            new = build_pipeline(self._store, mv, self._options)  # type: ignore[arg-type]
        try:
            sample = warmup if warmup is not None else self._sample
            if sample is not None and new.row_wise:
                new.row(new.run(new.prepare_one(sample), 1), 0)
            elif sample is not None:
                batch, whole = new.prepare_whole(sample, True)
                new.run(batch, 1, whole)
        except BaseException:
            new.release()
            raise
        with self._lock:
            if self._state is not HandleState.OPEN:
                new.release()
                raise HandleClosedError(f"the handle for {current.label} is closed")
            old, self._pipe = self._pipe, new
        if old.release() and not old.wait_closed(timeout):
            self._abandon(old, "swap", timeout)
        return mv.version

    def _abandon(self, pipe: Pipeline, what: str, timeout: float) -> None:
        """``close`` or ``swap`` stopped waiting for a model call that does not return: a
        thread cannot be stopped, so it is left to finish on its own (counted, logged)."""
        self._abandoned += 1
        _log.error(
            "%s: a model call was still running %s s after %s(); abandoning its thread "
            "(it releases %s if the model ever returns)", pipe.label, timeout, what, pipe.label,
        )  # fmt: skip

    # -- lifecycle
    def close(self, timeout: float = 30.0) -> None:
        """Stop serving: new calls raise :class:`HandleClosedError`, calls already running or
        queued for a batch finish (waiting up to ``timeout`` seconds), every record accepted
        by the hooks is written out (sinks no other handle uses are closed), the alias
        follower of a ``follow=True`` handle stops, and the runtime is released once no call
        uses it. Idempotent. Never waits much longer than ``timeout`` in all: a sink or a
        follower's swap that does not finish by then is abandoned (logged; the sink counts
        the records it discarded), and so is a model call that does not return (logged,
        counted in ``metrics()["abandoned"]``; its thread releases the version if the model
        ever returns)."""
        with self._lock:
            if self._state is HandleState.CLOSED:
                return
            self._state = HandleState.CLOSED
            follower = self._follower
        deadline = time.monotonic() + timeout
        if follower is not None:
            follower.stop(timeout)
        pipe = self._pipe
        last = pipe.release()
        drained = self._obs.drain(max(0.0, deadline - time.monotonic()))
        left = max(0.0, deadline - time.monotonic())
        if not drained or ((last or pipe.unused) and not pipe.wait_closed(left)):
            self._abandon(pipe, "close", timeout)
        self._obs.close(self, deadline)

    def __enter__(self) -> ModelHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- streaming (see embedml.serving.stream)
    def predict_stream(
        self,
        records: Any,
        *,
        batch_size: int = 64,
        max_wait_ms: float = 10.0,
        on_error: str = "raise",
    ) -> Any:
        """Yield a result per record of an iterable, in order, scored in micro-batches.

        See :func:`embedml.offline.streaming.predict_stream` (bounded memory, ``on_error``).
        """
        return predict_stream(
            self, records, batch_size=batch_size, max_wait_ms=max_wait_ms, on_error=on_error  # type: ignore[arg-type]
        )

    def apredict_stream(
        self,
        records: Any,
        *,
        batch_size: int = 64,
        max_wait_ms: float = 10.0,
        on_error: str = "raise",
    ) -> Any:
        """Async generator of results for an async iterable of records, in order.

        See :func:`embedml.offline.streaming.apredict_stream`.
        """
        return apredict_stream(
            self, records, batch_size=batch_size, max_wait_ms=max_wait_ms, on_error=on_error  # type: ignore[arg-type]
        )

"""Streaming prediction: micro-batch an endless iterator of records, results in input order.

:func:`predict_stream` takes a sync iterable, :func:`apredict_stream` an async one. Both
gather up to ``batch_size`` records, or fewer once ``max_wait_ms`` has passed since the
first record of the batch arrived, run one ``predict_batch`` call, and yield one result per
record in input order. Memory is bounded: at most ``2 * batch_size`` records wait to be
scored, so a fast producer is slowed to the model's pace (back-pressure).

A record that fails validation (or on which the model raises) does not poison the rest of
its batch: the batch is bisected until the bad records are isolated (:func:`predict_rows`),
so good records are scored with few extra calls. :func:`predict_batch_or_rows` is the same
"one call for the batch, isolate the bad rows if it fails" step for file scoring and the Ray
integration (internal to the package).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from ..errors import ConfigurationError, EmbedMLError, PredictionError, SchemaError
from ..schema import NamedTensors, Schema, TensorSchema
from ..tensors import take
from .isolation import bisect_failures

__all__ = [
    "Predictor",
    "Scored",
    "as_batch",
    "apredict_stream",
    "predict_batch_or_rows",
    "predict_rows",
    "predict_stream",
    "row_error",
    "split_rows",
]


class Predictor(Protocol):
    """What a stream needs of a handle (:class:`~embedml.ModelHandle` is one): the stream
    engine sits below the handle, which calls it from ``predict_stream``."""

    @property
    def input_schema(self) -> Schema: ...

    def predict_batch(self, records: Any, *, details: bool = False) -> Any: ...

    def check_row_wise(self, what: str) -> None: ...


OnError = Literal["raise", "yield"]
_END = object()
_EMPTY = object()


def split_rows(out: Any, n: int) -> list[Any]:
    """One result per row of a ``predict_batch`` result (list, array, dict or tuple)."""
    if isinstance(out, list):
        return out
    if isinstance(out, np.ndarray):
        return list(out)  # the same rows as take(), several times faster
    return [take(out, i) for i in range(n)]


def as_batch(handle: Predictor, records: Sequence[Any]) -> Any:
    """Records -> what ``predict_batch`` takes: multi-input tensor models want one dict of
    stacked arrays, not a list of dicts; everything else takes the list as it is."""
    schema = handle.input_schema
    names = None
    if isinstance(schema, TensorSchema) and not schema.single:
        names = [s.name for s in schema.specs]
    elif isinstance(schema, NamedTensors) and len(schema.input_names) > 1:
        names = list(schema.input_names)
    if names is not None:
        try:
            return {n: np.stack([np.asarray(r[n]) for r in records]) for n in names}
        except (KeyError, TypeError, ValueError, IndexError):
            pass  # the schema check below names what is wrong
    return list(records)


def row_error(exc: Exception) -> EmbedMLError | None:
    """The error to report for the records of a failed ``predict_batch``, or ``None`` when
    ``exc`` is not about them (a closed handle, a full queue...) and must propagate.

    :class:`SchemaError` and :class:`PredictionError` are the records' errors. Any other
    non-embedml exception can only come from checking the records (the model's own are
    already :class:`PredictionError`): a hostile value that trips a bug, or nesting deep
    enough for ``RecursionError``. It becomes a :class:`SchemaError` that names it, so one
    such record is rejected like any other bad record instead of ending the whole job.
    """
    if isinstance(exc, SchemaError | PredictionError):
        return exc
    if isinstance(exc, EmbedMLError):
        return None
    try:
        text = str(exc)
    except Exception:  # a hostile __str__ must not replace the error it describes
        text = "?"
    error = SchemaError(f"the record could not be validated ({type(exc).__name__}: {text[:200]})")
    error.__cause__ = exc
    return error


@dataclass(frozen=True, slots=True)
class Scored:
    """One record's result from :func:`predict_rows` with ``versions=True``: the output
    and the version that produced it (during a hot swap, parts of one batch may be
    scored by different versions)."""

    output: Any
    version: str


def predict_rows(
    handle: Predictor, records: Sequence[Any], *, versions: bool = False
) -> list[Any]:
    """Predict ``records`` and return one entry per record: its result, or the
    :class:`SchemaError` / :class:`PredictionError` that record alone raises.

    One ``predict_batch`` call when the whole batch is good; otherwise the batch is
    bisected, so ``k`` bad records cost about ``2k log2(n)`` extra calls and the good ones
    are still scored in batches. The errors' ``index`` is the position in ``records``.
    An unexpected exception raised while checking one record is that record's
    :class:`SchemaError` (see :func:`row_error`). Other embedml errors (a closed handle,
    ...) are raised. With ``versions=True`` each result is a :class:`Scored` (output and
    the version that produced it; the handle must take ``details=True``).
    """

    def run(part: Sequence[Any]) -> list[Any]:
        if not versions:
            return split_rows(handle.predict_batch(as_batch(handle, part)), len(part))
        made = handle.predict_batch(as_batch(handle, part), details=True)
        return [Scored(row, made.version) for row in split_rows(made.output, len(part))]

    results = bisect_failures(records, run, row_error)
    for i, result in enumerate(results):
        if isinstance(result, EmbedMLError):
            result.index = i  # type: ignore[attr-defined]
    return results


def predict_batch_or_rows(
    handle: Predictor, batch: Any, records: Callable[[], Sequence[Any]]
) -> tuple[Any, list[Any] | None]:
    """Predict a chunk of rows the fast way when every row is good, else row by row.

    ``batch`` is the chunk in the form ``predict_batch`` takes fastest (a DataFrame, a
    matrix, the records themselves) or ``None`` to skip that try; ``records()`` gives the
    same rows as a list of records, built only if needed. Returns ``(out, None)`` with the
    whole chunk's output when one call succeeded, else ``(None, results)`` from
    :func:`predict_rows`: one entry per row, its output row or its error. Shared by
    :func:`embedml.score` and the Ray integration, so that both isolate bad rows the same
    way; errors that are not about the rows (:func:`row_error`) are raised.
    """
    if batch is not None:
        try:
            return handle.predict_batch(batch), None
        except Exception as exc:
            if row_error(exc) is None:
                raise
    return None, predict_rows(handle, records())


def _check(batch_size: int, max_wait_ms: float, on_error: str) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not max_wait_ms >= 0:
        raise ConfigurationError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
    if on_error not in ("raise", "yield"):
        raise ConfigurationError(f"on_error must be 'raise' or 'yield', got {on_error!r}")


def _rows_only(handle: Any) -> None:
    """Micro-batches join records into rows: refuse a model that is not row-wise."""
    check = getattr(handle, "check_row_wise", None)
    if check is not None:
        check("a stream (micro-batches join its records into rows)")


def _emit(results: list[Any], offset: int, on_error: str) -> Iterator[Any]:
    for result in results:
        if isinstance(result, SchemaError | PredictionError):
            result.index = offset + (result.index or 0)
            if on_error == "raise":
                raise result
        yield result


def predict_stream(
    handle: Predictor,
    records: Iterable[Any],
    *,
    batch_size: int = 64,
    max_wait_ms: float = 10.0,
    on_error: OnError = "raise",
) -> Iterator[Any]:
    """Yield ``handle``'s result for each record of ``records``, in order, micro-batching.

    A reader thread pulls from ``records`` into a queue of at most ``2 * batch_size``
    records; a batch is scored when it is full, or ``max_wait_ms`` after its first record
    arrived, or when the input ends. With ``on_error="raise"`` (default) a bad record raises
    its :class:`SchemaError` / :class:`PredictionError` (``index`` = its position in the
    stream) after the results before it; with ``"yield"`` the error is yielded in its place
    and the stream goes on. An exception from the input iterable itself is re-raised.
    Closing the generator early stops the reader thread (unless the input iterable itself
    blocks forever; the thread is a daemon). Raises :class:`ConfigurationError` for bad
    arguments.
    """
    _check(batch_size, max_wait_ms, on_error)
    _rows_only(handle)
    return _stream(handle, records, batch_size, max_wait_ms / 1000.0, on_error)


class _Gather:
    """One micro-batch being gathered from the reader's queue (shared by both streams)."""

    __slots__ = ("batch", "done", "failure", "size")

    def __init__(self, size: int) -> None:
        self.batch: list[Any] = []
        self.failure: BaseException | None = None
        self.done = False
        self.size = size

    def take(self, item: Any) -> bool:
        """Add one queue item; ``True`` when the batch is complete (end, failure or full)."""
        if item is _END:
            self.done = True
            return True
        if isinstance(item, BaseException):
            self.failure = item
            return True
        self.batch.append(item[0])
        return len(self.batch) >= self.size


class _Handoff:
    """A bounded one-producer / one-consumer buffer between the reader thread and the stream.

    ``deque.append`` / ``popleft`` are atomic in CPython, so the common path takes no lock
    (a ``queue.Queue`` costs two lock round-trips per record, which dominated small models);
    the events are touched only when one side has to wait.
    """

    def __init__(self, capacity: int) -> None:
        self.items: collections.deque[Any] = collections.deque()
        self.capacity = capacity
        self.ready = threading.Event()  # set when an item may be waiting
        self.space = threading.Event()  # set when there may be room
        self.stop = threading.Event()

    def put(self, item: Any) -> bool:
        items = self.items
        while len(items) >= self.capacity:
            if self.stop.is_set():
                return False
            self.space.clear()
            if len(items) < self.capacity:  # the consumer took some after our check
                break
            self.space.wait(0.05)
        if self.stop.is_set():
            return False
        items.append(item)
        if not self.ready.is_set():
            self.ready.set()
        return True

    def get(self, deadline: float | None) -> Any:
        """The next item, or ``_EMPTY`` once ``deadline`` (monotonic) has passed."""
        items = self.items
        while True:
            try:
                item = items.popleft()
            except IndexError:
                pass
            else:
                if not self.space.is_set():
                    self.space.set()
                return item
            self.ready.clear()
            if items:  # appended between the pop and the clear
                continue
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return _EMPTY
            self.ready.wait(timeout)


def _stream(
    handle: Predictor, records: Iterable[Any], size: int, wait: float, on_error: str
) -> Iterator[Any]:
    buf = _Handoff(2 * size)

    def read() -> None:
        try:
            for record in records:
                if not buf.put((record,)):
                    return
            buf.put(_END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            buf.put(exc)

    reader = threading.Thread(target=read, name="embedml-stream-reader", daemon=True)
    reader.start()
    offset = 0
    try:
        gather = _Gather(size)
        while not gather.done:
            gather = _Gather(size)
            deadline = time.monotonic() + wait
            item = buf.get(None)
            while not gather.take(item):
                item = buf.get(deadline)
                if item is _EMPTY:
                    break
            if gather.batch:
                yield from _emit(predict_rows(handle, gather.batch), offset, on_error)
                offset += len(gather.batch)
            if gather.failure is not None:
                raise gather.failure
    finally:
        buf.stop.set()
        buf.space.set()
        reader.join(timeout=1.0)


def apredict_stream(
    handle: Predictor,
    records: AsyncIterable[Any],
    *,
    batch_size: int = 64,
    max_wait_ms: float = 10.0,
    on_error: OnError = "raise",
) -> AsyncIterator[Any]:
    """Async :func:`predict_stream`: consume an async iterable, yield results in order.

    A task pulls records into a queue of at most ``2 * batch_size``; each batch runs in a
    worker thread, so the event loop is never blocked by the model. ``on_error`` and the
    errors are as in :func:`predict_stream`. Closing the generator cancels the reader task.
    """
    _check(batch_size, max_wait_ms, on_error)  # at the call, not at the first iteration
    _rows_only(handle)
    return _astream(handle, records, batch_size, max_wait_ms / 1000.0, on_error)


async def _astream(
    handle: Predictor, records: AsyncIterable[Any], batch_size: int, wait: float, on_error: str
) -> AsyncIterator[Any]:
    import asyncio  # only async callers pay for it (import embedml and handles do not)

    q: asyncio.Queue[Any] = asyncio.Queue(maxsize=2 * batch_size)

    async def read() -> None:
        try:
            async for record in records:
                await q.put((record,))
            await q.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await q.put(exc)

    loop = asyncio.get_running_loop()
    reader = asyncio.ensure_future(read())
    offset = 0
    try:
        gather = _Gather(batch_size)
        while not gather.done:
            gather = _Gather(batch_size)
            deadline = loop.time() + wait
            item = await q.get()
            while not gather.take(item):
                try:
                    # cancelling a Queue.get is safe (unlike cancelling the source's __anext__)
                    item = await asyncio.wait_for(q.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            if gather.batch:
                results = await asyncio.to_thread(predict_rows, handle, gather.batch)
                for result in _emit(results, offset, on_error):
                    yield result
                offset += len(gather.batch)
            if gather.failure is not None:
                raise gather.failure
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader

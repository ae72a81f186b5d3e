"""``Shadow``: serve the primary's results while a shadow model sees the same traffic.

The caller gets the primary's result as if it had called the primary directly; the input
and that result are put on a bounded queue (without ever waiting: when the queue is full the
item is dropped and counted) and a background thread runs the shadow on it and compares.
:meth:`Shadow.stats` exposes the disagreement rate and mean absolute difference.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from typing import Any

from .._fork import LiveObjects
from ..errors import ConfigurationError, HandleClosedError

__all__ = ["Shadow"]

log = logging.getLogger("embedml.rollout.shadow")
_STOP = object()

# Live shadows: each starts again in a forked child (see Shadow._after_fork_in_child).
_LIVE: LiveObjects[Shadow] = LiveObjects("shadow")


class Shadow:
    """``Shadow(primary, shadow, queue_size=1000, rtol=1e-5, atol=1e-8)``.

    A row disagrees when its outputs differ: numbers beyond ``numpy.isclose(rtol, atol)``,
    anything else by ``!=``. ``mean_abs_diff`` is over every numeric output element compared.
    Errors of the shadow model are counted (``errors``) and logged, never raised. Same
    ``predict`` / ``predict_batch`` / ``apredict`` as a handle; ``close()`` stops the thread
    (pending items are discarded) but leaves both handles open.
    Raises :class:`ConfigurationError` for ``queue_size < 1``.
    """

    def __init__(
        self,
        primary: Any,
        shadow: Any,
        *,
        queue_size: int = 1000,
        rtol: float = 1e-5,
        atol: float = 1e-8,
    ) -> None:
        if not isinstance(queue_size, int) or queue_size < 1:
            raise ConfigurationError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.primary = primary
        self.shadow = shadow
        self.rtol, self.atol = rtol, atol
        self._closed = False
        self._size = queue_size
        self._start()
        _LIVE.add(self)

    def _start(self) -> None:
        """Fresh counters, queue and thread (at construction, and in a forked child, where
        the parent's thread does not exist: each process compares its own traffic)."""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self._size)
        self._lock = threading.Lock()
        self.submitted = self.dropped = self.errors = 0
        self.compared = self.disagreements = 0
        self._abs_sum = 0.0
        self._abs_count = 0
        self._thread = threading.Thread(target=self._run, name="embedml-shadow", daemon=True)
        self._thread.start()

    def _after_fork_in_child(self) -> None:
        if not self._closed:
            self._start()

    # -- caller side: never waits
    def _submit(self, many: bool, record: Any, result: Any, details: bool) -> None:
        output = result.output if details else result
        try:
            self._queue.put_nowait((many, record, output))
        except queue.Full:
            with self._lock:
                self.dropped += 1
            return
        with self._lock:
            self.submitted += 1

    def _check_open(self) -> None:
        if self._closed:
            raise HandleClosedError("this Shadow is closed")

    def predict(self, record: Any, *, details: bool = False) -> Any:
        """The primary's ``predict``; the shadow gets the record in the background."""
        self._check_open()
        result = self.primary.predict(record, details=details)
        self._submit(False, record, result, details)
        return result

    def predict_batch(self, records: Any, *, details: bool = False) -> Any:
        """The primary's ``predict_batch``; the shadow gets the batch in the background."""
        self._check_open()
        result = self.primary.predict_batch(records, details=details)
        self._submit(True, records, result, details)
        return result

    async def apredict(self, record: Any, *, details: bool = False) -> Any:
        """The primary's ``apredict``; the shadow gets the record in the background."""
        self._check_open()
        result = await self.primary.apredict(record, details=details)
        self._submit(False, record, result, details)
        return result

    # -- background side
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                many, record, expected = item
                try:
                    got = self.shadow.predict_batch(record) if many else self.shadow.predict(record)
                    rows, disagree, abs_sum, abs_count = _compare(
                        expected, got, many, self.rtol, self.atol
                    )
                except Exception as exc:
                    with self._lock:
                        self.errors += 1
                        first = self.errors == 1
                    log.log(
                        logging.WARNING if first else logging.DEBUG,
                        "shadow %r failed: %s: %s",
                        self.shadow,
                        type(exc).__name__,
                        exc,
                    )
                    continue
                with self._lock:
                    self.compared += rows
                    self.disagreements += disagree
                    self._abs_sum += abs_sum
                    self._abs_count += abs_count
            finally:
                self._queue.task_done()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted item has been compared, at most ``timeout`` seconds
        (``None``: as long as it takes); ``False`` on timeout."""
        # Queue.join() without its missing timeout: the same condition, which task_done()
        # notifies when the last unfinished item is done.
        q = self._queue
        with q.all_tasks_done:
            return q.all_tasks_done.wait_for(lambda: not q.unfinished_tasks, timeout)

    def stats(self) -> dict[str, float]:
        """``submitted``, ``dropped``, ``errors`` (items); ``compared``, ``disagreements``
        (rows); ``disagreement_rate`` and ``mean_abs_diff`` (NaN until something numeric
        was compared); ``queued`` (items waiting)."""
        with self._lock:
            return {
                "submitted": self.submitted, "dropped": self.dropped, "errors": self.errors,
                "compared": self.compared, "disagreements": self.disagreements,
                "disagreement_rate": self.disagreements / self.compared if self.compared else 0.0,
                "mean_abs_diff": self._abs_sum / self._abs_count if self._abs_count else float("nan"),
                "queued": self._queue.qsize(),
            }  # fmt: skip

    @property
    def name(self) -> str:
        """The primary's model name."""
        return self.primary.name

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop the shadow thread (discarding what is still queued) and wait for it, at most
        ``timeout`` seconds. Returns whether it stopped: a shadow model call that does not
        return is abandoned (logged; the thread ends if the call ever does). Idempotent."""
        with self._lock:
            if self._closed:
                return not self._thread.is_alive()
            self._closed = True
        while True:
            self._discard_queued()
            try:  # a caller that passed the closed check just before may refill the queue
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                continue
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error(
                "shadow %r did not stop within %s s (a call that hangs?); abandoning its thread",
                self.shadow,
                timeout,
            )
            return False
        return True

    def _discard_queued(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._queue.task_done()

    def __enter__(self) -> Shadow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Shadow primary={self.primary!r} shadow={self.shadow!r}>"


def _parts(output: Any) -> list[Any]:
    if isinstance(output, Mapping):
        return [output[k] for k in sorted(output)]
    if isinstance(output, tuple):
        return list(output)
    return [output]


def _compare(
    expected: Any, got: Any, many: bool, rtol: float, atol: float
) -> tuple[int, int, float, int]:
    """(rows, rows that disagree, sum of abs diffs, numeric elements compared)."""
    import numpy as np

    rows_bad: Any = None
    abs_sum, abs_count, n = 0.0, 0, 1
    exp_parts, got_parts = _parts(expected), _parts(got)
    if len(exp_parts) != len(got_parts):  # different output structure: every row disagrees
        from ..tensors import n_rows

        rows = max(n_rows(expected), 1) if many else 1
        return rows, rows, 0.0, 0
    for e, g in zip(exp_parts, got_parts):
        try:
            ea, ga = np.asarray(e), np.asarray(g)
            numeric = ea.dtype.kind in "biuf" and ga.dtype.kind in "biuf" and ea.shape == ga.shape
        except Exception:  # outputs numpy cannot hold (pydantic instances of odd shapes)
            numeric = False
        if numeric:
            if not many:
                ea, ga = ea[None], ga[None]
            n = len(ea)
            diff = np.abs(ea.astype(np.float64) - ga.astype(np.float64))
            abs_sum += float(diff.sum())
            abs_count += diff.size
            close = np.isclose(ea, ga, rtol=rtol, atol=atol).reshape(n, -1).all(axis=1)
            bad = ~close
        else:
            e_rows = list(e) if many else [e]
            g_rows = list(g) if many else [g]
            n = len(e_rows)
            if len(g_rows) != n:
                bad = np.ones(n, dtype=bool)
            else:
                bad = np.array([_differs(a, b) for a, b in zip(e_rows, g_rows)], dtype=bool)
        rows_bad = bad if rows_bad is None else (rows_bad | bad)
    return n, int(rows_bad.sum()) if rows_bad is not None else 0, abs_sum, abs_count


def _differs(a: Any, b: Any) -> bool:
    try:
        return bool(a != b)
    except Exception:  # arrays inside rows: any element
        import numpy as np

        return not np.array_equal(np.asarray(a), np.asarray(b))

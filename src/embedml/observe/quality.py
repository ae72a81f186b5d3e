"""Live model quality from late ground truth: ``handle.log_outcome(request_id, y_true)``.

The handle remembers the outputs of its most recent calls, up to ``pending`` rows in all
(oldest forgotten first; a single call of more rows is not remembered), so that memory
stays bounded whatever the batch sizes. When the truth for a request arrives it is joined with the prediction
and each row goes into a sliding window: accuracy (and error rate) when the predictions
are class labels or class probabilities, MAE and RMSE when they are numbers. The window
sums are updated in O(1) per row.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import weakref
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigurationError, RequestNotFoundError, SchemaError

__all__ = ["QualityTracker"]


def _predicted(out: Any) -> np.ndarray:
    """The comparable prediction of each row: labels, argmax of probabilities, or values."""
    if isinstance(out, dict):
        # multi-output models (e.g. skl2onnx classifiers: label + probabilities): the first
        out = next(iter(out.values()))
    elif isinstance(out, tuple):
        out = out[0]
    a = np.asarray(out)
    if a.ndim == 2 and a.shape[1] > 1 and a.dtype.kind == "f":
        return a.argmax(axis=1)
    return a.reshape(len(a), -1)[:, 0] if a.ndim > 1 else a


class QualityTracker:
    """Joins outcomes with remembered predictions; keeps a sliding window of per-row scores."""

    #: The trackers alive in this process (see :meth:`after_fork`).
    live: ClassVar[weakref.WeakSet[QualityTracker]] = weakref.WeakSet()

    def __init__(self, window: int = 1000, pending: int = 10_000) -> None:
        if int(window) < 1 or int(pending) < 0:
            raise ConfigurationError(
                f"quality window must be >= 1 and pending >= 0, got {window!r}, {pending!r}"
            )
        self.window = int(window)
        self.pending = int(pending)
        self._lock = threading.Lock()
        self._outputs: dict[str, Any] = {}
        # Remembered ids, oldest first, with their rows: bounded by rows, not calls, so a
        # stream of large batches cannot pin gigabytes of outputs.
        self._order: collections.deque[tuple[str, int]] = collections.deque()
        self._rows = 0
        self._task: str | None = None
        self._scores: collections.deque[float] = collections.deque()
        self._sum = 0.0
        self._sum_sq = 0.0
        self.outcomes = 0
        self.unknown = 0
        QualityTracker.live.add(self)

    @classmethod
    def after_fork(cls) -> None:
        """In a forked child: every tracker gets a fresh lock (a thread of the parent, such
        as a sink's writer remembering outputs, may have held one at the fork)."""
        for tracker in list(cls.live):
            tracker._lock = threading.Lock()

    def remember(self, request_id: str, outputs: Any, rows: int = 1) -> None:
        """Keep the outputs of one call of ``rows`` rows for a later :meth:`join`."""
        if rows > self.pending:
            return
        with self._lock:
            self._outputs[request_id] = outputs
            self._order.append((request_id, rows))
            self._rows += rows
            while self._rows > self.pending:
                old, n = self._order.popleft()
                self._rows -= n
                self._outputs.pop(old, None)  # None: already joined

    def join(self, request_id: str, y_true: Any, where: str) -> dict[str, Any]:
        """Score the prediction of ``request_id`` against ``y_true``; returns the per-call result.

        Raises :class:`RequestNotFoundError` if the id is unknown or forgotten, and
        :class:`SchemaError` if ``y_true`` does not have one value per predicted row.
        """
        with self._lock:
            outputs = self._outputs.pop(request_id, None)
            if outputs is None:
                self.unknown += 1
        if outputs is None:
            raise RequestNotFoundError(
                f"{where}: no prediction with request id {request_id!r} is remembered "
                f"(unknown, already joined, or not among the last {self.pending} rows predicted)"
            )
        pred = _predicted(outputs)
        truth = np.asarray(y_true)
        if truth.ndim == 0:
            truth = truth.reshape(1)
        if len(truth) != len(pred):
            with self._lock:
                self._outputs[request_id] = outputs  # let the caller retry with the right shape
            raise SchemaError(
                f"{where}: y_true has {len(truth)} value(s), request {request_id!r} predicted {len(pred)} row(s)",
                field="y_true",
            )
        classify = pred.dtype.kind in "biuUSOb" or truth.dtype.kind in "bUSO"
        if classify:
            scores = (pred.astype(object) == truth.astype(object)).astype(np.float64)
        else:
            scores = pred.astype(np.float64) - truth.astype(np.float64)
        task = "classification" if classify else "regression"
        with self._lock:
            self._task = self._task or task
            for s in scores.tolist():
                self._scores.append(s)
                self._sum += s if classify else abs(s)
                self._sum_sq += s * s
                if len(self._scores) > self.window:
                    old = self._scores.popleft()
                    self._sum -= old if classify else abs(old)
                    self._sum_sq -= old * old
            self.outcomes += 1
        return {"request_id": request_id, "task": task, "rows": len(scores)}

    def snapshot(self) -> dict[str, Any] | None:
        """Window metrics (``None`` before the first outcome)."""
        with self._lock:
            n = len(self._scores)
            if n == 0:
                return None
            base = {"task": self._task, "window": n, "outcomes": self.outcomes,
                    "pending": len(self._outputs), "unknown_ids": self.unknown}  # fmt: skip
            if self._task == "classification":
                acc = self._sum / n
                return {**base, "accuracy": round(acc, 6), "error_rate": round(1 - acc, 6)}
            return {**base, "mae": round(self._sum / n, 6),
                    "rmse": round(math.sqrt(max(self._sum_sq, 0.0) / n), 6)}  # fmt: skip


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=QualityTracker.after_fork)

"""Models for the batching tests (importable, so that saved instances load back).

Each wraps a fitted scikit-learn regressor and can be slowed down, poisoned by a marker
value, made to drop a row, or made to record every row that reached it.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

import numpy as np

POISON = 666.0

# First column of every row that reached a Probe, in this process (all Probes append here).
SEEN: list[float] = []
SEEN_LOCK = threading.Lock()


@functools.cache
def linreg() -> Any:
    """A LinearRegression fitted on 4 features: y = x @ [1, 2, 3, 4] + 0.5."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4))
    return LinearRegression().fit(X, X @ np.array([1.0, 2.0, 3.0, 4.0]) + 0.5)


def expected(X: np.ndarray) -> np.ndarray:
    return linreg().predict(np.atleast_2d(X))


class Probe:
    """A real regressor behind a configurable call: ``delay`` seconds of sleep per call,
    raises for a row whose first value is :data:`POISON`, ``drop_row`` returns one row
    too few, and every row's first value is recorded in :data:`SEEN`."""

    def __init__(self, delay: float = 0.0, drop_row: bool = False) -> None:
        self.inner = linreg()
        self.delay = delay
        self.drop_row = drop_row

    def predict(self, X: Any) -> Any:
        X = np.asarray(X, dtype=np.float64)
        with SEEN_LOCK:
            SEEN.extend(X[:, 0].tolist())
        if self.delay:
            time.sleep(self.delay)
        if (X[:, 0] == POISON).any():
            raise ValueError("poison record in the batch")
        out = self.inner.predict(X)
        return out[:-1] if self.drop_row else out


class RowSum:
    """Sums each row, whatever its length (a schemaless model with variable-length input);
    keeps the input dtype so that a batch joining ints and floats would show."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def predict(self, X: Any) -> Any:
        X = np.asarray(X)
        time.sleep(self.delay)
        return np.asarray([repr(row.sum().item()) for row in X])

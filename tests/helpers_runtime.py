"""Models for the hang and fork tests (importable, so that saved instances load back).

:class:`Gated` blocks in ``predict`` until the test sets :data:`GATE`: a model that hangs
for as long as the test wants, with no sleep and no timing involved.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

GATE = threading.Event()  # set by the test: every Gated call returns
ENTERED = threading.Event()  # set when a Gated call is in the model
RETURNED = threading.Event()  # set when a Gated call has returned

# Longest a Gated call waits for GATE: a test that fails still ends.
_LIMIT = 120.0


def reset() -> None:
    GATE.clear()
    ENTERED.clear()
    RETURNED.clear()


class Gated:
    """Returns the row sums, but only once :data:`GATE` is set."""

    def predict(self, X: Any) -> Any:
        ENTERED.set()
        GATE.wait(_LIMIT)
        RETURNED.set()
        return np.asarray(X, dtype=np.float64).sum(axis=1)


class RowSum:
    """Returns the row sums at once (the version a swap moves to)."""

    def predict(self, X: Any) -> Any:
        return np.asarray(X, dtype=np.float64).sum(axis=1)

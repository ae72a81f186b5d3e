"""Models and a format for the rollout tests (importable by child processes, like helpers_models).

``Affine(k)`` predicts ``k * row sum``, so a result tells which version produced it. The
``tracked`` format is joblib whose runtimes record when they are closed, so tests can see
that a swapped-out or evicted model is really released.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from embedml.formats import FormatOptions, Runtime, register_format
from embedml.formats.pickle import JoblibFormat

# Events that Blocking models wait on, by tag (the loaded copy is another object).
EVENTS: dict[str, threading.Event] = {}
# Events that Blocking models set as a call enters them (it is in flight), by tag.
STARTED: dict[str, threading.Event] = {}
# FakeClocks that Ticking models move, by tag.
CLOCKS: dict[str, Any] = {}
# Runtimes of the tracked format that were closed, by the artifact's tag.
CLOSED: list[str] = []


class Affine:
    """``k * row sum``: results identify the version (each version saves another ``k``)."""

    def __init__(self, k: float) -> None:
        self.k = k

    def predict(self, X: Any) -> Any:
        return self.k * np.asarray(X, dtype=np.float64).sum(axis=1)


class Blocking(Affine):
    """Like ``Affine`` but each call first waits for ``EVENTS[tag]`` (set by the test)."""

    def __init__(self, k: float, tag: str) -> None:
        super().__init__(k)
        self.tag = tag

    def predict(self, X: Any) -> Any:
        STARTED.setdefault(self.tag, threading.Event()).set()
        EVENTS.setdefault(self.tag, threading.Event()).wait()
        return super().predict(X)


class Ticking(Affine):
    """Like ``Affine`` but each call moves ``CLOCKS[tag]`` (a FakeClock set by the test)
    forward by ``seconds``: a model call that "takes" that long on the test's clock."""

    def __init__(self, k: float, tag: str, seconds: float) -> None:
        super().__init__(k)
        self.tag, self.seconds = tag, seconds

    def predict(self, X: Any) -> Any:
        CLOCKS[self.tag].advance(self.seconds)
        return super().predict(X)


class SlowToLoad(Affine):
    """Takes ``delay`` seconds to unpickle: two loads at once would overlap."""

    LOADS: list[float] = []

    def __init__(self, k: float, delay: float) -> None:
        super().__init__(k)
        self.delay = delay

    def __setstate__(self, state: dict[str, Any]) -> None:
        SlowToLoad.LOADS.append(state["k"])
        time.sleep(state["delay"])
        self.__dict__.update(state)


class _TrackedRuntime(Runtime):
    def __init__(self, inner: Runtime, tag: str) -> None:
        self.inner, self.tag = inner, tag

    def predict(self, inputs: Any) -> Any:
        return self.inner.predict(inputs)

    def close(self) -> None:
        CLOSED.append(self.tag)


class TrackedFormat(JoblibFormat):
    """joblib, with runtimes that record their ``close()`` in ``CLOSED`` (tag: ``k``)."""

    name = "tracked"
    suffixes = (".tracked",)

    def claims(self, obj: Any) -> bool:
        return False

    def load(self, data: bytes, options: FormatOptions) -> Runtime:
        inner = super().load(data, options)
        return _TrackedRuntime(inner, str(inner.model.k))  # type: ignore[attr-defined]


register_format(TrackedFormat, replace=True)

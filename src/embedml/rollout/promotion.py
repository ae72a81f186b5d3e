"""``Gate``: the check a version must pass before :meth:`ModelStore.promote` moves an alias.

A gate scores the candidate on a holdout set ``(X, y)`` with ``metric(y_true, y_pred)``
(higher is better). ``min_score`` is an absolute floor; ``max_drop`` the largest tolerated
drop below the score of the version the alias points to now (``max_drop=0.01``: "no more
than 0.01 worse"). A failing gate raises :class:`GateFailedError` carrying the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, GateFailedError
from ..serving.load import open_handle
from ..serving.options import LoadOptions
from ..store import ModelVersion, Store

__all__ = ["Gate"]


@dataclass
class Gate:
    """A promotion check: ``Gate(metric, X, y, min_score=None, max_drop=None)``.

    ``y_pred`` is what ``handle.predict_batch(X)`` returns. ``load_options`` (a
    :class:`~embedml.serving.options.LoadOptions`, or a dict of its fields such as
    ``{"method": "predict"}``) load both versions; a dict is turned into ``LoadOptions``
    when the gate is made. Raises :class:`ConfigurationError` for a non-callable metric,
    a negative ``max_drop`` or a bad load option, ``TypeError`` for an unknown one.
    """

    metric: Callable[[Any, Any], float]
    X: Any
    y: Any
    min_score: float | None = None
    max_drop: float | None = None
    load_options: LoadOptions | Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.load_options = LoadOptions.of(self.load_options)
        if not callable(self.metric):
            raise ConfigurationError(f"metric must be a callable (y_true, y_pred) -> float, got {self.metric!r}")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise ConfigurationError(f"max_drop must be >= 0 (a tolerated drop), got {self.max_drop!r}")

    def score(self, store: Store, mv: ModelVersion) -> float:
        """Load ``mv``, predict the holdout set and return the metric."""
        options = LoadOptions.of(self.load_options)
        with open_handle(store, mv.name, mv.version, options) as handle:
            value = float(self.metric(self.y, handle.predict_batch(self.X)))
        if math.isnan(value):
            raise GateFailedError(f"metric of {mv} is NaN", scores={"candidate": value})
        return value

    def evaluate(self, store: Store, candidate: ModelVersion, current: str | None) -> dict[str, Any]:
        """Score ``candidate`` (and ``current``, the version the alias points to, if any).

        Returns the scores; raises :class:`GateFailedError` with them if a bound is missed.
        """
        scores: dict[str, Any] = {
            "metric": getattr(self.metric, "__name__", repr(self.metric)),
            "candidate_version": candidate.version,
            "candidate": self.score(store, candidate),
            "current_version": current,
            "current": None,
            "min_score": self.min_score,
            "max_drop": self.max_drop,
        }
        failures = []
        if self.min_score is not None and scores["candidate"] < self.min_score:
            failures.append(f"score {scores['candidate']:.6g} is below min_score {self.min_score}")
        if self.max_drop is not None and current is not None:
            scores["current"] = self.score(store, store.resolve(candidate.name, current))
            drop = scores["current"] - scores["candidate"]
            scores["drop"] = drop
            if drop > self.max_drop:
                failures.append(
                    f"score {scores['candidate']:.6g} is {drop:.6g} below {current}'s "
                    f"{scores['current']:.6g} (max_drop {self.max_drop})"
                )
        if failures:
            raise GateFailedError(
                f"{candidate} failed its promotion gate: {'; '.join(failures)}", scores=scores
            )
        return scores

"""Traffic splitting between handles: ``ABTest`` (named arms, weights) and ``Canary``.

Both have a handle's ``predict`` / ``predict_batch`` / ``apredict``, so application code
does not change. With ``key`` (a field name, or a callable taking a record), each record is
routed by a hash of its key, so the same user always meets the same arm, in every process;
without a key the split is random per record. Each arm keeps its own metrics (requests,
rows, errors, latency). The routers do not own the handles: ``close()`` leaves them open.
"""

from __future__ import annotations

import bisect
import collections
import functools
import itertools
import numbers
import random
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..clock import SYSTEM_CLOCK, Clock, check_clock
from ..errors import ConfigurationError, PredictionError, SchemaError
from ..tensors import ClassProbabilities

__all__ = ["ABTest", "Canary"]

Key = str | Callable[[Any], Any] | None


_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads CRC-32 values over 64 bits
_MASK = (1 << 64) - 1
_MEMO = 100_000
_REAL_TYPES: dict[type, bool] = {}  # type -> is it a real number type (an ABC check is slow)


def key_fraction(value: Any, salt: str = "") -> float:
    """A stable, uniform number in ``[0, 1)`` for a key value (same in every process).

    ``str(value)`` is hashed, so ``42`` and ``"42"`` (or ``np.int64(42)``) route alike.
    CRC-32 with a multiplicative mix rather than a cryptographic hash: it runs on every
    call, and routing needs spread, not secrecy.
    """
    h = zlib.crc32(str(value).encode(), zlib.crc32(salt.encode()) if salt else 0)
    return (((h * _GOLDEN) & _MASK) >> 11) * (1.0 / (1 << 53))


class ArmStats:
    """Counters and recent latencies of one arm (thread-safe).

    The one-record path takes no lock (it runs on every call): ``next()`` on an
    ``itertools.count`` and ``deque.append`` are atomic in CPython.
    """

    def __init__(self, window: int = 4096) -> None:
        self.requests_counter = itertools.count()
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self._batch_calls = 0
        self._batch_rows = 0
        self._errors = 0

    def one(self, seconds: float) -> None:
        """A successful one-record call."""
        next(self.requests_counter)
        self.recent.append(seconds)

    def add(self, rows: int, seconds: float, failed: bool, batch: bool = True) -> None:
        """Any other call: a batch, or a failure."""
        next(self.requests_counter)
        self.recent.append(seconds)
        with self._lock:
            if batch:
                self._batch_calls += 1
                self._batch_rows += rows
            self._errors += failed

    def snapshot(self) -> dict[str, float]:
        requests = int(repr(self.requests_counter)[6:-1])  # "count(N)": reading does not count
        recent = sorted(self.recent)
        n = len(recent)
        with self._lock:
            rows = requests - self._batch_calls + self._batch_rows
            out: dict[str, float] = {"requests": requests, "rows": rows, "errors": self._errors}
        out["mean_ms"] = 1000 * sum(recent) / n if n else 0.0
        out["p50_ms"] = 1000 * recent[n // 2] if n else 0.0
        out["p99_ms"] = 1000 * recent[min(n - 1, int(n * 0.99))] if n else 0.0
        return out


class ABTest:
    """Split traffic between named handles: ``ABTest({"a": h1, "b": h2}, weights=[0.5, 0.5])``.

    ``weights``: one non-negative number per arm (a sequence in arm order, or a mapping by
    arm name; default equal), normalised to fractions. ``key``: a field name or a callable
    ``record -> value`` for sticky routing, ``None`` for random. ``salt`` changes the split
    (use a different one per experiment so users are not always grouped alike).
    :meth:`metrics` gives per-arm counts and latencies, measured on ``clock`` (an
    :class:`embedml.clock.Clock`). Raises :class:`ConfigurationError`
    for bad arms or weights, and :class:`SchemaError` when a record lacks the key field.
    """

    def __init__(
        self,
        arms: Mapping[str, Any],
        weights: Sequence[float] | Mapping[str, float] | None = None,
        *,
        key: Key = None,
        salt: str = "",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(arms, Mapping) or not arms:
            raise ConfigurationError("arms must be a non-empty mapping of name -> handle")
        for arm, handle in arms.items():
            if not callable(getattr(handle, "predict", None)):
                raise ConfigurationError(f"arm {arm!r} is not a handle (no predict method)")
        if key is not None and not isinstance(key, str) and not callable(key):
            raise ConfigurationError(f"key must be a field name, a callable or None, got {key!r}")
        self.arms: dict[str, Any] = dict(arms)
        self.key = key
        self._now = check_clock(clock).monotonic  # the system clock's is time.monotonic itself
        self.salt = salt
        # key value -> hash fraction, for returning users: bounded LRUs (see _fraction). The
        # standard library's (C, thread-safe) costs 43 ns per hit of an int key; cachetools'
        # LRUCache with the lock it needs between threads costs 312 ns, more than hashing the
        # key again (253 ns; a float key: 1.2 µs).
        fraction = functools.partial(key_fraction, salt=salt)
        self._memo = functools.lru_cache(maxsize=_MEMO)(fraction)
        self._memo_typed = functools.lru_cache(maxsize=_MEMO, typed=True)(fraction)
        self._stats = {arm: ArmStats() for arm in self.arms}
        self.set_weights(weights)

    # -- configuration
    def set_weights(self, weights: Sequence[float] | Mapping[str, float] | None) -> None:
        """Change the split while serving (e.g. ramp a canary up); raises :class:`ConfigurationError`."""
        names = list(self.arms)
        if weights is None:
            values = [1.0] * len(names)
        elif isinstance(weights, Mapping):
            unknown = set(weights) - set(names)
            if unknown:
                raise ConfigurationError(f"weights name unknown arms {sorted(unknown)}; arms: {names}")
            values = [weights.get(n, 0.0) for n in names]
        else:
            values = list(weights)
            if len(values) != len(names):
                raise ConfigurationError(f"{len(values)} weights for {len(names)} arms {names}")
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ConfigurationError(f"weights must be numbers, got {weights!r}") from None
        total = sum(values)
        if any(not v >= 0 for v in values) or not total > 0:
            raise ConfigurationError(f"weights must be >= 0 with a positive sum, got {values}")
        bounds, acc = [], 0.0
        for v in values:
            acc += v / total
            bounds.append(acc)
        bounds[-1] = 1.0
        # One assignment, so a concurrent call sees either the old or the new split.
        self._split = (tuple(bounds), tuple(names))

    @property
    def weights(self) -> dict[str, float]:
        """The fraction of traffic each arm gets."""
        bounds, names = self._split
        return {n: b - (bounds[i - 1] if i else 0.0) for i, (n, b) in enumerate(zip(names, bounds))}

    # -- routing
    def _key_of(self, record: Any, index: int | None = None) -> Any:
        key = self.key
        if callable(key):
            return key(record)
        try:
            return record[key] if isinstance(record, Mapping) else getattr(record, key)  # type: ignore[arg-type]
        except (KeyError, AttributeError, TypeError):
            raise SchemaError(
                f"record has no routing key field {key!r}", field=key, index=index
            ) from None

    def _pick(self, u: float) -> str:
        bounds, names = self._split
        return names[bisect.bisect_right(bounds, u)]  # u < 1.0 == bounds[-1]

    def _fraction(self, value: Any) -> float:
        """``key_fraction`` of a key value, remembered for the ``_MEMO`` most recent strings
        and numbers of each kind. Equal values that print differently must not share an
        entry, or a key would route by whichever of them came first: ``1``, ``1.0``, ``True``
        and ``np.float32(1)`` get one entry per type, float zeros (``0.0``, ``-0.0``) none,
        and other values (tuples, decimals, objects) are hashed every time."""
        kind = type(value)
        if kind is str or kind is int:
            return self._memo(value)  # type: ignore[no-any-return]
        real = _REAL_TYPES.get(kind)
        if real is None:
            real = _REAL_TYPES[kind] = issubclass(kind, numbers.Real)
        if real and value:  # a nonzero number
            return self._memo_typed(value)  # type: ignore[no-any-return]
        return key_fraction(value, self.salt)

    def arm_for(self, record: Any) -> str:
        """The arm a record goes to (random without a key); use it to log outcomes per arm."""
        # Runs on every call: kept flat (each Python call costs ~0.1 µs, a sizeable share
        # of a small model's latency).
        key = self.key
        if key is None:
            u = random.random()
        else:
            if type(record) is dict and type(key) is str and key in record:
                value = record[key]
            else:
                value = self._key_of(record)
            kind = type(value)
            u = self._memo(value) if kind is str or kind is int else self._fraction(value)
        bounds, names = self._split
        return names[bisect.bisect_right(bounds, u)]  # u < 1.0 == bounds[-1]

    def _row_arms(self, records: Any, n: int) -> list[str]:
        if self.key is None:
            return [self._pick(random.random()) for _ in range(n)]
        if isinstance(self.key, str) and not isinstance(records, list | tuple):
            try:  # a DataFrame or a dict of arrays: read the key column
                column = records[self.key]
            except (KeyError, TypeError, IndexError, ValueError):
                raise SchemaError(f"batch has no routing key column {self.key!r}", field=self.key) from None
            return [self._pick(self._fraction(v)) for v in list(column)]
        from ..tensors import take

        rows = records if isinstance(records, list | tuple) else [take(records, i) for i in range(n)]
        return [self._pick(self._fraction(self._key_of(r, i))) for i, r in enumerate(rows)]

    # -- calls
    def _call(self, arm: str, fn: Callable[[], Any], rows: int) -> Any:
        start = self._now()
        failed = True
        try:
            out = fn()
            failed = False
            return out
        finally:
            self._stats[arm].add(rows, self._now() - start, failed)

    def predict(self, record: Any, *, details: bool = False) -> Any:
        """Predict one record on the arm it routes to (see ``ModelHandle.predict``)."""
        arm = self.arm_for(record)
        now = self._now
        start = now()
        try:
            out = self.arms[arm].predict(record, details=details)
        except BaseException:
            self._stats[arm].add(1, now() - start, True, batch=False)
            raise
        stats = self._stats[arm]
        next(stats.requests_counter)  # ArmStats.one, inlined
        stats.recent.append(now() - start)
        return out

    def predict_batch(self, records: Any, *, details: bool = False) -> Any:
        """Predict a batch, each record on its own arm; results come back in input order.

        With ``details=True`` the :class:`Prediction`'s ``version`` names every version
        that served part of the batch, joined by ``","`` (use :meth:`arm_for` per record).
        """
        from ..tensors import n_rows

        n = n_rows(records)
        if n < 0:
            raise SchemaError("predict_batch needs a batch (a list, array, DataFrame or dict of arrays)")
        for handle in self.arms.values():  # rows go to arms one by one
            check = getattr(handle, "check_row_wise", None)
            if check is not None:
                check("routing a batch row by row")
        arms = self._row_arms(records, n)
        groups: dict[str, list[int]] = {}
        for i, arm in enumerate(arms):
            groups.setdefault(arm, []).append(i)
        if len(groups) <= 1:
            arm = arms[0] if arms else self._split[1][0]
            return self._call(arm, lambda: self.arms[arm].predict_batch(records, details=details), n)
        parts = {
            arm: self._call(
                arm,
                lambda arm=arm, idx=idx: self.arms[arm].predict_batch(_subset(records, idx), details=details),
                len(idx),
            )
            for arm, idx in groups.items()
        }
        if not details:
            return _merge(parts, groups, n)
        from ..serving.handle import Prediction, new_request_id

        first = next(iter(parts.values()))
        out = _merge({a: p.output for a, p in parts.items()}, groups, n)
        versions = ",".join(dict.fromkeys(p.version for p in parts.values()))
        return Prediction(out, new_request_id(), first.model, versions)

    async def apredict(self, record: Any, *, details: bool = False) -> Any:
        """``predict`` for asyncio code (awaits the chosen arm's ``apredict``)."""
        arm = self.arm_for(record)
        start = self._now()
        failed = True
        try:
            out = await self.arms[arm].apredict(record, details=details)
            failed = False
            return out
        finally:
            self._stats[arm].add(1, self._now() - start, failed, batch=False)

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per arm: ``requests``, ``rows``, ``errors`` (since the start), and ``mean_ms``,
        ``p50_ms``, ``p99_ms`` over the latest 4096 calls."""
        return {arm: stats.snapshot() for arm, stats in self._stats.items()}

    @property
    def name(self) -> str:
        """The model name of the first arm."""
        return next(iter(self.arms.values())).name

    def close(self) -> None:
        """Nothing to release: the arms' handles stay open (close them yourself)."""

    def __enter__(self) -> ABTest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        split = ", ".join(f"{a}={w:.3g}" for a, w in self.weights.items())
        return f"<{type(self).__name__} {split} key={self.key!r}>"


class Canary(ABTest):
    """Send ``fraction`` of traffic to ``candidate`` and the rest to ``primary``.

    Sticky by ``key`` like :class:`ABTest` (arms ``"candidate"`` and ``"primary"``); raising
    ``fraction`` (the setter, while serving) only moves users from primary to candidate,
    never back, so ramping 1% -> 10% -> 100% keeps every user's experience consistent.
    Raises :class:`ConfigurationError` for a fraction outside ``[0, 1]``.
    """

    def __init__(
        self,
        primary: Any,
        candidate: Any,
        fraction: float = 0.1,
        *,
        key: Key = None,
        salt: str = "",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        fraction = self._check(fraction)
        super().__init__(
            {"candidate": candidate, "primary": primary},
            [fraction, 1.0 - fraction],
            key=key,
            salt=salt,
            clock=clock,
        )

    @staticmethod
    def _check(fraction: float) -> float:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise ConfigurationError(f"fraction must be a number in [0, 1], got {fraction!r}")
        return float(fraction)

    @property
    def primary(self) -> Any:
        """The handle serving the rest of the traffic."""
        return self.arms["primary"]

    @property
    def candidate(self) -> Any:
        """The handle being tried on ``fraction`` of the traffic."""
        return self.arms["candidate"]

    @property
    def fraction(self) -> float:
        """The share of traffic (of keys) sent to the candidate; settable while serving."""
        return self._split[0][0]

    @fraction.setter
    def fraction(self, value: float) -> None:
        value = self._check(value)
        self.set_weights([value, 1.0 - value])


def _subset(records: Any, idx: list[int]) -> Any:
    """The rows ``idx`` of a batch, in the batch's structure."""
    import numpy as np

    if isinstance(records, list | tuple):
        return [records[i] for i in idx]
    if hasattr(records, "iloc"):
        return records.iloc[idx]
    if isinstance(records, Mapping):
        return {k: np.asarray(v)[idx] for k, v in records.items()}
    return np.asarray(records)[idx]


def _merge(parts: dict[str, Any], groups: dict[str, list[int]], n: int) -> Any:
    """Put per-arm outputs back in input order (lists, arrays, dicts or tuples of arrays)."""
    import numpy as np

    first = next(iter(parts.values()))
    if isinstance(first, ClassProbabilities):
        return _merge_probabilities(parts, groups, n)
    if isinstance(first, Mapping):
        return {k: _merge({a: p[k] for a, p in parts.items()}, groups, n) for k in first}
    if isinstance(first, tuple):
        return tuple(_merge({a: p[j] for a, p in parts.items()}, groups, n) for j in range(len(first)))
    if isinstance(first, list):
        out: list[Any] = [None] * n
        for arm, part in parts.items():
            for i, value in zip(groups[arm], part):
                out[i] = value
        return out
    arrays = {a: np.asarray(p) for a, p in parts.items()}
    a0 = next(iter(arrays.values()))
    merged = np.empty((n, *a0.shape[1:]), dtype=np.result_type(*arrays.values()))
    for arm, arr in arrays.items():
        merged[groups[arm]] = arr
    return merged


def _merge_probabilities(parts: dict[str, Any], groups: dict[str, list[int]], n: int) -> Any:
    """Classifiers' probabilities from several arms, their columns matched by class label
    (two versions may order their classes differently)."""
    import numpy as np

    first = next(iter(parts.values()))
    classes = list(first["classes"])
    arrays = {}
    for arm, part in parts.items():
        labels = list(part["classes"])
        if sorted(map(repr, labels)) != sorted(map(repr, classes)):
            raise PredictionError(
                f"the arms predict different classes ({classes} and {labels}): their probabilities cannot be merged",
                stage="output",
            )
        order = [labels.index(c) for c in classes]
        arrays[arm] = np.asarray(part["probabilities"])[:, order]
    return ClassProbabilities(_merge(arrays, groups, n), classes)

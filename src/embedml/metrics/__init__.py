"""Live metrics of a handle: counts, latency per stage, throughput, batch sizes, in-flight.

Every update is O(1): latencies go into fixed log-spaced histograms (4 buckets per doubling,
from about 1 µs to 4.5 minutes), so a percentile read from them is within about 9% of the
exact value. ``handle.metrics()`` returns a snapshot; :mod:`embedml.metrics.prometheus`
exports the same numbers to Prometheus.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Any

__all__ = ["STAGES", "Histogram", "Metrics"]

#: Stages timed on every call, in order.
STAGES = ("validation", "queue", "model", "total")

_PER_OCTAVE = 4
_MIN_EXP = -20  # the first bucket ends at 2**-20 s (~0.95 µs)
_N = _PER_OCTAVE * 29 + 1  # the last regular bucket ends at 2**9 s; one overflow bucket
_WINDOW = 60  # seconds of history for the recent throughput


def bucket(seconds: float, _log2: Any = math.log2, _ceil: Any = math.ceil) -> int:
    """Index of the histogram bucket holding ``seconds``."""
    if seconds <= 9.5367431640625e-07:  # 2**-20: the first bucket
        return 0
    i = _ceil((_log2(seconds) - _MIN_EXP) * _PER_OCTAVE)
    return _N if i > _N else i


class Histogram:
    """Counts of values (seconds) in log-spaced buckets; not thread-safe on its own."""

    __slots__ = ("counts", "total", "n")

    def __init__(self) -> None:
        self.counts = [0] * (_N + 1)
        self.total = 0.0
        self.n = 0

    @staticmethod
    def upper(i: int) -> float:
        """Upper edge (seconds) of bucket ``i``."""
        return math.inf if i >= _N else 2.0 ** (_MIN_EXP + i / _PER_OCTAVE)

    def add(self, seconds: float) -> None:
        self.counts[bucket(seconds)] += 1
        self.total += seconds
        self.n += 1

    def quantile(self, q: float) -> float | None:
        """Approximate ``q``-quantile in seconds (geometric interpolation in its bucket)."""
        if self.n == 0:
            return None
        rank = q * self.n
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                if i == 0:
                    return 0.0  # below ~1 µs: report zero rather than invent a value
                hi = self.upper(min(i, _N - 1))
                lo = self.upper(i - 1) if i > 0 else hi / 2 ** (1 / _PER_OCTAVE)
                frac = (rank - seen) / c
                return lo * (hi / lo) ** frac
            seen += c
        return self.upper(_N - 1)

    def cumulative(self, bounds: list[float]) -> list[int]:
        """Counts of values <= each bound (bounds must be bucket edges, ascending)."""
        out, seen, i = [], 0, 0
        for b in bounds:
            while i <= _N and self.upper(i) <= b * (1 + 1e-12):
                seen += self.counts[i]
                i += 1
            out.append(seen)
        return out

    def summary(self) -> dict[str, float | int | None]:
        ms = (lambda s: None if s is None else round(s * 1e3, 4))  # noqa: E731
        return {
            "count": self.n,
            "mean": ms(self.total / self.n) if self.n else None,
            "p50": ms(self.quantile(0.5)),
            "p90": ms(self.quantile(0.9)),
            "p99": ms(self.quantile(0.99)),
        }


def _size_bucket(n: int) -> str:
    if n <= 1:
        return "1"
    lo = 1 << (n.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


class Metrics:
    """Thread-safe counters and histograms of one handle (kept across hot swaps)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.hist = {s: Histogram() for s in STAGES}
        self._hists = tuple(self.hist[s] for s in STAGES)
        self.batch_sizes: Counter[str] = Counter()
        self.requests = 0
        self.rows = 0
        self.errors = 0
        self.errors_by_type: Counter[str] = Counter()
        self.in_flight = 0
        self.last_error: dict[str, Any] | None = None
        self._sec = [0] * _WINDOW
        self._req = [0] * _WINDOW
        self._rows = [0] * _WINDOW

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(
        self, n: int, timings: tuple[float, float, float, float], error: BaseException | None
    ) -> None:
        """Record one finished call: ``n`` rows, stage timings in seconds, its error if any."""
        now = time.time()
        sec = int(now)
        slot = sec % _WINDOW
        # bucket indices outside the lock: threads only queue for the increments
        v, q, m, t = timings
        bv, bq, bm, bt = bucket(v), bucket(q) if q else 0, bucket(m), bucket(t)
        with self._lock:
            self.in_flight -= 1
            self.requests += 1
            if self._sec[slot] != sec:
                self._sec[slot], self._req[slot], self._rows[slot] = sec, 0, 0
            self._req[slot] += 1
            if error is not None:
                self.errors += 1
                name = type(error).__name__
                self.errors_by_type[name] += 1
                self.last_error = {"type": name, "message": str(error), "time": now}
                self.hist["total"].add(timings[3])
                return
            self.rows += n
            self._rows[slot] += n
            self.batch_sizes["1" if n == 1 else _size_bucket(n)] += 1
            hv, hq, hm, ht = self._hists
            hv.counts[bv] += 1
            hv.total += v
            hv.n += 1
            hq.counts[bq] += 1
            hq.total += q
            hq.n += 1
            hm.counts[bm] += 1
            hm.total += m
            hm.n += 1
            ht.counts[bt] += 1
            ht.total += t
            ht.n += 1

    def histograms(self) -> dict[str, tuple[list[int], float, int]]:
        """A consistent copy of each stage's bucket counts, sum (seconds) and count."""
        with self._lock:
            return {s: (list(h.counts), h.total, h.n) for s, h in self.hist.items()}

    def snapshot(self) -> dict[str, Any]:
        """Counts, per-stage latency summaries (ms), throughput and batch sizes."""
        now = time.time()
        with self._lock:
            recent = [i for i in range(_WINDOW) if now - self._sec[i] < _WINDOW]
            span = min(_WINDOW, max(now - self.started, 1e-9))
            return {
                "uptime_seconds": round(now - self.started, 3),
                "requests": self.requests,
                "rows": self.rows,
                "errors": self.errors,
                "errors_by_type": dict(self.errors_by_type),
                "in_flight": self.in_flight,
                "last_error": None if self.last_error is None else dict(self.last_error),
                "latency_ms": {s: h.summary() for s, h in self.hist.items()},
                "throughput": {
                    "window_seconds": round(span, 3),
                    "requests_per_second": round(sum(self._req[i] for i in recent) / span, 3),
                    "rows_per_second": round(sum(self._rows[i] for i in recent) / span, 3),
                },
                "batch_size": dict(
                    sorted(self.batch_sizes.items(), key=lambda kv: int(kv[0].split("-")[0]))
                ),
            }

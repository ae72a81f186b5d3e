"""Live metrics of a handle: counts, latency per stage, throughput, batch sizes, in-flight.

Every update is O(1): latencies go into fixed log-spaced histograms (4 buckets per doubling,
from about 1 µs to 4.5 minutes), so a percentile read from them is within about 9% of the
exact value. ``handle.metrics()`` returns a snapshot; :mod:`embedml.observe.metrics.prometheus`
exports the same numbers to Prometheus.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import weakref
from collections import Counter
from typing import Any

from ...clock import SYSTEM_CLOCK, Clock
from ..records import FinishedCall

__all__ = ["STAGES", "HandleSet", "Histogram", "Metrics"]

#: Stages timed on every call, in order.
STAGES = ("validation", "queue", "model", "total")

_PER_OCTAVE = 4
_MIN_EXP = -20  # the first bucket ends at 2**-20 s (~0.95 µs)
_N = _PER_OCTAVE * 29 + 1  # the last regular bucket ends at 2**9 s; one overflow bucket
_WINDOW = 60  # seconds of history for the recent throughput


#: Upper edges (seconds) of the regular buckets: bucket ``i`` holds ``(EDGES[i-1], EDGES[i]]``.
_EDGES = [2.0 ** (_MIN_EXP + i / _PER_OCTAVE) for i in range(_N)]
_bisect = bisect.bisect_left


def bucket(seconds: float, _edges: list[float] = _EDGES, _find: Any = bisect.bisect_left) -> int:
    """Index of the histogram bucket holding ``seconds`` (``_N``: above the last edge)."""
    # a binary search over the edges in C: cheaper than log2 + ceil, and exact at the edges
    return _find(_edges, seconds)  # type: ignore[no-any-return]


class Histogram:
    """Counts of values (seconds) in log-spaced buckets; not thread-safe on its own."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (_N + 1)
        self.total = 0.0

    @property
    def n(self) -> int:
        """Number of values (counted from the buckets: one update less per value)."""
        return sum(self.counts)

    @staticmethod
    def upper(i: int) -> float:
        """Upper edge (seconds) of bucket ``i``."""
        return math.inf if i >= _N else 2.0 ** (_MIN_EXP + i / _PER_OCTAVE)

    def add(self, seconds: float) -> None:
        self.counts[_bisect(_EDGES, seconds)] += 1
        self.total += seconds

    def quantile(self, q: float) -> float | None:
        """Approximate ``q``-quantile in seconds (geometric interpolation in its bucket)."""
        n = self.n
        if n == 0:
            return None
        rank = q * n
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
        ms = lambda s: None if s is None else round(s * 1e3, 4)  # noqa: E731
        return {
            "count": self.n,
            "mean": ms(self.total / self.n) if self.n else None,
            "p50": ms(self.quantile(0.5)),
            "p90": ms(self.quantile(0.9)),
            "p99": ms(self.quantile(0.99)),
        }


def _retire(ref: weakref.ref[Metrics], shard: _Shard) -> None:
    metrics = ref()
    if metrics is not None:
        metrics._retire(shard)


def _detach_all(finalizers: list[weakref.finalize]) -> None:
    for fin in finalizers:
        fin.detach()


def _size_bucket(n: int) -> str:
    if n <= 1:
        return "1"
    lo = 1 << (n.bit_length() - 1)
    return f"{lo}-{2 * lo - 1}"


# batch-size labels by bit length, so that a call does not format a string
_SIZE_LABELS = tuple(_size_bucket(1 << k) for k in range(64))


class HandleSet:
    """The handles an exporter reports on, held by weak reference (thread-safe)."""

    def __init__(self) -> None:
        self._refs: list[weakref.ref[Any]] = []
        self._lock = threading.Lock()

    def add(self, handle: Any) -> None:
        with self._lock:
            if all(r() is not handle for r in self._refs):
                self._refs.append(weakref.ref(handle))

    def remove(self, handle: Any) -> bool:
        """Forget ``handle`` (and any collected one); returns whether it was there."""
        with self._lock:
            before = len(self._refs)
            self._refs = [r for r in self._refs if r() is not handle and r() is not None]
            return len(self._refs) < before

    def open(self) -> list[Any]:
        """The handles still alive and open."""
        with self._lock:
            live = [r() for r in self._refs]
        # HandleState.OPEN, by its value: the observe layer never imports the handle
        return [h for h in live if h is not None and h.state.value == "open"]


class _Shard:
    """The counters of one thread: only that thread writes them, so no lock is needed."""

    def __init__(self) -> None:
        self.hists = tuple(Histogram() for _ in STAGES)
        # model calls by the bit length of their rows (see _SIZE_LABELS): a list, not a
        # Counter of labels, so that a call adds one to a slot
        self.sizes = [0] * 65
        self.begun = self.requests = self.rows = self.errors = 0
        self.errors_by_type: Counter[str] = Counter()
        self.sec = [0] * _WINDOW
        self.req = [0] * _WINDOW
        self.rows_at = [0] * _WINDOW


# Live metrics, for the fork handler below.
_LIVE: weakref.WeakSet[Metrics] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Each forked child counts its own calls from zero: the parent's threads (and the calls
    they had in flight, which would never end here) do not exist in the child, and
    exporters of several processes must not count the parent's calls again."""
    for metrics in list(_LIVE):
        metrics._reset()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Metrics:
    """Counters and histograms of one handle (kept across hot swaps; reset in a forked
    child). ``clock`` measures the uptime and the one-minute throughput window.

    Each thread updates its own shard without locking (a shared lock makes 64 threads
    queue behind each other and the GIL); :meth:`snapshot` adds the shards up.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        # Per-thread finalizers hold their shard until the thread ends; a long-lived thread
        # calling many short-lived handles would keep every handle's shards alive, so they
        # are detached when these metrics go away.
        self._finalizers: list[weakref.finalize] = []
        weakref.finalize(self, _detach_all, self._finalizers)
        self._reset()
        _LIVE.add(self)

    def _reset(self) -> None:
        """Empty counters (also what a forked child starts from, see _after_fork_in_child)."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._shards: list[_Shard] = []
        self._retired: _Shard | None = None
        _detach_all(self._finalizers)
        self._finalizers.clear()  # in place: the finalizer above holds this list
        self.started = self.clock.time()  # Unix seconds
        self._started = self.clock.monotonic()
        self.last_error: dict[str, Any] | None = None

    def _shard(self) -> _Shard:
        try:
            return self._local.shard  # type: ignore[no-any-return]
        except AttributeError:
            shard = self._local.shard = _Shard()
            with self._lock:
                self._shards.append(shard)
            # fold a finished thread's shard into the retired one, so that servers
            # starting a thread per request do not grow the shard list forever
            fin = weakref.finalize(threading.current_thread(), _retire, weakref.ref(self), shard)
            with self._lock:
                fins = self._finalizers
                if len(fins) >= 64:  # drop those of finished threads (in place: see above)
                    fins[:] = [f for f in fins if f.alive]
                fins.append(fin)
            return shard

    def _retire(self, shard: _Shard) -> None:
        with self._lock:
            if shard not in self._shards:
                return
            self._shards.remove(shard)
            into = self._retired
            if into is None:
                into = self._retired = _Shard()
                self._shards.append(into)
            for key in ("begun", "requests", "rows", "errors"):
                setattr(into, key, getattr(into, key) + getattr(shard, key))
            into.sizes = [a + b for a, b in zip(into.sizes, shard.sizes)]
            into.errors_by_type.update(shard.errors_by_type)
            for h, mine in zip(into.hists, shard.hists):
                h.counts = [a + b for a, b in zip(h.counts, mine.counts)]
                h.total += mine.total
            for i in range(_WINDOW):
                if shard.sec[i] == into.sec[i]:
                    into.req[i] += shard.req[i]
                    into.rows_at[i] += shard.rows_at[i]
                elif shard.sec[i] > into.sec[i]:
                    into.sec[i], into.req[i] = shard.sec[i], shard.req[i]
                    into.rows_at[i] = shard.rows_at[i]

    def begin(self) -> None:
        """A call started (for the in-flight count)."""
        try:
            self._local.shard.begun += 1
        except AttributeError:
            self._shard().begun += 1

    def end(self, call: FinishedCall) -> None:
        """Count one finished call: its rows, stage timings, error, and the rows of its
        model call in the batch-size distribution (only when ``call.counts_batch``: each
        joined batch is counted once, by the call whose rows came first)."""
        # Called on every prediction: histogram updates are inlined (no Histogram.add call).
        try:
            sh = self._local.shard
        except AttributeError:
            sh = self._shard()
        sec = int(self.clock.monotonic())
        slot = sec % _WINDOW
        sh.requests += 1
        if sh.sec[slot] != sec:
            sh.sec[slot], sh.req[slot], sh.rows_at[slot] = sec, 0, 0
        sh.req[slot] += 1
        # call.durations(), inlined: a Python frame (~0.1 µs) on every prediction
        start, q = call.started, call.queue
        validated = call.validated or start
        v, t = validated - start, call.ended - start
        m = (call.answered or validated) - validated - q
        if m < 0.0:
            m = 0.0
        hv, hq, hm, ht = sh.hists
        error = call.error
        if error is not None:
            sh.errors += 1
            name = type(error).__name__
            sh.errors_by_type[name] += 1
            self.last_error = {"type": name, "message": str(error), "time": self.clock.time()}
            ht.add(t)
            return
        n = call.rows
        sh.rows += n
        sh.rows_at[slot] += n
        if call.counts_batch:
            sh.sizes[(call.batch_size or n).bit_length()] += 1
        edges, find = _EDGES, _bisect
        hv.counts[find(edges, v)] += 1
        hv.total += v
        if q:
            hq.counts[find(edges, q)] += 1
            hq.total += q
        else:  # no batching queue: the first bucket, nothing to add to the sum
            hq.counts[0] += 1
        hm.counts[find(edges, m)] += 1
        hm.total += m
        ht.counts[find(edges, t)] += 1
        ht.total += t

    @property
    def in_flight(self) -> int:
        """Calls begun and not yet ended."""
        shards = list(self._shards)
        return max(sum(sh.begun for sh in shards) - sum(sh.requests for sh in shards), 0)

    def _merged(self) -> dict[str, Any]:
        with self._lock:
            shards = list(self._shards)
        hists = [Histogram() for _ in STAGES]
        out: dict[str, Any] = {"begun": 0, "requests": 0, "rows": 0, "errors": 0}
        sizes: Counter[str] = Counter()
        kinds: Counter[str] = Counter()
        now = self.clock.monotonic()
        recent_req = recent_rows = 0
        for sh in shards:
            for key in ("begun", "requests", "rows", "errors"):
                out[key] += getattr(sh, key)
            for k, c in enumerate(sh.sizes):
                if c:
                    sizes[_SIZE_LABELS[k - 1 if k else 0]] += c
            kinds.update(sh.errors_by_type)
            for h, mine in zip(hists, sh.hists):
                h.counts = [a + b for a, b in zip(h.counts, mine.counts)]
                h.total += mine.total
            for i in range(_WINDOW):
                if now - sh.sec[i] < _WINDOW:
                    recent_req += sh.req[i]
                    recent_rows += sh.rows_at[i]
        out.update(hists=dict(zip(STAGES, hists)), sizes=sizes, kinds=kinds)
        out.update(recent_req=recent_req, recent_rows=recent_rows, now=now)
        return out

    @property
    def requests(self) -> int:
        return sum(sh.requests for sh in list(self._shards))

    @property
    def errors(self) -> int:
        return sum(sh.errors for sh in list(self._shards))

    def histograms(self) -> dict[str, tuple[list[int], float, int]]:
        """Each stage's bucket counts, sum (seconds) and count, summed over threads."""
        return {s: (h.counts, h.total, h.n) for s, h in self._merged()["hists"].items()}

    def snapshot(self) -> dict[str, Any]:
        """Counts, per-stage latency summaries (ms), throughput and batch sizes."""
        m = self._merged()
        uptime = m["now"] - self._started
        span = min(_WINDOW, max(uptime, 1e-9))
        return {
            "uptime_seconds": round(uptime, 3),
            "requests": m["requests"],
            "rows": m["rows"],
            "errors": m["errors"],
            "errors_by_type": dict(m["kinds"]),
            "in_flight": max(m["begun"] - m["requests"], 0),
            "last_error": None if self.last_error is None else dict(self.last_error),
            "latency_ms": {s: h.summary() for s, h in m["hists"].items()},
            "throughput": {
                "window_seconds": round(span, 3),
                "requests_per_second": round(m["recent_req"] / span, 3),
                "rows_per_second": round(m["recent_rows"] / span, 3),
            },
            "batch_size": dict(sorted(m["sizes"].items(), key=lambda kv: int(kv[0].split("-")[0]))),
        }

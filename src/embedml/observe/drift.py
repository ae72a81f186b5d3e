"""Data drift: compare a sliding window of live inputs (and outputs) with a reference profile.

:class:`DriftMonitor` is a hook. Its background thread appends each batch of validated
inputs to a fixed-size ring buffer (vectorised, O(rows)); the statistics are computed only
when asked (:meth:`DriftMonitor.report`) or every ``check_every`` rows to fire the
callback. Per feature:

* Population Stability Index over the reference's quantile bins (or categories);
  ``0.1`` warns and ``0.2`` means drift, the usual rule of thumb;
* numeric: the two-sample Kolmogorov-Smirnov statistic (that of ``scipy.stats.ks_2samp``)
  and its asymptotic p-value (``scipy.special.kolmogorov``), against the reference sample;
* categorical: the chi-squared test of the reference vs live category counts
  (``scipy.stats.chi2_contingency``), and the Jensen-Shannon distance (base 2, in [0, 1];
  ``scipy.spatial.distance.jensenshannon``).

The statistics need scipy, the ``drift`` extra (``pip install 'embedml[drift]'``); it is
imported when a :class:`DriftMonitor` is created, never by ``import embedml``.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..clock import SYSTEM_CLOCK, Clock, check_clock
from ..errors import ConfigurationError, import_extra
from ..schema.profile import FeatureProfile, ReferenceProfile, feature_matrix
from ..tensors import concat
from .hooks import RowSink
from .records import RowBatch

__all__ = [
    "DriftMonitor",
    "DriftReport",
    "chi2_test",
    "jensen_shannon",
    "ks_2samp",
    "psi",
]

_EPS = 1e-4


# ---------------------------------------------------------------- statistics


@functools.cache
def _scipy() -> SimpleNamespace:
    """The scipy functions the statistics use, imported on first use (the ``drift`` extra).

    Raises :class:`MissingExtraError` when scipy cannot be imported.
    """
    special, stats, distance = import_extra(
        "drift", "drift statistics", "scipy.special", "scipy.stats", "scipy.spatial.distance"
    )
    return SimpleNamespace(
        chi2_contingency=stats.chi2_contingency,
        jensenshannon=distance.jensenshannon,
        kolmogorov=special.kolmogorov,
    )


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = _EPS) -> float:
    """Population Stability Index of two count (or proportion) vectors over the same bins.

    ``sum((a - e) * ln(a / e))`` over proportions, each floored at ``eps`` so empty bins
    stay finite. (scipy has no PSI.)
    """
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    e = np.maximum(e / max(e.sum(), 1e-300), eps)
    a = np.maximum(a / max(a.sum(), 1e-300), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_2samp(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: ``(statistic, asymptotic two-sided p-value)``.

    The statistic is that of ``scipy.stats.ks_2samp``; the p-value is the Kolmogorov limit
    ``scipy.special.kolmogorov(sqrt(n*m/(n+m)) * D)``. NaN for an empty sample. Raises
    :class:`MissingExtraError` without scipy.
    """
    a = np.sort(np.asarray(a, dtype=np.float64))
    return _ks_sorted(a, np.sort(np.asarray(b, dtype=np.float64)))


def _ks_sorted(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    d = _ks_columns(a[None], b[None])
    return float(d[0]), float(_ks_p_values(d, len(a), len(b))[0])


def _ks_columns(ref: np.ndarray, live: np.ndarray) -> np.ndarray:
    """KS statistics of each row pair of ``ref`` (k x n) and ``live`` (k x m), both sorted
    along axis 1, free of NaN and not empty.

    ``scipy.stats.ks_2samp(..., axis=1)`` gives the same statistics but runs the 1-D test
    once per row (its ``axis`` support loops over slices): 25 ms for 20 features of 10,000
    rows against 11 ms here, and each of its ~15 numpy calls per feature hands the GIL to
    the callers' threads and back. Here: one stable argsort merges each live row into its
    reference row; walking the merged values, count how many came from ``ref``; the
    empirical CDFs are compared only after the last of equal values (ties as in scipy).
    """
    n, m = ref.shape[1], live.shape[1]
    both = np.concatenate([ref, live], axis=1)
    order = np.argsort(both, axis=1, kind="stable")
    from_a = np.cumsum(order < n, axis=1)
    merged = np.take_along_axis(both, order, axis=1)
    ends = np.ones(both.shape, dtype=bool)
    np.not_equal(merged[:, 1:], merged[:, :-1], out=ends[:, :-1])
    # |from_a / n - from_b / m| * n * m, in integers: from_b = position - from_a
    gap = from_a * (n + m)
    gap -= np.arange(1, n + m + 1) * n
    np.abs(gap, out=gap)
    gap[~ends] = 0
    return gap.max(axis=1) / (n * m)  # type: ignore[no-any-return]


def _ks_p_values(d: np.ndarray, n: int, m: int) -> np.ndarray:
    """Asymptotic two-sided p-values of KS statistics ``d`` of samples of sizes n and m.

    The Kolmogorov limit (one ufunc call for all features) rather than the finite-n
    refinement of ``ks_2samp(method="asymp")`` (``scipy.stats.kstwo.sf``): that one loops in
    Python and costs 4 ms per check of 20 features, for p-values within 0.01 of these.
    """
    return _scipy().kolmogorov(math.sqrt(n * m / (n + m)) * d)  # type: ignore[no-any-return]


def chi2_test(expected_counts: np.ndarray, actual_counts: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity on the 2 x k table of two count vectors:
    ``(statistic, p-value)`` of ``scipy.stats.chi2_contingency`` without continuity
    correction, categories empty in both left out; ``(0.0, 1.0)`` when fewer than two
    categories or one side has no counts. Raises :class:`MissingExtraError` without scipy."""
    table = np.vstack([expected_counts, actual_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    stat, p, _, _ = _scipy().chi2_contingency(table, correction=False)
    return float(stat), float(p)


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two count or proportion vectors:
    ``scipy.spatial.distance.jensenshannon``. Raises :class:`MissingExtraError` without scipy."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(invalid="ignore"):
        d = float(_scipy().jensenshannon(p, q, base=2))
    # scipy takes the square root of a divergence that rounding leaves a hair below 0 for
    # about half of all near-equal distributions: NaN where the distance is 0
    valid = all(np.isfinite(x).all() and (x >= 0).all() and x.sum() > 0 for x in (p, q))
    return 0.0 if math.isnan(d) and valid else d


# ---------------------------------------------------------------- the report


class DriftReport:
    """Drift statistics per feature: ``rows`` (list of dicts), :meth:`to_dict`,
    :meth:`to_frame` (pandas), ``drifted`` / ``warned`` feature names, and ``quality``
    (the handle's live quality from ``log_outcome``, when attached). ``str()`` is a table."""

    COLUMNS = ("feature", "kind", "n", "psi", "ks", "ks_p", "chi2", "chi2_p", "js", "status")

    def __init__(self, rows: list[dict[str, Any]], window_rows: int, quality: Any) -> None:
        self.rows = rows
        self.window_rows = window_rows
        self.quality = quality

    @property
    def drifted(self) -> list[str]:
        return [r["feature"] for r in self.rows if r["status"] == "drift"]

    @property
    def warned(self) -> list[str]:
        return [r["feature"] for r in self.rows if r["status"] == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "window_rows": self.window_rows,
            "features": {r["feature"]: dict(r) for r in self.rows},
            "drifted": self.drifted,
            "quality": self.quality,
        }

    def to_frame(self) -> Any:
        """The rows as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.COLUMNS)).set_index("feature")

    def __str__(self) -> str:
        def fmt(v: Any) -> str:
            if v is None:
                return "-"
            return f"{v:.4f}" if isinstance(v, float) else str(v)

        table = [list(self.COLUMNS)] + [[fmt(r[c]) for c in self.COLUMNS] for r in self.rows]
        widths = [max(len(row[j]) for row in table) for j in range(len(self.COLUMNS))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table]
        lines.insert(1, "  ".join("-" * w for w in widths))
        tail = f"window: {self.window_rows} rows"
        if self.quality:
            tail += f"; quality: {self.quality}"
        return "\n".join([*lines, tail])


# ---------------------------------------------------------------- the monitor


class _Window:
    """A ring buffer of the last ``size`` values of some columns."""

    def __init__(self, size: int, width: int, dtype: Any) -> None:
        self.data = np.empty((size, width), dtype=dtype)
        self.size, self.pos, self.filled = size, 0, 0

    def push(self, block: np.ndarray) -> None:
        n = len(block)
        if n >= self.size:
            self.data[:] = block[-self.size :]
            self.pos, self.filled = 0, self.size
            return
        idx = (self.pos + np.arange(n)) % self.size
        self.data[idx] = block
        self.pos = (self.pos + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def values(self) -> np.ndarray:
        return self.data[: self.filled]


class DriftMonitor(RowSink):
    """A hook that watches live inputs (and outputs) for drift against a reference profile.

    ``reference``: a :class:`~embedml.ReferenceProfile`, reference data (array / DataFrame
    / records), or ``None`` to use the profile saved with the version
    (``store.save(..., reference_data=X)``). ``window``: live rows kept. ``features``:
    names to watch (default: all in the reference). Thresholds: ``psi_warn`` (0.1),
    ``psi_drift`` (0.2) and ``p_value`` (0.001, for the KS / chi-squared tests: a smaller
    p-value warns). ``on_drift(feature, row)`` is called (on the monitor's thread) when a
    feature's status gets worse (ok -> warn -> drift); statuses are checked every
    ``check_every`` rows (default: ``window``), but not more often than every
    ``check_interval`` seconds (default 1.0; ``0``: no limit): a check due sooner runs once
    that time has passed, or at :meth:`flush` / :meth:`report`. ``clock``: what measures
    that interval (an :class:`embedml.clock.Clock`; tests pass an
    :class:`embedml.testing.FakeClock`). Sink options (``sample``, ``max_queue``,
    ``policy``) as for any sink. Raises :class:`MissingExtraError` when scipy is not installed
    (``pip install 'embedml[drift]'``), :class:`ConfigurationError` for bad options, or
    when attached to a handle whose version has no reference profile and none is given.
    """

    def __init__(
        self,
        reference: ReferenceProfile | Any = None,
        *,
        window: int = 1000,
        features: Iterable[str] | None = None,
        psi_warn: float = 0.1,
        psi_drift: float = 0.2,
        p_value: float = 0.001,
        check_every: int | None = None,
        check_interval: float = 1.0,
        on_drift: Callable[[str, dict[str, Any]], Any] | None = None,
        sample: float = 1.0,
        max_queue: int = 10_000,
        policy: str = "drop",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        _scipy()  # here, where a missing extra is the caller's error, not in the monitor's thread
        if int(window) < 2:
            raise ConfigurationError(f"window must be >= 2, got {window!r}")
        if not 0 < psi_warn <= psi_drift:
            raise ConfigurationError(
                f"need 0 < psi_warn <= psi_drift, got {psi_warn!r}, {psi_drift!r}"
            )
        if not 0 < p_value < 1:
            raise ConfigurationError(f"p_value must be in (0, 1), got {p_value!r}")
        if not 0 <= float(check_interval) < math.inf:
            raise ConfigurationError(f"check_interval must be >= 0 seconds, got {check_interval!r}")
        self._clock = check_clock(clock)
        super().__init__(sample=sample, max_queue=max_queue, policy=policy, name="drift")
        self.window = int(window)
        self.psi_warn, self.psi_drift, self.p_value = psi_warn, psi_drift, p_value
        self.check_every = int(check_every or window)
        # A check of 20 features over 10,000 rows costs about 11 ms of CPU, which callers'
        # threads feel; statuses once a second are plenty for alerting.
        self.check_interval = float(check_interval)
        self._last_check = -math.inf
        self._check_due = False
        self._force_check = False
        self._checks = 0  # checks run, so that flush() knows when the one it asked for ran
        self._checking = False
        self._stopped = False
        self._checked = threading.Condition()
        self.on_drift = on_drift
        self._features = None if features is None else list(features)
        self._reference: ReferenceProfile | None = None
        self._given = reference
        self._handle: Any = None
        self._windows: dict[str, tuple[_Window, list[str], Any]] = {}
        self._columns: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        self._since_check = 0
        self._status: dict[str, str] = {}
        self._last: dict[str, float] = {}
        self.rows_seen = 0
        self._window_lock = threading.Lock()
        self._sorted: dict[Any, np.ndarray] = {}  # reference samples, sorted once
        if reference is not None:
            self._set_reference(reference, None)

    # -- setup
    def _set_reference(self, reference: Any, names: tuple[str, ...] | None) -> None:
        if not isinstance(reference, ReferenceProfile):
            reference = ReferenceProfile.from_data(reference, names=names)
        watched = self._features or list(reference.features)
        unknown = [f for f in watched if f not in reference.features]
        if unknown:
            raise ConfigurationError(
                f"features {unknown} are not in the reference profile; it has {list(reference.features)}"
            )
        self._reference = reference
        self._sorted.clear()
        groups = {"x": [reference.features[f] for f in watched]}
        if reference.outputs:
            groups["output"] = list(reference.outputs.values())
        for group, profiles in groups.items():
            numeric = all(p.kind == "numeric" for p in profiles)
            self._windows[group] = (
                _Window(self.window, len(profiles), np.float64 if numeric else object),
                [p.name for p in profiles],
                profiles,
            )

    def attach(self, handle: Any) -> None:
        """Take the version's saved profile when no reference was given; a bare 2-D array
        given as reference gets its column names from the first handle's input schema."""
        names = getattr(handle.input_schema, "names", None)
        unnamed = isinstance(self._given, np.ndarray) and self._given.ndim == 2
        if self._reference is None or (unnamed and names and self._handle is None):
            reference = self._given if self._given is not None else handle.reference_profile()
            if reference is None:
                raise ConfigurationError(
                    f"{handle.name}@{handle.version} has no reference profile: save it with "
                    "reference_data=X or pass DriftMonitor(reference=...)"
                )
            self._set_reference(reference, names)
        self._handle = handle
        super().attach(handle)

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        # the parent's writer or a flush() may have held them
        self._window_lock = threading.Lock()
        self._checked = threading.Condition()

    @property
    def reference(self) -> ReferenceProfile | None:
        return self._reference

    # -- writer thread
    def _block(self, group: str, batch: Any, input_names: Any) -> np.ndarray:
        window, wanted, _ = self._windows[group]
        names, m = feature_matrix(batch, input_names if group == "x" else None, group)
        key = (group, tuple(names))
        cols = self._columns.get(key)
        if cols is None:
            index = {n: j for j, n in enumerate(names)}
            missing = [w for w in wanted if w not in index]
            if missing:
                raise ConfigurationError(
                    f"live {('inputs' if group == 'x' else 'outputs')} have no column(s) {missing}; they have {names}"
                )
            cols = self._columns[key] = [index[w] for w in wanted]
        return m[:, cols]

    def write_rows(self, batches: list[RowBatch]) -> None:
        """Push the rows of successful calls into the windows."""
        if not batches or self._reference is None:
            return
        for group, (window, _, _) in self._windows.items():
            parts = [b.inputs if group == "x" else b.outputs for b in batches]
            try:  # one vectorised pass over the whole write batch when the arrays allow it
                block = self._block(group, concat(parts), batches[0].input_names)
            except (ValueError, TypeError):
                block = np.concatenate(
                    [self._block(group, p, b.input_names) for p, b in zip(parts, batches)]
                )
            with self._window_lock:
                window.push(block)
        n = sum(b.rows for b in batches)
        self.rows_seen += n
        self._since_check += n
        if self._since_check >= self.check_every:
            self._since_check = 0
            self._check_due = True
        self._maybe_check()

    def _idle(self) -> None:
        self._maybe_check()

    def _maybe_check(self) -> None:
        """On the writer thread: run a due check unless the last one was too recent."""
        if not self._check_due:
            return
        now = self._clock.monotonic()
        if self._force_check or now - self._last_check >= self.check_interval:
            with self._checked:
                self._check_due = self._force_check = False
                self._checking = True
            self._last_check = now
            try:
                self._check()
            finally:
                with self._checked:
                    self._checking = False
                    self._checks += 1
                    self._checked.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every accepted call's rows are in the window and a check that is due
        has run (on the monitor's thread), at most ``timeout`` seconds; ``False`` on
        timeout or when the monitor was closed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not super().flush(timeout):
            return False
        with self._checked:
            if not (self._check_due or self._checking):
                return True
            # the check running now, if any, then the one due, if any
            target = self._checks + self._checking + self._check_due
            if self._check_due:
                self._force_check = True
                self._wake.set()  # the writer runs due checks when it wakes with nothing to write
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._checked.wait_for(lambda: self._checks >= target or self._stopped, left)
            return self._checks >= target

    def close(self, timeout: float | None = 10.0) -> None:
        """Close the sink (see :meth:`Sink.close`) and release a :meth:`flush` waiting for a
        check that will not run."""
        try:
            super().close(timeout)
        finally:
            with self._checked:
                self._stopped = True
                self._checked.notify_all()

    def _check(self) -> None:
        order = {"ok": 0, "warn": 1, "drift": 2}
        with self._window_lock:
            report = self._compute()
        for row in report.rows:
            name, status = row["feature"], row["status"]
            before = self._status.get(name, "ok")
            self._status[name] = status
            if order[status] > order[before] and self.on_drift is not None:
                try:
                    self.on_drift(name, row)
                except Exception as exc:
                    self._failed(exc, 1)

    # -- statistics
    def _row(self, profile: FeatureProfile, live: np.ndarray) -> dict[str, Any]:
        counts = profile.live_counts(live)
        row: dict[str, Any] = dict.fromkeys(DriftReport.COLUMNS)
        row.update(feature=profile.name, kind=profile.kind, n=int(counts.sum()))
        if row["n"] == 0:
            row["status"] = "ok"
            return row
        row["psi"] = psi(profile.counts, counts)
        if profile.kind == "numeric":
            ref = self._sorted.get(profile.name)
            if ref is None:  # the reference sample, sorted once
                ref = self._sorted[profile.name] = np.sort(np.asarray(profile.sample, np.float64))
            values = live.astype(np.float64)
            row["ks"], row["ks_p"] = _ks_sorted(ref, np.sort(values[~np.isnan(values)]))
            p = row["ks_p"]
        else:
            row["chi2"], row["chi2_p"] = chi2_test(profile.counts, counts)
            row["js"] = jensen_shannon(np.asarray(profile.counts) + 0.0, counts + 0.0)
            p = row["chi2_p"]
        row["status"] = self._status_of(row["psi"], p)
        return row

    def _status_of(self, psi_value: float, p: float) -> str:
        if psi_value >= self.psi_drift:
            return "drift"
        if psi_value >= self.psi_warn or p < self.p_value:
            return "warn"
        return "ok"

    def _numeric_rows(self, profiles: list[FeatureProfile], values: np.ndarray) -> list[dict[str, Any]] | None:
        """Rows of a window of numeric features without NaN, in a few vectorised numpy
        calls (``None`` when the window or the reference samples do not allow it)."""
        ref = self._sorted.get(("__all__", tuple(p.name for p in profiles)))
        if ref is None:
            samples = [p.sample for p in profiles]
            if len({len(x) for x in samples}) != 1 or not samples[0]:
                return None
            ref = np.sort(np.asarray(samples, dtype=np.float64), axis=1)
            self._sorted[("__all__", tuple(p.name for p in profiles))] = ref
        live = np.sort(np.ascontiguousarray(values.T, dtype=np.float64), axis=1)
        if np.isnan(live[:, -1]).any():  # NaN sorts last
            return None
        d = _ks_columns(ref, live)
        n, m = ref.shape[1], live.shape[1]
        p_values = _ks_p_values(d, n, m)
        rows = []
        for j, profile in enumerate(profiles):
            # counts per bin (edges[i-1] < v <= edges[i]) from the sorted column
            upto = np.searchsorted(live[j], np.asarray(profile.edges), side="right")
            counts = np.diff(upto, prepend=0, append=m)
            row: dict[str, Any] = dict.fromkeys(DriftReport.COLUMNS)
            ks, p = float(d[j]), float(p_values[j])
            row.update(
                feature=profile.name, kind="numeric", n=m, psi=psi(profile.counts, counts),
                ks=ks, ks_p=p,
            )  # fmt: skip
            row["status"] = self._status_of(row["psi"], p)
            rows.append(row)
        return rows

    def _compute(self) -> DriftReport:
        rows = []
        filled = 0
        for window, _, profiles in self._windows.values():
            values = window.values()
            filled = max(filled, window.filled)
            fast = None
            if values.dtype == np.float64 and len(values) and all(p.kind == "numeric" for p in profiles):
                fast = self._numeric_rows(profiles, values)
            rows += fast if fast is not None else [self._row(p, values[:, j]) for j, p in enumerate(profiles)]
        self._last = {r["feature"]: r["psi"] for r in rows if r["psi"] is not None}
        quality = self._handle._obs.quality.snapshot() if self._handle is not None else None
        return DriftReport(rows, filled, quality)

    def report(self, flush: bool = True) -> DriftReport:
        """Statistics of the current window against the reference (waits for queued
        records first when ``flush``). Raises :class:`ConfigurationError` when the monitor
        has no reference yet (not attached)."""
        if self._reference is None:
            raise ConfigurationError("the DriftMonitor has no reference profile yet; attach it")
        if flush:
            self.flush()
        with self._window_lock:  # the writer may be pushing; read a consistent window
            return self._compute()

    def last_psi(self) -> dict[str, float]:
        """PSI per feature from the last check or report (for metric exporters)."""
        return dict(self._last)

    def reset(self) -> None:
        """Forget the live window (e.g. after retraining)."""
        with self._window_lock:
            for window, _, _ in self._windows.values():
                window.pos = window.filled = 0
            self._status.clear()


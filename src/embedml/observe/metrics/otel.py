"""Export handle metrics through an OpenTelemetry meter (the ``otel`` extra: ``opentelemetry-api``).

``register(handle, meter=None)`` adds the handle to a set of *observable* instruments on
``meter`` (``opentelemetry.metrics.get_meter("embedml")`` when ``None``): their callbacks
read ``handle.metrics()`` when the SDK's metric reader collects, so nothing is paid per
prediction. One set of instruments per meter serves every handle registered on it, told
apart by the ``model`` and ``version`` attributes; a closed or collected handle drops out.

Instruments (attributes ``model``, ``version`` on all):

* ``embedml.requests``, ``embedml.rows`` (counters), ``embedml.errors`` (counter, ``type``)
* ``embedml.latency`` (gauge, seconds, ``stage`` and ``quantile`` = p50 / p90 / p99): the
  OpenTelemetry API has no observable histogram, so the handle's own histograms are
  exported as their quantiles (Prometheus gets the buckets, see
  :mod:`embedml.observe.metrics.prometheus`)
* ``embedml.in_flight`` (up-down counter), ``embedml.ready`` (gauge, 0/1),
  ``embedml.model.load_time`` (gauge, seconds)
* ``embedml.observe.quality`` (gauge, ``metric`` = accuracy / error_rate / mae / rmse)
* ``embedml.hook.records`` (counter, ``sink`` and ``outcome``)
* ``embedml.observe.drift.psi`` (gauge, ``feature``), for each attached :class:`~embedml.DriftMonitor`
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from . import HandleSet

__all__ = ["register", "unregister"]

_lock = threading.Lock()
_bridges: weakref.WeakKeyDictionary[Any, _Bridge] = weakref.WeakKeyDictionary()
_default: list[Any] = []  # the meter used when none is given, made once


def _default_meter() -> Any:
    from opentelemetry import metrics

    with _lock:
        if not _default:
            _default.append(metrics.get_meter("embedml"))
        return _default[0]


class _Bridge:
    """The instruments of one meter and the handles they report on."""

    def __init__(self, meter: Any) -> None:
        self.handles = HandleSet()
        # one metrics() snapshot per handle and collection, not one per instrument
        self._snaps: dict[int, tuple[float, dict[str, Any]]] = {}
        counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
        counter("embedml.requests", [self._cb(_requests)], "{call}", "Prediction calls handled.")
        counter("embedml.rows", [self._cb(_rows)], "{row}", "Rows predicted.")
        counter("embedml.errors", [self._cb(_errors)], "{call}", "Calls that raised, by type.")
        gauge("embedml.latency", [self._cb(_latency)], "s", "Time per call: quantiles by stage.")
        meter.create_observable_up_down_counter(
            "embedml.in_flight", [self._cb(_in_flight)], "{call}", "Calls running now."
        )
        gauge("embedml.ready", [self._cb(_ready)], "1", "1 when the handle is ready to serve.")
        gauge("embedml.model.load_time", [self._cb(_load)], "s", "Time taken to load the model.")
        gauge("embedml.observe.quality", [self._cb(_quality)], "1", "Live quality over the outcome window.")
        counter("embedml.hook.records", [self._cb(_hooks)], "{record}", "Records per sink and outcome.")
        gauge("embedml.observe.drift.psi", [self._cb(_psi)], "1", "PSI of live inputs vs the reference.")

    def _live(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        now = time.monotonic()
        for h in self.handles.open():
            seen = self._snaps.get(id(h))
            if seen is None or now - seen[0] > 0.5:
                seen = self._snaps[id(h)] = (now, h.metrics())
            yield h, seen[1]

    def _cb(self, read: Callable[[Any, dict[str, Any]], Iterator[tuple[float, dict[str, Any]]]]) -> Any:
        from opentelemetry.metrics import Observation

        def callback(options: Any) -> Iterator[Any]:
            for handle, snap in self._live():
                base = {"model": snap["model"], "version": snap["version"]}
                for value, extra in read(handle, snap):
                    yield Observation(value, {**base, **extra})

        return callback


# -- what each instrument reads from a handle and its metrics() snapshot
def _requests(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    yield s["requests"], {}


def _rows(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    yield s["rows"], {}


def _errors(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    for kind, n in s["errors_by_type"].items():
        yield n, {"type": kind}


def _latency(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    for stage, stats in s["latency_ms"].items():
        if stats["count"]:
            for q in ("p50", "p90", "p99"):
                yield stats[q] / 1e3, {"stage": stage, "quantile": q}


def _in_flight(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    yield s["in_flight"], {}


def _ready(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    yield (1 if h.health()["ready"] else 0), {}


def _load(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    yield s["load_seconds"], {}


def _quality(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    for metric in ("accuracy", "error_rate", "mae", "rmse"):
        value = (s["quality"] or {}).get(metric)
        if value is not None:
            yield value, {"metric": metric}


def _hooks(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    for stats in s["hooks"]:
        for outcome in ("accepted", "written", "dropped", "errors", "abandoned"):
            yield stats[outcome], {"sink": stats["name"], "outcome": outcome}


def _psi(h: Any, s: dict[str, Any]) -> Iterator[tuple[float, dict[str, Any]]]:
    for sink in h.hooks:
        last = getattr(sink, "last_psi", None)
        for feature, value in (last() if callable(last) else {}).items():
            yield value, {"feature": feature}


def register(handle: Any, meter: Any = None) -> Any:
    """Report ``handle`` through ``meter`` (``opentelemetry.metrics.get_meter("embedml")``
    when ``None``); the instruments are created on the first registration per meter.
    Returns the meter. Registering a handle twice is harmless. Raises ``ImportError``
    (naming the extra) when ``opentelemetry-api`` is not installed."""
    try:
        import opentelemetry.metrics  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "embedml.observe.metrics.otel needs opentelemetry-api: pip install 'embedml[otel]'"
        ) from exc
    if meter is None:
        meter = _default_meter()
    with _lock:
        bridge = _bridges.get(meter)
        if bridge is None:
            bridge = _bridges[meter] = _Bridge(meter)
    bridge.handles.add(handle)
    return meter


def unregister(handle: Any, meter: Any = None) -> bool:
    """Stop reporting ``handle`` through ``meter`` (the default meter when ``None``); returns
    whether it was registered there. The instruments stay on the meter (OpenTelemetry cannot
    remove them) and report the other handles."""
    if meter is None:
        meter = _default_meter()
    with _lock:
        bridge = _bridges.get(meter)
    return bridge is not None and bridge.handles.remove(handle)

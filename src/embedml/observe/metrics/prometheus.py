"""Export handle metrics to Prometheus (needs the ``prometheus`` extra: ``prometheus-client``).

``register(handle, registry=None)`` adds the handle to a collector on ``registry`` (the
default ``prometheus_client.REGISTRY`` when ``None``); several handles share one
collector per registry, told apart by their ``model`` and ``version`` labels. Values are
read from ``handle.metrics()`` at scrape time, so nothing is paid per prediction.

Metrics (labels ``model``, ``version`` on all of them):

* ``embedml_requests_total``, ``embedml_rows_total``, ``embedml_errors_total{type}``
* ``embedml_request_duration_seconds{stage}`` histogram, stages ``validation``, ``queue``,
  ``model``, ``total``; buckets are powers of two from 7.6 µs to 16 s
* ``embedml_batch_size`` histogram of rows per model call (buckets 1, 3, 7, 15, ...; with
  batching each joined batch counts once)
* ``embedml_in_flight``, ``embedml_ready``, ``embedml_model_load_seconds`` gauges
* ``embedml_quality{metric}`` gauge (accuracy / error_rate or mae / rmse, after outcomes)
* ``embedml_hook_records_total{sink,outcome}`` (accepted, written, dropped, errors, abandoned)
* ``embedml_drift_psi{feature}`` gauge, for each attached :class:`~embedml.DriftMonitor`
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from . import STAGES, HandleSet, Histogram

__all__ = ["BUCKETS", "EmbedMLCollector", "register", "unregister"]

#: Upper bounds (seconds) of the latency histogram buckets: bucket edges of the internal
#: histograms, so the exported counts are exact.
BUCKETS = tuple(2.0**k for k in range(-17, 5))

_LABELS = ["model", "version"]
_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[Any, EmbedMLCollector] = weakref.WeakKeyDictionary()


class EmbedMLCollector:
    """A ``prometheus_client`` collector over any number of handles."""

    def __init__(self) -> None:
        self._handles = HandleSet()

    def add(self, handle: Any) -> None:
        self._handles.add(handle)

    def remove(self, handle: Any) -> bool:
        return self._handles.remove(handle)

    def handles(self) -> list[Any]:
        return self._handles.open()

    def describe(self) -> list[Any]:
        return []  # metrics come and go with handles: describe nothing, collect at scrape

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        fam = {
            "requests": CounterMetricFamily(
                "embedml_requests", "Prediction calls handled.", labels=_LABELS
            ),
            "rows": CounterMetricFamily("embedml_rows", "Rows predicted.", labels=_LABELS),
            "errors": CounterMetricFamily(
                "embedml_errors", "Calls that raised, by error type.", labels=[*_LABELS, "type"]
            ),
            "duration": HistogramMetricFamily(
                "embedml_request_duration_seconds",
                "Time per call, by stage.",
                labels=[*_LABELS, "stage"],
            ),
            "batch": HistogramMetricFamily(
                "embedml_batch_size", "Rows per model call.", labels=_LABELS
            ),
            "in_flight": GaugeMetricFamily(
                "embedml_in_flight", "Calls running now.", labels=_LABELS
            ),
            "ready": GaugeMetricFamily(
                "embedml_ready", "1 when the handle is ready to serve.", labels=_LABELS
            ),
            "load": GaugeMetricFamily(
                "embedml_model_load_seconds", "Time taken to load the model.", labels=_LABELS
            ),
            "quality": GaugeMetricFamily(
                "embedml_quality",
                "Live quality over the outcome window.",
                labels=[*_LABELS, "metric"],
            ),
            "hooks": CounterMetricFamily(
                "embedml_hook_records",
                "Prediction records per sink and outcome.",
                labels=[*_LABELS, "sink", "outcome"],
            ),
            "psi": GaugeMetricFamily(
                "embedml_drift_psi",
                "Population stability index of live inputs vs the reference.",
                labels=[*_LABELS, "feature"],
            ),
        }
        for handle in self.handles():
            _add_handle(fam, handle)
        yield from fam.values()


def _add_handle(fam: dict[str, Any], handle: Any) -> None:
    snap = handle.metrics()
    lab = [snap["model"], snap["version"]]
    fam["requests"].add_metric(lab, snap["requests"])
    fam["rows"].add_metric(lab, snap["rows"])
    for kind, n in snap["errors_by_type"].items():
        fam["errors"].add_metric([*lab, kind], n)
    hists = handle._obs.metrics.histograms()
    for stage in STAGES:
        counts, total, n = hists[stage]
        h = Histogram()
        h.counts = counts
        cum = h.cumulative(list(BUCKETS))
        buckets = [(repr(b), c) for b, c in zip(BUCKETS, cum)] + [("+Inf", n)]
        fam["duration"].add_metric([*lab, stage], buckets, total)
    sizes = snap["batch_size"]
    bounds = sorted(int(k.split("-")[-1]) for k in sizes)
    cum_sizes, seen = [], 0
    for hi in bounds:
        seen += sum(v for k, v in sizes.items() if int(k.split("-")[-1]) == hi)
        cum_sizes.append((str(hi), seen))
    fam["batch"].add_metric(lab, [*cum_sizes, ("+Inf", seen)], snap["rows"])
    fam["in_flight"].add_metric(lab, snap["in_flight"])
    fam["ready"].add_metric(lab, 1.0 if handle.health()["ready"] else 0.0)
    fam["load"].add_metric(lab, snap["load_seconds"])
    for metric in ("accuracy", "error_rate", "mae", "rmse"):
        value = (snap["quality"] or {}).get(metric)
        if value is not None:
            fam["quality"].add_metric([*lab, metric], value)
    for stats in snap["hooks"]:
        for outcome in ("accepted", "written", "dropped", "errors", "abandoned"):
            fam["hooks"].add_metric([*lab, stats["name"], outcome], stats[outcome])
    for sink in handle.hooks:
        psi = getattr(sink, "last_psi", None)
        for feature, value in (psi() if callable(psi) else {}).items():
            fam["psi"].add_metric([*lab, feature], value)


def register(handle: Any, registry: Any = None) -> EmbedMLCollector:
    """Export ``handle``'s metrics on ``registry`` (default: ``prometheus_client.REGISTRY``).

    Returns the registry's embedml collector. Registering the same handle twice is a no-op;
    closed handles disappear from the output. Raises ``ImportError`` (with the extra to
    install) when ``prometheus-client`` is missing.
    """
    try:
        import prometheus_client
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "embedml.observe.metrics.prometheus needs prometheus-client: pip install 'embedml[prometheus]'"
        ) from exc
    registry = prometheus_client.REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = EmbedMLCollector()
            registry.register(collector)
            _collectors[registry] = collector
    collector.add(handle)
    return collector


def unregister(handle: Any, registry: Any = None) -> bool:
    """Stop exporting ``handle`` on ``registry``; ``False`` if it was not registered."""
    import prometheus_client

    registry = prometheus_client.REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(registry)
    return collector.remove(handle) if collector is not None else False

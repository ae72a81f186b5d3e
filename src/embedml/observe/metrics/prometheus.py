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

``register_stream(runner, registry=None)`` adds a
:class:`~embedml.offline.broker.StreamRunner` (labels ``model`` and ``source``, the
stream's URL without a password), read from ``runner.metrics()`` at scrape time:

* ``embedml_stream_entries_total{outcome}``: ``consumed``, ``produced``,
  ``dead_lettered``, ``redelivered``, ``acknowledged``
* ``embedml_stream_batch_size`` histogram of entries per batch
* ``embedml_stream_latency_seconds{quantile}`` gauge (0.5, 0.9, 0.99): from when the
  broker stored an entry until it was acknowledged
* ``embedml_stream_pending``, ``embedml_stream_lag``, ``embedml_stream_in_flight`` gauges
  (pending and lag are left out of a scrape when the broker does not answer)
* ``embedml_stream_broker_retries_total``
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from . import STAGES, HandleSet, Histogram

__all__ = ["BUCKETS", "EmbedMLCollector", "register", "register_stream", "unregister"]

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
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()

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
        streams = list(self._streams)
        if streams:
            yield from _stream_families(streams)


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


def _stream_families(runners: list[Any]) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    labels = ["model", "source"]
    entries = CounterMetricFamily(
        "embedml_stream_entries", "Stream entries, by outcome.", labels=[*labels, "outcome"]
    )
    sizes = HistogramMetricFamily(
        "embedml_stream_batch_size", "Entries per stream batch.", labels=labels
    )
    latency = GaugeMetricFamily(
        "embedml_stream_latency_seconds",
        "From when the broker stored an entry until it was acknowledged.",
        labels=[*labels, "quantile"],
    )
    gauges = {
        key: GaugeMetricFamily(f"embedml_stream_{key}", text, labels=labels)
        for key, text in (
            ("pending", "Entries delivered to the group and not acknowledged."),
            ("lag", "Entries in the stream not yet delivered to the group."),
            ("in_flight", "Entries this runner read and has not acknowledged."),
        )
    }
    retries = CounterMetricFamily(
        "embedml_stream_broker_retries", "Broker calls retried.", labels=labels
    )
    for runner in runners:
        snap = runner.metrics()
        lab = [snap["model"], snap["source"]]
        for outcome in ("consumed", "produced", "dead_lettered", "redelivered", "acknowledged"):
            entries.add_metric([*lab, outcome], snap[outcome])
        seen, buckets = 0, []
        for size, n in sorted(snap["batch_sizes"].items()):
            seen += n
            buckets.append((str(size), seen))
        total = sum(k * n for k, n in snap["batch_sizes"].items())
        sizes.add_metric(lab, [*buckets, ("+Inf", seen)], total)
        for q in ("p50", "p90", "p99"):
            value = snap["latency_ms"][q]
            if value is not None:
                latency.add_metric([*lab, f"0.{q[1:]}"], value / 1e3)
        for key, family in gauges.items():
            if snap.get(key) is not None:
                family.add_metric(lab, snap[key])
        retries.add_metric(lab, snap["broker_retries"])
    yield from (entries, sizes, latency, *gauges.values(), retries)


def _collector(registry: Any) -> EmbedMLCollector:
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
    return collector


def register_stream(runner: Any, registry: Any = None) -> EmbedMLCollector:
    """Export a :class:`~embedml.offline.broker.StreamRunner`'s metrics on ``registry``
    (default: ``prometheus_client.REGISTRY``); it is dropped once garbage-collected.
    Returns the registry's embedml collector. Raises ``ImportError`` (with the extra to
    install) when ``prometheus-client`` is missing."""
    collector = _collector(registry)
    collector._streams.add(runner)
    return collector


def register(handle: Any, registry: Any = None) -> EmbedMLCollector:
    """Export ``handle``'s metrics on ``registry`` (default: ``prometheus_client.REGISTRY``).

    Returns the registry's embedml collector. Registering the same handle twice is a no-op;
    closed handles disappear from the output. Raises ``ImportError`` (with the extra to
    install) when ``prometheus-client`` is missing.
    """
    collector = _collector(registry)
    collector.add(handle)
    return collector


def unregister(handle: Any, registry: Any = None) -> bool:
    """Stop exporting ``handle`` on ``registry``; ``False`` if it was not registered."""
    import prometheus_client

    registry = prometheus_client.REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(registry)
    return collector.remove(handle) if collector is not None else False

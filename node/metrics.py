"""The node's metrics, served as Prometheus text by GET /metrics (node/httpd.py).

Why counters of our own instead of prometheus_client's Counter/Histogram objects: those
take a lock and a label lookup on every update, on every request; here an update is two
dict increments and a bisect. prometheus_client is used only where it earns its place:
at scrape time a collector turns these numbers into metric families and
``generate_latest`` writes the exposition format (escaping, ordering, ``# HELP``/``# TYPE``),
on a private ``CollectorRegistry``; its HTTP server and threads are never started.

Parts built on the node (federation) add gauges with :meth:`Metrics.gauge` without the node
importing them.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .protocol.api import METHODS
from .protocol.errors import ErrorCode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# request latency buckets (seconds): sub-millisecond answers up to slow media/federation calls
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# successful calls that put a message in a chat (cloud or secret)
MESSAGE_METHODS = frozenset({"messages.send", "messages.forward", "secret.send"})
UNKNOWN = "unknown"  # the label of a method the schema does not declare (bounded cardinality)

Gauge = Callable[[], float]
AsyncGauge = Callable[[], Awaitable[float]]


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last: +Inf
        self.sum = 0.0


class Metrics:
    """Request counters and latency histograms the gateway updates, gauges read at scrape
    time, and the exposition text."""

    def __init__(self, node_id: str, name: str) -> None:
        self.node_id = node_id
        self.name = name
        self.started = time.time()
        self.requests: dict[tuple[str, str], int] = {}  # (method, code) -> count
        self.latency: dict[str, _Histogram] = {}  # method group ("messages") -> histogram
        self.messages_sent = 0
        self.http: dict[tuple[str, int], int] = {}  # (path or "other", status) -> count
        self.gauges: dict[str, tuple[str, Gauge]] = {}
        self.async_gauges: dict[str, tuple[str, AsyncGauge]] = {}
        self._groups: dict[str, str] = {}  # method -> its group, computed once

    # --- hot path ---------------------------------------------------------------------
    def observe(self, method: str, code: str, seconds: float) -> None:
        """One answered request: ``code`` is ``OK`` or the error code."""
        group = self._groups.get(method)
        if group is None:
            if method not in METHODS:
                method = group = UNKNOWN
            else:
                group = self._groups[method] = method.partition(".")[0]
        if code != "OK" and code not in ErrorCode.__members__:
            code = "OTHER"  # a code relayed from elsewhere: labels stay a bounded set
        key = (method, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        h = self.latency.get(group)
        if h is None:
            h = self.latency[group] = _Histogram()
        h.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        h.sum += seconds
        if code == "OK" and method in MESSAGE_METHODS:
            self.messages_sent += 1

    def http_request(self, path: str, status: int) -> None:
        key = (path if path in ("/health", "/metrics") else "other", status)
        self.http[key] = self.http.get(key, 0) + 1

    # --- registration -----------------------------------------------------------------
    def gauge(self, name: str, doc: str, read: Gauge) -> None:
        """Add a gauge read at each scrape (``fedgram_`` is prefixed to ``name``). Reading
        must be cheap and must not block: it runs in the event loop."""
        self.gauges[self._name(name)] = (doc, read)

    def gauge_async(self, name: str, doc: str, read: AsyncGauge) -> None:
        """A gauge whose reading waits (a database count): awaited at each scrape, before
        the text is written."""
        self.async_gauges[self._name(name)] = (doc, read)

    def _name(self, name: str) -> str:
        full = f"fedgram_{name}"
        if full in self.gauges or full in self.async_gauges:
            raise KeyError(f"two gauges named {full}")
        return full

    async def read_async(self) -> dict[str, tuple[str, float]]:
        """The async gauges' values now (one that fails reads NaN)."""
        out: dict[str, tuple[str, float]] = {}
        for name, (doc, read) in self.async_gauges.items():
            try:
                out[name] = (doc, float(await read()))
            except Exception:
                out[name] = (doc, float("nan"))
        return out

    # --- scrape -----------------------------------------------------------------------
    def render(self, values: dict[str, tuple[str, float]]) -> bytes:
        """The exposition text: our counters, the registered gauges and ``values`` (name
        -> (doc, value)) gathered by the caller (the ones that need a database read)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, values))
        return generate_latest(registry)


class _Collector(Collector):
    def __init__(self, m: Metrics, values: dict[str, tuple[str, float]]) -> None:
        self.m = m
        self.values = values

    def collect(self) -> Iterator[Metric]:
        m = self.m
        info = GaugeMetricFamily(
            "fedgram_build_info",
            "Build and identity of this node (always 1).",
            labels=["version", "node_id", "name"],
        )
        info.add_metric([__version__, m.node_id, m.name], 1)
        yield info
        yield GaugeMetricFamily(
            "fedgram_start_time_seconds", "When the node started (Unix time).", value=m.started
        )
        req = CounterMetricFamily(
            "fedgram_requests",
            "Requests answered over the gateway, by method and result code (OK or the error).",
            labels=["method", "code"],
        )
        for (method, code), n in sorted(m.requests.items()):
            req.add_metric([method, code], n)
        yield req
        lat = HistogramMetricFamily(
            "fedgram_request_duration_seconds",
            "Time from a request's arrival to its answer, by method group (auth, messages...).",
            labels=["group"],
        )
        for group, h in sorted(m.latency.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*BUCKETS, float("inf")), h.counts, strict=True):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            lat.add_metric([group], buckets, sum_value=h.sum)
        yield lat
        yield CounterMetricFamily(
            "fedgram_messages_sent",
            "Messages sent through this node's gateway (cloud and secret, forwards included).",
            value=m.messages_sent,
        )
        http = CounterMetricFamily(
            "fedgram_http_requests",
            "Plain HTTP requests on the gateway's port, by path and status.",
            labels=["path", "status"],
        )
        for (path, status), n in sorted(m.http.items()):
            http.add_metric([path, str(status)], n)
        yield http
        for name, (doc, value) in sorted(self.values.items()):
            yield GaugeMetricFamily(name, doc, value=value)
        for name, (doc, read) in sorted(m.gauges.items()):
            yield GaugeMetricFamily(name, doc, value=_read(read))


def _read(read: Gauge) -> float:
    """A part's gauge that fails reads NaN (the scrape still answers)."""
    try:
        return float(read())
    except Exception:
        return float("nan")

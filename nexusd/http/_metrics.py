"""The daemon's figures in the Prometheus text format (`GET /metrics`).

Most figures are counters the daemon keeps anyway (`Daemon.stats`), read
when Prometheus scrapes, through a custom collector: nothing is counted
twice on the hot path. Two histograms are observed as it runs, once per
batch of writes a session commits: the store's commit, and the time from a
change being decided until it is durable and in every subscriber's queue.
The HTTP channel counts its requests and errors itself. No label names a
session or a client: the number of series stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: The methods counted by name; any other is "other".
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_LATENCY_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                           0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _DaemonCollector(Collector):
    """The figures of the last `Daemon.stats` report, as metric families."""

    def __init__(self) -> None:
        self.figures: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        f = self.figures
        if not f:
            return
        active = f["sessions_active"]
        sessions = GaugeMetricFamily("nexusd_sessions", "Sessions by state: active (an "
                                     "actor in memory) or dormant (on disk only)",
                                     labels=["state"])
        sessions.add_metric(["active"], active)
        sessions.add_metric(["dormant"], max(0, f["sessions_stored"] - active))
        yield sessions
        conns = GaugeMetricFamily("nexusd_connections", "Open client connections by "
                                  "transport", labels=["transport"])
        for transport in ("unix", "websocket", "http"):
            conns.add_metric([transport], f["connections_by_transport"].get(transport, 0))
        yield conns
        yield GaugeMetricFamily("nexusd_subscribers", "Subscriptions to sessions (watchers "
                                "and event streams)", value=f["subscribers"])
        for name, key, text in (
                ("nexusd_sessions_created", "sessions_created", "Sessions created"),
                ("nexusd_acknowledged_writes", "changes_published",
                 "Changes committed, acknowledged and fanned out"),
                ("nexusd_lagged", "lagged",
                 "Subscribers dropped because their queue was full (fan-out drops)"),
                ("nexusd_hibernations", "hibernations",
                 "Sessions that left memory (hibernated or ended)"),
                ("nexusd_activations", "activations", "Dormant sessions brought back")):
            yield CounterMetricFamily(name, text, value=f[key])
        ended = CounterMetricFamily("nexusd_sessions_ended", "Sessions that ended, by "
                                    "reason: ttl or idle (expiries), invalidated",
                                    labels=["reason"])
        for reason in ("ttl", "idle", "invalidated"):
            ended.add_metric([reason], f["sessions_ended_by"].get(reason, 0))
        yield ended
        yield GaugeMetricFamily("nexusd_uptime_seconds", "Seconds since the daemon started",
                                value=f["uptime_seconds"])
        cluster = f.get("cluster")
        if cluster:  # with the Redis engine
            for name, key, text in (
                    ("nexusd_cluster_forwarded", "forwarded",
                     "Requests sent to the daemon that owns their session"),
                    ("nexusd_cluster_served_for_others", "served_for_others",
                     "Requests other daemons forwarded here and served here"),
                    ("nexusd_cluster_failed", "failed",
                     "Forwarded requests answered unavailable (their owner went away)")):
                yield CounterMetricFamily(name, text, value=cluster[key])
            yield GaugeMetricFamily("nexusd_cluster_remote_subscriptions",
                                    "Subscriptions served here for other daemons' clients",
                                    value=cluster["remote_subscriptions"])
            yield GaugeMetricFamily("nexusd_cluster_reaper", "1 while this daemon looks for "
                                    "dormant sessions past their deadline (one at a time)",
                                    value=int(cluster["reaper"]))


class Metrics:
    """The daemon's metrics registry; see the module's docstring.

    `observe_flush` is given to the session actors; the HTTP channel counts
    with `request`; `render(figures)` writes the text format.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._daemon = _DaemonCollector()
        self.registry.register(self._daemon)
        self._commit = Histogram(
            "nexusd_commit_seconds", "Store commit of one session's batch of writes",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._sync = Histogram(
            "nexusd_sync_seconds", "From a change being decided until it is durable and "
            "in every subscriber's queue (the oldest change of each batch)",
            buckets=_LATENCY_BUCKETS, registry=self.registry)
        self._requests = Counter(
            "nexusd_http_requests", "HTTP requests by method, route and status",
            ["method", "route", "status"], registry=self.registry)
        self._errors = Counter(
            "nexusd_http_errors", "HTTP requests answered with an error, by error code",
            ["code"], registry=self.registry)

    def observe_flush(self, commit_seconds: float, sync_seconds: float) -> None:
        self._commit.observe(commit_seconds)
        self._sync.observe(sync_seconds)

    def request(self, method: str, route: str, status: int, code: str | None) -> None:
        """Counts one HTTP request; `route` is its path template, never the
        path. A method outside the standard ones is counted as "other": the
        client chooses it, and each would be a series of its own."""
        method = method if method in _METHODS else "other"
        self._requests.labels(method, route, str(status)).inc()
        if code is not None:
            self._errors.labels(code).inc()

    def render(self, figures: Mapping[str, Any]) -> bytes:
        """The text format, with `figures` (a `Daemon.stats` report) as the
        daemon's counters."""
        self._daemon.figures = figures
        return generate_latest(self.registry)

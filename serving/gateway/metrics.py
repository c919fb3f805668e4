"""Prometheus metrics of the gateway, on their own registry (several gateways per process in tests).

Names (all prefixed `mx_gateway_`): `requests_total{method,code}`, `queries_total{client}`
(rows answered), `refusals_total{client,reason}`, `flagged_clients` (gauge),
`flags_total{detector}`, `request_latency_seconds{method}`,
`upstream_latency_seconds{method}`, `detector_latency_seconds{detector}`, `upstream_up`.
Scrape them at `http://HOST:METRICS_PORT/metrics`.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["METRIC_NAMES", "GatewayMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            10.0, 30.0)

METRIC_NAMES = (
    "mx_gateway_requests_total",
    "mx_gateway_queries_total",
    "mx_gateway_refusals_total",
    "mx_gateway_flagged_clients",
    "mx_gateway_flags_total",
    "mx_gateway_request_latency_seconds",
    "mx_gateway_upstream_latency_seconds",
    "mx_gateway_detector_latency_seconds",
    "mx_gateway_upstream_up",
)


class GatewayMetrics:
    """The gateway's counters, gauges and histograms; `serve(port)` exposes them over HTTP."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("mx_gateway_requests", "RPCs answered, by method and status code",
                                ["method", "code"], registry=r)
        self.queries = Counter("mx_gateway_queries", "Query rows answered, by client",
                               ["client"], registry=r)
        self.refusals = Counter("mx_gateway_refusals", "Requests refused by the policy",
                                ["client", "reason"], registry=r)
        self.flagged = Gauge("mx_gateway_flagged_clients",
                             "Clients currently flagged by a detector", registry=r)
        self.flags = Counter("mx_gateway_flags", "Clients newly flagged, by detector",
                             ["detector"], registry=r)
        self.latency = Histogram("mx_gateway_request_latency_seconds",
                                 "Time from request to answer in the gateway", ["method"],
                                 buckets=_BUCKETS, registry=r)
        self.upstream_latency = Histogram("mx_gateway_upstream_latency_seconds",
                                          "Time of the forwarded upstream call", ["method"],
                                          buckets=_BUCKETS, registry=r)
        self.detector_latency = Histogram("mx_gateway_detector_latency_seconds",
                                          "Time spent in each detector per request",
                                          ["detector"], buckets=_BUCKETS, registry=r)
        self.upstream_up = Gauge("mx_gateway_upstream_up",
                                 "1 while the upstream model server answers", registry=r)
        self._server = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, memoised: the request path asks for the same few children
        on every RPC, and `labels()` validates, copies and locks each time. Thread-safe (a race
        only asks `labels()` twice, which hands back the same child)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP server on `port` (0: any free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

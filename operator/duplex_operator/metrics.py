"""Prometheus metrics of the operator, in a registry of its own: is it reconciling?

The alert for an operator that stopped reconciling reads the time of the last pass that
completed; a standby replica reports 0 there and `duplex_operator_leader` 0, so that the
freshest pass among the replicas is the leader's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_PASS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.passes = Counter(
            "duplex_operator_reconcile_passes",
            "Reconcile passes by result: ok, or failed (the cluster could not be read)",
            ["result"],
            registry=r,
        )
        self.last_pass = Gauge(
            "duplex_operator_last_reconcile_timestamp_seconds",
            "Unix time at which the last reconcile pass completed (0: none yet)",
            registry=r,
        )
        self.pass_seconds = Histogram(
            "duplex_operator_reconcile_seconds",
            "Time of one reconcile pass: observe, plan and apply",
            buckets=_PASS_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "duplex_operator_refused_writes",
            "Writes the API server refused (each also a Warning event on its object)",
            registry=r,
        )
        self.leader = Gauge(
            "duplex_operator_leader",
            "1 while this replica holds the Lease and reconciles, 0 while it stands by",
            registry=r,
        )
        self.passes.labels("ok")
        self.passes.labels("failed")

    def follow_leadership(self, leading: Callable[[], bool]) -> None:
        self.leader.set_function(lambda: 1.0 if leading() else 0.0)

    def pass_done(self, seconds: float, refused: int) -> None:
        self.passes.labels("ok").inc()
        self.pass_seconds.observe(seconds)
        self.refused.inc(refused)
        self.last_pass.set(time.time())

    def pass_failed(self) -> None:
        self.passes.labels("failed").inc()


class MetricsServer:
    """/metrics over HTTP, served from a thread that `close()` stops and joins."""

    def __init__(self, metrics: OperatorMetrics, host: str, port: int) -> None:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
        self._server: WSGIServer = server
        self._thread: threading.Thread = thread
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

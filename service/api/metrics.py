"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("bncheck_http_requests", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("bncheck_http_request_duration_seconds", "HTTP request latency",
                                 ["route"], buckets=_LATENCY, registry=r)
        self.checks = Counter("bncheck_checks", "Checks by outcome: passed, failed or rejected",
                              ["outcome"], registry=r)
        self.phase = Histogram("bncheck_check_phase_seconds", "Time in each phase of a check",
                               ["phase"], buckets=_LATENCY, registry=r)
        self.elements = Counter("bncheck_checked_elements", "Elements of x checked", registry=r)
        self.in_flight = Gauge("bncheck_checks_in_flight", "Checks running now", registry=r)
        self.rejected = Counter("bncheck_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.transport = Counter(
            "bncheck_worker_transport",
            "Bodies of 1 MiB or more between the server and its worker processes, by direction and "
            "carrier: shared_memory, or pipe when /dev/shm is missing or full (Docker: --shm-size)",
            ["direction", "carrier"], registry=r)

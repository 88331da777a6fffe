"""Prometheus metrics, one registry per app (so tests can build many apps)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, worker_pids: Callable[[], list[int]] = list) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ... of the server
        r.register(_WorkerMemory(worker_pids))
        self.worker_deaths = Counter("bncheck_worker_deaths", "Worker processes that died (killed, out of memory) "
                                     "and were replaced", registry=r)
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
        self.queued = Gauge("bncheck_checks_queued", "Checks waiting for a slot (BNCHECK_QUEUE)", registry=r)
        self.queue_wait = Histogram("bncheck_queue_wait_seconds", "Time checks waited for a slot",
                                    buckets=_LATENCY, registry=r)
        self.rejected = Counter("bncheck_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.transport = Counter(
            "bncheck_worker_transport",
            "Bodies of 1 MiB or more between the server and its worker processes, by direction and "
            "carrier: shared_memory, or pipe when /dev/shm is missing or full (Docker: --shm-size)",
            ["direction", "carrier"], registry=r)


class _WorkerMemory(Collector):
    """Resident memory of each worker process, read from /proc when scraped."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("bncheck_worker_resident_memory_bytes", "Resident memory of each worker process",
                                   labels=["pid"])
        page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/statm") as f:
                    resident = int(f.read().split()[1]) * page
            except (OSError, ValueError, IndexError):
                continue  # gone, or not Linux
            family.add_metric([str(pid)], resident)
        yield family

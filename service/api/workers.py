"""Where a check runs: worker processes (the default) or threads.

Parsing a 40 MB body (orjson, base64) and encoding the answer hold Python's GIL
for tens of milliseconds at a time; in a thread that stalls the event loop,
and /livez with it. In worker processes the event loop only moves bytes, so it
keeps answering while every core computes. Threads remain for tests and
embedding (``BNCHECK_EXECUTOR=thread``).

A job returns picklable results only: an ``Outcome`` or a ``Failure`` that
already holds its problem+json body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio

from service.numerics.errors import InputError, TimeBudgetError

from . import runner
from .errors import ProblemError, from_domain, problem_body
from .settings import Settings

__all__ = ["Failure", "ProcessWorkers", "ThreadWorkers", "make_workers"]

log = logging.getLogger("bncheck.workers")


@dataclass(frozen=True)
class Failure:
    status: int
    body: bytes
    headers: dict[str, str]


def time_budget_problem(settings: Settings) -> ProblemError:
    detail = f"the check did not finish within {settings.request_timeout_s:g} s (BNCHECK_REQUEST_TIMEOUT_S)"
    return ProblemError(503, "time-budget", "Over the time budget", detail, headers={"Retry-After": "10"})


def job(body: bytes, settings: Settings, deadline: float | None) -> runner.Outcome | Failure:
    """One check; every expected error comes back as a problem document."""
    try:
        return runner.run(body, settings, deadline=deadline)
    except ProblemError as exc:
        problem = exc
    except InputError as exc:
        problem = from_domain(exc)
    except TimeBudgetError:
        problem = time_budget_problem(settings)
    return Failure(problem.status, problem_body(problem, "/v1/check"), problem.headers)


class ThreadWorkers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)

    async def run(self, body: bytes, deadline: float, done: Callable[[], None]) -> runner.Outcome | Failure:
        def work() -> runner.Outcome | Failure:
            try:
                return job(body, self.settings, deadline)
            finally:
                done()

        return await anyio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)

    def start(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def _init_worker(nice: int) -> None:
    """Workers yield the CPU to the server process, whose event loop must keep answering
    (/livez, new requests). Measured on 2 cores with 4 checks of 4M elements running:
    /livez p99 64 ms at nice 5 against 116 ms at nice 0; one check over HTTP took 940 ms
    against 860 ms (BNCHECK_WORKER_NICE trades one for the other)."""
    with contextlib.suppress(OSError):
        os.nice(nice)


def _warm() -> int:
    from service.numerics import check  # noqa: F401  (import everything before the first request)

    return os.getpid()


class ProcessWorkers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the server process runs threads, which fork does not copy safely.
                self._pool = ProcessPoolExecutor(self.settings.max_concurrent,
                                                 mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(self.settings.worker_nice,))
            return self._pool

    def start(self) -> None:
        """Start every worker now, so the first requests do not pay for the imports."""
        futures = [self.pool.submit(_warm) for _ in range(self.settings.max_concurrent)]
        pids = {f.result(timeout=120) for f in futures}
        log.info("started %d worker processes: %s", len(pids), sorted(pids))

    async def run(self, body: bytes, deadline: float, done: Callable[[], None]) -> runner.Outcome | Failure:
        future: Future[Any] = self.pool.submit(job, body, self.settings, deadline)
        future.add_done_callback(lambda _: done())
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        """Let running checks finish, then stop the workers."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


def make_workers(settings: Settings) -> ThreadWorkers | ProcessWorkers:
    return ProcessWorkers(settings) if settings.executor == "process" else ThreadWorkers(settings)

"""Where a check runs: worker processes (the default) or threads.

Parsing a 40 MB body (orjson, base64) and encoding the answer hold Python's GIL
for tens of milliseconds at a time; in a thread that stalls the event loop,
and /livez with it. In worker processes the event loop only moves bytes, so it
keeps answering while every core computes. Threads remain for tests and
embedding (``BNCHECK_EXECUTOR=thread``).

A job returns picklable results only: an ``Outcome`` or a ``Failure`` that
already holds its problem+json body. Bodies of a megabyte or more travel through
shared memory (shm.py), not the pipe: the server writes the request into a
segment as it arrives, and the worker writes its answer into another.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request

from service.numerics.errors import InputError, TimeBudgetError

from . import heap, runner, shm
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


def job(body: Any, settings: Settings, deadline: float | None, *, joined: bool = True
        ) -> runner.Outcome | Failure:
    """One check; every expected error comes back as a problem document."""
    try:
        with heap.busy():
            return runner.run(body, settings, deadline=deadline, joined=joined)
    except ProblemError as exc:
        problem = exc
    except InputError as exc:
        problem = from_domain(exc)
    except TimeBudgetError:
        problem = time_budget_problem(settings)
    return Failure(problem.status, problem_body(problem, "/v1/check"), problem.headers)


def shared_job(path: str, size: int, settings: Settings, deadline: float | None, owner: str
               ) -> runner.Outcome | Failure:
    """``job`` on a body in a shared-memory segment, parsed in place; a large answer goes
    back in a segment of its own (named for ``owner``, the server, which removes it)."""
    seg = shm.Segment.open(path, size)
    try:
        result = job(seg.mm, settings, deadline, joined=False)
    finally:
        seg.close()
    if not isinstance(result, runner.Outcome) or not result.parts:
        return result
    # The answer's pieces go into the segment one after another: no joined copy of them.
    sizes = [memoryview(part).nbytes for part in result.parts]
    answer = sum(sizes)
    out = shm.Segment.create(answer, owner) if answer >= shm.MIN_BYTES else None
    if out is not None:
        try:
            at = 0
            for part, size in zip(result.parts, sizes, strict=True):
                out.write(at, part)
                at += size
        except OSError:  # /dev/shm filled up meanwhile: the pipe carries it
            out.unlink()
        else:
            out.close()
            return dataclasses.replace(result, parts=(), shared=(out.path, out.size))
    return dataclasses.replace(result, body=b"".join(result.parts), parts=())


def discard(result: Any) -> None:
    """Remove the segment of an answer nobody will send (its request was cancelled)."""
    if isinstance(result, runner.Outcome) and result.shared is not None:
        with contextlib.suppress(OSError):
            os.unlink(result.shared[0])


class ThreadWorkers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)

    async def receive(self, request: Request) -> bytes:
        return await request.body()

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


def _init_worker(nice: int, heap_mb: int) -> None:
    """Workers yield the CPU to the server process, whose event loop must keep answering
    (/livez, new requests). Measured on 2 cores with 4 checks of 4M elements running
    (python -m bench.service): /livez p99 45 ms at nice 5 against 72 ms at nice 0. A
    single check over HTTP is no slower at nice 5: nothing else competes for the CPU.
    And they keep their heap from one check to the next (heap.py)."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    heap.keep(heap_mb)


def _warm() -> int:
    from service.numerics import check  # noqa: F401  (import everything before the first request)

    return os.getpid()


class ProcessWorkers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.owner = shm.owner_tag()  # every shared-memory segment of these workers

    @property
    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the server process runs threads, which fork does not copy safely.
                self._pool = ProcessPoolExecutor(
                    self.settings.max_concurrent, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_init_worker, initargs=(self.settings.worker_nice, self.settings.worker_heap_mb))
            return self._pool

    def start(self) -> None:
        """Start every worker now, so the first requests do not pay for the imports."""
        swept = shm.sweep()
        if swept:
            log.info("removed %d shared-memory segments left by servers that are gone", swept)
        futures = [self.pool.submit(_warm) for _ in range(self.settings.max_concurrent)]
        pids = {f.result(timeout=120) for f in futures}
        log.info("started %d worker processes: %s", len(pids), sorted(pids))

    async def receive(self, request: Request) -> bytes | shm.Segment:
        """The body: written into a shared-memory segment as it arrives when it is large
        and the Content-Length says so up front; otherwise bytes."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) < shm.MIN_BYTES:
            return await request.body()
        seg = shm.Segment.create(int(length), self.owner)  # statvfs and open: no need for a thread
        if seg is None:  # no /dev/shm, or no room in it: the pipe still works
            return await request.body()
        stream = request.stream()
        at = 0
        try:
            async for chunk in stream:
                if at + len(chunk) > seg.size:
                    break
                try:
                    seg.write(at, chunk)
                except OSError:  # /dev/shm filled up meanwhile: keep what arrived, in memory
                    pieces = [seg.read_back(at), chunk]
                    seg.unlink()
                    return b"".join(pieces + [c async for c in stream])
                at += len(chunk)
        except BaseException:
            seg.unlink()
            raise
        seg.close()
        if at != seg.size:
            seg.unlink()
            detail = f"the body did not match its Content-Length of {seg.size:,} bytes"
            raise ProblemError(400, "malformed-json", "Malformed JSON", detail)
        return seg

    async def run(self, body: bytes | shm.Segment, deadline: float, done: Callable[[], None]
                  ) -> runner.Outcome | Failure:
        seg = body if isinstance(body, shm.Segment) else None
        try:
            if seg is not None:
                future: Future[Any] = self.pool.submit(shared_job, seg.path, seg.size, self.settings, deadline,
                                                       self.owner)
            else:
                future = self.pool.submit(job, body, self.settings, deadline)
        except BaseException:
            if seg is not None:
                seg.unlink()
            raise
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()

        def finished(f: Future[Any]) -> None:
            # In the pool's thread, also when nobody waits any more (a cancelled request):
            # every segment is removed here, whatever happened.
            try:
                outcome: tuple[bool, Any] = (True, f.result())
            except BaseException as exc:  # noqa: BLE001 (handed to the waiting request)
                outcome = (False, exc)
            finally:
                done()
            try:
                if waiter.cancelled():  # over the time budget: nobody will send the answer
                    discard(outcome[1])
                    return
                try:
                    loop.call_soon_threadsafe(_settle, waiter, outcome)
                except RuntimeError:  # the loop has closed
                    discard(outcome[1])
            finally:
                # Once the answer is on its way: freeing 40 MB of pages takes ~8 ms.
                if seg is not None:
                    seg.unlink()

        future.add_done_callback(finished)
        return await waiter

    def shutdown(self) -> None:
        """Let running checks finish, then stop the workers."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        shm.remove_all(self.owner)  # answers that finished after the event loop stopped


def _settle(waiter: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if waiter.done():  # cancelled: over the time budget, or the server is stopping
        discard(outcome[1])
        return
    ok, value = outcome
    if ok:
        waiter.set_result(value)
    else:
        waiter.set_exception(value)


def make_workers(settings: Settings) -> ThreadWorkers | ProcessWorkers:
    return ProcessWorkers(settings) if settings.executor == "process" else ThreadWorkers(settings)

"""Where a check runs: worker processes (the default) or threads.

Parsing a 40 MB body (orjson, base64) and encoding the answer hold Python's GIL
for tens of milliseconds at a time; in a thread that stalls the event loop,
and /livez with it. In worker processes the event loop only moves bytes, so it
keeps answering while every core computes. Threads remain for tests and
embedding (``BNCHECK_EXECUTOR=thread``).

A job returns picklable results only: an ``Outcome`` or a ``Failure`` that
already holds its problem+json body.

Supervision: a worker that dies (``kill -9``, the kernel's OOM killer) breaks a
``ProcessPoolExecutor`` for good. The broken pool is replaced by a new one, warmed
in the background (``/readyz`` answers 503 meanwhile); every request it was running
gets a 503 "worker died" with Retry-After, never a hang, and its slot is released. A
body whose worker died before gets a 413 the second time instead of killing another
one. Replacing the whole pool, rather than supervising each process, keeps the
standard library's executor (its queues, its shutdown) and costs one warm-up of the
other worker, which a death has usually interrupted anyway. Bodies of a megabyte or more travel through
shared memory (shm.py), not the pipe: the server writes the request into a
segment as it arrives, and the worker writes its answer into another.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request

from bncheck.numerics.errors import InputError, TimeBudgetError

from . import heap, kserve, runner, shm
from .errors import MEDIA_TYPE, ProblemError, from_domain, render
from .settings import Settings

__all__ = ["Failure", "ProcessWorkers", "ThreadWorkers", "make_workers"]

log = logging.getLogger("bncheck.workers")


@dataclass(frozen=True)
class Failure:
    status: int
    body: bytes
    headers: dict[str, str]
    media_type: str = MEDIA_TYPE


def time_budget_problem(settings: Settings) -> ProblemError:
    detail = f"the check did not finish within {settings.request_timeout_s:g} s (BNCHECK_REQUEST_TIMEOUT_S)"
    return ProblemError("time-budget", detail, headers={"Retry-After": "10"})


def too_big_problem(detail: str) -> ProblemError:
    return ProblemError("too-big-for-memory", detail)


def job(body: Any, settings: Settings, deadline: float | None, *, joined: bool = True,
        call: runner.Call = runner.V1) -> runner.Outcome | Failure:
    """One check (/v1, or /v2 as ``call`` says); every expected error comes back as a problem
    document in the protocol's form."""
    try:
        with heap.busy():
            if call.model is not None:
                return kserve.run(body, call, settings, deadline=deadline, joined=joined)
            return runner.run(body, settings, deadline=deadline, joined=joined, html=call.html)
    except ProblemError as exc:
        problem = exc
    except InputError as exc:
        problem = from_domain(exc)
    except TimeBudgetError:
        problem = time_budget_problem(settings)
    except MemoryError:
        problem = _no_room(settings)
    return _failure(problem, call)


def _no_room(settings: Settings) -> ProblemError:
    return too_big_problem(f"the check needs more memory than a worker may use "
                           f"(BNCHECK_WORKER_MEMORY_MB={settings.worker_memory_mb}); send smaller tensors")


def _failure(problem: ProblemError, call: runner.Call) -> Failure:
    status, body, media = render(problem, call.path)
    return Failure(status, body, problem.headers, media)


def shared_job(path: str, size: int, settings: Settings, deadline: float | None, owner: str,
               call: runner.Call = runner.V1, offset: int = 0, answer_path: str | None = None
               ) -> runner.Outcome | Failure:
    """``job`` on a body in a shared-memory segment (from ``offset`` on), parsed in place; a
    large answer goes back in a segment: ``answer_path``, a file the server kept from an
    earlier request (its pages are there already), or a new one named for ``owner``, the
    server, which removes it."""
    try:
        seg = shm.Segment.open(path, size, offset)
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            raise
        # Mapping the body is the check's first allocation: under BNCHECK_WORKER_MEMORY_MB (an
        # address-space limit) it fails as ENOMEM, not MemoryError, and means the same.
        return _failure(_no_room(settings), call)
    try:
        result = job(seg.body, settings, deadline, joined=False, call=call)
    finally:
        seg.close()
    if not isinstance(result, runner.Outcome) or not result.parts:
        return result
    # The answer's pieces go into the segment one after another: no joined copy of them.
    sizes = [memoryview(part).nbytes for part in result.parts]
    answer = sum(sizes)
    out = _answer_segment(answer, owner, answer_path) if answer >= shm.MIN_BYTES else None
    if out is not None:
        try:
            at = 0
            for part, size in zip(result.parts, sizes, strict=True):
                out.write(at, part)
                at += size
        except OSError:  # /dev/shm filled up meanwhile: the pipe carries it
            if out.path == answer_path:
                out.close()  # the server's kept file: the server decides
            else:
                out.unlink()
        else:
            out.close()
            return dataclasses.replace(result, parts=(), shared=(out.path, out.size))
    return dataclasses.replace(result, body=b"".join(result.parts), parts=())


def _answer_segment(size: int, owner: str, kept: str | None) -> shm.Segment | None:
    """The server's kept file, or a new one where there is none (or it was removed meanwhile)."""
    seg = None if kept is None else shm.Segment.reopen(kept, size)
    return seg if seg is not None else shm.Segment.create(size, owner)


def discard(result: Any) -> None:
    """Remove the segment of an answer nobody will send (its request was cancelled)."""
    if isinstance(result, runner.Outcome) and result.shared is not None:
        with contextlib.suppress(OSError):
            os.unlink(result.shared[0])


class ThreadWorkers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent)
        self.ready = True
        self.on_death: Callable[[], None] = lambda: None

    def pids(self) -> list[int]:
        return []

    async def receive(self, request: Request, offset: int = 0) -> bytes:
        return await request.body()

    async def run(self, body: bytes, deadline: float, done: Callable[[], None], call: runner.Call = runner.V1
                  ) -> runner.Outcome | Failure:
        def work() -> runner.Outcome | Failure:
            try:
                return job(body, self.settings, deadline, call=call)
            finally:
                done()

        return await anyio.to_thread.run_sync(work, limiter=self.limiter, abandon_on_cancel=True)

    def start(self) -> None:
        return None

    def shutdown(self) -> None:
        return None


def _init_worker(nice: int, heap_mb: int, memory_mb: int, server: int) -> None:
    """Workers yield the CPU to the server process, whose event loop must keep answering
    (/livez, new requests): with every core busy, /livez's p99 is markedly lower at nice 10
    (python -m bench.service measures it: four 4M-element checks at once, 31-33 ms at nice 10
    against 37-51 at nice 5, as many checks done), and a single check over HTTP is no slower:
    nothing else competes for the CPU.
    And they keep their heap from one check to the next (heap.py), and leave with their server
    (``server``: its pid, given by the server: a worker still starting when its server dies
    must not take its new parent for it)."""
    with contextlib.suppress(OSError):
        os.nice(nice)
    _leave_with_the_server(server)
    heap.keep(heap_mb)
    if memory_mb:  # a check that needs more raises MemoryError (a 413), not the OOM killer's SIGKILL
        import resource

        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


ORPHAN_CHECK_S = 1.0


def _leave_with_the_server(server: int) -> None:
    """A worker whose server died without shutting it down (SIGKILL, the OOM killer) exits
    within a second: its queue's pipe never reports the server gone (every worker holds both
    ends), and an orphaned worker would otherwise keep its memory for ever."""

    def watch() -> None:
        while os.getppid() == server:
            time.sleep(ORPHAN_CHECK_S)
        os._exit(0)

    threading.Thread(target=watch, name="bncheck-orphan-watch", daemon=True).start()


def _warm(device: str = "cpu") -> int:
    from bncheck.numerics import check, fused  # noqa: F401  (import everything before the first request)
    from bncheck.numerics.check import warm_device

    # The compiled comparison (Numba's import and its cache, about half a second) loads beside,
    # so that the worker is ready at once and its first large check does not wait for it.
    threading.Thread(target=fused.available, name="bncheck-warm", daemon=True).start()
    # Where checks run on a GPU, the worker is ready once CUDA has started and the common
    # kernels are compiled (15 s for a first check on an H200), not at its first request.
    # A failure here is logged, and the worker starts anyway: a check on the GPU then meets the
    # same failure and reports it.
    try:
        if warm_device(device):
            log.info("worker %d: GPU started and its kernels compiled", os.getpid())
    except Exception:  # noqa: BLE001
        log.exception("worker %d: warming the GPU failed; checks on it will say why", os.getpid())
    return os.getpid()


KILLERS_KEPT = 64  # fingerprints of bodies whose worker died


def _fingerprint(body: bytes | shm.Segment) -> bytes:
    """Enough of a body to know it again: its length and its first and last 64 KiB."""
    edge = 1 << 16
    if isinstance(body, shm.Segment):
        with open(body.path, "rb") as f:
            f.seek(body.offset)
            head = f.read(min(edge, body.size))
            f.seek(body.offset + max(0, body.size - edge))
            tail = f.read(edge)
        size = body.size
    else:
        head, tail, size = body[:edge], body[-edge:], len(body)
    return hashlib.sha256(size.to_bytes(8, "little") + head + tail).digest()


class ProcessWorkers:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.owner = shm.owner_tag()  # every shared-memory segment of these workers
        # Segments of bodies and answers, reused: a body and an answer per check slot.
        self.segments = shm.Pool(self.owner, 2 * settings.max_concurrent, heap.IDLE_S)
        self._ready = False  # the workers are started and answered
        self.deaths = 0
        self.on_death: Callable[[], None] = lambda: None
        self._killers: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    @property
    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the server process runs threads, which fork does not copy safely.
                s = self.settings
                self._pool = ProcessPoolExecutor(
                    s.max_concurrent, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                    initargs=(s.worker_nice, s.worker_heap_mb, s.worker_memory_mb, os.getpid()))
            return self._pool

    @property
    def ready(self) -> bool:
        """Whether a check can run now; a pool found broken (a worker died while idle) is replaced."""
        pool = self._pool
        if pool is not None and getattr(pool, "_broken", False):  # the executor has no public flag
            self._replace(pool)
        return self._ready

    def pids(self) -> list[int]:
        """The worker processes now (the executor has no public way to say)."""
        pool = self._pool
        procs = getattr(pool, "_processes", None) or {}
        return sorted(int(pid) for pid in procs)

    def start(self) -> None:
        """Start every worker now, so the first requests do not pay for the imports."""
        swept = shm.sweep()
        if swept:
            log.info("removed %d shared-memory segments left by servers that are gone", swept)
        self._warm_up()

    def _warm_up(self) -> None:
        futures = [self.pool.submit(_warm, self.settings.device) for _ in range(self.settings.max_concurrent)]
        pids = {f.result(timeout=120) for f in futures}
        self._ready = True
        log.info("started %d worker processes: %s", len(pids), sorted(pids))

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        """A worker of ``broken`` died: a new pool, warmed in the background. Once per pool."""
        with self._lock:
            if self._pool is not broken:
                return  # another request already replaced it
            self._pool = None
            self._ready = False
            self.deaths += 1
        log.error("a worker process died (killed, or out of memory): its checks get 503; starting new workers")
        self.on_death()
        broken.shutdown(wait=False, cancel_futures=True)

        def again() -> None:
            for attempt in range(5):
                try:
                    self._warm_up()
                    return
                except Exception:  # noqa: BLE001 (a pool that broke again: try anew)
                    log.exception("restarting the workers failed (attempt %d)", attempt + 1)
                    with self._lock:
                        self._pool = None
                    time.sleep(1.0)

        threading.Thread(target=again, name="bncheck-restart", daemon=True).start()

    def _died(self, fingerprint: bytes) -> ProblemError:
        if fingerprint in self._killers:
            return too_big_problem("the worker running this check died twice on this very body (killed, most "
                                   "likely for memory): this server cannot run it; send smaller tensors, or ask "
                                   "for more memory (BNCHECK_WORKER_MEMORY_MB turns this into a clean refusal)")
        self._killers[fingerprint] = None
        while len(self._killers) > KILLERS_KEPT:
            self._killers.popitem(last=False)
        detail = "the worker process running this check died (killed, or out of memory) and has been replaced; retry"
        return ProblemError("worker-died", detail, headers={"Retry-After": "5"})

    async def receive(self, request: Request, offset: int = 0) -> bytes | shm.Segment:
        """The body: written into a shared-memory segment (from ``offset`` on, shm.aligning)
        as it arrives when it is large and the Content-Length says so up front; otherwise
        bytes."""
        length = request.headers.get("content-length", "")
        if not length.isdigit() or int(length) < shm.MIN_BYTES:
            return await request.body()
        seg = self.segments.take(int(length), offset)  # statvfs and open: no need for a thread
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
            raise ProblemError("malformed-json", detail)
        return seg

    async def run(self, body: bytes | shm.Segment, deadline: float, done: Callable[[], None],
                  call: runner.Call = runner.V1) -> runner.Outcome | Failure:
        fingerprint = _fingerprint(body)
        pool = self.pool
        handed = False
        # A kept file for a large answer, whose pages are there already (the worker writes it).
        answer = self.segments.kept() if isinstance(body, shm.Segment) else None
        try:
            try:
                future = self._submit(pool, body, deadline, call, answer)
            except BrokenProcessPool:  # a worker died while idle: nothing of this check ran yet
                self._replace(pool)
                pool = self.pool
                future = self._submit(pool, body, deadline, call, answer)
            handed = True
            return await self._wait(future, body, done, answer)
        except BrokenProcessPool:
            self._replace(pool)
            raise self._died(fingerprint) from None
        finally:
            if not handed:  # nothing reached a worker: free the slot and the segments here
                done()
                if isinstance(body, shm.Segment):
                    body.unlink()
                if answer is not None:
                    self.segments.give(answer)

    def _submit(self, pool: ProcessPoolExecutor, body: bytes | shm.Segment, deadline: float,
                call: runner.Call, answer: shm.Segment | None) -> Future[Any]:
        if isinstance(body, shm.Segment):
            return pool.submit(shared_job, body.path, body.size, self.settings, deadline, self.owner, call,
                               body.offset, answer.path if answer else None)
        return pool.submit(job, body, self.settings, deadline, call=call)

    async def _wait(self, future: Future[Any], body: bytes | shm.Segment, done: Callable[[], None],
                    answer: shm.Segment | None) -> runner.Outcome | Failure:
        seg = body if isinstance(body, shm.Segment) else None
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
                # Once the answer is on its way: the worker no longer maps the body. A kept file
                # the answer is not in comes back too (the one it is in, once it has been sent).
                if seg is not None:
                    self.segments.give(seg)
                result = outcome[1]
                if answer is not None and not (isinstance(result, runner.Outcome) and result.shared is not None
                                               and result.shared[0] == answer.path):
                    self.segments.give(answer)

        future.add_done_callback(finished)
        return await waiter

    def shutdown(self) -> None:
        """Let running checks finish, then stop the workers."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self.segments.clear()
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

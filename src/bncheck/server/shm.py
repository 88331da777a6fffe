"""Request and response bodies handed to worker processes through shared memory.

A large body pickled through a ProcessPoolExecutor's pipe is copied several times
each way; through a file in /dev/shm it costs one copy (docs/design.md, section 9).
The server writes the body into a segment as it arrives, the worker maps it and parses
it in place, and writes its answer into a segment of its own.

Why not ``multiprocessing.shared_memory``: it sizes segments with ftruncate and is
written through a mapping, so a full /dev/shm (64 MB by default in Docker) shows up
as SIGBUS. Here segments are written with pwrite, so a full /dev/shm is an OSError,
after which the body goes through the pipe; they are only ever mapped to be read.
And the server owns every segment's name, so nothing depends on multiprocessing's
resource tracker.

Names are ``bncheck-<server pid>-<owner>-<random>``. A server removes its own when
its workers stop (``remove_all``), and on start ``sweep`` removes those of servers
that are no longer running (a crash leaves them behind).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

__all__ = ["MIN_BYTES", "PREFIX", "SHM_DIR", "Pool", "Segment", "SegmentResponse", "aligning", "available",
           "owner_tag", "pwrite_all", "remove_all", "sweep"]

MIN_BYTES = 1 << 20  # smaller bodies go through the pipe: a segment costs two system calls
SHM_DIR = Path("/dev/shm")
PREFIX = "bncheck-"


def available() -> bool:
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


class Segment:
    """A file in /dev/shm. The writer fills it with ``write`` (system calls, so a full
    /dev/shm is an OSError); readers map it: ``mm`` is a read-only ``mmap``, bytes-like
    and with ``find``."""

    def __init__(self, path: str, size: int, *, fd: int | None = None, mm: mmap.mmap | None = None,
                 offset: int = 0, capacity: int = 0) -> None:
        # offset: where the body starts in the file, after a few bytes that align what follows
        # a v2 body's JSON header (``aligning``); capacity: the bytes the file already has
        # (one reused from a Pool), which writing into costs no new pages
        self.path, self.size, self.fd, self._mm, self.offset = path, size, fd, mm, offset
        self.capacity = max(capacity, offset + size)

    @property
    def mm(self) -> mmap.mmap:
        if self._mm is None:
            msg = "a segment being written has no mapping; open it to read"
            raise ValueError(msg)
        return self._mm

    @classmethod
    def create(cls, size: int, owner: str | None = None, offset: int = 0) -> Segment | None:
        """A new, empty segment for ``size`` bytes from ``offset`` on, or None where /dev/shm
        is missing or has no room for them now. ``owner`` (see ``owner_tag``) names who
        removes it."""
        if not available():
            return None
        try:
            st = os.statvfs(SHM_DIR)
            if st.f_bavail * st.f_frsize < offset + size:
                return None
            path = str(SHM_DIR / f"{PREFIX}{owner or owner_tag()}-{secrets.token_hex(8)}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        return cls(path, size, fd=fd, offset=offset)

    @classmethod
    def reopen(cls, path: str, size: int, offset: int = 0, capacity: int = 0) -> Segment | None:
        """An existing file (a Pool's) opened to be written again, or None if it is gone."""
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            return None
        return cls(path, size, fd=fd, offset=offset, capacity=capacity)

    def write(self, at: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``at`` of the body; OSError (ENOSPC) when /dev/shm fills up meanwhile."""
        assert self.fd is not None
        pwrite_all(self.fd, data, self.offset + at)

    def read_back(self, size: int) -> bytes:
        """The first ``size`` bytes of the body: for a writer that has to give up on the segment."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return os.pread(fd, size, self.offset)
        finally:
            os.close(fd)

    @classmethod
    def open(cls, path: str, size: int, offset: int = 0) -> Segment:
        fd = os.open(path, os.O_RDONLY)
        try:
            mm = mmap.mmap(fd, offset + size, prot=mmap.PROT_READ) if size else None
            capacity = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return cls(path, size, mm=mm, offset=offset, capacity=capacity)

    @property
    def body(self) -> Any:
        """The body, read-only and bytes-like: the mapping itself (with ``find``), or a view of
        it past the offset."""
        return self.mm if not self.offset else memoryview(self.mm)[self.offset:self.offset + self.size]

    def close(self) -> bool:
        """Close the file and the mapping; False when a view of the mapping is still alive (the
        mapping goes with the last of them), and the file may still be read through it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                return False
        return True

    def unlink(self) -> None:
        self.close()
        _remove(self.path)


class Pool:
    """Segments kept for the next bodies and answers. Writing a body into a new file in
    /dev/shm makes the kernel find and clear a page for every 4 KiB of it, on the event loop,
    while the body arrives (a 32 MB body: 8,192 pages), and a worker's answer the same; a
    file written before has its pages, and the bytes go in as one copy. ``python -m
    bench.service`` measures the difference (README, Benchmarks).

    Up to ``keep`` files (a check slot has at most one body and one answer at a time: twice
    the slots), a body into the smallest it fits in (``take``), an answer into the largest
    left (``kept``: its size is not known before); they are removed after ``idle_s`` without
    a body, so an idle server holds none, and at once when /dev/shm has no room for a body
    that fits in none of them. A file comes back (``give``) only once nobody maps it."""

    def __init__(self, owner: str, keep: int, idle_s: float = 10.0) -> None:
        self.owner, self.keep, self.idle_s = owner, keep, idle_s
        self._lock = threading.Lock()
        self._idle: list[tuple[str, int]] = []  # (path, capacity), of files nobody reads or writes
        self._last = time.monotonic()
        self._expiring = False

    def take(self, size: int, offset: int = 0) -> Segment | None:
        """A segment for ``size`` bytes from ``offset`` on: a kept file it fits in (the
        smallest), else a new one (Segment.create); None as Segment.create says."""
        with self._lock:
            self._last = time.monotonic()
            fits = [i for i, (_, capacity) in enumerate(self._idle) if capacity >= offset + size]
            kept = self._idle.pop(min(fits, key=lambda i: self._idle[i][1])) if fits else None
        # A kept file removed meanwhile (the server's shutdown): a new one
        seg = None if kept is None else Segment.reopen(kept[0], size, offset, kept[1])
        if seg is not None:
            return seg
        seg = Segment.create(size, self.owner, offset)
        if seg is None and self.clear():  # the kept files took the room this body needs
            seg = Segment.create(size, self.owner, offset)
        return seg

    def kept(self) -> Segment | None:
        """The largest kept file, for an answer of a size nobody knows yet (a worker writes it
        and hands it on, or it comes back with ``give``); None when none is kept."""
        with self._lock:
            if not self._idle:
                return None
            path, capacity = self._idle.pop(0)
        return Segment(path, 0, capacity=capacity)

    def give(self, seg: Segment) -> None:
        """``seg`` back, once nobody maps it any more: kept for a later body, or removed (also
        when a view of its mapping here is still alive)."""
        if not seg.close():
            _remove(seg.path)
            return
        with self._lock:
            self._last = time.monotonic()
            self._idle.append((seg.path, seg.capacity))
            self._idle.sort(key=lambda kept: kept[1], reverse=True)
            extra = self._idle[self.keep:]
            del self._idle[self.keep:]
            start = not self._expiring and bool(self._idle)
            self._expiring = self._expiring or start
        for path, _ in extra:
            _remove(path)
        if start:
            threading.Thread(target=self._expire, name="bncheck-shm-pool", daemon=True).start()

    def clear(self) -> int:
        """Remove every kept file now; returns how many."""
        with self._lock:
            idle, self._idle = self._idle, []
        for path, _ in idle:
            _remove(path)
        return len(idle)

    def _expire(self) -> None:
        """Remove the kept files once no body has come for ``idle_s``; then stop."""
        while True:
            with self._lock:
                wait = self._last + self.idle_s - time.monotonic()
                if wait <= 0 or not self._idle:
                    idle, self._idle, self._expiring = self._idle, [], False
                    break
            time.sleep(wait)
        for path, _ in idle:
            _remove(path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


SEND_PIECE = 1 << 20  # bytes of an answer read out of its segment and sent at a time


class SegmentResponse(Response):
    """An answer sent from a worker's segment (``Segment(path, size)``: its file is read, never
    mapped), which is handed to ``keep`` (a Pool's ``give``) or removed once sent or once the
    client has gone.

    It goes out in pieces read from the file (``SEND_PIECE``), not as a view of a mapping:
    the transport keeps what it has not sent yet, and a view would keep the mapping, so the
    file could not be reused (every answer was written into a new file, whose pages the
    kernel finds and clears: 15 ms for a 4M-element /v1 answer against 5 into a kept one),
    and the server faulted in a fresh mapping to send it. A copy of each megabyte is cheaper
    than either, and the event loop answers other requests (/livez) between the pieces."""

    def __init__(self, seg: Segment, headers: dict[str, str] | None = None, media_type: str = "application/json",
                 keep: Callable[[Segment], None] | None = None) -> None:
        self.seg, self.keep = seg, keep
        super().__init__(b"", media_type=media_type, headers=headers)
        self.headers["content-length"] = str(seg.size)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            fd = os.open(self.seg.path, os.O_RDONLY)
            try:
                # what the file holds: a kept file longer than this answer goes back as long
                self.seg.capacity = max(self.seg.capacity, os.fstat(fd).st_size)
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                at, end = self.seg.offset, self.seg.offset + self.seg.size
                while True:
                    piece = os.pread(fd, min(SEND_PIECE, end - at), at)
                    at += len(piece)
                    more = bool(piece) and at < end  # a file cut short ends the answer short, not in a loop
                    await send({"type": "http.response.body", "body": piece, "more_body": more})
                    if not more:
                        break
            finally:
                os.close(fd)
        finally:
            # Freeing tens of megabytes of pages takes milliseconds: not on the event loop.
            await anyio.to_thread.run_sync(self.keep or Segment.unlink, self.seg)


def aligning(header_length: int | None) -> int:
    """The offset that puts the binary part of a v2 body, which follows a JSON header of
    ``header_length`` bytes (its Inference-Header-Content-Length), on a 64-byte boundary in a
    segment, so that the worker reads its tensors in place instead of copying them; 0 for a
    body without binary part."""
    return 0 if header_length is None else -header_length % 64


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """All of ``data`` at ``offset`` of ``fd`` (pwrite may write less than it was given)."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def owner_tag() -> str:
    """``<pid>-<random>``: a new owner in this process (a server's set of workers)."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def remove_all(owner: str) -> int:
    """Remove every segment of ``owner``: for a server whose workers have stopped, so that
    an answer finished after the event loop stopped is not left behind."""
    removed = 0
    for entry in SHM_DIR.glob(f"{PREFIX}{owner}-*") if available() else ():
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def sweep() -> int:
    """Remove segments left by bncheck servers that are gone; returns how many."""
    if not available():
        return 0
    removed = 0
    for entry in SHM_DIR.glob(f"{PREFIX}*-*"):
        pid = entry.name[len(PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

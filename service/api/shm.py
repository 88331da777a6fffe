"""Request and response bodies handed to worker processes through shared memory.

A 43 MB body pickled through a ProcessPoolExecutor's pipe costs about 120 ms one
way on two cores (and the answer as much again); through a file in /dev/shm it
costs a copy. The server writes the body into a segment as it arrives, the worker
maps it and parses it in place, and writes its answer into a segment of its own.

Why not ``multiprocessing.shared_memory``: it sizes segments with ftruncate, so a
full /dev/shm (64 MB by default in Docker) shows up as SIGBUS on first write.
Here ``posix_fallocate`` reserves the pages up front and a full /dev/shm is an
OSError, after which the caller falls back to the pipe. And the server owns every
segment's name, so nothing depends on multiprocessing's resource tracker.

Names are ``bncheck-<server pid>-<random>``; ``sweep`` removes those of servers
that are no longer running (a crash leaves them behind).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from pathlib import Path

__all__ = ["MIN_BYTES", "Segment", "available", "sweep"]

MIN_BYTES = 1 << 20  # smaller bodies go through the pipe: a segment costs two system calls
_DIR = Path("/dev/shm")
_PREFIX = "bncheck-"


def available() -> bool:
    return _DIR.is_dir() and os.access(_DIR, os.W_OK)


class Segment:
    """A file in /dev/shm and its mapping. ``mm`` is an ``mmap``: bytes-like, with ``find``."""

    def __init__(self, path: str, mm: mmap.mmap, size: int) -> None:
        self.path, self.mm, self.size = path, mm, size

    @classmethod
    def create(cls, size: int, owner: int | None = None) -> Segment | None:
        """A new segment of ``size`` bytes with its pages reserved, or None where /dev/shm
        is missing or has no room."""
        if not available():
            return None
        path = str(_DIR / f"{_PREFIX}{owner or os.getpid()}-{secrets.token_hex(8)}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return None
        try:
            os.posix_fallocate(fd, 0, max(size, 1))
            mm = mmap.mmap(fd, max(size, 1))
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        finally:
            os.close(fd)
        return cls(path, mm, size)

    @classmethod
    def open(cls, path: str, size: int) -> Segment:
        fd = os.open(path, os.O_RDWR)
        try:
            return cls(path, mmap.mmap(fd, max(size, 1)), size)
        finally:
            os.close(fd)

    def read(self) -> bytes:
        return self.mm[: self.size]

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a view still alive: the mapping goes with it
            self.mm.close()

    def unlink(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def sweep() -> int:
    """Remove segments left by bncheck servers that are gone; returns how many."""
    if not available():
        return 0
    removed = 0
    for entry in _DIR.glob(f"{_PREFIX}*-*"):
        pid = entry.name[len(_PREFIX):].split("-", 1)[0]
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

"""glibc's malloc in worker processes (and the server's): keep the heap between checks,
give it back when idle.

A check of 4M elements allocates and frees tens of arrays of 16 to 32 MB. By default
glibc serves blocks that large with fresh mmaps and returns a heap's free top to the
system once it passes 32 MB, so every check faults its memory in again, page by page.
Keeping the heap makes a worker's part of a large check measurably faster (the README's
Benchmarks section has the numbers, from python -m bench.service).

So a worker serves blocks of up to 32 MB (glibc's ceiling for this setting) from its heap
and keeps up to ``keep_mb`` of free heap between checks; after ``idle_s`` without a
check it returns the free memory to the system (``malloc_trim``), so an idle server is
as small as before. Elsewhere than glibc (musl, macOS) nothing changes.

``bncheck serve`` does the same in the server process: a large body arrives in chunks of a
few hundred kilobytes, which uvicorn copies into fresh buffers, and with glibc's defaults
the heap grew and shrank (brk) for each of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["IDLE_S", "busy", "keep"]

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses a larger M_MMAP_THRESHOLD on 64-bit systems
IDLE_S = 10.0


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not all(hasattr(libc, name) for name in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None
    return libc


class _Trimmer:
    """Returns free heap to the system once no check has run for ``idle_s``."""

    def __init__(self, libc: Any, idle_s: float) -> None:
        self.libc, self.idle_s = libc, idle_s
        self.lock = threading.Lock()
        self.running = 0
        self.last = time.monotonic()
        self.trimmed = True
        threading.Thread(target=self._loop, name="bncheck-heap-trim", daemon=True).start()

    def start(self) -> None:
        with self.lock:
            self.running += 1
            self.trimmed = False

    def end(self) -> None:
        with self.lock:
            self.running -= 1
            self.last = time.monotonic()

    def due(self) -> bool:
        with self.lock:
            return not self.running and not self.trimmed and time.monotonic() - self.last >= self.idle_s

    def _loop(self) -> None:
        while True:
            time.sleep(self.idle_s / 4)
            if self.due():
                self.libc.malloc_trim(0)
                with self.lock:
                    self.trimmed = not self.running


_trimmer: _Trimmer | None = None


def keep(keep_mb: int, idle_s: float = IDLE_S) -> bool:
    """Tune this process's malloc as above; False where that is not possible or not asked
    for (``keep_mb`` 0), and then nothing changes."""
    global _trimmer
    libc = _glibc() if keep_mb > 0 else None
    if libc is None:
        return False
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) and libc.mallopt(M_TRIM_THRESHOLD, keep_mb << 20)):
        return False
    if _trimmer is None:
        _trimmer = _Trimmer(libc, idle_s)
    return True


@contextlib.contextmanager
def busy() -> Iterator[None]:
    """Around a check: the idle trim waits until it is over."""
    trimmer = _trimmer
    if trimmer is None:
        yield
        return
    trimmer.start()
    try:
        yield
    finally:
        trimmer.end()

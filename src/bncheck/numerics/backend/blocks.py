"""The CPU's block pool: big float64 passes split into cache-sized blocks of the (P, C, S)
view and run on a small thread pool (NumPy releases the GIL), with per-thread scratch.

``map_blocks`` splits the view by rows (every channel in each block) for passes whose every
element is independent. ``map_channels`` splits it by channels for computations that are
independent per channel but not per element (a kernel's sums, in whatever order): a group of
channels, with every temporary a formula makes, fits in cache, and each channel's values
are those of the whole computation bit for bit."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from ..layout import Block, Layout
from .device import is_numpy

__all__ = ["BLOCK_ELEMENTS", "GROUP_ELEMENTS", "channel_groups", "in_float64", "map_blocks", "map_channels",
           "map_tasks", "scratch", "sum_parts"]

T = TypeVar("T")
BLOCK_ELEMENTS = 1 << 17
GROUP_ELEMENTS = 1 << 19  # a group of channels: its temporaries (a dozen arrays) stay in cache (measured)
_FULL: Block = (slice(None), slice(None))


@cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="bncheck-block")


def _threads() -> int:
    return max(1, int(os.environ.get("BNCHECK_THREADS", os.cpu_count() or 1)))


def map_blocks(fn: Callable[[Block], T], layout: Layout, xp: ModuleType) -> list[T]:
    """Run ``fn`` on blocks of the (P, C, S) view: in parallel on the CPU, once on the GPU."""
    threads = _threads()
    if not is_numpy(xp) or layout.M <= 2 * BLOCK_ELEMENTS:
        return [fn(_FULL)]
    blocks = layout.blocks(BLOCK_ELEMENTS)
    if threads == 1 or _inside():
        return [fn(b) for b in blocks]
    # One task per thread over a contiguous run of cache-sized blocks: a future per block
    # costs more than a block's arithmetic.
    runs = [blocks[i::threads] for i in range(threads)]
    done = _pool(threads).map(_task(lambda run: [fn(b) for b in run]), runs)
    return [r for run in done for r in run]


def channel_groups(layout: Layout, target: int | None = None, *, share: bool = True) -> list[slice]:
    """Consecutive channels in groups of at most about ``target`` (default GROUP_ELEMENTS)
    elements, one channel at least, as even as they go; with ``share``, a multiple of the
    threads in number when the tensor is not tiny (6 channels for 2 threads: 3 and 3)."""
    C = layout.C
    # (N, C) and channels-last hold a channel's elements C apart: a group of a few channels is a
    # strided slice, slower than the whole, so there the groups are only the threads' shares.
    per = C if layout.S == 1 else max(1, (target or GROUP_ELEMENTS) // max(layout.R, 1))
    n = -(-C // per)
    if share and (n > 1 or layout.M >= BLOCK_ELEMENTS):  # work enough to share: a multiple of the threads
        threads = _threads()
        n = min(C, -(-n // threads) * threads)
    size = -(-C // n)
    return [slice(c, min(c + size, C)) for c in range(0, C, size)]


def map_channels(fn: Callable[[slice], T], layout: Layout, xp: ModuleType) -> list[T]:
    """Run ``fn`` on groups of consecutive channels (``channel_groups``), in parallel on the CPU;
    on the GPU once, on every channel."""
    groups = channel_groups(layout)
    if not is_numpy(xp) or len(groups) == 1:
        return [fn(slice(0, layout.C))]
    return map_tasks(fn, groups, xp)


def map_tasks(fn: Callable[[Any], T], items: Sequence[Any], xp: ModuleType) -> list[T]:
    """``[fn(item) for item in items]``, on every core on the CPU (the pool takes the items in
    order as threads come free); in turn on the GPU, or inside a pool task."""
    if not is_numpy(xp) or len(items) < 2 or _threads() == 1 or _inside():
        return [fn(item) for item in items]
    return list(_pool(_threads()).map(_task(fn), items))


_local = threading.local()


def _inside() -> bool:
    """Whether this thread is running a pool task: work it splits further runs inline (a task
    that waited on the pool it runs in could wait for ever)."""
    return bool(getattr(_local, "inside", False))


def _task(fn: Callable[[Any], T]) -> Callable[[Any], T]:
    def run(arg: Any) -> T:
        _local.inside = True
        try:
            return fn(arg)
        finally:
            _local.inside = False

    return run


def scratch(count: int, shape: tuple[int, ...], xp: ModuleType, *, skip: int = 0) -> list[Any]:
    """``count`` float64 work arrays of ``shape``, reused per thread, so that block kernels
    write into cache-resident memory instead of allocating (and faulting in) temporaries.
    Every call hands out the same arrays from the first on; ``skip`` leaves that many alone
    (for values that a callee, taking its own scratch, must not write over)."""
    n = math.prod(shape)
    if not is_numpy(xp):
        return [xp.empty(shape, dtype=xp.float64) for _ in range(count)]
    pool: list[np.ndarray] = getattr(_local, "pool", [])
    if len(pool) < skip + count or pool[0].size < n:
        pool = [np.empty(max(n, BLOCK_ELEMENTS)) for _ in range(max(skip + count, len(pool)))]
        _local.pool = pool
    return [a[:n].reshape(shape) for a in pool[skip:skip + count]]


def in_float64(a: Any, into: Any, xp: ModuleType) -> Any:
    """``a`` in float64: itself, or copied into ``into`` (scratch of its shape). Data kept as
    sent (float32, float16) is read this way, so that every float64 pass gives the numbers of
    a float64 copy, bit for bit."""
    if a.dtype == xp.float64:
        return a
    xp.copyto(into, a)
    return into


def sum_parts(parts: Sequence[Any]) -> Any:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total

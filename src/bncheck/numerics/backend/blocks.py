"""The CPU's block pool: big float64 passes split into cache-sized blocks of the (P, C, S)
view and run on a small thread pool (NumPy releases the GIL), with per-thread scratch."""

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

__all__ = ["BLOCK_ELEMENTS", "map_blocks", "scratch", "sum_parts"]

T = TypeVar("T")
BLOCK_ELEMENTS = 1 << 17
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
    if threads == 1:
        return [fn(b) for b in blocks]
    # One task per thread over a contiguous run of cache-sized blocks: a future per block
    # costs more than a block's arithmetic.
    runs = [blocks[i::threads] for i in range(threads)]
    done = _pool(threads).map(lambda run: [fn(b) for b in run], runs)
    return [r for run in done for r in run]


_local = threading.local()


def scratch(count: int, shape: tuple[int, ...], xp: ModuleType) -> list[Any]:
    """``count`` float64 work arrays of ``shape``, reused per thread, so that block kernels
    write into cache-resident memory instead of allocating (and faulting in) temporaries."""
    n = math.prod(shape)
    if not is_numpy(xp):
        return [xp.empty(shape, dtype=xp.float64) for _ in range(count)]
    pool: list[np.ndarray] = getattr(_local, "pool", [])
    if len(pool) < count or pool[0].size < n:
        pool = [np.empty(max(n, BLOCK_ELEMENTS)) for _ in range(max(count, len(pool)))]
        _local.pool = pool
    return [a[:n].reshape(shape) for a in pool[:count]]


def sum_parts(parts: Sequence[Any]) -> Any:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total

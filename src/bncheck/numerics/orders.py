"""Channel sums in the orders real kernels add in, each rounding in the array's own dtype.

The calibrated verdict (``calibrate.py``) runs correct formulas with each of these
orders, because a correct kernel's error depends on how it adds, and the orders
real kernels use differ by more than an order of magnitude in float32 at large R:

- ``tree``: pairwise halving over the whole channel (a careful tree reduction);
- ``sequential``: one accumulator, element after element in memory order (PyTorch's
  CPU channels-last kernels, a naive CUDA loop);
- ``tiled``: pairwise sums of tiles of consecutive elements (``TILE`` of them, or one
  plane of an NCHW tensor), the tiles' partial sums then added one after another (a
  grid of blocks merged in order; PyTorch's CPU kernels on contiguous NCHW);
- ``threads``: ``THREADS`` strided "threads", thread j adding elements j, j + T, ...
  one after another (per plane, then plane after plane, when S > 1), their partial
  sums merged by a tree (a GPU block reduction).

``welford`` gives mean and biased variance by Welford's update in each strided thread,
merged by Chan's formula in a tree, as PyTorch's CUDA and MIOpen kernels compute them.

Every function takes the (P, C, S) view; a channel's elements are visited in memory
order: p, then s. On CuPy the sums run on the host (NumPy): the orders are sequential
by nature, and the GPU's own reductions would not reproduce them.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from . import backend

__all__ = ["ORDERS", "THREADS", "TILE", "ordered_sum", "welford"]

ORDERS = ("tree", "sequential", "tiled", "threads")
THREADS = 256
TILE = 1024
MAX_STEPS = 2048  # Welford steps per thread: more threads for longer channels
CARRY_ROWS = 4096  # a sequential sum over (p, s) carries one accumulator through at most this many planes
FEW_CHANNELS = 4  # up to this many channels, a sequential sum runs along each channel's own row (faster)


def _sequential_rows(r: np.ndarray) -> np.ndarray:
    """(n, k) -> (k,): row after row. NumPy reduces a C-ordered (n, k > 1) array over axis 0 row
    by row, which is sequential per column; a single column it would sum pairwise."""
    if r.ndim == 2 and r.shape[1] == 1:
        return np.add.accumulate(r, axis=0)[-1]
    return np.add.reduce(r, axis=0)


def _sequential(a: np.ndarray) -> np.ndarray:
    """(P, C, S) -> (C,): one accumulator per channel through p, then s, in memory order."""
    P, C, S = a.shape
    if S == 1:
        return _sequential_rows(a[:, :, 0])
    if P > CARRY_ROWS:  # each plane's running sum, then the planes in order
        return _sequential_rows(np.add.accumulate(a, axis=2)[:, :, -1])
    if C <= FEW_CHANNELS:  # each channel's elements in a row of their own, summed along it
        rows = a.transpose(1, 0, 2).copy(order="C").reshape(C, P * S)  # a copy: summed in place
        np.add.accumulate(rows, axis=1, out=rows)
        return rows[:, -1].copy()
    # Each plane (C, S) turned into (S, C) rows, the carried sums added to its first row, then
    # reduced row after row: the same additions in the same order as a running sum along s,
    # without writing every partial sum.
    acc = np.zeros(C, dtype=a.dtype)
    rows = np.empty((S, C), dtype=a.dtype)
    for p in range(P):
        np.copyto(rows, a[p].T)
        rows[0] += acc
        acc = _sequential_rows(rows)
    return acc


def _tiled(a: np.ndarray) -> np.ndarray:
    """Pairwise sums of tiles of consecutive elements, the tiles' sums then added in order."""
    P, C, S = a.shape
    if S > 1:  # a tile is a plane (one image of one channel)
        return _sequential_rows(backend.halve(a, 2)[:, :, 0])
    r = a[:, :, 0]
    full = P // TILE
    parts = []
    if full:
        parts.append(backend.halve(r[:full * TILE].reshape(full, TILE, C), 1)[:, 0, :])
    if P % TILE:
        parts.append(backend.halve(r[full * TILE:], 0))
    return _sequential_rows(np.concatenate(parts) if len(parts) > 1 else parts[0])


def _threads(a: np.ndarray) -> np.ndarray:
    """``THREADS`` strided threads, each adding its elements in order, merged by a tree."""
    P, C, S = a.shape
    if S == 1:
        T = min(THREADS, P)
        full = P // T
        per = _sequential_rows(a[:full * T, :, 0].reshape(full, T * C)).reshape(T, C)
        if P % T:
            per[:P % T] += a[full * T:, :, 0]
        return backend.halve(per, 0)[0]
    T = math.gcd(S, THREADS)  # thread j adds s = j, j + T, ... of each plane, then the planes in order
    per_plane = np.add.reduce(a.reshape(P, C, S // T, T), axis=2)  # sequential over the plane's k
    per = _sequential_rows(per_plane.reshape(P, C * T)).reshape(C, T)
    return backend.halve(per, 1)[:, 0]


def ordered_sum(a3: Any, order: str, xp: ModuleType) -> Any:
    """Channel sums of a (P, C, S) array in ``order``, in its own dtype; returns (1, C, 1) on xp."""
    a = backend.to_numpy(a3)
    if order == "tree":
        s = backend.halve(backend.halve(a, 2), 0).reshape(-1)
    elif order == "sequential":
        s = _sequential(a)
    elif order == "tiled":
        s = _tiled(a)
    elif order == "threads":
        s = _threads(a)
    else:
        msg = f"unknown reduction order {order!r}"
        raise ValueError(msg)
    return xp.asarray(s.reshape(1, -1, 1))


def _steps(a: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The (T, C) slices that T strided threads take one after another, and T. The last slice
    may be shorter: its rows go to threads 0, 1, ..."""
    P, C, S = a.shape
    R = P * S
    if S == 1:
        T = min(R, max(THREADS, -(-R // MAX_STEPS)))
        r = a[:, :, 0]
        return [r[k:k + T] for k in range(0, R, T)], T
    T = math.gcd(S, THREADS)
    if T < 32 or R // T > 4 * MAX_STEPS:  # odd planes: threads over the channel's elements in order
        rows = np.ascontiguousarray(a.transpose(0, 2, 1)).reshape(R, C)
        return _steps(rows.reshape(R, C, 1))
    planes = a.reshape(P, C, S // T, T)
    return [planes[p, :, k, :].T for p in range(P) for k in range(S // T)], T


def welford(a3: Any, xp: ModuleType) -> tuple[Any, Any]:
    """Mean and biased variance per channel, (1, C, 1) each, in a3's dtype: Welford's update
    in strided threads, then Chan's merge in a tree."""
    a = backend.to_numpy(a3)
    C = a.shape[1]
    R = a.shape[0] * a.shape[2]
    dt = a.dtype.type
    steps, T = _steps(a)
    mean = np.zeros((T, C), dtype=a.dtype)
    m2 = np.zeros((T, C), dtype=a.dtype)
    count = np.zeros(T, dtype=np.int64)
    delta, work = np.empty((T, C), dtype=a.dtype), np.empty((T, C), dtype=a.dtype)
    full = 0
    for v in steps:
        n = v.shape[0]
        if n == T:  # every thread takes a step: the update in place, a few calls (the loop is long)
            full += 1
            np.subtract(v, mean, out=delta)
            np.divide(delta, dt(full), out=work)
            mean += work
            np.subtract(v, mean, out=work)
            work *= delta
            m2 += work
            continue
        count[:] = full
        count[:n] += 1
        d = v - mean[:n]
        mean[:n] += d / count[:n, None].astype(a.dtype)
        m2[:n] += d * (v - mean[:n])
        full = -1  # a short step comes last
    if full >= 0:
        count[:] = full
    mean_c, m2_c = _chan_tree(mean, m2, count)
    return xp.asarray(mean_c.reshape(1, C, 1)), xp.asarray((m2_c / dt(R)).reshape(1, C, 1))


def _chan_tree(mean: np.ndarray, m2: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge (count, mean, M2) of threads pairwise (Chan et al.) until one is left."""
    while mean.shape[0] > 1:
        h = mean.shape[0] // 2
        odd = mean.shape[0] % 2
        na, nb = n[:h], n[h:2 * h]
        tot = na + nb
        delta = mean[h:2 * h] - mean[:h]
        w = (nb / tot).astype(mean.dtype)[:, None]
        cross = (na * nb / tot).astype(mean.dtype)[:, None]
        new_mean = mean[:h] + delta * w
        new_m2 = m2[:h] + m2[h:2 * h] + delta * delta * cross
        if odd:  # the odd one out joins as a thread of its own
            new_mean = np.concatenate([new_mean, mean[-1:]])
            new_m2 = np.concatenate([new_m2, m2[-1:]])
            tot = np.concatenate([tot, n[-1:]])
        mean, m2, n = new_mean, new_m2, tot
    return mean[0], m2[0]

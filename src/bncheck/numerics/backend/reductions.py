"""Reductions over the non-channel axes ("channel sums", maxima, counts) and element-wise
steps, in the form that suits the array module: row sums and pairwise halving on the CPU;
generated kernels (rawkernels.py), fused CuPy reductions or cuBLAS products on the GPU."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .. import kernels
from .device import is_numpy
from .rawkernels import raw
from .state import STATE

__all__ = ["channel_count", "channel_dot", "channel_max", "channel_min", "channel_sum", "channel_sums", "elementwise",
           "fuse", "fused_channel_sum", "fused_sum", "halve", "matvec_channel_sum", "ones", "pairwise_channel_sum",
           "same", "two_stage_channel_max"]


def channel_sum(a3: Any, xp: ModuleType) -> Any:
    """Sum a (p, C, s) block over axes 0 and 2, fast, in its own dtype; returns (C,)."""
    if not is_numpy(xp):
        got = raw("reduce", [(same, (a3,))], a3.shape, xp)
        return got[0].reshape(-1) if got is not None else matvec_channel_sum(a3, xp)
    if a3.shape[2] == 1:
        return np.add.reduce(a3[:, :, 0], axis=0)
    return a3.sum(axis=(0, 2))


def matvec_channel_sum(a3: Any, xp: ModuleType) -> Any:
    """Channel sums as matrix-vector products with ones (cuBLAS on the GPU): a tall, skinny
    reduction keeps every multiprocessor busy, where a plain sum(axis=0) does not."""
    p, c, s = a3.shape
    a3 = xp.ascontiguousarray(a3)
    if s == 1:
        return ones(p, a3.dtype, xp) @ a3.reshape(p, c)
    rows = a3.reshape(p * c, s) @ ones(s, a3.dtype, xp)
    return ones(p, a3.dtype, xp) @ rows.reshape(p, c) if p > 1 else rows


def ones(n: int, dtype: Any, xp: ModuleType) -> Any:
    """A vector of ones, kept: on the GPU a fresh one costs an allocation and a kernel."""
    if is_numpy(xp):
        return np.ones(n, dtype=dtype)
    device = int(xp.cuda.runtime.getDevice()) if hasattr(xp, "cuda") else 0
    key = (n, np.dtype(dtype).str, device)
    cache = STATE.ones
    if key not in cache:
        if len(cache) > 64:
            cache.clear()
        cache[key] = xp.ones(n, dtype=dtype)
    return cache[key]


def channel_count(mask3: Any, xp: ModuleType) -> Any:
    """How many True per channel of a boolean (p, C, s) block; returns (C,) integers."""
    if is_numpy(xp):
        return mask3.sum(axis=(0, 2))
    return matvec_channel_sum(mask3.astype(xp.float64), xp).round().astype(xp.int64)


def channel_max(a3: Any, xp: ModuleType) -> Any:
    """Largest value per channel of a (p, C, s) block; returns (C,)."""
    if is_numpy(xp):
        return _wide_rows(a3, np.maximum) if a3.shape[2] == 1 else a3.max(axis=(0, 2))
    return two_stage_channel_max(a3, xp)


def channel_min(a3: Any, xp: ModuleType) -> Any:
    """Smallest value per channel of a (p, C, s) block; returns (C,)."""
    if is_numpy(xp):
        return _wide_rows(a3, np.minimum) if a3.shape[2] == 1 else a3.min(axis=(0, 2))
    return -two_stage_channel_max(-a3, xp)


WIDE = 64  # rows of a (p, C) block taken as one wide row


def _wide_rows(a3: np.ndarray, op: np.ufunc) -> np.ndarray:
    """``op.reduce`` over the p rows of a (p, C, 1) block, WIDE rows at a time as one row of
    WIDE * C: NumPy reduces a few long rows several times faster than many short ones, and
    max and min give the same values in any grouping."""
    r = a3[:, :, 0]
    P, C = r.shape
    n = P // WIDE
    if n < 2 or not r.flags.c_contiguous:
        return op.reduce(r, axis=0)
    out = op.reduce(op.reduce(r[:n * WIDE].reshape(n, WIDE * C), axis=0).reshape(WIDE, C), axis=0)
    return op(out, op.reduce(r[n * WIDE:], axis=0)) if P % WIDE else out


def two_stage_channel_max(a3: Any, xp: ModuleType, *, chunks: int = 1024) -> Any:
    """max over axes 0 and 2: first along the contiguous axis 2, then over ``chunks`` slices
    of the rows, each reduced by its own thread block, then over those partial maxima."""
    flat = a3.max(axis=2) if a3.shape[2] > 1 else a3[:, :, 0]
    n, c = flat.shape
    k = max(1, min(chunks, n // 64))
    head = (n // k) * k
    partial = flat[:head].reshape(k, n // k, c).max(axis=1)
    if head < n:
        partial = xp.concatenate([partial, flat[head:].max(axis=0, keepdims=True)])
    return partial.max(axis=0)


def channel_dot(a3: Any, b3: Any, xp: ModuleType) -> Any:
    """Per-channel sum of a*b without materialising the product on the CPU."""
    if not is_numpy(xp):
        got = raw("reduce", [(_product, (a3, b3))], a3.shape, xp)
        return got[0].reshape(-1) if got is not None else channel_sum(a3 * b3, xp)
    if a3.shape[2] == 1:
        return np.einsum("pc,pc->c", a3[:, :, 0], b3[:, :, 0])
    return np.einsum("pcs,pcs->c", a3, b3)


def halve(a: Any, axis: int) -> Any:
    """Pairwise sum along ``axis`` by repeated halving, in a's dtype; keeps the axis (length 1)."""
    lead = (slice(None),) * axis
    n = a.shape[axis]
    while n > 1:
        h = n // 2
        s = a[(*lead, slice(0, h))] + a[(*lead, slice(h, 2 * h))]
        if n % 2:
            s[(*lead, slice(0, 1))] += a[(*lead, slice(2 * h, n))]
        a, n = s, h
    return a


def pairwise_channel_sum(a3: Any, xp: ModuleType) -> Any:
    """Channel sums in a3's own dtype, the way a careful kernel reduces; returns (1, C, 1).

    On the CPU, pairwise halving bounds the rounding error by log2(R) ulps,
    where NumPy's row-by-row sum along axis 0 grows like R. On the GPU, cuBLAS.
    """
    if not is_numpy(xp):
        return channel_sum(a3, xp).reshape(1, -1, 1)
    return halve(halve(a3, 2), 0)


def fuse(fn: Callable[..., Any], xp: ModuleType) -> Callable[..., Any]:
    """``fn`` as one fused CuPy kernel (compiled once per function and dtypes), or ``fn`` itself
    for NumPy. The kernel runs the same operations in the same order."""
    if is_numpy(xp):
        return fn
    key = (fn, id(xp))
    if key not in STATE.fused:
        STATE.fused[key] = xp.fuse(fn)
    return STATE.fused[key]


def fused_channel_sum(fn: Callable[..., Any], args: Sequence[Any], shape: tuple[int, int, int],
                      xp: ModuleType) -> Any:
    """Channel sums of ``fn(*args)``, (1, C, 1), without materialising ``fn(*args)`` on the GPU.

    ``args`` are (P, C, S) views, (1, C, 1) per-channel arrays or scalars. On the GPU each
    product is reduced inside one fused kernel: along the contiguous axis S when S > 1, else
    over ``STATE.row_chunks`` slices of the rows; cuBLAS adds up the partial sums. If CuPy cannot
    fuse the reduction, the product is written out and summed as a matrix-vector product.
    """
    if is_numpy(xp):
        return pairwise_channel_sum(fn(*args), xp)
    if STATE.fused_reduction_ok:
        try:
            return fused_sum(fn, args, shape, xp).reshape(1, -1, 1)
        except Exception:  # an unsupported fusion: remember, and take the plain path
            STATE.fused_reduction_ok = False
    return channel_sum(fuse(fn, xp)(*args), xp).reshape(1, -1, 1)


def _reducer(fn: Callable[..., Any], axis: int, xp: ModuleType) -> Any:
    key = (fn, axis, id(xp))
    if key not in STATE.reducers:
        def reduce(*args: Any) -> Any:
            return xp.sum(fn(*args), axis=axis)

        STATE.reducers[key] = xp.fuse(reduce)
    return STATE.reducers[key]


def fused_sum(fn: Callable[..., Any], args: Sequence[Any], shape: tuple[int, int, int], xp: ModuleType) -> Any:
    """``fn(*args)`` summed over P and S by fused CuPy reductions, (C,); the GPU only."""
    P, C, S = shape
    full = [hasattr(a, "shape") and a.shape == (P, C, S) for a in args]
    if S > 1:
        rows = _reducer(fn, 2, xp)(*args)  # (P, C)
        return ones(P, rows.dtype, xp) @ rows
    # About 64K partial sums: enough thread blocks for any GPU, few enough to add up cheaply.
    k = max(1, min(STATE.row_chunks, P, (1 << 16) // C))
    m = P // k
    head = k * m

    def view(a: Any, is_full: bool, part: slice, n: int) -> Any:
        if is_full:
            return a[part, :, 0].reshape(n, -1, C)
        return a.reshape(1, 1, C) if hasattr(a, "shape") and a.ndim == 3 else a

    partial = _reducer(fn, 1, xp)(*[view(a, f, slice(0, head), k) for a, f in zip(args, full, strict=True)])
    total = ones(k, partial.dtype, xp) @ partial
    if head < P:
        rest = _reducer(fn, 1, xp)(*[view(a, f, slice(head, P), 1) for a, f in zip(args, full, strict=True)])
        total = total + rest[0]
    return total


def same(a: Any) -> Any:
    """The identity, as a term: ``channel_sums([(same, (a,))])`` is the channel sum of a."""
    return a


def _product(a: Any, b: Any) -> Any:
    return a * b


def channel_sums(terms: Sequence[kernels.Term], shape: tuple[int, int, int], xp: ModuleType) -> list[Any]:
    """The channel sums of ``fn(*args)`` for each term, each (1, C, 1).

    On the CPU each is a pairwise sum of the written-out values. On the GPU all of them
    come from one pass over memory (one generated kernel, see kernels.py); where the
    operands do not suit it, each term goes through a fused CuPy reduction instead.
    """
    if is_numpy(xp):
        return [pairwise_channel_sum(fn(*args), xp) for fn, args in terms]
    got = raw("reduce", terms, shape, xp)
    if got is not None:
        return got
    return [fused_channel_sum(fn, args, shape, xp) for fn, args in terms]


def elementwise(fn: Callable[..., Any], shape: tuple[int, int, int], xp: ModuleType) -> Callable[..., Any]:
    """``fn`` over (P, C, S) views, per-channel (1, C, 1) vectors and scalars: plain NumPy on
    the CPU; on the GPU one generated kernel with the same rounded operations (kernels.py),
    or ``cupy.fuse`` where the operands do not suit it."""
    if is_numpy(xp):
        return fn

    def run(*args: Any) -> Any:
        got = raw("map", [(fn, args)], shape, xp)
        return got if got is not None else fuse(fn, xp)(*args)

    return run

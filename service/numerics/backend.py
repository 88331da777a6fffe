"""Array-module dispatch. This is the only module of bncheck that knows CuPy.

CuPy is imported only when a caller asks for the GPU (``device="gpu"`` or
``"auto"``) or already holds CuPy arrays; the CPU path never imports it
(tests/numerics/test_backend.py proves it in a subprocess).

Reductions over the non-channel axes ("channel sums") live here because their
best form depends on the array module:
- NumPy sums a C-ordered (P, C) array along axis 0 row by row, which is fast;
  big float64 passes are split into blocks and run on a small thread pool
  (NumPy releases the GIL), which keeps blocks in cache and uses every core.
- CuPy's ``sum(axis=0)`` on a tall, skinny array is slow (24 ms for
  1,048,576 x 32 float32 on an H200); the same sum as a matrix-vector product
  with a ones vector runs through cuBLAS in 0.05 ms.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from . import kernels
from .dtypes import BFLOAT16
from .errors import DeviceUnavailableError, InputError
from .layout import Block, Layout

__all__ = [
    "DEVICES",
    "channel_count",
    "channel_max",
    "channel_sum",
    "channel_sums",
    "device_name",
    "elementwise",
    "gpu_available",
    "is_numpy",
    "map_blocks",
    "namespace",
    "pairwise_channel_sum",
    "resolve_device",
    "round_to",
    "to_numpy",
]

T = TypeVar("T")
DEVICES = ("cpu", "gpu", "auto")
BLOCK_ELEMENTS = 1 << 17
_FULL: Block = (slice(None), slice(None))


def namespace(*arrays: Any) -> ModuleType:
    """CuPy when any argument is a CuPy array, else NumPy. Never imports CuPy."""
    cp = sys.modules.get("cupy")
    if cp is not None and any(isinstance(a, cp.ndarray) for a in arrays):
        return cp
    return np


def is_numpy(xp: ModuleType) -> bool:
    return xp is np


def device_name(xp: ModuleType) -> str:
    return "cpu" if is_numpy(xp) else "gpu"


def _import_cupy() -> ModuleType:
    try:
        import cupy
    except ImportError as exc:
        msg = "the GPU path needs CuPy; install bncheck[gpu] on a machine with CUDA"
        raise DeviceUnavailableError(msg, field="device") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA raises its own runtime errors when no driver is present
        msg = f"CuPy is installed but CUDA reports no usable device ({exc})"
        raise DeviceUnavailableError(msg, field="device") from exc
    if count < 1:
        msg = "CuPy is installed but CUDA sees 0 devices"
        raise DeviceUnavailableError(msg, field="device")
    return cupy


@cache
def gpu_available() -> bool:
    try:
        _import_cupy()
    except DeviceUnavailableError:
        return False
    return True


def resolve_device(device: str) -> ModuleType:
    """``cpu`` is NumPy, ``gpu`` is CuPy (or an error), ``auto`` is CuPy when a GPU is there."""
    if device == "cpu":
        return np
    if device == "gpu":
        return _import_cupy()
    if device == "auto":
        return _import_cupy() if gpu_available() else np
    msg = f"unknown device {device!r}; use one of {', '.join(DEVICES)}"
    raise InputError(msg, field="device")


def to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    get = getattr(a, "get", None)
    return get() if callable(get) else np.asarray(a)


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


def channel_sum(a3: Any, xp: ModuleType) -> Any:
    """Sum a (p, C, s) block over axes 0 and 2, fast, in its own dtype; returns (C,)."""
    if not is_numpy(xp):
        got = _raw("reduce", [(same, (a3,))], a3.shape, xp)
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


_ONES: dict[tuple[int, str, int], Any] = {}


def ones(n: int, dtype: Any, xp: ModuleType) -> Any:
    """A vector of ones, kept: on the GPU a fresh one costs an allocation and a kernel."""
    if is_numpy(xp):
        return np.ones(n, dtype=dtype)
    device = int(xp.cuda.runtime.getDevice()) if hasattr(xp, "cuda") else 0
    key = (n, np.dtype(dtype).str, device)
    if key not in _ONES:
        if len(_ONES) > 64:
            _ONES.clear()
        _ONES[key] = xp.ones(n, dtype=dtype)
    return _ONES[key]


def channel_count(mask3: Any, xp: ModuleType) -> Any:
    """How many True per channel of a boolean (p, C, s) block; returns (C,) integers."""
    if is_numpy(xp):
        return mask3.sum(axis=(0, 2))
    return matvec_channel_sum(mask3.astype(xp.float64), xp).round().astype(xp.int64)


def channel_max(a3: Any, xp: ModuleType) -> Any:
    """Largest value per channel of a (p, C, s) block; returns (C,)."""
    if is_numpy(xp):
        return a3.max(axis=(0, 2))
    return two_stage_channel_max(a3, xp)


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
        got = _raw("reduce", [(_product, (a3, b3))], a3.shape, xp)
        return got[0].reshape(-1) if got is not None else channel_sum(a3 * b3, xp)
    if a3.shape[2] == 1:
        return np.einsum("pc,pc->c", a3[:, :, 0], b3[:, :, 0])
    return np.einsum("pcs,pcs->c", a3, b3)


def _halve(a: Any, axis: int) -> Any:
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
    return _halve(_halve(a3, 2), 0)


_FUSED: dict[tuple[Callable[..., Any], int], Callable[..., Any]] = {}


def fuse(fn: Callable[..., Any], xp: ModuleType) -> Callable[..., Any]:
    """``fn`` as one fused CuPy kernel (compiled once per function and dtypes), or ``fn`` itself
    for NumPy. The kernel runs the same operations in the same order."""
    if is_numpy(xp):
        return fn
    key = (fn, id(xp))
    if key not in _FUSED:
        _FUSED[key] = xp.fuse(fn)
    return _FUSED[key]


_REDUCERS: dict[tuple[Callable[..., Any], int, int], Any] = {}
_FUSED_REDUCTION_OK = [True]
_ROW_CHUNKS = 1024


def fused_channel_sum(fn: Callable[..., Any], args: Sequence[Any], shape: tuple[int, int, int],
                      xp: ModuleType) -> Any:
    """Channel sums of ``fn(*args)``, (1, C, 1), without materialising ``fn(*args)`` on the GPU.

    ``args`` are (P, C, S) views, (1, C, 1) per-channel arrays or scalars. On the GPU each
    product is reduced inside one fused kernel: along the contiguous axis S when S > 1, else
    over ``_ROW_CHUNKS`` slices of the rows; cuBLAS adds up the partial sums. If CuPy cannot
    fuse the reduction, the product is written out and summed as a matrix-vector product.
    """
    if is_numpy(xp):
        return pairwise_channel_sum(fn(*args), xp)
    if _FUSED_REDUCTION_OK[0]:
        try:
            return _fused_sum(fn, args, shape, xp).reshape(1, -1, 1)
        except Exception:  # an unsupported fusion: remember, and take the plain path
            _FUSED_REDUCTION_OK[0] = False
    return channel_sum(fuse(fn, xp)(*args), xp).reshape(1, -1, 1)


def _reducer(fn: Callable[..., Any], axis: int, xp: ModuleType) -> Any:
    key = (fn, axis, id(xp))
    if key not in _REDUCERS:
        def reduce(*args: Any) -> Any:
            return xp.sum(fn(*args), axis=axis)

        _REDUCERS[key] = xp.fuse(reduce)
    return _REDUCERS[key]


def _fused_sum(fn: Callable[..., Any], args: Sequence[Any], shape: tuple[int, int, int], xp: ModuleType) -> Any:
    P, C, S = shape
    full = [hasattr(a, "shape") and a.shape == (P, C, S) for a in args]
    if S > 1:
        rows = _reducer(fn, 2, xp)(*args)  # (P, C)
        return ones(P, rows.dtype, xp) @ rows
    # About 64K partial sums: enough thread blocks for any GPU, few enough to add up cheaply.
    k = max(1, min(_ROW_CHUNKS, P, (1 << 16) // C))
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


def round_to(a: Any, dtype: np.dtype[Any], xp: ModuleType) -> Any:
    """Round to ``dtype``. CuPy has no bfloat16: there the values are rounded to bfloat16
    and kept in float32, which holds every bfloat16 exactly."""
    if is_numpy(xp) or dtype != BFLOAT16:
        return a.astype(dtype, copy=False)
    return round_bfloat16_bits(a.astype(xp.float32), xp)


def round_bfloat16_bits(a: Any, xp: ModuleType) -> Any:
    """float32 values rounded to bfloat16 (nearest, ties to even), still held in float32.
    NaN never gets here: inputs are validated finite."""
    bits = a.view(xp.uint32)
    bits = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    return bits.view(xp.float32)


def container(dtype: np.dtype[Any], xp: ModuleType) -> np.dtype[Any]:
    """The array dtype that holds values of ``dtype`` on this array module."""
    return np.dtype(np.float32) if (dtype == BFLOAT16 and not is_numpy(xp)) else dtype


def from_container(a: Any, dtype: np.dtype[Any]) -> np.ndarray:
    """Bring an array to the host in its logical dtype (float32-held bfloat16 included)."""
    return to_numpy(a).astype(dtype, copy=False)


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
    got = _raw("reduce", terms, shape, xp)
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
        got = _raw("map", [(fn, args)], shape, xp)
        return got if got is not None else fuse(fn, xp)(*args)

    return run


_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_RAW_KERNELS: dict[Any, Any] = {}
RAW_KERNELS_OK = [True]  # False once a generated kernel failed to build: then CuPy's own kernels serve
RAW_KERNEL_ERRORS: list[str] = []


def _raw(mode: str, terms: Sequence[kernels.Term], shape: tuple[int, ...], xp: ModuleType) -> Any:
    """Run ``terms`` as one generated kernel; None where that does not apply."""
    if not RAW_KERNELS_OK[0] or len(shape) != 3:
        return None
    P, C, S = (int(n) for n in shape)
    found = kernels.operands(terms, (P, C, S))
    if found is None:
        return None
    values, kinds, slotted = found
    arrays = [v for v, k in zip(values, kinds, strict=True) if k != "scalar"]
    if "full" not in kinds:
        return None
    dtype = arrays[0].dtype
    if dtype not in _CTYPES or any(a.dtype != dtype or not a.flags.c_contiguous for a in arrays):
        return None
    launch = kernels.plan((P, C, S), _target_blocks(xp))
    if launch is None:
        return None
    key = (mode, launch.template, dtype.str, tuple(kinds), tuple(slotted))
    kernel = _RAW_KERNELS.get(key)
    try:
        if kernel is None:
            try:
                src = kernels.source(mode, launch, _CTYPES[dtype], kinds, slotted)
            except kernels.Untraceable:
                return None
            kernel = xp.RawKernel(src.code, src.name)
            build = getattr(kernel, "compile", None)
            _ = build() if callable(build) else kernel.kernel  # compile now, so a failure lands here
            _RAW_KERNELS[key] = kernel
    except Exception as exc:  # a compiler that refuses the source: remember, and use CuPy's kernels
        RAW_KERNELS_OK[0] = False
        RAW_KERNEL_ERRORS.append(f"{type(exc).__name__}: {exc}")
        return None
    args = [dtype.type(v) if k == "scalar" else v for v, k in zip(values, kinds, strict=True)]
    tail = (np.int32(P), np.int32(C), np.int32(S), np.int32(launch.chunk))
    if mode == "map":
        out = xp.empty((P, C, S), dtype=dtype)
        kernel(launch.grid, launch.block, (*args, out, *tail))
        return out
    partial = xp.empty((len(terms), launch.chunks, C), dtype=dtype)
    sums = xp.empty((len(terms), C), dtype=dtype)
    kernel(launch.grid, launch.block, (*args, partial, sums, _counter(launch.tiles, xp), *tail))
    return [sums[k].reshape(1, C, 1) for k in range(len(terms))]


_COUNTERS: dict[tuple[int, int], Any] = {}
_SM_COUNT: dict[int, int] = {}


def _counter(n: int, xp: ModuleType) -> Any:
    """Zeroed uint32 counters, one per channel tile, for the reductions' last-block hand-off.
    Kept per device and stream: each kernel's last block sets its counter back to 0."""
    key = (int(xp.cuda.runtime.getDevice()), int(xp.cuda.get_current_stream().ptr))
    held = _COUNTERS.get(key)
    if held is None or held.size < n:
        held = _COUNTERS[key] = xp.zeros(max(n, 1024), dtype=xp.uint32)
    return held


def _target_blocks(xp: ModuleType) -> int:
    """Four blocks per multiprocessor: enough loads in flight to keep memory busy."""
    device = int(xp.cuda.runtime.getDevice())
    if device not in _SM_COUNT:
        _SM_COUNT[device] = int(xp.cuda.Device(device).attributes["MultiProcessorCount"])
    return 4 * _SM_COUNT[device]

"""A block's comparison in one pass over memory: a compiled CPU kernel (Numba).

``compare._Inputs.part`` judges a block of the (P, C, S) view with NumPy in about thirty
passes, one operation each; ``_fusedkernel.judge`` reads the block once, four elements at a
time, and makes every number of the same part: the errors, allowances and ratios, the count of
bad elements, the per-channel maxima and counts, the largest relative error and error in ulps,
and the worst element. Each element's arithmetic is NumPy's, operation for operation, so every
number is the NumPy path's bit for bit but the sum of squared errors (summed in another order,
as any two sums are); tests/numerics/test_fused.py holds both paths to that on every kind of
operand.

It takes a block where it pays and is exact: NumPy arrays, a float32 or float64 candidate
against a float64 reference, rows of at least MIN_ROW elements contiguous along s (or, where
S = 1, as in (N, C) and channels-last, along the channels: ``_fusedkernel.judge_wide``), a
comparison of at least MIN_ELEMENTS elements, and no pictures. Anything else, and a block
whose candidate holds a NaN or an infinity (the NumPy path names the first one), goes to
NumPy: the same report. Without Numba, or with ``BNCHECK_FUSED=0``, every comparison does.

The reference's two passes are compiled loops too (``reference_sums``: dbeta's and
dgamma's sums and the natural scales' sums and extents, from x and dy as sent;
``reference_dx``: dx, NumPy's operations in NumPy's order). The sums add in another order
(they vectorize only so), so the reference's dgamma and dbeta and the scales may differ from
NumPy's path in their last bits; everything else is NumPy's bit for bit. The finite
differences' loss is a compiled pass too (``loss_sums``: the forward's y by its own
operations); its sums, too, add in another order, within the loss's own error estimate.

Numba compiles the kernel the first time a machine imports it and keeps it in its cache
(``NUMBA_CACHE_DIR``, or ``__pycache__`` beside this file); a process pays the import and
the cache's load, about half a second, at its first large comparison.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from .dtypes import ulp
from .tolerance import TINY

__all__ = ["MIN_ELEMENTS", "MIN_ROW", "Judged", "available", "channel_vectors", "judge", "loss_sums",
           "natural_scale", "reference_dx", "reference_ok", "reference_sums", "reference_sums_apply", "usable"]

log = logging.getLogger("bncheck.fused")

MIN_ELEMENTS = 1 << 18  # below this NumPy's passes are cheap, and the import is not worth it
MIN_ROW = 16  # rows shorter than this (s-runs, or the channels where S = 1) stay with NumPy
_KINDS = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class Judged:
    """A block's numbers (compare._Part's), from one pass."""

    n_bad: int
    max_allowed: float
    sumsq: float
    max_ref: float
    max_rel: float
    max_ulp: float
    worst_ratio: float
    worst: tuple[int, int, int]  # (p, c, s) in the block
    worst_allowed: float
    ch_abs: np.ndarray
    ch_ratio: np.ndarray
    ch_bad: np.ndarray
    ch_scale: np.ndarray


def available() -> bool:
    """Whether the kernel runs here: Numba installed, the kernel loaded, and not turned off."""
    off = os.environ.get("BNCHECK_FUSED", "1").strip().lower() in ("0", "false", "no", "off")
    return not off and _kernel() is not None


def usable(cand: Any, elements: int, plots: bool) -> bool:
    """Whether a comparison of ``elements`` elements of ``cand`` may take the kernel (block by
    block it still checks the reference, ``reference_ok``, and the rows, ``judge``)."""
    return (not plots and elements >= MIN_ELEMENTS and type(cand) is np.ndarray and cand.dtype in _KINDS
            and available())


def reference_ok(ref: Any) -> bool:
    return type(ref) is np.ndarray and ref.dtype == np.float64


def judge(cand: Any, ref: Any, scale: Any, extra: Any, *, rtol: float, atol: float, floor: float,
          natural: bool, out_dtype: Any) -> Judged | None:
    """One (p, C, s) block: ``cand`` (float32 or float64) against ``ref`` (float64); ``scale`` and
    ``extra`` of the block's shape, or (1, C, 1) per channel, or None. None where the kernel does
    not take the block (see the module) or its candidate is not finite throughout."""
    P, C, S = ref.shape
    wide = S == 1  # (N, C) and channels-last: a row is the channels of one position
    if (C if wide else S) < MIN_ROW:
        return None
    c1, r1 = _rows(cand, ref.shape, wide), _rows(ref, ref.shape, wide)
    s1, e1 = _operand(scale, ref.shape, wide), _operand(extra, ref.shape, wide)
    if c1 is None or r1 is None or s1 is None or e1 is None:
        return None
    if not (np.isfinite(s1[5]).all() and np.isfinite(e1[5]).all()):  # per-channel values: checked here
        return None
    ch = np.zeros((4, C), np.int64)  # bits of the per-channel maxima, and the counts
    result = np.zeros(12, np.int64)
    inv, least = _inverse_spacings(np.dtype(out_dtype))
    atol_n, atol_a = (float(atol), 0.0) if natural else (0.0, float(atol))
    kernel = _kernel(wide)
    kernel(*c1, *r1, *s1[:4], *e1[:4], s1[4], s1[5], e1[4], e1[5], P, C, S,
           float(rtol), atol_n, atol_a, float(floor), not floor >= TINY, inv, least, *ch, result)
    if result[11] != 0:
        return None
    f = result.view(np.float64)
    return Judged(n_bad=int(result[0]), max_allowed=float(f[1]), sumsq=float(f[10]), max_ref=float(f[2]),
                  max_rel=float(f[3]), max_ulp=float(f[4]) if f[3] > 0 else 0.0, worst_ratio=float(f[5]),
                  worst=(int(result[6]), int(result[7]), int(result[8])), worst_allowed=float(f[9]),
                  ch_abs=ch[0].view(np.float64), ch_ratio=ch[1].view(np.float64), ch_bad=ch[2],
                  ch_scale=ch[3].view(np.float64))


def natural_scale(x: Any, dy: Any, coefficients: Callable[[], tuple[Any, ...]], elements: int, out: Any) -> bool:
    """A block's natural scale (scales.ElementScale) into ``out`` ((p, C, s), float64, rows along s,
    or along the channels where s = 1) in one pass, from x and dy of the block and
    ``coefficients()``, (C,) vectors made once for every block (ElementScale.coefficients;
    asked for only when the kernel takes the block);
    False, with nothing written, where the kernel does not take it (the dtypes of x and dy,
    their rows, a tensor under MIN_ELEMENTS, or a NaN or an infinity)."""
    P, C, S = out.shape
    wide = S == 1  # (N, C) and channels-last: rows along the channels
    if ((C if wide else S) < MIN_ROW or elements < MIN_ELEMENTS or type(x) is not np.ndarray
            or type(dy) is not np.ndarray or x.dtype not in _KINDS or dy.dtype not in _KINDS or not available()):
        return False
    xr, dr, outr = _rows(x, out.shape, wide), _rows(dy, out.shape, wide), _rows(out, out.shape, wide)
    if xr is None or dr is None or outr is None or out.dtype != np.float64 or not out.flags.writeable:
        return False
    mean, invstd, k1, k2, w, k3 = coefficients()
    from . import _fusedkernel

    if wide:
        return bool(_fusedkernel.natural_scale_wide(xr[0], xr[2], dr[0], dr[2], mean, invstd, k1, k2, float(w), k3,
                                                    P, C, outr[0], outr[2]))
    return bool(_fusedkernel.natural_scale(xr[0], xr[2], xr[3], dr[0], dr[2], dr[3], mean, invstd, k1, k2, float(w),
                                           k3, P, C, S, outr[0], outr[2], outr[3]))


def reference_sums(x: Any, dy: Any, mean: Any, invstd: Any) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The sums of reference.backward's first pass and of Scales.block_sums for a (p, C, s)
    block of x and dy, in one pass: (7, C) float64, sum dy, sum dy (x - mean), sum dy^2,
    sum |dy|, sum |dy| |xhat|, sum |x|, sum dy xhat; and the largest and smallest x and dy per
    channel, in their dtypes (the values NumPy's max and min give, but the sign of a zero).
    ``mean`` and ``invstd`` (C,) float64. Only where ``reference_sums_apply`` says so."""
    P, C, S = x.shape
    wide = S == 1  # (N, C) and channels-last: rows along the channels
    xr, dr = _rows(x, x.shape, wide), _rows(dy, dy.shape, wide)
    if xr is None or dr is None:
        msg = "reference_sums takes blocks whose rows are contiguous (reference_sums_apply)"
        raise ValueError(msg)
    out, keys = np.zeros(7 * C), np.empty((4, C), np.int64)
    from . import _fusedkernel

    if wide:
        _fusedkernel.reference_sums_wide(xr[0], xr[2], dr[0], dr[2], mean, invstd, P, C, out, keys.reshape(-1))
    else:
        _fusedkernel.reference_sums(xr[0], xr[2], xr[3], dr[0], dr[2], dr[3], mean, invstd, P, C, S, out,
                                    keys.reshape(-1))
    return out.reshape(7, C), tuple(_unkey(k, a.dtype) for k, a in zip(keys, (x, x, dy, dy), strict=True))


def _unkey(keys: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """Values of ``dtype`` back from the kernel's order-keeping integers (``_fusedkernel._key``)."""
    width = dtype.itemsize * 8
    k: np.ndarray[Any, np.dtype[np.signedinteger[Any]]] = keys.astype(np.int32 if width == 32 else np.int64)
    return (k ^ ((k >> (width - 1)) & ((1 << (width - 1)) - 1))).view(dtype)


def reference_dx(x: Any, dy: Any, coefficients: tuple[Any, ...], out: Any) -> bool:
    """reference.backward's training dx for a (p, C, s) block into ``out`` (float64, rows along
    s), the same operations in the same order, in one pass; ``coefficients`` (mean, c_xmu,
    c_mean, scale), (C,) float64. False, with nothing written, where ``out``'s rows do not
    suit (the caller's NumPy passes then make it); only where ``reference_sums_apply``."""
    P, C, S = out.shape
    wide = S == 1
    xr, dr, outr = _rows(x, out.shape, wide), _rows(dy, out.shape, wide), _rows(out, out.shape, wide)
    if xr is None or dr is None or outr is None or out.dtype != np.float64 or not out.flags.writeable:
        return False
    from . import _fusedkernel

    mean, c_xmu, c_mean, scale = coefficients
    if wide:
        _fusedkernel.reference_dx_wide(xr[0], xr[2], dr[0], dr[2], mean, c_xmu, c_mean, scale, P, C, outr[0],
                                       outr[2])
    else:
        _fusedkernel.reference_dx(xr[0], xr[2], xr[3], dr[0], dr[2], dr[3], mean, c_xmu, c_mean, scale, P, C, S,
                                  outr[0], outr[2], outr[3])
    return True


def loss_sums(x: Any, dy: Any, coefficients: tuple[Any, ...], moved: tuple[int, int, Any] | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """fd.Problem.loss's sums for a (p, C, s) block in one pass: sum dy y, sum |dy y| and sum dy
    per channel, (C,) float64 each, y the forward by its own operations with ``coefficients``
    (mean, gamma invstd, beta), (C,) float64; ``moved``: (p, s, values) of the block's patched
    elements, or None. None where the block does not suit (rows not contiguous along s, or S
    under MIN_ROW); the caller's NumPy passes then make them."""
    P, C, S = x.shape
    if S < MIN_ROW or x.dtype not in _KINDS or dy.dtype not in _KINDS or not available():
        return None
    xr, dr = _rows(x, x.shape, False), _rows(dy, dy.shape, False)
    if xr is None or dr is None:
        return None
    from . import _fusedkernel

    mean, scale, shift = coefficients
    pp, ps, pv = (-1, 0, _zeros(C)) if moved is None else (int(moved[0]), int(moved[1]), channel_vectors(moved[2])[0])
    out = np.zeros(3 * C)
    _fusedkernel.loss_sums(xr[0], xr[2], xr[3], dr[0], dr[2], dr[3], mean, scale, shift, P, C, S, pp, ps, pv, out)
    return out[:C], out[C:2 * C], out[2 * C:]


def channel_vectors(*values: Any) -> tuple[np.ndarray, ...]:
    """Per-channel values ((C,) or (1, C, 1)) as the kernels take them: (C,) float64, contiguous."""
    return tuple(np.ascontiguousarray(v, dtype=np.float64).reshape(-1) for v in values)


def reference_sums_apply(x3: Any, dy3: Any, layout: Any) -> bool:
    """Whether ``reference_sums`` (and ``reference_dx`` and ``natural_scale``) take the blocks of these (P, C, S) views
    of x and dy: NumPy float32 or float64 arrays of MIN_ELEMENTS or more whose rows, of MIN_ROW
    or more, are contiguous: along s, or along the channels where S = 1."""
    wide = layout.S == 1
    return ((layout.C if wide else layout.S) >= MIN_ROW and layout.M >= MIN_ELEMENTS and type(x3) is np.ndarray
            and type(dy3) is np.ndarray and x3.dtype in _KINDS and dy3.dtype in _KINDS
            and _rows(x3, x3.shape, wide) is not None and _rows(dy3, dy3.shape, wide) is not None and available())


def _rows(a: Any, shape: tuple[int, int, int], wide: bool) -> tuple[np.ndarray, int, int, int] | None:
    """An array of the block's shape as the kernel reads it: a 1-D view from its first element
    on, 0, and the steps of p and c in elements; None unless its rows are contiguous (along s,
    or along c when ``wide``)."""
    item = a.itemsize
    if min(a.strides) < 0 or any(st % item for st in a.strides):
        return None
    sp, sc, ss = (st // item for st in a.strides)
    if (shape[1] > 1 and sc != 1) if wide else (shape[2] > 1 and ss != 1):
        return None
    span = (shape[0] - 1) * sp + (shape[1] - 1) * sc + (shape[2] - 1) * ss + 1
    return np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(item,)), 0, sp, sc


def _operand(a: Any, shape: tuple[int, int, int], wide: bool) -> tuple[Any, ...] | None:
    """A scale or an extra allowance: (1-D view, offset, p step, c step, full, per-channel values).
    Absent, or one value per channel: a row of zeros read with steps 0, and the values apart."""
    if a is None or a.shape != shape:
        per = np.zeros(shape[1]) if a is None else channel_vectors(a)[0]
        return _zeros(shape[1] if wide else shape[2]), 0, 0, 0, 0.0, per
    if a.dtype != np.float64:
        return None
    rows = _rows(a, shape, wide)
    return None if rows is None else (*rows, 1.0, _zeros(shape[1]))


@cache
def _zeros(n: int) -> np.ndarray:
    z = np.zeros(n)
    z.setflags(write=False)
    return z


@cache
def _inverse_spacings(out_dtype: np.dtype[Any]) -> tuple[np.ndarray, int]:
    """1 / the spacing of ``out_dtype`` (dtypes.ulp) at a float64 of each biased exponent, the
    power of two at or below it (0 for 0 and the subnormals, whose spacing is the least), and
    the least exponent whose inverse is a double (float64 outputs: below it, NumPy's path)."""
    k = np.arange(2048)
    power = np.ldexp(1.0, np.minimum(k, 2046) - 1023)
    power[0] = 0.0
    with np.errstate(over="ignore", divide="ignore"):
        inverse = 1.0 / ulp(power, out_dtype)
    inverse.setflags(write=False)
    return inverse, int(np.argmax(np.isfinite(inverse)))


@cache
def _kernel(wide: bool = False) -> Any:
    """The compiled kernel (rows along s, or along c when ``wide``), or None where it cannot run."""
    try:
        from . import _fusedkernel
    except ImportError:  # no Numba: the NumPy path
        return None
    except (MemoryError, OSError) as exc:  # LLVM maps ~200 MB: a worker under BNCHECK_WORKER_MEMORY_MB may lack it
        log.warning("the compiled comparison kernel did not load (%s: %s; too little address space under "
                    "BNCHECK_WORKER_MEMORY_MB?); comparisons take NumPy's path", type(exc).__name__, exc)
        return None
    except Exception:  # noqa: BLE001 (a cache it cannot write, a compiler error: still the NumPy path)
        log.warning("the compiled comparison kernel did not load; comparisons take NumPy's path", exc_info=True)
        return None
    return _fusedkernel.judge_wide if wide else _fusedkernel.judge

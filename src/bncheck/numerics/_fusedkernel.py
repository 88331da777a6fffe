"""The compiled half of fused.py: imported there only, and only when Numba is installed.

A row of a block is the s-run of one p and one channel, contiguous (``judge``), or, where
S = 1, the channels of one position (``judge_wide``). Each row is read by a few loops, each
simple enough for LLVM to run it four elements at a time (AVX2): ``_finite`` (are the
operands finite), ``_judged`` (the count of bad elements, the largest ratio, error and
allowance), ``_magnitudes`` (the largest relative error and |reference|, the least non-zero
|reference|), ``_ulps``, ``_scale_max`` and ``_sumsq``; the row stays in cache between them.
One loop doing everything was measured: LLVM's cost model leaves it scalar, 2.5x slower.

What makes them vectorize (each found by reading the LLVM IR Numba makes):
- LLVM as Numba drives it does not vectorize the maximum of floats under any fastmath
  flags, but does the maximum of integers; every number whose maximum is taken here is >= 0,
  where IEEE doubles order as their bit patterns, so maxima are taken over bits (``_bits``)
  and turned back at the end, exactly.
- Rows are slices indexed by the loop variable: a computed index (``a[i + s]``) carries
  Numba's negative-index wraparound, which no loop vectorizes through.
- No branch on what was given and no load under a branch: a scale or an extra allowance
  given per channel reads a row of zeros and adds its channel's value (``x * 1.0 + 0.0`` and
  ``0.0 * 0.0 + v`` are exact), the same loop for every kind of operand.
- Few reductions per loop; past four or five, the cost model gives up.

Exactness: no ``contract`` (no fused multiply-add) and no ``reassoc`` but in ``_sumsq`` (as
NumPy's own pairwise sum reorders it) and ``_finite``, so every element's numbers are
NumPy's, rounding for rounding. ``nnan`` lets LLVM assume no NaN: ``_finite`` checks every
operand of a row first (x - x is NaN for an infinity or a NaN, a sum keeps it, and that loop
has no ``nnan``), and a row that is not finite sends its block back to NumPy's path, so no
NaN ever reaches an ``nnan`` loop (0/0 where a reference is 0 is computed and then discarded
by a select). An error that overflows to infinity is found from its bits and handed back
too. Ulps divide by the output dtype's spacing, a power of two, by multiplying by its
inverse from a table (the same rounding: both are exact scalings); where that inverse is
not a double (float64 outputs of references below 2^-970) the block goes back to NumPy.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types as t
from numba.extending import intrinsic

from .tolerance import TINY as _TINY  # a compile-time constant: a floor passed in stops the loops vectorizing

__all__ = ["judge", "judge_wide", "loss_sums", "natural_scale", "natural_scale_wide", "reference_dx",
           "reference_dx_wide", "reference_sums", "reference_sums_wide"]

_EXP = 0x7FF0000000000000
_ABS = 0x7FFFFFFFFFFFFFFF
_FM = {"nnan", "nsz"}
# Where S = 1 (rows along the channels) and rows are short (under WIDE_TILED channels), loops
# take WIDE_TILE rows column by column (the reference's sums), or, where rows are packed,
# WIDE_RUN elements of whole rows at once (``judge_wide``, the reference's dx).
WIDE_TILED = 256
WIDE_TILE = 128
WIDE_RUN = 1024


@intrinsic
def _bits(typingctx: Any, x: Any) -> Any:  # pragma: no cover - compiled
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(64))

    return t.int64(t.float64), codegen


@intrinsic
def _float(typingctx: Any, x: Any) -> Any:  # pragma: no cover - compiled
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.DoubleType())

    return t.float64(t.int64), codegen


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _allowance(r, scale, s_full, s_per, extra, e_full, e_per, rtol, atol_n, atol_a, floor):  # type: ignore[no-untyped-def]
    """compare._Inputs.part's allowance, in its order: |ref| rtol + scale atol (or atol) + extra + floor."""
    return abs(r) * rtol + ((scale * s_full + s_per) * atol_n + atol_a) + (extra * e_full + e_per) + floor


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _finite(cand, ref, scale, extra):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Whether every operand of the row is finite: x - x is 0 for a finite x and NaN otherwise,
    and a sum keeps a NaN in any order (``reassoc`` only, to vectorize: no ``nnan`` here, so
    that no NaN ever reaches the loops below, which assume there is none)."""
    acc = 0.0
    for s in range(ref.shape[0]):
        c = np.float64(cand[s])
        acc += (c - c) + (ref[s] - ref[s]) + (scale[s] - scale[s]) + (extra[s] - extra[s])
    return acc == 0.0


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _judged(cand, ref, scale, extra, s_full, s_per, e_full, e_per, rtol, atol_n, atol_a, floor,  # type: ignore[no-untyped-def]
            tiny_floor):  # pragma: no cover - compiled
    """The count of bad elements; the largest ratio, error and allowance (bits)."""
    bad = 0
    top_q = top_e = top_a = 0
    for s in range(ref.shape[0]):
        r = ref[s]
        e = abs(np.float64(cand[s]) - r)
        a = _allowance(r, scale[s], s_full, s_per, extra[s], e_full, e_per, rtol, atol_n, atol_a, floor)
        top_a = max(top_a, _bits(a))
        bad += 1 if e > a else 0
        a = a if (a >= _TINY or not tiny_floor) else _TINY
        top_q = max(top_q, _bits(e / a))
        top_e = max(top_e, _bits(e))
    return bad, top_q, top_e, top_a


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _magnitudes(cand, ref):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The largest relative error over non-zero references, the largest |reference|, and the
    smallest non-zero |reference| (bits)."""
    top_rel = top_r = 0
    low = _ABS
    for s in range(ref.shape[0]):
        r = ref[s]
        e = abs(np.float64(cand[s]) - r)
        ar = abs(r)
        rb = _bits(ar)
        top_r = max(top_r, rb)
        low = min(low, rb if rb != 0 else _ABS)
        top_rel = max(top_rel, _bits(e / ar) if ar != 0.0 else 0)
    return top_rel, top_r, low


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _ulps(cand, ref, inv_spacing):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The largest error in ulps of the output dtype over non-zero references (bits)."""
    top = 0
    for s in range(ref.shape[0]):
        r = ref[s]
        e = abs(np.float64(cand[s]) - r)
        rb = _bits(r) & _ABS
        u = e * inv_spacing[rb >> 52]
        top = max(top, _bits(u) if rb != 0 else 0)
    return top


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _scale_max(scale, s_full, s_per):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    top = 0
    for s in range(scale.shape[0]):
        top = max(top, _bits(scale[s] * s_full + s_per))
    return top


@numba.njit(nogil=True, cache=True, fastmath={"nnan", "nsz", "reassoc"})
def _sumsq(cand, ref):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    acc = 0.0
    for s in range(ref.shape[0]):
        e = np.float64(cand[s]) - ref[s]
        acc += e * e
    return acc


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _first(cand, ref, scale, extra, s_full, s_per, e_full, e_per, step, rtol, atol_n, atol_a, floor,  # type: ignore[no-untyped-def]
           tiny_floor, best):  # pragma: no cover - compiled
    """The first element of a row whose ratio's bits are ``best``, and its allowance's bits;
    (-1, 0) if none. The per-channel values are ``s_per[i * step]`` (step 0: the row's channel)."""
    for i in range(ref.shape[0]):
        r = ref[i]
        e = abs(np.float64(cand[i]) - r)
        a = _allowance(r, scale[i], s_full, s_per[i * step], extra[i], e_full, e_per[i * step], rtol, atol_n, atol_a,
                       floor)
        if tiny_floor:
            a = a if a >= _TINY else _TINY
        if _bits(e / a) == best:
            return i, _bits(a)
    return -1, 0


@numba.njit(nogil=True, cache=True)
def _finish(result, n_bad, top_a, top_r, top_rel, top_ulp, best, sumsq, top_e, low_r, least_index):  # type: ignore[no-untyped-def]
    """The block's numbers into ``result``, and its status: 1 where an error overflowed (NumPy's
    path takes it as not finite), 2 where a spacing's inverse is not a double; True if 0."""
    result[0] = n_bad
    result[1], result[2], result[3], result[4], result[5] = top_a, top_r, top_rel, top_ulp, best
    result[10] = _bits(sumsq)
    result[11] = 1 if top_e >= _EXP else (2 if low_r < least_index << 52 else 0)
    return result[11] == 0


def _arr(dt: Any, readonly: bool = True) -> Any:
    return t.Array(dt, 1, "C", readonly=readonly)


_F64, _I64, _F = _arr(t.float64), t.int64, t.float64
_OUT = _arr(t.int64, False)
# One signature per candidate dtype: every other operand is a float64 (or int64) 1-D array.
_SIGS = [(_arr(dt), _I64, _I64, _I64, _F64, _I64, _I64, _I64, _F64, _I64, _I64, _I64,
          _F64, _I64, _I64, _I64, _F, _F64, _F, _F64, _I64, _I64, _I64, _F, _F, _F, _F, t.boolean, _F64, _I64,
          _OUT, _OUT, _OUT, _OUT, _OUT)
         for dt in (t.float32, t.float64)]


@numba.njit(_SIGS, nogil=True, cache=True, fastmath=_FM)
def judge(cand, co, cp, cc, ref, ro, rp, rc, scale, so, sp, sc, extra, eo, ep, ec,  # type: ignore[no-untyped-def]
          s_full, s_per, e_full, e_per, P, C, S, rtol, atol_n, atol_a, floor, tiny_floor, inv_spacing, least_index,
          ch_abs, ch_ratio, ch_bad, ch_scale, result):  # pragma: no cover - compiled
    """One block, P x C rows of S elements: row (p, c) of an operand starts at ``o + p*p_step +
    c*c_step`` of it. The scale and the extra allowance are ``x[s] * full + per[c]``: an operand
    given per element has ``full`` 1 and ``per`` zeros, one given per channel (or absent) is a row
    of S zeros read with steps 0, ``full`` 0, and its (C,) values (or zeros) in ``per``. The per-channel maxima
    (``ch_*``) are bits, updated in place; ``result``: n_bad, the bits of max_allowed, max_ref,
    max_rel, max_ulp and the worst ratio, the worst element's p, c, s, the bits of its allowance,
    the sum of squares' bits, and a status (0 done, 1 not finite, 2 unrepresented spacing)."""
    n_bad = 0
    top_a = top_r = top_rel = top_ulp = top_e = 0
    low_r = _ABS
    best = -1
    bp = bc = 0
    sumsq = 0.0
    for p in range(P):
        for c in range(C):
            i, j = co + p * cp + c * cc, ro + p * rp + c * rc
            k, m = so + p * sp + c * sc, eo + p * ep + c * ec
            cr, rr, sr, er = cand[i:i + S], ref[j:j + S], scale[k:k + S], extra[m:m + S]
            if not _finite(cr, rr, sr, er):
                result[11] = 1
                return
            bad, q, e, a = _judged(cr, rr, sr, er, s_full, s_per[c], e_full, e_per[c], rtol, atol_n, atol_a, floor,
                                   tiny_floor)
            rel, r, low = _magnitudes(cr, rr)
            ulp = _ulps(cr, rr, inv_spacing)
            s = _scale_max(sr, s_full, s_per[c])
            sumsq += _sumsq(cr, rr)
            top_e = max(top_e, e)
            low_r = min(low_r, low)
            n_bad += bad
            top_a, top_r = max(top_a, a), max(top_r, r)
            top_rel, top_ulp = max(top_rel, rel), max(top_ulp, ulp)
            ch_abs[c], ch_ratio[c], ch_scale[c] = max(ch_abs[c], e), max(ch_ratio[c], q), max(ch_scale[c], s)
            ch_bad[c] += bad
            if q > best:
                best, bp, bc = q, p, c
    if not _finish(result, n_bad, top_a, top_r, top_rel, top_ulp, best, sumsq, top_e, low_r, least_index):
        return
    # the worst element: the first of the worst row whose ratio is the block's largest
    i, j = co + bp * cp + bc * cc, ro + bp * rp + bc * rc
    k, m = so + bp * sp + bc * sc, eo + bp * ep + bc * ec
    at, a = _first(cand[i:i + S], ref[j:j + S], scale[k:k + S], extra[m:m + S], s_full, s_per[bc:bc + 1], e_full,
                   e_per[bc:bc + 1], 0, rtol, atol_n, atol_a, floor, tiny_floor, best)
    result[6], result[7], result[8], result[9] = bp, bc, at, a
    if at < 0:
        result[11] = 3  # not found: cannot happen; the caller takes the NumPy path


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _wide_counts(cand, ref, scale, extra, s_full, s_per, e_full, e_per, rtol, atol_n, atol_a, floor,  # type: ignore[no-untyped-def]
                 tiny_floor, ch_ratio, ch_bad):  # pragma: no cover - compiled
    """Along a row of channels (S = 1): each channel's bad count and largest ratio (bits)."""
    for c in range(ref.shape[0]):
        r = ref[c]
        e = abs(np.float64(cand[c]) - r)
        a = _allowance(r, scale[c], s_full, s_per[c], extra[c], e_full, e_per[c], rtol, atol_n, atol_a, floor)
        ch_bad[c] += 1 if e > a else 0
        a = a if (a >= _TINY or not tiny_floor) else _TINY
        ch_ratio[c] = max(ch_ratio[c], _bits(e / a))


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _wide_tops(cand, ref, scale, extra, s_full, s_per, e_full, e_per, rtol, atol_n, atol_a, floor,  # type: ignore[no-untyped-def]
               tiny_floor):  # pragma: no cover - compiled
    """The row's largest ratio and allowance (bits)."""
    top_q = top_a = 0
    for c in range(ref.shape[0]):
        r = ref[c]
        e = abs(np.float64(cand[c]) - r)
        a = _allowance(r, scale[c], s_full, s_per[c], extra[c], e_full, e_per[c], rtol, atol_n, atol_a, floor)
        top_a = max(top_a, _bits(a))
        a = a if (a >= _TINY or not tiny_floor) else _TINY
        top_q = max(top_q, _bits(e / a))
    return top_q, top_a


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _wide_maxima(cand, ref, scale, s_full, s_per, ch_abs, ch_scale):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Each channel's largest error and scale (bits)."""
    for c in range(ref.shape[0]):
        ch_abs[c] = max(ch_abs[c], _bits(abs(np.float64(cand[c]) - ref[c])))
        ch_scale[c] = max(ch_scale[c], _bits(scale[c] * s_full + s_per[c]))


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _scale_value(x, dy, mean, invstd, k1, k2, w, k3):  # type: ignore[no-untyped-def]  # pragma: no cover
    """One element's natural scale, scales.ElementScale's operations in their order."""
    return (abs((np.float64(x) - mean) * invstd) * k1 + k2 + abs(np.float64(dy)) * w) * k3


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _scale_row(x, dy, mean, invstd, k1, k2, w, k3, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    for s in range(out.shape[0]):
        out[s] = _scale_value(x[s], dy[s], mean, invstd, k1, k2, w, k3)


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _scale_wide(x, dy, mean, invstd, k1, k2, w, k3, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    """``_scale_row`` along channels: the per-channel values one per element."""
    for c in range(out.shape[0]):
        out[c] = _scale_value(x[c], dy[c], mean[c], invstd[c], k1[c], k2[c], w, k3[c])


@numba.njit(nogil=True, cache=True)
def _run_rows(C, packed):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """Rows per run where S = 1: WIDE_RUN // C whole rows where rows are ``packed`` (every
    operand's rows C apart) and shorter than WIDE_TILED channels, else one."""
    k = WIDE_RUN // C
    return k if packed and C < WIDE_TILED and k > 1 else 1


@numba.njit(nogil=True, cache=True)
def _repeated(row, k):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``row`` k times over, one after another."""
    n = row.shape[0]
    out = np.empty(k * n, row.dtype)
    for r in range(k):
        out[r * n:(r + 1) * n] = row
    return out


@numba.njit(_SIGS, nogil=True, cache=True, fastmath=_FM)
def judge_wide(cand, co, cp, cc, ref, ro, rp, rc, scale, so, sp, sc, extra, eo, ep, ec,  # type: ignore[no-untyped-def]
               s_full, s_per, e_full, e_per, P, C, S, rtol, atol_n, atol_a, floor, tiny_floor, inv_spacing,
               least_index, ch_abs, ch_ratio, ch_bad, ch_scale, result):  # pragma: no cover - compiled
    """``judge`` for S = 1 ((N, C), channels-last): row p is the C channels of one position,
    contiguous (every c step 1; an operand given per channel, or absent, is a row of C zeros
    read with p step 0, its values in ``per``). Arguments and ``result`` as ``judge``'s.

    Rows go k at a time through the row loops: where they are packed (cand and ref C apart,
    scale and extra C or 0 apart) and fewer than WIDE_TILED channels long, k = WIDE_RUN // C
    whole rows, against the per-channel values repeated k times and into per-channel maxima
    and counts k times as long, folded at the end; else one row at a time. A short row is a
    loop of its own otherwise (a 512K-element block of 16 channels: 7.1-9.6 ms row by row,
    3.0-4.1 in runs; of 64 channels: 4.0-5.5, 2.9-4.0; A/B, three rounds). The worst element
    is still the first in memory order of the largest ratio: the first run that holds it (runs
    go in order of p), then its first element there."""
    k = _run_rows(C, cp == C and rp == C and (sp == 0 or sp == C) and (ep == 0 or ep == C))
    n = k * C
    sp_t, ep_t = _repeated(s_per, k), _repeated(e_per, k)
    abs_t, ratio_t = np.zeros(n, np.int64), np.zeros(n, np.int64)
    bad_t, scale_t = np.zeros(n, np.int64), np.zeros(n, np.int64)
    s_row = _repeated(scale[so:so + C], k)  # an operand read with p step 0: its row, as runs read it
    e_row = _repeated(extra[eo:eo + C], k)
    top_a = top_r = top_rel = top_ulp = top_e = 0
    low_r = _ABS
    best = -1
    bp = 0
    sumsq = 0.0
    for p0 in range(0, P, k):
        m = min(k, P - p0) * C
        i, j, u, v = co + p0 * cp, ro + p0 * rp, so + p0 * sp, eo + p0 * ep
        cr, rr = cand[i:i + m], ref[j:j + m]
        sr = scale[u:u + m] if sp else s_row[:m]
        er = extra[v:v + m] if ep else e_row[:m]
        if not _finite(cr, rr, sr, er):
            result[11] = 1
            return
        _wide_counts(cr, rr, sr, er, s_full, sp_t[:m], e_full, ep_t[:m], rtol, atol_n, atol_a, floor, tiny_floor,
                     ratio_t[:m], bad_t[:m])
        q, a = _wide_tops(cr, rr, sr, er, s_full, sp_t[:m], e_full, ep_t[:m], rtol, atol_n, atol_a, floor, tiny_floor)
        _wide_maxima(cr, rr, sr, s_full, sp_t[:m], abs_t[:m], scale_t[:m])
        rel, r, low = _magnitudes(cr, rr)
        ulp = _ulps(cr, rr, inv_spacing)
        sumsq += _sumsq(cr, rr)
        top_a, top_r, low_r = max(top_a, a), max(top_r, r), min(low_r, low)
        top_rel, top_ulp = max(top_rel, rel), max(top_ulp, ulp)
        if q > best:
            best, bp = q, p0
    n_bad = 0
    for x in range(n):
        c = x % C
        ch_abs[c], ch_ratio[c] = max(ch_abs[c], abs_t[x]), max(ch_ratio[c], ratio_t[x])
        ch_scale[c] = max(ch_scale[c], scale_t[x])
        ch_bad[c] += bad_t[x]
        n_bad += bad_t[x]
    for c in range(C):
        top_e = max(top_e, ch_abs[c])
    if not _finish(result, n_bad, top_a, top_r, top_rel, top_ulp, best, sumsq, top_e, low_r, least_index):
        return
    m = min(k, P - bp) * C
    i, j, u, v = co + bp * cp, ro + bp * rp, so + bp * sp, eo + bp * ep
    at, a = _first(cand[i:i + m], ref[j:j + m], scale[u:u + m] if sp else s_row[:m],
                   extra[v:v + m] if ep else e_row[:m], s_full, sp_t, e_full, ep_t, 1, rtol, atol_n, atol_a, floor,
                   tiny_floor, best)
    result[6], result[7], result[8], result[9] = bp + at // C, at % C, 0, a
    if at < 0:
        result[11] = 3  # not found: cannot happen; the caller takes the NumPy path


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _finite_pair(x, dy):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """``_finite`` for x and dy."""
    acc = 0.0
    for s in range(x.shape[0]):
        a, b = np.float64(x[s]), np.float64(dy[s])
        acc += (a - a) + (b - b)
    return acc == 0.0


_SCALE_SIGS = [(_arr(xt), _I64, _I64, _arr(dt), _I64, _I64, _F64, _F64, _F64, _F64, _F, _F64, _I64, _I64, _I64,
                _arr(t.float64, False), _I64, _I64) for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_SCALE_SIGS, nogil=True, cache=True)
def natural_scale(x, xp, xc, dy, dp, dc, mean, invstd, k1, k2, w, k3, P, C, S, out, op, oc):  # type: ignore[no-untyped-def]
    """scales.ElementScale.block in one pass: ``((|(x - mean) * invstd| * k1 + k2) + |dy| * w) * k3``
    per element, the per-channel ``k`` of the tensor's form (scales.ElementScale.coefficients), into
    ``out``; rows of every operand as in ``judge``. False, with nothing written, where x or dy
    is not finite (no NaN may reach ``_scale_row``)."""  # pragma: no cover - compiled
    for p in range(P):
        for c in range(C):
            if not _finite_pair(x[p * xp + c * xc:p * xp + c * xc + S], dy[p * dp + c * dc:p * dp + c * dc + S]):
                return False
    for p in range(P):
        for c in range(C):
            i, j, o = p * xp + c * xc, p * dp + c * dc, p * op + c * oc
            _scale_row(x[i:i + S], dy[j:j + S], mean[c], invstd[c], k1[c], k2[c], w, k3[c], out[o:o + S])
    return True


_SCALE_WIDE_SIGS = [t.boolean(_arr(xt), _I64, _arr(dt), _I64, _F64, _F64, _F64, _F64, _F, _F64, _I64, _I64,
                              _arr(t.float64, False), _I64) for xt in (t.float32, t.float64)
                    for dt in (t.float32, t.float64)]


@numba.njit(_SCALE_WIDE_SIGS, nogil=True, cache=True)
def natural_scale_wide(x, xp, dy, dp, mean, invstd, k1, k2, w, k3, P, C, out, op):  # type: ignore[no-untyped-def]
    """``natural_scale`` where S = 1: row p is x[p * xp:p * xp + C]. Rows go ``_run_rows`` at a
    time against the per-channel values repeated as often, as the reference's dx does."""  # pragma: no cover
    k = _run_rows(C, xp == C and dp == C and op == C)
    for p0 in range(0, P, k):
        n = min(k, P - p0) * C
        if not _finite_pair(x[p0 * xp:p0 * xp + n], dy[p0 * dp:p0 * dp + n]):
            return False
    m, v, a, b, f = _repeated(mean, k), _repeated(invstd, k), _repeated(k1, k), _repeated(k2, k), _repeated(k3, k)
    for p0 in range(0, P, k):
        n = min(k, P - p0) * C
        _scale_wide(x[p0 * xp:p0 * xp + n], dy[p0 * dp:p0 * dp + n], m[:n], v[:n], a[:n], b[:n], w, f[:n],
                    out[p0 * op:p0 * op + n])
    return True


# ------------------------------------------------------------------ the reference's first pass
# Sums in float64 of float32 or float64 rows; ``reassoc`` to vectorize (a sum in another order,
# as any two sums are), nothing else: an infinity or a NaN goes where IEEE arithmetic takes it.


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _own_sums(x, dy, mean):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """sum dy, sum dy (x - mean), sum dy^2, sum |dy| of a row."""
    s_dy = s_dyd = s_dy2 = s_ady = 0.0
    for s in range(x.shape[0]):
        g = np.float64(dy[s])
        s_dy += g
        s_dyd += g * (np.float64(x[s]) - mean)
        s_dy2 += g * g
        s_ady += abs(g)
    return s_dy, s_dyd, s_dy2, s_ady


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _scale_sums(x, dy, mean, invstd):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """sum |dy| |xhat|, sum |x|, sum dy xhat of a row, xhat = (x - mean) * invstd."""
    s_adyh = s_ax = s_dyh = 0.0
    for s in range(x.shape[0]):
        g, v = np.float64(dy[s]), np.float64(x[s])
        h = (v - mean) * invstd
        s_adyh += abs(g) * abs(h)
        s_ax += abs(v)
        s_dyh += g * h
    return s_adyh, s_ax, s_dyh


@intrinsic
def _key(typingctx: Any, x: Any) -> Any:  # pragma: no cover - compiled
    """An integer of x's width that orders as x does (for any x but a NaN): the bits, with
    those but the sign flipped where the sign is set. Applied to a key it gives the bits back."""
    width = x.bitwidth
    ity = ir.IntType(width)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        bits = builder.bitcast(args[0], ity)
        flip = builder.and_(builder.ashr(bits, ir.Constant(ity, width - 1)), ir.Constant(ity, (1 << (width - 1)) - 1))
        return builder.xor(bits, flip)

    return getattr(t, f"int{width}")(x), codegen


@numba.njit(nogil=True, cache=True)
def _extents(x, dy):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The keys (``_key``) of the largest and smallest x and dy of a row."""
    hx = lx = _key(x[0])
    hd = ld = _key(dy[0])
    for s in range(x.shape[0]):
        k, m = _key(x[s]), _key(dy[s])
        hx, lx, hd, ld = max(hx, k), min(lx, k), max(hd, m), min(ld, m)
    return hx, lx, hd, ld


@numba.njit(nogil=True, cache=True)
def _add_run(xr, dr, mean, invstd, C, c, first, out, keys):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Channel c's sums and extents of one contiguous run of x and dy (``xr``, ``dr``) added into
    ``out`` and ``keys`` as ``reference_sums`` lays them out; ``first``: the extents start here."""
    a = _own_sums(xr, dr, mean[c])
    b = _scale_sums(xr, dr, mean[c], invstd[c])
    e = _extents(xr, dr)
    if first:
        keys[c], keys[C + c], keys[2 * C + c], keys[3 * C + c] = e[0], e[1], e[2], e[3]
    else:
        keys[c] = max(keys[c], e[0])
        keys[C + c] = min(keys[C + c], e[1])
        keys[2 * C + c] = max(keys[2 * C + c], e[2])
        keys[3 * C + c] = min(keys[3 * C + c], e[3])
    out[c] += a[0]
    out[C + c] += a[1]
    out[2 * C + c] += a[2]
    out[3 * C + c] += a[3]
    out[4 * C + c] += b[0]
    out[5 * C + c] += b[1]
    out[6 * C + c] += b[2]


_SUMS_SIGS = [t.void(_arr(xt), _I64, _I64, _arr(dt), _I64, _I64, _F64, _F64, _I64, _I64, _I64,
                     _arr(t.float64, False), _OUT) for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_SUMS_SIGS, nogil=True, cache=True)
def reference_sums(x, xp, xc, dy, dp, dc, mean, invstd, P, C, S, out, keys):  # type: ignore[no-untyped-def]
    """reference.backward's first pass over a block and Scales.block_sums' sums, rows as in
    ``judge``: into ``out`` ((7, C) flat, zeroed) sum dy, sum dy (x - mean), sum dy^2, sum |dy|,
    sum |dy| |xhat|, sum |x| and sum dy xhat per channel; into ``keys`` ((4, C) flat) the keys
    of the largest and smallest x and dy."""  # pragma: no cover - compiled
    for p in range(P):
        for c in range(C):
            i, j = p * xp + c * xc, p * dp + c * dc
            _add_run(x[i:i + S], dy[j:j + S], mean, invstd, C, c, p == 0, out, keys)


# ------------------------------------------------------------------ the reference's dx
# No fastmath: the operations of reference.backward's elementwise pass, in its order and rounding.


@numba.njit(nogil=True, cache=True)
def _dx_value(x, dy, mean, c_xmu, c_mean, scale):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """One element of reference.backward's training dx, its operations in its order."""
    return ((np.float64(dy) - (np.float64(x) - mean) * c_xmu) - c_mean) * scale


@numba.njit(nogil=True, cache=True)
def _dx_row(x, dy, mean, c_xmu, c_mean, scale, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    for s in range(x.shape[0]):
        out[s] = _dx_value(x[s], dy[s], mean, c_xmu, c_mean, scale)


_DX_SIGS = [t.void(_arr(xt), _I64, _I64, _arr(dt), _I64, _I64, _F64, _F64, _F64, _F64, _I64, _I64, _I64,
                   _arr(t.float64, False), _I64, _I64)
            for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_DX_SIGS, nogil=True, cache=True)
def reference_dx(x, xp, xc, dy, dp, dc, mean, c_xmu, c_mean, scale, P, C, S, out, op, oc):  # type: ignore[no-untyped-def]
    """reference.backward's training dx for a block, ``((dy - (x - mean) c_xmu) - c_mean) scale``
    per element with (C,) float64 coefficients, into ``out``; rows as in ``judge``."""  # pragma: no cover - compiled
    for p in range(P):
        for c in range(C):
            i, j, o = p * xp + c * xc, p * dp + c * dc, p * op + c * oc
            _dx_row(x[i:i + S], dy[j:j + S], mean[c], c_xmu[c], c_mean[c], scale[c], out[o:o + S])


# ------------------------------------------------------------------ the same, where S = 1
# (N, C) and channels-last: a row is the channels of one position. With many channels each
# channel's sums and extents are updated element-wise along the row (no reduction in a loop:
# each sum adds its rows one after another, as NumPy's along a leading axis does); those loops
# store into eleven arrays at once and LLVM leaves them scalar, which costs most where rows are
# short. Under WIDE_TILED channels a tile of rows is read column by column instead, each column
# copied into a contiguous run that the vectorized s-run loops sum (a 512K-element float32
# block of 8 / 32 / 128 / 192 channels: 11.9 / 4.7 / 2.2 / 2.1 ms row by row, 1.0 / 1.8 / 1.8 /
# 1.7 tiled; at 1,024 channels tiles are slower, 2.5 against 1.7: columns a page apart).


@numba.njit(nogil=True, cache=True)
def _wide_own(x, dy, mean, s_dy, s_dyd, s_dy2, s_ady):  # type: ignore[no-untyped-def]  # pragma: no cover
    for c in range(x.shape[0]):
        g = np.float64(dy[c])
        s_dy[c] += g
        s_dyd[c] += g * (np.float64(x[c]) - mean[c])
        s_dy2[c] += g * g
        s_ady[c] += abs(g)


@numba.njit(nogil=True, cache=True)
def _wide_scale(x, dy, mean, invstd, s_adyh, s_ax, s_dyh):  # type: ignore[no-untyped-def]  # pragma: no cover
    for c in range(x.shape[0]):
        g, v = np.float64(dy[c]), np.float64(x[c])
        h = (v - mean[c]) * invstd[c]
        s_adyh[c] += abs(g) * abs(h)
        s_ax[c] += abs(v)
        s_dyh[c] += g * h


@numba.njit(nogil=True, cache=True)
def _wide_extents(x, dy, hx, lx, hd, ld):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    for c in range(x.shape[0]):
        k, m = np.int64(_key(x[c])), np.int64(_key(dy[c]))
        hx[c], lx[c], hd[c], ld[c] = max(hx[c], k), min(lx[c], k), max(hd[c], m), min(ld[c], m)


_WIDE_SUMS_SIGS = [t.void(_arr(xt), _I64, _arr(dt), _I64, _F64, _F64, _I64, _I64, _arr(t.float64, False), _OUT)
                   for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_WIDE_SUMS_SIGS, nogil=True, cache=True)
def reference_sums_wide(x, xp, dy, dp, mean, invstd, P, C, out, keys):  # type: ignore[no-untyped-def]
    """``reference_sums`` where S = 1: row p is x[p * xp:p * xp + C] (and dy's likewise). Under
    WIDE_TILED channels, tiles of WIDE_TILE rows, each channel's column of a tile copied into a
    contiguous run and summed as ``reference_sums`` sums an s-run; else row by row, each
    channel's sums updated along the row."""  # pragma: no cover
    if C < WIDE_TILED:
        bx, bd = np.empty(WIDE_TILE, x.dtype), np.empty(WIDE_TILE, dy.dtype)
        for p0 in range(0, P, WIDE_TILE):
            n = min(WIDE_TILE, P - p0)
            for c in range(C):
                for k in range(n):
                    bx[k] = x[(p0 + k) * xp + c]
                    bd[k] = dy[(p0 + k) * dp + c]
                _add_run(bx[:n], bd[:n], mean, invstd, C, c, p0 == 0, out, keys)
        return
    s = [out[k * C:(k + 1) * C] for k in range(7)]
    e = [keys[k * C:(k + 1) * C] for k in range(4)]
    for c in range(C):  # the extents start from the first row
        e[0][c] = e[1][c] = np.int64(_key(x[c]))
        e[2][c] = e[3][c] = np.int64(_key(dy[c]))
    for p in range(P):
        xr, dr = x[p * xp:p * xp + C], dy[p * dp:p * dp + C]
        _wide_own(xr, dr, mean, s[0], s[1], s[2], s[3])
        _wide_scale(xr, dr, mean, invstd, s[4], s[5], s[6])
        _wide_extents(xr, dr, e[0], e[1], e[2], e[3])


@numba.njit(nogil=True, cache=True)
def _wide_dx(x, dy, mean, c_xmu, c_mean, scale, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    for c in range(x.shape[0]):
        out[c] = _dx_value(x[c], dy[c], mean[c], c_xmu[c], c_mean[c], scale[c])


_WIDE_DX_SIGS = [t.void(_arr(xt), _I64, _arr(dt), _I64, _F64, _F64, _F64, _F64, _I64, _I64, _arr(t.float64, False),
                        _I64) for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_WIDE_DX_SIGS, nogil=True, cache=True)
def reference_dx_wide(x, xp, dy, dp, mean, c_xmu, c_mean, scale, P, C, out, op):  # type: ignore[no-untyped-def]
    """``reference_dx`` where S = 1, rows along the channels, ``_run_rows`` at a time against the
    coefficients repeated as often: one loop per run of rows, not per short row."""  # pragma: no cover
    k = _run_rows(C, xp == C and dp == C and op == C)
    m, a, b, f = _repeated(mean, k), _repeated(c_xmu, k), _repeated(c_mean, k), _repeated(scale, k)
    for p0 in range(0, P, k):
        n = min(k, P - p0) * C
        _wide_dx(x[p0 * xp:p0 * xp + n], dy[p0 * dp:p0 * dp + n], m[:n], a[:n], b[:n], f[:n], out[p0 * op:p0 * op + n])


# ------------------------------------------------------------------ the finite differences' loss
# fd.Problem.loss: y = (x - mean) * scale + shift by the forward's own operations (no fastmath:
# NumPy's bits), written to a row buffer; then per channel sum dy y, sum |dy y| and sum dy from
# it, added in another order (reassoc, as the reference's sums; the loss's error estimate
# covers a sum in any order of the kind).


@numba.njit(nogil=True, cache=True)
def _y_row(x, mean, scale, shift, out):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    for s in range(out.shape[0]):
        out[s] = (np.float64(x[s]) - mean) * scale + shift


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _loss_row(y, dy):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """sum dy y, sum |dy y|, sum dy of a row."""
    t = a = g = 0.0
    for s in range(y.shape[0]):
        d = np.float64(dy[s])
        v = d * y[s]
        t += v
        a += abs(v)
        g += d
    return t, a, g


_LOSS_SIGS = [t.void(_arr(xt), _I64, _I64, _arr(dt), _I64, _I64, _F64, _F64, _F64, _I64, _I64, _I64, _I64, _I64,
                     _F64, _arr(t.float64, False)) for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_LOSS_SIGS, nogil=True, cache=True)
def loss_sums(x, xp, xc, dy, dp, dc, mean, scale, shift, P, C, S, pp, ps, pv, out):  # type: ignore[no-untyped-def]
    """fd.Problem.loss's sums for a block, rows as in ``judge``: into ``out`` ((3, C) flat,
    zeroed) sum dy y, sum |dy y| and sum dy per channel, y the forward of x with the elements
    at (pp, :, ps) of the block moved to ``pv`` ((C,) float64; pp = -1: none moved)."""  # pragma: no cover
    y = np.empty(S)
    for p in range(P):
        for c in range(C):
            i, j = p * xp + c * xc, p * dp + c * dc
            _y_row(x[i:i + S], mean[c], scale[c], shift[c], y)
            if p == pp:
                y[ps] = (pv[c] - mean[c]) * scale[c] + shift[c]
            a = _loss_row(y, dy[j:j + S])
            out[c] += a[0]
            out[C + c] += a[1]
            out[2 * C + c] += a[2]

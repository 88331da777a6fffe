"""The compiled half of fused.py: imported there only, and only when Numba is installed.

A row of a block is the s-run of one p and one channel, contiguous. Each row is read by a
few loops, each simple enough for LLVM to run it four elements at a time (AVX2; one loop
doing everything is left scalar by its cost model): ``_exponents`` (are the operands
finite), ``_judged`` (the count of bad elements, the largest ratio, error and allowance),
``_magnitudes`` (the largest relative error and |reference|), ``_ulps``, ``_scale_max`` and
``_sumsq``. The row stays in cache between them.

Two things make them vectorize. LLVM (as Numba drives it) does not vectorize the maximum of
floats under any fastmath flags, but does the maximum of integers, and every number whose
maximum is taken here is >= 0, where IEEE doubles order as their bit patterns: so maxima are
taken over bits (``_bits``) and turned back at the end, exactly. And every operand is read
the same way whatever it is: a scale or extra allowance given per channel reads a row of
zeros and adds its channel's value (``x * 1.0 + 0.0`` and ``0.0 * 0.0 + v`` are exact), so the
loops have no branch on what was given.

Exactness: no ``contract`` (no fused multiply-add) and no ``reassoc`` but in ``_sumsq`` (as
NumPy's own pairwise sum reorders it), so every element's numbers are NumPy's, rounding for
rounding. ``nnan`` lets LLVM assume no NaN; a block whose error is not finite somewhere is
detected from the bits (integer operations) and handed back to the NumPy path, so no number
computed under that assumption is used. Ulps divide by the output dtype's spacing, a power
of two, by multiplying by its inverse from a table (the same rounding: both are exact
scalings); where that inverse is not a double (float64 outputs of references below 2^-970)
the block goes back to NumPy too.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import types as t
from numba.extending import intrinsic

__all__ = ["judge", "natural_scale"]

_EXP = 0x7FF0000000000000
_ABS = 0x7FFFFFFFFFFFFFFF
_TINY = 1e-300  # compare._TINY
_FM = {"nnan", "nsz"}


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


@numba.njit(nogil=True, cache=True)
def _exponents(cand_bits, cand_exp, ref, scale, extra):  # type: ignore[no-untyped-def]  # pragma: no cover
    """Whether every operand of the row is finite, from their bits alone (integer operations, run
    before any arithmetic: no NaN ever reaches the loops below, which assume there is none)."""
    top_c = top = 0
    for s in range(ref.shape[0]):
        top_c = max(top_c, cand_bits[s] & cand_exp)
        top = max(top, _bits(ref[s]) & _EXP, _bits(scale[s]) & _EXP, _bits(extra[s]) & _EXP)
    return top_c != cand_exp and top != _EXP


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _judged(cand, ref, scale, extra, s_full, s_per, e_full, e_per, rtol, atol_n, atol_a, floor,  # type: ignore[no-untyped-def]
            tiny_floor):  # pragma: no cover - compiled
    """The count of bad elements; the largest ratio, error and allowance (bits)."""
    bad = 0
    top_q = top_e = top_a = 0
    for s in range(ref.shape[0]):
        r = ref[s]
        e = abs(np.float64(cand[s]) - r)
        a = abs(r) * rtol + ((scale[s] * s_full + s_per) * atol_n + atol_a) + (extra[s] * e_full + e_per) + floor
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


def _arr(dt: Any, readonly: bool = True) -> Any:
    return t.Array(dt, 1, "C", readonly=readonly)


_F64, _I64, _F = _arr(t.float64), t.int64, t.float64
_OUT = _arr(t.int64, False)
# One signature per candidate dtype: every other operand is a float64 (or int64) 1-D array.
_SIGS = [(_arr(dt), _arr(it), _I64, _I64, _I64, _I64, _F64, _I64, _I64, _I64, _F64, _I64, _I64, _I64,
          _F64, _I64, _I64, _I64, _F, _F64, _F, _F64, _I64, _I64, _I64, _F, _F, _F, _F, t.boolean, _F64, _I64,
          _OUT, _OUT, _OUT, _OUT, _OUT)
         for dt, it in ((t.float32, t.int32), (t.float64, t.int64))]


@numba.njit(_SIGS, nogil=True, cache=True, fastmath=_FM)
def judge(cand, cand_bits, cand_exp, co, cp, cc, ref, ro, rp, rc, scale, so, sp, sc, extra, eo, ep, ec,  # type: ignore[no-untyped-def]
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
            if not _exponents(cand_bits[i:i + S], cand_exp, rr, sr, er):
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
    result[0] = n_bad
    result[1], result[2], result[3], result[4], result[5] = top_a, top_r, top_rel, top_ulp, best
    result[10] = _bits(sumsq)
    if top_e >= _EXP:  # an error that overflowed: NumPy's path takes it as not finite
        result[11] = 1
        return
    if low_r < least_index << 52:
        result[11] = 2
        return
    result[11] = 0
    # the worst element: the first of the worst row whose ratio is the block's largest
    i, j = co + bp * cp + bc * cc, ro + bp * rp + bc * rc
    k, m = so + bp * sp + bc * sc, eo + bp * ep + bc * ec
    for s in range(S):
        r = ref[j + s]
        e = abs(np.float64(cand[i + s]) - r)
        scv = scale[k + s] * s_full + s_per[bc]
        a = abs(r) * rtol + (scv * atol_n + atol_a) + (extra[m + s] * e_full + e_per[bc]) + floor
        if tiny_floor:
            a = a if a >= _TINY else _TINY
        if _bits(e / a) == best:
            result[6], result[7], result[8], result[9] = bp, bc, s, _bits(a)
            return
    result[11] = 3  # not found: cannot happen; the caller takes the NumPy path


@numba.njit(nogil=True, cache=True, fastmath=_FM)
def _scale_row(x, dy, mean, invstd, k1, k2, w, k3, out):  # type: ignore[no-untyped-def]  # pragma: no cover
    for s in range(out.shape[0]):
        out[s] = (abs((np.float64(x[s]) - mean) * invstd) * k1 + k2 + abs(np.float64(dy[s])) * w) * k3


@numba.njit(nogil=True, cache=True)
def _finite(x, dy):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    ok = True
    for s in range(x.shape[0]):
        ok &= np.isfinite(x[s]) & np.isfinite(dy[s])  # no branch: the loop vectorizes
    return ok


_SCALE_SIGS = [(_arr(xt), _I64, _I64, _arr(dt), _I64, _I64, _F64, _F64, _F64, _F64, _F, _F64, _I64, _I64, _I64,
                _arr(t.float64, False)) for xt in (t.float32, t.float64) for dt in (t.float32, t.float64)]


@numba.njit(_SCALE_SIGS, nogil=True, cache=True)
def natural_scale(x, xp, xc, dy, dp, dc, mean, invstd, k1, k2, w, k3, P, C, S, out):  # type: ignore[no-untyped-def]
    """scales.ElementScale.block in one pass: ``((|(x - mean) * invstd| * k1 + k2) + |dy| * w) * k3``
    per element, the per-channel ``k`` of the tensor's form (scales.ElementScale.coefficients), into the
    (P, C, S) C-ordered ``out``; rows as in ``judge``. False, with nothing written, where x or dy
    is not finite (no NaN may reach ``_scale_row``)."""  # pragma: no cover - compiled
    for p in range(P):
        for c in range(C):
            if not _finite(x[p * xp + c * xc:p * xp + c * xc + S], dy[p * dp + c * dc:p * dp + c * dc + S]):
                return False
    for p in range(P):
        for c in range(C):
            i, j, o = p * xp + c * xc, p * dp + c * dc, (p * C + c) * S
            _scale_row(x[i:i + S], dy[j:j + S], mean[c], invstd[c], k1[c], k2[c], w, k3[c], out[o:o + S])
    return True

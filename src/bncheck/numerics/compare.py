"""Compare a candidate tensor with its reference: one metrics set, numpy.testing style.

Works on the (P, C, S) view, block by block on every core. A large block is judged in
one compiled pass (fused.py) that makes the same numbers as the NumPy passes below, which
judge the rest (small, strided or non-finite blocks, and the pictures). Per-channel
tensors are a (1, C, 1) view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import numpy as np

from . import backend, fused, pictures
from .dtypes import dtype_name, in_ulps, ulp
from .layout import Block, Layout
from .report import ChannelError, Resolution, TensorMetrics, ToleranceUsed
from .tolerance import TINY, Tolerance

__all__ = ["SCRATCH", "Comparison", "channel_layout", "channel_ranges", "compare", "compare_all"]

WORST_CHANNELS = 5
CANCELLATION = 1e-6
SCRATCH = 6  # per-thread scratch arrays (backend.scratch) a comparison of one block writes


def channel_layout(C: int) -> Layout:
    """The layout of a per-channel (C,) tensor: a (1, C, 1) view."""
    return Layout((C,), 0, 1, C, 1)


@dataclass
class _Part:
    """What one block contributes."""

    n_bad: int
    n_nonfinite: int
    max_abs: float
    max_rel: float
    max_ulp: float
    sumsq: float
    max_ref: float
    ch_scale: np.ndarray | None  # the largest scale of each channel
    worst_ratio: float  # inf for a non-finite candidate
    worst_flat: int
    worst_cand: float
    worst_ref: float
    worst_atol: float  # the absolute/natural-scale term of the tolerance there
    worst_allowed: float  # the whole allowance there
    max_allowed: float
    ch_ratio: np.ndarray
    ch_abs: np.ndarray
    ch_bad: np.ndarray
    natural: np.ndarray | None = None  # plots: the block's histogram of errors in natural units


class _Inputs:
    def __init__(self, cand: Any, ref: Any, scale: Any, extra: Any, tol: Tolerance, out_dtype: Any,
                 lay: Layout, xp: ModuleType, plots: bool = False) -> None:
        self.c3, self.r3 = lay.view(cand), None if ref is None else lay.view(ref)
        # plots: every element's ratio, kept for the pictures (blocks write disjoint parts)
        self.ratios = np.empty(lay.view_shape, np.float32) if plots else None
        # a scale made block by block (scales.ElementScale), or an array
        self.field = scale if hasattr(scale, "block") else None
        self.s3 = None if scale is None or self.field is not None else _as_view(scale, lay)
        self.e3 = None if extra is None else _as_view(extra, lay)
        self.tol, self.out_dtype, self.lay, self.xp = tol, out_dtype, lay, xp
        self.fused = fused.usable(self.c3, lay.M, plots)  # one compiled pass per block (fused.py)

    def take(self, a3: Any, b: Block) -> Any:
        if a3 is None:
            return None
        return a3[b[0], :, b[1]] if a3.shape == self.lay.view_shape else a3

    def part(self, b: Block, shared: Any = None, ref: Any = None) -> _Part:
        """One block, written into per-thread scratch (the first SCRATCH arrays): a comparison
        is a dozen passes. ``shared``: the block's scale, made once for several comparisons
        (compare_all); ``ref``: the reference's values of the block, when it is made block by
        block (Comparison)."""
        xp, tol = self.xp, self.tol
        cand = self.take(self.c3, b)
        ref = self.take(self.r3, b) if ref is None else ref
        err, aref, allowed, ratio, own, tmp = backend.scratch(SCRATCH, ref.shape, xp)
        if shared is not None:
            scale = shared  # it lives in `own`, which nothing below writes
        elif self.field is not None:
            scale = self.field.block(b, own, tmp)
        else:
            scale = self.take(self.s3, b)
        extra = self.take(self.e3, b)
        if self.fused and fused.reference_ok(ref):
            part = self._fused(b, cand, ref, scale, extra)
            if part is not None:
                return part
        xp.subtract(cand, ref, out=err)
        xp.abs(err, out=err)
        ch_abs = backend.channel_max(err, xp)
        finite = None
        if not math.isfinite(float(ch_abs.max())):  # NaN or Inf in the candidate: the slow path
            finite = xp.isfinite(err)
            err[~finite] = 0.0
            ch_abs = backend.channel_max(err, xp)
        n_nonfinite = 0 if finite is None else int(finite.size - xp.count_nonzero(finite))
        xp.abs(ref, out=aref)
        xp.multiply(aref, tol.rtol, out=allowed)
        natural = scale is not None and tol.mode == "natural"
        if natural:
            xp.multiply(scale, tol.atol, out=ratio)
            allowed += ratio
        else:
            allowed += tol.atol
        if extra is not None:
            allowed += extra
        if tol.abs_floor:
            allowed += tol.abs_floor
        max_allowed = float(allowed.max())
        bad = err > allowed
        if finite is not None:
            bad |= ~finite
        if not tol.abs_floor >= TINY:  # with the floor, allowed is above TINY already
            xp.maximum(allowed, TINY, out=allowed)
        xp.divide(err, allowed, out=ratio)
        if finite is not None:
            ratio[~finite] = xp.inf
        natural_hist = None
        if self.ratios is not None:
            self.ratios[b[0], :, b[1]] = backend.to_numpy(ratio)
            if scale is not None:  # err is still |candidate - reference| (0 where not finite)
                natural_hist = pictures.natural_counts(backend.to_numpy(err / xp.maximum(scale, TINY)))
        # The first non-finite element is the worst; otherwise the largest ratio.
        worst = int(xp.argmin(finite)) if finite is not None and n_nonfinite else int(xp.argmax(ratio))
        local = tuple(int(i) for i in np.unravel_index(worst, ratio.shape))
        n_bad = int(xp.count_nonzero(bad))
        part = _Part(
            n_bad=n_bad,
            n_nonfinite=n_nonfinite,
            max_abs=float(ch_abs.max()),
            max_rel=0.0,
            max_ulp=0.0,
            sumsq=float(xp.multiply(err, err, out=tmp).sum()),  # tmp is free once the scale is made
            max_ref=float(aref.max()),
            ch_scale=None if scale is None else backend.to_numpy(backend.channel_max(scale, xp)),
            worst_ratio=float(ratio[local]),
            worst_flat=self.flat(b, local),
            worst_cand=float(cand[local]),
            worst_ref=float(ref[local]),
            worst_atol=tol.atol * (float(xp.broadcast_to(scale, ratio.shape)[local]) if natural else 1.0),
            worst_allowed=float(allowed[local]),
            max_allowed=max_allowed,
            ch_ratio=backend.to_numpy(backend.channel_max(ratio, xp)),
            ch_abs=backend.to_numpy(ch_abs),
            ch_bad=backend.to_numpy(backend.channel_count(bad, xp)) if n_bad else np.zeros(ch_abs.shape, np.int64),
            natural=natural_hist,
        )
        if part.max_abs > 0:
            part.max_rel, part.max_ulp = self._relative(err, aref, ref, allowed)
        return part

    def _fused(self, b: Block, cand: Any, ref: Any, scale: Any, extra: Any) -> _Part | None:
        """``part`` in one pass (fused.py); None where the kernel does not take the block."""
        tol = self.tol
        natural = scale is not None and tol.mode == "natural"
        j = fused.judge(cand, ref, scale, extra, rtol=tol.rtol, atol=tol.atol, floor=tol.abs_floor, natural=natural,
                        out_dtype=self.out_dtype)
        if j is None:
            return None
        local = j.worst
        return _Part(
            n_bad=j.n_bad, n_nonfinite=0, max_abs=float(j.ch_abs.max()), max_rel=j.max_rel, max_ulp=j.max_ulp,
            sumsq=j.sumsq, max_ref=j.max_ref, ch_scale=None if scale is None else j.ch_scale,
            worst_ratio=j.worst_ratio, worst_flat=self.flat(b, local), worst_cand=float(cand[local]),
            worst_ref=float(ref[local]),
            worst_atol=tol.atol * (float(np.broadcast_to(scale, ref.shape)[local]) if natural else 1.0),
            worst_allowed=j.worst_allowed, max_allowed=j.max_allowed, ch_ratio=j.ch_ratio, ch_abs=j.ch_abs,
            ch_bad=j.ch_bad)

    def _relative(self, err: Any, aref: Any, ref: Any, work: Any) -> tuple[float, float]:
        """Largest relative error and largest error in ulps, both over non-zero references (an ulp
        of 0 is the smallest subnormal: any error there is astronomically many of them)."""
        xp = self.xp
        zero = aref == 0
        has_zero = bool(zero.any())
        if has_zero:
            aref[zero] = xp.inf
        xp.divide(err, aref, out=work)
        max_rel = float(work.max())
        if not max_rel > 0:
            return max_rel, 0.0
        ulps = in_ulps(err, ref, self.out_dtype, xp=xp, out=work, ignore=zero if has_zero else None)
        return max_rel, float(ulps.max())

    def flat(self, b: Block, local: tuple[int, ...]) -> int:
        p, c, s = local
        return ((p + (b[0].start or 0)) * self.lay.C + c) * self.lay.S + s + (b[1].start or 0)


def compare(cand: Any, ref: Any, *, tol: Tolerance, lay: Layout, out_dtype: Any, scale: Any = None,
            extra: Any = None, compared: str | None = None, plots: bool = False) -> TensorMetrics:
    """``cand`` (any float dtype, may hold NaN/Inf) against ``ref`` (float64), both of
    ``lay``'s shape. ``scale`` (natural scales) and ``extra`` (added allowance) are full
    tensors or (C,) vectors; ``scale`` may also be a scales.ElementScale, made per block.
    ``plots`` adds what the pictures draw (pictures.py)."""
    xp = backend.namespace(cand, ref)
    inputs = _Inputs(cand, ref, scale, extra, tol, out_dtype, lay, xp, plots)
    return _metrics(inputs, backend.map_blocks(inputs.part, lay, xp), tol, lay, scale, out_dtype, compared)


class Comparison:
    """``compare`` for a reference made block by block (the finite differences): ``part``
    judges one block while the reference's values there are in cache, so that they need
    never be kept whole; ``metrics`` gathers the parts, in block order."""

    def __init__(self, cand: Any, *, tol: Tolerance, lay: Layout, out_dtype: Any, scale: Any = None,
                 extra: Any = None) -> None:
        self.inputs = _Inputs(cand, None, scale, extra, tol, out_dtype, lay, backend.namespace(cand))
        self.scale = scale

    def part(self, b: Block, ref: Any) -> _Part:
        return self.inputs.part(b, ref=ref)

    def metrics(self, parts: list[_Part]) -> TensorMetrics:
        i = self.inputs
        return _metrics(i, parts, i.tol, i.lay, self.scale, i.out_dtype, None)

    @staticmethod
    def channel_scale(parts: list[_Part]) -> np.ndarray:
        """The largest natural scale of each channel, (C,)."""
        return _channel_scale(parts)


def _channel_scale(parts: list[_Part]) -> np.ndarray:
    return np.max([cast(np.ndarray, p.ch_scale) for p in parts], axis=0)


def compare_all(cands: list[tuple[Any, Tolerance, Any]], ref: Any, *, lay: Layout, scale: Any,
                plots: bool = False) -> list[TensorMetrics]:
    """Several candidates ``(cand, tol, out_dtype)`` against one reference and one scale, in
    one pass: each block's scale (a scales.ElementScale) is made once for all of them, and
    the reference is read while it is in cache. The same metrics as ``compare`` each."""
    xp = backend.namespace(cands[0][0], ref)
    inputs = [_Inputs(c, ref, scale, None, tol, dt, lay, xp, plots) for c, tol, dt in cands]
    field = inputs[0].field

    def part(b: Block) -> list[_Part]:
        shared = None
        if field is not None:
            n = inputs[0].take(inputs[0].r3, b).shape
            _, _, _, _, own, tmp = backend.scratch(6, n, xp)
            shared = field.block(b, own, tmp)
        return [inp.part(b, shared) for inp in inputs]

    parts = backend.map_blocks(part, lay, xp)
    return [_metrics(inp, [p[i] for p in parts], tol, lay, scale, dt, None)
            for i, (inp, (_, tol, dt)) in enumerate(zip(inputs, cands, strict=True))]


def _metrics(inputs: _Inputs, parts: list[_Part], tol: Tolerance, lay: Layout, scale: Any, out_dtype: Any,
             compared: str | None) -> TensorMetrics:
    n_nonfinite = sum(p.n_nonfinite for p in parts)
    if n_nonfinite:
        worst = min((p for p in parts if p.n_nonfinite), key=lambda p: p.worst_flat)
    else:
        worst = max(parts, key=lambda p: p.worst_ratio)
    ch_ratio = np.max([p.ch_ratio for p in parts], axis=0)
    ch_abs = np.max([p.ch_abs for p in parts], axis=0)
    ch_bad = np.sum([p.ch_bad for p in parts], axis=0)
    n_bad = sum(p.n_bad for p in parts)
    n_finite = lay.M - n_nonfinite
    max_ref = max(p.max_ref for p in parts)
    cancellation = scale is not None and max_ref <= CANCELLATION * float(_channel_scale(parts).max())
    return TensorMetrics(
        passed=n_bad == 0,
        max_abs_err=max(p.max_abs for p in parts),
        # Under cancellation the values are far below their terms: relative error and ulps mean nothing.
        max_rel_err=None if cancellation else max(p.max_rel for p in parts),
        rms_err=math.sqrt(sum(p.sumsq for p in parts) / n_finite) if n_finite else 0.0,
        max_ulp=None if cancellation else max(p.max_ulp for p in parts),
        tol_ratio=worst.worst_ratio,
        worst_index=lay.unravel(worst.worst_flat),
        worst_candidate=worst.worst_cand if math.isfinite(worst.worst_cand) else cast(Any, str(worst.worst_cand)),
        worst_reference=worst.worst_ref,
        worst_allowed=worst.worst_allowed,
        mismatched=n_bad,
        total=lay.M,
        nonfinite=n_nonfinite,
        channels_failed=int(np.count_nonzero(ch_bad)),
        worst_channels=_worst_channels(ch_ratio, ch_abs, ch_bad),
        decided_by=cast(Any, _decided_by(tol, worst)),
        cancellation=cancellation,
        dtype=dtype_name(out_dtype),
        tolerance=ToleranceUsed(tol.rtol, tol.atol, cast(Any, tol.mode), 1.0, cast(Any, tol.basis), tol.envelope,
                                tol.margin, tol.members, tol.abs_floor, tol.channels),
        compared=compared,
        failed_channels=channel_ranges(np.flatnonzero(ch_bad)),
        resolution=_resolution(tol, max(p.max_allowed for p in parts), max_ref, out_dtype,
                               natural=scale is not None),
        plots=None if inputs.ratios is None else pictures.summarize(
            inputs.ratios, lay, ch_ratio, batch=lay.P * lay.S > 1, natural=_natural(parts, tol, n_nonfinite)),
    )


def _natural(parts: list[_Part], tol: Tolerance, n_nonfinite: int) -> pictures.NaturalHistogram | None:
    if parts[0].natural is None:
        return None
    total = np.sum([p.natural for p in parts if p.natural is not None], axis=0)
    zero = int(total[-1]) - n_nonfinite  # non-finite candidates were counted as exact zeros
    return pictures.NaturalHistogram(list(pictures.NATURAL_EDGES), [int(c) for c in total[:-1]], zero,
                                     tol.atol if tol.mode == "natural" else None, tol.envelope)


def channel_ranges(channels: Any) -> str:
    """Sorted channel numbers as ranges: [3, 16, 17, 18, 30] -> "3,16-18,30"."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(int(c) for c in channels):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(_run_text(run))
        run = [c]
    if run:
        out.append(_run_text(run))
    return ",".join(out)


def _run_text(run: list[int]) -> str:
    return str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}"


def _resolution(tol: Tolerance, max_allowed: float, max_ref: float, out_dtype: Any, *, natural: bool) -> Resolution:
    natural_units = tol.atol if natural and tol.mode == "natural" else None
    in_ulps = None
    if max_ref > 0 and math.isfinite(max_ref):
        in_ulps = max_allowed / float(ulp(np.float64(max_ref), out_dtype))
    return Resolution(natural_units, max_allowed, in_ulps)


def _as_view(a: Any, lay: Layout) -> Any:
    return a.reshape(1, lay.C, 1) if a.size == lay.C and lay.M != lay.C else lay.view(a)


def _worst_channels(ch_ratio: np.ndarray, ch_abs: np.ndarray, ch_bad: np.ndarray) -> list[ChannelError]:
    order = np.lexsort((-ch_abs, -ch_ratio))[:WORST_CHANNELS]
    return [ChannelError(int(c), float(ch_abs[c]), float(ch_ratio[c]), int(ch_bad[c]))
            for c in order if ch_abs[c] > 0 or ch_bad[c] > 0]


def _decided_by(tol: Tolerance, worst: _Part) -> str:
    if not math.isfinite(worst.worst_cand):
        return "nonfinite"
    if worst.worst_ratio == 0:
        return "exact"
    if worst.worst_atol > tol.rtol * abs(worst.worst_ref):
        return "absolute" if tol.mode == "absolute" else "natural_scale"
    return "relative"

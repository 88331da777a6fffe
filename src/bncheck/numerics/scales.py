"""Natural scales: the size of the terms each output is computed from.

Per channel, with A = sum(dy), G = sum(dy * xhat), r = rms(dy) and the
conditioning kappa = |mean| * invstd:

    dx[i]    |gamma| invstd (|dy[i]| + r (1 + |xhat[i]|) + kappa (|G|/R + |xhat[i]| |A|/R + 2 r/sqrt(R)))
    y[i]     |gamma| (1 + |xhat[i]| + kappa) + |beta|
    dgamma   sum(|dy| (1 + |xhat|)) + kappa (|A| + r sqrt(R))
    dbeta    sum(|dy|)
    mean     sum(|x|) / R
    invstd   invstd (1 + kappa / sqrt(R))

The first terms are a first-order error analysis of the backward formulas
(the classic ``|gamma| * invstd * rms(dy)`` for dx, widened by what
multiplies dy and xhat). The kappa terms are what x - mean costs: a kernel's
mean is off by about u * kappa standard deviations, which shifts every xhat
of the channel at once; dx feels the shift only through dgamma/R and dbeta/R,
and rounding x itself (when it is not representable in the kernel's dtype)
adds a random part of size r / sqrt(R).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import cached_property
from types import ModuleType
from typing import Any, NamedTuple

from . import backend, fused
from .layout import Block, Layout
from .reference import Stats

__all__ = ["ElementScale", "Operands", "Scales"]


class Operands(NamedTuple):
    """What an ElementScale reads. Not the Scales that makes and caches it: that would be a
    reference cycle, and a cycle keeps x and dy (a worker's decoded body) and a whole scale
    alive after the check, until the garbage collector runs; meanwhile every check after it
    found no free heap that fit and faulted fresh pages in (measured: 4M-element checks in a
    worker 108-134 ms while the heap grew, 71-78 once it held enough)."""

    x3: Any
    dy3: Any
    st: Stats
    layout: Layout
    xp: ModuleType


class ElementScale:
    """The natural scale of a full tensor (dx, y), made where it is used instead of kept: one
    block of a comparison at a time (in the block's scratch, so a comparison reads no scale
    array), a few channels for the calibration, or whole (cached) for the finite differences.

    ``fill(out, ady, *params)`` turns |xhat| in ``out`` into the scale of a block, given |dy|;
    ``params`` are (C,) vectors, given to it as (1, c, 1) for the channels at hand."""

    def __init__(self, src: Operands, fill: Callable[..., None], params: tuple[Any, ...]) -> None:
        self.src, self.fill, self.params = src, fill, params
        self._full: Any = None

    def _into(self, out: Any, tmp: Any, x: Any, dy: Any, channels: Any = None, rows: bool = False) -> Any:
        """The scale of x and dy ((p, c, s) blocks, or (n, C) rows when ``rows``) into ``out``."""
        xp, st = self.src.xp, self.src.st
        shape = (1, -1) if rows else (1, -1, 1)

        def per(v: Any) -> Any:
            return (v if channels is None else v[channels]).reshape(shape)

        xp.subtract(x, per(st.mean), out=out)
        out *= per(st.invstd)
        xp.abs(out, out=out)  # |xhat|
        xp.abs(dy, out=tmp)  # |dy|
        self.fill(out, tmp, *(per(v) for v in self.params))
        return out

    def block(self, b: Block, out: Any, tmp: Any) -> Any:
        """The scale of block ``b`` of the (P, C, S) view, written into ``out`` (``tmp``: work
        space of the same shape); a view of the whole, once that is made. One compiled pass
        where it can (fused.natural_scale), the same numbers."""
        if self._full is not None:
            return self._full[b[0], :, b[1]]
        x, dy = self.src.x3[b[0], :, b[1]], self.src.dy3[b[0], :, b[1]]
        if fused.natural_scale(x, dy, lambda: self.coefficients, self.src.layout.M, out):
            return out
        return self._into(out, tmp, x, dy)

    @cached_property
    def coefficients(self) -> tuple[Any, Any, Any, Any, float, Any]:
        """(mean, invstd, k1, k2, w, k3), (C,) float64 but ``w``: with xhat = (x - mean) * invstd
        the scale is ``((|xhat| * k1 + k2) + |dy| * w) * k3``, operation for operation what
        ``_into`` and ``fill`` compute (fused.natural_scale's form)."""
        xp, C, st = self.src.xp, self.src.layout.C, self.src.st

        def vec(v: Any) -> Any:
            return xp.ascontiguousarray(xp.broadcast_to(xp.asarray(v, dtype=xp.float64), (C,)))

        if self.fill is _dx_fill:
            per_xhat, base, coef = self.params
            return vec(st.mean), vec(st.invstd), vec(per_xhat), vec(base), 1.0, vec(coef)
        coef, shift = self.params
        return vec(st.mean), vec(st.invstd), vec(coef), vec(shift), 0.0, vec(1.0)

    def at(self, take: tuple[Any, Any, Any]) -> Any:
        """The scale at the positions an index tuple of the (P, C, S) view picks, (n, C)."""
        xp = self.src.xp
        x, dy = self.src.x3[take], self.src.dy3[take]
        out = xp.empty(x.shape, dtype=xp.float64)
        return self._into(out, xp.empty_like(out), x, dy, rows=True)

    def channel_max(self) -> Any:
        """The largest scale of each channel, (C,), block by block."""
        xp, lay = self.src.xp, self.src.layout

        if self._full is not None:
            return backend.channel_max(self._full, xp)

        def part(b: Block) -> Any:
            n = self.src.x3[b[0], :, b[1]].shape
            out, tmp = backend.scratch(2, n, xp)
            return backend.channel_max(self.block(b, out, tmp), xp)

        return functools.reduce(xp.maximum, backend.map_blocks(part, lay, xp))

    def channels(self, idx: Any) -> Any:
        """The scale of channels ``idx`` only, (P, len(idx), S)."""
        xp, lay = self.src.xp, self.src.layout
        idx = xp.asarray(idx)
        out = xp.empty((lay.P, int(idx.size), lay.S), dtype=xp.float64)
        x, dy = xp.take(self.src.x3, idx, axis=1), xp.take(self.src.dy3, idx, axis=1)
        return self._into(out, xp.empty_like(out), x, dy, idx)

    def full(self) -> Any:
        """The whole scale, made once: what several passes read (the finite differences)."""
        if self._full is None:
            backend.map_blocks(self.start_full(), self.src.layout, self.src.xp)
        return self._full

    def start_full(self) -> Callable[[Block], None]:
        """The array of the whole scale, and what fills one block of it; every block must be
        filled before the scale is read."""
        xp, lay = self.src.xp, self.src.layout
        out = xp.empty(lay.view_shape, dtype=xp.float64)

        def part(b: Block) -> None:
            o = out[b[0], :, b[1]]
            x, dy = self.src.x3[b[0], :, b[1]], self.src.dy3[b[0], :, b[1]]
            if not fused.natural_scale(x, dy, lambda: self.coefficients, lay.M, o):
                self._into(o, backend.scratch(1, o.shape, xp)[0], x, dy)

        self._full = out
        return part


def _dx_fill(out: Any, ady: Any, per_xhat: Any, base: Any, coef: Any) -> None:
    out *= per_xhat  # |xhat| (rms + kappa |A|/R) + base + |dy|, times |gamma| invstd
    out += base
    out += ady
    out *= coef


def _y_fill(out: Any, ady: Any, coef: Any, shift: Any) -> None:
    out *= coef
    out += shift


class Scales:
    """The natural scales of every tensor a check judges. ``x3`` and ``dy3`` may be in any
    float dtype (float64 arithmetic throughout)."""

    def __init__(self, x3: Any, dy3: Any, gamma: Any, beta: Any, st: Stats, layout: Layout,
                 xp: ModuleType) -> None:
        self.x3, self.dy3, self.gamma, self.beta, self.st = x3, dy3, gamma, beta, st
        self.layout, self.xp = layout, xp
        self.kappa = xp.abs(st.mean) * st.invstd
        self.keep_dx = False  # make dx's scale whole in the reference's second pass (reference.Riders)
        self.operands = Operands(x3, dy3, st, layout, xp)

    def block_sums(self, b: Block, d: Any = None, dy: Any = None) -> tuple[Any, ...]:
        """One block's share of ``_sums``. The reference's first pass hands over its x - mean (in
        scratch slot 0, free again, which becomes xhat here) and its float64 dy."""
        xp, lay = self.xp, self.layout
        x = self.x3[b[0], :, b[1]]
        if d is None and self._compiled is not None:  # the sums the reference's compiled pass makes
            return self.block_sums_from(*fused.reference_sums(x, self.dy3[b[0], :, b[1]], *self._compiled))
        invstd = lay.per_channel(self.st.invstd)
        xhat, dy64, ady, work = backend.scratch(4, x.shape, xp)  # slots 0 and 1 as the reference's
        if d is None:
            dy = backend.in_float64(self.dy3[b[0], :, b[1]], dy64, xp)
            xp.subtract(x, lay.per_channel(self.st.mean), out=xhat)
        else:
            xhat = d
        xhat *= invstd
        xp.abs(dy, out=ady)
        xp.abs(xhat, out=work)
        out = [backend.channel_sum(ady, xp), backend.channel_dot(ady, work, xp), backend.channel_dot(dy, dy, xp)]
        xp.abs(x, out=work)
        out += [backend.channel_sum(work, xp), backend.channel_sum(dy, xp), backend.channel_dot(dy, xhat, xp),
                backend.channel_max(x, xp), backend.channel_min(x, xp), backend.channel_max(dy, xp),
                backend.channel_min(dy, xp)]
        return tuple(out)

    def block_sums_from(self, sums: Any, extents: tuple[Any, ...]) -> tuple[Any, ...]:
        """``block_sums`` from the compiled first pass (fused.reference_sums, whose xhat is the
        reference's x - mean times this invstd: the same statistics)."""
        return (sums[3], sums[4], sums[2], sums[5], sums[0], sums[6], *extents)

    def take_sums(self, parts: list[tuple[Any, ...]]) -> None:
        """``_sums`` from every block's ``block_sums``, in block order (the reference's first pass)."""
        xp = self.xp
        sums = tuple(backend.sum_parts([p[i] for p in parts]) for i in range(6))
        highs = tuple(functools.reduce(xp.maximum, [p[i] for p in parts]) for i in (6, 8))
        lows = tuple(functools.reduce(xp.minimum, [p[i] for p in parts]) for i in (7, 9))
        self.__dict__["_sums"] = (*sums, highs[0], lows[0], highs[1], lows[1])

    def second_pass(self) -> Callable[[Block], None] | None:
        """What the reference's second pass makes along: dx's scale, whole, when it is wanted so
        and NumPy would make it: where the compiled pass makes a block's scale (fused.py), making
        it again for each reader costs less than a 32 MB array of it (measured: a default check
        206-228 ms against 217-269, its reference phase 37-41 ms against 43-83)."""
        if not self.keep_dx or fused.reference_sums_apply(self.x3, self.dy3, self.layout):
            return None
        return self.dx_field.start_full()

    @cached_property
    def _compiled(self) -> tuple[Any, Any] | None:
        """(mean, invstd) as (C,) float64 where fused.reference_sums takes the blocks, else None."""
        if not fused.reference_sums_apply(self.x3, self.dy3, self.layout):
            return None
        mean, invstd = fused.channel_vectors(self.st.mean, self.st.invstd)
        return mean, invstd

    @cached_property
    def _sums(self) -> tuple[Any, ...]:
        """Per channel, in one pass: sum|dy|, sum|dy|*|xhat|, sum dy^2, sum|x|, sum dy,
        sum dy*xhat; and max and min of x and of dy (for the blind spots)."""
        self.take_sums(backend.map_blocks(self.block_sums, self.layout, self.xp))
        return self.__dict__["_sums"]

    @property
    def extents(self) -> tuple[Any, ...]:
        """Per channel, as float64: the largest and smallest x, the largest and smallest dy,
        sum |dy| and sum |dy| |xhat| (what fd.Extents holds)."""
        return tuple(self.xp.asarray(self._sums[i], dtype=self.xp.float64) for i in (6, 7, 8, 9, 0, 1))

    def constant(self, name: str) -> Any:
        """(C,) booleans: where ``x`` or ``dy`` holds one value throughout the channel."""
        i = {"x": 6, "dy": 8}[name]
        return self._sums[i] == self._sums[i + 1]

    @cached_property
    def rms_dy(self) -> Any:
        return self.xp.sqrt(self._sums[2] / self.layout.R)

    @cached_property
    def dx_field(self) -> ElementScale:
        xp, R = self.xp, self.layout.R
        rms, kappa = self.rms_dy, self.kappa
        abs_a, abs_g = xp.abs(self._sums[4]) / R, xp.abs(self._sums[5]) / R
        return ElementScale(self.operands, _dx_fill, (rms + kappa * abs_a,
                                                      rms + kappa * (abs_g + 2.0 * rms / R**0.5),
                                                      xp.abs(self.gamma) * self.st.invstd))

    @cached_property
    def y_field(self) -> ElementScale:
        xp = self.xp
        return ElementScale(self.operands, _y_fill, (xp.abs(self.gamma),
                                                     xp.abs(self.gamma) * (1.0 + self.kappa) + xp.abs(self.beta)))

    @property
    def dx(self) -> Any:
        return self.dx_field.full()

    @property
    def y(self) -> Any:
        return self.y_field.full()

    @cached_property
    def dgamma(self) -> Any:
        R = self.layout.R
        return self._sums[0] + self._sums[1] + self.kappa * (self.xp.abs(self._sums[4]) + self.rms_dy * R**0.5)

    @cached_property
    def dbeta(self) -> Any:
        return self._sums[0]

    @cached_property
    def mean(self) -> Any:
        return self._sums[3] / self.layout.R

    @cached_property
    def invstd(self) -> Any:
        return self.st.invstd * (1.0 + self.kappa / self.layout.R**0.5)

    def of(self, name: str) -> Any:
        """A tensor's natural scale: an ElementScale for dx and y, a (C,) vector otherwise."""
        return getattr(self, f"{name}_field" if name in ("dx", "y") else name)

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

from functools import cached_property
from types import ModuleType
from typing import Any

from . import backend
from .layout import Block, Layout
from .reference import Stats

__all__ = ["Scales"]


class Scales:
    def __init__(self, x3: Any, dy3: Any, gamma: Any, beta: Any, st: Stats, layout: Layout,
                 xp: ModuleType) -> None:
        self.x3, self.dy3, self.gamma, self.beta, self.st = x3, dy3, gamma, beta, st
        self.layout, self.xp = layout, xp
        self.kappa = xp.abs(st.mean) * st.invstd

    @cached_property
    def _sums(self) -> tuple[Any, ...]:
        """sum|dy|, sum|dy|*|xhat|, sum dy^2, sum|x|, sum dy, sum dy*xhat per channel, in one pass."""
        xp, lay = self.xp, self.layout
        mean, invstd = lay.per_channel(self.st.mean), lay.per_channel(self.st.invstd)

        def part(b: Block) -> tuple[Any, ...]:
            x, dy = self.x3[b[0], :, b[1]], self.dy3[b[0], :, b[1]]
            xhat = (x - mean) * invstd
            ady = xp.abs(dy)
            return (backend.channel_sum(ady, xp), backend.channel_dot(ady, xp.abs(xhat), xp),
                    backend.channel_dot(dy, dy, xp), backend.channel_sum(xp.abs(x), xp),
                    backend.channel_sum(dy, xp), backend.channel_dot(dy, xhat, xp))

        parts = backend.map_blocks(part, lay, xp)
        return tuple(backend.sum_parts([p[i] for p in parts]) for i in range(6))

    @cached_property
    def rms_dy(self) -> Any:
        return self.xp.sqrt(self._sums[2] / self.layout.R)

    def _elementwise(self, fn: Any) -> Any:
        out = self.xp.empty(self.layout.view_shape, dtype=self.xp.float64)
        lay = self.layout
        mean, invstd = lay.per_channel(self.st.mean), lay.per_channel(self.st.invstd)

        def part(b: Block) -> None:
            axhat = self.xp.abs((self.x3[b[0], :, b[1]] - mean) * invstd)
            fn(out[b[0], :, b[1]], axhat, self.dy3[b[0], :, b[1]])

        backend.map_blocks(part, lay, self.xp)
        return out

    @cached_property
    def dx(self) -> Any:
        xp, lay = self.xp, self.layout
        R = lay.R
        rms = self.rms_dy
        kappa = self.kappa
        abs_a, abs_g = xp.abs(self._sums[4]) / R, xp.abs(self._sums[5]) / R
        coef = lay.per_channel(xp.abs(self.gamma) * self.st.invstd)
        base = lay.per_channel(rms + kappa * (abs_g + 2.0 * rms / R**0.5))  # (1, C, 1)
        per_xhat = lay.per_channel(rms + kappa * abs_a)

        def fill(out: Any, axhat: Any, dy: Any) -> None:
            xp.multiply(axhat, per_xhat, out=out)
            out += base
            out += xp.abs(dy)
            out *= coef

        return self._elementwise(fill)

    @cached_property
    def y(self) -> Any:
        xp, lay = self.xp, self.layout
        coef = lay.per_channel(xp.abs(self.gamma))
        shift = lay.per_channel(xp.abs(self.gamma) * (1.0 + self.kappa) + xp.abs(self.beta))

        def fill(out: Any, axhat: Any, dy: Any) -> None:
            xp.multiply(axhat, coef, out=out)
            out += shift

        return self._elementwise(fill)

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
        return getattr(self, name)

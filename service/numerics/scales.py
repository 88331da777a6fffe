"""Natural scales: the size of the terms each output is computed from.

Per channel, with kappa = |mean| * invstd (the conditioning of x - mean) and
k = 1 + kappa:

    dx[i]      |gamma| * invstd * (|dy[i]| + rms(dy) * (1 + |xhat[i]|)) * k
    y[i]       |gamma| * (1 + |xhat[i]|) * k + |beta|
    dgamma     sum(|dy| * (1 + |xhat|)) * k
    dbeta      sum(|dy|)
    mean       sum(|x|) / R
    invstd     invstd * k

The dx scale is DESIGN section 2's ``|gamma| * invstd * rms(dy)``, widened by
the factors a first-order error analysis of the backward formulas gives.
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
        self.k = 1.0 + xp.abs(st.mean) * st.invstd

    @cached_property
    def _sums(self) -> tuple[Any, Any, Any, Any]:
        """sum|dy|, sum|dy|*|xhat|, sum dy^2, sum|x| per channel, in one pass."""
        xp, lay = self.xp, self.layout
        mean, invstd = lay.per_channel(self.st.mean), lay.per_channel(self.st.invstd)

        def part(b: Block) -> tuple[Any, Any, Any, Any]:
            x, dy = self.x3[b[0], :, b[1]], self.dy3[b[0], :, b[1]]
            ady = xp.abs(dy)
            axhat = xp.abs((x - mean) * invstd)
            return (backend.channel_sum(ady, xp), backend.channel_dot(ady, axhat, xp),
                    backend.channel_dot(dy, dy, xp), backend.channel_sum(xp.abs(x), xp))

        parts = backend.map_blocks(part, lay, xp)
        a, b, c, d = (backend.sum_parts([p[i] for p in parts]) for i in range(4))
        return a, b, c, d

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
        coef = lay.per_channel(xp.abs(self.gamma) * self.st.invstd * self.k)
        rms = lay.per_channel(self.rms_dy)

        def fill(out: Any, axhat: Any, dy: Any) -> None:
            xp.add(axhat, 1.0, out=out)
            out *= rms
            out += xp.abs(dy)
            out *= coef

        return self._elementwise(fill)

    @cached_property
    def y(self) -> Any:
        xp, lay = self.xp, self.layout
        coef = lay.per_channel(xp.abs(self.gamma) * self.k)
        shift = lay.per_channel(xp.abs(self.beta))

        def fill(out: Any, axhat: Any, dy: Any) -> None:
            xp.add(axhat, 1.0, out=out)
            out *= coef
            out += shift

        return self._elementwise(fill)

    @cached_property
    def dgamma(self) -> Any:
        return (self._sums[0] + self._sums[1]) * self.k

    @cached_property
    def dbeta(self) -> Any:
        return self._sums[0]

    @cached_property
    def mean(self) -> Any:
        return self._sums[3] / self.layout.R

    @cached_property
    def invstd(self) -> Any:
        return self.st.invstd * self.k

    def of(self, name: str) -> Any:
        return getattr(self, name)

"""The float64 reference: batch statistics, forward and backward, fast and accurate.

Everything here is float64 on the (P, C, S) view, in two passes over blocks
that run on every core (``backend.map_blocks``). x and dy may arrive in any float
dtype (on the CPU the check keeps float32 data as sent): each block is copied into
float64 scratch first, so the numbers are those of float64 arrays, bit for bit.

    mean   = m1 + sum(x - m1) / R                  m1 = sum(x) / R
    var    = sum((x - m1)^2) / R - (mean - m1)^2
    dbeta  = sum(dy)
    dgamma = sum(dy * (x - mean)) * invstd
    dx     = gamma*invstd * (dy - dbeta/R - (x - mean) * invstd^2 * dgamma_raw/R)

The second pass of the mean matters: with |mean|/std = 1e6 the first pass
alone is off by about 1e-10 of the mean, which is 1e-4 of a standard
deviation; after the correction the error is a few ulps of the spread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from . import backend, fused
from .layout import Block, Layout
from .variants import Grads

__all__ = ["Patch", "Riders", "Stats", "backward", "batch_stats", "forward_y", "forward_y_into", "stats_from_invstd",
           "stats_from_var", "y_coefficients"]


@dataclass(frozen=True)
class Stats:
    """Per-channel float64 statistics, each shaped (C,)."""

    mean: Any
    var: Any
    invstd: Any


def stats_from_var(mean: Any, var: Any, eps: float, xp: ModuleType) -> Stats:
    return Stats(mean, var, 1.0 / xp.sqrt(var + eps))


def stats_from_invstd(mean: Any, invstd: Any, eps: float) -> Stats:
    return Stats(mean, 1.0 / invstd**2 - eps, invstd)


@dataclass(frozen=True)
class Patch:
    """x with its elements at (p, :, s) of the (P, C, S) view replaced by ``values`` ((C,),
    float64), as if written into a float64 copy of x: what a brute-force difference moves,
    without copying x (``batch_stats``, fd.Problem.loss)."""

    p: int
    s: int
    values: Any

    def at(self, b: Block, layout: Layout) -> tuple[int, slice, int] | None:
        """Where the patched elements fall in block ``b`` of the view, or None."""
        p0, p1, _ = b[0].indices(layout.P)
        s0, s1, _ = b[1].indices(layout.S)
        if p0 <= self.p < p1 and s0 <= self.s < s1:
            return self.p - p0, slice(None), self.s - s0
        return None


def batch_stats(x3: Any, layout: Layout, eps: float, xp: ModuleType, patch: Patch | None = None,
                kept: dict[tuple[Any, ...], Any] | None = None) -> Stats:
    """Mean and variance per channel (two passes: the mean, then the mean and the square of the
    deviations from it). ``kept``: the first pass's sums of the blocks a patch leaves alone, by
    block, reused by later calls on the same x3 (a brute-force difference moves a few elements
    of one block each time) and filled by the first: the same numbers."""
    R = layout.R

    def first(b: Block) -> Any:
        x = x3[b[0], :, b[1]]
        (into,) = backend.scratch(1, x.shape, xp)
        if patch is None or (at := patch.at(b, layout)) is None:
            if kept is None:
                return backend.channel_sum(backend.in_float64(x, into, xp), xp)
            key = (b[0].start, b[0].stop, b[1].start, b[1].stop)
            if key not in kept:
                kept[key] = backend.channel_sum(backend.in_float64(x, into, xp), xp)
            return kept[key]
        xp.copyto(into, x)
        into[at] = patch.values
        return backend.channel_sum(into, xp)

    m1 = backend.sum_parts(backend.map_blocks(first, layout, xp)) / R
    m1c = layout.per_channel(m1)

    def second(b: Block) -> tuple[Any, Any]:
        x = x3[b[0], :, b[1]]
        (d,) = backend.scratch(1, x.shape, xp)
        xp.subtract(x, m1c, out=d)
        if patch is not None and (at := patch.at(b, layout)) is not None:
            d[at] = patch.values - m1
        return backend.channel_sum(d, xp), backend.channel_dot(d, d, xp)

    parts = backend.map_blocks(second, layout, xp)
    corr = backend.sum_parts([p[0] for p in parts]) / R
    var = xp.maximum(backend.sum_parts([p[1] for p in parts]) / R - corr**2, 0.0)
    return stats_from_var(m1 + corr, var, eps, xp)


class Riders(Protocol):
    """Work that reads the same blocks as the reference's two passes, done while they are in
    cache (scales.Scales: its sums in the first pass, the scale of dx in the second)."""

    def block_sums(self, b: Block, d: Any, dy: Any) -> Any: ...

    def block_sums_from(self, sums: Any, extents: Any) -> Any: ...

    def take_sums(self, parts: list[Any]) -> None: ...

    def second_pass(self) -> Callable[[Block], None] | None: ...


def backward(x3: Any, dy3: Any, gamma: Any, st: Stats, layout: Layout, *, training: bool,
             xp: ModuleType, riders: Riders | None = None) -> Grads:
    """float64 gradients for statistics ``st`` (batch, saved or running); ``riders`` go along."""
    R = layout.R
    mean = layout.per_channel(st.mean)
    # Where it applies, one compiled pass makes this pass's sums and the riders' (fused.py).
    compiled = fused.channel_vectors(st.mean, st.invstd) if fused.reference_sums_apply(x3, dy3, layout) else None

    def sums(b: Block) -> tuple[Any, Any, Any]:
        x, dyb = x3[b[0], :, b[1]], dy3[b[0], :, b[1]]
        if compiled is not None:
            sums, extents = fused.reference_sums(x, dyb, *compiled)
            return sums[0], sums[1], None if riders is None else riders.block_sums_from(sums, extents)
        d, dy64 = backend.scratch(2, x.shape, xp)
        xp.subtract(x, mean, out=d)
        dyb = backend.in_float64(dyb, dy64, xp)
        own = backend.channel_sum(dyb, xp), backend.channel_dot(dyb, d, xp)
        # x - mean and the float64 dy go along (the rider may write over d: its sums are taken)
        return (*own, None if riders is None else riders.block_sums(b, d, dyb))

    parts = backend.map_blocks(sums, layout, xp)
    if riders is not None:
        riders.take_sums([p[2] for p in parts])
    dbeta = backend.sum_parts([p[0] for p in parts])
    raw = backend.sum_parts([p[1] for p in parts])
    scale = layout.per_channel(gamma * st.invstd)
    c_mean = layout.per_channel(dbeta / R) if training else None
    c_xmu = layout.per_channel(st.invstd**2 * raw / R) if training else None
    dx = xp.empty(layout.view_shape, dtype=xp.float64)

    rider = None if riders is None else riders.second_pass()
    # The compiled pass makes the same numbers (fused.reference_dx): the same operations, in order.
    coef = None if compiled is None or not training else (compiled[0], *fused.channel_vectors(c_xmu, c_mean, scale))

    def by_numpy(b: Block, out: Any) -> None:
        if not training:
            xp.multiply(dy3[b[0], :, b[1]], scale, out=out)
            return
        xp.subtract(x3[b[0], :, b[1]], mean, out=out)
        out *= c_xmu
        xp.subtract(dy3[b[0], :, b[1]], out, out=out)
        out -= c_mean
        out *= scale

    def elementwise(b: Block) -> None:
        out = dx[b[0], :, b[1]]
        if coef is None or not fused.reference_dx(x3[b[0], :, b[1]], dy3[b[0], :, b[1]], coef, out):
            by_numpy(b, out)
        if rider is not None:
            rider(b)

    backend.map_blocks(elementwise, layout, xp)
    return Grads(dx, raw * st.invstd, dbeta)


def y_coefficients(gamma: Any, beta: Any, st: Stats, layout: Layout) -> tuple[Any, Any, Any]:
    """(mean, gamma * invstd, beta) as (1, C, 1): what the forward needs per channel."""
    return layout.per_channel(st.mean), layout.per_channel(gamma * st.invstd), layout.per_channel(beta)


def forward_y_into(out: Any, x: Any, coef: tuple[Any, Any, Any], xp: ModuleType) -> Any:
    """out = (x - mean) * gamma * invstd + beta, for one block: the forward itself."""
    mean, scale, shift = coef
    xp.subtract(x, mean, out=out)
    out *= scale
    out += shift
    return out


def forward_y(x3: Any, gamma: Any, beta: Any, st: Stats, layout: Layout, xp: ModuleType) -> Any:
    """y = gamma * (x - mean) * invstd + beta, in float64."""
    y = xp.empty(layout.view_shape, dtype=xp.float64)
    coef = y_coefficients(gamma, beta, st, layout)
    backend.map_blocks(lambda b: forward_y_into(y[b[0], :, b[1]], x3[b[0], :, b[1]], coef, xp), layout, xp)
    return y

"""Finite differences of the forward pass: the evidence that the reference is right.

The loss is L = sum(dy * y(x, gamma, beta)), so dL/dx = dx, dL/dgamma = dgamma
and dL/dbeta = dbeta (docs/design.md, section 1). Everything is float64, and nothing
here calls a backward formula.

``stats`` -- every element at O(M) cost. Channels are independent, and the
loss of channel c depends on x only through C2 = sum((x-mean)^2),
A = sum(dy) and B = sum(dy*(x-mean)):

    L_c = gamma * B / sqrt(C2/R + eps) + beta * A

Moving one element x_i by t changes those sums exactly:

    C2(t) = C2 + 2 t d_i + t^2 (1 - 1/R)        d_i = x_i - mean
    B(t)  = B + t b_i                           b_i = dy_i - A/R

so the central difference (L(+h) - L(-h)) / 2h of every element is a handful
of vectorised passes. With s(t) = sqrt(C2(t)/R + eps), s+ = s(h), s- = s(-h):

    s-^2 - s+^2 = -4 h d_i / R                  (exactly, no cancellation)
    (L(+h) - L(-h)) / 2h = gamma / (s+ s-) * (b_i (s+ + s-)/2 - 2 d_i B / (R (s+ + s-)))

This is the same central difference, evaluated so that the parts the two
evaluations share cancel before rounding rather than after. Its truncation
error is real and is estimated by Richardson's rule against a step of 2h.

``brute`` re-runs the full forward with one element perturbed, in every
channel at once; ``directional`` moves all of x along seeded random
directions. ``gamma`` and ``beta`` enter L linearly, so their differences are
exact up to rounding and use a step of 1 + |value|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from . import backend, reference
from .layout import Block, Layout
from .reference import Stats

__all__ = ["Directional", "Numeric", "Problem", "brute_dx", "directional", "param_fd", "stats_dx", "stats_fd"]

U64 = 2.0**-53


@dataclass(frozen=True)
class Problem:
    """The inputs of the loss, in the (P, C, S) view: x and dy in any float dtype (the check
    keeps float32 data as sent), the arithmetic in float64 throughout."""

    x3: Any
    dy3: Any
    gamma: Any
    beta: Any
    eps: float
    training: bool
    running: Stats | None  # the constants of inference mode
    layout: Layout
    xp: ModuleType

    def stats(self, x3: Any) -> Stats:
        if not self.training:
            assert self.running is not None
            return self.running
        return reference.batch_stats(x3, self.layout, self.eps, self.xp)

    def loss(self, x3: Any) -> tuple[Any, Any]:
        """Per-channel L = sum(dy * y) through the real forward, and an estimate of its
        rounding error: the sum's own, plus the ulp of the mean, which moves every y of the
        channel at once and dominates when |mean| >> std."""
        xp, lay = self.xp, self.layout
        st = self.stats(x3)
        coef = reference.y_coefficients(self.gamma, self.beta, st, lay)

        def part(b: Block) -> tuple[Any, Any, Any]:
            x, dy = x3[b[0], :, b[1]], self.dy3[b[0], :, b[1]]
            y, dy64 = backend.scratch(2, x.shape, xp)
            dy = backend.in_float64(dy, dy64, xp)
            reference.forward_y_into(y, x, coef, xp)
            total = backend.channel_dot(dy, y, xp)
            y *= dy
            xp.abs(y, out=y)
            return total, backend.channel_sum(y, xp), backend.channel_sum(dy, xp)

        parts = backend.map_blocks(part, lay, xp)
        total, size, dy_sum = (backend.sum_parts([p[i] for p in parts]) for i in range(3))
        err = 4 * U64 * self.growth() * size + 2 * U64 * xp.abs(self.gamma * st.invstd * st.mean * dy_sum)
        return total, err

    def growth(self) -> float:
        return 2.0 + math.sqrt(self.layout.R)


@dataclass(frozen=True)
class Numeric:
    """Finite-difference values and their estimated error (same shape, or (C,))."""

    values: Any
    error: Any
    step: Any  # (C,) absolute steps


def steps(st: Stats, rel_step: float) -> Any:
    return rel_step / st.invstd


def stats_dx(pr: Problem, st: Stats, dbeta: Any, raw: Any, rel_step: float) -> Numeric:
    """dx for every element. ``st`` are the batch statistics (training) or the running
    ones (inference); ``dbeta = sum(dy)`` and ``raw = sum(dy * (x - mean))``."""
    return _stats(pr, st, dbeta, raw, rel_step, None)[0]


def stats_fd(pr: Problem, st: Stats, dbeta: Any, raw: Any, rel_step: float) -> tuple[Numeric, Numeric, Numeric]:
    """dx for every element (``stats_dx``), dgamma and dbeta (``param_fd``) in one pass over
    x and dy: the forwards of the second ride along the first's blocks."""
    if not pr.training:
        return (stats_dx(pr, st, dbeta, raw, rel_step), *param_fd(pr, st))
    forwards = _Forwards(pr, st)
    num, parts = _stats(pr, st, dbeta, raw, rel_step, forwards)
    return (num, *forwards.finish(parts))


def _stats(pr: Problem, st: Stats, dbeta: Any, raw: Any, rel_step: float, forwards: _Forwards | None
           ) -> tuple[Numeric, list[Any]]:
    xp, lay = pr.xp, pr.layout
    h = steps(st, rel_step)
    out = xp.empty(lay.view_shape, dtype=xp.float64)
    mean = lay.per_channel(st.mean)
    if not pr.training:
        return _inference_dx(pr, st, h, out), []
    R = lay.R
    k = 1.0 - 1.0 / R
    var_eps = st.var + pr.eps
    coef = [lay.per_channel(v) for v in (
        var_eps + h * h * k / R, 2.0 * h / R, var_eps + 4.0 * h * h * k / R, 4.0 * h / R,
        dbeta / R, 2.0 * raw / R, pr.gamma)]
    q1, e1, q2, e2, a_mean, b2, gamma = coef

    def difference(d: Any, b: Any, q: Any, e: Any, out: Any, work: list[Any], size: bool) -> Any:
        """out = the central difference for step (q, e); with ``size``, returns the size of its
        terms (what rounds)."""
        t, sp, sig, second = work
        xp.multiply(d, e, out=t)
        xp.add(q, t, out=sp)
        xp.sqrt(sp, out=sp)
        xp.subtract(q, t, out=t)
        xp.sqrt(t, out=t)  # s-
        xp.add(sp, t, out=sig)
        xp.multiply(sp, t, out=sp)
        xp.divide(gamma, sp, out=sp)  # gamma / (s+ s-)
        xp.multiply(b, sig, out=t)
        t *= 0.5  # b (s+ + s-) / 2
        xp.multiply(d, b2, out=second)
        second /= sig  # 2 d B / (R (s+ + s-))
        xp.subtract(t, second, out=out)
        out *= sp
        if not size:
            return None
        # What rounds: |gamma / (s+ s-)| * (|first| + |second|).
        xp.abs(t, out=t)
        xp.abs(second, out=second)
        t += second
        xp.abs(sp, out=sp)
        t *= sp
        return t

    def part(blk: Block) -> Any:
        x, dy = pr.x3[blk[0], :, blk[1]], pr.dy3[blk[0], :, blk[1]]
        d, b, fd2, *work = backend.scratch(7, x.shape, xp)  # 7 x 2 MB a thread: more would leave the cache
        xp.subtract(x, mean, out=d)
        xp.subtract(dy, a_mean, out=b)
        fd = out[blk[0], :, blk[1]]
        terms = difference(d, b, q1, e1, fd, work, True)
        rounding = backend.channel_max(terms, xp)
        # Richardson: the O(h^2) error of fd is (fd(2h) - fd(h)) / 3.
        difference(d, b, q2, e2, fd2, work, False)
        fd2 -= fd
        xp.abs(fd2, out=fd2)
        err = backend.channel_max(fd2, xp) / 3.0 + (16 * U64) * rounding
        # dgamma's and dbeta's forwards while x and dy are in cache (work is free again)
        return err, None if forwards is None else forwards.block(d, dy, work)

    parts = backend.map_blocks(part, lay, xp)
    return Numeric(out, _max_parts([p[0] for p in parts], xp), h), [p[1] for p in parts]


def _inference_dx(pr: Problem, st: Stats, h: Any, out: Any) -> Numeric:
    """Inference mode: y is element-wise in x, so each element's loss change is its own."""
    xp, lay = pr.xp, pr.layout
    mean = lay.per_channel(st.mean)
    scale = lay.per_channel(pr.gamma * st.invstd)
    shift = lay.per_channel(pr.beta)
    hc = lay.per_channel(h)

    def part(blk: Block) -> Any:
        x = pr.x3[blk[0], :, blk[1]]
        dy = pr.dy3[blk[0], :, blk[1]]
        x_plus, x_minus = x + hc, x - hc
        y_plus = (x_plus - mean) * scale + shift
        y_minus = (x_minus - mean) * scale + shift
        # Divide by the step actually taken: x + h rounds when |x| >> h.
        out[blk[0], :, blk[1]] = dy * (y_plus - y_minus) / (x_plus - x_minus)
        return backend.channel_max(xp.abs(dy) * (xp.abs(y_plus) + xp.abs(y_minus)), xp)

    big = _max_parts(backend.map_blocks(part, lay, xp), xp)
    return Numeric(out, 4 * U64 * big / h, h)


def _max_parts(parts: list[Any], xp: ModuleType) -> Any:
    return xp.max(xp.stack(parts), axis=0)


def param_fd(pr: Problem, st: Stats) -> tuple[Numeric, Numeric]:
    """dgamma and dbeta: L is linear in both, so the step can be large and the
    difference is exact up to rounding."""
    xp, lay = pr.xp, pr.layout
    forwards = _Forwards(pr, st)
    mean = lay.per_channel(st.mean)

    def part(blk: Block) -> list[Any]:
        x, dy = pr.x3[blk[0], :, blk[1]], pr.dy3[blk[0], :, blk[1]]
        d, *work = backend.scratch(4, x.shape, xp)  # no temporaries: four forwards in cache
        xp.subtract(x, mean, out=d)
        return forwards.block(d, dy, work)

    return forwards.finish(backend.map_blocks(part, lay, xp))


class _Forwards:
    """The four forwards of dgamma's and dbeta's differences (gamma and beta moved by
    1 + |value| each way), block by block: L = sum(dy * y) and the size of its terms."""

    def __init__(self, pr: Problem, st: Stats) -> None:
        xp, lay = pr.xp, pr.layout
        self.pr, self.xp = pr, xp
        hg, hb = 1.0 + xp.abs(pr.gamma), 1.0 + xp.abs(pr.beta)
        g_plus, g_minus, b_plus, b_minus = pr.gamma + hg, pr.gamma - hg, pr.beta + hb, pr.beta - hb
        gamma, beta = lay.per_channel(pr.gamma), lay.per_channel(pr.beta)
        self.moves = [(lay.per_channel(g), beta) for g in (g_plus, g_minus)] + [
            (gamma, lay.per_channel(b)) for b in (b_plus, b_minus)]
        self.invstd = lay.per_channel(st.invstd)
        # The steps actually taken, after rounding.
        self.hg, self.hb = (g_plus - g_minus) / 2, (b_plus - b_minus) / 2

    def block(self, d: Any, dy: Any, work: list[Any]) -> list[Any]:
        """One block's sums, from d = x - mean and dy (any float dtype); ``work``: three
        scratch arrays of the block's shape."""
        xp = self.xp
        xhat, y, prod = work[:3]
        xp.multiply(d, self.invstd, out=xhat)
        sums, sizes = [], []
        for g, b in self.moves:
            xp.multiply(g, xhat, out=y)
            y += b  # y = g * xhat + b, the forward with gamma or beta moved
            xp.multiply(dy, y, out=prod)
            sums.append(backend.channel_sum(prod, xp))  # L = sum(dy * y)
            xp.abs(prod, out=prod)
            sizes.append(backend.channel_sum(prod, xp))
        return sums + sizes

    def finish(self, parts: list[list[Any]]) -> tuple[Numeric, Numeric]:
        s = [backend.sum_parts([p[i] for p in parts]) for i in range(8)]
        grow = 4 * U64 * self.pr.growth()
        hg, hb = self.hg, self.hb
        dgamma = Numeric((s[0] - s[1]) / (2 * hg), grow * (s[4] + s[5]) / (2 * hg), hg)
        dbeta = Numeric((s[2] - s[3]) / (2 * hb), grow * (s[6] + s[7]) / (2 * hb), hb)
        return dgamma, dbeta


def positions(R: int, samples: int | None, seed: int) -> np.ndarray:
    """Within-channel positions to perturb: all of them, or a seeded sample."""
    if samples is None or samples >= R:
        return np.arange(R)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(R, size=samples, replace=False))


def _no_tick(step: str) -> None:
    return None


def brute_dx(pr: Problem, st: Stats, pos: np.ndarray, rel_step: float,
             tick: Callable[[str], None] = _no_tick) -> Numeric:
    """Perturb position j of every channel at once and re-run the real forward.
    Returns values and errors shaped (len(pos), C)."""
    xp, lay = pr.xp, pr.layout
    h = steps(st, rel_step)
    work = pr.x3.astype(xp.float64)  # a copy, which takes the perturbed values exactly
    values, errors = [], []
    for j in pos.tolist():
        tick("a brute-force position")
        p, s = divmod(j, lay.S)
        orig = pr.x3[p, :, s]
        loss, moved = {}, {}
        for mult in (1.0, -1.0, 2.0, -2.0):
            work[p, :, s] = orig + mult * h
            moved[mult] = work[p, :, s] - orig  # the step actually taken: x + h rounds
            loss[mult] = pr.loss(work)
        work[p, :, s] = orig
        fd = (loss[1.0][0] - loss[-1.0][0]) / (moved[1.0] - moved[-1.0])
        fd2 = (loss[2.0][0] - loss[-2.0][0]) / (moved[2.0] - moved[-2.0])
        rounding = (loss[1.0][1] + loss[-1.0][1]) / (2 * h)
        values.append(fd)
        errors.append(xp.abs(fd2 - fd) / 3.0 + rounding)
    return Numeric(xp.stack(values), xp.stack(errors), h)


@dataclass(frozen=True)
class Directional:
    numeric: Numeric  # (k, C) directional derivatives from the forward
    analytic: Any  # (k, C) <dx_ref, w> per channel, w the direction actually taken
    scale: Any  # (k, C) sum(natural scale * |v|) per channel


def directional(pr: Problem, st: Stats, dx_ref: Any, dx_scale: Any, k: int, seed: int,
                rel_step: float, tick: Callable[[str], None] = _no_tick) -> Directional:
    """k seeded directions v; per channel (L(x+hv) - L(x-hv)) / 2h against <dx, v>."""
    xp, lay = pr.xp, pr.layout
    h = steps(st, rel_step)
    hc = lay.per_channel(h)
    rng = np.random.default_rng(seed)
    values, errors, analytic, scale = [], [], [], []
    for _ in range(k):
        tick("a direction")
        v = xp.asarray(rng.standard_normal(lay.view_shape))
        points = {mult: pr.x3 + (mult * hc) * v for mult in (1.0, -1.0, 2.0, -2.0)}
        loss = {mult: pr.loss(pt) for mult, pt in points.items()}
        # x + h*v rounds where |x| >> h: compare with <dx, w>, w the direction actually taken.
        w1 = (points[1.0] - points[-1.0]) / (2 * hc)
        w2 = (points[2.0] - points[-2.0]) / (4 * hc)
        an1, an2 = backend.channel_dot(dx_ref, w1, xp), backend.channel_dot(dx_ref, w2, xp)
        fd = (loss[1.0][0] - loss[-1.0][0]) / (2 * h)
        fd2 = (loss[2.0][0] - loss[-2.0][0]) / (4 * h)
        rounding = (loss[1.0][1] + loss[-1.0][1]) / (2 * h)
        values.append(fd)
        errors.append(xp.abs((fd2 - an2) - (fd - an1)) / 3.0 + rounding)
        analytic.append(an1)
        scale.append(backend.channel_dot(dx_scale, xp.abs(v), xp))
    return Directional(Numeric(xp.stack(values), xp.stack(errors), h), xp.stack(analytic), xp.stack(scale))

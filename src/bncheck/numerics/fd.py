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
evaluations share cancel before rounding rather than after. Its error is
bounded per channel before any element is differenced: Taylor's remainder for
the truncation and the size of the rounded terms, both from the channel's
largest |d_i| and |b_i| (``_Bounds``). Knowing it first, a comparison
judges each block of differences while it is in cache (``StatsDifference``).

``brute`` re-runs the full forward with one element perturbed, in every
channel at once; ``directional`` moves all of x along seeded random
directions. ``gamma`` and ``beta`` enter L linearly, so their differences are
exact up to rounding: one-sided, with a step of 1 + |value|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from . import backend, fused, reference
from .layout import Block, Layout
from .reference import Stats
from .scales import Scales

__all__ = ["Directional", "Extents", "Numeric", "Problem", "StatsDifference", "brute_dx", "directional", "extents",
           "param_fd", "stats_dx"]

U64 = 2.0**-53
T = TypeVar("T")


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
    # the first pass's block sums of x3 itself, kept for the brute-force differences' patched x
    kept: dict[tuple[Any, ...], Any] = field(default_factory=dict, compare=False, repr=False)

    def stats(self, x3: Any, patch: reference.Patch | None = None) -> Stats:
        if not self.training:
            assert self.running is not None
            return self.running
        return reference.batch_stats(x3, self.layout, self.eps, self.xp, patch,
                                     self.kept if x3 is self.x3 else None)

    def loss(self, x3: Any, patch: reference.Patch | None = None) -> tuple[Any, Any]:
        """Per-channel L = sum(dy * y) through the real forward, and an estimate of its
        rounding error: the sum's own, plus the ulp of the mean, which moves every y of the
        channel at once and dominates when |mean| >> std. ``patch``: of x3 with those elements
        moved, the same numbers as of a float64 copy of x3 with them written in."""
        xp, lay = self.xp, self.layout
        st = self.stats(x3, patch)
        coef = reference.y_coefficients(self.gamma, self.beta, st, lay)
        # One compiled pass per block where it applies (fused.loss_sums: y by the same
        # operations, its sums in another order); else NumPy's passes.
        compiled = fused.channel_vectors(*coef) if lay.M >= fused.MIN_ELEMENTS and backend.is_numpy(xp) else None

        def part(b: Block) -> tuple[Any, Any, Any]:
            x, dy = x3[b[0], :, b[1]], self.dy3[b[0], :, b[1]]
            at = None if patch is None else patch.at(b, lay)
            if compiled is not None:
                moved = None if at is None else (at[0], at[2], patch.values)  # type: ignore[union-attr]
                sums = fused.loss_sums(x, dy, compiled, moved)
                if sums is not None:
                    return sums
            y, dy64 = backend.scratch(2, x.shape, xp)
            dy = backend.in_float64(dy, dy64, xp)
            reference.forward_y_into(y, x, coef, xp)
            if at is not None:  # the moved elements' forward, the same operations
                mean, scale, shift = (c.reshape(-1) for c in coef)
                y[at] = (patch.values - mean) * scale + shift  # type: ignore[union-attr]
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
    """Finite-difference values and their error: a bound (stats, brute, gamma and beta), or
    Richardson's estimate (directional); the same shape, or (C,)."""

    values: Any
    error: Any
    step: Any  # (C,) absolute steps


def steps(st: Stats, rel_step: float) -> Any:
    return rel_step / st.invstd


@dataclass(frozen=True)
class Extents:
    """Per channel, float64: what bounds the errors of the differences before any is taken.
    The largest and smallest x and dy, sum |dy| and sum |dy| |xhat| (xhat for the statistics
    at hand). A check has them from the reference's first pass (scales.Scales)."""

    x_max: Any
    x_min: Any
    dy_max: Any
    dy_min: Any
    abs_dy: Any
    abs_dy_xhat: Any


def extents(scales: Scales) -> Extents:
    """``Extents`` from the sums ``scales`` take in one pass (the reference's first, in a check)."""
    return Extents(*scales.extents)


def _reach(high: Any, low: Any, center: Any, xp: ModuleType) -> Any:
    """The largest |v - center| for values v of a channel in [low, high]."""
    return xp.maximum(high - center, center - low)


def _extents_or_own(ext: Extents | None, pr: Problem, st: Stats) -> Extents:
    """``ext``, or for a caller without them (no scales at hand) a pass of their own."""
    return ext if ext is not None else extents(Scales(pr.x3, pr.dy3, pr.gamma, pr.beta, st, pr.layout, pr.xp))


def stats_dx(pr: Problem, st: Stats, dbeta: Any, raw: Any, rel_step: float) -> Numeric:
    """dx for every element, kept. ``st`` are the batch statistics (training) or the running
    ones (inference); ``dbeta = sum(dy)`` and ``raw = sum(dy * (x - mean))``."""
    return StatsDifference(pr, st, dbeta, raw, rel_step).values()


class StatsDifference:
    """The ``stats`` method: dx's central difference at every element, and a bound on its
    error per channel that is known before any element is differenced, from the channel's
    extremes of x and dy (``_Bounds``). So a comparison can judge each block of
    differences while it is in cache (``judged``), and the values (32 MB at 4M elements,
    fresh memory that the kernel must fault in) need never be kept; dgamma's and dbeta's
    forwards ride along the same pass."""

    def __init__(self, pr: Problem, st: Stats, dbeta: Any, raw: Any, rel_step: float,
                 ext: Extents | None = None) -> None:
        xp, lay = pr.xp, pr.layout
        self.pr, self.st = pr, st
        self.ext = _extents_or_own(ext, pr, st)
        self.h = steps(st, rel_step)
        R, h = lay.R, self.h
        if pr.training:
            self.error = _Bounds.of(pr, st, h, dbeta, raw, self.ext).stats_error(h)
            # C2(+-h)/R + eps = q1 (1 +- e1 d): with s+- = sqrt(1 +- e1 d), sig = s+ + s-, b = dy - A/R and
            # c4 = 4 B / (R q1), the difference (module docstring) is
            #     gamma / (2 sqrt(q1)) * (b sig^2 - c4 d) / (s+ s- sig)
            # (in units of q1, two of its per-channel products, slower than scalar ones, are gone).
            q1 = st.var + pr.eps + h * h * (1.0 - 1.0 / R) / R
            self._coef = [lay.per_channel(v) for v in (
                2.0 * h / (R * q1), dbeta / R, 4.0 * raw / (R * q1), 0.5 * pr.gamma / xp.sqrt(q1))]
        else:
            # y(x +- h) = (x +- h - mean) * scale + shift, each at most |scale| (far_d + h) + |shift|
            ext = self.ext
            far_d = _reach(ext.x_max, ext.x_min, st.mean, xp)  # max |x - mean|
            scale = pr.gamma * st.invstd
            y_max = xp.abs(scale) * (far_d + h) + xp.abs(pr.beta)
            self.error = 4 * U64 * _reach(ext.dy_max, ext.dy_min, 0.0, xp) * 2.0 * y_max / h
            self._coef = [lay.per_channel(v) for v in (h, scale, pr.beta)]

    def values(self) -> Numeric:
        """Every value, kept: (P, C, S) float64."""
        out = self.pr.xp.empty(self.pr.layout.view_shape, dtype=self.pr.xp.float64)
        self._pass(out, None, 0)
        return Numeric(out, self.error, self.h)

    def judged(self, judge: Callable[[Block, Any], T], clear: int) -> tuple[list[T], Numeric, Numeric]:
        """``judge(block, values)`` on every block, while the values are in cache; its results
        in block order, and the differences of dgamma and dbeta. ``judge`` may use the first
        ``clear`` per-thread scratch arrays (backend.scratch); the values lie past them."""
        forwards = _Forwards(self.pr, self.st, self.ext)

        def after(blk: Block, d: Any, dy: Any, values: Any, work: list[Any]) -> tuple[T, list[Any]]:
            sums = forwards.block(d, dy, work)  # before the judge, which may write over d and dy
            return judge(blk, values), sums

        parts = self._pass(None, after, clear)
        return [p[0] for p in parts], *forwards.finish([p[1] for p in parts])

    def _pass(self, out: Any, after: Callable[..., Any] | None, clear: int) -> list[Any]:
        pr, xp, lay = self.pr, self.pr.xp, self.pr.layout
        mean = lay.per_channel(self.st.mean)
        difference = self._training if pr.training else self._inference

        def part(blk: Block) -> Any:
            x, dy = pr.x3[blk[0], :, blk[1]], pr.dy3[blk[0], :, blk[1]]
            d, dy64, *work = backend.scratch(6, x.shape, xp)  # 7 x 2 MB a thread: more would leave the cache
            if out is None:  # past the difference's own and the judge's
                (values,) = backend.scratch(1, x.shape, xp, skip=max(6, clear))
            else:
                values = out[blk[0], :, blk[1]]
            xp.subtract(x, mean, out=d)
            dy = backend.in_float64(dy, dy64, xp)
            difference(x, d, dy, values, work)
            return None if after is None else after(blk, d, dy, values, work)

        return backend.map_blocks(part, lay, xp)

    def _training(self, x: Any, d: Any, dy: Any, out: Any, work: list[Any]) -> None:
        xp = self.pr.xp
        e1, a_mean, c4, gain = self._coef
        b, t, sp, sig = work
        xp.subtract(dy, a_mean, out=b)
        xp.multiply(d, e1, out=t)
        xp.add(t, 1.0, out=sp)
        xp.sqrt(sp, out=sp)  # s+
        xp.subtract(1.0, t, out=t)
        xp.sqrt(t, out=t)  # s-
        xp.add(sp, t, out=sig)
        sp *= t
        sp *= sig  # s+ s- sig
        xp.multiply(b, sig, out=t)
        t *= sig  # b sig^2
        xp.multiply(d, c4, out=sig)
        t -= sig
        xp.divide(t, sp, out=out)
        out *= gain

    def _inference(self, x: Any, d: Any, dy: Any, out: Any, work: list[Any]) -> None:
        """y is element-wise in x, so each element's loss change is its own."""
        xp = self.pr.xp
        h, scale, shift = self._coef
        mean = self.pr.layout.per_channel(self.st.mean)
        plus, minus, y_plus, y_minus = work
        xp.add(x, h, out=plus)
        xp.subtract(x, h, out=minus)
        for moved, y in ((plus, y_plus), (minus, y_minus)):
            xp.subtract(moved, mean, out=y)
            y *= scale
            y += shift
        y_plus -= y_minus
        plus -= minus  # divide by the step actually taken: x + h rounds when |x| >> h
        xp.multiply(dy, y_plus, out=out)
        out /= plus


@dataclass(frozen=True)
class _Bounds:
    """Per channel, bounds on the derivatives of a channel's loss in one element, over a step
    of at most h: L(t) = gamma * phi(t) + beta * A with phi(t) = (B + t b) u(t)^(-1/2),
    u(t) = q + (2 d t + k t^2) / R (the module docstring), and

        phi''  = (B + t b) w'' + 2 b w'        w = u^(-1/2), u' = 2 (d + k t) / R, u'' = 2 k / R
        phi''' = (B + t b) w''' + 3 b w''      w' = -1/2 u^(-3/2) u'
        w''    = 3/4 u^(-5/2) u'^2 - 1/2 u^(-3/2) u''
        w'''   = -15/8 u^(-7/2) u'^3 + 9/4 u^(-5/2) u' u''

    each term bounded with the channel's largest |d| and |b| and the smallest u."""

    second: Any  # max |gamma phi''|
    third: Any  # max |gamma phi'''|
    terms: Any  # the largest terms of the stats difference, (gamma/2) (|b| sig^2 + |c4 d|) / (s+ s- sig)

    @classmethod
    def of(cls, pr: Problem, st: Stats, h: Any, dbeta: Any, raw: Any, ext: Extents) -> _Bounds:
        xp, R = pr.xp, pr.layout.R
        k = 1.0 - 1.0 / R
        q = st.var + pr.eps
        a_mean = dbeta / R
        far_d = _reach(ext.x_max, ext.x_min, st.mean, xp)  # max |x - mean|
        far_b = _reach(ext.dy_max, ext.dy_min, a_mean, xp)  # max |dy - A/R|
        u_min = q - 2.0 * far_d * h / R
        u_max = q + (2.0 * far_d * h + k * h * h) / R
        u1, u2 = 2.0 * (far_d + k * h) / R, 2.0 * k / R
        w1 = 0.5 * u_min**-1.5 * u1
        w2 = 0.75 * u_min**-2.5 * u1**2 + 0.5 * u_min**-1.5 * u2
        w3 = 1.875 * u_min**-3.5 * u1**3 + 2.25 * u_min**-2.5 * u1 * u2
        gamma, big_b = xp.abs(pr.gamma), xp.abs(raw) + h * far_b
        # sig^2 <= 4 u_max, s+ s- >= u_min, sig >= 2 sqrt(u_min)
        terms = 0.5 * gamma * (4.0 * far_b * u_max + 4.0 * far_d * xp.abs(raw) / R) / (2.0 * u_min**1.5)
        return cls(gamma * (big_b * w2 + 2.0 * far_b * w1), gamma * (big_b * w3 + 3.0 * far_b * w2), terms)

    def stats_error(self, h: Any) -> Any:
        """The stats difference's error: Taylor's remainder of a central difference,
        h^2 / 6 max |L'''|, and the rounding of its terms. Measured against the analytic dx
        on the stress cases, the actual error is 0.6 to 1 times it (tests/numerics/test_fd.py)."""
        return h * h / 6.0 * self.third + (16 * U64) * self.terms

    def truncation(self, plus: Any, minus: Any, xp: ModuleType) -> Any:
        """The truncation of (L(x + plus) - L(x + minus)) / (plus - minus), minus < 0 < plus, the
        steps as taken (x + h and x - h round apart where |x| >> h): the central difference's
        reach^2 / 6 max |L'''|, and for an uneven step the first-order |plus + minus| / 2 max |L''|."""
        reach = xp.maximum(plus, -minus)
        return reach * reach / 6.0 * self.third + xp.abs(plus + minus) / 2.0 * self.second


def param_fd(pr: Problem, st: Stats, ext: Extents | None = None) -> tuple[Numeric, Numeric]:
    """dgamma and dbeta: L is linear in both, so the step can be large and the
    difference is exact up to rounding."""
    xp, lay = pr.xp, pr.layout
    forwards = _Forwards(pr, st, _extents_or_own(ext, pr, st))
    mean = lay.per_channel(st.mean)

    def part(blk: Block) -> list[Any]:
        x, dy = pr.x3[blk[0], :, blk[1]], pr.dy3[blk[0], :, blk[1]]
        d, dy64, *work = backend.scratch(5, x.shape, xp)  # no temporaries: the forwards in cache
        xp.subtract(x, mean, out=d)
        return forwards.block(d, backend.in_float64(dy, dy64, xp), work)

    return forwards.finish(backend.map_blocks(part, lay, xp))


class _Forwards:
    """dgamma's and dbeta's differences, block by block. L = sum(dy * y) is linear in gamma
    and in beta, so a one-sided difference is exact up to rounding, and three forwards do:
    the plain one, gamma moved by 1 + |gamma|, beta moved by 1 + |beta|."""

    def __init__(self, pr: Problem, st: Stats, ext: Extents) -> None:
        xp, lay = pr.xp, pr.layout
        self.pr, self.xp, self.ext = pr, xp, ext
        g_moved, b_moved = pr.gamma + (1.0 + xp.abs(pr.gamma)), pr.beta + (1.0 + xp.abs(pr.beta))
        self.hg, self.hb = g_moved - pr.gamma, b_moved - pr.beta  # the steps actually taken
        self.invstd, self.gamma, self.beta, self.g_moved, self.b_step = (
            lay.per_channel(v) for v in (st.invstd, pr.gamma, pr.beta, g_moved, self.hb))

    def block(self, d: Any, dy: Any, work: list[Any]) -> list[Any]:
        """One block's L for each forward, from d = x - mean and dy (float64); ``work``: three
        scratch arrays of the block's shape."""
        xp = self.xp
        xhat, y, moved = work[:3]
        xp.multiply(d, self.invstd, out=xhat)
        xp.multiply(self.gamma, xhat, out=y)
        y += self.beta  # the forward
        sums = [backend.channel_dot(dy, y, xp)]  # L = sum(dy * y)
        xp.add(y, self.b_step, out=moved)  # with beta moved
        sums.append(backend.channel_dot(dy, moved, xp))
        xp.multiply(self.g_moved, xhat, out=moved)
        moved += self.beta  # with gamma moved
        sums.append(backend.channel_dot(dy, moved, xp))
        return sums

    def finish(self, parts: list[list[Any]]) -> tuple[Numeric, Numeric]:
        xp, pr, ext = self.xp, self.pr, self.ext
        plain, b_moved, g_moved = (backend.sum_parts([p[i] for p in parts]) for i in range(3))

        def size(g: Any, b: Any) -> Any:  # of L's terms: sum |dy * y| <= |g| sum |dy xhat| + |b| sum |dy|
            return xp.abs(g) * ext.abs_dy_xhat + b * ext.abs_dy

        grow = 4 * U64 * pr.growth()
        beta = xp.abs(pr.beta)
        base = size(pr.gamma, beta)
        dgamma = Numeric((g_moved - plain) / self.hg, grow * (size(pr.gamma + self.hg, beta) + base) / self.hg,
                         self.hg)
        dbeta = Numeric((b_moved - plain) / self.hb, grow * (size(pr.gamma, beta + self.hb) + base) / self.hb,
                        self.hb)
        return dgamma, dbeta


def positions(R: int, samples: int | None, seed: int) -> np.ndarray:
    """Within-channel positions to perturb: all of them, or a seeded sample."""
    if samples is None or samples >= R:
        return np.arange(R)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(R, size=samples, replace=False))


def _no_tick(step: str) -> None:
    return None


def brute_dx(pr: Problem, st: Stats, dbeta: Any, raw: Any, pos: np.ndarray, rel_step: float,
             tick: Callable[[str], None] = _no_tick, ext: Extents | None = None) -> Numeric:
    """Perturb position j of every channel at once by h each way and re-run the real forward.
    Returns values and errors shaped (len(pos), C). The error: the two losses' rounding, and
    the truncation of this central difference of the same L that ``stats`` differences
    (``_Bounds``, over up to 2h: a step as taken rounds away from h where |x| >> h); none in
    inference mode, where L is linear in x. ``dbeta`` and ``raw`` as for ``stats_dx``."""
    xp, lay = pr.xp, pr.layout
    h = steps(st, rel_step)
    bounds = None
    if pr.training:
        bounds = _Bounds.of(pr, st, 2.0 * h, dbeta, raw, _extents_or_own(ext, pr, st))
    values, errors = [], []
    for j in pos.tolist():
        tick("a brute-force position")
        p, s = divmod(j, lay.S)
        orig = pr.x3[p, :, s]
        loss, moved = {}, {}
        for mult in (1.0, -1.0):
            at = orig + mult * h  # float64, taken exactly by the patch (x itself is not copied)
            moved[mult] = at - orig  # the step actually taken: x + h rounds
            loss[mult] = pr.loss(pr.x3, reference.Patch(p, s, at))
        plus, minus = moved[1.0], moved[-1.0]
        values.append((loss[1.0][0] - loss[-1.0][0]) / (plus - minus))
        rounding = (loss[1.0][1] + loss[-1.0][1]) / (plus - minus)
        errors.append(rounding if bounds is None else rounding + bounds.truncation(plus, minus, xp))
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

"""The calibrated verdict: a candidate is judged against the error that correct kernels in
its precision make on these very inputs.

An ensemble of correct formulas runs in the candidate's storage and accumulation dtypes,
each with a reduction order real kernels use (``orders.py``) and one of the
algebraically equal ways real kernels write dx. Each member's outputs, as computed in
the accumulation dtype, are compared with the float64 reference in natural units
(``scales.py``); the envelope of a tensor is the largest such error over every member
and every element, pooled across channels. A candidate element then passes when

    |candidate - reference| <= MARGIN * envelope * scale + ROUNDING * u(out) * |reference|

The last term is the rounding of the result to the candidate's own dtype, taken once,
not times the margin: a correctly rounded 16-bit output of an exact computation is off
by up to half an ulp, which is between 0.5 and 1 times u(out) * |reference| (the most
just above a power of two). ROUNDING = 1.5 leaves room for a result rounded twice
(float32, then bfloat16) and stays below the two ulps of a plainly visible bug. In the
subnormal range the spacing is absolute, so ROUNDING half-spacings are allowed there too. The
envelope is floored at FLOOR unit roundoffs of the accumulation dtype, for data where
every member happens to be exact (integers, constants).

Why pooled, not per channel: with R = 2 every order adds alike and the members agree
to the last bit, yet correct kernels written differently do not. Why these members:
see docs/design.md, "The calibrated verdict"; which algorithms count as correct was
measured against PyTorch's own kernels (bench/oracle.py).

Channels in tiers. A channel's outputs depend on that channel's data alone, for every
member and every reduction order, so the envelope over all channels is the largest of the
envelopes over any split of them, and a larger envelope only allows more. The check
therefore runs the members on a few channels first (``first_channels``): a candidate that
passes against that envelope passes against the whole one, with the same verdict for a
fraction of the cost. Only where something fails do more channels run (the failing
tensors' worst channels, then all the rest), so a failure is judged exactly as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import numpy as np

from . import backend, orders
from .backend import same
from .dtypes import ulp, unit_roundoff
from .layout import Block, Layout
from .precision import Arith
from .tolerance import Tolerance
from .variants import VARIANTS, Cache, Grads, forward_cache, inference_backward

__all__ = ["FIRST_SHARE", "FLOOR", "GROUP_ELEMENTS", "MARGIN", "MEMBERS", "MIN_FIRST", "ROUNDING", "Given", "Member",
           "Wanted", "calibrated_tolerance", "envelopes", "first_channels"]

MARGIN = 3.0
FLOOR = 0.125
ROUNDING = 1.5
MIN_FIRST = 1  # channels of the first tier: at least these ...
FIRST_SHARE = 64  # ... or one in this many channels, whichever is more
GROUP_ELEMENTS = 1 << 20  # the members run on groups of channels of about this many elements
_TINY = 1e-300


@dataclass(frozen=True)
class Member:
    """One correct kernel: how it writes dx, how it adds, how it gets mean and variance."""

    form: str  # a seed variant, "xmu" (PyTorch's CPU arrangement) or "scaled" (mean-of-terms form)
    order: str | None  # orders.ORDERS, or None for the backend's own sums
    stats: str = "two_pass"  # or "welford"


# Which members earn their cost was measured: on the test suite's 54 kinds of data, layouts and
# precisions, kevin, rocking and qianfeng with the backend's sums never set an envelope that
# staged or the members below did not already set (docs/design.md).
MEMBERS: tuple[Member, ...] = (
    Member("staged", None),
    Member("xmu", "sequential"),
    Member("scaled", "sequential"),
    Member("qianfeng", "threads", "welford"),
    Member("xmu", "threads", "welford"),
    Member("scaled", "tiled"),
)


@dataclass(frozen=True)
class Given:
    """The inputs as the check holds them: (P, C, S) views (x and dy as sent, or float64) and
    (C,) vectors. ``mean`` with ``invstd`` are saved statistics; ``mean`` with ``var``
    running ones (inference)."""

    x3: Any
    dy3: Any
    gamma: Any
    beta: Any
    eps: float
    training: bool
    layout: Layout
    mean: Any = None
    invstd: Any = None
    var: Any = None
    keep: np.dtype[Any] | None = None  # the kernel's per-channel dtype, when less precise than accum

    def on(self, channels: Any) -> Given:
        """The same inputs restricted to ``channels`` (sorted indices, or a slice), as a (P, k, S)
        problem."""
        lay = self.layout
        take = _taker(channels, self.x3)
        k = len(range(lay.C)[channels]) if isinstance(channels, slice) else len(channels)
        sub = Layout((lay.P, k, lay.S), 1, lay.P, k, lay.S)
        return replace(self, x3=take(self.x3, True), dy3=take(self.dy3, True), gamma=take(self.gamma, False),
                       beta=take(self.beta, False), layout=sub, mean=take(self.mean, False),
                       invstd=take(self.invstd, False), var=take(self.var, False))


@dataclass(frozen=True)
class Wanted:
    """A candidate tensor to calibrate: its dtype, its reference and its natural scale
    ((P, C, S) views for dx and y, the scale there an array or a scales.ElementScale; (C,)
    vectors otherwise)."""

    dtype: np.dtype[Any]
    ref: Any
    scale: Any
    full: bool  # dx and y: one value per element; the rest: one per channel

    def on(self, channels: Any) -> Wanted:
        take = _taker(channels, self.ref)
        scale = self.scale.channels(channels) if hasattr(self.scale, "channels") else take(self.scale, self.full)
        return replace(self, ref=take(self.ref, self.full), scale=scale)

    def whole(self) -> Wanted:
        """With the scale as an array (a scales.ElementScale made whole)."""
        return replace(self, scale=self.scale.full()) if hasattr(self.scale, "full") else self


def _taker(channels: Any, like: Any) -> Callable[[Any, bool], Any]:
    """Channels of an array: a slice gives views, indices a contiguous copy."""
    xp = backend.namespace(like)
    if isinstance(channels, slice):
        return lambda a, full: None if a is None else (a[:, channels] if full else a.reshape(-1)[channels])
    idx = xp.asarray(np.asarray(channels, dtype=np.intp))

    def take(a: Any, full: bool) -> Any:
        if a is None:
            return None
        if full:  # a (P, C, S) view, or a (1, C, 1) per-channel broadcast
            return xp.ascontiguousarray(xp.take(a, idx, axis=1))
        return xp.take(a.reshape(-1), idx)

    return take


def first_channels(kappa: Any, gamma: Any, suspects: Any = ()) -> np.ndarray:
    """The channels of the first tier: ``max(MIN_FIRST, C / FIRST_SHARE)`` spread evenly, the
    worst-conditioned one (largest |mean| * invstd) among them, taken among channels whose gamma
    is not 0 where there are enough (dx is exactly 0 there for every member, so they add nothing
    to the envelope); and the ``suspects``, the channels where the candidate's per-channel
    tensors are furthest off: a per-channel tensor has one value per channel and member, so a
    few channels say little about the others, but a correct kernel's error in a channel is like
    the members' error in that same channel. Every channel when C is that small."""
    kappa, gamma = backend.to_numpy(kappa), backend.to_numpy(gamma)
    C = kappa.size
    k = max(MIN_FIRST, -(-C // FIRST_SHARE))
    if C <= k:
        return np.arange(C)
    live = np.flatnonzero(gamma != 0)
    pool = live if live.size >= k else np.arange(C)
    worst = pool[int(np.argmax(np.nan_to_num(kappa[pool], nan=np.inf)))]
    picks = pool[np.linspace(0, pool.size - 1, k).round().astype(int)]  # distinct: the step is at least 1
    if worst not in picks:
        picks[np.argmin(np.abs(picks - worst))] = worst
    return np.union1d(picks, np.asarray(suspects, dtype=int))


def calibrated_tolerance(envelope: float, out: np.dtype[Any], accum: np.dtype[Any], members: int,
                         channels: int | None = None) -> Tolerance:
    atol = MARGIN * max(envelope, FLOOR * unit_roundoff(accum))
    subnormal = float(ulp(np.float64(0.0), out))  # below the smallest normal, spacing is absolute
    return Tolerance(ROUNDING * unit_roundoff(out), atol, "natural", basis="calibrated", envelope=envelope,
                     margin=MARGIN, members=members, abs_floor=ROUNDING * 0.5 * subnormal, channels=channels)


def members_for(given: Given) -> tuple[Member, ...]:
    if not given.training:
        return tuple(Member("inference", order) for order in (None, *orders.ORDERS))
    if given.invstd is not None:  # saved statistics: no member computes its own
        return tuple(dict.fromkeys(replace(m, stats="two_pass") for m in MEMBERS))
    return MEMBERS


def envelopes(given: Given, ar: Arith, wanted: Mapping[str, Wanted],
              tick: Callable[[str], None] = lambda step: None, channels: Any = None) -> dict[str, float]:
    """The envelope of each wanted tensor, in natural units, over ``members_for(given)`` on
    ``channels`` (sorted indices; default all); ``tick`` is called before each member (a
    deadline raises there)."""
    if channels is not None and len(channels) < given.layout.C:
        given = given.on(channels)
        wanted = {name: w.on(channels) for name, w in wanted.items()}
        ar = replace(ar, shape=given.layout.view_shape)
    else:
        wanted = {name: w.whole() for name, w in wanted.items()}
    # Channel groups one after another, the members of each sharing the cores (the ordered sums
    # vectorise across channels, so a member costs less per channel in a larger group).
    groups = [slice(0, given.layout.C)]  # the GPU takes every channel at once
    if backend.is_numpy(ar.xp):
        groups = backend.channel_groups(given.layout, GROUP_ELEMENTS, share=False)
    parts = []
    for sl in groups:
        g = given if sl == slice(0, given.layout.C) else given.on(sl)
        w = wanted if g is given else {name: w.on(sl) for name, w in wanted.items()}
        parts.append(_envelopes_of(g, replace(ar, shape=g.layout.view_shape), w, tick))
    return {name: max(p[name] for p in parts) for name in wanted}


def _envelopes_of(given: Given, ar: Arith, wanted: Mapping[str, Wanted],
                  tick: Callable[[str], None]) -> dict[str, float]:
    """The envelopes over every member on these channels: the members that share a forward
    cache go together as one task, and the tasks share the cores."""
    inverse = _inverse_scales(wanted, given.layout, ar.xp)
    # x and dy as every member's kernel sees them: the same rounding for all, so done once
    # (the forms and forward_cache never write into their inputs).
    x, dy = ar.load(given.x3), ar.load(given.dy3)

    def run(members: list[Member]) -> dict[str, float]:
        out = dict.fromkeys(wanted, 0.0)
        for outputs in _run_members(given, ar, members, x, dy, set(wanted), tick):
            for name, w in wanted.items():
                out[name] = max(out[name], _spread(outputs[name], w, inverse[name], given.layout, ar.xp))
        return out

    tasks: dict[tuple[str | None, str], list[Member]] = {}
    for m in members_for(given):
        tasks.setdefault((m.order, m.stats), []).append(m)
    parts = backend.map_tasks(run, list(tasks.values()), ar.xp)
    return {name: max(p[name] for p in parts) for name in wanted}


def _run_members(given: Given, ar: Arith, members: list[Member], x: Any, dy: Any, names: set[str],
                 tick: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    key: tuple[str | None, str] | None = None
    c: Cache | None = None
    for m in members:  # members that share a forward cache come one after another
        tick(f"the calibration ({m.form}, {m.order or 'backend'} sums)")
        mar = replace(ar, order=m.order, held_in=given.keep)
        if (m.order, m.stats) != key or c is None:
            c = None  # the previous cache's full arrays go before the next are made
            key, c = (m.order, m.stats), _cache(given, mar, m.stats, x)
        g = FORMS[m.form](dy, c, mar)
        C = given.layout.C
        outputs: dict[str, Any] = {"dx": g.dx, "dgamma": g.dgamma.reshape(C), "dbeta": g.dbeta.reshape(C),
                                   "mean": c.mean.reshape(C), "invstd": c.ivar.reshape(C)}
        if "y" in names:
            outputs["y"] = ar.ew(_affine)(c.gamma, c.xhat, ar.param(given.beta))
        yield outputs


def _cache(given: Given, ar: Arith, stats: str, x: Any) -> Cache:
    kw: dict[str, Any] = {}
    if not given.training:
        kw = {"mean": ar.param(given.mean), "var": ar.param(given.var)}
    elif given.invstd is not None:
        kw = {"mean": ar.param(given.mean), "invstd": ar.param(given.invstd)}
    elif stats == "welford":
        mean, var = orders.welford(x, ar.xp)
        kw = {"mean": mean, "var": var}
    if ar.held_in is not None and given.training and given.invstd is None:
        # A kernel with 16-bit parameters saves mean and invstd in 16 bits, and its backward
        # works from the saved values (PyTorch's CPU kernel with bfloat16 weights does).
        c = forward_cache(x, ar.param(given.gamma), replace(ar, held_in=None), eps=given.eps, **kw)
        kw = {"mean": ar.held(c.mean), "invstd": ar.held(c.ivar)}
    return forward_cache(x, ar.param(given.gamma), ar, eps=given.eps, **kw)


def _affine(gamma: Any, xhat: Any, beta: Any) -> Any:
    return gamma * xhat + beta


def _mul(a: Any, b: Any) -> Any:
    return a * b


def _xmu_dx(dy: Any, mean_dy: Any, xmu: Any, k: Any, ivar: Any, gamma: Any) -> Any:
    return (dy - mean_dy - xmu * k) * (ivar * gamma)


def xmu_form(dy: Any, c: Cache, ar: Arith) -> Grads:
    """PyTorch's CPU arrangement: the projection on x - mean, scaled by invstd^2 / R."""
    inv_n = ar.const(1.0 / ar.R)
    dbeta, dot = ar.csums((same, (dy,)), (_mul, (dy, c.xmu)))
    k = dot * c.ivar * c.ivar * inv_n
    dx = ar.ew(_xmu_dx)(dy, dbeta * inv_n, c.xmu, k, c.ivar, c.gamma)
    return Grads(dx, dot * c.ivar, dbeta)


def _scaled_dx(gamma: Any, ivar: Any, dy: Any, mean_dy: Any, xhat: Any, mean_dyx: Any) -> Any:
    return gamma * ivar * (dy - mean_dy - xhat * mean_dyx)


def scaled_form(dy: Any, c: Cache, ar: Arith) -> Grads:
    """gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)): the means taken first."""
    inv_n = ar.const(1.0 / ar.R)
    dbeta, dgamma = ar.csums((same, (dy,)), (_mul, (dy, c.xhat)))
    dx = ar.ew(_scaled_dx)(c.gamma, c.ivar, dy, dbeta * inv_n, c.xhat, dgamma * inv_n)
    return Grads(dx, dgamma, dbeta)


FORMS: dict[str, Callable[[Any, Cache, Arith], Grads]] = {
    **{name: v.fn for name, v in VARIANTS.items()},
    "xmu": xmu_form,
    "scaled": scaled_form,
    "inference": inference_backward,
}


def _inverse_scales(wanted: Mapping[str, Wanted], lay: Layout, xp: ModuleType) -> dict[str, Any]:
    """1 / scale of each wanted tensor, once for every member; 0 where the scale is 0 (gamma or
    dy is 0 there, and every correct formula gives exactly 0)."""
    return {name: _inverse(w.scale, lay, xp) for name, w in wanted.items()}


def _inverse(scale: Any, lay: Layout, xp: ModuleType) -> Any:
    """``where(scale > 0, 1 / max(scale, tiny), 0)``; a full tensor on the CPU block by block into
    one array (no full-size temporaries: the same values, a quarter of the memory traffic)."""
    if not backend.is_numpy(xp) or getattr(scale, "shape", None) != lay.view_shape:
        return xp.where(scale > 0, 1.0 / xp.maximum(scale, _TINY), 0.0)
    out = np.empty(lay.view_shape)

    def part(b: Block) -> None:
        s, o = scale[b[0], :, b[1]], out[b[0], :, b[1]]
        np.maximum(s, _TINY, out=o)
        np.divide(1.0, o, out=o)
        o[s <= 0] = 0.0

    backend.map_blocks(part, lay, xp)
    return out


def _spread(value: Any, w: Wanted, inv_scale: Any, lay: Layout, xp: ModuleType) -> float:
    """max |value - ref| / scale, in natural units: the member's error before its result is
    rounded to the candidate's dtype (that rounding is a term of its own)."""
    if not w.full:
        err = xp.abs(value.reshape(-1).astype(xp.float64) - w.ref.reshape(-1))
        return float((err * inv_scale.reshape(-1)).max())
    v3 = lay.view(value)

    def part(b: Block) -> float:
        ref = w.ref[b[0], :, b[1]]
        (err,) = backend.scratch(1, ref.shape, xp)
        xp.subtract(v3[b[0], :, b[1]], ref, out=err)
        xp.abs(err, out=err)
        err *= inv_scale[b[0], :, b[1]]
        return float(err.max())

    return max(backend.map_blocks(part, lay, xp))

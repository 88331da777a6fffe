"""One entry point: ``check(x, dy, ...) -> CheckReport``.

The flow: validate; float64 statistics and reference; the chosen variant(s)
in the chosen precision against the reference; finite differences against
the reference; the caller's candidate outputs against the reference, judged
against the error of correct kernels run on the same inputs (calibrate.py);
saved statistics against x's.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, ParamSpec, TypeVar, cast

import numpy as np

from . import backend, calibrate, fd, reference
from .compare import SCRATCH, Comparison, channel_layout, channel_ranges, compare, compare_all
from .dtypes import dtype_name
from .errors import InputError, TimeBudgetError, WorkLimitError
from .inputs import CANDIDATE_NAMES, FULL_TENSORS, Inputs, float_dtype, validate
from .layout import Layout
from .precision import Arith, make_arith
from .reference import Stats
from .report import Block, CheckReport, Checks, CrossCheck, FDBlock, TensorMetrics, VariantsBlock
from .request import FD_METHODS, INPUT_NAMES, FDOptions, Tolerances, options_from
from .scales import Scales
from .tolerance import Tolerance, default_tolerance, fd_tolerance, least_precise, user_tolerance
from .variants import VARIANTS, Grads, forward_cache, inference_backward

# FD_METHODS, FDOptions: request.py
__all__ = ["FD_METHODS", "FDOptions", "Limits", "check", "reference_outputs", "warm_device"]

GRAD_NAMES = ("dx", "dgamma", "dbeta")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """Work the finite differences may do (forward evaluations times elements), and a
    deadline on time.monotonic() that the check honours between steps."""

    fd_work: int = 1 << 28
    auto_cross_check: int = 2  # brute positions that 'auto' adds to 'stats'
    deadline: float | None = None

    def tick(self, step: str) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            msg = f"the check ran out of its time budget before {step}"
            raise TimeBudgetError(msg)


@dataclass
class _Ctx:
    inp: Inputs
    xp: ModuleType
    # (P, C, S): as sent on the CPU, where everything reads it in float64 block by block (half the
    # bytes for float32 data); float64 on the GPU
    x3: Any
    dy3: Any
    gamma: Any
    beta: Any
    used: Stats  # the statistics the kernel uses: saved, batch or running
    exact: Stats  # x's own statistics (running in inference mode)
    ref: Grads  # float64, with `used`
    scales: Scales
    notes: list[str] = field(default_factory=list)
    plots: bool = False  # keep what the pictures draw (pictures.py)

    @property
    def lay(self) -> Layout:
        return self.inp.layout

    @functools.cached_property
    def exact_scales(self) -> Scales:
        """Scales for x's own statistics (forward outputs, finite differences): the same as
        ``scales`` unless saved statistics were sent, and then built once."""
        if self.used is self.exact:
            return self.scales
        return Scales(self.x3, self.dy3, self.gamma, self.beta, self.exact, self.lay, self.xp)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + (time.perf_counter() - start) * 1e3


def _quiet(fn: Callable[P, T]) -> Callable[P, T]:
    """Emulated low precision may overflow on purpose: the reports count what is not finite."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


@_quiet
def check(
    x: Any,
    dy: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    running_mean: Any = None,
    running_var: Any = None,
    saved_mean: Any = None,
    saved_invstd: Any = None,
    candidate: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    **options: Any,
) -> CheckReport:
    """Check a batch-norm backward formula, and optionally a caller's outputs.

    The tensors are request.INPUT_NAMES; ``options`` are the fields of ``request.CheckOptions``
    (variant, dtype, accum_dtype, eps, channel_axis, training, finite_difference, tolerance,
    device, plots), defined there once with their meanings and bounds. ``tolerance`` is
    ``(rtol, atol)`` in plain absolute terms, for every candidate tensor, or a mapping from
    tensor names to such pairs; the tensors it leaves out get the calibrated verdict of
    ``calibrate.py``. ``plots`` adds, to each tensor of the variant and candidate blocks, what
    the pictures of the HTML report draw (pictures.py). Raises ``InputError`` for bad input.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    limits = limits or Limits()
    with _timed(timings, "validate"):
        opts = options_from(options)
        tensors = dict(zip(INPUT_NAMES, (x, dy, gamma, beta, running_mean, running_var, saved_mean, saved_invstd),
                           strict=True))
        inp = validate(tensors, candidate, opts)
        xp = backend.resolve_device(opts.device or "cpu")
        arith = make_arith(inp.dtype, inp.accum_dtype, shape=inp.layout.view_shape, xp=xp)
    with _timed(timings, "reference"):
        # dx's scale read by the finite differences' passes too: made once, whole, in the
        # reference's second pass where NumPy makes it (scales.Scales.second_pass); a
        # candidate's dx and the variant's share each block's scale
        fd_reads = opts.finite_difference.method in ("auto", "stats") and inp.saved_mean is None
        ctx = _context(inp, xp, keep_dx_scale=fd_reads)
        ctx.plots = opts.plots
    limits.tick("the variants")
    with _timed(timings, "variant"):
        runs = _runs(ctx, inp.variants, arith, limits.tick)
        # With a candidate dx, the variant's dx is compared beside it, in the candidate's
        # phase: one pass makes the scale of each block once for both (compare_all).
        later = "dx" in inp.candidate and len(runs) == 1
        compared = {name: _variant_tensors(ctx, grads, arith, GRAD_NAMES[1:] if later else GRAD_NAMES)
                    for name, grads in runs}
    checks = Checks()
    if opts.finite_difference.method != "none":
        limits.tick("the finite differences")
        with _timed(timings, "finite_difference"):
            checks.finite_difference = _fd_block(ctx, opts.finite_difference, limits)
    if inp.candidate:
        limits.tick("the candidate")
        with _timed(timings, "candidate"):
            rider = None
            if later:
                g = runs[0][1]
                rider = (ctx.lay.restore(g.dx), _variant_tolerance(ctx, arith, arith.storage), arith.storage)
            checks.candidate, variant_dx = _candidate_block(ctx, arith, opts.tolerance, limits.tick, rider)
            if variant_dx is not None:
                compared[runs[0][0]]["dx"] = variant_dx
    blocks = {name: Block.of({t: tensors[t] for t in GRAD_NAMES}) for name, tensors in compared.items()}
    if len(blocks) == 1:
        checks.variant = next(iter(blocks.values()))
    else:
        checks.variants = _variants_block(blocks, [g for _, g in runs])
    if inp.saved_mean is not None:
        checks.saved_statistics = _saved_block(ctx, arith)
    gradients = None
    if len(runs) == 1:
        g = runs[0][1]
        gradients = {"dx": backend.from_container(ctx.lay.restore(g.dx), arith.storage),
                     "dgamma": backend.from_container(g.dgamma, arith.accum),
                     "dbeta": backend.from_container(g.dbeta, arith.accum)}
    ref = {"dx": backend.to_numpy(ctx.lay.restore(ctx.ref.dx)), "dgamma": backend.to_numpy(ctx.ref.dgamma),
           "dbeta": backend.to_numpy(ctx.ref.dbeta)}
    timings["total"] = (time.perf_counter() - start) * 1e3
    return CheckReport(
        passed=all(b.passed for b in checks.blocks()),
        variant=opts.variant,
        dtype=dtype_name(arith.storage),
        accum_dtype=dtype_name(arith.accum),
        shape=list(inp.layout.shape),
        channel_axis=inp.layout.axis,
        reduce_size=inp.layout.R,
        training=inp.training,
        eps=inp.eps,
        device=cast(Any, backend.device_name(xp)),
        gradients=gradients,
        reference=ref,
        checks=checks,
        timings_ms=timings,
        notes=ctx.notes,
    )


def _context(inp: Inputs, xp: ModuleType, *, keep_dx_scale: bool = False) -> _Ctx:
    lay = inp.layout
    if backend.is_numpy(xp):  # as sent (float16, float32 or float64): see _Ctx.x3
        x3, dy3 = lay.view(inp.x), lay.view(inp.dy)
    else:
        x3, dy3 = lay.view(backend.as_float64(inp.x, xp)), lay.view(backend.as_float64(inp.dy, xp))
    gamma, beta = xp.asarray(inp.gamma), xp.asarray(inp.beta)
    if inp.training:
        exact = reference.batch_stats(x3, lay, inp.eps, xp)
    else:
        exact = reference.stats_from_var(xp.asarray(inp.running_mean), xp.asarray(inp.running_var), inp.eps, xp)
    used = exact
    if inp.saved_mean is not None:
        used = reference.stats_from_invstd(xp.asarray(inp.saved_mean), xp.asarray(inp.saved_invstd), inp.eps)
    scales = Scales(x3, dy3, gamma, beta, used, lay, xp)
    scales.keep_dx = keep_dx_scale
    ref = reference.backward(x3, dy3, gamma, used, lay, training=inp.training, xp=xp, riders=scales)
    return _Ctx(inp, xp, x3, dy3, gamma, beta, used, exact, ref, scales)


def _runs(ctx: _Ctx, names: tuple[str, ...], ar: Arith, tick: Callable[[str], None]) -> list[tuple[str, Grads]]:
    """The variants in ``ar``'s precision, channel group by channel group on every core
    (backend.map_channels: each channel's values are those of the whole tensor), the forward
    cache of a group shared by the variants."""
    inp, lay, xp = ctx.inp, ctx.lay, ctx.xp
    groups = backend.is_numpy(xp) and len(backend.channel_groups(lay)) > 1
    # each group writes its dx into place while it is in cache (no concatenation pass after)
    dxs = [xp.empty(lay.view_shape, dtype=backend.container(ar.storage, xp)) for _ in names] if groups else []

    def part(sl: slice) -> list[Grads]:
        sub = replace(ar, shape=(lay.P, sl.stop - sl.start, lay.S))
        kw: dict[str, Any] = {}
        if not inp.training:
            kw = {"mean": sub.param(ctx.used.mean[sl]), "var": sub.param(ctx.used.var[sl])}
        elif inp.saved_mean is not None:
            kw = {"mean": sub.param(ctx.used.mean[sl]), "invstd": sub.param(ctx.used.invstd[sl])}
        cache = forward_cache(sub.load(ctx.x3[:, sl]), sub.param(ctx.gamma[sl]), sub, eps=inp.eps, **kw)
        dy = sub.load(ctx.dy3[:, sl])
        out = []
        for i, name in enumerate(names):
            tick(f"the variant {name}")
            fn = VARIANTS[name].fn if inp.training else inference_backward
            g = fn(dy, cache, sub)
            dx = sub.store(g.dx)
            if dxs:
                dxs[i][:, sl] = dx
            out.append(Grads(dx, sub.keep(g.dgamma).reshape(-1), sub.keep(g.dbeta).reshape(-1)))
        return out

    parts = backend.map_channels(part, lay, xp)

    def joined(i: int, field: str) -> Any:
        pieces = [getattr(p[i], field) for p in parts]
        return pieces[0] if len(pieces) == 1 else xp.concatenate(pieces)

    return [(name, Grads(dxs[i] if dxs else parts[0][i].dx, joined(i, "dgamma"), joined(i, "dbeta")))
            for i, name in enumerate(names)]


def _variant_tensors(ctx: _Ctx, grads: Grads, ar: Arith, names: tuple[str, ...]) -> dict[str, TensorMetrics]:
    """A variant's gradients against the reference, within the analytic tolerance."""
    lay, clay = ctx.lay, channel_layout(ctx.lay.C)
    out: dict[str, TensorMetrics] = {}
    for name in names:
        is_dx = name == "dx"
        out_dtype = ar.storage if is_dx else ar.accum
        out[name] = compare(lay.restore(getattr(grads, name)) if is_dx else getattr(grads, name),
                            lay.restore(getattr(ctx.ref, name)) if is_dx else getattr(ctx.ref, name),
                            tol=_variant_tolerance(ctx, ar, out_dtype), lay=lay if is_dx else clay,
                            out_dtype=out_dtype, scale=ctx.scales.of(name), plots=ctx.plots)
    return out


def _variant_tolerance(ctx: _Ctx, ar: Arith, out: np.dtype[Any]) -> Tolerance:
    return default_tolerance(ar.storage, ar.accum, out, ctx.lay.R)


def _variants_block(blocks: dict[str, Block], grads: list[Grads]) -> VariantsBlock:
    spread: dict[str, float] = {}
    pair: dict[str, list[str]] = {}
    names = list(blocks)
    for t in GRAD_NAMES:
        best = (-1.0, ["", ""])
        for i, a in enumerate(grads):
            for j in range(i + 1, len(grads)):
                xp = backend.namespace(getattr(a, t))
                d = float(xp.max(xp.abs(getattr(a, t).astype(xp.float64) - getattr(grads[j], t).astype(xp.float64))))
                if d > best[0]:
                    best = (d, [names[i], names[j]])
        spread[t], pair[t] = best
    return VariantsBlock(all(b.passed for b in blocks.values()), blocks, spread, pair)


def _fd_block(ctx: _Ctx, opts: FDOptions, limits: Limits) -> FDBlock:
    inp, lay, xp = ctx.inp, ctx.lay, ctx.xp
    pr = fd.Problem(ctx.x3, ctx.dy3, ctx.gamma, ctx.beta, inp.eps, inp.training,
                    None if inp.training else ctx.exact, lay, xp)
    # The finite differences verify the reference for x's own statistics.
    ref = ctx.ref if ctx.used is ctx.exact else reference.backward(
        ctx.x3, ctx.dy3, ctx.gamma, ctx.exact, lay, training=inp.training, xp=xp)
    scales = ctx.exact_scales
    tol = fd_tolerance()
    method = "stats" if opts.method == "auto" else opts.method
    block = FDBlock(True, method=cast(Any, method), requested=opts.method, step=opts.step, seed=opts.seed)
    h = fd.steps(ctx.exact, opts.step)
    block.step_min, block.step_max = float(xp.min(h)), float(xp.max(h))
    errors: list[float] = []
    if method == "stats":
        raw = ref.dgamma / ctx.exact.invstd
        diff = fd.StatsDifference(pr, ctx.exact, ref.dbeta, raw, opts.step, fd.extents(scales))
        # Each block of differences is judged while in cache: the values are never kept whole.
        judge = Comparison(ref.dx, tol=tol, lay=lay, out_dtype=np.float64, scale=scales.dx_field,
                           extra=4 * diff.error)
        parts, dg, db = diff.judged(judge.part, clear=SCRATCH)
        block.dx = judge.metrics(parts)
        block.elements = lay.M
        top = xp.asarray(judge.channel_scale(parts))
        errors.append(float(xp.max(diff.error / xp.where(top > 0, top, 1.0))))
        if opts.method == "auto":
            block.cross_check = _cross_check(ctx, pr, ref, scales, opts, limits, block.notes)
    elif method == "brute":
        metrics, count = _brute(ctx, pr, ref, scales, opts, limits, opts.samples, block.notes)
        block.dx, block.samples, block.elements = metrics, count, count * lay.C
    else:
        metrics, count = _directional(ctx, pr, ref, scales, opts, limits, block.notes)
        block.dx, block.directions, block.elements = metrics, count, count * lay.C
    if method != "stats":
        dg, db = fd.param_fd(pr, ctx.exact, fd.extents(scales))
    clay = channel_layout(lay.C)
    block.dgamma = compare(ref.dgamma, dg.values, tol=tol, lay=clay, out_dtype=np.float64,
                           scale=scales.dgamma, extra=4 * dg.error)
    block.dbeta = compare(ref.dbeta, db.values, tol=tol, lay=clay, out_dtype=np.float64,
                          scale=scales.dbeta, extra=4 * db.error)
    block.estimated_error = max(errors) if errors else 0.0
    block.passed = all(t.passed for t in block.tensors.values()) and (
        block.cross_check is None or block.cross_check.metrics.passed)
    lost = sum(t.nonfinite for t in block.tensors.values())
    lost += block.cross_check.metrics.nonfinite if block.cross_check is not None else 0
    if lost:
        block.notes.append(f"{lost} finite differences are not finite: a step of {opts.step:g} times sqrt(var + eps) "
                           "is too small (or too large) to difference here; steps of 1e-6 to 1e-2 work")
    return block


def _affordable(count: int, per: int, limits: Limits, what: str, notes: list[str]) -> int:
    """How many of ``count`` evaluations (each ``per`` element-forwards) fit the work limit."""
    fits = limits.fd_work // max(per, 1)
    if fits < 1:
        msg = f"one {what} costs {per:,} element-evaluations, over the limit of {limits.fd_work:,}"
        raise WorkLimitError(msg, field="finite_difference")
    if count > fits:
        notes.append(f"{what}: reduced from {count} to {fits} to stay within the work limit of "
                     f"{limits.fd_work:,} element-evaluations")
        return fits
    return count


def _brute(ctx: _Ctx, pr: fd.Problem, ref: Grads, scales: Scales, opts: FDOptions, limits: Limits,
           samples: int | None, notes: list[str]) -> tuple[TensorMetrics, int]:
    lay = ctx.lay
    wanted = lay.R if samples is None else min(samples, lay.R)
    count = _affordable(wanted, 2 * lay.M, limits, "brute positions", notes)
    pos = fd.positions(lay.R, count, opts.seed)
    num = fd.brute_dx(pr, ctx.exact, ref.dbeta, ref.dgamma / ctx.exact.invstd, pos, opts.step, tick=limits.tick,
                      ext=fd.extents(scales))
    # Rows of (len(pos), C): position j of every channel.
    p_idx, s_idx = np.divmod(pos, lay.S)
    take = (ctx.xp.asarray(p_idx)[:, None], ctx.xp.arange(lay.C)[None, :], ctx.xp.asarray(s_idx)[:, None])
    plane = fd_layout(len(pos), lay.C)
    metrics = compare(ref.dx[take], num.values, tol=fd_tolerance(), lay=plane, out_dtype=np.float64,
                      scale=scales.dx_field.at(take), extra=4 * num.error,
                      compared="dx at sampled positions; index = [sample, channel]")
    return metrics, len(pos)


def fd_layout(rows: int, C: int) -> Layout:
    return Layout((rows, C), 1, rows, C, 1)


def _cross_check(ctx: _Ctx, pr: fd.Problem, ref: Grads, scales: Scales, opts: FDOptions,
                 limits: Limits, notes: list[str]) -> CrossCheck | None:
    lay = ctx.lay
    wanted = min(limits.auto_cross_check, lay.R)
    if 2 * lay.M * wanted > limits.fd_work:
        notes.append("auto: the brute cross-check was skipped; it would exceed the work limit")
        return None
    metrics, count = _brute(ctx, pr, ref, scales, opts, limits, wanted, notes)
    return CrossCheck("brute", count, metrics)


def _directional(ctx: _Ctx, pr: fd.Problem, ref: Grads, scales: Scales, opts: FDOptions, limits: Limits,
                 notes: list[str]) -> tuple[TensorMetrics, int]:
    lay = ctx.lay
    k = _affordable(opts.directions, 4 * lay.M, limits, "directions", notes)
    d = fd.directional(pr, ctx.exact, ref.dx, scales.dx, k, opts.seed, opts.step, tick=limits.tick)
    metrics = compare(d.analytic, d.numeric.values, tol=fd_tolerance(), lay=fd_layout(k, lay.C),
                      out_dtype=np.float64, scale=d.scale, extra=4 * d.numeric.error,
                      compared="directional derivatives <dx, v>; index = [direction, channel]")
    return metrics, k


def _device(ctx: _Ctx, value: np.ndarray) -> Any:
    """A host array on the check's device, in C order (every comparison reads its (P, C, S) view,
    which a transposed array would copy each time); CuPy cannot hold ml_dtypes' bfloat16."""
    if backend.is_numpy(ctx.xp):
        return np.ascontiguousarray(value)
    return backend.as_float64(value, ctx.xp)


def _candidate_block(ctx: _Ctx, ar: Arith, tolerance: Tolerances, tick: Callable[[str], None],
                     rider: tuple[Any, Tolerance, Any] | None = None) -> tuple[Block, TensorMetrics | None]:
    """The caller's outputs against the reference, each tensor in its own dtype, judged against
    the error of correct kernels in that precision on these inputs (calibrate.py) unless the
    caller set a tolerance for it. ``rider``: another dx ``(values, tolerance, dtype)`` compared
    beside the candidate's first judgement of dx, in the same pass; its metrics come back."""
    lay, cand = ctx.lay, ctx.inp.candidate
    user = _user_tolerances(tolerance, cand)
    storage = _candidate_storage(ar, cand)
    car = ar if storage == ar.storage else make_arith(storage, ar.accum, shape=lay.view_shape, xp=ctx.xp)
    refs = _candidate_refs(ctx, cand)
    dtypes = {name: _candidate_dtype(name, value, car) for name, value in cand.items()}
    scales = {name: (ctx.scales if name in GRAD_NAMES else ctx.exact_scales).of(name) for name in cand}
    wanted = {name: calibrate.Wanted(dtypes[name], lay.view(refs[name]) if name in FULL_TENSORS else refs[name],
                                     scales[name], name in FULL_TENSORS)
              for name in cand if name not in user}
    given = _given(ctx, car)
    members = len(calibrate.members_for(given))
    values = {name: _device(ctx, value) for name, value in cand.items()}

    rode: list[TensorMetrics] = []

    def judge(name: str, tol: Tolerance) -> TensorMetrics:
        if name == "dx" and rider is not None and not rode:
            mine, theirs = compare_all([(values[name], tol, dtypes[name]), rider], refs[name], lay=lay,
                                       scale=scales[name], plots=ctx.plots)
            rode.append(theirs)
            return mine
        clay = lay if name in FULL_TENSORS else _clay(ctx)
        return compare(values[name], refs[name], tol=tol, lay=clay, out_dtype=dtypes[name], scale=scales[name],
                       plots=ctx.plots)

    tensors = {name: judge(name, tol) for name, tol in user.items()}
    env = dict.fromkeys(wanted, 0.0)
    done = np.zeros(lay.C, dtype=bool)
    todo = calibrate.first_channels(ctx.scales.kappa, ctx.gamma, [_worst_channel(values[n], w.ref, w.scale)
                                                                  for n, w in wanted.items() if not w.full])
    while wanted:  # the channels in tiers (calibrate.py): more only where something fails
        for name, e in calibrate.envelopes(given, car, wanted, tick=tick, channels=todo).items():
            env[name] = max(env[name], e)
        done[todo] = True
        for name in wanted:
            tensors[name] = judge(name, calibrate.calibrated_tolerance(env[name], dtypes[name], car.accum, members,
                                                                        int(done.sum())))
        # A bigger envelope cannot pass what fails only by being NaN or infinite.
        failed = [n for n in wanted if tensors[n].mismatched > tensors[n].nonfinite]
        if not failed or done.all():
            break
        worst = sorted({c.channel for n in failed for c in tensors[n].worst_channels} - set(np.flatnonzero(done)))
        todo = np.array(worst) if worst else np.flatnonzero(~done)
    tensors = {name: tensors[name] for name in cand}
    if env:
        held = "" if given.keep is None else f", per-channel values held in {dtype_name(given.keep)}"
        on = "" if done.all() else (f" on channels {channel_ranges(np.flatnonzero(done))} of {lay.C} (enough to "
                                     "pass; more channels could only widen the envelope)")
        ctx.notes.append(
            f"candidate: judged against {members} correct kernels run in {dtype_name(car.storage)} storage with "
            f"{dtype_name(car.accum)} arithmetic{held} on these inputs{on}; envelope (natural units): "
            + ", ".join(f"{k} {v:.3g}" for k, v in env.items()))
    ctx.notes.extend(_blind_spots(ctx, cand))
    return Block.of(tensors), (rode[0] if rode else None)


def _worst_channel(value: Any, ref: Any, scale: Any) -> int:
    """The channel where a per-channel candidate tensor is furthest off, in natural units."""
    xp = backend.namespace(ref)
    err = xp.abs(xp.asarray(value, dtype=xp.float64).reshape(-1) - ref) / xp.maximum(scale, 1e-300)
    return int(xp.argmax(xp.where(xp.isnan(err), xp.inf, err)))


def _user_tolerances(tolerance: Tolerances, cand: Mapping[str, Any]) -> dict[str, Tolerance]:
    if tolerance is None:
        return {}
    if isinstance(tolerance, Mapping):
        unknown = sorted(set(tolerance) - set(CANDIDATE_NAMES))
        if unknown:
            msg = f"unknown tensor {unknown[0]!r}; give tolerances for any of {', '.join(CANDIDATE_NAMES)}"
            raise InputError(msg, field="tolerance")
        return {name: user_tolerance(*t) for name, t in tolerance.items()}
    return {name: user_tolerance(*tolerance) for name in cand}


def _candidate_storage(ar: Arith, cand: Mapping[str, Any]) -> np.dtype[Any]:
    """x and dy as the kernel held them: the request's dtype, or a less precise dtype that the
    candidate's dx or y arrived in (a bfloat16 kernel fed float32 dumps)."""
    typed = [float_dtype(cand[n]) for n in FULL_TENSORS if n in cand and float_dtype(cand[n]) != np.float64]
    return least_precise(ar.storage, *typed)


def _candidate_dtype(name: str, value: Any, ar: Arith) -> np.dtype[Any]:
    """A candidate tensor's own dtype (mixed precision: 16-bit dx beside float32 dgamma). Plain
    lists arrive as float64, and so does nothing else a kernel of ``ar``'s precision writes: those
    are judged in the kernel's dtype for that tensor (storage for dx and y, accum otherwise)."""
    own = float_dtype(value)
    kernel = ar.storage if name in FULL_TENSORS else ar.accum
    return kernel if own == np.float64 and kernel != np.float64 else own


def _given(ctx: _Ctx, ar: Arith) -> calibrate.Given:
    inp, used = ctx.inp, ctx.used
    kw: dict[str, Any] = {}
    if not inp.training:
        kw = {"mean": used.mean, "var": used.var}
    elif inp.saved_mean is not None:
        kw = {"mean": used.mean, "invstd": used.invstd}
    return calibrate.Given(ctx.x3, ctx.dy3, ctx.gamma, ctx.beta, inp.eps, inp.training, ctx.lay,
                           keep=_per_channel_dtype(ctx, ar), **kw)


def _per_channel_dtype(ctx: _Ctx, ar: Arith) -> np.dtype[Any] | None:
    """The dtype the kernel holds per-channel values in, when it says so and it is less precise
    than its arithmetic: gamma and beta sent as 16-bit, or 16-bit dgamma, dbeta, mean, invstd."""
    said = [float_dtype(v) for k, v in ctx.inp.candidate.items() if k not in FULL_TENSORS]
    if ctx.inp.param_dtype is not None:
        said.append(ctx.inp.param_dtype)
    said = [d for d in said if d != np.float64]
    keep = least_precise(ar.accum, *said)
    return None if keep == ar.accum else keep


def _blind_spots(ctx: _Ctx, cand: Mapping[str, Any]) -> list[str]:
    """Where these inputs hide a whole class of bug, so that a pass there means less."""
    if "dx" not in cand:
        return []
    lay = ctx.lay
    notes: list[str] = []
    if lay.R <= 2 and ctx.inp.training:
        notes.append(f"blind spot: R = {lay.R} elements per channel; xhat is +-1 or 0 and the true dx is about 0 "
                     "whatever the formula, so dx cannot show formula bugs")
        return notes
    flat_dy = np.flatnonzero(backend.to_numpy(ctx.scales.constant("dy")))
    if flat_dy.size:
        notes.append(f"blind spot: dy is constant in channels {channel_ranges(flat_dy)}; there the true dx is 0 and "
                     "dgamma cancels, so bugs in the mean(dy) and xhat*mean(dy*xhat) terms do not show")
    zero_gamma = np.flatnonzero(backend.to_numpy(ctx.gamma) == 0)
    if zero_gamma.size:
        notes.append(f"blind spot: gamma is 0 in channels {channel_ranges(zero_gamma)}; dx there is 0 whatever the "
                     "kernel does with x and dy")
    if ctx.inp.training:
        flat_x = np.flatnonzero(backend.to_numpy(ctx.scales.constant("x")))
        if flat_x.size:
            notes.append(f"blind spot: x is constant in channels {channel_ranges(flat_x)}; xhat is 0 there, so "
                         "bugs in the variance or the xhat*mean(dy*xhat) term do not show in dx")
    return notes


def _clay(ctx: _Ctx) -> Layout:
    return channel_layout(ctx.lay.C)


def _candidate_refs(ctx: _Ctx, cand: Mapping[str, Any]) -> dict[str, Any]:
    lay = ctx.lay
    refs: dict[str, Any] = {"dx": lay.restore(ctx.ref.dx), "dgamma": ctx.ref.dgamma, "dbeta": ctx.ref.dbeta,
                            "mean": ctx.exact.mean, "invstd": ctx.exact.invstd}
    if "y" in cand:
        refs["y"] = lay.restore(reference.forward_y(ctx.x3, ctx.gamma, ctx.beta, ctx.exact, lay, ctx.xp))
    return refs


def _saved_block(ctx: _Ctx, ar: Arith) -> Block:
    """How far the saved statistics are from x's: judged like a kernel's outputs in accum."""
    inp, xp = ctx.inp, ctx.xp
    assert inp.saved_mean is not None
    assert inp.saved_invstd is not None
    assert inp.saved_dtype is not None
    out = least_precise(ar.accum, inp.saved_dtype)
    tol = default_tolerance(ar.storage, ar.accum, out, ctx.lay.R)
    scales = ctx.exact_scales
    tensors = {
        "mean": compare(xp.asarray(inp.saved_mean), ctx.exact.mean, tol=tol, lay=_clay(ctx), out_dtype=out,
                        scale=scales.mean),
        "invstd": compare(xp.asarray(inp.saved_invstd), ctx.exact.invstd, tol=tol, lay=_clay(ctx),
                          out_dtype=out, scale=scales.invstd),
    }
    return Block.of(tensors)


@_quiet
def reference_outputs(x: Any, dy: Any, gamma: Any = None, beta: Any = None, *, eps: float = 1e-5,
                      channel_axis: int = 1, training: bool = True, running_mean: Any = None,
                      running_var: Any = None) -> dict[str, np.ndarray]:
    """The float64 forward and backward (y, mean, invstd, dx, dgamma, dbeta): golden outputs."""
    opts = options_from({"dtype": "float64", "eps": eps, "channel_axis": channel_axis, "training": training})
    tensors = {"x": x, "dy": dy, "gamma": gamma, "beta": beta, "running_mean": running_mean,
               "running_var": running_var}
    inp = validate(tensors, None, opts)
    ctx = _context(inp, np)
    lay = ctx.lay
    y = reference.forward_y(ctx.x3, ctx.gamma, ctx.beta, ctx.exact, lay, np)
    return {"y": lay.restore(y), "mean": ctx.exact.mean, "invstd": ctx.exact.invstd,
            "dx": lay.restore(ctx.ref.dx), "dgamma": ctx.ref.dgamma, "dbeta": ctx.ref.dbeta}


WARM_DTYPES = ("float32", "float16", "bfloat16", "float64")
WARM_SHAPES = ((8, 16, 8, 8), (256, 32))  # an NCHW and an (N, C) case: the GPU kernels' two common layouts


def warm_device(device: str) -> bool:
    """Start the GPU and compile the kernels of common checks (every formula, each dtype, FD
    auto, NCHW and (N, C)) before a first request needs them: on an H200 the first check in a
    process took 15 s (README, The GPU path). False, doing nothing, where ``device`` is the CPU
    or no GPU is there (``auto`` on a machine without one)."""
    if device == "cpu" or not backend.gpu_available():
        return False
    from .stress import make

    for shape in WARM_SHAPES:
        case = make("normal", shape=shape)
        for dtype in WARM_DTYPES:
            check(case.x, case.dy, **case.kwargs(), variant="all", dtype=dtype, device="gpu")
    return True

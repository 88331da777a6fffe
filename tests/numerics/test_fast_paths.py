"""The check's fast paths give the numbers and verdicts of the plain computation they stand for.

- Channel groups: a kernel's values in one channel depend on that channel alone, so the
  variants and the calibration members run group by group of channels (in cache, on every
  core; the members of a group side by side) must give the bits of one run over the whole
  tensor.
- Tiers of channels: the calibrated verdict first runs its members on a few channels and
  takes more only where something fails; its verdict must be the verdict of every channel.
- Data as sent: float32 (or float16) x and dy are read as they are, not copied to float64;
  the reference, the scales and every report number must be those of float64 copies.
- in_ulps: the error in ulps by bit arithmetic is the plain err / ulp.
"""

from __future__ import annotations

import importlib

import ml_dtypes
import numpy as np
import pytest

from bncheck.numerics import FDOptions, check
from bncheck.numerics.backend import blocks  # its GROUP_ELEMENTS, patched below
from bncheck.numerics.dtypes import in_ulps, ulp
from bncheck.numerics.layout import Layout

from .kernels import BUGS, backward
from .kinds import make_kind

calibrate = importlib.import_module("bncheck.numerics.calibrate")
check_module = importlib.import_module("bncheck.numerics.check")

NO_FD = FDOptions(method="none")
EPS = 1e-5


def _bits(a) -> bytes:
    return np.ascontiguousarray(np.asarray(a)).tobytes()


def _data(shape, axis, seed=0, kind="normal"):
    return make_kind(kind, shape, axis, np.random.default_rng(seed))


def _report_numbers(r) -> dict:
    """Every verdict-bearing number of a report, timings left out."""
    out = {"passed": r.passed}
    blocks_ = []
    for block in r.checks.blocks():
        blocks_ += list(block.variants.items()) if hasattr(block, "variants") else [(type(block).__name__, block)]
    for label, block in blocks_:
        for name, t in block.tensors.items():
            out[(label, name)] = (t.passed, t.max_abs_err, t.rms_err, t.max_ulp, t.tol_ratio,
                                                  t.worst_index, t.mismatched, t.failed_channels,
                                                  t.tolerance.envelope)
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("shape", "axis"), [((4, 12, 5, 7), 1), ((4, 5, 7, 12), -1), ((300, 12), 1)])
@pytest.mark.parametrize("mode", ["training", "inference", "saved"])
def test_channel_groups_give_the_bits_of_one_run(monkeypatch, dtype, shape, axis, mode):
    x, dy, gamma, beta = _data(shape, axis)
    C = shape[axis]
    rng = np.random.default_rng(1)
    kw = {}
    if mode == "inference":
        kw = {"training": False, "running_mean": rng.standard_normal(C), "running_var": rng.uniform(0.5, 2, C)}
    elif mode == "saved":
        kw = {"saved_mean": rng.standard_normal(C) * 0.1, "saved_invstd": rng.uniform(0.3, 0.6, C)}
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    out = backward(x.astype(np_dtype), dy.astype(np_dtype), gamma, beta, eps=EPS, channel_axis=axis, dtype=dtype)
    cand = {"dx": out["dx"], "dgamma": out["dgamma"], "dbeta": out["dbeta"]}

    def run():
        return check(x, dy, gamma, beta, dtype=dtype, channel_axis=axis, variant="all", eps=EPS,
                     finite_difference=NO_FD, candidate=cand, **kw)

    monkeypatch.setattr(blocks, "GROUP_ELEMENTS", 1 << 40)  # one group: the whole tensor at once
    monkeypatch.setattr(calibrate, "GROUP_ELEMENTS", 1 << 40)  # the members' groups, likewise
    monkeypatch.setenv("BNCHECK_THREADS", "1")  # and the members one after another
    assert blocks.channel_groups(Layout.of(shape, axis)) == [slice(0, C)]
    whole = run()
    monkeypatch.delenv("BNCHECK_THREADS")
    R = Layout.of(shape, axis).R
    for per_group in (1, 5):  # groups of 1 channel, and of at most 5, on every core
        monkeypatch.setattr(blocks, "GROUP_ELEMENTS", per_group * R)
        monkeypatch.setattr(calibrate, "GROUP_ELEMENTS", per_group * R)
        groups = blocks.channel_groups(Layout.of(shape, axis))
        if Layout.of(shape, axis).S > 1:
            assert len(groups) >= -(-C // per_group)
            assert max(g.stop - g.start for g in groups) <= per_group
        else:  # channels C apart: only the threads' shares (a few channels would be a strided slice)
            assert len(groups) <= min(C, blocks._threads())
        grouped = run()
        assert whole.checks.variants.spread == grouped.checks.variants.spread
        assert _report_numbers(whole) == _report_numbers(grouped)


def test_map_channels_splits_nested_work_inline():
    """A group's own block passes run in its thread, not on the pool it is running in (which,
    waited on from inside, could wait for ever)."""
    lay = Layout.of((8, 6, 1 << 16), 1)
    seen = []

    def group(sl):
        inner = Layout.of((8, sl.stop - sl.start, 1 << 16), 1)
        seen.append(len(blocks.map_blocks(lambda b: 1, inner, np)))
        return sl

    old = blocks.GROUP_ELEMENTS
    try:
        blocks.GROUP_ELEMENTS = 2 * lay.R
        got = blocks.map_channels(group, lay, np)
    finally:
        blocks.GROUP_ELEMENTS = old
    assert got == [slice(0, 2), slice(2, 4), slice(4, 6)]
    assert seen
    assert all(n > 1 for n in seen)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("shape", "axis"), [((8, 16, 7, 7), 1), ((392, 16), 1)])
def test_envelope_of_all_channels_is_the_largest_over_a_split(dtype, shape, axis):
    x, dy, gamma, beta = _data(shape, axis, seed=3)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x, dy = x.astype(np_dtype), dy.astype(np_dtype)
    out = backward(x, dy, gamma, beta, eps=EPS, channel_axis=axis, dtype=dtype)
    cand = {k: out[k] for k in ("dx", "dgamma", "dbeta", "mean", "invstd")}
    captured = {}
    real = calibrate.envelopes

    def spy(given, ar, wanted, tick=lambda s: None, channels=None):
        captured.update(given=given, ar=ar, wanted=wanted)
        return real(given, ar, wanted, tick, channels)

    import unittest.mock as mock

    with mock.patch.object(calibrate, "envelopes", spy):
        check(x, dy, gamma, beta, channel_axis=axis, eps=EPS, finite_difference=NO_FD, candidate=cand)
    g, ar, wanted = captured["given"], captured["ar"], captured["wanted"]
    every = real(g, ar, wanted)
    part = np.array([0, 3, 4, 9, 15])
    rest = np.setdiff1d(np.arange(16), part)
    a, b = real(g, ar, wanted, channels=part), real(g, ar, wanted, channels=rest)
    assert every == {name: max(a[name], b[name]) for name in every}
    assert every["dx"] > 0
    assert every["dgamma"] > 0


def _verdicts(r):
    return {t: (m.passed, m.mismatched) for t, m in r.checks.candidate.tensors.items()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["normal", "offset", "gamma_zeros"])
def test_tiers_give_the_verdict_of_every_channel(monkeypatch, dtype, kind):
    shape, axis = (8, 32, 7, 7), 1
    x, dy, gamma, beta = _data(shape, axis, seed=5, kind=kind)
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    x, dy = x.astype(np_dtype), dy.astype(np_dtype)
    kernels = [{}, {"sums": "chunked"}, {"stats": "welford"}] + [{"bug": bug} for bug in BUGS]
    tiers_used = set()
    for kernel in kernels:
        out = backward(x, dy, gamma, beta, eps=EPS, channel_axis=axis, dtype=dtype, **kernel)
        cand = {k: out[k] for k in ("dx", "dgamma", "dbeta")}
        monkeypatch.setattr(calibrate, "FIRST_SHARE", 16)
        tiered = check(x, dy, gamma, beta, eps=EPS, finite_difference=NO_FD, candidate=cand)
        monkeypatch.setattr(calibrate, "FIRST_SHARE", 1)  # the first tier is every channel
        every = check(x, dy, gamma, beta, eps=EPS, finite_difference=NO_FD, candidate=cand)
        assert _verdicts(tiered) == _verdicts(every), kernel
        for name, t in tiered.checks.candidate.tensors.items():
            e = every.checks.candidate.tensors[name].tolerance
            assert e.channels == 32
            tiers_used.add(t.tolerance.channels)
            if t.tolerance.channels == 32:  # all channels ran: the same envelope
                assert t.tolerance.envelope == e.envelope
            else:  # a sample passed (or only NaN/Inf failed): its envelope is at most the whole one
                assert t.passed or t.mismatched == t.nonfinite
                assert t.tolerance.envelope <= e.envelope
    assert min(tiers_used) < 32  # the first tier alone decided somewhere
    assert 32 in tiers_used  # and failures went to every channel


def test_first_channels_spread_and_take_the_worst_conditioned_and_the_suspects():
    kappa = np.zeros(64)
    kappa[37] = 5.0
    gamma = np.ones(64)
    # max(MIN_FIRST, C / FIRST_SHARE) = 1 channel for C = 64, the worst-conditioned; and the suspect
    assert calibrate.first_channels(kappa, gamma, [11]).tolist() == [11, 37]
    picks = calibrate.first_channels(np.zeros(320), np.ones(320))  # one in 64, spread evenly
    assert picks.tolist() == [0, 80, 160, 239, 319]
    gamma[::2] = 0  # gamma 0: those channels give nothing
    assert all(gamma[c] != 0 for c in calibrate.first_channels(np.zeros(64), gamma))
    assert calibrate.first_channels(np.zeros(1), np.ones(1)).tolist() == [0]


@pytest.mark.parametrize("sent", [np.float32, np.float16])
@pytest.mark.parametrize(("shape", "axis"), [((4, 6, 33, 9), 1), ((2000, 6), 1), ((3, 5, 6), -1)])
def test_data_as_sent_gives_the_numbers_of_float64_copies(sent, shape, axis):
    x, dy, gamma, beta = _data(shape, axis, seed=7, kind="offset")
    xs, dys = x.astype(sent), dy.astype(sent)
    out = backward(xs, dys, gamma, beta, eps=EPS, channel_axis=axis, dtype=np.dtype(sent).name)
    cand = {k: out[k] for k in ("dx", "dgamma", "dbeta", "y")}
    kw = {"channel_axis": axis, "eps": EPS, "candidate": cand, "dtype": np.dtype(sent).name,
          "finite_difference": FDOptions("auto")}
    as_sent = check(xs, dys, gamma, beta, **kw)
    as_64 = check(xs.astype(np.float64), dys.astype(np.float64), gamma, beta, **kw)
    for name in ("dx", "dgamma", "dbeta"):
        assert _bits(as_sent.reference[name]) == _bits(as_64.reference[name])
        assert _bits(as_sent.gradients[name]) == _bits(as_64.gradients[name])
    assert _report_numbers(as_sent) == _report_numbers(as_64)
    assert as_sent.notes == as_64.notes


def test_in_ulps_is_err_over_ulp():
    rng = np.random.default_rng(0)
    values = rng.standard_normal(20000) * 10.0 ** rng.integers(-320, 300, 20000)
    values[:8] = [5e-324, -1e-310, 2.0**-126, 2.0**-125, -2.0**-14, 6e-8, 1.7e308, -3.0]
    values = values[values != 0]
    err = np.abs(values) * 10.0 ** rng.uniform(-12, 0, values.size)
    for dt in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float64)):
        with np.errstate(over="ignore"):
            assert _bits(in_ulps(err, values, dt)) == _bits(err / ulp(values, dt)), dt


def test_channel_sum_of_data_as_sent_is_the_float64_sum():
    """The reference reads float32 data in float64: the batch statistics are those of a copy."""
    from bncheck.numerics import reference

    lay = Layout.of((16, 5, 300), 1)
    x = (np.random.default_rng(2).standard_normal(lay.view_shape) * 3 + 100).astype(np.float32)
    a = reference.batch_stats(x, lay, EPS, np)
    b = reference.batch_stats(x.astype(np.float64), lay, EPS, np)
    assert _bits(a.mean) == _bits(b.mean)
    assert _bits(a.var) == _bits(b.var)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.float64])
def test_max_ulp_is_the_largest_err_over_ulp(dtype):
    """compare() counts ulps exactly on a short list of elements only: the count must be the
    largest over every element, here from math.frexp element by element."""
    import math

    from bncheck.numerics.compare import channel_layout, compare
    from bncheck.numerics.tolerance import user_tolerance

    bits, least = {"float32": (24, -125), "float16": (11, -13), "bfloat16": (8, -125),
                   "float64": (53, -1021)}[np.dtype(dtype).name]
    rng = np.random.default_rng(4)
    for scale_exp in (0, -20, -130, -1000):  # -1000: float64 counts the exact way
        ref = rng.standard_normal(3000) * 2.0 ** (scale_exp + rng.integers(-3, 4, 3000))
        ref[::97] = 0.0
        cand = ref * (1 + rng.standard_normal(3000) * 2.0 ** -bits * rng.uniform(0, 8, 3000))
        cand[::97] = 1e-3
        want = 0.0
        for c, r in zip(cand.tolist(), ref.tolist(), strict=True):
            if r != 0:
                e = max(math.frexp(r)[1], least)
                want = max(want, abs(c - r) / math.ldexp(1.0, e - bits))
        lay = channel_layout(3000)
        got = compare(cand, ref, tol=user_tolerance(0.0, 1.0), lay=lay, out_dtype=np.dtype(dtype))
        assert got.max_ulp == want, (scale_exp, got.max_ulp, want)


@pytest.mark.parametrize("rows", [1, 63, 64, 128, 1000, 4099])
def test_channel_max_and_min_of_rows_are_numpys(rows):
    """(N, C) blocks reduce WIDE rows at a time: the same maxima and minima, NaN included."""
    from bncheck.numerics import backend

    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 7, 1))
    a[rows // 2, 3, 0] = np.nan
    a[rows - 1, 5, 0] = np.inf
    assert _bits(backend.channel_max(a, np)) == _bits(np.max(a, axis=(0, 2)))
    assert _bits(backend.channel_min(a, np)) == _bits(np.min(a, axis=(0, 2)))
    view = a[::2]  # not contiguous: the plain reduction
    assert _bits(backend.channel_max(view, np)) == _bits(np.max(view, axis=(0, 2)))


def test_compare_all_gives_each_comparison_its_own_metrics():
    """Two candidates against one reference and one scale made per block, in one pass: the
    metrics of two separate comparisons (a NaN in one, plots in both)."""
    from bncheck.numerics.compare import compare, compare_all
    from bncheck.numerics.reference import batch_stats
    from bncheck.numerics.scales import Scales
    from bncheck.numerics.tolerance import Tolerance

    shape, axis = (16, 6, 64, 64), 1  # several blocks
    x, dy, gamma, beta = _data(shape, axis, seed=9)
    lay = Layout.of(shape, axis)
    st = batch_stats(lay.view(x), lay, EPS, np)
    scales = Scales(lay.view(x), lay.view(dy), gamma, beta, st, lay, np)
    rng = np.random.default_rng(3)
    ref = rng.standard_normal(shape)
    c1 = (ref * (1 + 1e-7 * rng.standard_normal(shape))).astype(np.float32)
    c2 = ref + 1e-6 * rng.standard_normal(shape)
    c2[1, 2, 3, 4] = np.nan
    t1 = Tolerance(1e-7, 2e-6, "natural", basis="calibrated", abs_floor=1e-45)
    t2 = Tolerance(2e-7, 1e-5, "natural")
    both = compare_all([(c1, t1, np.dtype(np.float32)), (c2, t2, np.dtype(np.float64))], ref, lay=lay,
                       scale=scales.dx_field, plots=True)
    alone = [compare(c1, ref, tol=t1, lay=lay, out_dtype=np.float32, scale=scales.dx_field, plots=True),
             compare(c2, ref, tol=t2, lay=lay, out_dtype=np.float64, scale=scales.dx_field, plots=True)]
    assert both == alone
    assert not alone[1].passed
    assert alone[1].nonfinite == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_variant_is_judged_the_same_beside_a_candidate(dtype):
    """With a candidate dx the variant's dx is compared in the candidate's pass: the same report."""
    x, dy, gamma, beta = _data((32, 16, 32, 32), 1, seed=11)  # several blocks
    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    out = backward(x.astype(np_dtype), dy.astype(np_dtype), gamma, beta, eps=EPS, dtype=dtype)
    kw = {"dtype": dtype, "eps": EPS, "finite_difference": NO_FD, "plots": True}
    alone = check(x, dy, gamma, beta, **kw)
    beside = check(x, dy, gamma, beta, candidate={"dx": out["dx"], "dgamma": out["dgamma"]}, **kw)
    assert beside.checks.variant == alone.checks.variant
    assert beside.checks.candidate is not None


@pytest.mark.parametrize("sent", [np.float32, np.float64])
@pytest.mark.parametrize("compiled", ["0", "1"])
def test_scales_riding_the_reference_are_the_scales_alone(monkeypatch, sent, compiled):
    """The scales' sums and dx's whole scale made inside the reference's two passes are those the
    scales make on their own, bit for bit (several blocks). Where the compiled pass makes each
    block's scale (fused.py), the whole one is not made in the reference's pass at all."""
    monkeypatch.setenv("BNCHECK_FUSED", compiled)
    from bncheck.numerics import reference
    from bncheck.numerics.scales import Scales

    shape = (32, 16, 32, 32)
    x, dy, gamma, beta = _data(shape, 1, seed=13, kind="offset")
    lay = Layout.of(shape, 1)
    x3, dy3 = lay.view(x.astype(sent)), lay.view(dy.astype(sent))
    st = reference.batch_stats(x3, lay, EPS, np)
    riding, alone = Scales(x3, dy3, gamma, beta, st, lay, np), Scales(x3, dy3, gamma, beta, st, lay, np)
    riding.keep_dx = True
    reference.backward(x3, dy3, gamma, st, lay, training=True, xp=np, riders=riding)
    assert (riding.dx_field._full is None) == (compiled == "1")
    assert [_bits(a) for a in riding._sums] == [_bits(a) for a in alone._sums]
    assert _bits(riding.dx) == _bits(alone.dx)

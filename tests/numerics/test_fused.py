"""The compiled one-pass comparison (fused.py) against NumPy's path, an independent
implementation of the same numbers: every field of the report the same, bit for bit, but the
rms error (a sum in another order); and it must really have run, not fallen back."""

import dataclasses
import math

import numpy as np
import pytest

from bncheck.numerics import FDOptions, backend, check, fused, reference
from bncheck.numerics.compare import compare, compare_all
from bncheck.numerics.dtypes import BFLOAT16
from bncheck.numerics.layout import Layout
from bncheck.numerics.scales import Scales
from bncheck.numerics.tolerance import Tolerance, user_tolerance

from .kernels import backward


@pytest.fixture
def spy(monkeypatch):
    """Every comparison may take the kernel (no size limits); counts the blocks it judged and
    the blocks it handed back."""
    monkeypatch.setattr(fused, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(fused, "MIN_ROW", 1)
    counts = {"judged": 0, "handed back": 0}
    real = fused.judge

    def judge(*args, **kwargs):
        out = real(*args, **kwargs)
        counts["judged" if out is not None else "handed back"] += 1
        return out

    monkeypatch.setattr(fused, "judge", judge)
    return counts


@pytest.fixture
def numpy_sums(monkeypatch):
    """The reference's first-pass sums by NumPy either way (the compiled ones sum in another
    order: tested on their own below), so that both paths judge the same scales."""
    monkeypatch.setattr(fused, "reference_sums_apply", lambda *args: False)


def _both(monkeypatch, fn):
    """fn() by NumPy's path, then by the kernel's."""
    monkeypatch.setenv("BNCHECK_FUSED", "0")
    numpy_path = fn()
    monkeypatch.setenv("BNCHECK_FUSED", "1")
    return numpy_path, fn()


def _same(a, b):
    da, db = dataclasses.asdict(a), dataclasses.asdict(b)
    rms_a, rms_b = da.pop("rms_err"), db.pop("rms_err")
    assert da == db
    assert rms_b == pytest.approx(rms_a, rel=1e-12, abs=0.0)


def test_the_kernel_loads_here():
    # Numba comes with the server extra, which make test installs: the fast path is the product,
    # not an option that may silently be off.
    assert fused.available()


def _case(shape, axis, cand_dtype, seed=0, zeros=0.01, bad=3):
    rng = np.random.default_rng(seed)
    lay = Layout.of(shape, axis)
    ref = rng.standard_normal(shape) * np.exp(rng.uniform(-8, 8, shape))
    ref[rng.random(shape) < zeros] = 0.0
    cand = (ref * (1 + rng.standard_normal(shape) * 2e-7)).astype(cand_dtype)
    flat = cand.reshape(-1)
    for i in rng.choice(flat.size, bad, replace=False):  # planted errors
        flat[i] = flat[i] * 1.01 + 1e-3
    exact = rng.choice(flat.size, 5, replace=False)
    flat[exact] = ref.reshape(-1)[exact].astype(cand_dtype)  # a few exact, even where rounding was
    return lay, cand, ref, rng


# (512, 64), (2, 6, 7, 8) channels-last and (1000, 24): S = 1, packed rows judged in runs of
# whole rows (judge_wide): whole runs, one short run, and a short last run after whole ones.
# (48, 300): rows of 300 channels, judged one by one.
LAYOUTS = [((4, 8, 16, 16), 1), ((2, 8, 128, 160), 1), ((512, 64), 1), ((2, 6, 7, 8), -1), ((16, 5, 33), 1),
           ((1000, 24), 1), ((48, 300), 1)]
TOLERANCES = [Tolerance(1e-6, 3e-6, "natural"), Tolerance(3e-7, 1e-6, "natural", abs_floor=1.5 * 2.0**-150),
              Tolerance(1e-5, 1e-8, "absolute"), user_tolerance(0.0, 0.0)]


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
@pytest.mark.parametrize("cand_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tol", TOLERANCES, ids=["natural", "floor", "absolute", "exact"])
def test_every_number_is_numpys(monkeypatch, spy, shape, axis, cand_dtype, tol):
    lay, cand, ref, rng = _case(shape, axis, cand_dtype)
    full = np.abs(rng.standard_normal(shape)) + 0.5
    per_channel = np.abs(rng.standard_normal(lay.C)) + 0.5
    scales = [None, per_channel, full]
    extras = [None, per_channel * 1e-6, full * 1e-6]
    for i, (scale, extra) in enumerate([(s, e) for s in scales for e in extras]):
        out = [np.float32, np.float64, np.float16, BFLOAT16][i % 4]
        a, b = _both(monkeypatch, lambda s=scale, e=extra, o=out: compare(
            cand, ref, tol=tol, lay=lay, out_dtype=o, scale=s, extra=e))
        _same(a, b)
    assert spy["judged"] > 0
    assert spy["handed back"] == 0


def test_ties_for_the_worst_element_go_to_the_first_in_memory_order(monkeypatch, spy):
    """S = 1, rows judged 42 at a time (judge_wide): the same largest error at four elements,
    in three runs and twice in one row; the worst is the first of them in memory order, by hand
    (row 60, channel 5) as by NumPy's argmax."""
    lay = Layout.of((1000, 24), 1)
    ref = np.ones((1000, 24))
    cand = ref.astype(np.float32)
    for p, c in ((150, 3), (60, 20), (60, 5), (999, 0)):
        cand[p, c] = np.float32(1.001)
    a, b = _both(monkeypatch, lambda: compare(cand, ref, tol=Tolerance(1e-6, 1e-6, "natural"), lay=lay,
                                             out_dtype=np.float32))
    _same(a, b)
    assert b.worst_index == [60, 5]
    assert b.mismatched == 4
    assert spy["judged"] == 1


def test_rows_that_are_not_packed_are_judged_one_by_one(monkeypatch, spy):
    """S = 1 with a candidate and a scale that are column slices of wider arrays (rows 2C
    apart): every number NumPy's, and the kernel judged them."""
    lay, cand, ref, rng = _case((700, 24), 1, np.float32, bad=5)
    wide_cand = np.zeros((700, 48), np.float32)
    wide_cand[:, :24] = cand
    wide_scale = np.abs(rng.standard_normal((700, 48))) + 0.5
    a, b = _both(monkeypatch, lambda: compare(wide_cand[:, :24], ref, tol=Tolerance(1e-6, 1e-6, "natural"), lay=lay,
                                             out_dtype=np.float32, scale=wide_scale[:, :24]))
    _same(a, b)
    assert b.mismatched >= 5
    assert spy["judged"] == 1


def test_many_blocks_on_both_threads_and_one(monkeypatch, spy):
    # Over 2 * BLOCK_ELEMENTS: blocks split along s ((1, C, s) views of rows), on the pool.
    lay, cand, ref, rng = _case((2, 8, 160, 160), 1, np.float32, bad=40)
    scale = np.abs(rng.standard_normal(lay.shape)) + 0.5
    for threads in ("2", "1"):
        monkeypatch.setenv("BNCHECK_THREADS", threads)
        a, b = _both(monkeypatch, lambda: compare(cand, ref, tol=Tolerance(1e-6, 1e-6, "natural"), lay=lay,
                                                 out_dtype=np.float32, scale=scale))
        _same(a, b)
        assert b.mismatched == 40
    assert spy["judged"] >= 8


def test_natural_scale_made_block_by_block(monkeypatch, numpy_sums, spy):
    """dx's scale as a check makes it (scales.ElementScale), and compare_all's shared blocks."""
    rng = np.random.default_rng(3)
    shape = (8, 16, 24, 24)
    lay = Layout.of(shape, 1)
    x, dy = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, 16), rng.standard_normal(16)
    x3, dy3 = lay.view(x), lay.view(dy)
    st = reference.batch_stats(x3, lay, 1e-5, np)
    ref = np.ascontiguousarray(backward(x, dy, gamma, beta, eps=1e-5)["dx"], dtype=np.float64)
    cand = ref.astype(np.float32)
    cand[3, 4, 5, 6] += 1e-2
    tol = Tolerance(3e-7, 2e-6, "natural")

    def run():
        field = Scales(x3, dy3, gamma, beta, st, lay, np).dx_field
        return [compare(cand, ref, tol=tol, lay=lay, out_dtype=np.float32, scale=field),
                *compare_all([(cand, tol, np.float32), (ref.astype(np.float64), tol, np.float64)], ref, lay=lay,
                             scale=field)]

    for a, b in zip(*_both(monkeypatch, run), strict=True):
        _same(a, b)
    assert spy["judged"] > 0


@pytest.mark.parametrize("what", ["nan", "inf", "overflow", "tiny reference"])
@pytest.mark.parametrize("shape", [(4, 8, 16, 16), (256, 32)])
def test_blocks_it_cannot_judge_go_back_to_numpy(monkeypatch, spy, what, shape):
    lay, cand, ref, _ = _case(shape, 1, np.float64)
    out = np.float64
    at = [tuple(int(i) for i in np.unravel_index(k, shape)) for k in (1000, 2000, 3000, 4000)]
    if what == "nan":
        cand[at[0]] = np.nan
    elif what == "inf":
        cand[at[1]] = -np.inf
    elif what == "overflow":  # finite both, but the difference is not a double
        cand[at[2]], ref[at[2]] = 1.7e308, -1.7e308
    else:  # a float64 output's spacing at 1e-310 is 2^-1074: its inverse is not a double
        ref[at[3]], cand[at[3]] = 1e-310, 3e-310
    with np.errstate(over="ignore"):  # NumPy's path warns of the overflow it reports
        a, b = _both(monkeypatch, lambda: compare(cand, ref, tol=user_tolerance(1e-6, 1e-9), lay=lay, out_dtype=out))
    _same(a, b)
    assert spy["handed back"] > 0
    if what != "tiny reference":
        assert b.nonfinite == 1
        assert not b.passed


def test_hand_checked_numbers_through_the_kernel(spy):
    """Values worked out by hand, not by either path: a float32 candidate 3 ulps off at 1.5,
    one 0.25 off, the rest exact."""
    lay = Layout.of((2, 3, 32), 1)
    ref = np.full(lay.shape, 1.5)
    ref[1, 2, 7] = 4.0
    cand = ref.astype(np.float32)
    cand[0, 1, 5] = np.float32(1.5) + 3 * np.float32(2.0**-23)  # spacing of float32 in [1, 2)
    cand[1, 2, 7] = 4.25
    m = compare(cand, ref, tol=user_tolerance(1e-6, 1e-3), lay=lay, out_dtype=np.float32)
    assert spy["judged"] == 1
    assert m.max_ulp == 0.25 / 2.0**-21  # 4.25 - 4 in float32 ulps at 4: 2^-21 each
    assert m.max_abs_err == 0.25
    assert m.max_rel_err == 0.25 / 4.0
    assert m.worst_index == [1, 2, 7]
    assert m.mismatched == 1  # 3 ulps at 1.5 is 3.6e-7, inside 1e-3 + 1.5e-6
    assert m.rms_err == pytest.approx(math.sqrt((0.0625 + (3 * 2.0**-23) ** 2) / lay.M))
    assert m.worst_allowed == 1e-3 + 4.0 * 1e-6
    assert [c.channel for c in m.worst_channels] == [2, 1]


def test_a_whole_check_is_the_same_either_way(monkeypatch, numpy_sums):
    """Without lowering any limit: 262,144 elements, a candidate, the calibrated verdict."""
    x, dy, gamma, beta, cand = _whole_case(5)
    calls = []
    real = fused.judge
    monkeypatch.setattr(fused, "judge", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, b = _both(monkeypatch, lambda: check(x, dy, gamma, beta, candidate=cand,
                                           finite_difference=FDOptions("stats")))
    assert calls
    assert _without_rms(dataclasses.asdict(a.checks)) == _without_rms(dataclasses.asdict(b.checks))
    assert not b.passed
    assert b.checks.candidate.tensors["dx"].worst_index == [3, 5, 7, 9]


def _whole_case(seed):
    """262,144 float32 elements (NCHW, 16 channels) and a candidate with one element of dx off."""
    rng = np.random.default_rng(seed)
    shape = (16, 16, 32, 32)
    x = (rng.standard_normal(shape) + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma, beta = rng.uniform(0.5, 1.5, 16), rng.standard_normal(16)
    out = backward(x, dy, gamma, beta, eps=1e-5)
    cand = {k: np.ascontiguousarray(out[k], dtype=np.float32) for k in ("dx", "dgamma", "dbeta")}
    cand["dx"][3, 5, 7, 9] *= 1.001
    return x, dy, gamma, beta, cand


def _without_rms(doc):
    if isinstance(doc, dict):
        return {k: _without_rms(v) for k, v in doc.items() if k != "rms_err"}
    if isinstance(doc, list):
        return [_without_rms(v) for v in doc]
    return doc


def test_read_only_and_non_contiguous_operands(monkeypatch, spy):
    lay, cand, ref, _ = _case((4, 8, 16, 16), 1, np.float32)
    cand.setflags(write=False)
    ref.setflags(write=False)
    a, b = _both(monkeypatch, lambda: compare(cand, ref, tol=user_tolerance(1e-6, 1e-9), lay=lay,
                                             out_dtype=np.float32))
    _same(a, b)
    assert spy["judged"] > 0
    strided = np.zeros((*cand.shape, 2), np.float32)[..., 0]  # every other float: not contiguous along s
    strided[...] = cand
    judged = spy["judged"]
    a, b = _both(monkeypatch, lambda: compare(strided, ref, tol=user_tolerance(1e-6, 1e-9), lay=lay,
                                             out_dtype=np.float32))
    _same(a, b)
    assert spy["judged"] == judged


def test_without_numba_every_comparison_is_numpys(monkeypatch, spy):
    monkeypatch.setattr(fused, "_kernel", lambda: None)
    assert not fused.available()
    lay, cand, ref, _ = _case((4, 8, 16, 16), 1, np.float32)
    m = compare(cand, ref, tol=user_tolerance(1e-6, 1e-9), lay=lay, out_dtype=np.float32)
    assert m.mismatched == 3
    assert spy["judged"] == spy["handed back"] == 0
    assert backend.is_numpy(np)


def test_the_floor_decides_where_the_reference_is_zero(monkeypatch, spy):
    """With no absolute tolerance, a zero reference allows the floor alone: 1e-25 passes under a
    floor of 1e-20 and 1e-15 does not (hand-counted), by both paths."""
    lay = Layout.of((4, 8, 64), 1)
    ref = np.zeros(lay.shape)
    ref[:, :, 32:] = 1.0
    cand = ref.copy()
    cand[0, 1, 3] = cand[2, 5, 7] = 1e-25
    cand[1, 2, 3] = cand[3, 7, 0] = cand[3, 7, 1] = 1e-15
    tol = Tolerance(1e-6, 0.0, "absolute", abs_floor=1e-20)
    a, b = _both(monkeypatch, lambda: compare(cand, ref, tol=tol, lay=lay, out_dtype=np.float64))
    _same(a, b)
    assert b.mismatched == 3
    assert b.worst_allowed == 1e-20
    assert spy["judged"] == 1


def _scale_block_both_ways(monkeypatch, field, x3, b):
    """A block's natural scale by NumPy's passes and by the compiled one: the same bits; NumPy's."""
    n = x3[b[0], :, b[1]].shape
    monkeypatch.setenv("BNCHECK_FUSED", "0")
    by_numpy = field.block(b, np.empty(n), np.empty(n)).copy()
    monkeypatch.setenv("BNCHECK_FUSED", "1")
    compiled = field.block(b, np.empty(n), np.empty(n))
    np.testing.assert_array_equal(compiled, by_numpy)
    return by_numpy


@pytest.mark.parametrize("form", ["dx_field", "y_field"])
@pytest.mark.parametrize("dtypes", [(np.float32, np.float32), (np.float64, np.float32), (np.float64, np.float64)])
def test_natural_scales_are_numpys_bit_for_bit(monkeypatch, spy, form, dtypes):
    """scales.ElementScale.block, NumPy's eight passes against the one compiled pass; a block
    of rows split along s too, and data whose mean is far from 0 (kappa large)."""
    rng = np.random.default_rng(11)
    shape = (4, 8, 40, 40)
    lay = Layout.of(shape, 1)
    x = (rng.standard_normal(shape) * 1e-3 + 50.0).astype(dtypes[0])
    dy = rng.standard_normal(shape).astype(dtypes[1])
    x3, dy3 = lay.view(x), lay.view(dy)
    st = reference.batch_stats(x3, lay, 1e-5, np)
    field = getattr(Scales(x3, dy3, rng.uniform(0.5, 1.5, 8), rng.standard_normal(8), st, lay, np), form)
    taken = []
    real = fused.natural_scale
    monkeypatch.setattr(fused, "natural_scale", lambda *a: taken.append(real(*a)) or taken[-1])
    for b in [(slice(0, 4), slice(0, 1600)), (slice(1, 3), slice(100, 900))]:
        _scale_block_both_ways(monkeypatch, field, x3, b)
    assert taken == [False, True, False, True]
    x[1, 2, 3, 4] = np.inf  # a non-finite x: NumPy's path, which carries it as it did
    monkeypatch.setenv("BNCHECK_FUSED", "1")
    out = field.block((slice(0, 4), slice(0, 1600)), np.empty((4, 8, 1600)), np.empty((4, 8, 1600)))
    assert taken[-1] is False
    assert not np.isfinite(out[1, 2, 3 * 40 + 4])


@pytest.mark.parametrize("form", ["dx_field", "y_field"])
@pytest.mark.parametrize(("shape", "axis"), [((3000, 24), 1), ((4, 10, 20, 40), -1), ((600, 300), 1)])
def test_natural_scales_where_s_is_1_are_numpys_bit_for_bit(monkeypatch, spy, form, shape, axis):
    """S = 1: packed rows in runs of whole rows (a short last run: 3000 % (1024 // 24)), channels-
    last, rows of 300 channels one by one, and a block of rows that are not packed (a column
    slice): NumPy's passes against the compiled one, bit for bit; a non-finite dy goes back."""
    rng = np.random.default_rng(13)
    lay = Layout.of(shape, axis)
    x3 = lay.view((rng.standard_normal(shape) * 1e-2 + 20.0).astype(np.float32))
    dy3 = lay.view(rng.standard_normal(shape).astype(np.float32))
    st = reference.batch_stats(x3, lay, 1e-5, np)
    field = getattr(Scales(x3, dy3, rng.uniform(0.5, 1.5, lay.C), rng.standard_normal(lay.C), st, lay, np), form)
    taken = []
    real = fused.natural_scale
    monkeypatch.setattr(fused, "natural_scale", lambda *a: taken.append(real(*a)) or taken[-1])
    half = lay.C // 2
    for b in [(slice(0, lay.P), slice(0, 1)), (slice(5, lay.P - 7), slice(0, 1))]:
        by_numpy = _scale_block_both_ways(monkeypatch, field, x3, b)
        # the same block into a column slice of a wider array: rows 2C apart, not packed
        wide = np.empty((by_numpy.shape[0], 2 * lay.C, 1))
        assert fused.natural_scale(x3[b[0], :, b[1]], dy3[b[0], :, b[1]], lambda: field.coefficients, lay.M,
                                   wide[:, :lay.C])
        np.testing.assert_array_equal(wide[:, :lay.C], by_numpy)
    assert taken == [False, True, True] * 2  # NumPy's path, the block's compiled pass, the column slice
    dy3[7, half, 0] = np.nan
    assert not fused.natural_scale(x3, dy3, lambda: field.coefficients, lay.M, np.empty(lay.view_shape))


def test_a_whole_scale_made_in_the_references_pass_is_numpys(monkeypatch, numpy_sums, spy):
    """ElementScale.start_full (dx's scale kept whole for the finite differences), block by
    block into the one array, blocks split along s included: the same array either way."""
    rng = np.random.default_rng(12)
    shape = (2, 8, 160, 160)  # over 2 * BLOCK_ELEMENTS with few rows: blocks split along s
    lay = Layout.of(shape, 1)
    x3 = lay.view((rng.standard_normal(shape) + 3).astype(np.float32))
    dy3 = lay.view(rng.standard_normal(shape).astype(np.float32))
    st = reference.batch_stats(x3, lay, 1e-5, np)
    taken = []
    real = fused.natural_scale
    monkeypatch.setattr(fused, "natural_scale", lambda *a: taken.append(real(*a)) or taken[-1])

    def whole():
        return Scales(x3, dy3, rng.uniform(0.5, 1.5, 8), np.zeros(8), st, lay, np).dx_field.full()

    rng_state = rng.bit_generator.state
    monkeypatch.setenv("BNCHECK_FUSED", "0")
    by_numpy = whole()
    rng.bit_generator.state = rng_state
    monkeypatch.setenv("BNCHECK_FUSED", "1")
    compiled = whole()
    np.testing.assert_array_equal(compiled, by_numpy)
    blocks = len(lay.blocks(backend.BLOCK_ELEMENTS))
    assert blocks > 2
    assert taken == [False] * blocks + [True] * blocks


# ------------------------------------------------------------------ the reference's first-pass sums


def _numpy_sums(x, dy, mean, invstd):
    """The seven sums fused.reference_sums makes, written out in NumPy (float64)."""
    m, iv = mean.reshape(1, -1, 1), invstd.reshape(1, -1, 1)
    g, d = dy.astype(np.float64), x.astype(np.float64) - m
    h = d * iv
    return np.stack([(t).sum(axis=(0, 2)) for t in (g, g * d, g * g, np.abs(g), np.abs(g) * np.abs(h),
                                                     np.abs(x.astype(np.float64)), g * h)])


@pytest.mark.parametrize("sent", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((4, 8, 16, 16), 1), ((3, 5, 7, 9), 1), ((6, 40, 17), 1),
                                             ((300, 24), 1), ((2, 6, 7, 40), -1), ((256, 16), 1), ((40, 300), 1)])
def test_the_reference_sums_are_the_sums(sent, shape, axis):
    """Every sum against NumPy's, and dbeta's and dgamma's against exact ones (integers times
    a power of two, added exactly in Python): sums in another order, as accurate. The last
    four have S = 1: tiles of rows (a ragged last tile, one short tile, whole tiles only), and
    channels enough to go row by row."""
    from bncheck.numerics import _fusedkernel

    if len(shape) == 2:  # the cases are what the docstring says
        assert (shape[1] < _fusedkernel.WIDE_TILED) == (shape != (40, 300))
    rng = np.random.default_rng(21)
    lay = Layout.of(shape, axis)
    x3 = lay.view((rng.standard_normal(shape) * 4 + 3).astype(sent))
    dy3 = lay.view(np.round(rng.standard_normal(shape) * 2**10).astype(sent) / 2**10)
    mean, invstd = rng.standard_normal(lay.C), rng.uniform(0.5, 2.0, lay.C)
    got, extents = fused.reference_sums(x3, dy3, mean, invstd)
    want = _numpy_sums(x3, dy3, mean, invstd)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    for e, w in zip(extents, (x3.max(axis=(0, 2)), x3.min(axis=(0, 2)), dy3.max(axis=(0, 2)), dy3.min(axis=(0, 2))),
                    strict=True):
        assert e.dtype == w.dtype
        assert e.tolist() == w.tolist()
    # sum dy exactly: every dy is k / 2^10 with |k| < 2^14, so any order adds them exactly
    exact = [math.fsum(dy3[:, c, :].astype(np.float64).ravel()) for c in range(lay.C)]
    assert got[0].tolist() == exact


def test_the_reference_sums_make_the_reference_and_the_scales(monkeypatch):
    """A whole check through the compiled first pass and through NumPy's: the same verdicts,
    the same worst elements, every number within 1e-6 relative or 1e-10 absolute (sums in
    another order move a reference by an ulp or so, and a relative error of a small reference
    by more); and the pass really ran, once per block, for the reference and its riders
    together."""
    x, dy, gamma, beta, cand = _whole_case(23)
    shape = x.shape
    calls = []
    real = fused.reference_sums
    monkeypatch.setattr(fused, "reference_sums", lambda *a: calls.append(1) or real(*a))

    def run():
        return check(x, dy, gamma, beta, candidate=cand, finite_difference=FDOptions("stats"))

    compiled = run()
    assert len(calls) == len(backend.map_blocks(lambda b: b, Layout.of(shape, 1), np))  # one per block
    monkeypatch.setattr(fused, "reference_sums_apply", lambda *args: False)
    by_numpy = run()
    assert not compiled.passed
    a, b = dataclasses.asdict(compiled.checks), dataclasses.asdict(by_numpy.checks)
    # The finite differences' errors are at float64's rounding (tens of ulps): any other order
    # of a sum moves them, and only their verdicts can be the same.
    fd_a, fd_b = a.pop("finite_difference"), b.pop("finite_difference")
    verdicts = [{k: v["passed"] for k, v in fd.items() if isinstance(v, dict) and "passed" in v} for fd in (fd_a, fd_b)]
    assert verdicts[0] == verdicts[1] == {"dx": True, "dgamma": True, "dbeta": True}
    _close(a, b)
    assert compiled.checks.candidate.tensors["dx"].worst_index == [3, 5, 7, 9]


def _close(a, b, where="checks"):
    """Equal structure, equal everything but floats, floats within 1e-6 relative or 1e-10
    absolute (the values here are of order 1 to 1e3)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            _close(u, v, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-10), where
    else:
        assert a == b, where


@pytest.mark.parametrize(("shape", "axis", "applies"), [
    ((16, 16, 32, 32), 1, True), ((8192, 64), 1, True), ((4, 64, 32, 32), -1, True),
    ((4, 8, 16, 16), 1, False),  # under MIN_ELEMENTS
    ((32768, 8), 1, False),  # rows of 8 channels: under MIN_ROW
    ((1024, 64, 2, 2), 1, False)])  # s-runs of 4
def test_where_the_reference_passes_apply(shape, axis, applies):
    lay = Layout.of(shape, axis)
    x3 = lay.view(np.zeros(shape, np.float32))
    assert fused.reference_sums_apply(x3, x3, lay) is applies
    if applies:  # a view whose rows are not contiguous: NumPy's passes
        lay2 = Layout.of((*shape[:-1], shape[-1] * 2), axis)
        x2 = lay2.view(np.zeros(lay2.shape, np.float32))
        step = x2[..., ::2] if lay.S > 1 else x2[:, ::2, :]
        assert not fused.reference_sums_apply(step, step, lay)


def test_a_whole_check_where_s_is_1_either_way(monkeypatch):
    """(N, C), through the compiled first pass and through NumPy's: the same verdicts, every
    number within 1e-6 relative or 1e-10 absolute."""
    rng = np.random.default_rng(31)
    x = (rng.standard_normal((16384, 32)) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal((16384, 32)).astype(np.float32)
    compiled = check(x, dy, finite_difference=FDOptions("none"))
    monkeypatch.setattr(fused, "reference_sums_apply", lambda *args: False)
    by_numpy = check(x, dy, finite_difference=FDOptions("none"))
    assert compiled.passed
    _close(dataclasses.asdict(compiled.checks), dataclasses.asdict(by_numpy.checks))


@pytest.mark.parametrize("sent", [np.float32, np.float64])
def test_the_extents_by_hand(sent):
    """Largest and smallest per channel through the kernel's integer keys: negatives, a
    subnormal, huge values, a channel that is one value throughout."""
    shape = (2, 3, 20)
    x = np.full(shape, -7.0, sent)  # channel 0: -7 throughout
    x[:, 1, :] = -3.5
    x[1, 1, 4], x[0, 1, 9] = -1e30, np.float32(1e-40)  # a float32 subnormal, also in float64
    x[:, 2, :] = np.linspace(-2, 2, 40, dtype=sent).reshape(2, 20)
    x[1, 2, 19] = 3e38
    dy = -x[:, ::-1, :].copy()
    _, (xmax, xmin, dmax, dmin) = fused.reference_sums(x, dy, np.zeros(3), np.ones(3))
    tiny = float(np.float32(1e-40)) if sent is np.float32 else float(np.float64(np.float32(1e-40)))
    assert xmax.tolist() == [-7.0, tiny, float(sent(3e38))]
    assert xmin.tolist() == [-7.0, float(sent(-1e30)), -2.0]
    assert dmax.tolist() == [2.0, float(sent(1e30)), 7.0]
    assert dmin.tolist() == [float(sent(-3e38)), -tiny, 7.0]


@pytest.mark.parametrize("sent", [np.float32, np.float64])
@pytest.mark.parametrize(("shape", "axis"), [((16, 64, 32, 32), 1), ((2, 8, 160, 160), 1), ((8, 5, 3, 4000), 1),
                                             ((8192, 64), 1), ((4, 64, 32, 32), -1), ((12000, 24), 1),
                                             ((1000, 300), 1)])
# the last four: S = 1; packed rows in runs of whole rows (12000 % (1024 // 24): a short last
# run), and rows of 300 channels one by one
def test_the_reference_dx_is_numpys_bit_for_bit(monkeypatch, sent, shape, axis):
    """reference.backward's dx through the compiled pass and through its NumPy passes, from
    the same sums: the same bits (blocks split along s included); and the pass really ran."""
    rng = np.random.default_rng(29)
    lay = Layout.of(shape, axis)
    x3 = lay.view((rng.standard_normal(shape) * 3 + 2).astype(sent))
    dy3 = lay.view(rng.standard_normal(shape).astype(sent))
    st = reference.batch_stats(x3, lay, 1e-5, np)
    gamma = rng.uniform(0.5, 1.5, lay.C)
    calls = []
    real = fused.reference_dx
    monkeypatch.setattr(fused, "reference_dx", lambda *a: calls.append(real(*a)) or calls[-1])
    compiled = reference.backward(x3, dy3, gamma, st, lay, training=True, xp=np)
    assert calls == [True] * len(backend.map_blocks(lambda b: b, lay, np))
    monkeypatch.setattr(fused, "reference_dx", lambda *a: False)  # NumPy's passes, the same sums
    by_numpy = reference.backward(x3, dy3, gamma, st, lay, training=True, xp=np)
    assert by_numpy.dx.tobytes() == compiled.dx.tobytes()
    assert by_numpy.dgamma.tobytes() == compiled.dgamma.tobytes()


def _exact_loss(x3, dy3, gamma, beta, st):
    """Per channel sum dy * y, y by the forward's own NumPy operations, added exactly (fsum)."""
    from bncheck.numerics import fd as _fd  # noqa: F401

    coef = reference.y_coefficients(gamma, beta, st, Layout(x3.shape, 1, *x3.shape))
    y = reference.forward_y_into(np.empty(x3.shape), x3.astype(np.float64), coef, np)
    prod = dy3.astype(np.float64) * y
    return np.array([math.fsum(prod[:, c, :].ravel()) for c in range(x3.shape[1])])


@pytest.mark.parametrize("sent", [np.float32, np.float64])
@pytest.mark.parametrize("moved", [None, (1, 157), (0, 3)])
def test_the_compiled_loss_is_the_loss(monkeypatch, sent, moved):
    """fd.Problem.loss through the compiled pass: within its own error estimate of the exact
    loss (fsum of the forward's products) of x with the moved elements written into a float64
    copy; sum dy exact (k / 2^10 values); blocks split along s ((2, 8, 160, 160): the moved
    element in the first block of its row, or in a later one); and the pass ran for every block."""
    from bncheck.numerics import fd

    rng = np.random.default_rng(37)
    shape = (2, 8, 160, 160)
    lay = Layout.of(shape, 1)
    x3 = lay.view((rng.standard_normal(shape) * 3 + 2).astype(sent))
    dy3 = lay.view((np.round(rng.standard_normal(shape) * 2**10) / 2**10).astype(sent))
    gamma, beta = rng.uniform(0.5, 1.5, lay.C), rng.standard_normal(lay.C)
    pr = fd.Problem(x3, dy3, gamma, beta, 1e-5, True, None, lay, np)
    patch, written = None, x3.astype(np.float64)
    if moved is not None:
        values = x3[moved[0], :, moved[1]].astype(np.float64) + rng.uniform(0.1, 1.0, lay.C)
        patch = reference.Patch(moved[0], moved[1], values)
        written[moved[0], :, moved[1]] = values
    calls = []
    real = fused.loss_sums
    monkeypatch.setattr(fused, "loss_sums", lambda *a: calls.append(real(*a)) or calls[-1])
    total, err = pr.loss(x3, patch)
    assert len(calls) == len(backend.map_blocks(lambda b: b, lay, np)) > 1
    assert all(c is not None for c in calls)
    st = reference.batch_stats(written, lay, 1e-5, np)
    exact = _exact_loss(written, dy3, gamma, beta, st)
    assert np.all(np.abs(total - exact) <= err)
    assert np.all(np.abs(total - exact) <= 1e-12 * np.abs(exact).max() * lay.R)
    dysum = sum(c[2] for c in calls)
    assert dysum.tolist() == [math.fsum(dy3[:, c, :].astype(np.float64).ravel()) for c in range(lay.C)]


def test_brute_force_differences_either_way(monkeypatch):
    """Brute-force differences (every channel at five positions, blocks split along s) with the
    loss by the compiled pass and by NumPy's: each within its own error of the analytic dx of
    the reference backward, and of each other within their two errors; and checks with
    brute-force and auto differences pass either way."""
    from bncheck.numerics import fd

    rng = np.random.default_rng(41)
    shape = (2, 8, 160, 160)
    lay = Layout.of(shape, 1)
    x3 = lay.view((rng.standard_normal(shape) * 2 + 1).astype(np.float32))
    dy3 = lay.view(rng.standard_normal(shape).astype(np.float32))
    gamma, beta = rng.uniform(0.5, 1.5, lay.C), rng.standard_normal(lay.C)
    pr = fd.Problem(x3, dy3, gamma, beta, 1e-5, True, None, lay, np)
    st = reference.batch_stats(x3, lay, 1e-5, np)
    ref = reference.backward(x3, dy3, gamma, st, lay, training=True, xp=np)
    pos = fd.positions(lay.R, 5, 0)
    p_idx, s_idx = np.divmod(pos, lay.S)
    analytic = ref.dx[p_idx[:, None], np.arange(lay.C)[None, :], s_idx[:, None]]

    def brute():
        return fd.brute_dx(pr, st, ref.dbeta, ref.dgamma / st.invstd, pos, 1e-4)

    compiled = brute()
    monkeypatch.setattr(fused, "loss_sums", lambda *a: None)
    by_numpy = brute()
    monkeypatch.undo()
    for num in (compiled, by_numpy):
        assert np.all(np.abs(num.values - analytic) <= num.error)
    assert np.all(np.abs(compiled.values - by_numpy.values) <= compiled.error + by_numpy.error)
    x, dy = lay.restore(x3), lay.restore(dy3)
    for opts in (FDOptions("brute", samples=3), FDOptions("auto")):
        assert check(x, dy, gamma, beta, finite_difference=opts).passed
        monkeypatch.setattr(fused, "loss_sums", lambda *a: None)
        assert check(x, dy, gamma, beta, finite_difference=opts).passed
        monkeypatch.undo()


def test_batch_statistics_keep_the_sums_of_blocks_a_patch_leaves_alone(monkeypatch):
    """The brute-force differences' patched statistics with the first pass's sums kept: the
    same bits as without (and, the first time, as x3's own), and a later call sums again only
    the block its patch moves."""
    rng = np.random.default_rng(43)
    shape = (2, 8, 160, 160)  # blocks split along s
    lay = Layout.of(shape, 1)
    x3 = lay.view((rng.standard_normal(shape) * 2 + 1).astype(np.float32))
    blocks = len(backend.map_blocks(lambda b: b, lay, np))
    kept = {}
    own = reference.batch_stats(x3, lay, 1e-5, np, None, kept)
    assert len(kept) == blocks
    plain = reference.batch_stats(x3, lay, 1e-5, np)
    assert own.mean.tobytes() == plain.mean.tobytes()
    assert own.var.tobytes() == plain.var.tobytes()
    calls = []
    real = backend.channel_sum
    monkeypatch.setattr(backend, "channel_sum", lambda *a: calls.append(1) or real(*a))
    for p, s in ((0, 3), (1, 25000)):
        patch = reference.Patch(p, s, x3[p, :, s].astype(np.float64) + 0.5)
        calls.clear()
        with_kept = reference.batch_stats(x3, lay, 1e-5, np, patch, kept)
        assert len(calls) == 1 + blocks  # the moved block's first pass, then every block's second
        without = reference.batch_stats(x3, lay, 1e-5, np, patch)
        for a, b in ((with_kept.mean, without.mean), (with_kept.var, without.var), (with_kept.invstd, without.invstd)):
            assert a.tobytes() == b.tobytes()

"""Comparison reports: what they say about a planted error, hand-checked."""

import math

import numpy as np
import pytest

from bncheck.numerics import FDOptions, check, make
from bncheck.numerics.compare import channel_layout, compare
from bncheck.numerics.dtypes import BFLOAT16, ulp
from bncheck.numerics.layout import Layout
from bncheck.numerics.tolerance import default_tolerance, user_tolerance

from .kernels import backward

ABS = user_tolerance(0.0, 1e-3)


def test_planted_error_is_located_exactly():
    lay = Layout.of((4, 3, 2, 5), 1)
    ref = np.arange(lay.M, dtype=np.float64).reshape(lay.shape)
    cand = ref.copy()
    cand[2, 1, 0, 3] += 0.5
    cand[3, 2, 1, 4] += 0.25
    m = compare(cand, ref, tol=ABS, lay=lay, out_dtype=np.float64)
    assert not m.passed
    assert m.worst_index == [2, 1, 0, 3]
    assert (m.mismatched, m.total) == (2, lay.M)
    assert m.max_abs_err == 0.5
    assert m.worst_candidate == ref[2, 1, 0, 3] + 0.5
    assert m.worst_reference == ref[2, 1, 0, 3]
    assert m.rms_err == pytest.approx(math.sqrt((0.25 + 0.0625) / lay.M))
    assert [c.channel for c in m.worst_channels] == [1, 2]
    assert m.worst_channels[0].mismatched == 1
    assert m.channels_failed == 2
    assert m.decided_by == "absolute"


def test_worst_index_in_channels_last_layout():
    lay = Layout.of((2, 3, 4, 5), -1)
    ref = np.ones(lay.shape)
    cand = ref.copy()
    cand[1, 2, 3, 4] = 2.0
    m = compare(cand, ref, tol=ABS, lay=lay, out_dtype=np.float32)
    assert m.worst_index == [1, 2, 3, 4]
    assert m.worst_channels[0].channel == 4


def test_ulps_are_counted_in_the_candidate_dtype():
    ref = np.array([1.0, 1.0, 1.0])
    lay = channel_layout(3)
    one_f32_ulp = np.nextafter(np.float32(1), np.float32(2)).astype(np.float64)
    m32 = compare(np.array([1.0, one_f32_ulp, 1.0]), ref, tol=ABS, lay=lay, out_dtype=np.float32)
    assert m32.max_ulp == pytest.approx(1.0)
    m16 = compare(np.array([1.0, 1.0 + 2**-10, 1.0]), ref, tol=ABS, lay=lay, out_dtype=np.float16)
    assert m16.max_ulp == pytest.approx(1.0)
    mbf = compare(np.array([1.0, 1.0 + 2**-6, 1.0]), ref, tol=ABS, lay=lay, out_dtype=BFLOAT16)
    assert mbf.max_ulp == pytest.approx(2.0)


def test_ulp_function_against_numpy_spacing():
    v = np.array([0.0, 1e-45, 1e-40, 1.5, -3.0, 1e30, 65504.0])
    assert np.array_equal(ulp(v, np.dtype(np.float32)), np.spacing(np.abs(v).astype(np.float32)).astype(np.float64))
    v16 = np.array([0.0, 6e-8, 1e-5, 1.0, 2.5, 60000.0])
    assert np.array_equal(ulp(v16, np.dtype(np.float16)), np.spacing(np.abs(v16).astype(np.float16)).astype(np.float64))


def test_nonfinite_candidates_are_mismatches_not_errors():
    lay = channel_layout(5)
    cand = np.array([1.0, np.nan, 3.0, np.inf, 5.0])
    m = compare(cand, np.arange(1.0, 6.0), tol=ABS, lay=lay, out_dtype=np.float32)
    assert not m.passed
    assert m.nonfinite == 2
    assert m.mismatched == 2
    assert m.worst_index == [1]
    assert m.worst_candidate == "nan"
    assert m.decided_by == "nonfinite"
    assert m.max_abs_err == 0.0  # over the finite elements
    assert math.isinf(m.tol_ratio)


def test_cancellation_is_detected_and_the_natural_scale_decides():
    """Constant dy: dx is 0 exactly. A correct float32 kernel's dx is rounding noise:
    relative error is meaningless, the natural scale passes it."""
    case = make("constant_dy").cast("float32")
    r = check(case.x, case.dy, **case.kwargs(), dtype="float32", finite_difference=FDOptions("none"))
    dx = r.checks.variant.tensors["dx"]
    assert dx.cancellation
    assert dx.passed
    assert dx.decided_by in ("natural_scale", "exact")
    dgamma = r.checks.variant.tensors["dgamma"]
    assert dgamma.passed


def _kernel_dx(case):
    out = backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, channel_axis=case.channel_axis)
    return out["dx"]


def test_a_correct_float32_dx_fails_torch_style_relative_tolerance_where_natural_scale_passes():
    case = make("constant_dy", shape=(64, 4))
    kw = {"dtype": "float32", "candidate": {"dx": _kernel_dx(case)}, "finite_difference": FDOptions("none")}
    r = check(case.x, case.dy, **case.kwargs(), **kw)
    assert r.checks.candidate.passed
    assert r.checks.candidate.tensors["dx"].cancellation
    strict = check(case.x, case.dy, **case.kwargs(), tolerance=(1.3e-6, 0.0), **kw)
    assert not strict.checks.candidate.passed
    assert strict.checks.candidate.tensors["dx"].decided_by == "relative"


def test_user_tolerance_is_plain_allclose():
    lay = channel_layout(2)
    tol = user_tolerance(1e-3, 1e-6)
    assert compare(np.array([1.0009, 0.0]), np.array([1.0, 0.0]), tol=tol, lay=lay, out_dtype=np.float64).passed
    assert not compare(np.array([1.0011, 0.0]), np.array([1.0, 0.0]), tol=tol, lay=lay, out_dtype=np.float64).passed


def test_default_tolerances_scale_with_precision_and_reduction():
    f32 = np.dtype(np.float32)
    small, large = default_tolerance(f32, f32, f32, 64), default_tolerance(f32, f32, f32, 1 << 20)
    assert large.atol > 10 * small.atol
    f16 = default_tolerance(np.dtype(np.float16), f32, np.dtype(np.float16), 64)
    assert f16.atol > 50 * small.atol
    assert default_tolerance(np.dtype(np.float64), np.dtype(np.float64), np.dtype(np.float64), 64).atol < 1e-13


def test_scales_are_per_channel():
    """The same absolute error is rounding noise in a channel whose gradients are 1e4
    and a bug in one whose gradients are 1e-4: a correct float32 kernel's worst error in
    channel 0, added to one element of channel 15, is the only failure."""
    case = make("mixed_scales", shape=(64, 16))
    kw = {"dtype": "float32", "finite_difference": FDOptions("none")}
    ref = check(case.x, case.dy, **case.kwargs(), **kw).reference["dx"]
    dx = _kernel_dx(case.cast("float32"))
    delta = float(np.abs(dx[:, 0].astype(np.float64) - ref[:, 0]).max())
    assert delta > 5 * np.abs(ref[:, 15]).max()  # larger than any gradient of channel 15
    dx[5, 15] += np.float32(delta)
    r = check(case.x, case.dy, **case.kwargs(), candidate={"dx": dx}, **kw)
    m = r.checks.candidate.tensors["dx"]
    assert not m.passed
    assert m.worst_index == [5, 15]
    assert m.channels_failed == 1
    assert m.mismatched == 1


def test_metrics_that_mean_nothing_on_this_data_are_not_applicable():
    """Constant dy: the true dx is 0, so relative error and ulps of dx mean nothing (None, "n/a"),
    where the first release printed figures such as max_ulp 4.49e+307 beside "ok"."""
    case = make("constant_dy", shape=(64, 4))
    kw = {"dtype": "float32", "candidate": {"dx": _kernel_dx(case)}, "finite_difference": FDOptions("none")}
    dx = check(case.x, case.dy, **case.kwargs(), **kw).checks.candidate.tensors["dx"]
    assert dx.cancellation
    assert (dx.max_rel_err, dx.max_ulp) == (None, None)
    assert dx.passed


def test_ulps_are_counted_over_non_zero_references_only():
    lay = channel_layout(3)
    ref = np.array([0.0, 1.0, 2.0])
    cand = ref + np.array([1e-30, 2 * np.spacing(np.float32(1.0)), 0.0])
    m = compare(cand.astype(np.float32), ref, tol=ABS, lay=lay, out_dtype=np.float32)
    assert m.max_ulp == pytest.approx(2.0)  # not 1e-30 over the smallest subnormal


@pytest.mark.parametrize("bug", [None, "zeroed_channel", "dx_scaled"])
def test_tol_ratio_can_be_recomputed_from_the_report(bug):
    case = make("normal", shape=(8, 6, 3, 3)).cast("float16")
    out = backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, dtype="float16", bug=bug)
    r = check(case.x, case.dy, **case.kwargs(), candidate={k: out[k] for k in ("dx", "dgamma", "dbeta")},
              finite_difference=FDOptions("none"))
    for m in r.checks.candidate.tensors.values():
        err = abs(float(m.worst_candidate) - m.worst_reference)
        assert m.tol_ratio == pytest.approx(err / m.worst_allowed, rel=1e-9, abs=1e-300)
        assert m.worst_allowed <= m.resolution.max_abs

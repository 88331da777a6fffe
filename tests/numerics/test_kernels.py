"""Default tolerances: correct kernels pass on every stress case; broken ones fail, named."""

import numpy as np
import pytest

from bncheck.numerics import CASES, FDOptions, check, make

from .kernels import BUGS, backward

NO_FD = FDOptions(method="none")
DTYPES = ("float32", "float16", "bfloat16")


def _candidate_check(case, dtype, out):
    return check(case.x, case.dy, **case.kwargs(), dtype=dtype, candidate=out, finite_difference=NO_FD)


def _run_kernel(case, dtype, **kw):
    return backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, channel_axis=case.channel_axis,
                    dtype=dtype, **kw)


def _fitting(dtypes):
    return [(name, dt) for name in CASES for dt in dtypes if make(name).fits(dt)]


@pytest.mark.parametrize(("name", "dtype"), _fitting(DTYPES))
@pytest.mark.parametrize("stats", ["two_pass", "welford"])
def test_correct_kernel_passes_every_stress_case(name, dtype, stats):
    case = make(name).cast(dtype)
    out = _run_kernel(case, dtype, stats=stats)
    report = _candidate_check(case, dtype, out)
    block = report.checks.candidate
    failed = {k: (m.tol_ratio, m.worst_index) for k, m in block.tensors.items() if not m.passed}
    assert block.passed, f"{name}/{dtype}/{stats}: {failed}"
    assert set(block.tensors) == {"dx", "dgamma", "dbeta", "y", "mean", "invstd"}


@pytest.mark.parametrize("layout", [((8, 6, 5, 4), 1), ((8, 5, 4, 6), -1), ((4, 6, 3, 4, 2), 1), ((96, 6), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_correct_kernel_passes_across_layouts(layout, dtype):
    shape, axis = layout
    case = make("normal", shape=shape, channel_axis=axis).cast(dtype)
    report = _candidate_check(case, dtype, _run_kernel(case, dtype))
    assert report.checks.candidate.passed


# Which tensor each bug breaks on the 'normal' NCHW case, in float32.
EXPECTED = {
    "unbiased_var": {"dx", "invstd", "y"},
    "no_dgamma_term": {"dx"},
    "no_mean_term": {"dx"},
    "eps_outside_sqrt": {"dx", "invstd", "y", "dgamma"},
    "one_pass_var": {"invstd"},
    "stale_rows": {"dx"},
    "dgamma_wrong_xhat": {"dgamma"},
    "accum16": {"dgamma", "dbeta"},
    "zeroed_channel": {"dx"},
    "shifted_channel": {"dx"},
    "dbeta_sign_flip": {"dbeta"},
    "dx_scaled": {"dx"},
    "channel_shift": {"dx", "y"},
    "dgamma_no_invstd": {"dgamma"},
    "batch_only_R": {"dx"},
    "swapped_outputs": {"dbeta"},
}


@pytest.mark.parametrize("bug", BUGS)
def test_each_bug_fails_and_names_the_tensor(bug):
    case = make("near_eps" if bug in ("eps_outside_sqrt", "dgamma_wrong_xhat") else "normal").cast("float32")
    if bug == "one_pass_var":
        case = make("mean_offset", shape=(256, 8), seed=3).cast("float32")
    if bug == "batch_only_R":
        case = make("normal", shape=(4, 8, 4, 4)).cast("float32")
    out = _run_kernel(case, "float32", bug=bug)
    report = _candidate_check(case, "float32", out)
    assert not report.passed
    failed = {k for k, m in report.checks.candidate.tensors.items() if not m.passed}
    assert EXPECTED[bug] <= failed, f"{bug}: failed {failed}"


def test_stale_rows_point_at_the_rows_never_written():
    case = make("normal", shape=(64, 8)).cast("float32")
    report = _candidate_check(case, "float32", _run_kernel(case, "float32", bug="stale_rows"))
    dx = report.checks.candidate.tensors["dx"]
    assert dx.worst_index[0] >= 64 - 8
    assert dx.mismatched <= 8 * 8
    assert dx.worst_candidate == 0.0


def test_channel_shift_names_the_channels_whose_gamma_moved():
    case = make("normal", shape=(64, 8)).cast("float32")
    report = _candidate_check(case, "float32", _run_kernel(case, "float32", bug="channel_shift"))
    dx = report.checks.candidate.tensors["dx"]
    differs = {c for c in range(8) if case.gamma[c] != np.roll(case.gamma, 1)[c]}
    assert {ch.channel for ch in dx.worst_channels} <= differs
    assert dx.channels_failed == len(differs)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("bug", ["no_dgamma_term", "no_mean_term", "stale_rows", "swapped_outputs"])
def test_gross_bugs_fail_in_16_bit_too(dtype, bug):
    case = make("normal", shape=(64, 8)).cast(dtype)
    report = _candidate_check(case, dtype, _run_kernel(case, dtype, bug=bug))
    assert not report.checks.candidate.passed


def test_one_pass_variance_is_fine_when_well_conditioned():
    """E[x^2] - E[x]^2 only breaks when |mean|/std is large: a check must not cry wolf."""
    case = make("normal", shape=(64, 8)).cast("float32")
    report = _candidate_check(case, "float32", _run_kernel(case, "float32", bug="one_pass_var"))
    assert report.checks.candidate.passed


def test_float16_kernel_fails_a_float32_check():
    """Output that was rounded to float16 is wrong for a float32 kernel."""
    case = make("normal", shape=(64, 8))
    out = _run_kernel(case, "float32")
    out["dx"] = out["dx"].astype(np.float16).astype(np.float32)
    report = _candidate_check(case.cast("float32"), "float32", out)
    assert not report.checks.candidate.tensors["dx"].passed

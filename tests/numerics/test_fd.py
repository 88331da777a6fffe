"""Finite differences confirm the float64 reference; the methods confirm each other."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bncheck.numerics import CASES, FDOptions, Limits, WorkLimitError, check, fd, make
from bncheck.numerics import reference as ref
from bncheck.numerics.layout import Layout

SMALL = [n for n in CASES if n != "long_reduction"]


def _problem(case, training=True, running=None):
    lay = Layout.of(case.x.shape, case.channel_axis)
    pr = fd.Problem(lay.view(case.x), lay.view(case.dy), case.gamma, case.beta, case.eps, training, running, lay, np)
    return lay, pr


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("method", ["auto", "stats", "brute", "directional"])
def test_every_method_confirms_the_reference_on_every_stress_case(name, method):
    case = make(name)
    r = check(case.x, case.dy, **case.kwargs(), dtype="float64", finite_difference=FDOptions(method))
    block = r.checks.finite_difference
    assert block.passed, {k: (t.tol_ratio, t.max_abs_err) for k, t in block.tensors.items()}
    assert block.method == ("stats" if method == "auto" else method)
    assert set(block.tensors) == {"dx", "dgamma", "dbeta"}


def test_long_reduction_stats_every_element():
    case = make("long_reduction")
    r = check(case.x, case.dy, **case.kwargs(), finite_difference=FDOptions("stats"))
    block = r.checks.finite_difference
    assert block.passed
    assert block.elements == case.x.size
    assert block.tensors["dx"].tol_ratio < 0.1


@pytest.mark.parametrize("name", ["normal", "huge_offset", "near_eps", "constant_channel", "heavy_tails", "tiny_batch"])
def test_stats_agrees_with_brute_element_by_element(name):
    case = make(name, shape=(24, 3, 2))
    lay, pr = _problem(case)
    s = ref.batch_stats(pr.x3, lay, case.eps, np)
    g = ref.backward(pr.x3, pr.dy3, case.gamma, s, lay, training=True, xp=np)
    stats = fd.stats_dx(pr, s, g.dbeta, g.dgamma / s.invstd, 1e-4)
    pos = fd.positions(lay.R, None, 0)
    brute = fd.brute_dx(pr, s, g.dbeta, g.dgamma / s.invstd, pos, 1e-4)
    p_idx, s_idx = np.divmod(pos, lay.S)
    at = stats.values[p_idx[:, None], np.arange(lay.C)[None, :], s_idx[:, None]]
    natural = np.abs(case.gamma) * s.invstd * np.sqrt((pr.dy3**2).mean(axis=(0, 2)))
    assert np.all(np.abs(at - brute.values) <= 1e-7 * natural + 4 * (stats.error + brute.error))


def test_stats_matches_analytic_to_1e_9_across_offsets_and_long_reductions():
    """The first prototype's finding: 1e-9..1e-11 relative with h = 1e-4 * sqrt(var + eps)."""
    for case in (make("huge_offset"), make("mean_offset"), make("near_eps"), make("long_reduction")):
        lay, pr = _problem(case)
        s = ref.batch_stats(pr.x3, lay, case.eps, np)
        g = ref.backward(pr.x3, pr.dy3, case.gamma, s, lay, training=True, xp=np)
        num = fd.stats_dx(pr, s, g.dbeta, g.dgamma / s.invstd, 1e-4)
        natural = np.abs(case.gamma) * s.invstd * np.sqrt((pr.dy3**2).mean(axis=(0, 2)))
        rel = np.abs(num.values - g.dx).max(axis=(0, 2)) / natural
        assert rel.max() < 1e-9, (case.name, rel.max())
        assert num.error.max() < 1e-9 * natural.max()


def test_the_estimated_error_grows_with_the_step():
    case = make("normal", shape=(8, 3))
    lay, pr = _problem(case)
    s = ref.batch_stats(pr.x3, lay, case.eps, np)
    g = ref.backward(pr.x3, pr.dy3, case.gamma, s, lay, training=True, xp=np)
    small = fd.stats_dx(pr, s, g.dbeta, g.dgamma / s.invstd, 1e-4)
    large = fd.stats_dx(pr, s, g.dbeta, g.dgamma / s.invstd, 1e-1)
    assert large.error.max() > 100 * small.error.max()
    # ...and it is honest: the actual error stays below the estimate.
    assert np.all(np.abs(large.values - g.dx).max(axis=(0, 2)) <= 2 * large.error)


def test_a_wrong_reference_is_caught():
    """Feed the finite differences a gradient that is off by 1e-6: the FD check fails."""
    case = make("normal")
    lay, pr = _problem(case)
    s = ref.batch_stats(pr.x3, lay, case.eps, np)
    g = ref.backward(pr.x3, pr.dy3, case.gamma, s, lay, training=True, xp=np)
    num = fd.stats_dx(pr, s, g.dbeta, g.dgamma / s.invstd, 1e-4)
    wrong = g.dx * (1 + 1e-5)
    natural = np.abs(case.gamma) * s.invstd * np.sqrt((pr.dy3**2).mean(axis=(0, 2)))
    assert np.abs(wrong - num.values).max() > 1e-7 * natural.min()


@pytest.mark.parametrize("method", ["stats", "brute", "directional"])
def test_inference_mode(method):
    case = make("normal", shape=(16, 4, 3))
    rng = np.random.default_rng(5)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    r = check(case.x, case.dy, case.gamma, case.beta, training=False, running_mean=rm, running_var=rv,
              variant="all", dtype="float64", finite_difference=FDOptions(method))
    assert r.passed
    invstd = 1 / np.sqrt(rv + 1e-5)
    want = case.dy * (case.gamma * invstd)[None, :, None]
    np.testing.assert_allclose(r.reference["dx"], want, rtol=1e-14)


def test_directional_reports_direction_and_channel():
    case = make("normal", shape=(8, 3, 4))
    r = check(case.x, case.dy, finite_difference=FDOptions("directional", directions=5, seed=7))
    block = r.checks.finite_difference
    assert block.directions == 5
    assert block.tensors["dx"].total == 5 * 3
    assert "direction" in block.tensors["dx"].compared


def test_brute_samples_are_seeded_and_bounded():
    case = make("normal", shape=(64, 4))
    a = check(case.x, case.dy, finite_difference=FDOptions("brute", samples=5, seed=1))
    b = check(case.x, case.dy, finite_difference=FDOptions("brute", samples=5, seed=1))
    assert a.checks.finite_difference.samples == 5
    assert a.checks.finite_difference.tensors["dx"].max_abs_err == b.checks.finite_difference.tensors["dx"].max_abs_err


def test_work_limit_downgrades_brute_with_a_note():
    """A brute position costs two forwards of every element (x moved by h each way)."""
    case = make("normal", shape=(64, 4))
    r = check(case.x, case.dy, finite_difference=FDOptions("brute"), limits=Limits(fd_work=2 * 256 * 10))
    block = r.checks.finite_difference
    assert block.samples == 10
    assert any("work limit" in n for n in block.notes)


def test_work_limit_refuses_what_cannot_fit():
    case = make("normal", shape=(64, 4))
    with pytest.raises(WorkLimitError, match="finite_difference"):
        check(case.x, case.dy, finite_difference=FDOptions("directional"), limits=Limits(fd_work=100))


def test_saved_statistics_are_used_and_judged():
    case = make("normal", shape=(32, 4))
    lay = Layout.of(case.x.shape, 1)
    s = ref.batch_stats(lay.view(case.x), lay, case.eps, np)
    good = check(case.x, case.dy, **case.kwargs(), saved_mean=s.mean, saved_invstd=s.invstd, dtype="float64")
    assert good.passed
    bad_invstd = s.invstd.copy()
    bad_invstd[2] *= 1 + 1e-3
    bad = check(case.x, case.dy, **case.kwargs(), saved_mean=s.mean, saved_invstd=bad_invstd, dtype="float64")
    saved = bad.checks.saved_statistics
    assert not saved.passed
    assert saved.tensors["mean"].passed
    assert saved.tensors["invstd"].worst_index == [2]
    assert bad.checks.variant.passed  # the variant uses the saved statistics consistently
    assert bad.checks.finite_difference.passed  # the FD verifies x's own reference
    assert not np.allclose(bad.reference["dx"][:, 2], good.reference["dx"][:, 2], rtol=1e-6)


@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple),
    axis_pick=st.integers(0, 100),
    eps=st.floats(1e-8, 1.0),
    seed=st.integers(0, 2**16),
)
def test_property_any_layout_and_eps(shape, axis_pick, eps, seed):
    axis = axis_pick % len(shape) - (len(shape) if axis_pick % 2 else 0)
    rng = np.random.default_rng(seed)
    x, dy = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    C = shape[axis]
    r = check(x, dy, rng.standard_normal(C), rng.standard_normal(C), eps=eps, channel_axis=axis, variant="all",
              dtype="float64", finite_difference=FDOptions("brute"))
    assert r.passed, [(k, b.passed) for k, b in vars(r.checks).items() if b is not None]
    assert r.reduce_size * C == x.size


@pytest.mark.parametrize("name", [n for n in SMALL if n != "single_element"])
def test_the_error_bound_holds_and_is_tight_where_truncation_rules(name):
    """The stats error is a bound (Taylor's remainder and the size of the rounded terms), not an
    estimate: every channel's actual error against the analytic dx stays below it, at the
    default step (1e-4) and a large one (1e-1); so does brute's, at sampled positions. At the
    large step the bound is within 10x of the worst actual error (it takes the channel's
    largest |d| and |b| term by term; where they sit in one element, as in a constant channel,
    it is the error itself)."""
    case = make(name)
    lay, pr = _problem(case)
    s = ref.batch_stats(pr.x3, lay, case.eps, np)
    g = ref.backward(pr.x3, pr.dy3, case.gamma, s, lay, training=True, xp=np)
    for step in (1e-4, 1e-1):
        num = fd.stats_dx(pr, s, g.dbeta, g.dgamma / s.invstd, step)
        actual = np.abs(num.values - g.dx).max(axis=(0, 2))
        # the reference's own rounding, a few ulps of its terms, comes on top of the bound
        slack = 64 * 2.0**-53 * np.abs(case.gamma) * s.invstd * np.abs(pr.dy3).max(axis=(0, 2)) * 4
        assert np.all(actual <= num.error + slack), (step, actual / num.error)
        # brute: the same central difference through the real forward, its truncation bounded alike
        pos = fd.positions(lay.R, 8, 0)
        p_idx, s_idx = np.divmod(pos, lay.S)
        at = (p_idx[:, None], np.arange(lay.C)[None, :], s_idx[:, None])
        brute = fd.brute_dx(pr, s, g.dbeta, g.dgamma / s.invstd, pos, step)
        assert np.all(np.abs(brute.values - g.dx[at]) <= brute.error + slack), step
    assert actual.max() >= num.error.max() / 10, (actual.max(), num.error.max())


def test_judged_block_by_block_is_the_comparison_of_the_kept_values():
    """A check judges each block of differences while it is in cache and never keeps them: the
    metrics must be those of comparing the whole, kept array, on a tensor of many blocks
    (several threads, per-thread scratch shared by the difference and the comparison)."""
    from bncheck.numerics.compare import SCRATCH, Comparison, compare
    from bncheck.numerics.tolerance import fd_tolerance

    rng = np.random.default_rng(3)
    shape = (8, 6, 96, 96)  # 442,368 elements: blocks on both threads
    x, dy = rng.standard_normal(shape) * 2 + 3, rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    lay = Layout.of(shape, 1)
    pr = fd.Problem(lay.view(x.astype(np.float32)), lay.view(dy.astype(np.float32)), gamma, beta, 1e-5, True, None,
                    lay, np)
    s = ref.batch_stats(pr.x3, lay, 1e-5, np)
    g = ref.backward(pr.x3, pr.dy3, gamma, s, lay, training=True, xp=np)
    raw = g.dgamma / s.invstd
    wrong = g.dx.copy()
    wrong[3, 4, 17] += 1e-4  # one element off: the judge must find it where it is
    diff = fd.StatsDifference(pr, s, g.dbeta, raw, 1e-4)
    scale = np.abs(wrong) + 1.0
    judge = Comparison(wrong, tol=fd_tolerance(), lay=lay, out_dtype=np.float64, scale=scale, extra=4 * diff.error)
    parts, dgamma, dbeta = diff.judged(judge.part, clear=SCRATCH)
    got = judge.metrics(parts)
    kept = fd.stats_dx(pr, s, g.dbeta, raw, 1e-4)
    want = compare(wrong, kept.values, tol=fd_tolerance(), lay=lay, out_dtype=np.float64, scale=scale,
                   extra=4 * kept.error)
    assert got == want
    assert not got.passed
    assert got.mismatched == 1
    assert got.worst_index == list(np.unravel_index(lay.view_shape[2] * (3 * 6 + 4) + 17, shape))
    # dgamma and dbeta from their forwards, within their error of the reference's
    assert np.all(np.abs(dgamma.values - g.dgamma) <= 4 * dgamma.error + 1e-9 * np.abs(g.dgamma))
    assert np.all(np.abs(dbeta.values - g.dbeta) <= 4 * dbeta.error + 1e-9 * np.abs(g.dbeta))


def test_a_check_catches_a_wrong_reference_in_the_channel_where_it_is(monkeypatch):
    """The finite-difference block of a whole check (many blocks, the fused pass) fails when the
    reference is off in one channel of dx (by 1e-6) and another of dgamma (by 1e-3: its natural
    scale, sum |dy| (1 + |xhat|), is some sqrt(R) times dgamma), and names them; the tolerance
    is 1e-7 of the natural scale."""
    import importlib

    check_module = importlib.import_module("bncheck.numerics.check")
    real = ref.backward

    def off(*args, **kwargs):
        g = real(*args, **kwargs)
        g.dx[:, 2, :] *= 1 + 1e-6
        g.dgamma[1] *= 1 + 1e-3
        return g

    monkeypatch.setattr(check_module.reference, "backward", off)
    rng = np.random.default_rng(8)
    shape = (8, 4, 128, 128)
    x, dy = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
    r = check(x, dy, rng.standard_normal(4), rng.standard_normal(4), finite_difference=FDOptions("stats"))
    block = r.checks.finite_difference
    assert not block.passed
    # channel 1's dx too: the differences take B = sum(dy * (x - mean)) from the reference's dgamma
    assert block.tensors["dx"].failed_channels == "1-2"
    assert block.tensors["dgamma"].failed_channels == "1"
    assert block.tensors["dbeta"].passed


@pytest.mark.parametrize(("shape", "axis", "dtype"), [
    ((8, 6, 96, 96), 1, np.float32),  # row blocks on both threads
    ((2, 4, 256, 256), 1, np.float32),  # few rows: blocks split along S
    ((100000, 3), 1, np.float64),  # (N, C), x taken as it is (no float64 copy of its own)
    ((16, 64, 64, 5), -1, np.float32),  # channels-last
    ((16, 3, 4), 1, np.float32),  # one block
])
def test_a_patch_is_a_float64_copy_with_the_values_written_in(shape, axis, dtype):
    """brute moves x through a Patch instead of a copy of x: the batch statistics and the loss
    must be those of a float64 copy with the moved values written in, bit for bit, wherever
    the moved elements fall among the blocks."""
    rng = np.random.default_rng(6)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    lay = Layout.of(shape, axis)
    C = lay.C
    pr = fd.Problem(lay.view(x), lay.view(dy), rng.standard_normal(C), rng.standard_normal(C), 1e-5, True, None,
                    lay, np)
    for j in (0, lay.R - 1, lay.R // 2, int(rng.integers(lay.R))):
        p, s = divmod(j, lay.S)
        values = pr.x3[p, :, s] + 1e-3 * rng.standard_normal(C)
        copy = pr.x3.astype(np.float64)
        copy[p, :, s] = values
        patch = ref.Patch(p, s, values)
        want, got = ref.batch_stats(copy, lay, 1e-5, np), ref.batch_stats(pr.x3, lay, 1e-5, np, patch)
        assert _bits(got.mean) == _bits(want.mean)
        assert _bits(got.var) == _bits(want.var)
        for a, b in zip(pr.loss(pr.x3, patch), pr.loss(copy), strict=True):
            assert _bits(a) == _bits(b)


def _bits(a):
    return np.asarray(a, dtype=np.float64).view(np.int64).tolist()


@pytest.mark.parametrize("name", ["normal", "huge_offset", "f16_range", "heavy_tails"])
def test_inference_differences_stay_within_their_bound(name):
    """Inference mode: y is linear in x, so the difference is dy * gamma * invstd up to the
    rounding of the two forwards, which the bound (from the channel's extremes) holds, at the
    default step and a large one, even where x + h rounds (|mean| >> std), without being
    orders of magnitude above it."""
    case = make(name)
    lay = Layout.of(case.x.shape, case.channel_axis)
    rng = np.random.default_rng(9)
    running = ref.stats_from_var(rng.standard_normal(lay.C) + case.x.mean(), rng.uniform(0.5, 2.0, lay.C), case.eps,
                                 np)
    lay, pr = _problem(case, training=False, running=running)
    analytic = pr.dy3 * lay.per_channel(case.gamma * running.invstd)
    for step in (1e-4, 1e-1):
        num = fd.stats_dx(pr, running, None, None, step)
        actual = np.abs(num.values - analytic).max(axis=(0, 2))
        assert np.all(actual <= num.error), (step, actual / num.error)
        assert (actual / num.error).max() >= 0.01  # a bound on rounding, not a blanket (measured 1.7-7%)

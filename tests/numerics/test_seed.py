"""bncheck's variants against the seed gist itself, run literally."""

import numpy as np
import pytest

from bncheck.numerics import VARIANTS, check, make
from bncheck.numerics.backend import pairwise_channel_sum
from bncheck.numerics.layout import Layout
from bncheck.numerics.precision import make_arith
from bncheck.numerics.variants import forward_cache

from .seed_gist import SEED, batchnorm_forward


def _ours(name, x, dy, gamma, eps, dtype):
    lay = Layout.of(x.shape, 1)
    ar = make_arith(dtype, dtype, shape=lay.view_shape, xp=np)
    cache = forward_cache(ar.load(lay.view(x)), ar.param(gamma), ar, eps=eps)
    g = VARIANTS[name].fn(ar.load(lay.view(dy)), cache, ar)
    return lay.restore(g.dx), g.dgamma.reshape(-1), g.dbeta.reshape(-1)


@pytest.mark.parametrize("name", list(SEED))
def test_float64_matches_the_seed_on_its_own_demo(name):
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 4)), rng.standard_normal((2, 4))
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    _, cache = batchnorm_forward(x, gamma, beta, 0.01)
    want = SEED[name](dy, cache)
    got = _ours(name, x, dy, gamma, 0.01, "float64")
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, np.reshape(w, g.shape), rtol=1e-12, atol=1e-14)


def test_rocking_seed_has_the_extra_axis_and_ours_does_not():
    rng = np.random.default_rng(1)
    x, dy, gamma = rng.standard_normal((8, 3)), rng.standard_normal((8, 3)), rng.standard_normal(3)
    _, cache = batchnorm_forward(x, gamma, np.zeros(3), 1e-5)
    seed_dx = SEED["rocking"](dy, cache)[0]
    assert seed_dx.shape == (1, 8, 3)
    report = check(x, dy, gamma, variant="rocking", dtype="float64")
    assert report.gradients["dx"].shape == (8, 3)


@pytest.mark.parametrize("name", ["kevin", "rocking", "qianfeng"])
def test_float32_rounds_like_the_seed_run_in_float32(name):
    """With float32 inputs and float32 sums in the same order, the seed and ours round alike,
    bit for bit. The seed sums with NumPy's row-by-row axis-0 sum; with N = 2 rows the
    pairwise order is the same."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    dy = rng.standard_normal((2, 16)).astype(np.float32)
    gamma = rng.standard_normal(16).astype(np.float32)
    _, cache = batchnorm_forward(x, gamma, np.zeros(16, np.float32), np.float32(1e-3))
    want = SEED[name](dy, cache)
    got = _ours(name, x, dy, gamma, 1e-3, "float32")
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(g, np.reshape(w, g.shape).astype(np.float32))


def test_seed_staged_is_not_float32_arithmetic():
    """The seed's staged formula multiplies by np.ones((N, D)), which is float64: its float32
    run quietly computes half its steps in float64. Ours stays in the requested precision."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    dy = rng.standard_normal((2, 16)).astype(np.float32)
    gamma = rng.standard_normal(16).astype(np.float32)
    _, cache = batchnorm_forward(x, gamma, np.zeros(16, np.float32), np.float32(1e-3))
    assert SEED["staged"](dy, cache)[0].dtype == np.float64
    assert _ours("staged", x, dy, gamma, 1e-3, "float32")[0].dtype == np.float32


def test_pairwise_sum_equals_the_seed_sum_for_two_rows():
    a = np.random.default_rng(3).standard_normal((2, 5, 1)).astype(np.float32)
    assert np.array_equal(pairwise_channel_sum(a, np).reshape(-1), np.sum(a[:, :, 0], axis=0))


@pytest.mark.parametrize("name", list(SEED))
def test_stress_cases_in_float64_agree_with_the_seed(name):
    for case_name in ("normal", "near_eps", "constant_dy", "tiny_batch", "heavy_tails"):
        case = make(case_name, shape=(32, 6))
        _, cache = batchnorm_forward(case.x, case.gamma, case.beta, case.eps)
        want = SEED[name](case.dy, cache)
        got = _ours(name, case.x, case.dy, case.gamma, case.eps, "float64")
        scale = np.abs(case.gamma) / np.sqrt(case.x.var(0) + case.eps) * np.sqrt((case.dy**2).mean(0))
        np.testing.assert_allclose(got[0], np.reshape(want[0], got[0].shape), rtol=0, atol=1e-12 * scale.max())

"""Every variant against the float64 reference, across stress cases and layouts, plus invariants."""

import numpy as np
import pytest

from bncheck.numerics import CASES, VARIANTS, FDOptions, check, make
from bncheck.numerics.layout import Layout
from bncheck.numerics.precision import make_arith
from bncheck.numerics.variants import forward_cache

LAYOUTS = [((6, 5), 1), ((4, 3, 5, 2), 1), ((4, 5, 2, 3), -1), ((2, 3, 2, 3, 2), 1), ((3, 4, 5), 2), ((5, 3, 4), 0)]
NO_FD = FDOptions(method="none")
SMALL = [n for n in CASES if n != "long_reduction"]


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_all_variants_match_the_reference_in_float64(name, shape, axis):
    case = make(name, shape=shape, channel_axis=axis)
    r = check(case.x, case.dy, **case.kwargs(), variant="all", dtype="float64", finite_difference=NO_FD)
    block = r.checks.variants
    assert block.passed, {v: {k: t.tol_ratio for k, t in b.tensors.items()} for v, b in block.variants.items()}
    assert set(block.variants) == set(VARIANTS)
    for b in block.variants.values():
        assert b.tensors["dx"].tol_ratio < 0.5


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_long_reduction_float64(variant):
    case = make("long_reduction")
    r = check(case.x, case.dy, **case.kwargs(), variant=variant, dtype="float64", finite_difference=NO_FD)
    assert r.checks.variant.passed
    assert r.reduce_size == 1 << 20


def _variant_dx(name, case, dtype="float64"):
    lay = Layout.of(case.x.shape, case.channel_axis)
    ar = make_arith(dtype, None, shape=lay.view_shape, xp=np)
    cache = forward_cache(ar.load(lay.view(case.x)), ar.param(case.gamma), ar, eps=case.eps)
    return lay, cache, VARIANTS[name].fn(ar.load(lay.view(case.dy)), cache, ar)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", ["normal", "heavy_tails", "mixed_scales", "near_eps", "mean_offset"])
def test_per_channel_invariants(variant, name):
    """Shifting x within a channel leaves y alone, so per channel sum(dx) = 0.
    Scaling it would too, were it not for eps: exactly,
    sum(dx * xhat) = gamma * eps * invstd^3 * dgamma, which is only ~0 when var >> eps."""
    case = make(name, shape=(32, 4, 3, 2))
    lay, cache, g = _variant_dx(variant, case)
    ivar = cache.ivar.reshape(-1)
    natural = np.abs(case.gamma) * ivar * np.sqrt((lay.view(case.dy) ** 2).mean(axis=(0, 2)))
    bound = 1e-11 * lay.R * natural
    assert np.all(np.abs(g.dx.sum(axis=(0, 2))) <= bound)
    scaled = (g.dx * cache.xhat).sum(axis=(0, 2))
    exact = case.gamma * case.eps * ivar**3 * g.dgamma.reshape(-1)
    assert np.all(np.abs(scaled - exact) <= bound)


def test_the_variants_round_differently_in_float16():
    case = make("heavy_tails", shape=(512, 4)).cast("float16")
    dxs = {name: _variant_dx(name, case, "float16")[2].dx for name in VARIANTS}
    distinct = {d.tobytes() for d in dxs.values()}
    assert len(distinct) >= 3


def test_rocking_keeps_the_input_shape():
    case = make("normal", shape=(3, 4, 5))
    r = check(case.x, case.dy, **case.kwargs(), variant="rocking", finite_difference=NO_FD)
    assert r.gradients["dx"].shape == (3, 4, 5)


def test_registry_is_complete_and_documented():
    assert list(VARIANTS) == ["staged", "kevin", "rocking", "qianfeng"]
    for v in VARIANTS.values():
        assert v.summary
        assert v.formula
        assert v.reference.startswith("https://")
        assert v.seed_function
        assert callable(v.fn)


def test_a_fifth_variant_is_one_function_and_one_entry(monkeypatch):
    from bncheck.numerics import variants

    def textbook(dy, c, ar):
        dbeta = ar.csum(dy)
        dgamma = ar.csum(dy * c.xhat)
        return variants.Grads(c.gamma * c.ivar * (dy - dbeta / ar.R - c.xhat * dgamma / ar.R), dgamma, dbeta)

    entry = variants.Variant("textbook", "PyTorch's arrangement", "...", "https://pytorch.org", "-", textbook)
    monkeypatch.setitem(variants.VARIANTS, "textbook", entry)
    case = make("normal")
    r = check(case.x, case.dy, **case.kwargs(), variant="textbook", finite_difference=NO_FD)
    assert r.passed
    assert "textbook" in check(case.x, case.dy, variant="all", finite_difference=NO_FD).checks.variants.variants


def test_variants_all_reports_spread_and_no_single_gradients():
    case = make("heavy_tails")
    r = check(case.x, case.dy, **case.kwargs(), variant="all", dtype="float32", finite_difference=NO_FD)
    assert r.gradients is None
    assert r.checks.variant is None
    spread = r.checks.variants.spread
    assert spread["dx"] > 0
    assert len(r.checks.variants.spread_pair["dx"]) == 2
    assert spread["dbeta"] == 0.0  # every variant computes sum(dy) the same way


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gradient_dtypes_follow_storage_and_accumulation(dtype):
    case = make("normal")
    r = check(case.x, case.dy, **case.kwargs(), dtype=dtype, finite_difference=NO_FD)
    assert r.gradients["dx"].dtype.name == dtype
    assert r.gradients["dgamma"].dtype == np.float32
    assert r.accum_dtype == "float32"


def test_pure_float16_arithmetic_overflows_where_float32_accumulation_does_not():
    """qianfeng's R*dy overflows float16 for large dy: a finding, reported as non-finite."""
    case = make("normal", shape=(4096, 2))
    dy = case.dy * 100
    pure = check(case.x, dy, dtype="float16", accum_dtype="float16", finite_difference=NO_FD)
    mixed = check(case.x, dy, dtype="float16", finite_difference=NO_FD)
    assert not pure.checks.variant.passed
    assert pure.checks.variant.tensors["dx"].nonfinite > 0
    assert pure.checks.variant.tensors["dx"].decided_by == "nonfinite"
    assert mixed.checks.variant.passed

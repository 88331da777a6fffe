"""The CuPy path agrees with the CPU path. Skipped cleanly without a CUDA device (CI has none)."""

import numpy as np
import pytest

from bncheck.numerics import VARIANTS, FDOptions, InputError, check, make
from bncheck.numerics.backend import gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="no CUDA device (CuPy)")]

# Every thread layout of kernels.py: packed (C <= 256), rows (C > 256), planes (S > 1).
LAYOUTS = [((4096, 8), 1), ((64, 300), 1), ((8, 16, 8, 8), 1), ((8, 6, 6, 16), -1), ((2, 4, 3, 5, 7), 1)]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
NO_FD = FDOptions("none")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("shape", "axis"), LAYOUTS)
def test_variants_on_gpu_agree_with_the_cpu(variant, dtype, shape, axis):
    case = make("normal", shape=shape, channel_axis=axis).cast(dtype)
    kw = {**case.kwargs(), "variant": variant, "dtype": dtype, "finite_difference": NO_FD}
    gpu = check(case.x, case.dy, device="gpu", **kw)
    assert gpu.device == "gpu"
    assert gpu.checks.variant.passed, {k: t.tol_ratio for k, t in gpu.checks.variant.tensors.items()}
    cpu = check(case.x, case.dy, device="cpu", candidate=gpu.gradients, **kw)
    assert cpu.checks.candidate.passed, {k: t.tol_ratio for k, t in cpu.checks.candidate.tensors.items()}
    for name in ("dx", "dgamma", "dbeta"):
        assert gpu.gradients[name].dtype == cpu.gradients[name].dtype
        np.testing.assert_allclose(gpu.reference[name], cpu.reference[name], rtol=1e-10,
                                   atol=1e-12 * np.abs(cpu.reference[name]).max())


@pytest.mark.parametrize("name", ["normal", "mean_offset", "near_eps", "constant_channel", "constant_dy",
                                  "heavy_tails", "tiny_batch", "single_element", "mixed_scales"])
@pytest.mark.parametrize("method", ["auto", "stats", "brute", "directional"])
def test_finite_differences_on_gpu(name, method):
    case = make(name)
    r = check(case.x, case.dy, **case.kwargs(), dtype="float64", device="gpu", finite_difference=FDOptions(method))
    assert r.passed, {k: t.tol_ratio for k, t in r.checks.finite_difference.tensors.items()}
    cpu = check(case.x, case.dy, **case.kwargs(), dtype="float64", device="cpu", finite_difference=FDOptions(method))
    assert r.checks.finite_difference.method == cpu.checks.finite_difference.method


def test_long_reduction_on_gpu():
    case = make("long_reduction").cast("float32")
    r = check(case.x, case.dy, **case.kwargs(), variant="all", device="gpu", finite_difference=FDOptions("stats"))
    assert r.passed


def test_candidates_inference_and_saved_statistics_on_gpu():
    case = make("normal", shape=(64, 8, 4))
    ref = check(case.x, case.dy, **case.kwargs(), dtype="float64").reference
    dx = ref["dx"].astype(np.float32)
    dx[3, 2, 1] += 1.0
    r = check(case.x, case.dy, **case.kwargs(), device="gpu", candidate={"dx": dx, "dgamma": ref["dgamma"]})
    m = r.checks.candidate.tensors["dx"]
    assert not m.passed
    assert m.worst_index == [3, 2, 1]
    assert m.mismatched == 1
    assert r.checks.candidate.tensors["dgamma"].passed
    rm, rv = np.zeros(8), np.ones(8)
    inf = check(case.x, case.dy, **case.kwargs(), training=False, running_mean=rm, running_var=rv, device="gpu",
                variant="all")
    assert inf.passed
    mean = case.x.mean(axis=(0, 2))
    invstd = 1 / np.sqrt(case.x.var(axis=(0, 2)) + case.eps)
    saved = check(case.x, case.dy, **case.kwargs(), saved_mean=mean, saved_invstd=invstd, device="gpu")
    assert saved.passed


def test_auto_picks_the_gpu_and_bfloat16_accumulation_is_refused():
    case = make("normal")
    assert check(case.x, case.dy, device="auto", finite_difference=NO_FD).device == "gpu"
    with pytest.raises(InputError, match="accum_dtype"):
        check(case.x, case.dy, dtype="bfloat16", accum_dtype="bfloat16", device="gpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4096, 8, 1), (1 << 16, 3, 1), (64, 300, 1), (8, 16, 64), (3, 5, 7),
                                   (2, 3, 1 << 16)])
def test_generated_kernels_are_exact_on_the_gpu(shape, dtype):
    """Integer-valued data: the channel sums must be exact, the element-wise map bit-identical
    to NumPy, and the generated kernels (not CuPy's fallbacks) must be the ones that ran."""
    import cupy as cp

    from bncheck.numerics import backend, variants

    rng = np.random.default_rng(0)
    a, b = (rng.integers(-8, 9, size=shape).astype(dtype) for _ in range(2))
    g = rng.integers(-3, 4, size=(1, shape[1], 1)).astype(dtype)
    two = dtype(2.0)
    terms = [(backend.same, (a,)), (variants._mul, (a, b)), (variants._staged_divar_terms, (a, g, b))]
    got = backend.channel_sums([(fn, tuple(cp.asarray(v) if isinstance(v, np.ndarray) else v for v in args))
                                for fn, args in terms], shape, cp)
    for (fn, args), s in zip(terms, got, strict=True):
        want = fn(*[v.astype(np.float64) for v in args]).sum(axis=(0, 2), keepdims=True)
        np.testing.assert_array_equal(s.get(), want.astype(dtype))
    args = (two, g, g, two, a, g, b, g)
    out = backend.elementwise(variants._qianfeng_dx, shape, cp)(
        *[cp.asarray(v) if isinstance(v, np.ndarray) else v for v in args])
    np.testing.assert_array_equal(out.get().view(np.uint8), variants._qianfeng_dx(*args).view(np.uint8))
    assert backend.STATE.raw_kernels_ok, backend.STATE.raw_kernel_errors
    np.testing.assert_array_equal(backend.channel_sum(cp.asarray(a), cp).get(), a.astype(np.float64).sum(axis=(0, 2)))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize(("shape", "axis"), [((4096, 8), 1), ((8, 16, 8, 8), 1), ((8, 6, 6, 16), -1)])
def test_calibrated_verdict_on_gpu_matches_the_cpu(dtype, shape, axis):
    """The same ensemble on the device: the same verdict on a correct kernel and a planted bug,
    and envelopes of the same size (the members' sums run in the same orders)."""
    from .kernels import backward

    case = make("normal", shape=shape, channel_axis=axis).cast(dtype)
    kw = {**case.kwargs(), "dtype": dtype, "finite_difference": NO_FD}
    for bug in (None, "zeroed_channel", "no_mean_term"):
        out = backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, channel_axis=axis, dtype=dtype, bug=bug)
        out = {k: out[k] for k in ("dx", "dgamma", "dbeta")}
        gpu = check(case.x, case.dy, device="gpu", candidate=out, **kw)
        cpu = check(case.x, case.dy, device="cpu", candidate=out, **kw)
        assert gpu.checks.candidate.passed == cpu.checks.candidate.passed == (bug is None)
        for name, m in cpu.checks.candidate.tensors.items():
            g = gpu.checks.candidate.tensors[name].tolerance.envelope
            assert 0.5 * m.tolerance.envelope <= g <= 2 * m.tolerance.envelope, (name, g, m.tolerance.envelope)


def test_warming_compiles_what_the_first_checks_need():
    """After warm_device, the first checks of the warmed layouts, in every warmed dtype, compile
    no kernel of their own (the generated ones and CuPy's fused fallbacks alike)."""
    from bncheck.numerics import backend
    from bncheck.numerics.check import WARM_DTYPES, WARM_SHAPES, warm_device

    assert warm_device("gpu")
    built = (len(backend.STATE.raw_kernels), len(backend.STATE.fused))
    assert built[0] > 0
    for shape in WARM_SHAPES:
        case = make("normal", shape=shape, seed=3)
        for dtype in WARM_DTYPES:
            assert check(case.x, case.dy, **case.kwargs(), dtype=dtype, device="gpu").passed
    assert (len(backend.STATE.raw_kernels), len(backend.STATE.fused)) == built

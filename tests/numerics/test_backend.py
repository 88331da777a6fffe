"""Dispatch, reductions and rounding: the CPU path never imports CuPy."""

import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from bncheck.numerics import backend
from bncheck.numerics.errors import DeviceUnavailableError
from bncheck.numerics.layout import Layout


def test_cpu_path_never_imports_cupy():
    code = (
        "import sys\n"
        "from bncheck.numerics import check, make\n"
        "c = make('normal')\n"
        "r = check(c.x, c.dy, **c.kwargs(), variant='all', device='cpu')\n"
        "assert r.passed\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
        "import bncheck.server, bncheck.client\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported by the web stack'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numerics_never_import_the_web_stack():
    code = (
        "import sys\n"
        "import bncheck.numerics, bncheck.numerics.check\n"
        "bad = {'fastapi', 'starlette', 'pydantic', 'httpx', 'uvicorn'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_namespace_is_numpy_for_numpy_arrays():
    assert backend.namespace(np.ones(3)) is np
    assert backend.resolve_device("cpu") is np


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
def test_asking_for_a_missing_gpu_is_a_clear_error():
    with pytest.raises(DeviceUnavailableError, match="device"):
        backend.resolve_device("gpu")
    assert backend.resolve_device("auto") is np


def test_pairwise_sum_beats_sequential_float32():
    """Pairwise halving keeps float32 sums near log2(R) ulps; the row-by-row sum does not."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((1 << 18, 2, 1)) + 10).astype(np.float32)
    exact = a.astype(np.float64).sum(axis=(0, 2))
    pair = backend.pairwise_channel_sum(a, np).reshape(-1).astype(np.float64)
    seq = np.add.reduce(a[:, :, 0], axis=0).astype(np.float64)
    assert np.all(np.abs(pair - exact) < np.abs(seq - exact))
    assert np.all(np.abs(pair - exact) / exact < 20 * 2**-24)


@pytest.mark.parametrize("shape", [(7, 3, 1), (1, 3, 9), (5, 2, 6), (1, 4, 1), (8, 1, 8)])
def test_channel_sums_agree(shape):
    a = np.random.default_rng(1).standard_normal(shape)
    want = a.sum(axis=(0, 2))
    np.testing.assert_allclose(backend.channel_sum(a, np), want, rtol=1e-14)
    np.testing.assert_allclose(backend.pairwise_channel_sum(a, np).reshape(-1), want, rtol=1e-14)
    np.testing.assert_allclose(backend.channel_dot(a, a, np), (a * a).sum(axis=(0, 2)), rtol=1e-14)


def test_bfloat16_bit_rounding_matches_ml_dtypes():
    """The CuPy path keeps bfloat16 values in float32 and rounds by bit arithmetic;
    NumPy stands in for CuPy here."""
    rng = np.random.default_rng(2)
    v = np.concatenate([rng.standard_normal(10000) * 10.0 ** rng.integers(-30, 30, 10000),
                        [0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 3.3895313892515355e38]]).astype(np.float32)
    got = backend.round_bfloat16_bits(v, np)
    want = v.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_blocks_cover_the_view_exactly_once():
    for shape, axis in [((1000, 64), 1), ((16, 64, 64, 64), 1), ((1, 4, 300000), 1), ((3, 5, 7), 2)]:
        lay = Layout.of(shape, axis)
        seen = np.zeros(lay.view_shape, dtype=np.int64)
        for p, s in lay.blocks(1 << 12):
            seen[p, :, s] += 1
        assert np.all(seen == 1), shape


def test_threaded_reference_equals_single_block(monkeypatch):
    """Splitting big passes into blocks changes the summation order only."""
    from bncheck.numerics import reference

    rng = np.random.default_rng(3)
    lay = Layout.of((2048, 300), 1)
    x3, dy3 = lay.view(rng.standard_normal(lay.shape)), lay.view(rng.standard_normal(lay.shape))
    g = rng.standard_normal(300)
    threaded = reference.backward(x3, dy3, g, reference.batch_stats(x3, lay, 1e-5, np), lay, training=True, xp=np)
    monkeypatch.setenv("BNCHECK_THREADS", "1")
    single = reference.backward(x3, dy3, g, reference.batch_stats(x3, lay, 1e-5, np), lay, training=True, xp=np)
    assert lay.M > 2 * backend.BLOCK_ELEMENTS
    np.testing.assert_allclose(threaded.dx, single.dx, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("shape", [(7, 3, 1), (1, 3, 9), (5, 2, 6), (1, 4, 1), (3000, 5, 1), (40, 3, 70)])
def test_gpu_reduction_strategies_with_numpy_standing_in(shape):
    """The CuPy path's algorithms, run on NumPy: matrix-vector channel sums and the
    two-stage channel max give what the plain reductions give."""
    a = np.random.default_rng(4).standard_normal(shape)
    np.testing.assert_allclose(backend.matvec_channel_sum(a, np), a.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_array_equal(backend.two_stage_channel_max(a, np), a.max(axis=(0, 2)))
    np.testing.assert_array_equal(backend.two_stage_channel_max(a, np, chunks=7), a.max(axis=(0, 2)))


def test_fuse_is_the_identity_on_numpy():
    def f(a, b):
        return a * b + 1

    assert backend.fuse(f, np) is f


class _NumpyPosingAsCupy:
    """NumPy behind a module that is not NumPy, with CuPy's fuse (here the identity)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def fuse(fn):
        return fn


@pytest.mark.parametrize("shape", [(4096, 3, 1), (4099, 3, 1), (1, 5, 1), (37, 4, 1), (6, 4, 25)])
def test_fused_channel_sum_layouts_with_numpy_standing_in(shape):
    """The GPU's fused reductions (rows in chunks, or along S), checked on the CPU."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    g = rng.standard_normal((1, shape[1], 1))

    def fn(a, g, k, b):
        return a * g * k + b

    got = backend.fused_channel_sum(fn, (a, g, 2.0, b), shape, _NumpyPosingAsCupy())
    np.testing.assert_allclose(got.reshape(-1), (a * g * 2.0 + b).sum(axis=(0, 2)), rtol=1e-10, atol=1e-12)
    assert backend.STATE.fused_reduction_ok


def test_every_name_the_callers_use_is_in_all():
    """backend is a façade: what the numerics, tests and benchmarks call is its public API."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[2]
    used = set()
    for folder in ("src", "tests", "bench"):
        for path in (root / folder).rglob("*.py"):
            used |= set(re.findall(r"\bbackend\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text()))
    used -= {"py", "__all__"}  # "backend.py" in prose; this test itself
    assert used <= set(backend.__all__), sorted(used - set(backend.__all__))
    assert all(hasattr(backend, name) for name in backend.__all__)


def test_the_gpu_state_is_one_object_that_resets():
    state = backend.GpuState()
    state.raw_kernels_ok = False
    state.raw_kernel_errors.append("x")
    state.ones[(1, "<f8", 0)] = object()
    state.reset()
    assert state.raw_kernels_ok is True
    assert state.raw_kernel_errors == []
    assert state.ones == {}
    assert backend.GpuState().raw_kernel_errors is not backend.GpuState().raw_kernel_errors


class _Carried:
    """What crossed to a fake device: the host array as handed to ``asarray``."""

    def __init__(self, host: np.ndarray) -> None:
        self.host = host

    def astype(self, dtype: type) -> np.ndarray:  # the conversion on the device
        return self.host.astype(dtype)


class _FakeDevice:
    """An array module that is not NumPy: records the arrays sent to it."""

    float64 = np.float64

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []

    def asarray(self, a: np.ndarray) -> _Carried:
        self.sent.append(a)
        return _Carried(a)


@pytest.mark.parametrize(("dtype", "travels"), [(np.float16, np.float16), (np.float32, np.float32),
                                                (ml_dtypes.bfloat16, np.float32), (np.float64, np.float64)])
def test_arrays_travel_to_the_gpu_in_the_narrowest_exact_dtype_in_c_order(dtype, travels):
    """Half or a quarter of float64's bytes cross the bus; bfloat16 (which CuPy cannot hold) as
    float32; a transposed array arrives in C order; the float64 values made on the device are
    exactly the host's conversion of the data (ml_dtypes' and NumPy's exact widening)."""
    rng = np.random.default_rng(0)
    host = (rng.standard_normal((6, 5)) * 100).astype(dtype).T  # a transposed view: not C-ordered
    dev = _FakeDevice()
    out = backend.as_float64(host, dev)  # type: ignore[arg-type]
    (sent,) = dev.sent
    assert sent.dtype == travels
    assert sent.flags.c_contiguous
    got = out if isinstance(out, np.ndarray) else out.host
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.asarray(host, dtype=np.float64))


@pytest.mark.skipif(backend.gpu_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cpu", "auto", "gpu"])
def test_warming_does_nothing_without_a_gpu(monkeypatch, device):
    """A worker of a CPU server, or of an `auto` or `gpu` one on a machine without a GPU, starts
    as before: no check is run to warm anything (a check here would fail the test)."""
    import importlib

    mod = importlib.import_module("bncheck.numerics.check")

    def no_check(*args, **kwargs):
        raise AssertionError("warm_device ran a check")

    monkeypatch.setattr(mod, "check", no_check)
    assert mod.warm_device(device) is False

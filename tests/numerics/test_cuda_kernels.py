"""The GPU kernels' text, proven on the CPU.

Two oracles: the traced statements, evaluated with NumPy, are bit-identical to
the Python piece they come from; and the compiled kernels, run under the CPU
emulation of CUDA (cuda_emulator.py), give exact channel sums of integer-valued
data and bit-identical element-wise results, for every thread layout, ragged
tiles and chunks, and a counter left at zero for the next launch.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from bncheck.numerics import kernels, variants
from bncheck.numerics.kernels import Untraceable, operands, plan, source, trace

from .cuda_emulator import Emulator, compiler

CTYPE = {np.float32: "float", np.float64: "double"}
INTRINSIC = {"__fmul_rn": np.multiply, "__fadd_rn": np.add, "__fsub_rn": np.subtract, "__fdiv_rn": np.divide,
             "__dmul_rn": np.multiply, "__dadd_rn": np.add, "__dsub_rn": np.subtract, "__ddiv_rn": np.divide}

PIECES = [fn for name, fn in inspect.getmembers(variants, inspect.isfunction)
          if name.startswith("_") and fn.__module__ == variants.__name__]


def evaluate(lines: list[str], result: str, env: dict[str, np.ndarray]) -> np.ndarray:
    """Run traced CUDA statements with NumPy: ``const T name = f(a, b);`` or ``= -a;``."""
    env = dict(env)
    for line in lines:
        _, _, name, _, expr = line.rstrip(";").split(" ", 4)
        if expr.startswith("-"):
            env[name] = -env[expr[1:]]
        else:
            fn, rest = expr.split("(", 1)
            a, b = (s.strip() for s in rest.rstrip(")").split(","))
            env[name] = INTRINSIC[fn](env[a], env[b])
    return env[result]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", PIECES, ids=lambda f: f.__name__)
def test_traced_pieces_match_the_python_bit_for_bit(fn, dtype):
    n = len(inspect.signature(fn).parameters)
    rng = np.random.default_rng(len(fn.__name__))
    args = [rng.standard_normal(64).astype(dtype) + dtype(i) for i in range(n)]
    lines, res = trace(fn, [f"v{i}" for i in range(n)], CTYPE[dtype])
    got = evaluate(lines, res, {f"v{i}": a for i, a in enumerate(args)})
    want = fn(*args)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_tracing_refuses_what_is_not_plain_arithmetic():
    with pytest.raises(Untraceable):
        trace(lambda a: a * 2.0, ["v0"], "float")
    with pytest.raises(Untraceable):
        trace(lambda a: np.sqrt(a), ["v0"], "float")
    with pytest.raises(Untraceable):
        trace(lambda a, b: a if a else b, ["v0", "v1"], "float")


def test_plan_picks_the_layout_and_covers_every_element():
    assert plan((4096, 32, 1), 528).template == "packed"
    assert plan((4096, 33, 1), 528).template == "rows"
    assert plan((4096, 300, 1), 528).template == "rows"
    assert plan((32, 256, 3136), 528).template == "planes"
    for shape in [(1048576, 32, 1), (65536, 256, 1), (4096, 4096, 1), (32, 256, 3136), (1, 3, 1 << 22), (7, 1, 1)]:
        launch = plan(shape, 528)
        P, C, S = shape
        extent = P * S if launch.template == "planes" else P
        assert launch.chunk * launch.chunks >= extent > launch.chunk * (launch.chunks - 1)
        assert launch.tiles * launch.lanes >= C
    assert plan((1 << 31, 1, 1), 528) is None


def _mul3(a, b, c):
    return a * b - c


def _identity(a):
    return a


# (P, C, S) and blocks to aim at: packed with C dividing 256 or not, rows with whole and ragged tiles,
# planes with S below and above the block, one channel, one row.
SHAPES = [((37, 5, 1), 4), ((40, 32, 1), 3), ((64, 256, 1), 3), ((9, 300, 1), 3), ((3, 4, 50), 9), ((5, 3, 7), 4),
          ((2, 2, 300), 5), ((1, 1, 1), 2), ((300, 1, 1), 3)]
DTYPES = [np.float32, np.float64]


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    P, C, S = shape
    full = [rng.integers(-8, 9, size=shape).astype(dtype) for _ in range(2)]
    chan = rng.integers(-3, 4, size=(1, C, 1)).astype(dtype)
    return full, chan, dtype(2.0)


def _reduce_terms(full, chan, scalar):
    return [(_identity, (full[0],)), (variants._mul, (full[0], full[1])), (_mul3, (full[1], chan, scalar))]


def _map_terms(full, chan, scalar):
    return [(variants._qianfeng_dx, (scalar, chan, chan, scalar, full[0], chan, full[1], chan))]


def _requests():
    for shape, target in SHAPES:
        for dtype in DTYPES:
            for mode, make in (("reduce", _reduce_terms), ("map", _map_terms)):
                launch = plan(shape, target)
                full, chan, scalar = _data(shape, dtype, 1)
                values, kinds, slotted = operands(make(full, chan, scalar), shape)
                yield shape, target, dtype, mode, make, launch, source(mode, launch, CTYPE[dtype], kinds, slotted)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if compiler() is None:  # like the GPU tests without CUDA: the host cannot run them
        pytest.skip("the CUDA emulation needs a C++20 compiler (g++ or clang++); install build-essential")
    return Emulator([r[-1] for r in _requests()], tmp_path_factory.mktemp("cuda-emulator"))


@pytest.mark.parametrize("request_", list(_requests()),
                         ids=lambda r: f"{r[3]}-{r[5].template}-{'x'.join(map(str, r[0]))}-{r[2].__name__}")
def test_emulated_kernels_are_exact(emulator, request_):
    shape, _, dtype, mode, make, launch, src = request_
    P, C, S = shape
    full, chan, scalar = _data(shape, dtype, 1)
    terms = make(full, chan, scalar)
    values, kinds, _ = operands(terms, shape)
    counter = np.zeros(launch.tiles, np.uint32)
    for _ in range(2):  # the second launch finds the counter the first one left
        if mode == "reduce":
            partial = np.full((len(terms), launch.chunks, C), np.nan, dtype)
            out = np.full((len(terms), C), np.nan, dtype)
            emulator.run(src, launch, [*values, partial, out, counter, P, C, S, launch.chunk])
            for k, (fn, args) in enumerate(terms):
                want = fn(*[a.astype(np.float64) for a in args]).sum(axis=(0, 2))
                np.testing.assert_array_equal(out[k], want.astype(dtype), err_msg=f"term {k}")
            np.testing.assert_array_equal(counter, 0)
        else:
            out = np.full(shape, np.nan, dtype)
            emulator.run(src, launch, [*values, out, P, C, S, launch.chunk])
            fn, args = terms[0]
            want = fn(*args)
            np.testing.assert_array_equal(out.view(np.uint8), np.broadcast_to(want, shape).astype(dtype).view(np.uint8))


def test_sources_are_deterministic_and_distinct():
    launch = plan((64, 8, 1), 4)
    kinds = ["full", "full"]
    a = source("reduce", launch, "float", kinds, [(variants._mul, (0, 1))])
    b = source("reduce", launch, "float", kinds, [(variants._mul, (0, 1))])
    c = source("reduce", launch, "float", kinds, [(variants._sub, (0, 1))])
    assert a == b
    assert a.name != c.name
    assert kernels.BLOCK_THREADS == 256

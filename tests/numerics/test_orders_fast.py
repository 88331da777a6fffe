"""Faster forms of the verdict's arithmetic give the very same bits as the plain forms they replace."""

import importlib

import ml_dtypes
import numpy as np
import pytest

from bncheck.numerics import orders
from bncheck.numerics.layout import Layout

calibrate = importlib.import_module("bncheck.numerics.calibrate")


def _running_sum(a: np.ndarray) -> np.ndarray:
    """One accumulator per channel through p, then s, in memory order: the definition."""
    P, C, S = a.shape
    acc = np.zeros(C, dtype=a.dtype)
    for p in range(P):
        plane = a[p].copy()
        plane[:, 0] += acc
        acc = np.add.accumulate(plane, axis=1)[:, -1]
    return acc


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(1, 3, 5), (4, 7, 33), (16, 64, 257), (3, 1, 1000)])
def test_sequential_sums_are_the_running_sums(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    a = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    got, want = orders._sequential(a), _running_sum(a)
    assert np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes()


def test_inverse_scales_block_by_block_are_the_plain_formula():
    lay = Layout.of((6, 5, 200, 210), 1)
    rng = np.random.default_rng(0)
    scale = np.abs(rng.standard_normal(lay.view_shape))
    scale[0, 3, :100] = 0
    scale[1, 2, 5] = 1e-310  # below the floor
    plain = np.where(scale > 0, 1.0 / np.maximum(scale, 1e-300), 0.0)
    assert calibrate._inverse(scale, lay, np).tobytes() == plain.tobytes()
    per_channel = np.array([0.0, 2.0, 1e-310])
    assert calibrate._inverse(per_channel, lay, np).tolist() == [0.0, 0.5, 1.0 / 1e-300]


def _welford_plain(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Welford's update thread by thread as first written (one expression a step), then Chan's tree."""
    C = a.shape[1]
    R = a.shape[0] * a.shape[2]
    dt = a.dtype.type
    steps, T = orders._steps(a)
    mean = np.zeros((T, C), dtype=a.dtype)
    m2 = np.zeros((T, C), dtype=a.dtype)
    count = np.zeros(T, dtype=np.int64)
    for v in steps:
        n = v.shape[0]
        count[:n] += 1
        delta = v - mean[:n]
        mean[:n] += delta / dt(count[0]) if n == T else delta / count[:n, None].astype(a.dtype)
        m2[:n] += delta * (v - mean[:n])
    mean_c, m2_c = orders._chan_tree(mean, m2, count)
    return mean_c, m2_c / dt(R)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
@pytest.mark.parametrize("shape", [(1000, 3, 1), (256 * 5, 2, 1), (300, 1, 1), (4, 5, 512), (3, 2, 96), (2, 3, 7)])
def test_welford_in_place_is_the_plain_update(dtype, shape):
    """Shapes with a short last step (1000 rows of 256 threads), full steps only, planes of
    strided threads, and odd planes."""
    rng = np.random.default_rng(sum(shape))
    a = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    mean, var = orders.welford(a, np)
    want_mean, want_var = _welford_plain(a)
    assert mean.reshape(-1).tobytes() == want_mean.tobytes()
    assert var.reshape(-1).tobytes() == want_var.tobytes()

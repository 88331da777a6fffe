"""The seven kinds of data the verdict is held to (tests/numerics/test_verdict.py, bench/oracle.py):
normal; mean 1e4 over std 1; variance near eps; constant dy; gamma with zeros and negatives;
and, by their shapes, N = 2 and R = 2^20."""

from __future__ import annotations

import numpy as np

KINDS = ("normal", "offset", "near_eps", "constant_dy", "gamma_zeros", "batch2", "long")


def make_kind(kind: str, shape: tuple[int, ...], axis: int, rng: np.random.Generator):
    """float64 x, dy (of ``shape``, channels on ``axis``) and gamma, beta for a kind of data."""
    c = shape[axis]
    x = 2.0 * rng.standard_normal(shape) + 0.5
    dy = rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.standard_normal(c)
    if kind == "offset":
        x = 1e4 + rng.standard_normal(shape)
    elif kind == "near_eps":
        x = 3.0 + 1e-3 * rng.standard_normal(shape)
    elif kind == "constant_dy":
        per_channel = [1] * len(shape)
        per_channel[axis] = c
        dy = np.broadcast_to((0.25 + 0.5 * np.arange(c)).reshape(per_channel), shape).copy()
    elif kind == "gamma_zeros":
        gamma[::3] = 0.0
        gamma[1::3] *= -1
    return x, dy, gamma, beta

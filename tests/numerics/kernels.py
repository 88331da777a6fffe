"""Independent batch-norm backward kernels written for the tests: correct ones and broken ones.

They are deliberately not bncheck's variants: the channel axis is moved last,
the sums run row by row (or in Welford chunks), and the formula is PyTorch's
arrangement. ``bug`` plants one real mistake.
"""

from __future__ import annotations

import numpy as np

BUGS = (
    "unbiased_var",       # var / (R - 1)
    "no_dgamma_term",     # dx misses - xhat * dgamma / R
    "no_mean_term",       # dx misses - dbeta / R
    "eps_outside_sqrt",   # invstd = 1 / (sqrt(var) + eps)
    "one_pass_var",       # var = E[x^2] - E[x]^2
    "tile_skip",          # the last 8 rows of the (R, C) matrix are never written
    "channel_shift",      # gamma read one channel off
    "dgamma_no_invstd",   # dgamma = sum(dy * (x - mean))
    "batch_only_R",       # divides by N instead of N*H*W
    "swapped_outputs",    # dbeta gets sum(dy * xhat)
)


def _rows(a, axis):
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape


def _seq_sum(a):
    """Row-by-row accumulation in a's dtype (NumPy's axis-0 sum of a C-ordered array)."""
    return np.add.reduce(a, axis=0)


def _welford(a, chunk=256):
    """Chunked Welford/Chan merge of mean and M2."""
    n, mean, m2 = 0, np.zeros(a.shape[1], a.dtype), np.zeros(a.shape[1], a.dtype)
    for start in range(0, a.shape[0], chunk):
        b = a[start:start + chunk]
        nb = b.shape[0]
        mb = _seq_sum(b) / a.dtype.type(nb)
        m2b = _seq_sum((b - mb) ** 2)
        delta = mb - mean
        tot = n + nb
        mean = mean + delta * a.dtype.type(nb / tot)
        m2 = m2 + m2b + delta * delta * a.dtype.type(n * nb / tot)
        n = tot
    return mean, m2 / a.dtype.type(n)


def backward(x, dy, gamma, beta, *, eps, channel_axis=1, dtype=np.float32, accum=np.float32, stats="two_pass",
             bug=None):
    """Returns dx (dtype), dgamma and dbeta (accum), and y, mean, invstd."""
    with np.errstate(invalid="ignore"):  # a broken kernel may take the root of a negative variance
        return _backward(x, dy, gamma, beta, eps, channel_axis, dtype, accum, stats, bug)


def _backward(x, dy, gamma, beta, eps, channel_axis, dtype, accum, stats, bug):
    dtype, accum = np.dtype(dtype), np.dtype(accum)
    xr, moved_shape = _rows(np.asarray(x).astype(dtype).astype(accum), channel_axis)
    dyr, _ = _rows(np.asarray(dy).astype(dtype).astype(accum), channel_axis)
    R, C = xr.shape
    g = np.asarray(gamma, dtype=np.float64).astype(accum)
    if bug == "channel_shift":
        g = np.roll(g, 1)
    one = accum.type(1)
    if stats == "welford":
        mean, var = _welford(xr)
    else:
        mean = _seq_sum(xr) / accum.type(R)
        if bug == "one_pass_var":
            var = _seq_sum(xr * xr) / accum.type(R) - mean * mean
        else:
            var = _seq_sum((xr - mean) ** 2) / accum.type(R - 1 if bug == "unbiased_var" and R > 1 else R)
    if bug == "eps_outside_sqrt":
        invstd = one / (np.sqrt(np.maximum(var, 0)) + accum.type(eps))
    else:
        invstd = one / np.sqrt(var + accum.type(eps))
    xmu = xr - mean
    xhat = xmu * invstd
    n = R
    if bug == "batch_only_R":
        n = np.asarray(x).shape[0]
    dbeta = _seq_sum(dyr)
    dot = _seq_sum(dyr * xmu)
    dgamma = dot if bug == "dgamma_no_invstd" else dot * invstd
    mean_term = accum.type(0) if bug == "no_mean_term" else dbeta / accum.type(n)
    xhat_term = accum.type(0) if bug == "no_dgamma_term" else xhat * (dgamma / accum.type(n))
    dx = g * invstd * (dyr - mean_term - xhat_term)
    if bug == "tile_skip":
        dx[-8:] = 0
    if bug == "swapped_outputs":
        dbeta = _seq_sum(dyr * xhat)
    y = g * xhat + np.asarray(beta, dtype=np.float64).astype(accum)
    dx_full = np.moveaxis(dx.astype(dtype).reshape(moved_shape), -1, channel_axis)
    y_full = np.moveaxis(y.astype(dtype).reshape(moved_shape), -1, channel_axis)
    return {"dx": dx_full, "dgamma": dgamma, "dbeta": dbeta, "y": y_full, "mean": mean, "invstd": invstd}

"""Independent batch-norm kernels written for the tests: correct ones and broken ones.

They are deliberately not bncheck's code: the channel axis is moved last, the sums
run row by row, in chunks of 100 rows, or in float64, the statistics two-pass or by
a chunked Welford/Chan merge run in order, and dx is written the way PyTorch and
cuDNN arrange it. ``bug`` plants one real mistake. Nothing here imports bncheck.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

# The planted-bug catalogue. Each is a mistake seen in real kernels.
BUGS = (
    "unbiased_var",       # var / (R - 1)
    "eps_outside_sqrt",   # invstd = 1 / (sqrt(var) + eps)
    "no_mean_term",       # dx misses - mean(dy)
    "no_dgamma_term",     # dx misses - xhat * mean(dy * xhat)
    "dgamma_wrong_xhat",  # dgamma = sum(dy * (x - mean) / sqrt(var)): the xhat without eps
    "one_pass_var",       # var = E[x^2] - E[x]^2
    "accum16",            # dgamma and dbeta added one after another in 16 bits (bfloat16 for bfloat16 data)
    "zeroed_channel",     # dx of channel C/2 never written (zeros)
    "shifted_channel",    # dx of channel C/2 read one element off (an off-by-one index)
    "stale_rows",         # the last 8 rows of the (R, C) matrix are never written (zeros)
    "dbeta_sign_flip",    # dbeta of channel C/2 has the wrong sign
    "dx_scaled",          # dx * (1 + 1e-3)
    # more, kept from the first release
    "channel_shift",      # gamma read one channel off
    "dgamma_no_invstd",   # dgamma = sum(dy * (x - mean))
    "batch_only_R",       # divides by N instead of N*H*W
    "swapped_outputs",    # dbeta gets sum(dy * xhat)
)
SUMS = ("rows", "chunked", "float64")

_BF16 = np.dtype(ml_dtypes.bfloat16)


def _rows(a, axis):
    moved = np.moveaxis(a, axis, -1)
    return moved.reshape(-1, moved.shape[-1]), moved.shape


def _seq_sum(a):
    """Row-by-row accumulation in a's dtype, one column at a time when there is one column."""
    if a.shape[1] == 1:
        return np.add.accumulate(a, axis=0)[-1]
    return np.add.reduce(a, axis=0)


def _chunked_sum(a):
    """Each chunk of 100 rows (more for long inputs) summed in NumPy's own order, then the
    chunks' sums in order."""
    chunk = max(100, a.shape[0] // 512)
    parts = [a[i:i + chunk].sum(axis=0) for i in range(0, a.shape[0], chunk)]
    return _seq_sum(np.stack(parts))


def _f64_sum(a):
    return a.astype(np.float64).sum(axis=0).astype(a.dtype)


_SUM = {"rows": _seq_sum, "chunked": _chunked_sum, "float64": _f64_sum}


def _welford(a, chunk=256):
    """Chunked Welford/Chan merge of mean and M2, the chunks merged one after another."""
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
             sums="rows", param_dtype=None, textbook=False, held=False, bug=None):
    """Returns dx and y (dtype), dgamma, dbeta, mean and invstd (``param_dtype``, default accum).

    ``param_dtype`` float32 with 16-bit ``dtype`` is mixed precision, as cuDNN and AMP do it.
    ``textbook``: dgamma = sum(dy * xhat) and dx = gamma * invstd * (dy - mean(dy) - xhat * dgamma / R)
    instead of PyTorch's arrangement around x - mean. ``held``: mean, invstd and the sums are stored
    in ``param_dtype`` and dx is computed from the stored values (a kernel with 16-bit weights)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        pd = np.dtype(param_dtype or accum)
        store = (lambda a: a.astype(pd).astype(accum)) if held else (lambda a: a)
        out = _backward(x, dy, gamma, beta, eps, channel_axis, np.dtype(dtype), np.dtype(accum), stats, _SUM[sums],
                        bug, textbook, store)
    return {k: (v.astype(pd) if k in ("dgamma", "dbeta", "mean", "invstd") else v) for k, v in out.items()}


def _backward(x, dy, gamma, beta, eps, channel_axis, dtype, accum, stats, add, bug, textbook, store):
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
        mean = add(xr) / accum.type(R)
        if bug == "one_pass_var":
            var = add(xr * xr) / accum.type(R) - mean * mean
        else:
            var = add((xr - mean) ** 2) / accum.type(R - 1 if bug == "unbiased_var" and R > 1 else R)
    if bug == "eps_outside_sqrt":
        invstd = one / (np.sqrt(np.maximum(var, 0)) + accum.type(eps))
    else:
        invstd = one / np.sqrt(var + accum.type(eps))
    mean, invstd = store(mean), store(invstd)
    xmu = xr - mean
    xhat = xmu * invstd
    n = np.asarray(x).shape[0] if bug == "batch_only_R" else R
    if bug == "accum16":
        low = _BF16 if dtype == _BF16 else np.dtype(np.float16)
        dbeta = _seq_sum(dyr.astype(low)).astype(accum)
        dot = _seq_sum((dyr * xmu).astype(low)).astype(accum)
    else:
        dbeta = store(add(dyr))
        dot = store(add(dyr * xmu))
    if bug == "dgamma_wrong_xhat":
        dgamma = add(dyr * (xmu / np.sqrt(var)))
    else:
        dgamma = dot if bug == "dgamma_no_invstd" else dot * invstd
    # PyTorch's arrangement: (dy - mean(dy) - (x - mean) * dot * invstd^2 / R) * invstd * gamma
    mean_term = accum.type(0) if bug == "no_mean_term" else dbeta / accum.type(n)
    if textbook:
        dgamma = add(dyr * xhat)
        dx = g * invstd * (dyr - mean_term - xhat * (dgamma / accum.type(n)))
    else:
        k = accum.type(0) if bug == "no_dgamma_term" else dot * invstd * invstd / accum.type(n)
        dx = (dyr - mean_term - xmu * k) * (invstd * g)
    _plant_in_outputs(bug, dx, dbeta, C)
    if bug == "swapped_outputs":
        dbeta = add(dyr * xhat)
    y = g * xhat + np.asarray(beta, dtype=np.float64).astype(accum)
    dx_full = np.moveaxis(dx.astype(dtype).reshape(moved_shape), -1, channel_axis)
    y_full = np.moveaxis(y.astype(dtype).reshape(moved_shape), -1, channel_axis)
    return {"dx": dx_full, "dgamma": dgamma, "dbeta": dbeta, "y": y_full, "mean": mean, "invstd": invstd}


def _plant_in_outputs(bug, dx, dbeta, C):
    c = C // 2
    if bug == "zeroed_channel":
        dx[:, c] = 0
    elif bug == "shifted_channel":
        dx[:, c] = np.roll(dx[:, c], 1)
    elif bug == "stale_rows":
        dx[-8:] = 0
    elif bug == "dbeta_sign_flip":
        dbeta[c] = -dbeta[c]
    elif bug == "dx_scaled":
        dx *= dx.dtype.type(1 + 1e-3)

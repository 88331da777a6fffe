"""Validate a check's inputs once, at the edge, with the numbers in every message."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import BFLOAT16, DTYPE_NAMES, finfo_max, resolve
from .errors import InputError
from .layout import Layout
from .request import CANDIDATE_NAMES, INPUT_NAMES, CheckOptions
from .tolerance import least_precise
from .variants import VARIANTS

__all__ = ["CANDIDATE_NAMES", "FULL_TENSORS", "Inputs", "float_dtype", "validate"]

FULL_TENSORS = ("y", "dx")  # one value per element of x; the others have one per channel


@dataclass(frozen=True)
class Inputs:
    """Validated inputs: host arrays and the facts derived from them. ``x`` and ``dy`` keep
    the dtype they came in (finite, within ``dtype``'s range): on the CPU every float64 pass
    reads them block by block (``backend.in_float64``); a GPU receives them as they are, half
    the bytes of float32 data, and makes them float64 there (``backend.as_float64``)."""

    x: np.ndarray
    dy: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    layout: Layout
    dtype: np.dtype[Any]
    accum_dtype: Any
    eps: float
    training: bool
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    saved_mean: np.ndarray | None
    saved_invstd: np.ndarray | None
    saved_dtype: np.dtype[Any] | None  # the least precise of the two, as sent
    candidate: dict[str, np.ndarray]  # as sent, dtype kept
    variants: tuple[str, ...]
    param_dtype: np.dtype[Any] | None = None  # gamma's and beta's dtype as sent, when not float64


def _array(field: str, a: Any) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        msg = f"is not a rectangular array of numbers ({exc})"
        raise InputError(msg, field=field) from exc
    if arr.dtype == BFLOAT16 or arr.dtype.kind in "fiu":
        return arr
    msg = f"has dtype {arr.dtype}; send numbers (float16, bfloat16, float32 or float64)"
    raise InputError(msg, field=field)


def _finite(field: str, a: np.ndarray, *, shape: tuple[int, ...]) -> np.ndarray:
    a64 = a.astype(np.float64)
    bad = ~np.isfinite(a64)
    if bad.any():
        first = [int(i) for i in np.unravel_index(int(np.argmax(bad)), shape)]
        msg = f"has {int(bad.sum())} non-finite values of {a64.size} (first at index {first})"
        raise InputError(msg, field=field)
    return a64


def _checked(field: str, a: np.ndarray, shape: tuple[int, ...], dt: np.dtype[Any]) -> np.ndarray:
    """``a`` (float64 unless it is float16, float32 or float64 already), once it is known
    finite and within ``dt``'s range.

    The common case costs two reductions: min and max propagate NaN and show infinities,
    and bound every value. Only a failing array takes the slow path, which finds what to
    say about it.
    """
    if a.dtype.kind == "f" and a.dtype != BFLOAT16:
        lo, hi = float(a.min()), float(a.max())
        if math.isfinite(lo) and math.isfinite(hi) and max(-lo, hi) <= finfo_max(dt):
            return a
    a64 = _finite(field, a, shape=shape)
    _fits(field, a64, dt, "dtype")
    return a64


def _vector(field: str, a: Any, C: int) -> np.ndarray:
    arr = _array(field, a)
    if arr.shape != (C,):
        msg = f"has shape {list(arr.shape)} but x has {C} channels; expected [{C}]"
        raise InputError(msg, field=field)
    return _finite(field, arr, shape=(C,))


def _fits(field: str, a: np.ndarray, dtype: np.dtype[Any], what: str) -> None:
    top = finfo_max(dtype)
    big = np.abs(a) > top
    if big.any():
        worst = float(np.max(np.abs(a)))
        msg = (f"has {int(big.sum())} values beyond {what} {dtype.name}'s largest value {top:g} "
               f"(largest |value| {worst:g}); they would become infinite")
        raise InputError(msg, field=field)


def _default_dtype(x: np.ndarray) -> np.dtype[Any]:
    return resolve(x.dtype) if x.dtype.name in DTYPE_NAMES else np.dtype(np.float32)


def _variants(variant: str) -> tuple[str, ...]:
    if variant == "all":
        return tuple(VARIANTS)
    if variant not in VARIANTS:
        msg = f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)} or 'all'"
        raise InputError(msg, field="variant")
    return (variant,)


def validate(tensors: Mapping[str, Any], candidate: Mapping[str, Any] | None, opts: CheckOptions) -> Inputs:
    """The tensors (by request.INPUT_NAMES; absent or None where not sent) checked against each
    other and against ``opts``."""
    x, dy, gamma, beta, running_mean, running_var, saved_mean, saved_invstd = (
        tensors.get(name) for name in INPUT_NAMES)
    variant, dtype, accum_dtype = opts.variant, opts.dtype, opts.accum_dtype
    eps, channel_axis, training = opts.eps, opts.channel_axis, opts.training
    names = _variants(variant)
    x_arr = _array("x", x)
    lay = Layout.of(x_arr.shape, channel_axis)
    dy_arr = _array("dy", dy)
    if dy_arr.shape != x_arr.shape:
        msg = f"has shape {list(dy_arr.shape)} but x has shape {list(x_arr.shape)}"
        raise InputError(msg, field="dy")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        msg = f"is {eps!r}; it must be a finite number > 0"
        raise InputError(msg, field="eps")
    dt = _default_dtype(x_arr) if dtype is None else resolve(dtype, field="dtype")
    accum = None if accum_dtype is None else resolve(accum_dtype, field="accum_dtype")
    x64 = _checked("x", x_arr, lay.shape, dt)
    dy64 = _checked("dy", dy_arr, lay.shape, dt)
    C = lay.C
    g = np.ones(C) if gamma is None else _vector("gamma", gamma, C)
    b = np.zeros(C) if beta is None else _vector("beta", beta, C)
    rm, rv = _running(training, running_mean, running_var, C, eps)
    sm, si = _saved(training, saved_mean, saved_invstd, C)
    saved_dtype = None if sm is None else least_precise(_float_dtype(saved_mean), _float_dtype(saved_invstd))
    sent = [_float_dtype(a) for a in (gamma, beta) if a is not None]
    param = least_precise(*sent) if sent else None
    return Inputs(x64, dy64, g, b, lay, dt, accum, float(eps), bool(training), rm, rv, sm, si, saved_dtype,
                  _candidates(candidate, lay), names, None if param == np.float64 else param)


def float_dtype(a: np.ndarray) -> np.dtype[Any]:
    """An array's dtype among the four, float64 for anything else (integers)."""
    return resolve(a.dtype) if a.dtype.name in DTYPE_NAMES else np.dtype(np.float64)


def _float_dtype(a: Any) -> np.dtype[Any]:
    return float_dtype(np.asarray(a))


def _running(training: bool, running_mean: Any, running_var: Any, C: int,
             eps: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    if training:
        for field, v in (("running_mean", running_mean), ("running_var", running_var)):
            if v is not None:
                msg = "is only used in inference mode; set training to false or drop it"
                raise InputError(msg, field=field)
        return None, None
    for field, v in (("running_mean", running_mean), ("running_var", running_var)):
        if v is None:
            msg = "is required when training is false (inference mode)"
            raise InputError(msg, field=field)
    rm = _vector("running_mean", running_mean, C)
    rv = _vector("running_var", running_var, C)
    if (rv < 0).any():
        c = int(np.argmax(rv < 0))
        msg = f"is negative in channel {c} ({rv[c]:g}); a variance is >= 0"
        raise InputError(msg, field="running_var")
    return rm, rv


def _saved(training: bool, saved_mean: Any, saved_invstd: Any,
           C: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if saved_mean is None and saved_invstd is None:
        return None, None
    if not training:
        field = "saved_mean" if saved_mean is not None else "saved_invstd"
        msg = "saved statistics belong to training mode; inference uses running_mean/running_var"
        raise InputError(msg, field=field)
    if saved_mean is None or saved_invstd is None:
        missing = "saved_mean" if saved_mean is None else "saved_invstd"
        msg = "send saved_mean and saved_invstd together"
        raise InputError(msg, field=missing)
    sm = _vector("saved_mean", saved_mean, C)
    si = _vector("saved_invstd", saved_invstd, C)
    if (si <= 0).any():
        c = int(np.argmax(si <= 0))
        msg = f"is {si[c]:g} in channel {c}; 1/sqrt(var + eps) is > 0"
        raise InputError(msg, field="saved_invstd")
    return sm, si


def _candidates(candidate: Mapping[str, Any] | None, lay: Layout) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in (candidate or {}).items():
        field = f"candidate.{name}"
        if name not in CANDIDATE_NAMES:
            msg = f"unknown candidate tensor; send any of {', '.join(CANDIDATE_NAMES)}"
            raise InputError(msg, field=field)
        if value is None:
            continue
        arr = _array(field, value)
        want = lay.shape if name in FULL_TENSORS else (lay.C,)
        if arr.shape != want:
            msg = f"has shape {list(arr.shape)}; expected {list(want)}"
            raise InputError(msg, field=field)
        out[name] = arr
    return out

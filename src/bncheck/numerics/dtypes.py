"""The four precisions bncheck computes in, their wire names and their rounding."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from .errors import InputError

__all__ = [
    "BFLOAT16",
    "DTYPE_NAMES",
    "WIRE_NAMES",
    "default_accum",
    "dtype_name",
    "finfo_max",
    "in_ulps",
    "precision_bits",
    "resolve",
    "ulp",
    "unit_roundoff",
    "wire_name",
]

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)

_BY_NAME: dict[str, np.dtype[Any]] = {
    "float16": np.dtype(np.float16),
    "bfloat16": BFLOAT16,
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
WIRE_NAMES = {"FP16": "float16", "BF16": "bfloat16", "FP32": "float32", "FP64": "float64"}
DTYPE_NAMES = tuple(_BY_NAME)
# What other stacks write (Rust's f32, C's half and double, ...), in any case.
ALIASES = {"f16": "float16", "fp16": "float16", "half": "float16",
           "bf16": "bfloat16",
           "f32": "float32", "fp32": "float32", "float": "float32", "single": "float32",
           "f64": "float64", "fp64": "float64", "double": "float64"}
_WIRE_BY_NAME = {name: wire for wire, name in WIRE_NAMES.items()}

# Significand bits including the hidden bit, and frexp's exponent of the smallest normal.
_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
_MIN_EXP = {"float16": -13, "bfloat16": -125, "float32": -125, "float64": -1021}
_MAX = {"float16": 65504.0, "bfloat16": float(ml_dtypes.finfo(BFLOAT16).max),
        "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float64).max)}


def resolve(value: Any, *, field: str = "dtype") -> np.dtype[Any]:
    """Accept "float32", "FP32", a NumPy dtype or a scalar type; name the field when it is none."""
    if isinstance(value, str):
        key = value.strip().lower()
        key = ALIASES.get(key, key)
        if key in _BY_NAME:
            return _BY_NAME[key]
    else:
        try:
            dt = np.dtype(value)
        except TypeError:
            dt = None
        if dt is not None and dt.name in _BY_NAME:
            return _BY_NAME[dt.name]
    choices = ", ".join([*WIRE_NAMES, *DTYPE_NAMES, "f16", "bf16", "f32", "f64", "half", "double"])
    msg = f"unsupported dtype {value!r}; use one of {choices} (any case)"
    raise InputError(msg, field=field)


def dtype_name(dt: np.dtype[Any]) -> str:
    return resolve(dt).name


def wire_name(dt: np.dtype[Any]) -> str:
    return _WIRE_BY_NAME[dtype_name(dt)]


def precision_bits(dt: np.dtype[Any]) -> int:
    return _BITS[dtype_name(dt)]


def unit_roundoff(dt: np.dtype[Any]) -> float:
    """Half the machine epsilon: the largest relative error of one correctly rounded operation."""
    return 2.0 ** -precision_bits(dt)


def finfo_max(dt: np.dtype[Any]) -> float:
    return _MAX[dtype_name(dt)]


def default_accum(dt: np.dtype[Any]) -> np.dtype[Any]:
    """16-bit storage accumulates in float32, as cuDNN, MIOpen and PyTorch kernels do."""
    return _BY_NAME["float32"] if precision_bits(dt) < 24 else resolve(dt)


def ulp(values: Any, dt: np.dtype[Any], *, xp: Any = np) -> Any:
    """The spacing of ``dt`` at each of ``values`` (float64), subnormals included."""
    name = dtype_name(dt)
    mag = xp.abs(values)
    _, exp = xp.frexp(mag)
    # frexp(0) reports exponent 0; zero's spacing is the smallest subnormal's.
    exp = xp.where(mag == 0, _MIN_EXP[name], xp.maximum(exp, _MIN_EXP[name]))
    return xp.ldexp(1.0, (exp - _BITS[name]).astype(xp.int32))


def in_ulps(err: Any, values: Any, dt: np.dtype[Any], *, xp: Any = np, out: Any = None, ignore: Any = None) -> Any:
    """``err / ulp(values, dt)`` for non-zero ``values``; 0 where ``ignore`` (a boolean mask)
    is true. ``out``: a float64 array of ``values``' shape to work in.

    For float64 ``values`` the spacing is built from bits, in four passes (faster than frexp
    and ldexp, the same numbers): masking all but the exponent turns |value| into the power
    of two at or below it, 2^(e-1) (0 for 0 and the subnormals); floored at the dtype's
    least and times 2^(1 - bits), that is the spacing, itself a power of two, so err divided
    by it is err scaled exactly."""
    name = dtype_name(dt)
    bits, least = _BITS[name], _MIN_EXP[name]
    if values.dtype == np.float64:
        spacing = xp.empty(values.shape) if out is None else out
        xp.bitwise_and(values.view(xp.int64), 0x7FF0000000000000, out=spacing.view(xp.int64))
        xp.maximum(spacing, 2.0 ** (least - 1), out=spacing)
        spacing *= 2.0 ** (1 - bits)
        if ignore is not None:
            spacing[ignore] = 1.0  # counted 0 below: no overflow to divide into there
        result = xp.divide(err, spacing, out=spacing)
    else:
        _, exp = xp.frexp(values)
        xp.maximum(exp, least, out=exp)
        xp.subtract(bits, exp, out=exp)
        result = xp.ldexp(err, exp)
    if ignore is not None:
        result[ignore] = 0.0
    return result

"""Rounding to a storage dtype on either array module (CuPy has no bfloat16)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..dtypes import BFLOAT16
from .device import is_numpy

__all__ = ["round_bfloat16_bits", "round_to"]


def round_to(a: Any, dtype: np.dtype[Any], xp: ModuleType) -> Any:
    """Round to ``dtype``. CuPy has no bfloat16: there the values are rounded to bfloat16
    and kept in float32, which holds every bfloat16 exactly."""
    if is_numpy(xp) or dtype != BFLOAT16:
        return a.astype(dtype, copy=False)
    return round_bfloat16_bits(a.astype(xp.float32), xp)


def round_bfloat16_bits(a: Any, xp: ModuleType) -> Any:
    """float32 values rounded to bfloat16 (nearest, ties to even), still held in float32.
    NaN never gets here: inputs are validated finite."""
    bits = a.view(xp.uint32)
    bits = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    return bits.view(xp.float32)

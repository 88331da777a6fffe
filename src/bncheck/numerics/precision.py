"""How a variant is made to round the way a kernel in a given precision rounds.

A kernel receives ``x`` and ``dy`` stored in ``dtype``; it does its arithmetic,
element-wise and reductions alike, in ``accum``; it stores ``dx`` (and ``y``)
back in ``dtype``. Per-channel results (``dgamma``, ``dbeta``, ``mean``,
``invstd``) stay in ``accum``, as PyTorch, cuDNN and MIOpen keep them in float32
for 16-bit tensors. The parameters and statistics a kernel receives (``gamma``,
``beta``, running and saved statistics) arrive in ``accum``.

With ``accum == dtype`` every operation rounds to ``dtype``: pure float16
arithmetic, say. NumPy and ml_dtypes round each float16 and bfloat16 operation
correctly, so the emulation is exact operation by operation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from . import backend, orders
from .dtypes import BFLOAT16, default_accum, dtype_name, precision_bits, resolve
from .errors import InputError

__all__ = ["Arith", "make_arith"]


@dataclass(frozen=True)
class Arith:
    storage: np.dtype[Any]
    accum: np.dtype[Any]
    xp: ModuleType
    shape: tuple[int, int, int]  # the (P, C, S) view
    order: str | None = None  # a reduction order of orders.py; None: the backend's fastest
    held_in: np.dtype[Any] | None = None  # per-channel sums held in this dtype (a kernel with 16-bit parameters)

    @property
    def R(self) -> int:
        return self.shape[0] * self.shape[2]

    def load(self, a: Any) -> Any:
        """A tensor as the kernel sees it: rounded to storage, computed on in accum."""
        held = backend.round_to(a, self.storage, self.xp)
        return held.astype(backend.container(self.accum, self.xp), copy=False)

    def param(self, v: Any) -> Any:
        """A per-channel vector, (C,) to (1, C, 1), rounded to accum."""
        rounded = backend.round_to(v, self.accum, self.xp)
        return rounded.reshape(1, -1, 1)

    def csum(self, a3: Any) -> Any:
        """Channel sums, kept as (1, C, 1) so formulas broadcast like the seed's axis-0 sums."""
        return self.csums((backend.same, (a3,)))[0]

    def csum_of(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``csum(fn(*args))``; on the GPU without writing ``fn(*args)`` out."""
        return self.csums((fn, args))[0]

    def csums(self, *terms: tuple[Callable[..., Any], tuple[Any, ...]]) -> list[Any]:
        """``csum_of(fn, *args)`` for each ``(fn, args)``; on the GPU in one pass over memory.
        With an ``order``, each term is written out and added in that order (orders.py)."""
        if self.order is None:
            sums = backend.channel_sums(terms, self.shape, self.xp)
        else:
            full = [self.xp.broadcast_to(self.ew(fn)(*args), self.shape) for fn, args in terms]
            sums = [orders.ordered_sum(a, self.order, self.xp) for a in full]
        return sums if self.held_in is None else [self.held(s) for s in sums]

    def held(self, a: Any) -> Any:
        """A per-channel value as a kernel holding them in ``held_in`` sees it."""
        if self.held_in is None:
            return a
        return backend.round_to(a, self.held_in, self.xp).astype(backend.container(self.accum, self.xp))

    def const(self, value: float) -> Any:
        """A scalar rounded to accum, as NumPy rounds a Python scalar it combines with an array."""
        return np.dtype(backend.container(self.accum, self.xp)).type(value)

    def ew(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """An element-wise function: one fused kernel on the GPU, plain NumPy on the CPU."""
        return backend.elementwise(fn, self.shape, self.xp)

    def store(self, a: Any) -> Any:
        return backend.round_to(a, self.storage, self.xp)

    def keep(self, a: Any) -> Any:
        """A per-channel result: stays in accum."""
        return backend.round_to(a, self.accum, self.xp)


def make_arith(dtype: Any, accum_dtype: Any, *, shape: tuple[int, int, int], xp: ModuleType) -> Arith:
    storage = resolve(dtype, field="dtype")
    accum = default_accum(storage) if accum_dtype is None else resolve(accum_dtype, field="accum_dtype")
    if accum != storage and precision_bits(accum) < 24:
        msg = (f"is {dtype_name(accum)} for {dtype_name(storage)} storage; accumulate in the "
               "storage dtype itself, float32 or float64")
        raise InputError(msg, field="accum_dtype")
    if precision_bits(accum) < precision_bits(storage):
        msg = f"{dtype_name(accum)} is less precise than dtype {dtype_name(storage)}"
        raise InputError(msg, field="accum_dtype")
    if accum == BFLOAT16 and not backend.is_numpy(xp):
        msg = "bfloat16 arithmetic runs on the CPU only: CuPy has no bfloat16 type"
        raise InputError(msg, field="accum_dtype")
    return Arith(storage, accum, xp, shape)

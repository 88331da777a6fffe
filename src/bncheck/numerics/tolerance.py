"""Default tolerances, and why they have the shape they have.

An element passes when

    |candidate - reference| <= rtol * |reference| + atol * scale + extra

``scale`` is the element's *natural scale* (``scales.py``): the size of the
terms the value is computed from, not the value itself. Relative error alone
fails exactly where kernels are hardest to check: with a constant ``dy`` the
true ``dx`` is 0 and ``dgamma = sum(dy * xhat)`` is a sum of terms that cancel,
so any correct kernel shows a huge relative error. Against the natural scale
(``|gamma| * invstd * rms(dy)`` for dx) the same error is a
few ulps. Each report says which term decided (``decided_by``).

The defaults, for a kernel storing tensors in ``storage`` and accumulating in
``accum`` over R elements per channel:

    rtol = 2 * u(out)                          rounding the stored output once
    atol = 4 * u(storage) + 8 * u(accum) * (1 + sqrt(R))

- ``u`` is the unit roundoff: 2^-53, 2^-24, 2^-11 and 2^-8 for float64,
  float32, float16 and bfloat16.
- ``u(storage)`` covers rounding the inputs and any stored intermediate.
- ``u(accum) * (1 + sqrt(R))`` covers the reductions. A pairwise or tree sum
  grows like log2(R) ulps; a sequential or atomic one like sqrt(R) on
  average. The default admits the second, since real kernels use both: a
  float32 kernel that sums 2^20 elements one row at a time was measured at
  3.8 * sqrt(R) ulps in invstd, hence the 8.
- The natural scales (``scales.py``) carry what x - mean costs: with
  kappa = |mean| * invstd a kernel's mean is off by about u * kappa standard
  deviations, however well it is written. A float32 kernel fed data with
  mean 1e4 and std 1 passes; one that computes the variance as
  E[x^2] - E[x]^2 loses eight digits, and fails.

What this gives, in the natural-scale units of dx (R = 4096):
float64 5.8e-14, float32 3.1e-5, float16 2.0e-3, bfloat16 1.6e-2. For scale:
torch.testing.assert_close uses rtol 1.3e-6 (float32), 1e-3 (float16) and
1.6e-2 (bfloat16) relative to |value|, which fails correct kernels whenever
the value cancels.

These bounds judge bncheck's own formulas (``checks.variant``) and saved
statistics. A caller's candidate outputs are judged by the calibrated verdict of
``calibrate.py`` instead: a worst-case bound is loose exactly where bugs hide
(docs/design.md, "The calibrated verdict"); this model stays as its explanation
and its floor. (The report's ``tolerance.floor`` is always 1: it was the first
release's noise-floor widening, kept on the wire for compatibility.)

A tolerance the caller sends is plain absolute/relative, as in
``numpy.allclose``: ``|cand - ref| <= atol + rtol * |ref|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dtypes import precision_bits, unit_roundoff

__all__ = ["TINY", "Tolerance", "default_tolerance", "fd_tolerance", "least_precise", "user_tolerance"]

TINY = 1e-300  # allowances are floored here before dividing, so err / allowed is finite and 0 / 0 is 0

C_STORAGE = 4.0
C_ACCUM = 8.0
C_REL = 2.0


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    mode: str  # "natural": atol multiplies the natural scale; "absolute": it does not
    basis: str = "analytic"  # analytic (the bound below) | calibrated (calibrate.py) | user
    envelope: float | None = None  # calibrated: the correct kernels' worst error, natural units
    margin: float | None = None  # calibrated: allowed = margin * envelope * scale + rtol * |ref|
    members: int | None = None  # calibrated: how many correct kernels the envelope spans
    abs_floor: float = 0.0  # added as is: the rounding of outputs in the dtype's subnormal range
    channels: int | None = None  # calibrated: on how many channels the members ran


def default_tolerance(storage: np.dtype[Any], accum: np.dtype[Any], out: np.dtype[Any], R: int) -> Tolerance:
    growth = 1.0 + math.sqrt(R)
    atol = C_STORAGE * unit_roundoff(storage) + C_ACCUM * unit_roundoff(accum) * growth
    return Tolerance(C_REL * unit_roundoff(out), atol, "natural")


def fd_tolerance() -> Tolerance:
    """The float64 reference against finite differences: the prototype agreed to 1e-9..1e-11;
    the estimated error of each finite difference is added element by element."""
    return Tolerance(1e-7, 1e-7, "natural")


def user_tolerance(rtol: float, atol: float) -> Tolerance:
    return Tolerance(rtol, atol, "absolute", basis="user")


def least_precise(*dtypes: np.dtype[Any]) -> np.dtype[Any]:
    return min(dtypes, key=precision_bits)

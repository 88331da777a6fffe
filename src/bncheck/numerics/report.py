"""What a check returns: plain dataclasses, serialised by the service, never pydantic."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pictures import Pictures

__all__ = [
    "Block",
    "ChannelError",
    "CheckReport",
    "Checks",
    "CrossCheck",
    "FDBlock",
    "Resolution",
    "TensorMetrics",
    "ToleranceUsed",
    "VariantsBlock",
]


@dataclass(frozen=True)
class ToleranceUsed:
    rtol: float
    atol: float
    mode: str  # "natural" (atol is in units of the natural scale) or "absolute"
    floor: float  # always 1: the first release widened tolerances by a noise floor here
    basis: str = "analytic"  # analytic | calibrated | user
    envelope: float | None = None  # calibrated: correct kernels' worst error on these inputs, natural units
    margin: float | None = None  # calibrated: allowed = margin * envelope * scale + rtol * |reference|
    members: int | None = None  # calibrated: how many correct kernels the envelope spans
    abs_floor: float = 0.0  # added to every element's allowance: rounding in the dtype's subnormal range


@dataclass(frozen=True)
class Resolution:
    """What a pass could not see: errors below these went unflagged."""

    natural: float | None  # the allowance where the reference is 0, in natural-scale units
    max_abs: float  # the largest error any element was allowed: a pass means no error above it
    ulp: float | None  # max_abs in ulps of the tensor's dtype at its largest |reference|


@dataclass(frozen=True)
class ChannelError:
    channel: int
    max_abs_err: float
    tol_ratio: float
    mismatched: int


@dataclass(frozen=True)
class TensorMetrics:
    """One tensor compared against its reference, numpy.testing style."""

    passed: bool
    max_abs_err: float
    max_rel_err: float | None  # over elements whose reference is not 0; None under cancellation
    rms_err: float
    max_ulp: float | None  # in the candidate's dtype, over non-zero references; None under cancellation
    tol_ratio: float  # worst |err| / allowed; the tensor passes when it is <= 1
    worst_index: list[int]
    worst_candidate: float | str  # "nan", "inf" and "-inf" travel as strings
    worst_reference: float
    worst_allowed: float  # the allowance there: tol_ratio = |worst_candidate - worst_reference| / worst_allowed
    mismatched: int
    total: int
    nonfinite: int
    channels_failed: int
    worst_channels: list[ChannelError]
    decided_by: str  # relative | natural_scale | absolute | nonfinite | exact
    cancellation: bool  # values far below the scale of their terms: relative error means nothing
    dtype: str
    tolerance: ToleranceUsed
    compared: str | None = None  # what the numbers are when not the tensor itself (directional derivatives)
    failed_channels: str = ""  # every failing channel, as ranges: "16-23,30"
    resolution: Resolution | None = None
    plots: Pictures | None = None  # what the pictures draw, when asked for (pictures.py)


@dataclass
class Block:
    passed: bool
    tensors: dict[str, TensorMetrics]
    notes: list[str] = field(default_factory=list)


@dataclass
class CrossCheck:
    method: str
    positions: int
    metrics: TensorMetrics


@dataclass
class FDBlock(Block):
    method: str = "stats"
    requested: str = "auto"
    step: float = 1e-4  # relative to sqrt(var + eps), per channel
    step_min: float = 0.0
    step_max: float = 0.0
    estimated_error: float = 0.0  # the finite differences' own error, natural-scale units
    elements: int = 0  # how many dx values were differenced
    samples: int | None = None
    directions: int | None = None
    seed: int = 0
    cross_check: CrossCheck | None = None


@dataclass
class VariantsBlock:
    passed: bool
    variants: dict[str, Block]
    spread: dict[str, float]  # per tensor: the largest difference between any two variants
    spread_pair: dict[str, list[str]]


@dataclass
class Checks:
    variant: Block | None = None
    finite_difference: FDBlock | None = None
    candidate: Block | None = None
    saved_statistics: Block | None = None
    variants: VariantsBlock | None = None

    def blocks(self) -> list[Any]:
        return [b for b in (self.variant, self.finite_difference, self.candidate,
                            self.saved_statistics, self.variants) if b is not None]


@dataclass
class CheckReport:
    passed: bool
    variant: str
    dtype: str
    accum_dtype: str
    shape: list[int]
    channel_axis: int
    reduce_size: int
    training: bool
    eps: float
    device: str
    gradients: dict[str, np.ndarray] | None
    reference: dict[str, np.ndarray]
    checks: Checks
    timings_ms: dict[str, float]
    notes: list[str] = field(default_factory=list)

"""What a check returns, and what the wire carries: the report's one definition.

Plain dataclasses (no pydantic here). The service's OpenAPI answer schema is generated from
them (server/schemas.py), ``wire.py`` turns them into the JSON document and reads that
document back into them for the client, so the numerics, the wire and the client cannot
drift apart. On the wire every float that is not finite is null; a field marked ``omitted``
is left out when it is None (a block's tensors it did not compare, ``compared``, ``plots``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .pictures import Pictures

__all__ = [
    "OMIT",
    "TENSOR_NAMES",
    "Block",
    "ChannelError",
    "CheckReport",
    "Checks",
    "CrossCheck",
    "FDBlock",
    "Resolution",
    "TensorMetrics",
    "TensorReport",
    "ToleranceUsed",
    "VariantsBlock",
    "omitted",
]

OMIT = "omit_if_none"  # a field's metadata key: left out of the JSON when None
TENSOR_NAMES = ("dx", "dgamma", "dbeta", "y", "mean", "invstd")


def omitted(default: Any = None) -> Any:
    """A field that the wire leaves out when it is None."""
    return field(default=default, metadata={OMIT: True})


@dataclass(frozen=True)
class ToleranceUsed:
    rtol: float
    atol: float
    mode: Literal["natural", "absolute"]  # natural: atol is in units of the natural scale
    floor: float  # always 1: the first release widened tolerances by a noise floor here
    basis: Literal["analytic", "calibrated", "user"] = "analytic"
    envelope: float | None = None  # calibrated: correct kernels' worst error on these inputs, natural units
    margin: float | None = None  # calibrated: allowed = margin * envelope * scale + rtol * |reference|
    members: int | None = None  # calibrated: how many correct kernels the envelope spans
    abs_floor: float = 0.0  # added to every element's allowance: rounding in the dtype's subnormal range
    # calibrated: on how many channels the members ran: all, or a first few when their envelope already passes
    channels: int | None = None


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
class TensorReport:
    """One tensor compared against its reference, numpy.testing style."""

    passed: bool
    max_abs_err: float
    max_rel_err: float | None  # over elements whose reference is not 0; None under cancellation
    rms_err: float
    max_ulp: float | None  # in the candidate's dtype, over non-zero references; None under cancellation
    tol_ratio: float  # worst |err| / allowed; the tensor passes when it is <= 1
    worst_index: list[int]
    worst_candidate: float | Literal["nan", "inf", "-inf"]  # a non-finite candidate travels as a string
    worst_reference: float
    worst_allowed: float  # the allowance there: tol_ratio = |worst_candidate - worst_reference| / worst_allowed
    mismatched: int
    total: int
    nonfinite: int
    channels_failed: int
    worst_channels: list[ChannelError]
    decided_by: Literal["relative", "natural_scale", "absolute", "nonfinite", "exact"]
    cancellation: bool  # values far below the scale of their terms: relative error means nothing
    dtype: str
    tolerance: ToleranceUsed
    compared: str | None = omitted()  # what the numbers are when not the tensor itself (directional derivatives)
    failed_channels: str = ""  # every failing channel, as ranges: "16-23,30"
    resolution: Resolution | None = None
    plots: Pictures | None = omitted()  # what the pictures draw, when asked for (pictures.py)


TensorMetrics = TensorReport  # the numerics' older name


@dataclass
class Block:
    """A kind of evidence: its verdict, notes, and the tensors it compared."""

    passed: bool
    notes: list[str] = field(default_factory=list)
    dx: TensorReport | None = omitted()
    dgamma: TensorReport | None = omitted()
    dbeta: TensorReport | None = omitted()
    y: TensorReport | None = omitted()
    mean: TensorReport | None = omitted()
    invstd: TensorReport | None = omitted()

    @property
    def tensors(self) -> dict[str, TensorReport]:
        """The tensors compared, by name, in the wire's order."""
        return {name: t for name in TENSOR_NAMES if (t := getattr(self, name)) is not None}

    def put(self, tensors: dict[str, TensorReport]) -> None:
        for name, t in tensors.items():
            setattr(self, name, t)

    @classmethod
    def of(cls, tensors: dict[str, TensorReport], notes: list[str] | None = None) -> Block:
        """A block that passes when every tensor does."""
        block = cls(all(t.passed for t in tensors.values()), list(notes or []))
        block.put(tensors)
        return block


@dataclass
class CrossCheck:
    method: str
    positions: int
    metrics: TensorReport


@dataclass
class FDBlock(Block):
    method: Literal["stats", "brute", "directional"] = "stats"
    requested: str = "auto"
    step: float = 1e-4  # relative to sqrt(var + eps), per channel
    step_min: float = 0.0
    step_max: float = 0.0
    estimated_error: float = 0.0  # the finite differences' own error, natural-scale units
    elements: int = 0  # how many dx values were differenced
    samples: int | None = omitted()
    directions: int | None = omitted()
    seed: int = 0
    cross_check: CrossCheck | None = omitted()


@dataclass
class VariantsBlock:
    passed: bool
    variants: dict[str, Block]
    spread: dict[str, float]  # per tensor: the largest difference between any two variants
    spread_pair: dict[str, list[str]]


@dataclass
class Checks:
    """One block per kind of evidence. Read as a mapping, it holds the blocks present other
    than ``variants`` (``checks["candidate"]``, ``checks.items()``)."""

    variant: Block | None = omitted()
    finite_difference: FDBlock | None = omitted()
    candidate: Block | None = omitted()
    saved_statistics: Block | None = omitted()
    variants: VariantsBlock | None = omitted()

    def blocks(self) -> list[Any]:
        return [b for b in (self.variant, self.finite_difference, self.candidate,
                            self.saved_statistics, self.variants) if b is not None]

    def _present(self) -> dict[str, Block]:
        names = ("variant", "finite_difference", "candidate", "saved_statistics")
        return {n: b for n in names if (b := getattr(self, n)) is not None}

    def __getitem__(self, name: str) -> Block:
        return self._present()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._present()

    def __iter__(self) -> Iterator[str]:
        return iter(self._present())

    def __len__(self) -> int:
        return len(self._present())

    def get(self, name: str, default: Any = None) -> Any:
        return self._present().get(name, default)

    def keys(self) -> list[str]:
        return list(self._present())

    def items(self) -> list[tuple[str, Block]]:
        return list(self._present().items())

    def values(self) -> list[Block]:
        return list(self._present().values())


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
    device: Literal["cpu", "gpu"]
    gradients: dict[str, np.ndarray] | None = omitted()  # the variant's; on the wire when asked for
    reference: dict[str, np.ndarray] | None = omitted()  # float64; on the wire when asked for
    checks: Checks = field(default_factory=Checks)
    notes: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

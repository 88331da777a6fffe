"""The wire contract (docs/design.md, and README "What the answer means") as pydantic models.

Tensor fields are validated by ``codec.decode`` in one step, never element by
element, and are described in the OpenAPI document by the ``Tensor`` schema
of ``openapi.py``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, model_validator
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from bncheck.numerics.check import FD_METHODS
from bncheck.numerics.dtypes import DTYPE_NAMES, WIRE_NAMES
from bncheck.numerics.pictures import Pictures
from bncheck.numerics.variants import VARIANTS

from . import codec

__all__ = ["CheckRequest", "CheckResponse", "Problem", "VariantInfo"]

# pydantic checks every local $ref against its own definitions but lets absolute URLs through;
# openapi.build() rewrites this placeholder to #/components/schemas/Tensor.
TENSOR_PLACEHOLDER = "https://bncheck.invalid/schemas/Tensor"
TENSOR_REF = {"$ref": TENSOR_PLACEHOLDER}
DEFAULT_MAX_ELEMENTS = 1 << 24


def _decode(value: Any, info: ValidationInfo) -> codec.Decoded:
    ctx = info.context or {}
    try:
        return codec.decode(value, max_elements=ctx.get("max_elements", DEFAULT_MAX_ELEMENTS),
                            lifted=ctx.get("lifted"), field=info.field_name)
    except codec.TensorError as exc:
        raise PydanticCustomError("tensor", "{reason}", {"reason": str(exc)}) from None  # noqa: EM101 (a type, not a message)


Tensor = Annotated[codec.Decoded, PlainValidator(_decode), WithJsonSchema(TENSOR_REF)]
TensorOut = Annotated[Any, WithJsonSchema(TENSOR_REF)]
DType = Annotated[str, WithJsonSchema({"type": "string", "enum": [*WIRE_NAMES, *DTYPE_NAMES]})]
Variant = Annotated[str, WithJsonSchema({"type": "string", "enum": [*VARIANTS, "all"], "default": "qianfeng"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Candidate(_Strict):
    """Outputs computed elsewhere, to verify. Send any of them."""

    y: Tensor | None = None
    mean: Tensor | None = None
    invstd: Tensor | None = None
    dx: Tensor | None = None
    dgamma: Tensor | None = None
    dbeta: Tensor | None = None


class FiniteDifference(_Strict):
    method: Literal[FD_METHODS] = Field("auto", description=(  # type: ignore[valid-type]
        "auto = stats on every element plus a brute cross-check where affordable; none skips."))
    samples: int | None = Field(None, ge=1, le=1 << 20, description="brute: positions per channel (default all)")
    directions: int = Field(4, ge=1, le=256, description="directional: seeded random directions")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    step: float = Field(1e-4, gt=0, le=0.1, allow_inf_nan=False,
                        description="step relative to sqrt(var + eps), per channel")


class ToleranceIn(_Strict):
    """Plain allclose terms: |candidate - reference| <= atol + rtol * |reference|."""

    rtol: float = Field(ge=0, le=1, allow_inf_nan=False)
    atol: float = Field(ge=0, allow_inf_nan=False)


class ToleranceSpec(_Strict):
    """Plain allclose terms, |candidate - reference| <= atol + rtol * |reference|: ``rtol`` and
    ``atol`` for every candidate tensor, or per tensor (``{"dgamma": {"rtol": 0, "atol": 1e-4}}``),
    the tensors left out getting the calibrated verdict."""

    rtol: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    atol: float | None = Field(None, ge=0, allow_inf_nan=False)
    y: ToleranceIn | None = None
    mean: ToleranceIn | None = None
    invstd: ToleranceIn | None = None
    dx: ToleranceIn | None = None
    dgamma: ToleranceIn | None = None
    dbeta: ToleranceIn | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ToleranceSpec:
        if (self.rtol is None) != (self.atol is None):
            msg = "give both rtol and atol, or tolerances per tensor"
            raise ValueError(msg)
        if self.rtol is not None and self.per_tensor():
            msg = "give rtol and atol for every tensor, or tolerances per tensor, not both"
            raise ValueError(msg)
        return self

    def per_tensor(self) -> dict[str, ToleranceIn]:
        return {name: getattr(self, name) for name in ("y", "mean", "invstd", "dx", "dgamma", "dbeta")
                if getattr(self, name) is not None}


class Output(_Strict):
    gradients: bool = Field(True, description="return the variant's dx, dgamma and dbeta")
    reference: bool = Field(False, description="return the float64 reference gradients too")
    encoding: Literal["list", "data", "b64"] | None = Field(None, description="default: x's encoding")
    plots: bool = Field(False, description=(
        "add to each tensor of the variant and candidate blocks what the HTML report draws (plots): per-channel "
        "tol_ratio, the worst ratio over (sample, channel), the worst cell's positions, a histogram; "
        "an answer in text/html (Accept) always has them"))


class CheckRequest(_Strict):
    x: Tensor
    dy: Tensor
    gamma: Tensor | None = Field(None, description="default ones")
    beta: Tensor | None = Field(None, description="default zeros")
    variant: Variant = "qianfeng"
    dtype: DType | None = Field(None, description="precision of the variant; default x's datatype, FP32 for lists")
    accum_dtype: DType | None = Field(None, description="accumulation precision; default float32 for 16-bit dtypes")
    eps: float = Field(1e-5, gt=0, allow_inf_nan=False)
    channel_axis: int = Field(1, ge=-32, le=31, description="1 for NCHW and (N, D); -1 for channels-last")
    training: bool = True
    running_mean: Tensor | None = None
    running_var: Tensor | None = None
    saved_mean: Tensor | None = None
    saved_invstd: Tensor | None = None
    candidate: Candidate | None = None
    finite_difference: FiniteDifference = Field(default_factory=FiniteDifference)
    tolerance: ToleranceSpec | None = Field(None, description="omit for the calibrated verdict")
    output: Output = Field(default_factory=Output)
    device: Literal["cpu", "gpu", "auto"] | None = Field(None, description="default: the server's BNCHECK_DEVICE")


# ---------------------------------------------------------------- response


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Every float a report holds. JSON has no NaN or Inf: a value that is not finite (an error
# over a zero reference, a finite difference that overflowed) travels as null.
Number = Annotated[float | None, Field(description="null where the value is not finite: JSON has no NaN or Inf")]


class ToleranceUsed(_Out):
    rtol: Number
    atol: Number
    mode: Literal["natural", "absolute"] = Field(description="natural: atol is in units of the natural scale")
    floor: Number = Field(description="always 1 (the first release's noise-floor widening; kept for compatibility)")
    basis: Literal["analytic", "calibrated", "user"] = Field(description=(
        "calibrated: measured on correct kernels run on these inputs; analytic: a first-order bound; "
        "user: the request's tolerance"))
    envelope: Number = Field(None, description="calibrated: correct kernels' worst error, natural units")
    margin: Number = Field(None, description=(
        "calibrated: allowed = margin * envelope * scale + rtol * |reference| (atol = margin * envelope)"))
    members: int | None = Field(None, description="calibrated: how many correct kernels the envelope spans")
    abs_floor: Number = Field(0.0, description=(
        "added to every element's allowance: the rounding of outputs in the dtype's subnormal range. "
        "allowed = rtol * |reference| + atol * scale + abs_floor, scale = 1 in absolute mode"))


class Resolution(_Out):
    """What a pass could not see: errors below these went unflagged."""

    natural: Number = Field(description="allowance where the reference is 0, in natural-scale units")
    max_abs: Number = Field(description="the largest error any element was allowed: a pass means no error above it")
    ulp: Number = Field(description="max_abs in ulps of the tensor's dtype at its largest |reference|")


class ChannelError(_Out):
    channel: int
    max_abs_err: Number
    tol_ratio: Number = Field(description="null when the channel holds a non-finite value")
    mismatched: int


class TensorReport(_Out):
    passed: bool
    max_abs_err: Number
    max_rel_err: Number = Field(description="over elements whose reference is not 0; null when not finite, "
                                "or not applicable (cancellation)")
    rms_err: Number
    max_ulp: Number = Field(description="in the candidate's dtype, over elements whose reference is not 0; "
                            "null when not applicable (cancellation)")
    tol_ratio: Number = Field(description="worst |err| / allowed; <= 1 passes; null if non-finite")
    worst_index: list[int]
    worst_candidate: float | Literal["nan", "inf", "-inf"]
    worst_reference: Number
    worst_allowed: Number = Field(description=(
        "the allowance at the worst element: tol_ratio = |worst_candidate - worst_reference| / worst_allowed"))
    mismatched: int
    total: int
    nonfinite: int
    channels_failed: int
    worst_channels: list[ChannelError]
    decided_by: Literal["relative", "natural_scale", "absolute", "nonfinite", "exact"]
    cancellation: bool
    dtype: str
    tolerance: ToleranceUsed
    compared: str | None = Field(None, description=(
        "present only when the numbers are not the tensor itself (directional derivatives, sampled positions)"))
    failed_channels: str = Field(description="every failing channel, in order, as ranges: '16-23,30'")
    resolution: Resolution | None
    plots: Pictures | None = Field(None, description=(
        "present when output.plots is true: what the HTML report draws, from every element's tol_ratio "
        "(null where the candidate is not finite)"))


class Block(_Out):
    passed: bool
    notes: list[str] = []
    dx: TensorReport | None = None
    dgamma: TensorReport | None = None
    dbeta: TensorReport | None = None
    y: TensorReport | None = None
    mean: TensorReport | None = None
    invstd: TensorReport | None = None


class CrossCheck(_Out):
    method: str
    positions: int
    metrics: TensorReport


class FDBlock(Block):
    method: Literal["stats", "brute", "directional"]
    requested: str
    step: Number
    step_min: Number
    step_max: Number
    estimated_error: Number = Field(description="the finite differences' own error, natural-scale units")
    elements: int
    samples: int | None = None
    directions: int | None = None
    seed: int
    cross_check: CrossCheck | None = None


class VariantsBlock(_Out):
    passed: bool
    variants: dict[str, Block]
    spread: dict[str, Number] = Field(description="per tensor: the largest difference between two variants")
    spread_pair: dict[str, list[str]]


class Checks(_Out):
    variant: Block | None = None
    finite_difference: FDBlock | None = None
    candidate: Block | None = None
    saved_statistics: Block | None = None
    variants: VariantsBlock | None = None


class Gradients(_Out):
    dx: TensorOut
    dgamma: TensorOut
    dbeta: TensorOut


class CheckResponse(_Out):
    passed: bool = Field(description="true only when every block in checks passed")
    variant: str
    dtype: str
    accum_dtype: str
    shape: list[int]
    channel_axis: int
    reduce_size: int
    training: bool
    eps: float
    device: Literal["cpu", "gpu"]
    gradients: Gradients | None = Field(None, description="absent for variant 'all' or output.gradients false")
    reference: Gradients | None = Field(None, description="float64; present when output.reference is true")
    checks: Checks
    timings_ms: dict[str, float]
    notes: list[str]


class VariantInfo(_Out):
    name: str
    summary: str
    formula: str
    reference: str
    seed_function: str


class FieldError(_Out):
    field: str
    message: str


class Problem(_Out):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] = []


def _tensor_fields(model: type[BaseModel]) -> frozenset[str]:
    def bare(t: Any) -> Any:
        return get_args(t)[0] if get_origin(t) is Annotated else t

    return frozenset(name for name, f in model.model_fields.items()
                     if codec.Decoded in {bare(t) for t in (f.annotation, *get_args(f.annotation))})


TENSOR_FIELDS = _tensor_fields(CheckRequest)  # read straight into arrays by fastlists.py
TENSOR_GROUPS = {"candidate": _tensor_fields(Candidate)}

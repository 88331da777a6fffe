"""The wire contract (docs/design.md, and README "What the answer means") as pydantic models:
the request, and the answer's model generated from the report's dataclasses.

Tensor fields are validated by ``codec.decode`` in one step, never element by
element, and are described in the OpenAPI document by the ``Tensor`` schema
of ``openapi.py``.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, WithJsonSchema, create_model, model_validator
from pydantic.functional_validators import PlainValidator
from pydantic_core import PydanticCustomError

from bncheck.numerics.check import FD_METHODS
from bncheck.numerics.dtypes import DTYPE_NAMES, WIRE_NAMES
from bncheck.numerics.report import CheckReport
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


class Gradients(_Out):
    dx: TensorOut
    dgamma: TensorOut
    dbeta: TensorOut


def _from_report(report: type, name: str, substitute: dict[str, Any]) -> type[BaseModel]:
    """The answer's model, generated from the report's one definition (numerics/report.py):
    the same fields, types and defaults; ``substitute`` gives the types the wire carries
    instead of arrays. Its nested dataclasses become their own schemas, unchanged."""
    hints = get_type_hints(report)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(report):
        kind = substitute.get(f.name, hints[f.name])
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (kind, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (kind, Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (kind, ...)
    model: type[BaseModel] = create_model(name, __base__=_Out, __doc__=report.__doc__, **fields)
    return model


CheckResponse = _from_report(CheckReport, "CheckResponse", {"gradients": Gradients | None,
                                                            "reference": Gradients | None})


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

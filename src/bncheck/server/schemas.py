"""The wire contract (docs/design.md, and README "What the answer means") as pydantic models,
generated from the one definition of each side: the request from numerics/request.py (its
tensors, options, defaults, bounds and descriptions), the answer from numerics/report.py.

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

from bncheck.numerics.dtypes import DTYPE_NAMES, WIRE_NAMES
from bncheck.numerics.report import CheckReport
from bncheck.numerics.request import CANDIDATE_NAMES, INPUT_NAMES, WIRE_OUTPUT, CheckOptions, FDOptions
from bncheck.numerics.variants import VARIANTS

from . import codec

__all__ = ["WIRE_OUTPUT", "CheckRequest", "CheckResponse", "Problem", "VariantInfo"]

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


def _field(f: dataclasses.Field[Any], kind: Any, default: Any = dataclasses.MISSING) -> tuple[Any, Any]:
    """A request field from its one definition (numerics/request.py): its type, default,
    description and bounds (floats must be finite)."""
    meta = dict(f.metadata)
    doc = meta.pop("doc", None)
    extra: dict[str, Any] = {"description": doc, **meta}
    if _is_float(kind):
        extra["allow_inf_nan"] = False
    if isinstance(default, type) and issubclass(default, BaseModel):  # the wire's own model, made afresh
        return kind, Field(default_factory=default, **extra)
    if default is not dataclasses.MISSING:
        return kind, Field(default, **extra)
    if f.default_factory is not dataclasses.MISSING:
        return kind, Field(default_factory=f.default_factory, **extra)  # type: ignore[arg-type]
    return kind, Field(f.default, **extra)


def _is_float(kind: Any) -> bool:
    return kind is float or float in get_args(kind)


def _model(name: str, source: type, doc: str | None = None, substitute: dict[str, Any] | None = None,
           skip: tuple[str, ...] = (), extra: dict[str, Any] | None = None, base: type[BaseModel] = _Strict
           ) -> type[BaseModel]:
    """A strict pydantic model with ``source``'s fields (request.py), ``substitute`` giving the
    wire's types where they differ, ``extra`` the wire's own fields before them."""
    hints = get_type_hints(source)
    fields: dict[str, Any] = dict(extra or {})
    for f in dataclasses.fields(source):
        if f.name in skip:
            continue
        if substitute and f.name in substitute:
            kind, default = substitute[f.name]
            fields[f.name] = _field(f, kind, default)
        else:
            fields[f.name] = _field(f, hints[f.name])
    model: type[BaseModel] = create_model(name, __base__=base, __doc__=doc or source.__doc__, **fields)
    return model


Candidate = create_model(  # type: ignore[call-overload]
    "Candidate", __base__=_Strict, __doc__="Outputs computed elsewhere, to verify. Send any of them.",
    **{name: (Tensor | None, None) for name in CANDIDATE_NAMES})

FiniteDifference = _model("FiniteDifference", FDOptions)


class ToleranceIn(_Strict):
    """Plain allclose terms: |candidate - reference| <= atol + rtol * |reference|."""

    rtol: float = Field(ge=0, le=1, allow_inf_nan=False)
    atol: float = Field(ge=0, allow_inf_nan=False)


class _ToleranceForms(_Strict):
    rtol: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    atol: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_form(self) -> _ToleranceForms:
        if (self.rtol is None) != (self.atol is None):
            msg = "give both rtol and atol, or tolerances per tensor"
            raise ValueError(msg)
        if self.rtol is not None and self.per_tensor():
            msg = "give rtol and atol for every tensor, or tolerances per tensor, not both"
            raise ValueError(msg)
        return self

    def per_tensor(self) -> dict[str, ToleranceIn]:
        return {name: t for name in CANDIDATE_NAMES if (t := getattr(self, name, None)) is not None}


ToleranceSpec = create_model(  # type: ignore[call-overload]
    "ToleranceSpec", __base__=_ToleranceForms,
    __doc__=("Plain allclose terms, |candidate - reference| <= atol + rtol * |reference|: ``rtol`` and "
             "``atol`` for every candidate tensor, or per tensor (``{\"dgamma\": {\"rtol\": 0, \"atol\": 1e-4}}``), "
             "the tensors left out getting the calibrated verdict."),
    **{name: (ToleranceIn | None, None) for name in CANDIDATE_NAMES})

# What the answer carries: the wire's own choices, and the one check option that shapes it.
Output = _model("Output", CheckOptions, doc="What the answer carries.", skip=tuple(
    f.name for f in dataclasses.fields(CheckOptions) if f.name != "plots"), extra={
    "gradients": (bool, Field(True, description="return the variant's dx, dgamma and dbeta")),
    "reference": (bool, Field(False, description="return the float64 reference gradients too")),
    "encoding": (Literal["list", "data", "b64"] | None, Field(None, description="default: x's encoding")),
})

_TENSOR_DOCS = {"gamma": "default ones", "beta": "default zeros"}
# A generated model is no type to mypy: code that reads a request sees it as Any.
CheckRequest: Any = _model(
    "CheckRequest", CheckOptions, doc="A check: the tensors (x and dy at least) and the options.",
    skip=WIRE_OUTPUT,
    substitute={"variant": (Variant, dataclasses.MISSING), "dtype": (DType | None, dataclasses.MISSING),
                "accum_dtype": (DType | None, dataclasses.MISSING),
                "finite_difference": (FiniteDifference, FiniteDifference),
                "tolerance": (ToleranceSpec | None, dataclasses.MISSING)},
    extra={**{name: ((Tensor, ...) if name in ("x", "dy") else
                     (Tensor | None, Field(None, description=_TENSOR_DOCS.get(name))))
              for name in INPUT_NAMES},
           "candidate": (Candidate | None, None),
           "output": (Output, Field(default_factory=Output))})


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

"""The OpenAPI document: FastAPI's, plus the request model and the Tensor schemas.

/v1/check reads its body itself (off the event loop), so FastAPI does not see
a body parameter; the request schema is added here from the pydantic model.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bncheck.numerics.dtypes import WIRE_NAMES
from bncheck.numerics.report import OMIT, CheckReport
from bncheck.numerics.variants import VARIANTS

from . import kserve
from .fielddocs import describe
from .problems import PROBLEMS
from .schemas import TENSOR_PLACEHOLDER, CheckRequest, CheckResponse, Problem

__all__ = ["EXAMPLE", "PROBLEM_RESPONSES", "build"]

_REF = "#/components/schemas/{model}"
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 32}
_DATATYPE = {"type": "string", "enum": list(WIRE_NAMES)}
# As KServe v2 (tritonclient's InferInput) sends them: a name that agrees with the field, and parameters.
_V2_KEYS = {"name": {"type": "string", "description": "optional; the field's name (or candidate_<field>)"},
            "parameters": {"type": "object", "description": "optional; binary_data_size is for /v2 only"}}

TENSOR_SCHEMAS: dict[str, Any] = {
    "Tensor": {
        "description": "A tensor: nested lists (row-major), or KServe v2 style with data or b64. "
                       "NaN and Inf travel only in b64.",
        "anyOf": [{"$ref": "#/components/schemas/NestedList"}, {"$ref": "#/components/schemas/TensorData"},
                  {"$ref": "#/components/schemas/TensorB64"}],
    },
    "NestedList": {
        "type": "array",
        "items": {"anyOf": [{"type": "number"}, {"$ref": "#/components/schemas/NestedList"}]},
        "description": "Rectangular nested lists of numbers, outermost axis first.",
    },
    "TensorData": {
        "type": "object",
        "required": ["shape", "datatype", "data"],
        "additionalProperties": False,
        "properties": {"shape": _SHAPE, "datatype": _DATATYPE, **_V2_KEYS,
                       "data": {"type": "array", "items": {"anyOf": [{"type": "number"},
                                                                     {"$ref": "#/components/schemas/NestedList"}]},
                                "description": "flat (row-major), or nested to the shape"}},
    },
    "TensorB64": {
        "type": "object",
        "required": ["shape", "datatype", "b64"],
        "additionalProperties": False,
        "properties": {"shape": _SHAPE, "datatype": _DATATYPE, **_V2_KEYS,
                       "b64": {"type": "string", "contentEncoding": "base64",
                               "description": "little-endian row-major bytes, prod(shape) * itemsize of them"}},
    },
}

# The path parameters' schemas (openapi.build): a model is a variant, its one version "1".
PATH_SCHEMAS = {"model": {"type": "string", "enum": list(VARIANTS), "description": "a variant"},
                "version": {"type": "string", "enum": [kserve.MODEL_VERSION]}}



_V2_SHAPE = {"type": "array", "items": {"type": "integer"}}
_TENSOR_OUT = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"}, "shape": _V2_SHAPE,
    "data": {"type": "array"}, "parameters": {"type": "object"}}}
# System shared memory (regions.py; with BNCHECK_CLIENT_SHM): where a tensor is instead of its data.
_IN_REGION = {"shared_memory_region": {"type": "string", "description": "a registered region's name"},
              "shared_memory_byte_size": {"type": "integer", "minimum": 0},
              "shared_memory_offset": {"type": "integer", "minimum": 0, "default": 0}}
V2_SCHEMAS: dict[str, Any] = {
    "V2Error": {"type": "object", "required": ["error"], "description": "an error, in the KServe v2 form",
                "properties": {"error": {"type": "string", "description": "what is wrong, naming the input "
                                                                        "or parameter"}}},
    "InferInput": {
        "type": "object", "required": ["name", "shape", "datatype"], "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "enum": list(kserve.INPUTS)},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "maxItems": 32},
            "datatype": {"type": "string", "enum": list(WIRE_NAMES)},
            "parameters": {"type": "object", "description": "binary_data_size: the tensor's raw bytes follow "
                                                            "the JSON header (in input order); or shared_memory_"
                                                            "region, _byte_size and _offset: they are there",
                           "properties": {"binary_data_size": {"type": "integer", "minimum": 0}, **_IN_REGION}},
            "data": {"type": "array", "description": "flat (row-major) or nested to the shape"},
        },
    },
    "InferRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "description": "echoed in the answer"},
            "parameters": {"type": "object", "additionalProperties": False,
                           "description": "the check's options (as in /v1/check) and binary_data_output",
                           "properties": {name: {"description": what} for name, what in kserve.PARAMETERS.items()}},
            "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/InferInput"},
                       "description": "x and dy at least"},
            "outputs": {"type": "array", "description": "the outputs to send (default all), each JSON or binary",
                        "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string", "enum": list(kserve.OUTPUTS)},
                               "parameters": {"type": "object",
                                              "properties": {"binary_data": {"type": "boolean"}, **_IN_REGION}}}}},
        },
    },
    "InferResponse": {
        "type": "object", "required": ["model_name", "outputs"],
        "properties": {"model_name": {"type": "string", "description": "the variant"},
                       "model_version": {"type": "string", "description": "always 1"},
                       "id": {"type": "string", "description": "the request's id, when it sent one"},
                       "outputs": {"type": "array", "items": _TENSOR_OUT, "description": (
                           "dx, dgamma, dbeta, passed (BOOL [1]) and report (BYTES [1], the /v1/check JSON "
                           "report without gradients), as asked")}},
    },
}


EXAMPLE = {
    "x": [[1.0, 2.0, 3.0, 4.0], [2.0, 0.5, -1.0, 3.0], [0.0, 1.0, 2.0, -2.0]],
    "dy": [[0.1, -0.2, 0.3, 0.4], [0.5, 0.6, -0.7, 0.8], [0.9, 1.0, 1.1, -1.2]],
    "gamma": [1.0, 0.5, -2.0, 1.5],
    "variant": "qianfeng",
    "dtype": "FP32",
    "candidate": {"dbeta": [1.5, 1.4, 0.7, 0.0]},
}

_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
def _problem_responses() -> dict[int | str, dict[str, Any]]:
    """One response per status, listing the kinds of problems.PROBLEMS that answer with it."""
    by_status: dict[int, list[str]] = {}
    for name, kind in PROBLEMS.items():
        if name != "http":
            by_status.setdefault(kind.status, []).append(f"`{name}`: {kind.meaning}")
    return {status: {"description": "; ".join(lines), "content": _PROBLEM}
            for status, lines in sorted(by_status.items())}


PROBLEM_RESPONSES = _problem_responses()

REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CheckRequest"},
                                      "examples": {"small": {"summary": "3 x 4, one candidate tensor",
                                                             "value": EXAMPLE}}}},
}


BEARER = {"bearer": {"type": "http", "scheme": "bearer",
                     "description": "only when the server sets BNCHECK_TOKEN: Authorization: Bearer <token>"}}


def build(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    parts = schema.setdefault("components", {})
    components = parts.setdefault("schemas", {})
    for model in (CheckRequest, Problem):
        doc = model.model_json_schema(ref_template=_REF)
        components.update(doc.pop("$defs", {}))
        components[model.__name__] = doc
    # The answer, generated from the report's dataclasses: every float may be null on the wire
    # (JSON has no NaN or Inf; wire.py writes a non-finite value as null).
    answer = _nullable_numbers(CheckResponse.model_json_schema(ref_template=_REF, mode="serialization"))
    components.update(answer.pop("$defs", {}))
    components["CheckResponse"] = answer
    _always_sent(components)
    components.update(TENSOR_SCHEMAS)
    components.update(V2_SCHEMAS)
    for name, component in components.items():
        for prop, sub in (component.get("properties") or {}).items():
            if "description" not in sub and (what := describe(name, prop)):
                sub["description"] = what
    parts["securitySchemes"] = BEARER
    for path, item in schema["paths"].items():
        for operation in item.values():
            if path.startswith(("/v1/", "/v2")) and not path.startswith("/v2/health") or path == "/metrics":
                # Optional: only a server with BNCHECK_TOKEN asks for it ({} is "no auth").
                operation["security"] = [{}, {"bearer": []}]
            for param in operation.get("parameters", []):
                if param["in"] == "path" and param["name"] in PATH_SCHEMAS:
                    param["schema"] = PATH_SCHEMAS[param["name"]]
            if path.startswith("/v2"):  # FastAPI's 422 for path parameters: a str never fails
                operation["responses"].pop("422", None)
    if "HTTPValidationError" not in str(schema["paths"]):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    html = {"schema": {"type": "string"}, "description": "with Accept: text/html, the report as one "
                                                          "self-contained HTML page with its pictures"}
    for path in ("/v1/check", "/v2/models/{model}/infer", "/v2/models/{model}/versions/{version}/infer"):
        schema["paths"][path]["post"]["responses"]["200"]["content"]["text/html"] = html
    ok = schema["paths"]["/v1/check"]["post"]["responses"]["200"]["content"]["application/json"]
    ok["examples"] = {"small": {"summary": "the answer to the request example", "value": _example_answer()}}
    app.openapi_schema = _local_refs(schema)
    return app.openapi_schema


def _always_sent(components: dict[str, Any]) -> None:
    """What the answer always carries is required: every field of a report dataclass but those
    left out when None (report.OMIT). A default does not make a field optional on the wire."""
    seen: dict[str, Any] = {}
    todo: list[Any] = [CheckReport]
    while todo:
        cls = todo.pop()
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or cls.__name__ in seen:
            continue
        seen[cls.__name__] = cls
        todo += [t for hint in typing.get_type_hints(cls).values() for t in _classes(hint)]
    seen["CheckResponse"] = CheckReport
    for name, cls in seen.items():
        if name in components:
            components[name]["required"] = [f.name for f in dataclasses.fields(cls) if not f.metadata.get(OMIT)]


def _classes(hint: Any) -> list[Any]:
    args = typing.get_args(hint)
    return [hint] if not args else [c for a in args for c in _classes(a)]


def _nullable_numbers(schema: Any) -> Any:
    """Every number may be null (and no answer schema states a default: the answer sends its
    fields, or leaves out those marked report.OMIT)."""
    if isinstance(schema, dict):
        schema = {k: v for k, v in schema.items() if k != "default"}
        if schema.get("type") == "number":
            rest = {k: v for k, v in schema.items() if k != "type"}
            return {**rest, "anyOf": [{"type": "number"}, {"type": "null"}]}
        options = schema.get("anyOf")
        if isinstance(options, list):  # a union says for itself whether it may be null
            return {**{k: _nullable_numbers(v) for k, v in schema.items() if k != "anyOf"},
                    "anyOf": [o if o.get("type") == "number" else _nullable_numbers(o) for o in options]}
        return {k: _nullable_numbers(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_nullable_numbers(v) for v in schema]
    return schema


def _example_answer() -> dict[str, Any]:
    """The real answer to EXAMPLE, computed when the document is first asked for."""
    import orjson

    from . import runner
    from .settings import Settings

    return dict(orjson.loads(runner.run(orjson.dumps(EXAMPLE), Settings(executor="thread")).body))


def _local_refs(doc: Any) -> Any:
    if isinstance(doc, dict):
        if doc.get("$ref") == TENSOR_PLACEHOLDER:
            return {**doc, "$ref": "#/components/schemas/Tensor"}
        return {k: _local_refs(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_local_refs(v) for v in doc]
    return doc

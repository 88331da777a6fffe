"""Routes of the KServe v2 inference protocol (kserve.py does the work), beside /v1.

The same limits, token, queue, workers and metrics as /v1/check: an infer is
``routes.run_check`` with a ``runner.Call`` naming the model. Errors are ``{"error": "..."}``
(errors.render). The health routes, like /livez and /readyz, need no token.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from bncheck import __version__
from bncheck.numerics.variants import VARIANTS

from . import kserve, regions, runner
from .errors import ProblemError
from .routes import AUTH, readiness, run_check, wants_html

__all__ = ["router"]

router = APIRouter(tags=["KServe v2"])
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}}
_STATUS = {400: "a malformed or invalid request", 401: "BNCHECK_TOKEN is set and the bearer token is wrong",
           403: "system shared memory is off (BNCHECK_CLIENT_SHM)",
           404: "no such model (the models are the variants) or version", 413: "the body is too large",
           415: "a compressed body (Content-Encoding) is not supported",
           503: "busy, over the time budget, a worker died, or not ready; Retry-After"}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"description": _STATUS[s], "content": _ERROR} for s in statuses}


def _model(model: str, version: str | None = None) -> str:
    if model not in VARIANTS:
        raise kserve.unknown_model(model)
    if version is not None and version != kserve.MODEL_VERSION:
        detail = f"model {model!r} has version {kserve.MODEL_VERSION} only, not {version[:20]!r}"
        raise ProblemError("unknown-model", detail, [("version", detail)])
    return model


@router.get("/v2", summary="v2 server metadata", dependencies=AUTH, responses=_errors(401),
            response_description="name, version and the protocol extensions (binary_tensor_data)")
async def server_metadata(request: Request) -> dict[str, Any]:
    return kserve.server_metadata(__version__, shared_memory=request.app.state.settings.client_shm)


@router.get("/v2/health/live", summary="v2 liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", summary="v2 readiness: a tiny known check passes", responses=_errors(503))
async def ready(request: Request) -> dict[str, bool]:
    await readiness(request)
    return {"ready": True}


_META = {"summary": "v2 model metadata: inputs and outputs (shapes dynamic, -1)", "dependencies": AUTH,
         "responses": _errors(401, 404)}


@router.get("/v2/models/{model}", **_META)  # type: ignore[arg-type]
async def model_metadata(model: str) -> dict[str, Any]:
    return kserve.model_metadata(_model(model))


@router.get("/v2/models/{model}/versions/{version}", **_META)  # type: ignore[arg-type]
async def model_version_metadata(model: str, version: str) -> dict[str, Any]:
    return kserve.model_metadata(_model(model, version))


@router.get("/v2/models/{model}/ready", summary="v2 model readiness", responses=_errors(401, 404, 503),
            dependencies=AUTH)
async def model_ready(request: Request, model: str) -> dict[str, Any]:
    _model(model)
    await readiness(request)
    return {"name": model, "ready": True}


_HEADER_LENGTH = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                  "schema": {"type": "integer", "minimum": 0},
                  "description": "binary tensor data extension: the length of the JSON header; raw tensor bytes "
                                 "follow it"}
_INFER = {
    "summary": "v2 inference: check a batch-norm backward (the model is the variant)",
    "description": "Inputs x and dy (and gamma, beta, saved statistics, candidate_* outputs to verify), as JSON "
                   "data or raw bytes after the JSON header (binary tensor data extension). Outputs: the variant's "
                   "dx, dgamma, dbeta, passed (BOOL) and report (BYTES: the /v1/check JSON report).",
    "dependencies": AUTH,
    "responses": {200: {"description": "the outputs; raw bytes follow the JSON header when any output is binary "
                                       "(Inference-Header-Content-Length says where)",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                                    "application/octet-stream": {"schema": {"type": "string",
                                                                            "format": "binary"}}}},
                  **_errors(400, 401, 403, 404, 413, 415, 503)},
}
_BODY = {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}


@router.post("/v2/models/{model}/infer", **_INFER,  # type: ignore[arg-type]
             openapi_extra={"parameters": [_HEADER_LENGTH], "requestBody": _BODY})
async def infer(request: Request, model: str) -> Response:
    return await run_check(request, _call(request, _model(model)))


@router.post("/v2/models/{model}/versions/{version}/infer", **_INFER,  # type: ignore[arg-type]
             openapi_extra={"parameters": [_HEADER_LENGTH], "requestBody": _BODY})
async def infer_version(request: Request, model: str, version: str) -> Response:
    return await run_check(request, _call(request, _model(model, version)))


def _call(request: Request, model: str) -> runner.Call:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        detail = f"Content-Encoding {encoding[:20]!r} is not supported; send the body uncompressed"
        raise ProblemError("unsupported-media", detail, [("content-encoding", detail)])
    length = request.headers.get("inference-header-content-length")
    if length is not None and not length.strip().isdigit():
        detail = f"Inference-Header-Content-Length must be a number of bytes, not {length[:20]!r}"
        raise ProblemError("malformed-infer", detail, [("Inference-Header-Content-Length", detail)])
    shared = request.app.state.regions.snapshot() if request.app.state.settings.client_shm else ()
    return runner.Call(model, None if length is None else int(length), wants_html(request), shared)


# ------------------------------------------------------------------ system shared memory (regions.py)
# Register and unregister answer {} (Triton sends an empty body; its clients read nothing on success).

_SHM: dict[str, Any] = {"tags": ["KServe v2 system shared memory"], "dependencies": AUTH,
                        "responses": _errors(400, 401, 403)}


def _registry(request: Request) -> regions.Registry:
    if not request.app.state.settings.client_shm:
        raise regions.disabled()
    registry: regions.Registry = request.app.state.regions
    return registry


@router.get("/v2/systemsharedmemory/status", summary="the registered shared-memory regions", **_SHM)
async def shm_status(request: Request) -> list[dict[str, Any]]:
    return _registry(request).status(None)


@router.get("/v2/systemsharedmemory/region/{name}/status", summary="one registered shared-memory region", **_SHM)
async def shm_region_status(request: Request, name: str) -> list[dict[str, Any]]:
    return _registry(request).status(name)


@router.post("/v2/systemsharedmemory/region/{name}/register", **_SHM,
             summary="register a window of a /dev/shm object as a region (BNCHECK_CLIENT_SHM)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                 "type": "object", "required": ["key", "byte_size"],
                 "properties": {"key": {"type": "string", "description": "the object's shm_open name"},
                                "offset": {"type": "integer", "minimum": 0, "default": 0},
                                "byte_size": {"type": "integer", "minimum": 1}}}}}}})
async def shm_register(request: Request, name: str) -> dict[str, Any]:
    registry = _registry(request)
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ProblemError("malformed-json", f"the body is not valid JSON: {exc}") from None
    registry.register(name, body)
    return {}


@router.post("/v2/systemsharedmemory/region/{name}/unregister", summary="unregister one region", **_SHM)
async def shm_unregister(request: Request, name: str) -> dict[str, Any]:
    _registry(request).unregister(name)
    return {}


@router.post("/v2/systemsharedmemory/unregister", summary="unregister every region", **_SHM)
async def shm_unregister_all(request: Request) -> dict[str, Any]:
    _registry(request).unregister(None)
    return {}

"""One /v1/check, from body bytes to response bytes, run off the event loop.

parse (lift_b64, then simdjson for large nested lists or orjson, pydantic, codec)
-> numerics.check -> wire dict -> JSON bytes (or, for a worker, the pieces of them).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from bncheck import htmlreport, wire
from bncheck.numerics import check
from bncheck.numerics.check import Limits
from bncheck.numerics.report import CheckReport
from bncheck.numerics.request import INPUT_NAMES, CheckOptions, FDOptions

from . import codec, fastlists
from .errors import ProblemError, validation_problem
from .regions import Region
from .schemas import TENSOR_FIELDS, TENSOR_GROUPS, WIRE_OUTPUT, CheckRequest
from .settings import Settings

__all__ = ["V1", "Call", "Outcome", "evaluate", "parse", "run", "to_wire"]


@dataclass(frozen=True)
class Outcome:
    body: bytes
    passed: bool
    elements: int
    timings_ms: dict[str, float]
    shared: tuple[str, int] | None = None  # the body is in this shared-memory segment instead
    parts: tuple[bytes | memoryview, ...] = ()  # or, in the worker only (unpicklable), in these pieces
    media_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Call:
    """What a worker needs besides the body: the protocol (/v1, or KServe v2 with its model,
    where its JSON header ends and the shared-memory regions it may name) and whether the
    answer is the HTML report."""

    model: str | None = None  # a v2 infer of this model; None: /v1/check
    header_length: int | None = None  # v2: Inference-Header-Content-Length
    html: bool = False
    regions: tuple[Region, ...] = ()  # v2: the shared-memory regions registered now (regions.py)

    @property
    def path(self) -> str:
        return "/v1/check" if self.model is None else f"/v2/models/{self.model}/infer"


V1 = Call()


def parse(body: Any, settings: Settings) -> Any:
    """The request from its JSON ``body`` (bytes, or an mmap of them)."""
    text, lifted = codec.lift_b64(body)
    data = fastlists.parse(text, TENSOR_FIELDS, TENSOR_GROUPS)  # None: orjson reads it
    if data is None:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ProblemError("malformed-json", _json_error(bytes(body))) from None
    if not isinstance(data, dict):
        detail = "the body must be a JSON object with at least x and dy"
        raise ProblemError("invalid-input", detail, [("body", detail)])
    context = {"max_elements": settings.max_elements, "lifted": lifted}
    try:
        return CheckRequest.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_problem(exc.errors(include_input=False, include_url=False)) from None


def _json_error(body: bytes) -> str:
    """What is wrong with a body orjson refused, with positions in the body as sent (not in
    the text lift_b64 made of it)."""
    if not body.strip():
        return "the body is empty; send a JSON object"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"the body is not valid JSON: {exc}"
    return "the body is not valid JSON"


def _array(t: codec.Decoded | None) -> np.ndarray | None:
    return None if t is None else t.array


def run(body: Any, settings: Settings, *, deadline: float | None = None, joined: bool = True,
        html: bool = False) -> Outcome:
    """The answer to one request body. ``joined=False`` leaves a long answer in ``parts``
    (its long b64 texts are not copied into one bytes object: for a writer of pieces).
    ``html``: the HTML report (htmlreport.py) instead of JSON."""
    start = time.perf_counter()
    req = parse(body, settings)
    if html:
        req = req.model_copy(update={"output": req.output.model_copy(update={"plots": True, "gradients": False,
                                                                             "reference": False})})
    decoded = (time.perf_counter() - start) * 1e3
    report = evaluate(req, settings, deadline)
    if html:
        return html_outcome(to_wire(req, report), report)
    encode_start = time.perf_counter()
    held = codec.Held()
    wire = to_wire(req, report, held)
    timings = wire["timings_ms"]
    timings.update(decode=decoded, encode=(time.perf_counter() - encode_start) * 1e3,
                   total=(time.perf_counter() - start) * 1e3)
    # The answer is bncheck's own: it is not validated again here (a fault of ours must never
    # read as the caller's 422). Tests hold every answer to the OpenAPI schema instead.
    # Long b64 text joins the JSON after orjson has written the rest.
    doc = orjson.dumps(wire)
    elements = int(np.prod(report.shape))
    if joined or not held.texts:
        return Outcome(held.splice(doc), report.passed, elements, timings)
    return Outcome(b"", report.passed, elements, timings, parts=tuple(held.pieces(doc)))


def html_outcome(wire: dict[str, Any], report: CheckReport) -> Outcome:
    page = htmlreport.render(wire).encode()
    return Outcome(page, report.passed, int(np.prod(report.shape)), wire["timings_ms"],
                   media_type="text/html; charset=utf-8")


def evaluate(req: Any, settings: Settings, deadline: float | None = None) -> CheckReport:
    """The numerics' report on a validated request (/v1 and /v2 alike): its fields are
    request.py's, so they pass over by name; only the wire's own forms are translated."""
    options = {f.name: getattr(req, f.name) for f in dataclasses.fields(CheckOptions) if f.name not in WIRE_OUTPUT}
    options.update(
        dtype=req.dtype or req.x.dtype_name or "float32",
        finite_difference=FDOptions(**req.finite_difference.model_dump()),
        tolerance=_tolerance(req),
        device=req.device or settings.device,
        **{name: getattr(req.output, name) for name in WIRE_OUTPUT},
    )
    tensors = {name: _array(getattr(req, name)) for name in INPUT_NAMES}
    candidate = None
    if req.candidate is not None:
        candidate = {k: v.array for k, v in req.candidate if v is not None}
    return check(**tensors, candidate=candidate, limits=Limits(fd_work=settings.fd_work, deadline=deadline),
                 **options)


def _tolerance(req: Any) -> tuple[float, float] | dict[str, tuple[float, float]] | None:
    t = req.tolerance
    if t is None:
        return None
    if t.rtol is not None and t.atol is not None:
        return (t.rtol, t.atol)
    return {name: (v.rtol, v.atol) for name, v in t.per_tensor().items()}


def to_wire(req: Any, report: CheckReport, held: codec.Held | None = None) -> dict[str, Any]:
    """The answer's document (wire.document), with the arrays the request asked for encoded
    as it asked (a NaN or Inf forces b64, with a note)."""
    encoding = req.output.encoding or req.x.encoding
    notes: list[str] = []

    def tensors(arrays: dict[str, np.ndarray], what: str) -> dict[str, Any]:
        out = {}
        for name, arr in arrays.items():
            out[name], used = codec.encode(arr, encoding, held)
            if used != encoding:
                notes.append(f"{what}.{name} holds NaN or Inf, which JSON numbers cannot carry: sent as b64")
        return out

    arrays: dict[str, Any] = {}
    if req.output.gradients and report.gradients is not None:
        arrays["gradients"] = tensors(report.gradients, "gradients")
    if req.output.reference and report.reference is not None:
        arrays["reference"] = tensors(report.reference, "reference")
    return wire.document(report, arrays, notes)

"""Every error leaves as ``application/problem+json`` (RFC 9457), translated here only.
The kinds of problem, with their status and title, are the table of problems.py."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from bncheck.numerics.errors import DeviceUnavailableError, InputError, WorkLimitError

from .problems import PROBLEMS
from .schemas import Problem

__all__ = ["ProblemError", "install", "problem_response", "validation_problem"]

log = logging.getLogger("bncheck.errors")
MEDIA_TYPE = "application/problem+json"
MAX_ERRORS = 20
MAX_MESSAGE = 300


class ProblemError(Exception):
    """Raised anywhere in the service to answer with a problem document."""

    def __init__(self, kind: str, detail: str, errors: Sequence[tuple[str, str]] = (),
                 headers: dict[str, str] | None = None, *, status: int | None = None, title: str | None = None
                 ) -> None:
        """``kind`` is a key of problems.PROBLEMS, which gives status and title; ``status`` and
        ``title`` override them only for the router's own refusals (kind "http": 404, 405)."""
        super().__init__(detail)
        known = PROBLEMS[kind]
        self.kind, self.detail = kind, detail
        self.status, self.title = status or known.status, title or known.title
        self.errors = list(errors)
        self.headers = headers or {}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def problem_body(exc: ProblemError, instance: str | None = None) -> bytes:
    errors = [{"field": f, "message": _clip(m)} for f, m in exc.errors[:MAX_ERRORS]]
    doc = Problem(type=f"/problems/{exc.kind}", title=exc.title, status=exc.status, detail=_clip(exc.detail),
                  instance=instance, errors=errors)
    return doc.model_dump_json(exclude_none=True).encode()


def problem_response(exc: ProblemError, instance: str | None = None) -> Response:
    return Response(problem_body(exc, instance), status_code=exc.status, media_type=MEDIA_TYPE,
                    headers=exc.headers)


def _loc(loc: Sequence[Any]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif item in ("body", "function-after", "function-plain") or str(item).startswith("function-"):
            continue
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "body"


def validation_problem(errors: Sequence[Any]) -> ProblemError:
    """pydantic's errors, without the inputs they carry (they may be huge)."""
    pairs = [(_loc(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in errors]
    first = pairs[0] if pairs else ("body", "invalid")
    more = f" (and {len(pairs) - 1} more)" if len(pairs) > 1 else ""
    return ProblemError("invalid-input", f"{first[0]}: {first[1]}{more}", pairs)


def from_domain(exc: InputError) -> ProblemError:
    if isinstance(exc, DeviceUnavailableError):
        kind = "device-unavailable"
    elif isinstance(exc, WorkLimitError):
        kind = "too-much-work"
    else:
        kind = "invalid-input"
    return ProblemError(kind, str(exc), [(exc.field, exc.message)])


_HTTP_TITLES = {404: "Not found", 405: "Method not allowed"}


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> Response:
        return problem_response(exc, request.url.path)

    @app.exception_handler(InputError)
    async def _domain(request: Request, exc: InputError) -> Response:
        return problem_response(from_domain(exc), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> Response:
        return problem_response(validation_problem(exc.errors()), request.url.path)

    @app.exception_handler(ValidationError)
    async def _validation(request: Request, exc: ValidationError) -> Response:
        return problem_response(validation_problem(exc.errors()), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = _HTTP_TITLES.get(exc.status_code, "HTTP error")
        headers = dict(exc.headers or {})
        err = ProblemError("http", str(exc.detail), headers=headers, status=exc.status_code, title=title)
        return problem_response(err, request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # Not a bug: the client closed the connection before its body arrived. Nobody
        # will read this answer; the access log shows the 400.
        err = ProblemError("client-disconnected", "the body did not arrive in full")
        return problem_response(err, request.url.path)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return problem_response(internal_problem(exc, request.url.path), request.url.path)


def internal_problem(exc: BaseException, where: str) -> ProblemError:
    """A fault of bncheck's: a 500 with an id that the log line carries too, never a 4xx."""
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s on %s", error_id, where, exc_info=exc)
    detail = f"bncheck hit a bug (error id {error_id}); the server log has the trace under that id"
    return ProblemError("internal", detail)

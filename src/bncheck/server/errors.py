"""Every error leaves as ``application/problem+json`` (RFC 9457), translated here only;
under /v2 as the KServe v2 protocol's ``{"error": "..."}`` (``render``), with 400 where
/v1 says 422, as Triton does. The kinds of problem, with their status and title, are the
table of problems.py."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
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

__all__ = ["ProblemError", "bad_request", "install", "problem_response", "render", "validation_problem"]

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


def is_v2(path: str | None) -> bool:
    return path is not None and (path == "/v2" or path.startswith("/v2/"))


def render(exc: ProblemError, path: str | None) -> tuple[int, bytes, str]:
    """Status, body and media type of ``exc`` answered on ``path``."""
    if is_v2(path):
        status = 400 if exc.status == 422 else exc.status
        return status, json.dumps({"error": _clip(exc.detail)}).encode(), "application/json"
    return exc.status, problem_body(exc, path), MEDIA_TYPE


def problem_response(exc: ProblemError, instance: str | None = None) -> Response:
    status, body, media = render(exc, instance)
    return Response(body, status_code=status, media_type=media, headers=exc.headers)


def bad_request(field: str, message: str, *, more: Sequence[tuple[str, str]] = (), kind: str = "invalid-input"
                ) -> ProblemError:
    """A field is wrong: detail "field: message", and the errors list."""
    tail = f" (and {len(more)} more)" if more else ""
    return ProblemError(kind, f"{field}: {message}{tail}", [(field, message), *more])


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
    pairs = [(_loc(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in errors] or [("body", "invalid")]
    return bad_request(*pairs[0], more=pairs[1:])


def from_domain(exc: InputError, rename: Callable[[str], str] = str) -> ProblemError:
    """The numerics' error; ``rename`` gives its field the name the caller's protocol uses."""
    if isinstance(exc, DeviceUnavailableError):
        kind = "device-unavailable"
    elif isinstance(exc, WorkLimitError):
        kind = "too-much-work"
    else:
        kind = "invalid-input"
    return bad_request(rename(exc.field), exc.message, kind=kind)


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

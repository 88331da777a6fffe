"""Plain ASGI middleware: the request-body limit, and one structured log line plus the HTTP
metrics per request."""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ProblemError, render
from .logs import new_request_id, request_id
from .metrics import Metrics

__all__ = ["AccessLog", "BodyLimit"]

log = logging.getLogger("bncheck.access")
KNOWN = {"/v1/check", "/v1/variants", "/livez", "/readyz", "/metrics", "/openapi.json", "/docs", "/", "/v2",
         "/v2/health/live", "/v2/health/ready"}


class AccessLog:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "out": 0, "in": 0}
        sent = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"x-request-id"), None)
        rid = new_request_id(sent)
        token = request_id.set(rid)

        async def counting_receive() -> Message:
            message = await receive()
            seen["in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            elapsed = time.perf_counter() - start
            path = scope.get("path", "")
            route = _route(path)
            self.metrics.requests.labels(scope.get("method", ""), route, str(seen["status"])).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("-", 0)
                ms = round(elapsed * 1e3, 2)
                log.info("%s %s %s %.1f ms", scope.get("method"), path, seen["status"], ms,
                         extra={"method": scope.get("method"), "path": path, "status": seen["status"],
                                "bytes_in": seen["in"], "bytes_out": seen["out"], "ms": ms, "client": client[0]})
            request_id.reset(token)


_V2_MODEL = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?(/ready|/infer)?$")


def _route(path: str) -> str:
    """The metrics' route label: the path, with a v2 model (and version) as placeholders."""
    if path in KNOWN:
        return path
    if path.startswith("/ui/"):
        return "/ui"
    match = _V2_MODEL.match(path)
    if match:
        return "/v2/models/{model}" + ("/versions/{version}" if match.group(1) else "") + (match.group(2) or "")
    return "other"


class BodyTooLarge(ProblemError):
    def __init__(self, limit: int) -> None:
        super().__init__("too-large", f"the request body is over the limit of {limit:,} bytes (BNCHECK_MAX_BODY_BYTES)")


class BodyLimit:
    """413 as problem+json: at once from Content-Length, or as soon as the streamed body passes
    the limit (the route's ``request.body()`` raises, and the problem handler answers).

    FastAPI's own ``max_body_size`` answers in text/plain from outside the exception
    handlers, which would break the error contract."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            status, body, media = render(BodyTooLarge(self.limit), scope.get("path"))
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", media.encode()),
                                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return
        total = 0

        async def limited() -> Message:
            nonlocal total
            message = await receive()
            total += len(message.get("body", b""))
            if total > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)

"""Routes: each parses, calls one function and wraps the result."""

from __future__ import annotations

import asyncio
import pathlib
import secrets
import time

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bncheck.numerics import check
from bncheck.numerics.variants import VARIANTS

from . import heap, runner, shm, workers
from .admission import Admission, QueueFull
from .errors import ProblemError
from .metrics import Metrics
from .openapi import PROBLEM_RESPONSES, REQUEST_BODY
from .schemas import CheckResponse, VariantInfo
from .settings import Settings

__all__ = ["AUTH", "readiness", "router", "run_check", "wants_html"]

router = APIRouter()
JSON_TYPES = ("application/json",)


def _state(request: Request) -> tuple[Settings, Metrics]:
    return request.app.state.settings, request.app.state.metrics


def require_token(request: Request) -> None:
    """With BNCHECK_TOKEN set, /v1/* and /metrics need 'Authorization: Bearer <token>'.
    The comparison takes the same time however much of the token is right."""
    token = request.app.state.settings.token
    if token is None:
        return
    sent = request.headers.get("authorization", "")
    if not secrets.compare_digest(sent.encode(), f"Bearer {token.get_secret_value()}".encode()):
        request.app.state.metrics.rejected.labels("unauthorized").inc()
        detail = "send 'Authorization: Bearer <token>' with the server's BNCHECK_TOKEN"
        raise ProblemError("unauthorized", detail, [("authorization", detail)],
                           headers={"WWW-Authenticate": 'Bearer realm="bncheck"'})


AUTH = [Depends(require_token)]


@router.post("/v1/check", response_model=CheckResponse, responses=PROBLEM_RESPONSES, dependencies=AUTH,
             openapi_extra={"requestBody": REQUEST_BODY}, summary="Check a batch-norm backward",
             description="Gradients of the chosen formula in the chosen precision, a float64 reference, "
                         "finite-difference evidence for it, and a report on any candidate outputs sent.")
async def post_check(request: Request) -> Response:
    settings, metrics = _state(request)
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        metrics.rejected.labels("media_type").inc()
        detail = f"send the body as application/json, not {media or 'no content type'}"
        raise ProblemError("unsupported-media", detail, [("content-type", detail)])
    return await run_check(request, runner.Call(html=wants_html(request)))


def wants_html(request: Request) -> bool:
    """Accept: text/html before application/json: the HTML report (a browser, curl -H)."""
    accept = request.headers.get("accept", "").lower()
    html, json_ = accept.find("text/html"), accept.find("application/json")
    return html >= 0 and (json_ < 0 or html < json_)


async def run_check(request: Request, call: runner.Call) -> Response:
    """Admission, the body, a worker, the answer: /v1/check, and /v2 infer, as ``call`` says."""
    with heap.busy():  # the server's free heap is returned once no check has come for a while
        return await _run_check(request, call)


async def _run_check(request: Request, call: runner.Call) -> Response:
    settings, metrics = _state(request)
    admission: Admission = request.app.state.admission
    deadline = time.monotonic() + settings.request_timeout_s  # the time in the queue counts
    try:
        ticket = admission.admit()
    except QueueFull:
        metrics.rejected.labels("busy").inc()
        detail = (f"{settings.max_concurrent} checks are running and {settings.queue} waiting "
                  "(BNCHECK_MAX_CONCURRENT, BNCHECK_QUEUE); retry shortly")
        raise ProblemError("busy", detail, headers={"Retry-After": "2"}) from None
    if ticket is not None:
        await _wait_in_queue(ticket, admission, deadline, metrics, settings)
    handed_over = False

    def done() -> None:
        admission.release()
        metrics.in_flight.dec()

    result = None
    try:
        # The budget holds from arrival: the queue, the body's arrival and the check itself. The
        # check looks at its deadline between steps; this scope answers GRACE_S after it anyway.
        with anyio.move_on_after(max(0.0, deadline - time.monotonic()) + GRACE_S):
            body = await request.app.state.workers.receive(request, shm.aligning(call.header_length))
            if isinstance(body, shm.Segment):
                _count_transport(request, "request", True, body.size)
            else:
                _count_transport(request, "request", False, len(body))
            metrics.in_flight.inc()
            handed_over = True
            result = await request.app.state.workers.run(body, deadline, done, call)
    finally:
        if not handed_over:
            admission.release()
    if result is None:
        metrics.rejected.labels("time_budget").inc()
        raise workers.time_budget_problem(settings)
    if isinstance(result, workers.Failure):
        metrics.rejected.labels("time_budget" if result.status == 503 else "invalid").inc()
        return Response(result.body, status_code=result.status, media_type=result.media_type, headers=result.headers)
    metrics.checks.labels("passed" if result.passed else "failed").inc()
    metrics.elements.inc(result.elements)
    for phase, ms in result.timings_ms.items():
        metrics.phase.labels(phase).observe(ms / 1e3)
    _count_transport(request, "answer", result.shared is not None,
                     result.shared[1] if result.shared else len(result.body))
    if result.shared is not None:
        return shm.SegmentResponse(shm.Segment(*result.shared), dict(result.headers), result.media_type,
                                   keep=request.app.state.workers.segments.give)
    return Response(result.body, media_type=result.media_type, headers=dict(result.headers))


GRACE_S = 1.5  # how long after its budget a check is answered 503 at the latest


async def _wait_in_queue(ticket: asyncio.Future[None], admission: Admission, deadline: float, metrics: Metrics,
                         settings: Settings) -> None:
    metrics.queued.inc()
    start = time.monotonic()
    try:
        with anyio.fail_after(max(0.0, deadline - start)):
            await asyncio.shield(ticket)
    except TimeoutError:
        admission.abandon(ticket)
        metrics.rejected.labels("time_budget").inc()
        raise workers.time_budget_problem(settings) from None
    except BaseException:  # the client left while waiting
        admission.abandon(ticket)
        raise
    finally:
        metrics.queued.dec()
        metrics.queue_wait.observe(time.monotonic() - start)


def _count_transport(request: Request, direction: str, shared: bool, size: int) -> None:
    """Large bodies to and from worker processes: through shared memory, or the pipe."""
    settings, metrics = _state(request)
    if settings.executor == "process" and (shared or size >= shm.MIN_BYTES):
        metrics.transport.labels(direction, "shared_memory" if shared else "pipe").inc()


@router.get("/v1/variants", response_model=list[VariantInfo], summary="The backward formulas bncheck knows",
            dependencies=AUTH, responses={401: PROBLEM_RESPONSES[401]})
async def variants() -> list[VariantInfo]:
    return [VariantInfo(name=v.name, summary=v.summary, formula=v.formula, reference=v.reference,
                        seed_function=v.seed_function) for v in VARIANTS.values()]


@router.get("/livez", summary="Liveness: the process answers")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: a tiny known check passes", responses={503: PROBLEM_RESPONSES[503]})
async def readyz(request: Request) -> dict[str, str]:
    await readiness(request)
    return {"status": "ready"}


async def readiness(request: Request) -> None:
    """Raises not-ready unless a check can run now (/readyz, /v2/health/ready)."""
    state = request.app.state
    if state.shutting_down:
        raise ProblemError("not-ready", "the server is shutting down")
    if not state.workers.ready:
        raise ProblemError("not-ready", "the worker processes are starting (a worker died)",
                           headers={"Retry-After": "2"})
    if state.ready is None:
        state.ready = await anyio.to_thread.run_sync(_self_check)
    if not state.ready:
        raise ProblemError("not-ready", "the built-in self-check failed; see the server log")


def _self_check() -> bool:
    x = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 0.5, -1.0, 3.0]])
    return check(x, np.ones_like(x) - x, variant="all", dtype="float64").passed


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=AUTH,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}},
                       401: PROBLEM_RESPONSES[401]})
async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


STATIC = pathlib.Path(__file__).with_name("static")


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    """The web page for a browser (its assets under /ui, served from the package: it works
    offline); a short JSON index for anything else."""
    if wants_html(request):
        return FileResponse(STATIC / "index.html", media_type="text/html")
    return JSONResponse({"name": "bncheck", "page": "/ (a browser)", "docs": "/docs", "openapi": "/openapi.json",
                         "check": "POST /v1/check", "v2": "POST /v2/models/{variant}/infer"})

"""The FastAPI application: ``create_app(settings)``; ``uvicorn --factory bncheck.server.app:create_app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.staticfiles import StaticFiles

from bncheck import __version__

from . import errors, openapi, routes, v2
from .admission import Admission
from .metrics import Metrics
from .middleware import AccessLog, BodyLimit
from .regions import Registry
from .settings import Settings
from .workers import make_workers

__all__ = ["create_app"]

DESCRIPTION = (
    "bncheck checks batch-normalization backward passes. POST x, dy (and gamma, beta) with the name of a "
    "backward formula; get its gradients in the chosen precision, a float64 reference, finite-difference "
    "evidence that the reference is right, and a precise report on any outputs you computed elsewhere."
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.shutting_down = False
    await anyio.to_thread.run_sync(app.state.workers.start)
    yield
    app.state.shutting_down = True
    # uvicorn has already let in-flight requests finish (SIGTERM); now stop the workers.
    await anyio.to_thread.run_sync(app.state.workers.shutdown)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logging.getLogger("bncheck").setLevel(settings.log_level.upper())
    # /docs serves Swagger UI's assets from the fastapi-offline wheel: it works with no network.
    app = FastAPIOffline(title="bncheck", version=__version__, description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    app.state.workers = workers = make_workers(settings)
    app.state.metrics = Metrics(worker_pids=workers.pids)
    workers.on_death = app.state.metrics.worker_deaths.inc
    app.state.admission = Admission(settings.max_concurrent, settings.queue)
    app.state.regions = Registry(settings.max_shm_regions)
    app.state.ready = None
    app.state.shutting_down = False
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(v2.router)
    app.mount("/ui", StaticFiles(directory=routes.STATIC), name="ui")
    app.openapi = lambda: openapi.build(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=app.state.metrics)  # outermost: sees every answer
    return app

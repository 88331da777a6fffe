from collections.abc import Iterator

import anyio.from_thread
import httpx
import pytest

from bncheck.server import Settings, create_app


class PortalTransport(httpx.BaseTransport):
    """Drive an ASGI app from synchronous code: httpx.ASGITransport on an event loop that
    runs in a background thread (anyio's blocking portal)."""

    def __init__(self, app: object) -> None:
        self._cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._cm.__enter__()
        self._inner = httpx.ASGITransport(app=app)  # type: ignore[arg-type]

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)

        async def call() -> tuple[int, httpx.Headers, bytes]:
            response = await self._inner.handle_async_request(inner)
            return response.status_code, response.headers, await response.aread()

        status, headers, content = self._portal.call(call)
        return httpx.Response(status, headers=headers, content=content, request=request)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def app():
    return create_app(Settings(executor="thread"))


@pytest.fixture
def sync_transport(app) -> Iterator[PortalTransport]:
    transport = PortalTransport(app)
    yield transport
    transport.close()

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bncheck.server import Settings, create_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_client() -> Callable[..., httpx.AsyncClient]:
    """An in-process client (httpx.ASGITransport) for an app built with these settings."""

    def make(**overrides: Any) -> httpx.AsyncClient:
        app = create_app(Settings(**{"executor": "thread", **overrides}))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bncheck.test")

    return make


@pytest.fixture
async def client(make_client: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client() as c:
        yield c


class OpenAPIValidator:
    """Validate a response against the app's own OpenAPI document (JSON Schema 2020-12)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.registry = Registry().with_resource("urn:openapi", Resource.from_contents(
            doc, default_specification=DRAFT202012))

    def schema_for(self, path: str, method: str, status: int, media: str) -> dict[str, Any]:
        responses = self.doc["paths"][path][method]["responses"]
        spec = responses.get(str(status)) or responses["default"]
        return spec["content"][media]["schema"]

    def validate(self, path: str, method: str, response: httpx.Response) -> None:
        media = response.headers["content-type"].split(";")[0]
        schema = _absolute(self.schema_for(path, method, response.status_code, media))
        Draft202012Validator(schema, registry=self.registry).validate(response.json())


def _absolute(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: ("urn:openapi" + v if k == "$ref" and v.startswith("#") else _absolute(v))
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [_absolute(v) for v in schema]
    return schema


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> OpenAPIValidator:
    return OpenAPIValidator((await client.get("/openapi.json")).json())


class BlockedRun:
    """runner.run held until ``release`` is set: a check that occupies its slot on demand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import threading

        from bncheck.server import runner

        self.started, self.release = threading.Event(), threading.Event()
        real_run = runner.run

        def slow_run(*args: Any, **kwargs: Any) -> Any:
            self.started.set()
            self.release.wait(10)
            return real_run(*args, **kwargs)

        monkeypatch.setattr(runner, "run", slow_run)


@pytest.fixture
def blocked_run(monkeypatch: pytest.MonkeyPatch) -> BlockedRun:
    return BlockedRun(monkeypatch)

"""``Client`` and ``AsyncClient``: thin, httpx-shaped wrappers over the bncheck HTTP API."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import httpx

from bncheck.numerics.request import INPUT_NAMES, WIRE_OUTPUT, CheckOptions

from . import _codec
from ._exceptions import RequestTimeout, TransportError, raise_for_problem
from ._models import CheckResult
from ._transport import widen

__all__ = ["AsyncClient", "Client"]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 300.0
DEFAULT_RETRIES = 4
DEFAULT_RETRY_WITHIN = 120.0
PIECE = 1 << 20
# A check is idempotent: sent again, it gives the same answer. These mean it never ran, or ran
# on a worker that died: the server is busy or healing, or the connection was reset.
RETRY_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class _Retry:
    """When to send a check again: on a 503 (after its Retry-After) or a reset connection, at most
    ``retries`` times and not past ``within`` seconds from the first try. Written here rather than
    with tenacity or httpx-retries: the client depends on httpx and NumPy alone, and its body is a
    stream of pieces that must be built anew for each try."""

    def __init__(self, retries: int, within: float) -> None:
        self.retries, self.within, self.start, self.tries = retries, within, time.monotonic(), 0

    def delay(self, response: httpx.Response | None) -> float | None:
        """Seconds to wait before the next try, or None: no more tries."""
        if self.tries >= self.retries:
            return None
        if response is not None:
            if response.status_code != 503:
                return None
            wait = _retry_after(response)
        else:
            wait = min(0.25 * 2 ** self.tries, 5.0)
        if time.monotonic() + wait - self.start > self.within:
            return None
        self.tries += 1
        return wait


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), 60.0)
    except ValueError:
        return 1.0


def _json_headers(body: list[bytes]) -> dict[str, str]:
    # With the length given, httpx sends the pieces below as one plain body (not chunked).
    return {"content-type": "application/json", "content-length": str(sum(len(b) for b in body))}


def _pieces(body: list[bytes]) -> Iterator[memoryview]:
    """The body a megabyte at a time. Handed the whole of a 43 MB body, httpcore re-slices
    what is left after every partial send, copying the body many times over to send it."""
    for part in body:
        view = memoryview(part)
        for at in range(0, len(view), PIECE):
            yield view[at:at + PIECE]


async def _apieces(body: list[bytes]) -> AsyncIterator[memoryview]:
    for piece in _pieces(body):
        yield piece


def build_request(x: Any, dy: Any, gamma: Any = None, beta: Any = None, *,
                  candidate: Mapping[str, Any] | None = None, reference: bool = False, gradients: bool = True,
                  **options: Any) -> dict[str, Any]:
    """The JSON body of /v1/check; every array travels as b64 (exact bits, NaN-safe).

    ``options`` are the other tensors (running_mean, running_var, saved_mean, saved_invstd)
    and the check's options, the fields of ``bncheck.numerics.request.CheckOptions``: variant,
    dtype, accum_dtype, eps, channel_axis, training, finite_difference (a method name, a
    mapping or FDOptions), tolerance ((rtol, atol), or per tensor), device, and plots (what
    ``bncheck.htmlreport.render(result.raw)`` draws). Left out, an option takes the server's
    default, which is the same definition's."""
    tensors = {"x": x, "dy": dy, "gamma": gamma, "beta": beta}
    tensors.update({name: options.pop(name) for name in INPUT_NAMES if name in options})
    known = {f.name for f in dataclasses.fields(CheckOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        msg = (f"build_request() got unknown options {unknown}; the options are {', '.join(sorted(known))}, "
               f"and the tensors {', '.join(INPUT_NAMES)}")
        raise TypeError(msg)
    body: dict[str, Any] = {name: _codec.encode(v) for name, v in tensors.items() if v is not None}
    body["output"] = {"gradients": gradients, "reference": reference, "encoding": "b64"}
    if candidate:
        body["candidate"] = {k: _codec.encode(v) for k, v in candidate.items() if v is not None}
    for name, value in options.items():
        if value is None:
            continue
        if name in WIRE_OUTPUT:
            body["output"][name] = value
        elif name == "finite_difference":
            body[name] = _finite_difference(value)
        elif name == "tolerance":
            body[name] = _tolerance(value)
        else:
            body[name] = value
    return body


def _finite_difference(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"method": value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value)


def _tolerance(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping):  # per tensor; the others get the calibrated verdict
        return {name: {"rtol": t[0], "atol": t[1]} for name, t in value.items()}
    return {"rtol": value[0], "atol": value[1]}


@contextmanager
def _wrapped() -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException as exc:
        msg = f"no answer in time: {exc}"
        raise RequestTimeout(msg) from exc
    except httpx.TransportError as exc:
        msg = f"could not reach bncheck: {exc}"
        raise TransportError(msg) from exc


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


class Client:
    """Synchronous client.

        with Client(base_url="http://127.0.0.1:8000") as bn:
            result = bn.check(x, dy, gamma, beta, variant="qianfeng", candidate={"dx": my_dx})
    """

    def __init__(self, *, base_url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT, token: str | None = None,
                 transport: httpx.BaseTransport | None = None, http_client: httpx.Client | None = None,
                 retries: int = DEFAULT_RETRIES, retry_within: float = DEFAULT_RETRY_WITHIN) -> None:
        """``retries``: how many times a check is sent again after a 503 (busy, a worker died,
        over the time budget) or a reset connection, waiting as Retry-After says, but never
        past ``retry_within`` seconds from the first try; 0 turns retries off."""
        self._owns = http_client is None
        # httpx's own transport, made by httpx (so the environment's proxies apply), reading
        # answers a megabyte at a time (_transport.py); one passed in is used as it is
        self._http = http_client or httpx.Client(base_url=base_url, timeout=timeout, transport=transport,
                                                 headers=_headers(token))
        if http_client is None and transport is None:
            widen(self._http)
        self.retries, self.retry_within = retries, retry_within

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with _wrapped():
            response = self._http.request(method, path, **kwargs)
        raise_for_problem(response)
        return response

    def check(self, x: Any, dy: Any, gamma: Any = None, beta: Any = None, **options: Any) -> CheckResult:
        """POST /v1/check. ``options`` are ``build_request``'s keywords."""
        body = _codec.dumps_pieces(build_request(x, dy, gamma, beta, **options))
        retry = _Retry(self.retries, self.retry_within)
        while True:
            try:
                with _wrapped():
                    response = self._http.post("/v1/check", content=cast(Iterator[bytes], _pieces(body)),
                                               headers=_json_headers(body))
            except TransportError as exc:
                wait = retry.delay(None) if isinstance(exc.__cause__, RETRY_ERRORS) else None
                if wait is None:
                    raise
                time.sleep(wait)
                continue
            wait = retry.delay(response)
            if wait is None:
                raise_for_problem(response)
                return CheckResult.from_json(_codec.loads(response.content))
            time.sleep(wait)

    def variants(self) -> list[dict[str, str]]:
        return list(self._request("GET", "/v1/variants").json())

    def live(self) -> bool:
        with _wrapped():
            return self._http.get("/livez").status_code == 200

    def ready(self) -> bool:
        with _wrapped():
            return self._http.get("/readyz").status_code == 200

    def close(self) -> None:
        if self._owns:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client, with the same methods as ``Client`` as coroutines."""

    def __init__(self, *, base_url: str = DEFAULT_URL, timeout: float = DEFAULT_TIMEOUT, token: str | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 http_client: httpx.AsyncClient | None = None, retries: int = DEFAULT_RETRIES,
                 retry_within: float = DEFAULT_RETRY_WITHIN) -> None:
        self._owns = http_client is None
        self._http = http_client or httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport,
                                                      headers=_headers(token))
        if http_client is None and transport is None:
            widen(self._http)
        self.retries, self.retry_within = retries, retry_within

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with _wrapped():
            response = await self._http.request(method, path, **kwargs)
        raise_for_problem(response)
        return response

    async def check(self, x: Any, dy: Any, gamma: Any = None, beta: Any = None, **options: Any) -> CheckResult:
        body = _codec.dumps_pieces(build_request(x, dy, gamma, beta, **options))
        retry = _Retry(self.retries, self.retry_within)
        while True:
            try:
                with _wrapped():
                    response = await self._http.post("/v1/check", content=cast(AsyncIterator[bytes], _apieces(body)),
                                                     headers=_json_headers(body))
            except TransportError as exc:
                wait = retry.delay(None) if isinstance(exc.__cause__, RETRY_ERRORS) else None
                if wait is None:
                    raise
                await asyncio.sleep(wait)
                continue
            wait = retry.delay(response)
            if wait is None:
                raise_for_problem(response)
                return CheckResult.from_json(_codec.loads(response.content))
            await asyncio.sleep(wait)

    async def variants(self) -> list[dict[str, str]]:
        return list((await self._request("GET", "/v1/variants")).json())

    async def live(self) -> bool:
        with _wrapped():
            return (await self._http.get("/livez")).status_code == 200

    async def ready(self) -> bool:
        with _wrapped():
            return (await self._http.get("/readyz")).status_code == 200

    async def aclose(self) -> None:
        if self._owns:
            await self._http.aclose()

    async def close(self) -> None:
        await self.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

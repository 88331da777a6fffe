"""The client against the in-process app (ASGI) and a real uvicorn."""

import ast
import pathlib

import httpx
import ml_dtypes
import numpy as np
import pytest

from bncheck import client
from bncheck.client import (
    AsyncClient,
    Client,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    TransportError,
)
from bncheck.numerics import check, make
from bncheck.server import Settings, create_app

from ..conftest import LiveServer

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_round_trips(sync_transport, dtype):
    case = make("normal", shape=(12, 3, 2)).cast(dtype)
    with Client(transport=sync_transport, base_url="http://t") as bn:
        result = bn.check(case.x, case.dy, case.gamma, case.beta, reference=True, finite_difference="none")
    local = check(case.x, case.dy, case.gamma, case.beta, finite_difference=None)
    assert result.passed
    assert result.dtype == np.dtype(dtype).name
    for name in ("dx", "dgamma", "dbeta"):
        assert result.gradients[name].dtype == local.gradients[name].dtype
        assert result.gradients[name].tobytes() == local.gradients[name].tobytes()
    assert result.reference["dx"].dtype == np.float64
    np.testing.assert_array_equal(result.reference["dx"], local.reference["dx"])


@pytest.mark.parametrize("simd", [True, False], ids=["pybase64", "stdlib"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_wire_codec_is_bit_exact_and_gives_writable_arrays(monkeypatch, simd, dtype):
    """With pybase64 or, for a client copied on its own, the standard library's base64; the
    server's codec is the independent reader and writer."""
    import base64

    from bncheck.client import _codec
    from bncheck.server import codec as server

    if not simd:
        monkeypatch.setattr(_codec, "_b64", None)
    rng = np.random.default_rng(1)
    for shape in [(3, 4, 5), (7,), (1,)]:
        arr = (rng.standard_normal(shape) * 100).astype(dtype)
        wire = _codec.encode(arr)
        assert base64.b64decode(wire["b64"], validate=True) == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        assert server.decode(wire, max_elements=1000).array.tobytes() == arr.tobytes()
        back = _codec.decode(server.encode(arr, "b64")[0])
        assert back.dtype == arr.dtype
        assert back.shape == arr.shape
        assert back.tobytes() == arr.tobytes()
        assert back.flags.writeable
        back[...] = 0  # the caller owns it


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "stdlib-json"])
def test_the_same_answer_with_or_without_the_fast_json_and_base64(monkeypatch, sync_transport, fast):
    from bncheck.client import _codec

    if not fast:  # a client copied on its own, with only httpx and NumPy
        monkeypatch.setattr(_codec, "_orjson", None)
        monkeypatch.setattr(_codec, "_b64", None)
    case = make("normal", shape=(40, 3, 5))
    local = check(case.x, case.dy, case.gamma, case.beta, finite_difference=None, eps=np.float64(1e-3))
    with Client(transport=sync_transport, base_url="http://t") as bn:
        result = bn.check(case.x, case.dy, case.gamma, case.beta, eps=np.float64(1e-3), finite_difference="none",
                          tolerance=(np.float64(1e-2), 0.0))
    assert result.passed
    assert result.eps == 1e-3
    for name in ("dx", "dgamma", "dbeta"):
        assert result.gradients[name].tobytes() == local.gradients[name].tobytes()


@pytest.mark.parametrize("fast", [True, False], ids=["orjson", "stdlib-json"])
def test_a_body_in_pieces_is_the_body_and_an_answer_read_in_pieces_is_the_answer(monkeypatch, fast):
    """Long b64 strings are pieces of their own going out, and cut out of answers coming in:
    the plain JSON writer and reader are the oracles."""
    import json

    import orjson

    from bncheck.client import _codec, build_request
    from bncheck.server import Settings, runner

    if not fast:
        monkeypatch.setattr(_codec, "_orjson", None)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((200, 120)).astype(np.float32)
    body = build_request(x, x[::-1], gamma=np.ones(120, np.float32), candidate={"dx": x * 0.5, "dbeta": x[0]},
                         finite_difference="none", reference=True)
    pieces = _codec.dumps_pieces(body)
    assert len(pieces) == 2 * 3 + 1  # x, dy and candidate dx are long; gamma and dbeta are not
    assert b"".join(pieces) == _codec.dumps(body)
    answer = runner.run(b"".join(pieces), Settings()).body
    got = _codec.loads(answer)
    want = orjson.loads(answer)
    assert isinstance(got["gradients"]["dx"]["b64"], memoryview)
    for group in ("gradients", "reference"):
        for name, payload in want[group].items():
            assert _codec.decode(got[group][name]).tobytes() == _codec.decode(payload).tobytes()
    assert {k: v for k, v in got.items() if k not in ("gradients", "reference")} == \
        {k: v for k, v in want.items() if k not in ("gradients", "reference")}
    # Not our server's compact JSON, or a string with an escape: read as it is.
    for text in (json.dumps(want, indent=1).encode(),
                 orjson.dumps({"a": {"b64": "QUFB" * 20000 + "\\u0041"}, "b": [1]})):
        assert _codec.loads(text) == json.loads(text)


def test_typed_report_and_failures(sync_transport):
    case = make("normal", shape=(32, 4))
    ref = check(case.x, case.dy, case.gamma, case.beta, dtype="float64").reference
    dx = ref["dx"].astype(np.float32)
    dx[7, 3] = np.nan
    with Client(transport=sync_transport, base_url="http://t") as bn:
        result = bn.check(case.x, case.dy, case.gamma, case.beta, candidate={"dx": dx, "dbeta": ref["dbeta"]})
    assert not result.passed
    [(block, tensor, report)] = result.failures()
    assert (block, tensor) == ("candidate", "dx")
    assert isinstance(report, client.TensorReport)
    assert report.worst_index == [7, 3]
    assert report.nonfinite == 1
    assert report.worst_candidate == "nan"
    assert isinstance(report.tolerance, client.Tolerance)
    assert result.checks["finite_difference"].method == "stats"
    assert result.checks["candidate"].tensors["dbeta"].passed


def test_variant_all_and_variants(sync_transport):
    with Client(transport=sync_transport, base_url="http://t") as bn:
        result = bn.check(np.eye(4), np.ones((4, 4)), variant="all")
        names = [v["name"] for v in bn.variants()]
        assert bn.live()
        assert bn.ready()
    assert result.gradients is None
    assert set(result.variants.variants) == set(names)


def test_problem_becomes_a_typed_exception(sync_transport):
    with Client(transport=sync_transport, base_url="http://t") as bn, pytest.raises(InvalidInput) as info:
        bn.check(np.ones((4, 3)), np.ones((4, 3)), np.ones(2))
    err = info.value
    assert err.status == 422
    assert err.fields == ["gamma"]
    assert "3 channels" in err.detail
    assert err.type == "/problems/invalid-input"
    assert err.response.headers["content-type"] == "application/problem+json"


def test_413_and_503_map_to_their_classes():
    small = PortalTransportFor(Settings(max_body_bytes=2048, executor="thread"))
    with Client(transport=small.transport, base_url="http://t") as bn, pytest.raises(PayloadTooLarge):
        bn.check(np.ones((64, 8)), np.ones((64, 8)))
    small.close()
    busy = PortalTransportFor(Settings(request_timeout_s=1e-9, executor="thread"))
    with Client(transport=busy.transport, base_url="http://t", retries=0) as bn, \
            pytest.raises(ServiceUnavailable) as info:
        bn.check(np.ones((4, 2)), np.ones((4, 2)))
    assert info.value.retry_after == 10.0
    busy.close()


class PortalTransportFor:
    def __init__(self, settings):
        from .conftest import PortalTransport

        self.transport = PortalTransport(create_app(settings))

    def close(self):
        self.transport.close()


def test_connection_failure_is_wrapped():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    with Client(transport=httpx.MockTransport(refuse)) as bn, pytest.raises(TransportError) as info:
        bn.live()
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_timeout_is_wrapped():
    def slow(request):
        raise httpx.ReadTimeout("too slow", request=request)

    with Client(transport=httpx.MockTransport(slow)) as bn, pytest.raises(RequestTimeout):
        bn.check(np.ones((2, 2)), np.ones((2, 2)))


def test_token_is_sent_as_bearer():
    seen = {}

    def record(request):
        seen["auth"] = request.headers.get("authorization")
        return httpx.Response(200, json={"status": "ok"})

    with Client(transport=httpx.MockTransport(record), token="s3cret") as bn:
        bn.live()
    assert seen["auth"] == "Bearer s3cret"


def test_injected_http_client_is_not_closed():
    http = httpx.Client(base_url="http://t", transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})))
    with Client(http_client=http) as bn:
        assert bn.live()
    assert not http.is_closed
    http.close()


@pytest.mark.anyio
async def test_async_client_in_process():
    app = create_app(Settings(executor="thread"))
    transport = httpx.ASGITransport(app=app)
    case = make("constant_dy", shape=(16, 3))
    async with AsyncClient(transport=transport, base_url="http://t") as bn:
        result = await bn.check(case.x, case.dy, case.gamma, case.beta, dtype="float32")
        assert await bn.live()
        with pytest.raises(InvalidInput):
            await bn.check(case.x, case.dy, variant="nope")
    assert result.passed
    assert result.checks["variant"].tensors["dx"].cancellation


def test_sync_client_against_real_uvicorn():
    case = make("normal", shape=(64, 8, 2))
    with LiveServer() as server, Client(base_url=server.url) as bn:
        result = bn.check(case.x.astype(np.float16), case.dy.astype(np.float16), case.gamma, case.beta,
                          variant="rocking")
    assert result.passed
    assert result.dtype == "float16"
    assert result.gradients["dx"].dtype == np.float16


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_large_check_is_sent_in_pieces_as_one_body_of_known_length(asynchronous):
    """The client streams a big body a megabyte at a time, with its Content-Length (not
    chunked), so the server can write it into shared memory as it arrives."""
    import asyncio

    import httpx as _httpx

    from bncheck.server import shm

    if not shm.available():
        pytest.skip("no writable /dev/shm")
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((512, 1024)) + 1).astype(np.float32)
    dy = rng.standard_normal((512, 1024)).astype(np.float32)
    local = check(x, dy, finite_difference=None)
    with LiveServer(executor="process", max_concurrent=1) as server:
        if asynchronous:
            async def go():
                async with AsyncClient(base_url=server.url) as bn:
                    return await bn.check(x, dy, finite_difference="none")

            result = asyncio.run(go())
        else:
            with Client(base_url=server.url) as bn:
                result = bn.check(x, dy, finite_difference="none")
        metrics = _httpx.get(f"{server.url}/metrics").text
    assert result.passed
    assert result.gradients["dx"].tobytes() == local.gradients["dx"].tobytes()
    assert 'bncheck_worker_transport_total{carrier="shared_memory",direction="request"} 1.0' in metrics


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_large_answer_is_read_a_megabyte_at_a_time_and_a_given_client_is_left_alone(monkeypatch, asynchronous):
    """httpcore reads 64 KiB at a time; the client's own transport asks the network for up to
    READ_BYTES (client/_transport.py), and the answer is the same. What httpcore's streams are
    asked for is recorded where they read the socket."""
    import asyncio

    from httpcore._backends.anyio import AnyIOStream
    from httpcore._backends.sync import SyncStream

    from bncheck.client._transport import READ_BYTES

    asked = []
    stream = AnyIOStream if asynchronous else SyncStream
    real = stream.read
    if asynchronous:
        async def read(self, max_bytes, timeout=None):
            asked.append(max_bytes)
            return await real(self, max_bytes, timeout)
    else:
        def read(self, max_bytes, timeout=None):
            asked.append(max_bytes)
            return real(self, max_bytes, timeout)
    monkeypatch.setattr(stream, "read", read)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((512, 1024)) + 1).astype(np.float32)  # an answer of 2.7 MB
    dy = rng.standard_normal((512, 1024)).astype(np.float32)
    want = check(x, dy, finite_difference=None).gradients["dx"].tobytes()

    def run(plain):
        asked.clear()
        if asynchronous:
            async def go():
                given = {"http_client": httpx.AsyncClient(base_url=server.url)} if plain else {"base_url": server.url}
                async with AsyncClient(**given) as bn:
                    result = await bn.check(x, dy, finite_difference="none")
                if plain:
                    await given["http_client"].aclose()
                return result

            result = asyncio.run(go())
        else:
            given = {"http_client": httpx.Client(base_url=server.url)} if plain else {"base_url": server.url}
            with Client(**given) as bn:
                result = bn.check(x, dy, finite_difference="none")
            if plain:
                given["http_client"].close()
        assert result.gradients["dx"].tobytes() == want
        return set(asked)

    with LiveServer() as server:
        assert run(plain=False) == {READ_BYTES}
        assert run(plain=True) == {64 * 1024}  # an httpx client given is used as it is


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_environments_proxy_is_still_used(monkeypatch, asynchronous):
    """httpx ignores HTTP_PROXY when it is given a transport: the client lets httpx make its
    own and widens its reads afterwards, so a proxy from the environment still carries the
    requests. A fake proxy records the request line it is sent."""
    import asyncio
    import socket
    import threading

    seen = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            seen.append(head.split(b"\r\n")[0].decode())
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        if asynchronous:
            async def go():
                async with AsyncClient(base_url="http://bncheck.invalid:8000") as bn:
                    return await bn.live()

            assert asyncio.run(go())
        else:
            with Client(base_url="http://bncheck.invalid:8000") as bn:
                assert bn.live()
        thread.join(10)
    finally:
        listener.close()
    assert seen == ["GET http://bncheck.invalid:8000/livez HTTP/1.1"]


def test_public_api_is_exactly_all():
    public = {name for name in dir(client) if not name.startswith("_")}
    assert public == set(client.__all__)
    assert len(client.__all__) == len(set(client.__all__))


def test_client_never_imports_the_server():
    root = pathlib.Path(client.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # Relative imports stay inside the client package; one that leaves it is refused.
                assert node.level <= 1, f"{path.name} imports from outside the client: {node.module}"
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "bncheck":  # the report's one definition, and its JSON mapping: never the server
                    assert name in {"bncheck.numerics.report", "bncheck.numerics.request", "bncheck.wire"}, \
                        f"{path.name} imports {name}"
                    continue
                assert top in {"httpx", "numpy", "ml_dtypes", "base64", "json", "secrets", "pybase64", "orjson",
                               "collections", "contextlib", "dataclasses", "typing", "__future__", "asyncio", "time",
                               "httpcore"}, \
                    f"{path.name} imports {name}"


def test_importing_the_client_loads_no_web_framework():
    import subprocess
    import sys

    code = ("import sys, bncheck.client; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


class Flaky:
    """A server that fails the first ``fails`` checks (503 with Retry-After, or a reset connection),
    then answers from the real app."""

    def __init__(self, fails, *, reset=False, retry_after="2"):
        self.fails, self.reset, self.retry_after, self.calls = fails, reset, retry_after, 0
        self.real = PortalTransportFor(Settings(executor="thread"))

    def __call__(self, request):
        self.calls += 1
        if self.calls <= self.fails:
            request.read()
            if self.reset:
                raise httpx.RemoteProtocolError("peer closed connection", request=request)
            return httpx.Response(503, headers={"retry-after": self.retry_after,
                                                "content-type": "application/problem+json"},
                                  json={"type": "/problems/worker-died", "title": "Worker died", "status": 503,
                                        "detail": "retry"})
        return self.real.transport.handle_request(request)


@pytest.mark.parametrize("reset", [False, True])
def test_a_check_is_sent_again_after_a_503_or_a_reset_honouring_retry_after(monkeypatch, reset):
    slept = []
    monkeypatch.setattr("bncheck.client._client.time.sleep", slept.append)
    flaky = Flaky(2, reset=reset)
    with Client(transport=httpx.MockTransport(flaky), base_url="http://t") as bn:
        result = bn.check(np.arange(8.0).reshape(4, 2), np.ones((4, 2)))
    assert result.passed
    assert flaky.calls == 3
    assert slept == ([0.25, 0.5] if reset else [2.0, 2.0])
    flaky.real.close()


def test_retries_are_bounded_in_number_and_in_time(monkeypatch):
    monkeypatch.setattr("bncheck.client._client.time.sleep", lambda s: None)
    flaky = Flaky(100)
    with Client(transport=httpx.MockTransport(flaky), base_url="http://t", retries=3) as bn, \
            pytest.raises(ServiceUnavailable):
        bn.check(np.ones((4, 2)), np.ones((4, 2)))
    assert flaky.calls == 4
    slow = Flaky(100, retry_after="50")  # the first wait alone would pass retry_within
    with Client(transport=httpx.MockTransport(slow), base_url="http://t", retry_within=30) as bn, \
            pytest.raises(ServiceUnavailable):
        bn.check(np.ones((4, 2)), np.ones((4, 2)))
    assert slow.calls == 1
    flaky.real.close()
    slow.real.close()


def test_a_refused_connection_or_a_422_is_not_retried(monkeypatch):
    monkeypatch.setattr("bncheck.client._client.time.sleep", lambda s: pytest.fail("no retry expected"))
    calls = []

    def refuse(request):
        calls.append(1)
        raise httpx.ReadTimeout("too slow", request=request)

    with Client(transport=httpx.MockTransport(refuse)) as bn, pytest.raises(RequestTimeout):
        bn.check(np.ones((2, 2)), np.ones((2, 2)))
    assert len(calls) == 1
    real = PortalTransportFor(Settings(executor="thread"))
    with Client(transport=real.transport, base_url="http://t") as bn, pytest.raises(InvalidInput):
        bn.check(np.ones((2, 2)), np.ones((3, 2)))
    real.close()


@pytest.mark.anyio
async def test_the_async_client_retries_too(monkeypatch):
    waits = []

    async def no_wait(s):
        waits.append(s)

    monkeypatch.setattr("bncheck.client._client.asyncio.sleep", no_wait)
    calls = []

    def handler(request):
        calls.append(1)
        request.read()
        if len(calls) == 1:
            return httpx.Response(503, headers={"retry-after": "1"}, json={"type": "/problems/busy", "title": "Busy",
                                                                            "status": 503, "detail": "busy"})
        return httpx.Response(200, content=b"{}")

    async with AsyncClient(transport=httpx.MockTransport(handler), base_url="http://t") as bn:
        with pytest.raises(KeyError):  # the second answer is not a report: it was sent again, that is all
            await bn.check(np.ones((2, 2)), np.ones((2, 2)))
    assert len(calls) == 2
    assert waits == [1.0]


def test_summary_and_a_short_repr(sync_transport):
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((64, 8)), rng.standard_normal((64, 8))
    with Client(transport=sync_transport, base_url="http://t") as bn:
        good = bn.check(x, dy, finite_difference="none", reference=True)
        dx = good.reference["dx"].copy()
        dx[:, 2:4] = 0  # two channels never written
        bad = bn.check(x, dy, candidate={"dx": dx}, finite_difference="none")
    assert repr(bad) == ("CheckResult(passed=False, variant='qianfeng', dtype='float64', shape=[64, 8], "
                         "failed=['candidate.dx'])")
    assert len(repr(good)) < 200  # no arrays
    text = bad.summary()
    assert text.startswith("FAILED: qianfeng in float64")
    assert "candidate.dx: FAIL" in text
    assert "channels 2-3" in text
    assert "variant.dgamma: ok" in text

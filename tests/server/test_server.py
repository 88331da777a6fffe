"""Against a real uvicorn on 127.0.0.1 and a free port."""

import httpx
import numpy as np

from bncheck.numerics import check, make
from bncheck.server import codec

from ..conftest import LiveServer


def test_b64_check_over_real_http(live_server):
    case = make("normal", shape=(32, 4, 2, 2)).cast(np.float16)
    body = {"x": codec.encode(case.x, "b64")[0], "dy": codec.encode(case.dy, "b64")[0],
            "gamma": case.gamma.tolist(), "beta": case.beta.tolist(), "variant": "kevin"}
    r = httpx.post(f"{live_server.url}/v1/check", json=body, timeout=30)
    assert r.status_code == 200
    got = codec.decode(r.json()["gradients"]["dx"], max_elements=1 << 20).array
    local = check(case.x, case.dy, case.gamma, case.beta, variant="kevin")
    assert got.dtype == np.float16
    assert got.tobytes() == local.gradients["dx"].tobytes()
    assert r.json()["passed"] is True


def test_health_over_real_http(live_server):
    assert httpx.get(f"{live_server.url}/livez").json() == {"status": "ok"}
    assert httpx.get(f"{live_server.url}/readyz").status_code == 200
    assert "bncheck_http_requests_total" in httpx.get(f"{live_server.url}/metrics").text


def test_413_over_real_http():
    with LiveServer(max_body_bytes=4096) as server:
        r = httpx.post(f"{server.url}/v1/check", content=b"[" + b"1.0," * 5000 + b"1.0]",
                       headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"


def test_worker_processes_answer_checks_and_problems():
    """The default executor: checks run in spawned worker processes; problems come back intact."""
    with LiveServer(executor="process", max_concurrent=1) as server:
        ok = httpx.post(f"{server.url}/v1/check", json={"x": [[1.0, 2.0], [3.0, 5.0]], "dy": [[1.0, 0.0], [0.0, 1.0]]},
                        timeout=60)
        bad = httpx.post(f"{server.url}/v1/check", json={"x": [[1.0, 2.0], [3.0, 5.0]], "dy": [[1.0, 0.0], [0.0, 1.0]],
                                                         "gamma": [1.0, 2.0, 3.0]}, timeout=60)
    assert ok.status_code == 200
    assert ok.json()["passed"] is True
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["errors"][0]["field"] == "gamma"

"""POST /v1/check in-process (httpx.ASGITransport): the contract, end to end."""

import threading

import ml_dtypes
import numpy as np
import pytest

from bncheck.numerics import VARIANTS, FDOptions, check, make
from bncheck.server import codec, runner
from bncheck.server.openapi import EXAMPLE

pytestmark = pytest.mark.anyio

DATATYPES = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16, "FP32": np.float32, "FP64": np.float64}


def b64(arr):
    return codec.encode(np.asarray(arr), "b64")[0]


def array(payload):
    return codec.decode(payload, max_elements=1 << 24).array


async def test_example_passes_and_matches_the_schema(client, openapi):
    r = await client.post("/v1/check", json=EXAMPLE)
    assert r.status_code == 200
    openapi.validate("/v1/check", "post", r)
    body = r.json()
    assert body["passed"] is True
    assert body["variant"] == "qianfeng"
    assert body["dtype"] == "float32"
    assert body["shape"] == [3, 4]
    assert body["channel_axis"] == 1
    assert body["reduce_size"] == 3
    assert set(body["checks"]) == {"variant", "finite_difference", "candidate"}
    assert body["checks"]["candidate"]["dbeta"]["passed"]
    assert {"decode", "reference", "variant", "finite_difference", "encode", "total"} <= set(body["timings_ms"])
    assert np.asarray(body["gradients"]["dx"]).shape == (3, 4)


@pytest.mark.parametrize("wire", list(DATATYPES))
async def test_b64_gradients_are_bit_exact_for_every_datatype(client, openapi, wire):
    case = make("normal", shape=(8, 3, 2)).cast(DATATYPES[wire])
    r = await client.post("/v1/check", json={"x": b64(case.x), "dy": b64(case.dy), "gamma": case.gamma.tolist(),
                                              "beta": case.beta.tolist(), "finite_difference": {"method": "none"}})
    assert r.status_code == 200, r.text
    openapi.validate("/v1/check", "post", r)
    body = r.json()
    assert body["dtype"] == np.dtype(DATATYPES[wire]).name
    local = check(case.x, case.dy, case.gamma, case.beta, finite_difference=FDOptions("none"))
    for name in ("dx", "dgamma", "dbeta"):
        got = array(body["gradients"][name])
        assert got.dtype == local.gradients[name].dtype
        assert got.tobytes() == local.gradients[name].tobytes()
    assert body["gradients"]["dx"]["datatype"] == wire


async def test_lists_are_value_exact(client):
    case = make("heavy_tails", shape=(16, 4))
    r = await client.post("/v1/check", json={"x": case.x.tolist(), "dy": case.dy.tolist(), "dtype": "FP64",
                                              "output": {"reference": True}})
    body = r.json()
    local = check(case.x, case.dy, dtype="float64")
    assert np.array_equal(np.asarray(body["reference"]["dx"]), local.reference["dx"])
    assert np.array_equal(np.asarray(body["gradients"]["dgamma"]), local.gradients["dgamma"])


async def test_output_encoding_and_reference(client):
    x = np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32)
    r = await client.post("/v1/check", json={"x": x.tolist(), "dy": np.ones_like(x).tolist(),
                                              "output": {"encoding": "data", "reference": True}})
    body = r.json()
    assert body["gradients"]["dx"]["datatype"] == "FP32"
    assert len(body["gradients"]["dx"]["data"]) == 12
    assert body["reference"]["dx"]["datatype"] == "FP64"
    r = await client.post("/v1/check", json={"x": x.tolist(), "dy": x.tolist(), "output": {"gradients": False}})
    assert "gradients" not in r.json()


async def test_a_planted_error_in_a_candidate_is_named(client, openapi):
    case = make("normal", shape=(16, 4, 3))
    local = check(case.x, case.dy, case.gamma, case.beta, dtype="float64")
    dx = local.reference["dx"].astype(np.float32)
    dx[9, 2, 1] += 1e-2
    r = await client.post("/v1/check", json={
        "x": b64(case.x.astype(np.float32)), "dy": b64(case.dy.astype(np.float32)),
        "gamma": case.gamma.tolist(), "beta": case.beta.tolist(),
        "candidate": {"dx": b64(dx), "dgamma": b64(local.reference["dgamma"].astype(np.float32))}})
    openapi.validate("/v1/check", "post", r)
    body = r.json()
    assert body["passed"] is False
    block = body["checks"]["candidate"]
    assert block["passed"] is False
    assert block["dx"]["passed"] is False
    assert block["dx"]["worst_index"] == [9, 2, 1]
    assert block["dx"]["mismatched"] == 1
    assert block["dx"]["worst_channels"][0]["channel"] == 2
    assert block["dgamma"]["passed"] is True
    assert body["checks"]["variant"]["passed"] is True


async def test_nan_in_a_candidate_is_a_finding_and_in_x_a_refusal(client):
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    dx = np.zeros_like(x)
    dx[1, 1] = np.nan
    r = await client.post("/v1/check", json={"x": b64(x), "dy": b64(x), "candidate": {"dx": b64(dx)}})
    assert r.status_code == 200
    m = r.json()["checks"]["candidate"]["dx"]
    assert m["nonfinite"] == 1
    assert m["worst_index"] == [1, 1]
    assert m["worst_candidate"] == "nan"
    assert m["decided_by"] == "nonfinite"
    assert m["tol_ratio"] is None
    bad = x.copy()
    bad[0, 2] = np.inf
    r = await client.post("/v1/check", json={"x": b64(bad), "dy": b64(x)})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "x"
    assert "non-finite" in r.json()["detail"]


async def test_variant_all_reports_every_variant(client, openapi):
    r = await client.post("/v1/check", json={**EXAMPLE, "variant": "all"})
    openapi.validate("/v1/check", "post", r)
    body = r.json()
    assert "gradients" not in body
    assert "variant" not in body["checks"]
    assert set(body["checks"]["variants"]["variants"]) == set(VARIANTS)
    assert set(body["checks"]["variants"]["spread"]) == {"dx", "dgamma", "dbeta"}


async def test_inference_and_saved_statistics(client, openapi):
    x = np.random.default_rng(2).standard_normal((8, 3))
    r = await client.post("/v1/check", json={"x": x.tolist(), "dy": x.tolist(), "training": False,
                                              "running_mean": [0.0, 1.0, 2.0], "running_var": [1.0, 2.0, 0.5]})
    assert r.status_code == 200
    assert r.json()["training"] is False
    openapi.validate("/v1/check", "post", r)
    mean, invstd = x.mean(0), 1 / np.sqrt(x.var(0) + 1e-5)
    r = await client.post("/v1/check", json={"x": x.tolist(), "dy": x.tolist(), "saved_mean": mean.tolist(),
                                              "saved_invstd": (invstd * (1 + 1e-3)).tolist()})
    openapi.validate("/v1/check", "post", r)
    saved = r.json()["checks"]["saved_statistics"]
    assert saved["passed"] is False
    assert saved["mean"]["passed"]
    assert not saved["invstd"]["passed"]


async def test_finite_difference_methods_over_http(client):
    for method in ("stats", "brute", "directional"):
        r = await client.post("/v1/check", json={**EXAMPLE, "finite_difference": {"method": method, "seed": 3}})
        block = r.json()["checks"]["finite_difference"]
        assert block["method"] == method
        assert block["passed"]
    r = await client.post("/v1/check", json={**EXAMPLE, "finite_difference": {"method": "none"}})
    assert "finite_difference" not in r.json()["checks"]


async def test_user_tolerance(client):
    r = await client.post("/v1/check", json={**EXAMPLE, "candidate": {"dbeta": [1.5, 1.4, 0.7, 0.01]},
                                              "tolerance": {"rtol": 0, "atol": 0.02}})
    m = r.json()["checks"]["candidate"]["dbeta"]
    assert m["passed"]
    assert m["tolerance"]["mode"] == "absolute"
    assert m["decided_by"] == "absolute"


async def test_variants_endpoint(client, openapi):
    r = await client.get("/v1/variants")
    openapi.validate("/v1/variants", "get", r)
    names = [v["name"] for v in r.json()]
    assert names == list(VARIANTS)
    assert all(v["formula"] and v["reference"].startswith("https://") for v in r.json())


async def test_openapi_and_docs(client):
    doc = (await client.get("/openapi.json")).json()
    body = doc["paths"]["/v1/check"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/CheckRequest"}
    assert body["examples"]["small"]["value"] == EXAMPLE
    assert "Tensor" in doc["components"]["schemas"]
    assert set(doc["paths"]["/v1/check"]["post"]["responses"]) >= {"200", "400", "413", "415", "422", "503"}
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


async def test_health_and_metrics(client):
    assert (await client.get("/livez")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await client.post("/v1/check", json=EXAMPLE)
    await client.post("/v1/check", json={"x": [[1.0]]})
    text = (await client.get("/metrics")).text
    assert 'bncheck_checks_total{outcome="passed"} 1.0' in text
    assert 'bncheck_http_requests_total{method="POST",route="/v1/check",status="422"} 1.0' in text
    assert "bncheck_check_phase_seconds_bucket" in text
    assert "bncheck_checked_elements_total 12.0" in text


async def test_body_over_the_limit_is_413(make_client):
    async with make_client(max_body_bytes=2048) as c:
        r = await c.post("/v1/check", json={"x": [[0.0] * 300] * 2, "dy": [[0.0] * 300] * 2})
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/problems/too-large"
    assert "2,048" in r.json()["detail"]


async def test_elements_over_the_limit_is_422(make_client):
    async with make_client(max_elements=100) as c:
        r = await c.post("/v1/check", json={"x": {"shape": [1000, 1000], "datatype": "FP32", "b64": ""},
                                             "dy": [[1.0]]})
    assert r.status_code == 422
    assert "over the limit of 100" in r.json()["detail"]


async def test_a_full_queue_is_503_with_retry_after(make_client, blocked_run):
    started, release = blocked_run.started, blocked_run.release
    import anyio

    async with make_client(max_concurrent=1, queue=0) as c:
        results = {}

        async def first():
            results["first"] = await c.post("/v1/check", json=EXAMPLE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.to_thread.run_sync(started.wait, 10)
            busy = await c.post("/v1/check", json=EXAMPLE)
            live = await c.get("/livez")  # the loop is free while the check runs
            release.set()
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "2"
        assert busy.json()["type"] == "/problems/busy"
        assert live.status_code == 200
        assert results["first"].status_code == 200
        # The slot came back: the next check runs.
        assert (await c.post("/v1/check", json=EXAMPLE)).status_code == 200


async def test_a_burst_larger_than_the_workers_waits_and_is_served_in_order(make_client, monkeypatch):
    """One slot, a queue of two: the second and third checks wait and run in the order they came;
    the fourth, with the queue full, is refused at once."""
    import anyio
    import orjson

    release = threading.Event()
    order = []
    real_run = runner.run

    def recording_run(body, *args, **kwargs):
        order.append(orjson.loads(bytes(body))["eps"])
        if len(order) == 1:
            release.wait(10)
        return real_run(body, *args, **kwargs)

    monkeypatch.setattr(runner, "run", recording_run)
    async with make_client(max_concurrent=1, queue=2) as c:
        results = {}

        async def post(eps):
            results[eps] = await c.post("/v1/check", json={**EXAMPLE, "eps": eps})

        async with anyio.create_task_group() as tg:
            for eps in (1e-5, 2e-5, 3e-5):
                tg.start_soon(post, eps)
                while len(order) < 1 or (eps > 1e-5 and _queued(await c.get("/metrics")) < round(eps / 1e-5) - 1):
                    await anyio.sleep(0.01)
            refused = await c.post("/v1/check", json={**EXAMPLE, "eps": 4e-5})
            release.set()
    assert refused.status_code == 503
    assert refused.json()["type"] == "/problems/busy"
    assert [results[e].status_code for e in (1e-5, 2e-5, 3e-5)] == [200, 200, 200]
    assert order == [1e-5, 2e-5, 3e-5]


def _queued(metrics):
    return float(next(line.split()[1] for line in metrics.text.splitlines()
                      if line.startswith("bncheck_checks_queued ")))


async def test_time_in_the_queue_counts_against_the_budget(make_client, blocked_run):
    import anyio

    release = blocked_run.release
    async with make_client(max_concurrent=1, queue=4, request_timeout_s=0.5) as c:
        results = {}

        async def post(name):
            results[name] = await c.post("/v1/check", json=EXAMPLE)

        async with anyio.create_task_group() as tg:
            tg.start_soon(post, "first")
            await anyio.sleep(0.1)
            tg.start_soon(post, "second")
            await anyio.sleep(1.0)  # the second waits past its budget
            release.set()
    assert results["second"].status_code == 503
    assert results["second"].json()["type"] == "/problems/time-budget"


async def test_time_budget_is_503(make_client):
    async with make_client(request_timeout_s=1e-9) as c:
        r = await c.post("/v1/check", json=EXAMPLE)
    assert r.status_code == 503
    assert r.json()["type"] == "/problems/time-budget"


async def test_streamed_body_over_the_limit_is_413(make_client):
    """No Content-Length (chunked upload): the limit is enforced as the body streams in."""

    async def chunks():
        for _ in range(10):
            yield b"[" + b"0.0," * 100 + b"0.0]"

    async with make_client(max_body_bytes=2048) as c:
        r = await c.post("/v1/check", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["type"] == "/problems/too-large"


async def test_mixed_precision_candidate_is_judged_per_tensor_with_its_resolution(client, openapi):
    """bf16 x, dy and dx beside float32 dgamma and dbeta, a zeroed channel tile (4-7) in dx and
    a tolerance for dbeta alone: each tensor in its own dtype, the tile named as a range."""
    from ..numerics.kernels import backward

    case = make("normal", shape=(4, 12, 3, 3)).cast(ml_dtypes.bfloat16)
    out = backward(case.x, case.dy, case.gamma, case.beta, eps=case.eps, dtype=ml_dtypes.bfloat16)
    dx = out["dx"].copy()
    dx[:, 4:8] = 0
    body = {"x": b64(case.x), "dy": b64(case.dy), "gamma": case.gamma.tolist(), "beta": case.beta.tolist(),
            "finite_difference": {"method": "none"},
            "candidate": {"dx": b64(dx), "dgamma": b64(out["dgamma"]), "dbeta": b64(out["dbeta"])},
            "tolerance": {"dbeta": {"rtol": 0.0, "atol": 1.0}}}
    r = await client.post("/v1/check", json=body)
    assert r.status_code == 200, r.text
    openapi.validate("/v1/check", "post", r)
    cand = r.json()["checks"]["candidate"]
    assert (cand["dx"]["dtype"], cand["dgamma"]["dtype"]) == ("bfloat16", "float32")
    assert not cand["dx"]["passed"]
    assert cand["dx"]["failed_channels"] == "4-7"
    assert cand["dgamma"]["passed"]
    assert cand["dgamma"]["tolerance"]["basis"] == "calibrated"
    assert cand["dbeta"]["tolerance"] == {**cand["dbeta"]["tolerance"], "basis": "user", "rtol": 0.0, "atol": 1.0}
    # dgamma's allowance is float32-sized, not bfloat16-sized: a few float32 ulps at most
    assert cand["dgamma"]["resolution"]["ulp"] < 64
    assert cand["dgamma"]["resolution"]["max_abs"] < 1e-4 * np.abs(out["dgamma"]).max()


@pytest.mark.parametrize("tolerance", [{"rtol": 0.1}, {"rtol": 0.1, "atol": 0.0, "dx": {"rtol": 0, "atol": 0}}])
async def test_a_tolerance_in_neither_form_is_refused(client, tolerance):
    case = make("normal", shape=(8, 3))
    r = await client.post("/v1/check", json={"x": case.x.tolist(), "dy": case.dy.tolist(), "tolerance": tolerance})
    assert r.status_code == 422
    problem = r.json()
    assert problem["errors"][0]["field"] == "tolerance"
    assert "rtol" in problem["errors"][0]["message"]


def test_a_full_queue_answers_before_the_body_is_read(blocked_run):
    """The headers promise 10 MB that never come: the 503 arrives anyway, at once."""
    import socket as sock_mod

    import httpx

    from ..conftest import LiveServer

    started, release = blocked_run.started, blocked_run.release
    with LiveServer(max_concurrent=1, queue=0) as server:
        first = threading.Thread(target=lambda: httpx.post(f"{server.url}/v1/check", json=EXAMPLE, timeout=30))
        first.start()
        assert started.wait(10)
        with sock_mod.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /v1/check HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                      b"content-length: 10000000\r\n\r\n")
            answer = s.recv(4096)
        release.set()
        first.join(timeout=30)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b"/problems/busy" in answer


@pytest.mark.slow
def test_a_slow_check_is_answered_within_2_s_of_its_budget_and_frees_its_worker():
    """Every variant, a candidate to calibrate and brute-force finite differences of 2M elements
    take far longer than a budget of 1 s: the answer is a 503 within 2 s of it, and the worker
    stops at its next step, so the next check runs."""
    import time as time_mod

    import httpx

    from bncheck.client import build_request

    from ..conftest import LiveServer

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 32, 32)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    body = build_request(x, dy, variant="all", candidate={"dx": x, "dgamma": dy[0, :, 0, 0], "dbeta": dy[0, :, 0, 1]},
                         finite_difference={"method": "brute", "samples": 64})
    with LiveServer(executor="process", max_concurrent=1, request_timeout_s=1.0) as server:
        start = time_mod.monotonic()
        r = httpx.post(f"{server.url}/v1/check", json=body, timeout=60)
        took = time_mod.monotonic() - start
        assert r.status_code == 503, r.text[:300]
        assert r.json()["type"] == "/problems/time-budget"
        assert took < 1.0 + 2.0, took
        small = build_request(np.arange(12.0).reshape(4, 3), np.ones((4, 3)))
        start = time_mod.monotonic()
        assert httpx.post(f"{server.url}/v1/check", json=small, timeout=60).status_code == 200
        assert time_mod.monotonic() - start < 5.0  # the worker was free again


async def test_b64_with_escaped_slashes_reads_as_the_same_bytes(client, openapi):
    """JSON may escape '/' as '\\/': a long b64 text written so is the same tensor."""
    import orjson

    rng = np.random.default_rng(1)
    x, dy = (rng.standard_normal((512, 64)).astype(np.float32) for _ in range(2))
    plain = orjson.dumps({"x": b64(x), "dy": b64(dy), "finite_difference": {"method": "none"}})
    assert plain.count(b"/") > 1000
    answers = []
    for body in (plain, plain.replace(b"/", b"\\/")):
        r = await client.post("/v1/check", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text[:300]
        openapi.validate("/v1/check", "post", r)
        answers.append(array(r.json()["gradients"]["dx"]))
    assert answers[0].tobytes() == answers[1].tobytes()

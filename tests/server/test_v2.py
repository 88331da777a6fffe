"""The KServe v2 protocol, spoken to by the real tritonclient (its HTTP client, sync and async).

Oracles: /v1/check on the same inputs (the gradients must be equal bit for bit), an
independent kernel (tests/numerics/kernels.py) for a correct candidate and a planted bug,
and the protocol's own rules for the bodies tritonclient writes and reads.
"""

import asyncio
import json
import struct

import httpx
import ml_dtypes
import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
import tritonclient.utils as tritonclient_utils  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from bncheck.client import Client  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from tests.numerics.kernels import backward  # noqa: E402

SHAPE = (4, 6, 5, 3)  # NCHW
BF16 = np.dtype(ml_dtypes.bfloat16)


def _data(dtype=np.float32, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


def _input(name, arr, binary):
    datatype = {np.dtype(np.float32): "FP32", BF16: "BF16", np.dtype(np.float16): "FP16",
                np.dtype(np.float64): "FP64"}[arr.dtype]
    t = tritonclient_http.InferInput(name, list(arr.shape), datatype)
    if arr.dtype == BF16 and tritonclient_utils.np_to_triton_dtype(BF16) != "BF16":
        arr = arr.astype(np.float32)  # tritonclient before 2.70 takes BF16 as float32 (exact for bf16 values)
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


@pytest.fixture(scope="module")
def server():
    with LiveServer() as s:
        yield s


@pytest.fixture
def triton(server):
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def test_server_and_model_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "bncheck"
    assert "binary_tensor_data" in meta["extensions"]
    for model in ("staged", "kevin", "rocking", "qianfeng"):
        assert triton.is_model_ready(model)
        m = triton.get_model_metadata(model)
        assert m["name"] == model
        inputs = {t["name"]: t for t in m["inputs"]}
        assert set(inputs) >= {"x", "dy", "gamma", "beta", "candidate_dx", "candidate_dgamma", "saved_invstd"}
        assert all(-1 in t["shape"] for t in m["inputs"])  # dynamic shapes
        outputs = {t["name"]: t["datatype"] for t in m["outputs"]}
        assert outputs == {"dx": "FP32", "dgamma": "FP32", "dbeta": "FP32", "passed": "BOOL", "report": "BYTES"}
    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata("batchnorm")
    assert info.value.status() == "404"
    assert "unknown model 'batchnorm'" in info.value.message()
    assert not triton.is_model_ready("batchnorm")


@pytest.mark.parametrize(("dtype", "binary"), [(np.float32, True), (np.float32, False), (BF16, True)])
def test_gradients_equal_v1_bit_for_bit(server, triton, dtype, binary):
    x, dy = _data(dtype)
    gamma = np.linspace(0.5, 1.5, SHAPE[1]).astype(np.float32)
    inputs = [_input("x", x, binary), _input("dy", dy, binary), _input("gamma", gamma, binary)]
    result = triton.infer("kevin", inputs, parameters={"finite_difference": "none"})
    with Client(base_url=server.url) as bn:
        v1 = bn.check(x, dy, gamma, variant="kevin", finite_difference="none")
    for name in ("dx", "dgamma", "dbeta"):
        want = v1.gradients[name]
        assert result.get_output(name)["datatype"] == {BF16: "BF16", np.dtype(np.float32): "FP32"}[want.dtype]
        got = result.as_numpy(name).astype(want.dtype)  # older tritonclients give BF16 as float32: exact
        assert got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), name
    assert result.get_output("dx")["datatype"] == ("BF16" if dtype == BF16 else "FP32")
    report = json.loads(result.as_numpy("report")[0])
    assert report["variant"] == "kevin"
    assert report["shape"] == list(SHAPE)
    assert "gradients" not in report  # they are outputs of their own
    assert report["checks"]["variant"]["passed"] is True
    assert result.as_numpy("passed").tolist() == [True]
    assert result.get_response()["model_name"] == "kevin"


def test_bfloat16_as_json_data(server):
    """tritonclient sends BF16 only as binary; the protocol's JSON form carries it as numbers."""
    x, dy = _data(BF16)
    body = {"inputs": [{"name": n, "shape": list(SHAPE), "datatype": "BF16", "data": a.astype(np.float64).tolist()}
                       for n, a in (("x", x), ("dy", dy))],
            "parameters": {"finite_difference": "none"}}
    r = httpx.post(f"{server.url}/v2/models/qianfeng/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    with Client(base_url=server.url) as bn:
        v1 = bn.check(x, dy, variant="qianfeng", finite_difference="none")
    for name in ("dx", "dgamma", "dbeta"):
        want = v1.gradients[name]
        assert outputs[name]["datatype"] == {BF16: "BF16", np.dtype(np.float32): "FP32"}[want.dtype]
        got = np.asarray(outputs[name]["data"], np.float64).astype(want.dtype).reshape(outputs[name]["shape"])
        assert np.array_equal(got.view(np.uint8), np.ascontiguousarray(want).view(np.uint8)), name


@pytest.mark.parametrize("binary", [True, False])
def test_candidate_verdicts(triton, binary):
    """A correct independent float32 kernel passes; the same kernel with one zeroed channel fails."""
    x, dy = _data(np.float32)
    gamma, beta = np.ones(SHAPE[1], np.float32), np.zeros(SHAPE[1], np.float32)
    for bug, want in ((None, True), ("zeroed_channel", False)):
        out = backward(x, dy, gamma, beta, eps=1e-5, bug=bug)
        inputs = [_input("x", x, binary), _input("dy", dy, binary), _input("candidate_dx", out["dx"], binary),
                  _input("candidate_dgamma", out["dgamma"], binary)]
        outputs = [tritonclient_http.InferRequestedOutput("passed", binary_data=binary),
                   tritonclient_http.InferRequestedOutput("report", binary_data=binary)]
        result = triton.infer("qianfeng", inputs, outputs=outputs, parameters={"finite_difference": "stats"})
        assert result.as_numpy("passed").tolist() == [want], bug
        report = json.loads(result.as_numpy("report")[0])
        cand = report["checks"]["candidate"]
        assert cand["passed"] is want
        assert cand["dgamma"]["passed"] is True
        if bug:
            assert cand["dx"]["failed_channels"] == str(SHAPE[1] // 2)
        # only what was asked for
        assert [o["name"] for o in result.get_response()["outputs"]] == ["passed", "report"]


def test_requested_outputs_and_their_binary_flags(server):
    x, dy = _data(np.float32)
    header = {"id": "r-7", "inputs": [
        {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()},  # nested data
        {"name": "dy", "shape": list(dy.shape), "datatype": "FP32", "parameters": {"binary_data_size": dy.nbytes}}],
        "outputs": [{"name": "dgamma", "parameters": {"binary_data": True}}, {"name": "passed"}],
        "parameters": {"finite_difference": "none", "channel_axis": 1}}
    text = json.dumps(header).encode()
    r = httpx.post(f"{server.url}/v2/models/staged/infer", content=text + dy.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(text))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["id"] == "r-7"
    assert head["model_version"] == "1"
    dgamma, passed = head["outputs"]
    assert dgamma["name"] == "dgamma"
    assert dgamma["parameters"]["binary_data_size"] == 4 * SHAPE[1]
    assert passed == {"name": "passed", "datatype": "BOOL", "shape": [1], "data": [True]}
    got = np.frombuffer(r.content[n:], "<f4")
    # dgamma = sum over N, H, W of dy * xhat: float64 by hand, the float32 answer within float32 rounding
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3), keepdims=True)
    xhat = (x64 - mean) / np.sqrt(x64.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, (dy64 * xhat).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_binary_parts_follow_the_order_the_outputs_were_asked_in(server):
    """report before dgamma, passed in between: each binary part sits where the header says."""
    x, dy = _data(np.float32, shape=(16, 3))
    header = {"inputs": [{"name": n, "shape": [16, 3], "datatype": "FP32", "data": a.reshape(-1).tolist()}
                         for n, a in (("x", x), ("dy", dy))],
              "outputs": [{"name": "report", "parameters": {"binary_data": True}}, {"name": "passed"},
                          {"name": "dgamma", "parameters": {"binary_data": True}}]}
    r = httpx.post(f"{server.url}/v2/models/qianfeng/infer", json=header)
    n = int(r.headers["inference-header-content-length"])
    outputs = json.loads(r.content[:n])["outputs"]
    assert [o["name"] for o in outputs] == ["report", "passed", "dgamma"]
    at, parts = n, {}
    for o in outputs:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is not None:
            parts[o["name"]] = r.content[at:at + size]
            at += size
    assert at == len(r.content)
    assert json.loads(parts["report"][4:])["variant"] == "qianfeng"
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    xhat = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5)
    np.testing.assert_allclose(np.frombuffer(parts["dgamma"], "<f4"), (dy64 * xhat).sum(0), rtol=1e-5, atol=1e-6)


def test_a_json_answer_with_no_binary(server):
    x, dy = _data(np.float32, shape=(8, 3))
    body = {"inputs": [{"name": "x", "shape": [8, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()},
                       {"name": "dy", "shape": [8, 3], "datatype": "FP32", "data": dy.reshape(-1).tolist()}],
            "parameters": {"finite_difference": "brute"}}
    r = httpx.post(f"{server.url}/v2/models/rocking/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert list(outputs) == ["dx", "dgamma", "dbeta", "passed", "report"]  # all, in the protocol's order
    assert outputs["report"]["datatype"] == "BYTES"
    report = json.loads(outputs["report"]["data"][0])
    assert report["checks"]["finite_difference"]["method"] == "brute"
    assert len(outputs["dx"]["data"]) == 24
    assert outputs["dx"]["shape"] == [8, 3]


def test_binary_report_is_length_prefixed(server):
    x, dy = _data(np.float32, shape=(8, 3))
    body = {"inputs": [{"name": "x", "shape": [8, 3], "datatype": "FP32", "data": x.reshape(-1).tolist()},
                       {"name": "dy", "shape": [8, 3], "datatype": "FP32", "data": dy.reshape(-1).tolist()}],
            "outputs": [{"name": "report", "parameters": {"binary_data": True}}]}
    r = httpx.post(f"{server.url}/v2/models/qianfeng/infer", json=body)
    n = int(r.headers["inference-header-content-length"])
    raw = r.content[n:]
    (length,) = struct.unpack("<I", raw[:4])
    assert length == len(raw) - 4
    assert json.loads(raw[4:])["variant"] == "qianfeng"


def _post(server, header, binary=b"", length=None, **headers):
    text = json.dumps(header).encode() if isinstance(header, dict) else header
    if binary or length is not None:
        headers["Inference-Header-Content-Length"] = str(len(text) if length is None else length)
    return httpx.post(f"{server.url}/v2/models/qianfeng/infer", content=text + binary, headers=headers)


X = {"name": "x", "shape": [4, 2], "datatype": "FP32", "parameters": {"binary_data_size": 32}}
DY = {"name": "dy", "shape": [4, 2], "datatype": "FP32", "data": [0.5] * 8}
EIGHT = np.arange(8, dtype="<f4").tobytes()


@pytest.mark.parametrize(("header", "binary", "length", "status", "words"), [
    ({"inputs": [X, DY]}, EIGHT, 10_000, 400, "Inference-Header-Content-Length is 10,000 but the body has"),
    ({"inputs": [X, DY]}, EIGHT + b"\0\0\0\0", None, 400, "holds 36 bytes after the JSON header but the inputs' "
                                                            "binary_data_size add up to 32"),
    ({"inputs": [X, DY]}, EIGHT[:16], None, 400, "holds 16 bytes after the JSON header"),
    ({"inputs": [{**X, "data": [1] * 8}, DY]}, EIGHT, None, 400, "x: has both data and binary_data_size"),
    ({"inputs": [{**X, "parameters": {"binary_data_size": 16}}, DY]}, EIGHT[:16], None, 400,
     "x: binary_data_size is 16 but shape [4, 2] of FP32 needs 32 bytes"),
    (b"{not json", b"", None, 400, "not valid JSON"),
    ({"inputs": [X, DY]}, EIGHT, 3, 400, "the first 3 bytes (the JSON header) is not valid JSON"),
    ({"inputs": [DY]}, b"", None, 400, "x: is required"),
    ({"inputs": [{**DY, "name": "weight"}]}, b"", None, 400, "unknown input 'weight'; the inputs are x, dy"),
    ({"inputs": [DY, DY]}, b"", None, 400, "dy: is sent twice"),
    ({"inputs": [X, DY], "parameters": {"epsilon": 1e-3}}, EIGHT, None, 400,
     "parameters.epsilon: unknown parameter; bncheck reads dtype, accum_dtype, eps"),
    ({"inputs": [X, DY], "parameters": {"eps": -1}}, EIGHT, None, 400, "parameters.eps: Input should be greater"),
    ({"inputs": [X, DY], "outputs": [{"name": "y"}]}, EIGHT, None, 400, "unknown output 'y'"),
    ({"inputs": [X, {**DY, "shape": [2, 4]}]}, EIGHT, None, 400, "dy"),
    ({"inputs": [X, {**DY, "datatype": "INT8"}]}, EIGHT, None, 400, "datatype must be one of FP16, BF16, FP32, FP64"),
    ({"inputs": [X, DY, {"name": "candidate_dx", "shape": [4, 2], "datatype": "FP32", "data": [[1] * 8]}]},
     EIGHT, None, 400, "candidate_dx: data is nested as [1, 8] but shape is [4, 2]"),
    ({"inputs": [X, DY], "parameters": {"device": "tpu"}}, EIGHT, None, 400, "parameters.device"),
])
def test_malformed_bodies_are_clean_400s(server, header, binary, length, status, words):
    r = _post(server, header, binary, length)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"], r.json()


def test_protocol_errors_reach_tritonclient(triton):
    x, dy = _data(np.float32, shape=(4, 3))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("qianfeng", [_input("x", x, True), _input("dy", dy[:2], True)])
    assert info.value.status() == "400"
    assert "dy" in info.value.message()
    assert "shape" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        triton.infer("nonesuch", [_input("x", x, True), _input("dy", dy, True)])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        triton.infer("qianfeng", [_input("x", x, True), _input("dy", dy, True)], model_version="2")
    assert "version 1 only" in info.value.message()
    ok = triton.infer("qianfeng", [_input("x", x, True), _input("dy", dy, True)], model_version="1")
    assert ok.as_numpy("passed").tolist() == [True]


def test_compressed_bodies_are_refused_not_misread(triton):
    x, dy = _data(np.float32, shape=(4, 3))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("qianfeng", [_input("x", x, True), _input("dy", dy, True)],
                     request_compression_algorithm="gzip")
    assert info.value.status() == "415"
    assert "Content-Encoding 'gzip'" in info.value.message()


def test_unknown_v2_paths_answer_in_the_protocols_form(server):
    r = httpx.get(f"{server.url}/v2/repository/index")
    assert r.status_code == 404
    assert "error" in r.json()


def test_async_tritonclient(server):
    aio = pytest.importorskip("tritonclient.http.aio")

    async def go():
        client = aio.InferenceServerClient(server.url.removeprefix("http://"))
        try:
            assert await client.is_server_ready()
            x, dy = _data(np.float32)
            result = await client.infer("qianfeng", [_input("x", x, True), _input("dy", dy, True)])
            return result.as_numpy("passed").tolist(), result.as_numpy("dx").shape
        finally:
            await client.close()

    assert asyncio.run(go()) == ([True], SHAPE)


def test_v1_reads_what_tritonclient_writes_as_json():
    """InferInput's JSON tensor (name, parameters, data flat) posted to /v1/check."""
    x, dy = _data(np.float32, shape=(6, 2))
    with LiveServer() as server:
        tx, tdy = _input("x", x, False), _input("dy", dy, False)
        body = {"x": tx._get_tensor(), "dy": tdy._get_tensor(), "finite_difference": {"method": "none"}}
        r = httpx.post(f"{server.url}/v1/check", json=body)
        assert r.status_code == 200, r.text
        nested = {"x": {"shape": [6, 2], "datatype": "FP32", "data": x.tolist()},
                  "dy": {"name": "dy", "shape": [6, 2], "datatype": "FP32", "data": dy.tolist()},
                  "finite_difference": {"method": "none"}}
        r2 = httpx.post(f"{server.url}/v1/check", json=nested)
        assert r2.status_code == 200, r2.text
        assert r.json()["gradients"] == r2.json()["gradients"]
        binary = tritonclient_http.InferInput("x", [6, 2], "FP32")
        binary.set_data_from_numpy(x, binary_data=True)
        r3 = httpx.post(f"{server.url}/v1/check", json={"x": binary._get_tensor(), "dy": tdy._get_tensor()})
        assert r3.status_code == 422
        assert "binary tensor data goes to POST /v2/models/{variant}/infer" in r3.json()["detail"]


def _sample(text, name, **labels):
    from prometheus_client.parser import text_string_to_metric_families

    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name and s.labels == labels)


def test_token_limits_and_metrics_apply_to_v2():
    x, dy = _data(np.float32, shape=(64, 4))
    with LiveServer(token="s3cret", max_elements=200) as server:
        host = server.url.removeprefix("http://")
        client = tritonclient_http.InferenceServerClient(host)
        assert client.is_server_live()  # health needs no token
        with pytest.raises(InferenceServerException) as info:
            client.infer("qianfeng", [_input("x", x, True), _input("dy", dy, True)])
        assert info.value.status() == "401"
        auth = {"Authorization": "Bearer s3cret"}  # tritonclient adds its own headers to the dict: copies
        with pytest.raises(InferenceServerException) as info:
            client.infer("qianfeng", [_input("x", x, True), _input("dy", dy, True)], headers=dict(auth))
        assert info.value.status() == "400"
        assert "over the limit of 200" in info.value.message()
        small = [_input("x", x[:8], True), _input("dy", dy[:8], True)]
        assert client.infer("qianfeng", small, headers=dict(auth)).as_numpy("passed").tolist() == [True]
        metrics = httpx.get(f"{server.url}/metrics", headers=auth).text
        assert _sample(metrics, "bncheck_checks_total", outcome="passed") == 1
        assert 'route="/v2/models/{model}/infer",status="200"' in metrics
        assert 'route="/v2/models/{model}/infer",status="401"' in metrics
        client.close()


def test_large_binary_bodies_go_through_shared_memory():
    """1M float32 elements per tensor, to a worker process: in through a shared-memory
    segment, out through another; the gradients equal /v1's."""
    x, dy = _data(np.float32, shape=(1 << 14, 64))
    with LiveServer(executor="process", max_concurrent=1) as server:
        client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"),
                                                         network_timeout=300, connection_timeout=300)
        result = client.infer("staged", [_input("x", x, True), _input("dy", dy, True)],
                              parameters={"finite_difference": "none"})
        with Client(base_url=server.url, timeout=300) as bn:
            v1 = bn.check(x, dy, variant="staged", finite_difference="none")
        assert np.array_equal(result.as_numpy("dx"), v1.gradients["dx"])
        metrics = httpx.get(f"{server.url}/metrics").text
        for direction in ("request", "answer"):  # the v2 infer and the /v1 check
            assert _sample(metrics, "bncheck_worker_transport_total", direction=direction,
                           carrier="shared_memory") == 2
        client.close()

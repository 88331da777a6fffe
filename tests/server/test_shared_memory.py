"""The KServe v2 system shared memory extension, spoken to by the real tritonclient (its
HTTP client and its shared-memory utilities, which create /dev/shm objects with
multiprocessing.shared_memory).

Oracles: the same infer with binary tensors over the socket (outputs equal bit for bit),
an independent kernel (tests/numerics/kernels.py) for a correct candidate and a planted
bug, sums by hand, and the protocol's rules for status, register and unregister.
"""

import json
import os
import uuid

import httpx
import numpy as np
import pytest

tritonclient_http = pytest.importorskip("tritonclient.http")
import tritonclient.utils.shared_memory as tshm  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.conftest import LiveServer  # noqa: E402
from tests.numerics.kernels import backward  # noqa: E402
from tests.server.serving import serve, wait_ready  # noqa: E402

SHAPE = (4, 6, 5, 3)


def _data(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def server():
    with LiveServer(client_shm=True, max_shm_regions=6) as s:
        yield s


@pytest.fixture
def triton(server):
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def regions():
    """tritonclient's regions, made by the test and destroyed after it: (name, byte_size) -> handle."""
    made = []

    def make(name, byte_size):
        handle = tshm.create_shared_memory_region(name, f"/bncheck_test_{uuid.uuid4().hex[:12]}", byte_size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        tshm.destroy_shared_memory_region(handle)


def _key(handle):
    return handle._shm_key  # tritonclient keeps the key it created the object with


def _shm_input(name, arr, region, offset=0):
    t = tritonclient_http.InferInput(name, list(arr.shape), "FP32")
    t.set_shared_memory(region, arr.nbytes, offset)
    return t


def _shm_output(name, region, byte_size, offset=0):
    o = tritonclient_http.InferRequestedOutput(name)
    o.set_shared_memory(region, byte_size, offset)
    return o


def _binary_input(name, arr):
    t = tritonclient_http.InferInput(name, list(arr.shape), "FP32")
    t.set_data_from_numpy(arr, binary_data=True)
    return t


def test_metadata_lists_the_extension(triton):
    assert "system_shared_memory" in triton.get_server_metadata()["extensions"]


def test_inputs_and_outputs_through_regions_equal_binary_bit_for_bit(triton, regions):
    """x, dy, gamma in one region (one after another), dx, dgamma, dbeta into another; the
    outputs equal those of the same infer with binary tensors over the socket."""
    x, dy = _data()
    gamma = np.linspace(0.5, 1.5, SHAPE[1]).astype(np.float32)
    c = SHAPE[1]
    ins = regions("in", x.nbytes + dy.nbytes + gamma.nbytes)
    tshm.set_shared_memory_region(ins, [x, dy, gamma])
    outs = regions("out", x.nbytes + 2 * 4 * c)
    triton.register_system_shared_memory("in", _key(ins), x.nbytes + dy.nbytes + gamma.nbytes)
    triton.register_system_shared_memory("out", _key(outs), x.nbytes + 2 * 4 * c)
    inputs = [_shm_input("x", x, "in"), _shm_input("dy", dy, "in", x.nbytes),
              _shm_input("gamma", gamma, "in", x.nbytes + dy.nbytes)]
    outputs = [_shm_output("dx", "out", x.nbytes), _shm_output("dgamma", "out", 4 * c, x.nbytes),
               _shm_output("dbeta", "out", 4 * c, x.nbytes + 4 * c),
               tritonclient_http.InferRequestedOutput("report", binary_data=False)]
    params = {"finite_difference": "none"}
    result = triton.infer("kevin", inputs, outputs=outputs, parameters=params)
    sent = triton.infer("kevin", [_binary_input("x", x), _binary_input("dy", dy), _binary_input("gamma", gamma)],
                        parameters=params)
    at = {"dx": 0, "dgamma": x.nbytes, "dbeta": x.nbytes + 4 * c}
    for name, offset in at.items():
        entry = result.get_output(name)
        want = sent.as_numpy(name)
        assert "data" not in entry
        assert entry["parameters"]["shared_memory_region"] == "out"
        assert entry["parameters"]["shared_memory_byte_size"] == want.nbytes
        assert entry["parameters"].get("shared_memory_offset", 0) == offset
        got = tshm.get_contents_as_numpy(outs, np.float32, list(want.shape), offset)
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), name
    report = json.loads(result.as_numpy("report")[0])
    assert report["checks"]["variant"]["passed"] is True
    # dbeta by hand: the sum of dy over every axis but the channel's
    np.testing.assert_allclose(tshm.get_contents_as_numpy(outs, np.float32, [c], at["dbeta"]),
                               dy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


def test_a_candidate_in_a_region_gets_the_verdict(triton, regions):
    """An independent float32 kernel's dx passes; the same kernel with one zeroed channel fails."""
    x, dy = _data()
    data = regions("data", 2 * x.nbytes)
    tshm.set_shared_memory_region(data, [x, dy])
    triton.register_system_shared_memory("data", _key(data), 2 * x.nbytes)
    cand = regions("cand", x.nbytes)
    triton.register_system_shared_memory("cand", _key(cand), x.nbytes)
    gamma, beta = np.ones(SHAPE[1], np.float32), np.zeros(SHAPE[1], np.float32)
    for bug, want in ((None, True), ("zeroed_channel", False)):
        out = backward(x, dy, gamma, beta, eps=1e-5, bug=bug)
        tshm.set_shared_memory_region(cand, [out["dx"]])
        inputs = [_shm_input("x", x, "data"), _shm_input("dy", dy, "data", x.nbytes),
                  _shm_input("candidate_dx", out["dx"], "cand")]
        result = triton.infer("qianfeng", inputs, outputs=[tritonclient_http.InferRequestedOutput("passed"),
                                                           tritonclient_http.InferRequestedOutput("report")],
                              parameters={"finite_difference": "stats"})
        assert result.as_numpy("passed").tolist() == [want], bug
        report = json.loads(result.as_numpy("report")[0])
        if bug:
            assert report["checks"]["candidate"]["dx"]["failed_channels"] == str(SHAPE[1] // 2)


def test_an_unaligned_tensor_reads_the_same(triton, regions):
    """A region that starts 4 bytes into its object, and float32 tensors 1 byte into the
    region: read at the right place (copied out, being unaligned), not misread."""
    x, dy = _data()
    buf = regions("odd", 5 + 2 * x.nbytes)
    raw = np.frombuffer(b"\x7f" * 5 + x.tobytes() + dy.tobytes(), np.uint8)
    tshm.set_shared_memory_region(buf, [raw])
    triton.register_system_shared_memory("odd", _key(buf), raw.nbytes - 4, offset=4)
    result = triton.infer("qianfeng", [_shm_input("x", x, "odd", 1), _shm_input("dy", dy, "odd", 1 + x.nbytes)],
                          parameters={"finite_difference": "none"})
    sent = triton.infer("qianfeng", [_binary_input("x", x), _binary_input("dy", dy)],
                        parameters={"finite_difference": "none"})
    assert np.array_equal(result.as_numpy("dx"), sent.as_numpy("dx"))


def test_status_register_and_unregister(triton, regions):
    a, b = regions("a", 4096), regions("b", 8192)
    triton.register_system_shared_memory("a", _key(a), 1024, offset=512)
    triton.register_system_shared_memory("b", _key(b), 8192)
    status = {r["name"]: r for r in triton.get_system_shared_memory_status()}
    assert status == {"a": {"name": "a", "key": _key(a), "offset": 512, "byte_size": 1024},
                      "b": {"name": "b", "key": _key(b), "offset": 0, "byte_size": 8192}}
    assert triton.get_system_shared_memory_status("b") == [status["b"]]
    with pytest.raises(InferenceServerException, match="'a' is already registered"):
        triton.register_system_shared_memory("a", _key(b), 16)
    triton.unregister_system_shared_memory("a")
    assert [r["name"] for r in triton.get_system_shared_memory_status()] == ["b"]
    with pytest.raises(InferenceServerException, match="no region 'a' is registered"):
        triton.unregister_system_shared_memory("a")
    triton.unregister_system_shared_memory()
    assert triton.get_system_shared_memory_status() == []


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"key": "/bncheck_test_no_such_object", "byte_size": 8}, "key", "no shared-memory object"),
    ({"key": "../etc/passwd", "byte_size": 8}, "key", "shm_open"),
    ({"key": "/bncheck-123-abc", "byte_size": 8}, "key", "bncheck's own"),
    ({"key": "KEY", "byte_size": 0}, "byte_size", "integer >= 1"),
    ({"key": "KEY", "byte_size": 8, "offset": -1}, "offset", "integer >= 0"),
    ({"key": "KEY", "byte_size": 4096, "offset": 1}, "key", "fewer than offset + byte_size = 4,097"),
])
def test_bad_registrations_are_400s_naming_the_field(server, regions, body, field, words):
    handle = regions("r", 4096)
    body = {k: (_key(handle) if v == "KEY" else v) for k, v in body.items()}
    r = httpx.post(f"{server.url}/v2/systemsharedmemory/region/r/register", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(f"{field}: ")
    assert words in r.json()["error"]
    assert httpx.get(f"{server.url}/v2/systemsharedmemory/status").json() == []


def test_a_symlink_in_dev_shm_is_refused(server, regions):
    handle = regions("r", 4096)
    link = f"bncheck_test_link_{uuid.uuid4().hex[:8]}"
    os.symlink(f"/dev/shm/{_key(handle).lstrip('/')}", f"/dev/shm/{link}")
    try:
        r = httpx.post(f"{server.url}/v2/systemsharedmemory/region/r/register", json={"key": link, "byte_size": 8})
    finally:
        os.unlink(f"/dev/shm/{link}")
    assert r.status_code == 400
    assert r.json()["error"].startswith("key: cannot open")


def test_the_number_of_regions_is_bounded(server, regions):
    handle = regions("r", 64)
    with httpx.Client(base_url=server.url) as http:
        for i in range(6):
            assert http.post(f"/v2/systemsharedmemory/region/r{i}/register",
                             json={"key": _key(handle), "byte_size": 8}).status_code == 200
        r = http.post("/v2/systemsharedmemory/region/r6/register", json={"key": _key(handle), "byte_size": 8})
        assert r.status_code == 400
        assert "BNCHECK_MAX_SHM_REGIONS" in r.json()["error"]
        assert http.post("/v2/systemsharedmemory/unregister").status_code == 200


def _infer(server, inputs, outputs=None):
    body = {"inputs": inputs, "parameters": {"finite_difference": "none"}}
    if outputs is not None:
        body["outputs"] = outputs
    return httpx.post(f"{server.url}/v2/models/qianfeng/infer", json=body)


def _tensor(name, region, size, offset=0, **extra):
    params = {"shared_memory_region": region, "shared_memory_byte_size": size, **extra}
    if offset:
        params["shared_memory_offset"] = offset
    return {"name": name, "shape": [8, 3], "datatype": "FP32", "parameters": params}


def test_bad_infers_through_regions_are_400s_naming_the_field(triton, server, regions):
    x, dy = _data((8, 3))
    handle = regions("data", 2 * x.nbytes)
    tshm.set_shared_memory_region(handle, [x, dy])
    triton.register_system_shared_memory("data", _key(handle), 2 * x.nbytes)
    small = regions("small", 8)
    triton.register_system_shared_memory("small", _key(small), 8)
    dy_in = _tensor("dy", "data", dy.nbytes, x.nbytes)
    cases = [
        ([_tensor("x", "nope", x.nbytes), dy_in], None,
         "x.parameters.shared_memory_region: no region 'nope' is registered"),
        ([_tensor("x", "data", x.nbytes, x.nbytes + 4), dy_in], None,
         "x.parameters.shared_memory_byte_size: offset 100 + byte_size 96 is past the end of region 'data'"),
        ([_tensor("x", "data", x.nbytes - 4), dy_in], None, "x: shared_memory_byte_size is 92 but shape [8, 3]"),
        ([{k: v for k, v in _tensor("x", "data", x.nbytes).items()} | {"data": x.ravel().tolist()}, dy_in], None,
         "x: has a shared_memory_region and data or binary_data_size too"),
        ([{"name": "x", "shape": [8, 3], "datatype": "FP32", "parameters": {"shared_memory_region": "data"}},
          dy_in], None, "x.parameters.shared_memory_byte_size: is required"),
        ([_tensor("x", "data", x.nbytes), dy_in],
         [{"name": "dx", "parameters": {"shared_memory_region": "small", "shared_memory_byte_size": 8}}],
         "outputs[0].parameters.shared_memory_byte_size: is 8 bytes, too few for this output's 96"),
    ]
    for inputs, outputs, error in cases:
        r = _infer(server, inputs, outputs)
        assert r.status_code == 400, (error, r.text)
        assert r.json()["error"].startswith(error), r.json()["error"]


def test_an_object_shrunk_after_registering_is_a_400(triton, server, regions):
    """The object is opened again for each infer: a client that shrank it gets a 400 naming
    it, never a worker killed by SIGBUS."""
    x, dy = _data((8, 3))
    handle = regions("data", 2 * x.nbytes)
    tshm.set_shared_memory_region(handle, [x, dy])
    triton.register_system_shared_memory("data", _key(handle), 2 * x.nbytes)
    os.truncate(f"/dev/shm/{_key(handle).lstrip('/')}", x.nbytes)
    r = _infer(server, [_tensor("x", "data", x.nbytes), _tensor("dy", "data", dy.nbytes, x.nbytes)])
    assert r.status_code == 400
    assert r.json()["error"] == (f"x: {_key(handle)!r} has {x.nbytes:,} bytes, fewer than offset + byte_size = "
                                 f"{2 * x.nbytes:,}")


def test_off_by_default():
    with LiveServer() as s, httpx.Client(base_url=s.url) as http:
        assert "system_shared_memory" not in http.get("/v2").json()["extensions"]
        for method, path in (("GET", "/v2/systemsharedmemory/status"),
                             ("POST", "/v2/systemsharedmemory/region/r/register"),
                             ("POST", "/v2/systemsharedmemory/unregister")):
            r = http.request(method, path, json={"key": "k", "byte_size": 8})
            assert r.status_code == 403, path
            assert "BNCHECK_CLIENT_SHM=true" in r.json()["error"]
        r = _infer(s, [_tensor("x", "data", 96), _tensor("dy", "data", 96)])
        assert r.status_code == 403
        assert "BNCHECK_CLIENT_SHM=true" in r.json()["error"]


def test_registering_needs_the_token():
    with LiveServer(client_shm=True, token="s3cret") as s:
        r = httpx.post(f"{s.url}/v2/systemsharedmemory/region/r/register", json={"key": "k", "byte_size": 8})
        assert r.status_code == 401
        r = httpx.get(f"{s.url}/v2/systemsharedmemory/status", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200


def test_a_worker_process_reads_and_writes_regions(regions):
    """With checks in worker processes (the default), the regions registered with the server
    reach the worker: a real `bncheck serve`."""
    proc, url = serve(client_shm="true", max_concurrent="1")
    try:
        wait_ready(url, 60)
        x, dy = _data()
        data = regions("data", 2 * x.nbytes)
        tshm.set_shared_memory_region(data, [x, dy])
        out = regions("out", x.nbytes)
        triton = tritonclient_http.InferenceServerClient(url.removeprefix("http://"))
        triton.register_system_shared_memory("data", _key(data), 2 * x.nbytes)
        triton.register_system_shared_memory("out", _key(out), x.nbytes)
        result = triton.infer("staged", [_shm_input("x", x, "data"), _shm_input("dy", dy, "data", x.nbytes)],
                              outputs=[_shm_output("dx", "out", x.nbytes)], parameters={"finite_difference": "none"})
        assert result.get_output("dx")["parameters"]["shared_memory_byte_size"] == x.nbytes
        sent = triton.infer("staged", [_binary_input("x", x), _binary_input("dy", dy)],
                            parameters={"finite_difference": "none"})
        got = tshm.get_contents_as_numpy(out, np.float32, list(SHAPE))
        assert np.array_equal(got, sent.as_numpy("dx"))
        triton.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)

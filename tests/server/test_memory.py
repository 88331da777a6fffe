"""A request's whole path in a worker (parse, decode, check, encode: runner.run for /v1,
kserve.run for a v2 infer) leaves nothing for the garbage collector. A reference cycle
kept a check's decoded tensors alive after its answer, until the collector ran; meanwhile
each check found no free heap that fit and faulted fresh pages in (tests/numerics/test_memory.py
holds the check itself to the same)."""

import gc

import numpy as np
import orjson
import pytest

from bncheck.server import Settings, codec, kserve, runner


def _tensors():
    rng = np.random.default_rng(3)
    shape = (8, 16, 64, 64)  # large enough for the compiled passes and the shared-memory answer
    return (rng.standard_normal(shape) + 1).astype(np.float32), rng.standard_normal(shape).astype(np.float32)


def _v1(x, dy):
    return orjson.dumps({"x": codec.encode(x, "b64")[0], "dy": codec.encode(dy, "b64")[0],
                         "finite_difference": {"method": "none"}})


def _v2(x, dy):
    inputs = [{"name": n, "shape": list(a.shape), "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}}
              for n, a in (("x", x), ("dy", dy))]
    header = orjson.dumps({"inputs": inputs, "parameters": {"finite_difference": "none", "binary_data_output": True}})
    return header + x.tobytes() + dy.tobytes(), runner.Call(model="qianfeng", header_length=len(header))


def _run_v1(body, settings):
    return runner.run(body, settings, joined=False)


def _run_v2(body, settings):
    body, call = body
    return kserve.run(body, call, settings, joined=False)


@pytest.mark.parametrize(("build", "run"), [(_v1, _run_v1), (_v2, _run_v2)], ids=["/v1 b64", "v2 binary"])
def test_a_request_leaves_nothing_for_the_garbage_collector(build, run):
    settings = Settings()
    x, dy = _tensors()
    body = build(x, dy)
    assert run(body, settings).passed  # imports and compiles first
    gc.collect()
    gc.disable()
    try:
        outcome = run(body, settings)
        assert outcome.passed
        assert outcome.parts, "a long answer in pieces, as a worker writes it"
        del outcome
        assert gc.collect() == 0, "the request left reference cycles behind"
    finally:
        gc.enable()

"""Whatever bncheck computes on degenerate data is a 200 the OpenAPI schema allows: a fault of
ours (an infinite metric, a finite difference that overflowed) never reads as the caller's 422."""

import httpx
import ml_dtypes
import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from bncheck.server import Settings, create_app, runner

from .conftest import OpenAPIValidator

DTYPES = {"FP64": np.float64, "FP32": np.float32, "FP16": np.float16, "BF16": ml_dtypes.bfloat16}
SCHEMA = OpenAPIValidator(create_app(Settings(executor="thread")).openapi())


def _tensor(a, wire):
    a = np.asarray(a).astype(DTYPES[wire])
    return {"shape": list(a.shape), "datatype": wire, "data": a.astype(np.float64).ravel().tolist()}


@st.composite
def degenerate(draw):
    R, C = draw(st.sampled_from([1, 2, 3, 64])), draw(st.sampled_from([1, 3]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = {"constant": np.full((R, C), 2.5),
         "offset_exact": 1e4 + rng.integers(-3, 4, (R, C)).astype(np.float64),
         "tiny_variance": 3.0 + 1e-6 * rng.standard_normal((R, C)),
         "normal": 0.5 + 2 * rng.standard_normal((R, C))}[draw(st.sampled_from(
             ["constant", "offset_exact", "tiny_variance", "normal"]))]
    dy = {"constant": np.full((R, C), 0.7), "zero": np.zeros((R, C)),
          "normal": rng.standard_normal((R, C))}[draw(st.sampled_from(["constant", "zero", "normal"]))]
    wire = draw(st.sampled_from(list(DTYPES)))
    body = {"x": _tensor(x, wire), "dy": _tensor(dy, wire),
            "gamma": draw(st.sampled_from([[0.0] * C, [1.0] * C, [0.0, -1.5, 2.0][:C]])),
            "finite_difference": {"method": draw(st.sampled_from(["auto", "stats", "brute", "directional", "none"])),
                                  "step": draw(st.sampled_from([1e-300, 1e-12, 1e-4, 0.1]))}}
    if wire == "FP16":
        body["x"] = _tensor(np.clip(x, -6e4, 6e4), wire)
    kind = draw(st.sampled_from(["none", "zeros", "copy"]))
    if kind != "none":
        cand = np.zeros((R, C)) if kind == "zeros" else dy
        body["candidate"] = {"dx": _tensor(cand, wire), "dgamma": [0.0] * C, "dbeta": [0.0] * C}
    return body


@given(degenerate())
def test_every_answer_on_degenerate_data_is_a_200_the_schema_allows(body):
    out = runner.run(orjson.dumps(body), Settings(executor="thread"))
    SCHEMA.validate("/v1/check", "post", httpx.Response(200, content=out.body,
                                                        headers={"content-type": "application/json"}))

"""The bad-input catalogue: every case a test (test_bad_input.py), every case a row in
docs/bad-input.md. Each case is (id, what, request, status, field, words)."""

import base64
import struct

import numpy as np

X = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]
DY = [[0.1, 0.2], [0.3, -0.4], [0.5, 0.6]]


def b64(values, datatype="FP32", shape=None):
    fmt = {"FP16": "e", "FP32": "f", "FP64": "d"}[datatype]
    flat = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    raw = struct.pack(f"<{len(flat)}{fmt}", *flat)
    return {"shape": list(shape or np.shape(values)), "datatype": datatype, "b64": base64.b64encode(raw).decode()}


def body(**changes):
    out = {"x": X, "dy": DY, "finite_difference": {"method": "none"}}
    for key, value in changes.items():
        if value is DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


DROP = object()
JSON = {"content-type": "application/json"}


def deep(n):
    v = 1.0
    for _ in range(n):
        v = [v]
    return v


# (id, what, kind, payload, status, field, words); kind: json | raw (bytes, headers)
CASES = [
    ("malformed-json", "the body is not JSON", "raw", (b'{"x": [[1, 2]', JSON), 400, None, "not valid JSON"),
    ("empty-body", "an empty body", "raw", (b"", JSON), 400, None, "empty"),
    ("json-nan-literal", "NaN as a bare JSON token", "raw", (b'{"x": [[NaN]], "dy": [[1]]}', JSON), 400, None,
     "not valid JSON"),
    ("json-huge-number", "1e400, beyond float64", "raw", (b'{"x": [[1e400]], "dy": [[1]]}', JSON), 400, None,
     "not valid JSON"),
    ("nesting-beyond-parser", "lists nested 2,000 deep", "raw", (b'{"x": ' + b"[" * 2000 + b"]" * 2000 + b"}",
                                                                 JSON), 400, None, "not valid JSON"),
    ("wrong-content-type", "text/plain body", "raw", (b"{}", {"content-type": "text/plain"}), 415, "content-type",
     "application/json"),
    ("no-content-type", "no content type at all", "raw", (b"{}", {}), 415, "content-type", "application/json"),
    ("body-is-array", "a JSON array, not an object", "json", [1, 2], 422, "body", "JSON object"),
    ("body-is-string", "a JSON string", "json", "x", 422, "body", "JSON object"),
    ("missing-x", "no x", "json", body(x=DROP), 422, "x", "required"),
    ("missing-dy", "no dy", "json", body(dy=DROP), 422, "dy", "required"),
    ("x-is-string", "x is a string", "json", body(x="1,2,3"), 422, "x", "got a string"),
    ("x-is-null", "x is null", "json", body(x=None), 422, "x", "got null"),
    ("string-in-list", "a string among the numbers", "json", body(x=[[1.0, "2"], [3.0, 5.0], [0.5, -1.0]]), 422,
     "x", "strings"),
    ("boolean-in-list", "true among the numbers", "json", body(x=[[1.0, True], [3.0, 5.0], [0.5, -1.0]]), 422,
     "x", "booleans"),
    ("null-in-list", "null among the numbers", "json", body(dy=[[0.1, None], [0.3, -0.4], [0.5, 0.6]]), 422,
     "dy", "nulls"),
    ("object-in-list", "an object among the numbers", "json", body(x=[[1.0, {"v": 2}], [3.0, 5.0], [0.5, -1]]),
     422, "x", "objects"),
    ("ragged-lists", "rows of different lengths", "json", body(x=[[1.0, 2.0], [3.0], [0.5, -1.0]]), 422, "x",
     "ragged"),
    ("deep-nesting", "lists nested 100 deep", "json", body(x=deep(100)), 422, "x", "too deep"),
    ("rank-1", "x with one dimension", "json", body(x=[1.0, 2.0, 3.0], dy=[1.0, 2.0, 3.0]), 422, "x",
     "at least 2 dimensions"),
    ("unknown-datatype", "datatype FP8", "json", body(x={"shape": [3, 2], "datatype": "FP8", "data": [0] * 6}),
     422, "x", "FP16, BF16, FP32, FP64"),
    ("bad-base64", "b64 with characters outside the alphabet", "json",
     body(x={"shape": [3, 2], "datatype": "FP32", "b64": "!" * 32}), 422, "x", "not valid base64"),
    ("b64-length", "b64 shorter than the shape needs", "json",
     body(x={"shape": [3, 2], "datatype": "FP32", "b64": "AAAAAAAA"}), 422, "x", "needs 24"),
    ("negative-dimension", "shape [-3, 2]", "json", body(x={"shape": [-3, 2], "datatype": "FP32", "data": []}),
     422, "x", "shape[0] is -3"),
    ("zero-dimension", "shape [3, 0]", "json", body(x={"shape": [3, 0], "datatype": "FP32", "data": []}), 422,
     "x", "shape[1] is 0"),
    ("shape-overflow", "shape [2^62, 2^62]: refused before allocating", "json",
     body(x={"shape": [2**62, 2**62], "datatype": "FP64", "b64": ""}), 422, "x", "over the limit"),
    ("over-element-limit", "a shape over BNCHECK_MAX_ELEMENTS", "json",
     body(x={"shape": [1 << 25], "datatype": "FP32", "b64": ""}), 422, "x", "over the limit"),
    ("data-count", "data shorter than the shape", "json", body(x={"shape": [3, 2], "datatype": "FP32",
                                                                   "data": [1, 2, 3]}), 422, "x", "needs 6"),
    ("shape-not-integers", "shape [3.0, 2]", "json", body(x={"shape": [3.0, 2], "datatype": "FP32",
                                                             "data": [0] * 6}), 422, "x", "integers"),
    ("tensor-extra-key", "an unknown key in a tensor object", "json",
     body(x={"shape": [3, 2], "datatype": "FP32", "data": [0] * 6, "order": "F"}), 422, "x", "unknown tensor keys"),
    ("nan-in-x", "NaN in x (b64)", "json", body(x=b64([[1, float("nan")], [3, 5], [0.5, -1]])), 422, "x",
     "non-finite"),
    ("inf-in-dy", "Inf in dy (b64)", "json", body(dy=b64([[0.1, 0.2], [float("inf"), -0.4], [0.5, 0.6]])), 422,
     "dy", "non-finite"),
    ("overflow-dtype", "x beyond float16 with dtype FP16", "json", body(x=[[1e6, 2.0], [3.0, 5.0], [0.5, -1.0]],
                                                                       dtype="FP16"), 422, "x", "65504"),
    ("overflow-datatype", "data beyond its own datatype FP16", "json",
     body(x={"shape": [3, 2], "datatype": "FP16", "data": [1e6, 2, 3, 5, 0.5, -1]}), 422, "x", "65504"),
    ("dy-shape", "dy of another shape", "json", body(dy=[[0.1, 0.2, 0.3], [0.3, -0.4, 0.1]]), 422, "dy",
     "has shape [2, 3]"),
    ("gamma-length", "gamma of the wrong length", "json", body(gamma=[1.0, 2.0, 3.0]), 422, "gamma",
     "2 channels"),
    ("beta-shape", "beta shaped [2, 1]", "json", body(beta=[[1.0], [2.0]]), 422, "beta", "[2, 1]"),
    ("candidate-shape", "candidate dx of the wrong shape", "json", body(candidate={"dx": [[1.0, 2.0]]}), 422,
     "candidate.dx", "expected [3, 2]"),
    ("candidate-unknown", "an unknown candidate tensor", "json", body(candidate={"dz": [1.0, 2.0]}), 422,
     "candidate.dz", "Extra inputs"),
    ("channel-axis-range", "channel_axis 5 for 2-D x", "json", body(channel_axis=5), 422, "channel_axis",
     "outside [-2, 1]"),
    ("channel-axis-type", "channel_axis 1.5", "json", body(channel_axis=1.5), 422, "channel_axis", "integer"),
    ("eps-zero", "eps 0", "json", body(eps=0), 422, "eps", "greater than 0"),
    ("eps-string", "eps as a string", "json", body(eps="1e-5"), 422, "eps", "valid number"),
    ("unknown-variant", "variant 'fastest'", "json", body(variant="fastest"), 422, "variant", "qianfeng"),
    ("unknown-dtype", "dtype FP8", "json", body(dtype="FP8"), 422, "dtype", "unsupported dtype"),
    ("accum-below-dtype", "accum_dtype FP16 for FP32", "json", body(dtype="FP32", accum_dtype="FP16"), 422,
     "accum_dtype", "float16 for float32"),
    ("training-string", "training 'yes'", "json", body(training="yes"), 422, "training", "boolean"),
    ("inference-no-stats", "training false without running statistics", "json", body(training=False), 422,
     "running_mean", "required"),
    ("negative-running-var", "a negative running variance", "json",
     body(training=False, running_mean=[0.0, 0.0], running_var=[1.0, -1.0]), 422, "running_var", "negative"),
    ("saved-shape", "saved statistics of the wrong shape", "json",
     body(saved_mean=[0.0, 0.0, 0.0], saved_invstd=[1.0, 1.0, 1.0]), 422, "saved_mean", "2 channels"),
    ("saved-alone", "saved_invstd without saved_mean", "json", body(saved_invstd=[1.0, 1.0]), 422, "saved_mean",
     "together"),
    ("saved-invstd-zero", "saved_invstd 0", "json", body(saved_mean=[0.0, 0.0], saved_invstd=[1.0, 0.0]), 422,
     "saved_invstd", "> 0"),
    ("fd-method", "finite_difference.method 'exact'", "json", body(finite_difference={"method": "exact"}), 422,
     "finite_difference.method", "Input should be"),
    ("fd-step", "finite_difference.step 0.5", "json", body(finite_difference={"step": 0.5}), 422,
     "finite_difference.step", "less than or equal to 0.1"),
    ("fd-samples", "finite_difference.samples 0", "json", body(finite_difference={"samples": 0}), 422,
     "finite_difference.samples", "greater than or equal to 1"),
    ("fd-directions", "finite_difference.directions 1000", "json", body(finite_difference={"directions": 1000}),
     422, "finite_difference.directions", "less than or equal to 256"),
    ("tolerance-negative", "tolerance.rtol -1", "json", body(tolerance={"rtol": -1, "atol": 0}), 422,
     "tolerance.rtol", "greater than or equal to 0"),
    ("unknown-field", "a misspelt field 'epsilon'", "json", body(epsilon=1e-3), 422, "epsilon", "Extra inputs"),
]

# Cases that need their own server settings or checks; tested in test_bad_input.py by name.
SPECIAL = [
    ("body-too-large", "a body over BNCHECK_MAX_BODY_BYTES", 413, None),
    ("too-much-work", "finite differences over BNCHECK_FD_WORK", 422, "finite_difference"),
    ("gpu-missing", "device 'gpu' on a machine without one", 422, "device"),
    ("nan-in-candidate", "NaN in a candidate: reported as a mismatch, not refused", 200, None),
]

"""Check a NumPy batch-norm backward through bncheck's KServe v2 endpoint with Triton's own
Python client (pip install 'tritonclient[http]'): binary tensors, no base64.

    python examples/triton/check.py [HOST:PORT]      (default 127.0.0.1:8000, as make serve)
"""

import json
import sys

import numpy as np
import tritonclient.http as triton


def my_backward(x, dy, eps=1e-5):
    """The kernel under test: NCHW, gamma = 1, float32 throughout, with dx of channel 2 never written."""
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True)
    invstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + np.float32(eps))
    xhat = (x - mean) * invstd
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * xhat).sum(axis=axes)
    r = x.size // x.shape[1]
    dx = invstd * (dy - dbeta[None, :, None, None] / r - xhat * dgamma[None, :, None, None] / r)
    dx[:, 2] = 0  # the planted bug
    return dx.astype(np.float32), dgamma.astype(np.float32)


def tensor(name, array):
    t = triton.InferInput(name, list(array.shape), "FP32")
    t.set_data_from_numpy(array, binary_data=True)
    return t


def main():
    client = triton.InferenceServerClient(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:8000")
    print("models:", [m["name"] for m in (client.get_model_metadata(v) for v in ("staged", "qianfeng"))])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4, 16, 16)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx, dgamma = my_backward(x, dy)
    result = client.infer("qianfeng", [tensor("x", x), tensor("dy", dy), tensor("candidate_dx", dx),
                                       tensor("candidate_dgamma", dgamma)],
                          parameters={"finite_difference": "stats"})
    report = json.loads(result.as_numpy("report")[0])
    candidate = report["checks"]["candidate"]
    print("passed:", bool(result.as_numpy("passed")[0]))
    print("dx failed channels:", candidate["dx"]["failed_channels"])
    print("dgamma passed:", candidate["dgamma"]["passed"])
    print("qianfeng's float32 dx, channel 2, first values:", result.as_numpy("dx")[0, 2, 0, :3])


if __name__ == "__main__":
    main()

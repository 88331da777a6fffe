"""Where the GPU time goes: the building blocks of a variant, timed alone.

    python -m bench.gpu_probe      (needs CuPy and PyTorch on a GPU)
"""

from __future__ import annotations

import numpy as np

from bncheck.numerics import backend

from .gpu import EPS, gpu_ms


def _mul(a, b):  # type: ignore[no-untyped-def]
    return a * b


def probe(cp, torch, shape: tuple[int, int]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    P, C = shape
    a = cp.asarray(np.random.default_rng(0).standard_normal(shape), dtype=cp.float32)
    b = cp.asarray(np.random.default_rng(1).standard_normal(shape), dtype=cp.float32)
    a3, b3 = a.reshape(P, C, 1), b.reshape(P, C, 1)
    rows = {
        "copy a (read + write)": gpu_ms(cp, lambda: a.copy()),
        "ones @ a (cuBLAS)": gpu_ms(cp, lambda: backend.ones(P, a.dtype, cp) @ a),
        "a.sum(axis=0) (CuPy)": gpu_ms(cp, lambda: a.sum(axis=0)),
        "fused a*b then ones @ (written out)": gpu_ms(cp, lambda: backend.ones(P, a.dtype, cp)
                                                      @ backend.fuse(_mul, cp)(a, b)),
        "fused sum(a*b) (in-kernel, default k)": gpu_ms(cp, lambda: backend.fused_sum(_mul, (a3, b3),
                                                                                      (P, C, 1), cp)),
        "fused a*b element-wise only": gpu_ms(cp, lambda: backend.fuse(_mul, cp)(a, b)),
        "generated kernel: sum(a) and sum(a*b) in one pass": gpu_ms(
            cp, lambda: backend.channel_sums([(backend.same, (a3,)), (_mul, (a3, b3))], (P, C, 1), cp)),
        "generated kernel: a*b element-wise": gpu_ms(cp, lambda: backend.elementwise(_mul, (P, C, 1), cp)(a3, b3)),
    }
    for k in (64, 256, 1024, 4096):
        backend.STATE.row_chunks = k
        rows[f"fused sum(a*b), chunks <= {k}"] = gpu_ms(
            cp, lambda: backend.fused_sum(_mul, (a3, b3), (P, C, 1), cp))
    t = [torch.as_tensor(v, device="cuda") for v in (b, a)]
    g, m, s = (torch.ones(C, device="cuda"), torch.zeros(C, device="cuda"), torch.ones(C, device="cuda"))
    rows["torch native_batch_norm_backward"] = gpu_ms(cp, lambda: torch.ops.aten.native_batch_norm_backward(
        t[0], t[1], g, None, None, m, s, True, EPS, [True, True, True]))
    return rows


def main() -> None:
    import cupy as cp
    import torch

    for shape in ((1048576, 32), (65536, 256), (4096, 4096)):
        for what, ms in probe(cp, torch, shape).items():
            print(f"{shape[0]} x {shape[1]}  {what:45s} {ms:.3f} ms")
        backend.STATE.row_chunks = 1024


if __name__ == "__main__":
    main()

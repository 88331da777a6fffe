"""The CuPy path against PyTorch's CUDA batch-norm backward, on the same data.

    python -m bench.gpu          (needs CuPy, PyTorch with CUDA, and a GPU; runs in under 2 minutes)
    python -m bench.gpu --profile   (cProfile of whole checks on the GPU; --cpu for the CPU's)

For each shape and dtype: every variant's backward given its forward cache (what
native_batch_norm_backward does given saved mean and invstd), the same with the
forward included, the float64 reference backward, the `stats` finite difference
of every element, and torch.ops.aten.native_batch_norm_backward. Times are CUDA
event times, best of 10 after warm-up. Target: every variant within 2x of PyTorch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bncheck.numerics import VARIANTS, FDOptions, check, fd
from bncheck.numerics import reference as ref
from bncheck.numerics.layout import Layout
from bncheck.numerics.precision import make_arith
from bncheck.numerics.variants import forward_cache

from ._timing import machine, table

SHAPES = [((1048576, 32), "1,048,576 x 32"), ((65536, 256), "65,536 x 256"), ((4096, 4096), "4,096 x 4,096"),
          ((32, 256, 56, 56), "NCHW 32 x 256 x 56 x 56")]
EPS = 1e-5


def gpu_ms(cp: Any, fn: Callable[[], object], repeat: int = 10, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    best = float("inf")
    for _ in range(repeat):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, cp.cuda.get_elapsed_time(start, end))
    return best


def _dtype_rows(cp: Any, torch: Any, lay: Layout, label: str, dtype: str, data: tuple[Any, ...]) -> list[list[str]]:
    x3, dy3, g64, st = data
    t = [torch.as_tensor(a, device="cuda").to(getattr(torch, dtype))
         for a in (lay.restore(dy3), lay.restore(x3), g64, st.mean, st.invstd)]
    torch_ms = gpu_ms(cp, lambda: torch.ops.aten.native_batch_norm_backward(
        t[0], t[1], t[2], None, None, t[3], t[4], True, EPS, [True, True, True]))
    rows = [[label, dtype, "torch native_batch_norm_backward (CUDA)", f"{torch_ms:.3f}", "1.00"]]
    ar = make_arith(dtype, None, shape=lay.view_shape, xp=cp)
    xs, dys, gs = ar.load(x3), ar.load(dy3), ar.param(g64)
    cache = forward_cache(xs, gs, ar, eps=EPS)
    for name, v in VARIANTS.items():
        ms = gpu_ms(cp, lambda v=v: v.fn(dys, cache, ar))
        full = gpu_ms(cp, lambda v=v: v.fn(dys, forward_cache(xs, gs, ar, eps=EPS), ar))
        rows.append([label, dtype, f"`{name}` backward (given its forward cache)", f"{ms:.3f}", f"{ms / torch_ms:.2f}"])
        rows.append([label, dtype, f"`{name}` forward + backward", f"{full:.3f}", f"{full / torch_ms:.2f}"])
    return rows


def shape_rows(cp: Any, torch: Any, shape: tuple[int, ...], label: str) -> list[list[str]]:
    rng = np.random.default_rng(0)
    lay = Layout.of(shape, 1)
    host_x = rng.standard_normal(shape) + 1
    host_dy = rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 1.5, lay.C)
    rows: list[list[str]] = []
    x64, dy64 = cp.asarray(host_x), cp.asarray(host_dy)
    x3, dy3, g64 = lay.view(x64), lay.view(dy64), cp.asarray(gamma)
    st = ref.batch_stats(x3, lay, EPS, cp)
    for dtype in ("float32", "float64"):
        rows += _dtype_rows(cp, torch, lay, label, dtype, (x3, dy3, g64, st))
    ref_ms = gpu_ms(cp, lambda: ref.backward(x3, dy3, g64, st, lay, training=True, xp=cp), repeat=5)
    grads = ref.backward(x3, dy3, g64, st, lay, training=True, xp=cp)
    pr = fd.Problem(x3, dy3, g64, cp.zeros(lay.C), EPS, True, None, lay, cp)
    fd_ms = gpu_ms(cp, lambda: fd.stats_dx(pr, st, grads.dbeta, grads.dgamma / st.invstd, 1e-4), repeat=3)
    rows.append([label, "float64", "reference backward (bncheck, float64)", f"{ref_ms:.3f}", ""])
    rows.append([label, "float64", "`stats` finite difference, every element", f"{fd_ms:.3f}",
                 f"{fd_ms / ref_ms:.2f} x reference"])
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def before_after(cp: Any, shape: tuple[int, ...], dtype: str) -> list[list[str]]:
    """Each variant's backward with the generated kernels and with CuPy's own (fused
    reductions, cuBLAS, cupy.fuse), in the same run on the same data."""
    from bncheck.numerics import backend

    rng = np.random.default_rng(1)
    lay = Layout.of(shape, 1)
    ar = make_arith(dtype, None, shape=lay.view_shape, xp=cp)
    xs, dys = ar.load(cp.asarray(lay.view(rng.standard_normal(shape) + 1))), ar.load(cp.asarray(lay.view(
        rng.standard_normal(shape))))
    gs = ar.param(cp.asarray(rng.uniform(0.5, 1.5, lay.C)))
    cache = forward_cache(xs, gs, ar, eps=EPS)
    rows = []
    for name, v in VARIANTS.items():
        new = gpu_ms(cp, lambda v=v: v.fn(dys, cache, ar))
        backend.STATE.raw_kernels_ok = False
        try:
            old = gpu_ms(cp, lambda v=v: v.fn(dys, cache, ar))
        finally:
            backend.STATE.raw_kernels_ok = not backend.STATE.raw_kernel_errors
        rows.append([f"{shape}", dtype, f"`{name}`", f"{old:.3f}", f"{new:.3f}", f"{old / new:.2f}"])
    return rows


def check_rows(shape: tuple[int, ...], dtype: str, device: str = "gpu") -> list[list[str]]:
    """A whole check() on the GPU, phase by phase (host arrays in, report out), best of 3."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(shape) + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    check(x, dy, device=device, finite_difference=FDOptions("auto"))
    best = None
    for _ in range(3):
        r = check(x, dy, device=device, finite_difference=FDOptions("auto"))
        if best is None or r.timings_ms["total"] < best.timings_ms["total"]:
            best = r
    assert best is not None
    return [[f"{shape}", dtype, phase, f"{ms:.1f}"] for phase, ms in best.timings_ms.items()]


def whole_check_rows(cp: Any, torch: Any, device: str = "gpu") -> list[list[str]]:
    """Issue 17's whole checks on the device: 4M float32 NCHW (16, 64, 64, 64), host arrays in,
    report out, each phase at its fastest of five (bench.core's harness), as ratios to PyTorch's
    float64 backward on the same data: on this machine's CPU (the issue's unit) and on the GPU.
    FD off, the `stats` FD block, FD auto, and a candidate with the calibrated verdict; then the
    same FD-off check on this machine's CPU for comparison. ``cp=None`` times PyTorch's CUDA
    backward on the CPU instead (a dry run of this code without a GPU)."""
    from ._timing import best_ms
    from .core import _candidate, _data32, _phases, _torch_backward_ms

    shape = (16, 64, 64, 64)
    x, dy, gamma, beta = _data32(shape)
    cpu_torch = _torch_backward_ms(torch, x, dy, gamma)
    lay = Layout.of(shape, 1)
    st = ref.batch_stats(lay.view(x.astype(np.float64)), lay, EPS, np)
    where = "cuda" if cp is not None else "cpu"
    t = [torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64, device=where)
         for a in (dy, x, gamma, st.mean, st.invstd)]

    def torch_backward() -> object:
        return torch.ops.aten.native_batch_norm_backward(t[0], t[1], t[2], None, None, t[3], t[4], True, EPS,
                                                         [True, True, True])

    gpu_torch = gpu_ms(cp, torch_backward) if cp is not None else best_ms(torch_backward)
    off = _phases(x, dy, gamma, beta, device=device, finite_difference=FDOptions("none"))
    stats = _phases(x, dy, gamma, beta, device=device, finite_difference=FDOptions("stats"))
    auto = _phases(x, dy, gamma, beta, device=device)
    cand = _phases(x, dy, gamma, beta, device=device, finite_difference=FDOptions("none"),
                   candidate=_candidate(x, dy, gamma, beta))
    cpu_off = _phases(x, dy, gamma, beta, device="cpu", finite_difference=FDOptions("none"))

    def row(what: str, ms: float, target: str, t: dict[str, float] | None) -> list[str]:
        phases = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total") if t else ""
        return [what, f"{ms:.1f}", f"{ms / cpu_torch:.2f}", f"{ms / gpu_torch:.1f}", target, phases]

    return [
        row("PyTorch CPU float64 `native_batch_norm_backward` (this machine's cores)", cpu_torch, "", None),
        row("PyTorch CUDA float64 `native_batch_norm_backward`", gpu_torch, "", None),
        row(f"`check()` on the {device}, FD off", off["total"], "<= 6", off),
        row("the `stats` FD block inside a check", stats["finite_difference"], "<= 5", None),
        row(f"`check()` on the {device}, FD auto", auto["total"], "", auto),
        row(f"`check()` on the {device} with a candidate, calibrated verdict, FD off", cand["total"], "<= 8", cand),
        row("`check()` on this machine's CPU, FD off (for comparison)", cpu_off["total"], "", cpu_off),
    ]


def profile(device: str = "gpu", top: int = 30) -> None:
    """cProfile of the whole checks of whole_check_rows (FD off, a candidate with the calibrated
    verdict), after a warm-up: where the host waits (a transfer, a sync) and what it runs. On the
    GPU, kernels run asynchronously: their time shows at the next call that waits for them."""
    import cProfile
    import pstats

    from .core import _candidate, _data32

    x, dy, gamma, beta = _data32((16, 64, 64, 64))
    cand = _candidate(x, dy, gamma, beta)
    for what, kw in (("FD off", {}), ("a candidate, calibrated verdict, FD off", {"candidate": cand})):
        def run(kw: dict[str, Any] = kw) -> object:
            return check(x, dy, gamma, beta, eps=EPS, device=device, finite_difference=FDOptions("none"), **kw)

        run()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            run()
        prof.disable()
        print(f"\n## cProfile, five checks on the {device}: {what}\n")
        stats = pstats.Stats(prof).strip_dirs()
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    if "--profile" in sys.argv:
        profile("gpu" if "--cpu" not in sys.argv else "cpu")
        return
    try:
        import cupy as cp
        import torch
    except ImportError as exc:
        print(f"bench.gpu needs CuPy and PyTorch: {exc}")
        sys.exit(0)
    if not torch.cuda.is_available():
        print("bench.gpu: no CUDA device")
        sys.exit(0)
    start = time.perf_counter()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"# bncheck GPU path on {name} (CuPy {cp.__version__}, PyTorch {torch.__version__}; {machine()})\n")
    print("A whole check() of 4M float32 elements, NCHW (16, 64, 64, 64), on the GPU (host arrays in, report out)\n")
    print(table(["what", "ms", "÷ torch CPU f64", "÷ torch CUDA f64", "target (÷ CPU)", "phases, ms"],
                whole_check_rows(cp, torch)), "\n", flush=True)
    rows = [row for shape, label in SHAPES for row in shape_rows(cp, torch, shape, label)]
    print(table(["shape", "dtype", "what", "ms", "÷ torch"], rows))
    worst = max(float(r[4]) for r in rows if "given its forward cache" in r[2])
    ab = before_after(cp, (65536, 256), "float32") + before_after(cp, (32, 256, 56, 56), "float32")
    print("\nBackward given the forward cache: CuPy's kernels (before) and the generated ones (after)\n")
    print(table(["shape", "dtype", "variant", "before ms", "after ms", "speed-up"], ab))
    print("\nA whole check() on the GPU (FD auto, host arrays in, report out)\n")
    print(table(["shape", "dtype", "phase", "ms"], check_rows((65536, 256), "float32")))
    from bncheck.numerics import backend

    kernels = ("generated kernels (kernels.py)" if backend.STATE.raw_kernels_ok
               else f"CuPy fallbacks, generated kernels failed: {backend.STATE.raw_kernel_errors[:1]}")
    print(f"\nworst variant backward / torch: {worst:.2f} (target <= 2); {kernels}; "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

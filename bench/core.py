"""Numerical core at 4M elements: variants, seed formulas, reference, finite differences.

    python -m bench.core            (make bench)

Every ratio in a table comes from timings taken in the same run. PyTorch is
optional: with it installed, its CPU native_batch_norm_backward is timed on
the same data.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from bncheck.numerics import VARIANTS, FDOptions, check, fd
from bncheck.numerics import reference as ref
from bncheck.numerics.layout import Layout
from bncheck.numerics.precision import make_arith
from bncheck.numerics.variants import forward_cache
from tests.numerics import seed_gist
from tests.numerics.kernels import backward as kernel_backward

from ._timing import best_ms, machine, table, torch_or_none

SHAPES = [((65536, 64), "(65536, 64)"), ((16, 64, 64, 64), "NCHW (16, 64, 64, 64)")]
EPS = 1e-5


def _data(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    C = shape[1]
    return rng.standard_normal(shape) + 1, rng.standard_normal(shape), rng.uniform(0.5, 1.5, C), rng.standard_normal(C)


def _data32(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``_data`` with x and dy in float32, as a float32 kernel's tensors arrive."""
    x, dy, gamma, beta = _data(shape)
    return x.astype(np.float32), dy.astype(np.float32), gamma, beta


def _candidate(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> dict[str, np.ndarray]:
    """A correct float32 kernel's dx, dgamma and dbeta (the tests' kernel), in C order: the test
    kernel hands back a transposed view, and a kernel writes its dx in its own memory order."""
    out = kernel_backward(x, dy, gamma, beta, eps=EPS)
    return {k: np.ascontiguousarray(out[k]) for k in ("dx", "dgamma", "dbeta")}


def _variant_ms(name: str, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, dtype: str) -> float:
    lay = Layout.of(x.shape, 1)
    ar = make_arith(dtype, None, shape=lay.view_shape, xp=np)
    x3, dy3 = ar.load(lay.view(x)), ar.load(lay.view(dy))
    g = ar.param(gamma)

    def run() -> None:
        cache = forward_cache(x3, g, ar, eps=EPS)
        VARIANTS[name].fn(dy3, cache, ar)

    return best_ms(run, repeat=3)


def _seed_ms(name: str, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> float:
    """The gist's functions on a 2-D (R, C) array, float32, as published."""
    C = x.shape[1]
    x2 = np.moveaxis(x, 1, -1).reshape(-1, C).astype(np.float32)
    dy2 = np.moveaxis(dy, 1, -1).reshape(-1, C).astype(np.float32)
    _, cache = seed_gist.batchnorm_forward(x2, gamma.astype(np.float32), beta.astype(np.float32), np.float32(EPS))
    return best_ms(lambda: seed_gist.SEED[name](dy2, cache), repeat=3)


def _torch_rows(torch, label: str, arrays: list[np.ndarray], ref_ms: float) -> list[list[str]]:  # type: ignore[no-untyped-def]
    rows = []
    for dtype in ("float64", "float32"):
        t = [torch.from_numpy(a).to(getattr(torch, dtype)) for a in arrays]
        ms = best_ms(lambda t=t: torch.ops.aten.native_batch_norm_backward(
            t[0], t[1], t[2], None, None, t[3], t[4], True, EPS, [True, True, True]))
        rows.append([label, f"PyTorch CPU native_batch_norm_backward {dtype}", f"{ms:.1f}", f"{ms / ref_ms:.2f}"])
    return rows


def _shape_rows(shape: tuple[int, ...], label: str, torch) -> list[list[str]]:  # type: ignore[no-untyped-def]
    x, dy, gamma, beta = _data(shape)
    lay = Layout.of(shape, 1)
    x3, dy3 = lay.view(x), lay.view(dy)
    st = ref.batch_stats(x3, lay, EPS, np)
    g = ref.backward(x3, dy3, gamma, st, lay, training=True, xp=np)
    pr = fd.Problem(x3, dy3, gamma, beta, EPS, True, None, lay, np)
    ref_ms = best_ms(lambda: ref.backward(x3, dy3, gamma, st, lay, training=True, xp=np))
    timed = [
        ("float64 reference backward (saved stats given)", ref_ms),
        ("float64 batch statistics", best_ms(lambda: ref.batch_stats(x3, lay, EPS, np), repeat=3)),
        ("`stats` FD, every element (values kept, with its error bound)",
         best_ms(lambda: fd.stats_dx(pr, st, g.dbeta, g.dgamma / st.invstd, 1e-4), repeat=3)),
        ("full `check()` float64, FD auto", best_ms(lambda: check(x, dy, gamma, beta, dtype="float64"), repeat=3)),
    ]
    rows = [[label, what, f"{ms:.1f}", f"{ms / ref_ms:.2f}"] for what, ms in timed]
    if torch is not None:
        rows += _torch_rows(torch, label, [dy, x, gamma, st.mean, st.invstd], ref_ms)
    for name in VARIANTS:
        for dtype in ("float32", "float64"):
            ms = _variant_ms(name, x, dy, gamma, dtype)
            rows.append([label, f"variant `{name}` {dtype} (forward + backward)", f"{ms:.1f}", f"{ms / ref_ms:.2f}"])
        ms = _seed_ms(name, x, dy, gamma, beta)
        rows.append([label, f"seed `{VARIANTS[name].seed_function}` float32, literal", f"{ms:.1f}",
                     f"{ms / ref_ms:.2f}"])
    return rows


def _candidate_rows(shape: tuple[int, ...], label: str, torch) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """A whole check of a float32 kernel's dx, dgamma and dbeta, FD off: the calibrated verdict
    beside the same check with the caller's tolerances (no calibration)."""
    x, dy, gamma, beta = _data32(shape)
    cand = _candidate(x, dy, gamma, beta)
    kw = {"candidate": cand, "finite_difference": FDOptions("none"), "eps": EPS}
    user = {k: (0.0, 1.0) for k in cand}
    calibrated_ms = best_ms(lambda: check(x, dy, gamma, beta, **kw), repeat=3)
    user_ms = best_ms(lambda: check(x, dy, gamma, beta, tolerance=user, **kw), repeat=3)
    rows = [[label, "float32 `check()` with a candidate, calibrated verdict, FD off", f"{calibrated_ms:.1f}",
             f"{calibrated_ms / user_ms:.2f} x the same with user tolerances ({user_ms:.1f} ms)"]]
    if torch is not None:
        x64 = x.astype(np.float64)
        lay = Layout.of(shape, 1)
        st = ref.batch_stats(lay.view(x64), lay, EPS, np)
        t = [torch.from_numpy(a).to(torch.float64) for a in (dy.astype(np.float64), x64, gamma, st.mean, st.invstd)]
        torch_ms = best_ms(lambda: torch.ops.aten.native_batch_norm_backward(
            t[0], t[1], t[2], None, None, t[3], t[4], True, EPS, [True, True, True]))
        rows.append([label, "  the same, ÷ PyTorch CPU float64 backward", f"{torch_ms:.1f}",
                     f"{calibrated_ms / torch_ms:.1f}"])
    return rows


def _torch_backward_ms(torch, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """PyTorch's CPU float64 native_batch_norm_backward on these data, NCHW or (N, C)."""
    x64 = x.astype(np.float64)
    lay = Layout.of(x.shape, 1)
    st = ref.batch_stats(lay.view(x64), lay, EPS, np)
    t = [torch.from_numpy(np.ascontiguousarray(a)).to(torch.float64)
         for a in (dy.astype(np.float64), x64, gamma, st.mean, st.invstd)]
    return best_ms(lambda: torch.ops.aten.native_batch_norm_backward(
        t[0], t[1], t[2], None, None, t[3], t[4], True, EPS, [True, True, True]), repeat=5)


@contextmanager
def _comparisons_timed(spent: list[float]) -> Iterator[None]:
    """Add to ``spent`` the wall time of every comparison a check makes against its reference
    (compare and compare_all, called from check.py): the share of the variant and candidate
    phases that judging takes. The finite differences judge block by block inside their own
    pass (compare.Comparison), which this does not separate."""
    mod = importlib.import_module("bncheck.numerics.check")
    saved = {name: getattr(mod, name) for name in ("compare", "compare_all")}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent.append((time.perf_counter() - start) * 1e3)

        return run

    for name, fn in saved.items():
        setattr(mod, name, timed(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(mod, name, fn)


def _phases(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray, **kw: object) -> dict[str, float]:
    """Five whole checks: the fastest total, and each phase at its fastest (on this shared
    machine a check now and then waits on the kernel for fresh memory: tens of milliseconds);
    "comparing" is the part of the variant and candidate phases spent judging (at its fastest)."""
    runs = []
    for _ in range(5):
        spent: list[float] = []
        with _comparisons_timed(spent):
            timings = check(x, dy, gamma, beta, eps=EPS, **kw).timings_ms  # type: ignore[arg-type]
        runs.append({**timings, "of which comparing": sum(spent)})
    return {k: min(t[k] for t in runs) for k in runs[0]}


def whole_check_rows(torch) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """Issue 17's targets, as ratios to PyTorch's float64 backward on the same 4M float32
    elements: a whole check with FD off (<= 6), the stats FD block (<= 5), a check with a
    candidate and the calibrated verdict (<= 8); with each phase. And a check as by default
    (FD auto), which the issue sets no target for."""
    shape = (16, 64, 64, 64)
    x, dy, gamma, beta = _data32(shape)
    torch_ms = _torch_backward_ms(torch, x, dy, gamma)
    off = _phases(x, dy, gamma, beta, finite_difference=FDOptions("none"))
    stats = _phases(x, dy, gamma, beta, finite_difference=FDOptions("stats"))
    auto = _phases(x, dy, gamma, beta)  # the default: stats and auto's brute cross-check
    cand = _phases(x, dy, gamma, beta, finite_difference=FDOptions("none"), candidate=_candidate(x, dy, gamma, beta))

    def phases(t: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.0f}" for k, v in t.items() if k != "total")

    return [
        ["PyTorch CPU float64 `native_batch_norm_backward`", f"{torch_ms:.1f}", "1.0", "", ""],
        ["`check()`, FD off", f"{off['total']:.0f}", f"{off['total'] / torch_ms:.1f}", "<= 6", phases(off)],
        ["the `stats` FD block inside a check", f"{stats['finite_difference']:.0f}",
         f"{stats['finite_difference'] / torch_ms:.1f}", "<= 5", ""],
        ["`check()` as by default, FD `auto` (`stats` and two brute positions)", f"{auto['total']:.0f}",
         f"{auto['total'] / torch_ms:.1f}", "", phases(auto)],
        ["`check()` with a candidate, calibrated verdict, FD off", f"{cand['total']:.0f}",
         f"{cand['total'] / torch_ms:.1f}", "<= 8", phases(cand)],
    ]


def scaling_rows(torch) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """How a whole check (float32 NCHW, 64 channels, FD off) grows from 64K to 16M elements,
    and its peak memory (tracemalloc, which NumPy reports to) per element."""
    import tracemalloc

    rows = []
    for n in (1, 4, 16, 64, 256):  # 64K .. 16M elements
        shape = (n, 64, 32, 32)
        x, dy, gamma, beta = _data32(shape)
        M = x.size
        ms = _phases(x, dy, gamma, beta, finite_difference=FDOptions("none"))["total"]
        tracemalloc.start()
        check(x, dy, gamma, beta, eps=EPS, finite_difference=FDOptions("none"))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        ratio = f"{ms / _torch_backward_ms(torch, x, dy, gamma):.1f}" if torch is not None else ""
        rows.append([f"{M:,}", str(shape), f"{ms:.1f}", f"{ms * 1e6 / M:.1f}", ratio, f"{peak / M:.0f}"])
    return rows


def main() -> None:
    torch = torch_or_none()
    print(f"# bncheck numerical core ({machine()})\n")
    rows = [row for shape, label in SHAPES for row in _shape_rows(shape, label, torch)]
    print(table(["shape", "what", "ms (best)", "÷ reference"], rows))
    rows = [row for shape, label in SHAPES for row in _candidate_rows(shape, label, torch)]
    print("\n" + table(["shape", "what", "ms (best)", "ratio"], rows))
    small = _data((128, 64))
    small_ms = best_ms(lambda: check(*small, dtype="float64"), repeat=20)
    print(f"\nfull check of 8,192 elements (128 x 64), float64, FD auto: {small_ms:.2f} ms")
    if torch is not None:
        print("\n" + table(["4M float32 NCHW (16, 64, 64, 64)", "ms (best of 5)", "÷ PyTorch", "target",
                             "phases (ms)"], whole_check_rows(torch)))
    print("\n" + table(["elements", "shape", "check ms (FD off)", "ns per element", "÷ PyTorch float64 backward",
                         "peak bytes per element"], scaling_rows(torch)))
    if torch is None:
        print("\n(PyTorch not installed: `pip install torch==2.13.0` adds its rows.)")


if __name__ == "__main__":
    main()

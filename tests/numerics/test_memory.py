"""A check lets go of what it was given when it returns: nothing it made is left for the
garbage collector (a reference cycle keeps its arrays alive until the collector happens to
run, and a server's heap grows by them check after check). The oracles are Python's own:
weak references to the caller's arrays die as soon as the caller drops them, with the
collector switched off, and the collector then finds nothing unreachable."""

import gc
import weakref

import numpy as np
import pytest

from bncheck.numerics import FDOptions, check

from .kernels import backward

CASES = {
    # name: (shape, channel_axis, options): large enough for the compiled passes (fused.py) and small
    # enough for NumPy's, along s and along the channels (S = 1, channels-last)
    "NCHW, FD off, compiled": ((8, 16, 64, 64), 1, {"finite_difference": FDOptions("none")}),
    "NCHW, the stats FD": ((8, 16, 32, 32), 1, {}),
    "NCHW, the brute-force FD": ((2, 3, 4, 5), 1, {"finite_difference": FDOptions("brute")}),
    "(N, C), FD off": ((65536, 8), 1, {"finite_difference": FDOptions("none")}),
    "channels-last, all variants, plots": ((4, 8, 8, 16), 3, {"variant": "all", "plots": True}),
    "float16": ((4, 6, 9), 1, {"dtype": "float16"}),
}


def _arrays(shape, axis, options, candidate):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, shape[axis])
    cand = None
    if candidate:  # a right kernel's outputs, in the check's dtype
        cand = backward(x, dy, gamma, np.zeros_like(gamma), eps=1e-5, channel_axis=axis,
                        dtype=np.dtype(options.get("dtype", "float32")))
    return x, dy, gamma, cand


@pytest.mark.parametrize("candidate", [False, True], ids=["no candidate", "a candidate, calibrated verdict"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_check_leaves_nothing_for_the_garbage_collector(case, candidate):
    shape, axis, options = CASES[case]
    check(*_arrays(shape, axis, options, False)[:3], channel_axis=axis, **options)  # compiled and imported first
    gc.collect()
    gc.disable()
    try:
        x, dy, gamma, cand = _arrays(shape, axis, options, candidate)
        held = [weakref.ref(a) for a in (x, dy, *(cand or {}).values())]
        report = check(x, dy, gamma, candidate=cand, channel_axis=axis, **options)
        assert tuple(report.shape) == shape
        assert report.passed, "a right kernel's outputs"
        del x, dy, gamma, cand, report
        alive = [i for i, ref in enumerate(held) if ref() is not None]
        assert not alive, f"the caller's arrays {alive} outlive the check and its report"
        assert gc.collect() == 0, "the check left reference cycles behind"
    finally:
        gc.enable()

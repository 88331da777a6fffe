"""The calibrated verdict against independent kernels: no false alarm, no visible bug missed.

For every kind of data x layout x precision, the independent correct kernels of
kernels.py (row-by-row, chunked and float64 sums; two-pass and Welford statistics;
mixed and pure 16-bit outputs) must pass, and every planted bug whose error exceeds 4x
the worst correct kernel's on the same data must fail. "Error" here is measured by this
file alone, in float64, against a reference written here, in simple natural units:
dx per channel in |gamma| * invstd * rms(dy), dgamma and dbeta per channel in sum|dy|.
"""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.numerics import FDOptions, check

from . import kinds
from .kernels import BUGS, backward
from .kinds import make_kind

NO_FD = FDOptions(method="none")
DTYPES = ("float32", "bfloat16", "float16")
EPS = 1e-5
VISIBLE = 4.0
LAYOUTS = {  # name: (shape for N, C, H, W = n, 16, 7, 7 as that layout holds it, channel axis)
    "nchw": (lambda n, c: (n, c, 7, 7), 1),
    "nhwc": (lambda n, c: (n, 7, 7, c), -1),
    "2d": (lambda n, c: (n * 49, c), 1),
}
CORRECT = (
    {"stats": "two_pass", "sums": "rows"},
    {"stats": "two_pass", "sums": "chunked"},
    {"stats": "welford", "sums": "rows"},
    {"stats": "two_pass", "sums": "float64"},
    {"stats": "two_pass", "sums": "rows", "pure": True},  # 16-bit dgamma and dbeta too
    {"stats": "two_pass", "sums": "rows", "textbook": True},
    {"stats": "welford", "sums": "chunked", "textbook": True},
)


def _data(kind: str, layout: str, seed: int = 0):
    rng = np.random.default_rng([seed, len(kind), len(layout)])
    make_shape, axis = LAYOUTS[layout]
    n, c = 8, 16
    if kind == "batch2":
        n = 2
        if layout == "2d":
            make_shape = lambda n, c: (2, c)  # noqa: E731 (R = 2 in 2-D)
    if kind == "long":  # one channel of R = 2^20 (2-D also stands for NHWC: the same (R, C) rows)
        n, c = 1 << 20, 1
        make_shape = {"nchw": lambda n, c: (16, c, 256, 256), "2d": lambda n, c: (n, c)}[layout]
    return (*make_kind(kind, make_shape(n, c), axis, rng), axis)


def _reference(x, dy, gamma, axis):
    """float64, written here: (R, C) rows, two-pass."""
    xr = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)
    dyr = np.moveaxis(dy, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)
    mean = xr.mean(axis=0)
    invstd = 1.0 / np.sqrt(((xr - mean) ** 2).mean(axis=0) + EPS)
    xhat = (xr - mean) * invstd
    dbeta, dgamma = dyr.sum(axis=0), (dyr * xhat).sum(axis=0)
    dx = gamma * invstd * (dyr - dbeta / len(xr) - xhat * dgamma / len(xr))
    scale = {"dx": np.abs(gamma) * invstd * np.sqrt((dyr ** 2).mean(axis=0)),
             "dgamma": np.abs(dyr).sum(axis=0), "dbeta": np.abs(dyr).sum(axis=0)}
    return {"dx": dx, "dgamma": dgamma, "dbeta": dbeta}, scale, (lambda a: np.moveaxis(a, axis, -1).reshape(dx.shape))


def _errors(out, ref, scale, rows):
    err = {}
    for t in ("dx", "dgamma", "dbeta"):
        value = rows(out[t]) if t == "dx" else out[t]
        e = np.abs(np.asarray(value, dtype=np.float64) - ref[t])
        with np.errstate(divide="ignore", invalid="ignore"):
            e = np.where(e == 0, 0.0, e / scale[t])
        err[t] = float(np.max(e))
    return err


def _run(x, dy, gamma, beta, axis, dtype, kernel):
    kw = dict(kernel)
    pure = kw.pop("pure", False)
    param = dtype if pure and dtype != "float32" else "float32"
    out = backward(x, dy, gamma, beta, eps=EPS, channel_axis=axis, dtype=dtype, param_dtype=param, **kw)
    return {k: out[k] for k in ("dx", "dgamma", "dbeta")}


def _verdict(x, dy, gamma, beta, axis, dtype, out):
    xs, dys = x.astype(_np_dtype(dtype)), dy.astype(_np_dtype(dtype))
    return check(xs, dys, gamma, beta, eps=EPS, channel_axis=axis, candidate=out, finite_difference=NO_FD)


def _np_dtype(name):
    import ml_dtypes

    return ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)


def _group(kind, layout, dtype):
    x, dy, gamma, beta, axis = _data(kind, layout)
    xs, dys = x.astype(_np_dtype(dtype)), dy.astype(_np_dtype(dtype))
    ref, scale, rows = _reference(xs, dys, gamma, axis)
    correct = []
    for kernel in CORRECT:
        out = _run(xs, dys, gamma, beta, axis, dtype, kernel)
        report = _verdict(xs, dys, gamma, beta, axis, dtype, out)
        correct.append((kernel, _errors(out, ref, scale, rows), report))
    worst = {t: max(e[t] for _, e, _ in correct) for t in ("dx", "dgamma", "dbeta")}
    bugs = []
    for bug in BUGS:
        out = _run(xs, dys, gamma, beta, axis, dtype, {"stats": "two_pass", "sums": "rows", "bug": bug})
        err = _errors(out, ref, scale, rows)
        visible = [t for t in err if err[t] > VISIBLE * worst[t]]
        bugs.append((bug, visible, err, _verdict(xs, dys, gamma, beta, axis, dtype, out)))
    return correct, worst, bugs, correct[0][2].notes


def _assert_group(kind, layout, dtype):
    correct, worst, bugs, notes = _group(kind, layout, dtype)
    alarms = [(k, {t: m.tol_ratio for t, m in r.checks.candidate.tensors.items()})
              for k, _, r in correct if not r.passed]
    assert not alarms, f"false alarms on correct kernels: {alarms}"
    missed = [(bug, visible, {t: round(err[t] / max(worst[t], 1e-300), 1) for t in visible},
               {t: round(m.tol_ratio, 3) for t, m in r.checks.candidate.tensors.items()})
              for bug, visible, err, r in bugs if visible and r.passed]
    assert not missed, f"visible bugs passed (bug, tensors, error / worst correct, tol_ratio): {missed}"
    return bugs, notes


KINDS = tuple(k for k in kinds.KINDS if k != "long")  # R = 2^20 has a test of its own


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("kind", KINDS)
def test_no_false_alarm_and_no_visible_bug_missed(kind, layout, dtype):
    bugs, notes = _assert_group(kind, layout, dtype)
    if kind == "normal":  # on plain data the gross bugs are caught in every precision
        caught = {bug for bug, visible, _, r in bugs if not r.passed}
        gross = set(GROSS) - ({"batch_only_R"} if layout == "2d" else set())  # 2-D: N is R
        assert gross <= caught, gross - caught
    if kind == "constant_dy":
        assert any("dy is constant in channels 0-15" in n for n in notes), notes
    if kind == "gamma_zeros":
        assert any("gamma is 0 in channels 0,3,6,9,12,15" in n for n in notes), notes
    if kind == "batch2" and layout == "2d":
        assert any("R = 2 elements per channel" in n for n in notes), notes


GROSS = ("no_mean_term", "no_dgamma_term", "zeroed_channel", "shifted_channel", "stale_rows", "dbeta_sign_flip",
         "channel_shift", "dgamma_no_invstd", "batch_only_R", "swapped_outputs")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["2d", "nchw"])
def test_long_reductions(layout, dtype):
    """R = 2^20: sequential float32 sums are a correct kernel's worst case."""
    _assert_group("long", layout, dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("kind", ["normal", "offset", "near_eps"])
def test_a_kernel_with_16_bit_weights_is_judged_as_one(kind, dtype):
    """A kernel that stores mean, invstd and its sums in 16 bits and computes dx from them is
    far less accurate than a mixed-precision one, and correct. Sent with 16-bit gamma (or 16-bit
    dgamma), it passes, and the note says how it was judged; a zeroed channel still fails."""
    x, dy, gamma, beta, axis = _data(kind, "nchw")
    st = _np_dtype(dtype)
    xs, dys, gs, bs = (a.astype(st) for a in (x, dy, gamma, beta))
    for bug in (None, "zeroed_channel"):
        out = backward(xs, dys, gs, bs, eps=EPS, channel_axis=axis, dtype=dtype, param_dtype=dtype, held=True,
                       bug=bug)
        out = {k: out[k] for k in ("dx", "dgamma", "dbeta")}
        for g, cand in ((gs, out), (gs.astype(np.float64), out)):
            r = check(xs, dys, g, bs, eps=EPS, channel_axis=axis, candidate=cand, finite_difference=NO_FD)
            assert r.passed == (bug is None), {t: m.tol_ratio for t, m in r.checks.candidate.tensors.items()}
            assert any(f"per-channel values held in {dtype}" in n for n in r.notes), r.notes
    only_dx = {"dx": backward(xs, dys, gs, bs, eps=EPS, channel_axis=axis, dtype=dtype, param_dtype=dtype,
                              held=True)["dx"]}
    r = check(xs, dys, gs, bs, eps=EPS, channel_axis=axis, candidate=only_dx, finite_difference=NO_FD)
    assert r.passed, "16-bit gamma alone says the kernel holds its per-channel values in 16 bits"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["saved_statistics", "inference"])
def test_saved_statistics_and_inference_are_calibrated_too(mode, dtype):
    """The ensemble runs from the kernel's own saved statistics, or the running ones."""
    x, dy, gamma, beta, axis = _data("normal", "nchw")
    st = _np_dtype(dtype)
    xs, dys = x.astype(st), dy.astype(st)
    C = x.shape[axis]
    x64, dy64 = xs.astype(np.float64), dys.astype(np.float64)
    for zeroed in (False, True):
        if mode == "saved_statistics":
            out = backward(xs, dys, gamma, beta, eps=EPS, channel_axis=axis, dtype=dtype)
            kw = {"saved_mean": out["mean"], "saved_invstd": out["invstd"]}
            cand = {k: out[k] for k in ("dx", "dgamma", "dbeta")}
        else:  # written here: dx = dy * gamma * invstd_running, sums in float64 then rounded
            rm, rv = np.linspace(-0.5, 0.5, C), np.linspace(2.0, 6.0, C)
            inv = (1 / np.sqrt(rv + EPS)).reshape(1, C, 1, 1)
            kw = {"training": False, "running_mean": rm, "running_var": rv}
            cand = {"dx": (dy64 * gamma.reshape(1, C, 1, 1) * inv).astype(st),
                    "dgamma": (dy64 * (x64 - rm.reshape(1, C, 1, 1)) * inv).sum((0, 2, 3)).astype(np.float32),
                    "dbeta": dy64.sum((0, 2, 3)).astype(np.float32)}
        if zeroed:
            cand["dx"] = cand["dx"].copy()
            cand["dx"][:, 3] = 0
        r = check(xs, dys, gamma, beta, eps=EPS, channel_axis=axis, candidate=cand, finite_difference=NO_FD, **kw)
        block = r.checks.candidate
        assert block.passed != zeroed, {t: m.tol_ratio for t, m in block.tensors.items()}
        if zeroed:
            assert block.tensors["dx"].failed_channels == "3"

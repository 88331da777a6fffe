"""The verdict against kernels nobody on this project wrote: PyTorch's own, correct and broken.

    python -m bench.oracle            (needs torch: pip install torch==2.13.0)
    python -m bench.oracle --quick    (no R = 2^20 data)

Correct candidates: PyTorch CPU autograd through ``torch.nn.functional.batch_norm`` in
float32, bfloat16 and float16 (all-16-bit, and mixed precision: 16-bit x, dy, dx with
float32 gamma, dgamma, dbeta), NCHW, channels_last and 2-D; and a hand-written backward
in torch ops. Broken candidates: twelve kinds of bugs, planted in PyTorch's outputs (a
zeroed, a shifted channel, stale rows, a sign flip, dx * (1 + 1e-3)) or in the
hand-written formulas (unbiased variance, eps outside the sqrt, a missing term, dgamma
from the wrong xhat, one-pass variance, 16-bit accumulation).

A bug is *visible* when its error on some tensor exceeds 4x the worst correct kernel's on
the same data, layout and dtype; errors are measured here in float64 in natural units
(dx per channel in |gamma| * invstd * rms(dy), dgamma and dbeta in sum|dy|). The judges:
bncheck's defaults (the calibrated verdict) and ``torch.testing.assert_close``'s
defaults (candidate against the float64 reference rounded to the candidate's dtype).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from bncheck.numerics import FDOptions, check
from tests.numerics.kinds import KINDS, make_kind

from ._timing import machine, table, torch_or_none

EPS = 1e-5
VISIBLE = 4.0
DTYPES = ("float32", "bfloat16", "float16")
LAYOUTS = ("nchw", "channels_last", "2d")
OUTPUT_BUGS = ("zeroed_channel", "shifted_channel", "stale_rows", "dbeta_sign_flip", "dx_scaled")
FORMULA_BUGS = ("unbiased_var", "eps_outside_sqrt", "no_mean_term", "no_dgamma_term", "dgamma_wrong_xhat",
                "one_pass_var", "accum16")
TENSORS = ("dx", "dgamma", "dbeta")


def _shape(kind: str, layout: str) -> tuple[int, int, int, int]:
    if kind == "long":
        return (16, 2, 256, 256)
    return (2 if kind == "batch2" else 8, 32, 14, 14)


def data(kind: str, layout: str, seed: int = 0) -> tuple[np.ndarray, ...]:
    """NCHW float64 x, dy (N, C, H, W; 2-D layouts use H = W = 1) and gamma, beta."""
    rng = np.random.default_rng([seed, len(kind)])
    n, c, h, w = _shape(kind, layout)
    if layout == "2d":
        n, h, w = n * h * w if kind != "batch2" else 2, 1, 1
    return make_kind(kind, (n, c, h, w), 1, rng)


@dataclass
class Candidate:
    name: str
    correct: bool
    out: dict[str, np.ndarray]  # NCHW (or (N, C)) dx, (C,) dgamma, dbeta, each in its kernel dtype


def _np(t: Any) -> np.ndarray:
    import torch

    if t.dtype == torch.bfloat16:
        return t.detach().float().numpy().astype(ml_dtypes.bfloat16)
    return t.detach().numpy().copy()


class Torch:
    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def tensor(self, a: np.ndarray, dtype: str, layout: str) -> Any:
        t = self.torch.from_numpy(np.ascontiguousarray(a)).to(getattr(self.torch, dtype))
        if layout == "2d":
            t = t.reshape(t.shape[0], t.shape[1])
        elif layout == "channels_last":
            t = t.contiguous(memory_format=self.torch.channels_last)
        return t

    def autograd(self, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dtype: str,
                 layout: str, param: str) -> dict[str, np.ndarray]:
        F = self.torch.nn.functional
        xt = self.tensor(x, dtype, layout).requires_grad_(True)
        g = self.torch.tensor(gamma, dtype=getattr(self.torch, param), requires_grad=True)
        b = self.torch.tensor(beta, dtype=getattr(self.torch, param), requires_grad=True)
        y = F.batch_norm(xt, None, None, g, b, training=True, eps=EPS)
        y.backward(self.tensor(dy, dtype, layout))
        return {"dx": _np(xt.grad.contiguous()), "dgamma": _np(g.grad), "dbeta": _np(b.grad)}

    def manual(self, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, dtype: str, layout: str, param: str,
               bug: str | None = None) -> dict[str, np.ndarray]:
        """A backward written in torch ops, float32 math for 16-bit data, as a kernel author would."""
        torch = self.torch
        math_dt = torch.float32
        xt = self.tensor(x, dtype, layout).to(math_dt)
        dyt = self.tensor(dy, dtype, layout).to(math_dt)
        dims = [0] if xt.dim() == 2 else [0, 2, 3]
        R = xt.numel() // xt.shape[1]
        view = (1, -1) if xt.dim() == 2 else (1, -1, 1, 1)
        mean = xt.mean(dims)
        xmu = xt - mean.reshape(view)
        if bug == "one_pass_var":
            var = (xt * xt).mean(dims) - mean * mean
        else:
            var = (xmu * xmu).sum(dims) / (R - 1 if bug == "unbiased_var" else R)
        invstd = 1 / (var.clamp_min(0).sqrt() + EPS) if bug == "eps_outside_sqrt" else torch.rsqrt(var + EPS)
        g = torch.from_numpy(gamma).to(math_dt)
        if bug == "accum16":
            low = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
            dbeta = torch.from_numpy(_seq16(dyt, dims, low))
            dot = torch.from_numpy(_seq16(dyt * xmu, dims, low))
        else:
            dbeta, dot = dyt.sum(dims), (dyt * xmu).sum(dims)
        dgamma = (dyt * xmu / var.sqrt().reshape(view)).sum(dims) if bug == "dgamma_wrong_xhat" else dot * invstd
        mean_dy = 0 if bug == "no_mean_term" else (dbeta / R).reshape(view)
        k = 0 if bug == "no_dgamma_term" else (dot * invstd * invstd / R).reshape(view)
        dx = (dyt - mean_dy - xmu * k) * (invstd * g).reshape(view)
        pt = getattr(torch, param)
        return {"dx": _np(dx.to(getattr(torch, dtype)).contiguous()), "dgamma": _np(dgamma.to(pt)),
                "dbeta": _np(dbeta.to(pt))}


def _seq16(t: Any, dims: list[int], low: Any) -> np.ndarray:
    """Sums over ``dims`` added one after another in a 16-bit accumulator."""
    a = np.moveaxis(t.detach().numpy(), 1, -1).reshape(-1, t.shape[1]).astype(low)
    return np.add.accumulate(a, axis=0)[-1].astype(np.float32)


def plant(out: dict[str, np.ndarray], bug: str) -> dict[str, np.ndarray]:
    out = {k: v.copy() for k, v in out.items()}
    dx = out["dx"]
    c = dx.shape[1] // 2
    if bug == "zeroed_channel":
        dx[:, c] = 0
    elif bug == "shifted_channel":
        dx[:, c] = np.roll(dx[:, c], 1)
    elif bug == "stale_rows":
        dx[-1:] = 0  # the last image (or row) never written
    elif bug == "dbeta_sign_flip":
        out["dbeta"][c] = -out["dbeta"][c]
    elif bug == "dx_scaled":
        out["dx"] = (dx.astype(np.float32) * np.float32(1 + 1e-3)).astype(dx.dtype)
    return out


def candidates(tq: Torch, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dtype: str,
               layout: str) -> list[Candidate]:
    params = ["float32"] if dtype == "float32" else [dtype, "float32"]
    out = [Candidate(f"torch autograd, params {p}", True, tq.autograd(x, dy, gamma, beta, dtype, layout, p))
           for p in params]
    out.append(Candidate("torch ops by hand", True, tq.manual(x, dy, gamma, dtype, layout, "float32")))
    base = out[-2 if dtype != "float32" else 0].out  # mixed precision autograd where there is one
    out += [Candidate(bug, False, plant(base, bug)) for bug in OUTPUT_BUGS]
    out += [Candidate(bug, False, tq.manual(x, dy, gamma, dtype, layout, "float32", bug)) for bug in FORMULA_BUGS]
    return out


def errors(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, out: dict[str, np.ndarray]) -> dict[str, float]:
    """Errors in natural units against a float64 reference written here."""
    C = x.shape[1]
    xr = np.moveaxis(x, 1, -1).reshape(-1, C).astype(np.float64)
    dyr = np.moveaxis(dy, 1, -1).reshape(-1, C).astype(np.float64)
    R = xr.shape[0]
    mean = xr.mean(0)
    invstd = 1 / np.sqrt(((xr - mean) ** 2).mean(0) + EPS)
    xhat = (xr - mean) * invstd
    dbeta, dgamma = dyr.sum(0), (dyr * xhat).sum(0)
    ref = {"dx": gamma * invstd * (dyr - dbeta / R - xhat * dgamma / R), "dgamma": dgamma, "dbeta": dbeta}
    scale = {"dx": np.abs(gamma) * invstd * np.sqrt((dyr ** 2).mean(0)), "dgamma": np.abs(dyr).sum(0),
             "dbeta": np.abs(dyr).sum(0)}
    got = {"dx": np.moveaxis(out["dx"].astype(np.float64).reshape(x.shape), 1, -1).reshape(-1, C),
           "dgamma": out["dgamma"].astype(np.float64), "dbeta": out["dbeta"].astype(np.float64)}
    res = {}
    for t in TENSORS:
        e = np.abs(got[t] - ref[t])
        with np.errstate(divide="ignore", invalid="ignore"):
            res[t] = float(np.max(np.where(e == 0, 0.0, e / scale[t])))
    return res


def bncheck_judge(x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dtype: str,
                  out: dict[str, np.ndarray]) -> bool:
    st = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    xs, dys = x.astype(st), dy.astype(st)
    if out["dx"].ndim == 2:
        xs, dys = xs.reshape(out["dx"].shape), dys.reshape(out["dx"].shape)
    report = check(xs, dys, gamma, beta, eps=EPS, candidate=out, finite_difference=FDOptions(method="none"))
    return report.passed


def torch_judge(torch: Any, x: np.ndarray, dy: np.ndarray, gamma: np.ndarray, out: dict[str, np.ndarray]) -> bool:
    C = x.shape[1]
    dims = (0, 2, 3)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    mean = x64.mean(dims, keepdims=True)
    invstd = 1 / np.sqrt(((x64 - mean) ** 2).mean(dims, keepdims=True) + EPS)
    xhat = (x64 - mean) * invstd
    R = x64.size // C
    dbeta, dgamma = dy64.sum(dims), (dy64 * xhat).sum(dims)
    g = gamma.reshape(1, C, 1, 1)
    ref = {"dx": g * invstd * (dy64 - dbeta.reshape(1, C, 1, 1) / R - xhat * dgamma.reshape(1, C, 1, 1) / R),
           "dgamma": dgamma, "dbeta": dbeta}
    for t in TENSORS:
        cand = out[t]
        ct = torch.from_numpy(cand.astype(np.float32)).to(torch.bfloat16) if cand.dtype == ml_dtypes.bfloat16 \
            else torch.from_numpy(np.ascontiguousarray(cand))
        rt = torch.from_numpy(ref[t].reshape(cand.shape)).to(ct.dtype)
        try:
            torch.testing.assert_close(ct, rt)
        except AssertionError:
            return False
    return True


@dataclass
class Tally:
    correct: int = 0
    alarms: dict[str, int] = field(default_factory=dict)
    visible: int = 0
    missed: dict[str, int] = field(default_factory=dict)
    bugs: int = 0
    details: list[str] = field(default_factory=list)


def run(kinds: tuple[str, ...], say: Callable[[str], None]) -> Tally:
    torch = torch_or_none()
    if torch is None:
        sys.exit("bench.oracle needs PyTorch: pip install torch==2.13.0")
    tq = Torch(torch)
    tally = Tally(alarms={"bncheck": 0, "assert_close": 0}, missed={"bncheck": 0, "assert_close": 0})
    for kind in kinds:
        for layout in LAYOUTS:
            if kind == "long" and layout == "channels_last":
                continue
            x, dy, gamma, beta = data(kind, layout)
            for dtype in DTYPES:
                st = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
                # Inputs arrive rounded: every kernel, and the judges, see the same values
                # (gamma and beta too, since the all-16-bit kernels hold them in 16 bits).
                xs, dys, gs, bs = (a.astype(st).astype(np.float64) for a in (x, dy, gamma, beta))
                cands = candidates(tq, xs, dys, gs, bs, dtype, layout)
                errs = [errors(xs, dys, gs, c.out) for c in cands]
                worst = {t: max(e[t] for c, e in zip(cands, errs, strict=True) if c.correct) for t in TENSORS}
                for c, e in zip(cands, errs, strict=True):
                    verdicts = {"bncheck": bncheck_judge(xs, dys, gs, bs, dtype, c.out),
                                "assert_close": torch_judge(torch, xs, dys, gs, c.out)}
                    where = f"{kind}/{layout}/{dtype}: {c.name}"
                    if c.correct:
                        tally.correct += 1
                        for judge, ok in verdicts.items():
                            if not ok:
                                tally.alarms[judge] += 1
                                tally.details.append(f"false alarm ({judge}): {where}")
                        continue
                    tally.bugs += 1
                    visible = [t for t in TENSORS if e[t] > VISIBLE * worst[t]]
                    if not visible:
                        continue
                    tally.visible += 1
                    for judge, ok in verdicts.items():
                        if ok:
                            tally.missed[judge] += 1
                            ratio = max(e[t] / max(worst[t], 1e-300) for t in visible)
                            tally.details.append(f"missed ({judge}): {where} ({','.join(visible)}, "
                                                 f"{ratio:.1f}x the worst correct kernel)")
                say(f"{kind:12s} {layout:13s} {dtype:9s} done")
    return tally


def main() -> None:
    quick = "--quick" in sys.argv
    kinds = tuple(k for k in KINDS if not (quick and k == "long"))
    start = time.perf_counter()
    tally = run(kinds, lambda s: print(s, file=sys.stderr))
    print(f"# bncheck verdict vs PyTorch kernels ({machine()}, {time.perf_counter() - start:.0f} s)\n")
    print(f"{tally.correct} correct kernel runs, {tally.bugs} broken ones, {tally.visible} of them visible "
          f"(error > {VISIBLE:g}x the worst correct kernel's on the same data)\n")
    rows = [[judge, f"{tally.alarms[judge]} / {tally.correct}",
             f"{tally.missed[judge]} / {tally.visible} ({100 * tally.missed[judge] / max(tally.visible, 1):.1f}%)"]
            for judge in ("bncheck", "assert_close")]
    print(table(["judge", "false alarms on correct kernels", "visible bugs missed"], rows))
    bn = [d for d in tally.details if "(bncheck)" in d]
    if bn:
        print("\nbncheck's misses and alarms:")
        print("\n".join(f"- {d}" for d in bn))


if __name__ == "__main__":
    main()

"""The four backward formulas of the seed gist, in any precision and layout.

Each function follows its seed function's order of operations, so each rounds
the way that formula rounds. The seed reduces over axis 0 of an (N, D) array;
here ``ar.csum`` reduces over every axis but the channel axis of the (P, C, S)
view and keeps the (1, C, 1) shape, so the expressions broadcast exactly as the
seed's do. ``N`` is the reduction length R.

Seed: "Batchnorm backward", https://gist.github.com/rocking5566/57baa55f38c2c07346bdc7660fcfd19a

Adding a variant is one function here plus one entry in ``VARIANTS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backend import same
from .precision import Arith

__all__ = ["VARIANTS", "Cache", "Grads", "Variant", "forward_cache", "inference_backward"]


@dataclass(frozen=True)
class Cache:
    """The seed's cache (xhat, gamma, xmu, ivar, sqrtvar, var, eps), plus the mean, in accum."""

    xhat: Any
    gamma: Any
    xmu: Any
    ivar: Any
    sqrtvar: Any
    var: Any
    eps: float
    mean: Any


@dataclass(frozen=True)
class Grads:
    dx: Any
    dgamma: Any
    dbeta: Any


# Element-wise pieces. On the GPU each becomes one fused kernel (cupy.fuse) that performs the
# same operations in the same order; on the CPU they are plain NumPy expressions. Constants
# arrive already rounded to the accumulation dtype (ar.const), as NumPy's weak Python scalars are.


def _mul(a: Any, b: Any) -> Any:
    return a * b


def _sub(a: Any, b: Any) -> Any:
    return a - b


def _add(a: Any, b: Any) -> Any:
    return a + b


def _square(a: Any) -> Any:
    return a * a  # NumPy's x**2 is x*x; CUDA's pow would round differently


def forward_cache(
    x: Any, gamma: Any, ar: Arith, *, eps: float, mean: Any = None, invstd: Any = None, var: Any = None
) -> Cache:
    """The seed's ``batchnorm_forward`` steps 1-7 in ``ar``'s precision.

    With no statistics given, the batch statistics are computed (training mode).
    ``mean`` and ``invstd`` are a kernel's saved statistics; ``mean`` and ``var``
    are running statistics (inference mode). All arrive as (1, C, 1) in accum.
    """
    inv_n, e = ar.const(1.0 / ar.R), ar.const(eps)
    if mean is None:
        mean = inv_n * ar.csum(x)
    xmu = ar.ew(_sub)(x, mean)
    if invstd is not None:
        ivar = invstd
        sqrtvar = ar.const(1.0) / ivar
        var = sqrtvar * sqrtvar - e
    else:
        if var is None:
            var = inv_n * ar.csum_of(_square, xmu)
        sqrtvar = ar.xp.sqrt(var + e)
        ivar = ar.const(1.0) / sqrtvar
    xhat = ar.ew(_mul)(xmu, ivar)
    return Cache(xhat, gamma, xmu, ivar, sqrtvar, var, eps, mean)


def _staged_divar_terms(dy: Any, gamma: Any, xmu: Any) -> Any:
    return dy * gamma * xmu  # dxhat * xmu with dxhat = dgammax * gamma, dgammax = dy


def _staged_dsq(inv_n: Any, half: Any, minus_one: Any, sqrtvar: Any, divar: Any) -> Any:
    dsqrtvar = minus_one / (sqrtvar * sqrtvar) * divar
    dvar = half / sqrtvar * dsqrtvar
    return inv_n * dvar  # dsq, per channel


def _staged_dx1(dy: Any, gamma: Any, ivar: Any, two: Any, xmu: Any, inv_n: Any, half: Any, minus_one: Any,
                sqrtvar: Any, divar: Any) -> Any:
    dsq = _staged_dsq(inv_n, half, minus_one, sqrtvar, divar)
    return dy * gamma * ivar + two * xmu * dsq  # dxmu1 + dxmu2


def _staged_dx(dy: Any, gamma: Any, ivar: Any, two: Any, xmu: Any, inv_n: Any, half: Any, minus_one: Any,
               sqrtvar: Any, divar: Any, dmu_sum: Any) -> Any:
    dx1 = _staged_dx1(dy, gamma, ivar, two, xmu, inv_n, half, minus_one, sqrtvar, divar)
    dx2 = inv_n * (minus_one * dmu_sum)
    return dx1 + dx2


def staged(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``batchnorm_backward``: nine steps back through the graph.

    The per-channel steps (dsqrtvar, dvar, dsq, dx2) run inside the element-wise kernels:
    recomputed per element from the same operands, they give the same values, and the GPU
    launches three kernels instead of ten.

    The seed multiplies by np.ones((N, D)), which is float64 whatever dy is, so its float32
    run does dsq and dx2 in float64. Here they stay in accum; 1/N * 1 rounds to 1/N, so a
    per-channel value gives the values of the full array.
    """
    dbeta, dgamma, divar = ar.csums((same, (dy,)), (_mul, (dy, c.xhat)), (_staged_divar_terms, (dy, c.gamma, c.xmu)))
    terms = (dy, c.gamma, c.ivar, ar.const(2.0), c.xmu, ar.const(1.0 / ar.R), ar.const(0.5), ar.const(-1.0),
             c.sqrtvar, divar)
    dmu_sum = ar.csum_of(_staged_dx1, *terms)  # the seed's sum(dxmu1 + dxmu2); dmu = -1 * it
    return Grads(ar.ew(_staged_dx)(*terms, dmu_sum), dgamma, dbeta)


def _kevin_s2(dy: Any, gamma: Any, xhat: Any) -> Any:
    return dy * gamma * xhat  # dxhat * x_hat


def _kevin_dx(inv_n: Any, ivar: Any, n: Any, dy: Any, gamma: Any, s1: Any, xhat: Any, s2: Any) -> Any:
    return inv_n * ivar * (n * (dy * gamma) - s1 - xhat * s2)


def kevin(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``kevin_batchnorm_backward``. dxhat = dy * gamma is recomputed where it is
    used rather than stored: the same operation gives the same values."""
    s1, s2, dgamma, dbeta = ar.csums((_mul, (dy, c.gamma)), (_kevin_s2, (dy, c.gamma, c.xhat)),
                                     (_mul, (c.xhat, dy)), (same, (dy,)))
    dx = ar.ew(_kevin_dx)(ar.const(1.0 / ar.R), c.ivar, ar.const(ar.R), dy, c.gamma, s1, c.xhat, s2)
    return Grads(dx, dgamma, dbeta)


def _rocking_inner(inv_n: Any, xhat: Any, s: Any, dy: Any) -> Any:
    return inv_n * xhat * s - dy


def _rocking_dx(inv_n: Any, ivar: Any, gamma: Any, n: Any, dy: Any, xhat: Any, s: Any, t: Any) -> Any:
    return (inv_n * ivar * gamma) * (n * dy - xhat * s + t)


def rocking(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``rocking_batchnorm_backward``, without the Python list around the
    bracket that gives the seed's dx an extra leading axis of length 1."""
    inv_n = ar.const(1.0 / ar.R)
    s, dbeta = ar.csums((_mul, (c.xhat, dy)), (same, (dy,)))
    t = ar.csum_of(_rocking_inner, inv_n, c.xhat, s, dy)
    dx = ar.ew(_rocking_dx)(inv_n, c.ivar, c.gamma, ar.const(ar.R), dy, c.xhat, s, t)
    return Grads(dx, s, dbeta)  # the seed's dgamma is sum(x_hat * dy): s again


def _qianfeng_dx(inv_n: Any, ivar: Any, gamma: Any, n: Any, dy: Any, dbeta: Any, xhat: Any, dgamma: Any) -> Any:
    return inv_n * ivar * gamma * (n * dy - dbeta - xhat * dgamma)


def qianfeng(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``qianfeng_batchnorm_backward``."""
    dbeta, dgamma = ar.csums((same, (dy,)), (_mul, (c.xhat, dy)))
    dx = ar.ew(_qianfeng_dx)(ar.const(1.0 / ar.R), c.ivar, c.gamma, ar.const(ar.R), dy, dbeta, c.xhat, dgamma)
    return Grads(dx, dgamma, dbeta)


def _inference_dx(dy: Any, gamma: Any, ivar: Any) -> Any:
    return dy * gamma * ivar


def inference_backward(dy: Any, c: Cache, ar: Arith) -> Grads:
    """Inference mode: the statistics are constants, so dx = dy * gamma * invstd."""
    dgamma, dbeta = ar.csums((_mul, (dy, c.xhat)), (same, (dy,)))
    return Grads(ar.ew(_inference_dx)(dy, c.gamma, c.ivar), dgamma, dbeta)


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    formula: str
    reference: str
    seed_function: str
    fn: Callable[[Any, Cache, Arith], Grads]


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "staged",
            "Nine chained steps back through the computational graph.",
            "dbeta=sum(dy); dgamma=sum(dy*xhat); dxhat=dy*gamma; divar=sum(dxhat*xmu); "
            "dxmu1=dxhat*ivar; dsqrtvar=-divar/sqrtvar^2; dvar=0.5*dsqrtvar/sqrtvar; "
            "dxmu2=2*xmu*dvar/R; dx=dxmu1+dxmu2-sum(dxmu1+dxmu2)/R",
            "https://kratzert.github.io/2016/02/12/understanding-the-gradient-flow-through-the-batch-normalization-layer.html",
            "batchnorm_backward",
            staged,
        ),
        Variant(
            "kevin",
            "Closed form in dxhat = dy*gamma.",
            "dx = invstd/R * (R*dxhat - sum(dxhat) - xhat*sum(dxhat*xhat))",
            "https://kevinzakka.github.io/2016/09/14/batch_normalization/",
            "kevin_batchnorm_backward",
            kevin,
        ),
        Variant(
            "rocking",
            "Closed form with the mean term as a second sum.",
            "dx = invstd*gamma/R * (R*dy - xhat*sum(xhat*dy) + sum(xhat*sum(xhat*dy)/R - dy))",
            "https://gist.github.com/rocking5566/57baa55f38c2c07346bdc7660fcfd19a",
            "rocking_batchnorm_backward",
            rocking,
        ),
        Variant(
            "qianfeng",
            "Closed form reusing dbeta and dgamma: the fewest passes.",
            "dx = invstd*gamma/R * (R*dy - dbeta - xhat*dgamma)",
            "https://gist.github.com/rocking5566/57baa55f38c2c07346bdc7660fcfd19a",
            "qianfeng_batchnorm_backward",
            qianfeng,
        ),
    )
}

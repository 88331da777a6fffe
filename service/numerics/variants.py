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


def forward_cache(
    x: Any, gamma: Any, ar: Arith, *, eps: float, mean: Any = None, invstd: Any = None, var: Any = None
) -> Cache:
    """The seed's ``batchnorm_forward`` steps 1-7 in ``ar``'s precision.

    With no statistics given, the batch statistics are computed (training mode).
    ``mean`` and ``invstd`` are a kernel's saved statistics; ``mean`` and ``var``
    are running statistics (inference mode). All arrive as (1, C, 1) in accum.
    """
    N = ar.R
    if mean is None:
        mean = 1.0 / N * ar.csum(x)
    xmu = x - mean
    if invstd is not None:
        ivar = invstd
        sqrtvar = 1.0 / ivar
        var = sqrtvar**2 - eps
    else:
        if var is None:
            sq = xmu**2
            var = 1.0 / N * ar.csum(sq)
        sqrtvar = ar.xp.sqrt(var + eps)
        ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    return Cache(xhat, gamma, xmu, ivar, sqrtvar, var, eps, mean)


def staged(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``batchnorm_backward``: nine steps back through the graph."""
    N = ar.R
    dbeta = ar.csum(dy)
    dgammax = dy
    dgamma = ar.csum(dgammax * c.xhat)
    dxhat = dgammax * c.gamma
    divar = ar.csum(dxhat * c.xmu)
    dxmu1 = dxhat * c.ivar
    dsqrtvar = -1.0 / (c.sqrtvar**2) * divar
    dvar = 0.5 * 1.0 / c.sqrtvar * dsqrtvar
    # The seed multiplies by np.ones((N, D)), which is float64 whatever dy is, so its float32
    # run does these steps in float64. Here they stay in accum; 1/N * 1 rounds to 1/N, so a
    # (1, C, 1) row gives the values of the full array.
    dsq = 1.0 / N * dvar
    dxmu2 = 2 * c.xmu * dsq
    dx1 = dxmu1 + dxmu2
    dmu = -1 * ar.csum(dxmu1 + dxmu2)
    dx2 = 1.0 / N * dmu
    dx = dx1 + dx2
    return Grads(dx, dgamma, dbeta)


def kevin(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``kevin_batchnorm_backward``."""
    N = ar.R
    dxhat = dy * c.gamma
    dx = (1.0 / N) * c.ivar * (N * dxhat - ar.csum(dxhat) - c.xhat * ar.csum(dxhat * c.xhat))
    dbeta = ar.csum(dy)
    dgamma = ar.csum(c.xhat * dy)
    return Grads(dx, dgamma, dbeta)


def rocking(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``rocking_batchnorm_backward``, without the Python list around the
    bracket that gives the seed's dx an extra leading axis of length 1."""
    N = ar.R
    s = ar.csum(c.xhat * dy)
    dx = (1.0 / N * c.ivar * c.gamma) * (N * dy - c.xhat * s + ar.csum(1 / N * c.xhat * s - dy))
    dbeta = ar.csum(dy)
    dgamma = ar.csum(c.xhat * dy)
    return Grads(dx, dgamma, dbeta)


def qianfeng(dy: Any, c: Cache, ar: Arith) -> Grads:
    """The seed's ``qianfeng_batchnorm_backward``."""
    N = ar.R
    dbeta = ar.csum(dy)
    dgamma = ar.csum(c.xhat * dy)
    dx = (1.0 / N) * c.ivar * c.gamma * (N * dy - dbeta - c.xhat * dgamma)
    return Grads(dx, dgamma, dbeta)


def inference_backward(dy: Any, c: Cache, ar: Arith) -> Grads:
    """Inference mode: the statistics are constants, so dx = dy * gamma * invstd."""
    return Grads(dy * c.gamma * c.ivar, ar.csum(dy * c.xhat), ar.csum(dy))


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

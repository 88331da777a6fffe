"""The seed gist's four functions, verbatim apart from indentation (restored) and
the list around rocking's bracket (kept: the test checks its extra axis).
Source: ../shared/seed/000_e5c1184712349e8a.txt (rocking5566's "Batchnorm backward").
An independent oracle: bncheck's variants never import this file.
"""

import numpy as np


def batchnorm_forward(x, gamma, beta, eps):
    N, D = x.shape
    mu = 1. / N * np.sum(x, axis=0)
    xmu = x - mu
    sq = xmu ** 2
    var = 1. / N * np.sum(sq, axis=0)
    sqrtvar = np.sqrt(var + eps)
    ivar = 1. / sqrtvar
    xhat = xmu * ivar
    gammax = gamma * xhat
    out = gammax + beta
    cache = (xhat, gamma, xmu, ivar, sqrtvar, var, eps)
    return out, cache


def batchnorm_backward(dy, cache):
    xhat, gamma, xmu, ivar, sqrtvar, var, eps = cache
    N, D = dy.shape
    dbeta = np.sum(dy, axis=0)
    dgammax = dy
    dgamma = np.sum(dgammax * xhat, axis=0)
    dxhat = dgammax * gamma
    divar = np.sum(dxhat * xmu, axis=0)
    dxmu1 = dxhat * ivar
    dsqrtvar = -1. / (sqrtvar ** 2) * divar
    dvar = 0.5 * 1. / sqrtvar * dsqrtvar
    dsq = 1. / N * np.ones((N, D)) * dvar
    dxmu2 = 2 * xmu * dsq
    dx1 = (dxmu1 + dxmu2)
    dmu = -1 * np.sum(dxmu1 + dxmu2, axis=0)
    dx2 = 1. / N * np.ones((N, D)) * dmu
    dx = dx1 + dx2
    return dx, dgamma, dbeta


def kevin_batchnorm_backward(dy, cache):
    N, D = dy.shape
    x_hat, gamma, xmu, inv_var, sqrtvar, var, eps = cache
    dxhat = dy * gamma
    dx = (1. / N) * inv_var * (N * dxhat - np.sum(dxhat, axis=0)
                               - x_hat * np.sum(dxhat * x_hat, axis=0))
    dbeta = np.sum(dy, axis=0)
    dgamma = np.sum(x_hat * dy, axis=0)
    return dx, dgamma, dbeta


def rocking_batchnorm_backward(dy, cache):
    N, D = dy.shape
    x_hat, gamma, xmu, inv_var, sqrtvar, var, eps = cache
    dx = (1. / N * inv_var * gamma) * [N * dy - x_hat * np.sum(
        x_hat * dy, axis=0) + np.sum(1 / N * x_hat * np.sum(x_hat * dy, axis=0) - dy, axis=0)]
    dbeta = np.sum(dy, axis=0)
    dgamma = np.sum(x_hat * dy, axis=0)
    return dx, dgamma, dbeta


def qianfeng_batchnorm_backward(dy, cache):
    N, D = dy.shape
    x_hat, gamma, xmu, inv_var, sqrtvar, var, eps = cache
    dbeta = np.sum(dy, axis=0)
    dgamma = np.sum(x_hat * dy, axis=0)
    dx = (1. / N) * inv_var * gamma * (N * dy - dbeta - x_hat * dgamma)
    return dx, dgamma, dbeta


SEED = {
    "staged": batchnorm_backward,
    "kevin": kevin_batchnorm_backward,
    "rocking": rocking_batchnorm_backward,
    "qianfeng": qianfeng_batchnorm_backward,
}

"""Hand-computed cases in exact rational arithmetic.

With eps = 1/4 and two rows, var + eps = (d^2 + 1)/4 for a channel whose two
values differ by d, a perfect square whenever (d, 1, e) is a Pythagorean
triple scaled: d = 3/4, 4/3, 5/12, 12/5 give e = 5/4, 5/3, 13/12, 13/5 and
invstd = 2/e exactly. For N = 2 the backward collapses by hand to

    xhat = -+ (d/2) * invstd,   dx_1 = -dx_2 = gamma * (dy_1 - dy_2) * eps * invstd^3 / 2

(1 - xhat^2 = eps * invstd^2), so dx vanishes as eps -> 0: with two rows a
normalised output cannot move.
"""

from fractions import Fraction as F

import numpy as np
import pytest

from bncheck.numerics import VARIANTS, FDOptions, check
from bncheck.numerics import reference as ref
from bncheck.numerics.layout import Layout

EPS = F(1, 4)
D = [F(3, 4), F(4, 3), F(5, 12), F(12, 5)]
E = [F(5, 4), F(5, 3), F(13, 12), F(13, 5)]
A = [F(1), F(-2), F(1, 2), F(3)]
X = [[A[c] for c in range(4)], [A[c] + D[c] for c in range(4)]]
DY = [[F(1, 2), F(-1, 4), F(3, 8), F(1)], [F(-1, 4), F(5, 4), F(-1, 8), F(2)]]
GAMMA = [F(2), F(-1), F(1, 2), F(3)]
BETA = [F(1, 4), F(0), F(-1), F(1, 2)]


def _by_hand():
    invstd = [2 / e for e in E]
    xhat = [[-D[c] / 2 * invstd[c] for c in range(4)], [D[c] / 2 * invstd[c] for c in range(4)]]
    y = [[GAMMA[c] * xhat[n][c] + BETA[c] for c in range(4)] for n in range(2)]
    dbeta = [DY[0][c] + DY[1][c] for c in range(4)]
    dgamma = [DY[0][c] * xhat[0][c] + DY[1][c] * xhat[1][c] for c in range(4)]
    dx1 = [GAMMA[c] * (DY[0][c] - DY[1][c]) * EPS * invstd[c] ** 3 / 2 for c in range(4)]
    dx = [dx1, [-v for v in dx1]]
    mean = [(X[0][c] + X[1][c]) / 2 for c in range(4)]
    return {"invstd": invstd, "mean": mean, "y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def _np(v):
    return np.array(v, dtype=np.float64)


HAND = {k: _np(v) for k, v in _by_hand().items()}
ARGS = (_np(X), _np(DY), _np(GAMMA), _np(BETA))


def test_the_closed_form_agrees_with_the_textbook_formula_in_exact_arithmetic():
    h = _by_hand()
    for c in range(4):
        xhat = [(X[n][c] - h["mean"][c]) * h["invstd"][c] for n in range(2)]
        for n in range(2):
            textbook = GAMMA[c] * h["invstd"][c] / 2 * (2 * DY[n][c] - h["dbeta"][c] - xhat[n] * h["dgamma"][c])
            assert textbook == h["dx"][n][c]


def test_reference_statistics_and_forward():
    lay = Layout.of((2, 4), 1)
    x3 = lay.view(ARGS[0])
    st = ref.batch_stats(x3, lay, float(EPS), np)
    np.testing.assert_allclose(st.invstd, HAND["invstd"], rtol=1e-15)
    np.testing.assert_allclose(st.mean, HAND["mean"], rtol=1e-15)
    y = lay.restore(ref.forward_y(x3, ARGS[2], ARGS[3], st, lay, np))
    np.testing.assert_allclose(y, HAND["y"], rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("variant", [*VARIANTS, "all"])
def test_gradients_by_hand(variant):
    r = check(*ARGS, variant=variant, dtype="float64", eps=float(EPS), finite_difference=FDOptions("brute"))
    assert r.passed
    for name in ("dx", "dgamma", "dbeta"):
        np.testing.assert_allclose(r.reference[name], HAND[name], rtol=1e-14, atol=1e-16)
        if r.gradients is not None:
            np.testing.assert_allclose(r.gradients[name], HAND[name], rtol=1e-13, atol=1e-15)


def test_candidate_equal_to_the_hand_values_passes_exactly():
    cand = {k: HAND[k] for k in ("dx", "dgamma", "dbeta", "y", "mean", "invstd")}
    r = check(*ARGS, dtype="float64", eps=float(EPS), candidate=cand)
    assert r.checks.candidate.passed
    assert all(m.max_ulp <= 4 for m in r.checks.candidate.tensors.values())


def test_four_rows_exact():
    """x = (0, 0, 0, 4): mean 1, var 3; eps = 1 makes invstd exactly 1/2."""
    x = np.array([[0.0], [0.0], [0.0], [4.0]])
    dy = np.array([[1.0], [2.0], [3.0], [4.0]])
    xhat = [F(-1, 2)] * 3 + [F(3, 2)]
    dys = [F(1), F(2), F(3), F(4)]
    dbeta, dgamma = sum(dys), sum(a * b for a, b in zip(dys, xhat, strict=True))
    dx = [F(1, 2) / 4 * (4 * d - dbeta - xh * dgamma) for d, xh in zip(dys, xhat, strict=True)]
    assert dgamma == 3
    assert dbeta == 10
    r = check(x, dy, eps=1.0, dtype="float64", variant="all")
    assert r.passed
    np.testing.assert_allclose(r.reference["dx"][:, 0], _np(dx), rtol=1e-15)
    for block in r.checks.variants.variants.values():
        assert block.tensors["dx"].max_abs_err <= 4e-16

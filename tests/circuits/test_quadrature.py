"""Quadrature rules: exactness degrees, closed-form errors, convergence orders, bad input."""

import math

import numpy as np
import pytest

from circuits.quadrature import CONVERGENCE_ORDER, RULES, QuadratureRule, quadrature_rule

INTERVAL = (-0.5, 1.5)


def exact_monomial(degree, a, b):
    return (b ** (degree + 1) - a ** (degree + 1)) / (degree + 1)


@pytest.mark.parametrize(("name", "num_points", "degree"), [
    ("trapezoidal", 6, 1), ("midpoint", 5, 1), ("simpson", 7, 3),
    ("gauss_legendre", 1, 1), ("gauss_legendre", 4, 7), ("gauss_legendre", 9, 17),
])
def test_rules_are_exact_up_to_their_degree(name, num_points, degree):
    rule = quadrature_rule(name, num_points, INTERVAL)
    for d in range(degree + 1):
        assert rule.integrate(rule.points**d) == pytest.approx(exact_monomial(d, *INTERVAL),
                                                               rel=1e-12, abs=1e-12)
    # ... and not beyond it: the next monomial has a non-zero error.
    error = rule.integrate(rule.points ** (degree + 1)) - exact_monomial(degree + 1, *INTERVAL)
    assert abs(error) > 1e-8


@pytest.mark.parametrize("name", ["trapezoidal", "midpoint", "simpson"])
def test_leading_error_terms_match_the_textbook_formulas(name):
    """On the first monomial a rule misses, its error formula holds with equality.

    The error of the composite rules is ``c (b-a) h^p f^(p)(xi)``; for ``f = x^p`` the
    p-th derivative is the constant ``p!``, so the error is exact:
    trapezoid ``-(b-a) h^2 / 12 * 2``, midpoint ``+(b-a) h^2 / 24 * 2``, Simpson
    ``-(b-a) h^4 / 180 * 24``.
    """
    a, b = INTERVAL
    num_points = 9
    rule = quadrature_rule(name, num_points, INTERVAL)
    h = rule.spacing
    p, constant = {"trapezoidal": (2, 1 / 12), "midpoint": (2, -1 / 24),
                   "simpson": (4, 1 / 180)}[name]
    error = exact_monomial(p, a, b) - rule.integrate(rule.points**p)
    # sign convention: integral - rule = -c (b-a) h^p f^(p)
    assert error == pytest.approx(-constant * (b - a) * h**p * math.factorial(p), rel=1e-10)


@pytest.mark.parametrize("name", RULES)
def test_error_on_a_smooth_integrand_falls_at_the_promised_rate(name):
    """``int exp(x) cos(2x)`` on ``INTERVAL`` (closed form), halving ``h`` repeatedly.

    The next Euler–Maclaurin term is ``O(h^(p+2))``, i.e. a relative correction of
    ``O(h^2)``; with ``h <= 1/4`` the observed ratio is within 3% of ``2^p``, so a 10%
    margin is safe. Gauss–Legendre must beat ``1e-13`` at ``K = 12`` (geometric
    convergence for an entire integrand).
    """
    a, b = INTERVAL

    def antiderivative(x):
        return np.exp(x) * (np.cos(2 * x) + 2 * np.sin(2 * x)) / 5

    exact = antiderivative(b) - antiderivative(a)

    def error(k):
        rule = quadrature_rule(name, k, INTERVAL)
        return abs(rule.integrate(np.exp(rule.points) * np.cos(2 * rule.points)) - exact)

    order = CONVERGENCE_ORDER[name]
    if order is None:
        errors = [error(k) for k in (2, 4, 6, 8, 12)]
        assert all(later < earlier / 10 for earlier, later in zip(errors[:-2], errors[1:-1],
                                                                strict=True))
        assert errors[-1] < 1e-13
        return
    ks = [9, 17, 33, 65] if name != "midpoint" else [8, 16, 32, 64]
    errors = np.array([error(k) for k in ks])
    ratios = errors[:-1] / errors[1:]
    np.testing.assert_allclose(ratios, 2.0**order, rtol=0.1)


@pytest.mark.parametrize("name", RULES)
def test_nodes_weights_and_equality(name):
    k = 7
    rule = quadrature_rule(name, k, INTERVAL)
    assert rule.num_points == k and rule.points.shape == rule.weights.shape == (k,)
    assert np.all(rule.weights > 0) and rule.weights.sum() == pytest.approx(2.0, rel=1e-12)
    assert np.all(np.diff(rule.points) > 0)
    assert rule.points[0] >= INTERVAL[0] and rule.points[-1] <= INTERVAL[1]
    np.testing.assert_allclose(rule.log_weights, np.log(rule.weights))
    # symmetric about the centre of the interval
    np.testing.assert_allclose(rule.points + rule.points[::-1], 1.0, atol=1e-12)
    np.testing.assert_allclose(rule.weights, rule.weights[::-1], rtol=1e-12)
    same = quadrature_rule(name, k, INTERVAL)
    assert same == rule and hash(same) == hash(rule)
    assert quadrature_rule(name, 9, INTERVAL) != rule
    with pytest.raises(AttributeError):
        rule.name = "other"
    with pytest.raises(ValueError):
        rule.points[0] = 3.0  # read-only
    assert isinstance(rule, QuadratureRule) and name in repr(rule)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="`name`"):
        quadrature_rule("boole", 5)
    with pytest.raises(ValueError, match="`num_points`"):
        quadrature_rule("trapezoidal", 1)
    with pytest.raises(ValueError, match="`num_points`.*odd"):
        quadrature_rule("simpson", 4)
    with pytest.raises(ValueError, match="`num_points`"):
        quadrature_rule("gauss_legendre", 2.0)
    with pytest.raises(ValueError, match="`num_points`"):
        quadrature_rule("midpoint", True)
    with pytest.raises(ValueError, match="`interval`"):
        quadrature_rule("midpoint", 3, (1.0, 1.0))
    with pytest.raises(ValueError, match="`interval`"):
        quadrature_rule("midpoint", 3, (0.0, math.inf))
    with pytest.raises(ValueError, match="`interval`"):
        quadrature_rule("midpoint", 3, "ab")

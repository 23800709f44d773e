"""Analytic integral circuits: exact evaluation, and QPCs converging to it at each rule's rate.

The exact evaluators of ``circuits.analytic`` are checked against independent
answers (the joint Gaussian of a linear-Gaussian tree; direct numerical
integration with scipy), then used as the reference for materialised QPCs.
Quadrature comparisons run in float64 (``jax.enable_x64``) so that rounding stays
far below the quadrature errors being measured.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

import circuits
from circuits.analytic import (
    ExponentialBernoulliInputs,
    ExponentialSumFunctions,
    LinearGaussianFunctions,
    LinearGaussianInputs,
    exact_log_marginal,
    exponential_circuit,
    linear_gaussian_circuit,
)
from circuits.integral import IntegralCircuit, integral_circuit
from circuits.quadrature import CONVERGENCE_ORDER, quadrature_rule


def all_assignments(v):
    return np.asarray(np.unravel_index(np.arange(2**v), (2,) * v)).T


# ----------------------------------------------------------- Gaussian family
def joint_gaussian(pic):
    """Mean and covariance of x under a tree-shaped linear-Gaussian PIC, by forward propagation.

    Sampling view: at the root, u ~ N(b, Sigma); every child region receives its
    coordinate of u (CP: all children the same u) as its latent z; an inner region draws
    u ~ N(a z + b, Sigma); a leaf draws x_v ~ N(alpha z + beta, sigma^2). Everything is a
    linear function of independent standard normals, tracked as loading vectors.
    """
    structure = pic.structure
    graph = structure.region_graph
    fold_of = {number: (d, f) for d, (inner, _) in enumerate(structure.stages)
               for f, (_, number) in enumerate(inner.partitions)}
    partition_of = {p.region: (n, p) for n, p in enumerate(graph.partitions)}
    leaf_row = {int(r): row for row, r in enumerate(structure.leaf_regions)}
    inputs = pic.input_functions
    noises = []  # one entry per independent standard normal: its loading is a unit vector later
    forms = {}  # variable -> (mean, {noise index: coefficient})

    def new_noise():
        noises.append(None)
        return len(noises) - 1

    def visit(region, z):  # z = (mean, loading dict) or None at the root
        if region in leaf_row:
            for s in np.flatnonzero(structure.slot_leaf == leaf_row[region]):
                v = int(structure.slot_variable[s])
                alpha, beta = float(inputs.slope[s]), float(inputs.offset[s])
                loading = {i: alpha * c for i, c in z[1].items()}
                loading[new_noise()] = math.exp(float(inputs.log_scale[s]))
                forms[v] = (alpha * z[0] + beta, loading)
            return
        number, partition = partition_of[region]
        d, f = fold_of[number]
        group = pic.inner_functions[d]
        chol = np.linalg.cholesky(group.covariances()[f])
        n = chol.shape[0]
        fresh = [new_noise() for _ in range(n)]
        latents = []
        for i in range(n):
            mean = float(group.offset[f, i])
            loading = {fresh[j]: chol[i, j] for j in range(n)}
            if z is not None:
                slope = float(group.slope[f, i])
                mean += slope * z[0]
                for key, c in z[1].items():
                    loading[key] = loading.get(key, 0.0) + slope * c
            latents.append((mean, loading))
        for a, child in enumerate(partition.children):
            visit(child, latents[0] if n == 1 else latents[a])

    visit(graph.root, None)
    v = graph.num_variables
    mean = np.array([forms[i][0] for i in range(v)])
    loadings = np.zeros((v, len(noises)))
    for i in range(v):
        for key, c in forms[i][1].items():
            loadings[i, key] += c
    return mean, loadings @ loadings.T


TREES = {
    "chain-cp": (lambda: circuits.linear_chain(4), "cp"),
    "tree-tucker": (lambda: circuits.random_binary_tree(jax.random.key(0), 5, 2), "tucker"),
    "chow-liu-cp": (lambda: circuits.chow_liu_tree(
        (np.random.default_rng(0).random((200, 5)) < 0.5).astype(int), root=2), "cp"),
}


@pytest.mark.parametrize("tree", list(TREES))
def test_gaussian_exact_evaluation_is_the_joint_gaussian(tree):
    build, merge = TREES[tree]
    pic = linear_gaussian_circuit(jax.random.key(1), build(), merge)
    mean, cov = joint_gaussian(pic)
    rng = np.random.default_rng(0)
    x = rng.multivariate_normal(mean, cov, size=6)
    np.testing.assert_allclose(exact_log_marginal(pic, x),
                               stats.multivariate_normal(mean, cov).logpdf(x), rtol=1e-10)
    keep = np.array([True, False, True] + [False] * (len(mean) - 3))
    np.testing.assert_allclose(
        exact_log_marginal(pic, x, keep),
        stats.multivariate_normal(mean[keep], cov[np.ix_(keep, keep)]).logpdf(x[:, keep]),
        rtol=1e-10)


GAUSSIAN_CASES = {
    "tree-tucker": (lambda: circuits.random_binary_tree(jax.random.key(0), 5, 2), "tucker",
                    "units"),
    "quadgraph-tucker-dag": (lambda: circuits.quad_graph(2, 2), "tucker", "global"),
    "repetitions-cp-dag": (lambda: circuits.random_binary_tree(jax.random.key(3), 5, 2, 2), "cp",
                           "global"),
}


@pytest.mark.parametrize("case", list(GAUSSIAN_CASES))
def test_qpc_converges_to_the_gaussian_pic(case):
    """Trapezoid on [-8, 8]: the integrands are Gaussian bumps well inside the interval,
    so the error falls faster than any power of h (Trefethen & Weideman 2014) until the
    truncated tails (< 1e-12) and float64 rounding; K = 64 must agree to 1e-8."""
    build, merge, normalization = GAUSSIAN_CASES[case]
    with jax.enable_x64(True):
        pic = linear_gaussian_circuit(jax.random.key(2), build(), merge,
                                      normalization=normalization)
        v = pic.num_variables
        rng = np.random.default_rng(1)
        x = np.round(rng.normal(size=(6, v)) * 8) / 8  # exactly representable in float32
        observed = rng.random((6, v)) < 0.6
        exact = exact_log_marginal(pic, x)
        exact_marginal = exact_log_marginal(pic, x, observed)
        errors = []
        for k in (16, 32, 64):
            qpc = pic.materialize(quadrature_rule("trapezoidal", k, (-8.0, 8.0)))
            error = max(np.abs(np.asarray(qpc.log_prob(x)) - exact).max(),
                        np.abs(np.asarray(qpc.log_marginal(x, observed)) - exact_marginal).max())
            errors.append(error)
        assert errors[0] > errors[1] > errors[2] or errors[1] < 1e-10
        assert errors[2] < 1e-8


# -------------------------------------------------------- exponential family
def test_exponential_exact_evaluation_matches_direct_integration():
    """Chain of 3 variables, CP merges: c(x) = int f0(y) p(x0|y) int f1(y, y') p(x1|y') p(x2|y')
    dy' dy over [0, 1]^2, integrated by scipy's adaptive quadrature (tolerance 1e-12)."""
    pic = exponential_circuit(jax.random.key(4), circuits.linear_chain(3))
    structure = pic.structure
    # stage 0 holds the partition of {1, 2}; stage 1 the root's
    (inner0, _), (inner1, _) = structure.stages
    assert len(inner0.partitions) == len(inner1.partitions) == 1
    f_inner, f_root = pic.inner_functions
    slot = {int(v): s for s, v in enumerate(structure.slot_variable)}
    inputs = pic.input_functions
    base, amplitude, rate = (np.asarray(a, np.float64) for a in
                             (inputs.base, inputs.amplitude, inputs.rate))

    def factor(v, value, z):
        s = slot[v]
        p = base[s] + amplitude[s] * math.exp(rate[s] * z)
        return p if value == 1 else 1 - p

    def f(group, *coords):  # sum_m alpha_m exp(nu_m z + mu_m u), straight from the parameters
        alpha = np.exp(np.asarray(group.log_coefficients[0], np.float64))
        mu = np.asarray(group.rates[0, :, 0], np.float64)
        if len(coords) == 1:
            return float(np.sum(alpha * np.exp(mu * coords[0])))
        nu = np.asarray(group.parent_rates[0], np.float64)
        return float(np.sum(alpha * np.exp(nu * coords[0] + mu * coords[1])))

    def inner(y, row):
        return integrate.quad(lambda y2: f(f_inner, y, y2) * factor(1, row[1], y2)
                              * factor(2, row[2], y2), 0, 1, epsabs=1e-13, epsrel=1e-12)[0]

    def z_inner(y):
        return integrate.quad(lambda y2: f(f_inner, y, y2), 0, 1, epsabs=1e-13, epsrel=1e-12)[0]

    log_z = math.log(integrate.quad(lambda y: f(f_root, y) * z_inner(y), 0, 1, epsabs=1e-13,
                                    epsrel=1e-12)[0])
    for row in all_assignments(3)[[0, 3, 5, 6]]:
        value = integrate.quad(lambda y, row=row: f(f_root, y) * factor(0, row[0], y)
                               * inner(y, row), 0, 1, epsabs=1e-13, epsrel=1e-12)[0]
        assert exact_log_marginal(pic, row[None])[0] == pytest.approx(math.log(value) - log_z,
                                                                      rel=1e-9)
    total = special.logsumexp(exact_log_marginal(pic, all_assignments(3)))
    assert total == pytest.approx(0.0, abs=1e-12)


RATE_CASES = {
    "chain-cp": (lambda: circuits.linear_chain(4), "cp"),
    "tree-tucker-dag": (lambda: circuits.random_binary_tree(jax.random.key(5), 4, 2, 2), "tucker"),
}


@pytest.mark.parametrize("case", list(RATE_CASES))
def test_qpc_error_falls_at_each_rules_rate(case):
    """Max error of log p over all 16 assignments and 16 marginals, against the exact PIC.

    The integrands are smooth, non-periodic exponential sums, so the composite rules
    are in their asymptotic regime from h = 1/9: the next Euler–Maclaurin term is a
    relative O(h^2) <= 1.2% correction to the error, which moves the fitted log-log
    slope by less than 0.05; we allow 0.15. Gauss–Legendre converges geometrically for
    these entire integrands: three more nodes (K = 3 -> 5) must gain more than a
    factor 100 and K = 9 reach 1e-10, far below Simpson's error at the same K.
    """
    build, merge = RATE_CASES[case]
    with jax.enable_x64(True):
        pic = exponential_circuit(jax.random.key(6), build(), merge)
        x = all_assignments(4)
        observed = np.random.default_rng(2).random((16, 4)) < 0.5
        exact = exact_log_marginal(pic, x)
        exact_marginal = exact_log_marginal(pic, x, observed)

        def error(name, k):
            qpc = pic.materialize(quadrature_rule(name, k, pic.domain))
            return max(np.abs(np.asarray(qpc.log_prob(x)) - exact).max(),
                       np.abs(np.asarray(qpc.log_marginal(x, observed)) - exact_marginal).max())

        for name in ("trapezoidal", "midpoint", "simpson"):
            ks = np.array([9, 17, 33])
            spacing = 1.0 / (ks - 1) if name != "midpoint" else 1.0 / ks
            errors = np.array([error(name, k) for k in ks])
            slope = np.polyfit(np.log(spacing), np.log(errors), 1)[0]
            assert slope == pytest.approx(CONVERGENCE_ORDER[name], abs=0.15), (name, errors)
        gauss = [error("gauss_legendre", k) for k in (3, 5, 9)]
        assert gauss[0] / gauss[1] > 100 and gauss[2] < 1e-10
        assert gauss[2] < 1e-4 * error("simpson", 9)


# -------------------------------------------------------------- bad input
def test_exact_evaluation_rejects_what_it_cannot_do():
    graph = circuits.linear_chain(3)
    neural = integral_circuit(graph, circuits.Bernoulli(), key=jax.random.key(0), hidden=4,
                              num_features=4)
    with pytest.raises(TypeError, match="`pic` must use one analytic family"):
        exact_log_marginal(neural, np.zeros((1, 3)))
    pic = exponential_circuit(jax.random.key(1), graph)
    units = IntegralCircuit(graph, circuits.Bernoulli(), pic.input_functions, pic.inner_functions,
                            domain=pic.domain, normalization="units")
    with pytest.raises(ValueError, match="normalization='global'"):
        exact_log_marginal(units, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="`x`"):
        exact_log_marginal(pic, np.zeros((1, 4)))
    with pytest.raises(ValueError, match="`observed`"):
        exact_log_marginal(pic, np.zeros((2, 3)), np.ones((3, 3), bool))
    bad_inputs = ExponentialBernoulliInputs(jnp.full(3, 0.5), jnp.full(3, 0.5), jnp.ones(3))
    with pytest.raises(ValueError, match="leaves \\(0, 1\\)"):
        exact_log_marginal(IntegralCircuit(graph, circuits.Bernoulli(), bad_inputs,
                                           pic.inner_functions, domain=pic.domain,
                                           normalization="global"), np.zeros((1, 3)))
    gaussian = linear_gaussian_circuit(jax.random.key(2), graph)
    bounded = IntegralCircuit(graph, circuits.Gaussian(), gaussian.input_functions,
                              gaussian.inner_functions, domain=(-5.0, 5.0))
    with pytest.raises(ValueError, match="real line"):
        exact_log_marginal(bounded, np.zeros((1, 3)))
    with pytest.raises(ValueError, match="`slope`"):
        LinearGaussianFunctions(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 3)),
                                has_parent=True)
    with pytest.raises(ValueError, match="`cholesky_offdiag`"):
        LinearGaussianFunctions(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)),
                                np.zeros(3), has_parent=True)
    with pytest.raises(ValueError, match="`slope`"):
        LinearGaussianInputs(np.zeros(2), np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="`log_coefficients`"):
        ExponentialSumFunctions(np.zeros((2, 2)), np.zeros((2, 3)), np.zeros((2, 2, 1)),
                                has_parent=True)
    with pytest.raises(ValueError, match="`base`"):
        ExponentialBernoulliInputs(np.zeros(2), np.zeros(2), np.zeros((2, 1)))

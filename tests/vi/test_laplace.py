"""find_map and laplace against closed forms and scipy.

Targets: a correlated, badly scaled Gaussian (condition number 1e3; mode and covariance
known), a banana (mode and Hessian in closed form), a Bayesian logistic regression (mode
from scipy.optimize on a numpy negative log density; Hessian in closed form) and a
Gamma-shaped density written on the raw positive axis (``-inf`` below zero).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import probinf
from probinf.vi import _lbfgs, find_map, laplace

DIM = 8


def correlated_gaussian(seed=0, dim=DIM, condition=1e3):
    """Mean and covariance with eigenvalues spread log-uniformly over ``condition``."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eigenvalues = np.logspace(-0.5 * math.log10(condition), 0.5 * math.log10(condition), dim)
    covariance = (rotation * eigenvalues) @ rotation.T
    return 3.0 * rng.normal(size=dim), covariance


def gaussian_log_density(z, params):
    residual = z - params["mean"].astype(z.dtype)
    return -0.5 * residual @ (params["precision"].astype(z.dtype) @ residual)


def gaussian_target(mean, covariance):
    params = {"mean": jnp.asarray(mean), "precision": jnp.asarray(np.linalg.inv(covariance))}
    return probinf.from_logdensity(gaussian_log_density, len(mean), params=params)


def stopping_radius(log_density_at_mode):
    """Distance from the mode (posterior sd units) that the default stopping rule allows.

    find_map stops when half the Newton decrement g^T H g is below ftol * max(|f|, 1)
    (or g^T H g below 10 ftol * max(|f|, 1) at the working precision's floor), and
    sqrt(g^T H g) is the Mahalanobis distance to the mode of a Gaussian when H is its
    inverse Hessian. H is the L-BFGS estimate, so a factor 2 is allowed.
    """
    ftol, _ = _lbfgs.default_tolerances(jnp.asarray(0.0).dtype)
    return 2.0 * math.sqrt(10.0 * ftol * max(abs(float(log_density_at_mode)), 1.0))


def mahalanobis(x, mean, covariance):
    diff = np.asarray(x, np.float64) - mean
    return float(np.sqrt(diff @ np.linalg.solve(covariance, diff)))


MEAN, COV = correlated_gaussian()


@pytest.mark.parametrize("x64", [False, True])
def test_find_map_and_laplace_on_correlated_gaussian(x64):
    with jax.enable_x64(x64):
        target = gaussian_target(MEAN, COV)
        start = np.full(DIM, 30.0)  # about 100 posterior sd away along the narrowest axis
        result = find_map(target, init=start)
        dtype = jnp.float64 if x64 else jnp.float32
        assert result.position.dtype == dtype
        assert bool(result.converged)
        assert mahalanobis(result.position, MEAN, COV) < stopping_radius(0.0)
        assert float(result.log_density) == pytest.approx(0.0, abs=1e-9 if x64 else 1e-4)

        approx = laplace(target, init=start)
        assert not bool(approx.regularized)
        assert isinstance(approx.family, probinf.FullRankGaussian)
        assert approx.family.loc.dtype == dtype
        # The Hessian of a quadratic is exact: the covariance to rounding error.
        np.testing.assert_allclose(
            np.asarray(approx.family.covariance),
            COV,
            rtol=0,
            atol=(1e-10 if x64 else 2e-4) * np.abs(COV).max(),
        )
        np.testing.assert_array_equal(
            np.asarray(approx.family.loc), np.asarray(approx.map.position)
        )


def test_find_map_from_far_away():
    target = gaussian_target(MEAN, COV)
    start = MEAN + 1e4 * np.sqrt(np.diag(COV))  # 1e4 marginal sd away
    result = find_map(target, init=start)
    assert bool(result.converged)
    assert mahalanobis(result.position, MEAN, COV) < stopping_radius(0.0)


def test_find_map_is_jittable():
    target = gaussian_target(MEAN, COV)

    @eqx.filter_jit
    def mode(target, start):
        return find_map(target, init=start).position

    start = jnp.full(DIM, 30.0)
    np.testing.assert_array_equal(
        np.asarray(mode(target, start)), np.asarray(find_map(target, init=start).position)
    )


# --- banana: mode (1, b), Hessian in closed form ------------------------------------------

BANANA_B, BANANA_S1, BANANA_S2 = 0.5, 1.0, 0.3


def banana_log_density(z):
    bend = z[1] - BANANA_B * z[0] ** 2
    return -0.5 * ((z[0] - 1.0) / BANANA_S1) ** 2 - 0.5 * (bend / BANANA_S2) ** 2


@pytest.mark.parametrize("x64", [False, True])
def test_banana_mode_and_hessian(x64):
    with jax.enable_x64(x64):
        target = probinf.from_logdensity(banana_log_density, 2)
        approx = laplace(target, init=jnp.array([-4.0, 12.0]))
        np.testing.assert_allclose(
            np.asarray(approx.map.position), [1.0, BANANA_B], atol=1e-8 if x64 else 2e-3
        )
        # -Hessian at the mode: d2/dx1^2 = 1/s1^2 + 4 b^2 x1^2 / s2^2, d2/dx1dx2 = -2 b x1 / s2^2.
        precision = np.array(
            [
                [1 / BANANA_S1**2 + 4 * BANANA_B**2 / BANANA_S2**2, -2 * BANANA_B / BANANA_S2**2],
                [-2 * BANANA_B / BANANA_S2**2, 1 / BANANA_S2**2],
            ]
        )
        np.testing.assert_allclose(
            np.asarray(approx.family.covariance),
            np.linalg.inv(precision),
            rtol=1e-7 if x64 else 1e-2,
        )


# --- logistic regression: mode against scipy.optimize -------------------------------------


def logistic_problem():
    rng = np.random.default_rng(3)
    n, p = 60, 4
    features = rng.normal(size=(n, p))
    labels = (
        rng.uniform(size=n) < 1 / (1 + np.exp(-features @ np.array([1.5, -2.0, 0.5, 0.0])))
    ).astype(float)
    prior_sd = 2.0

    def negative_log_density(w):  # numpy, independent of JAX
        logits = features @ w
        return np.sum(np.logaddexp(0.0, logits) - labels * logits) + 0.5 * w @ w / prior_sd**2

    def gradient(w):
        return features.T @ (1 / (1 + np.exp(-features @ w)) - labels) + w / prior_sd**2

    def hessian(w):
        prob = 1 / (1 + np.exp(-features @ w))
        return (features.T * (prob * (1 - prob))) @ features + np.eye(p) / prior_sd**2

    def log_density(w):
        logits = jnp.asarray(features, w.dtype) @ w
        labels_ = jnp.asarray(labels, w.dtype)
        return -jnp.sum(jnp.logaddexp(0.0, logits) - labels_ * logits) - 0.5 * w @ w / prior_sd**2

    reference = scipy.optimize.minimize(
        negative_log_density,
        np.zeros(p),
        jac=gradient,
        hess=hessian,
        method="trust-exact",
        options={"gtol": 1e-12},
    )
    assert np.max(np.abs(gradient(reference.x))) < 1e-10
    return log_density, p, reference.x, hessian


@pytest.mark.parametrize("x64", [False, True])
def test_logistic_regression_mode_matches_scipy(x64):
    log_density, p, mode, hessian_at = logistic_problem()
    with jax.enable_x64(x64):
        target = probinf.from_logdensity(log_density, p)
        approx = laplace(target, init=np.full(p, 5.0))
        assert bool(approx.map.converged)
        covariance = np.linalg.inv(hessian_at(mode))
        radius = stopping_radius(approx.map.log_density)
        assert mahalanobis(approx.map.position, mode, covariance) < radius
        # The Laplace covariance is the inverse negative Hessian at the returned mode.
        at_mode = np.linalg.inv(hessian_at(np.asarray(approx.map.position, np.float64)))
        np.testing.assert_allclose(
            np.asarray(approx.family.covariance), at_mode, rtol=1e-9 if x64 else 1e-3
        )


# --- a density that is -inf on part of the space ------------------------------------------

GAMMA_SHAPE = np.array([3.0, 2.0, 5.0])
GAMMA_RATE = np.array([2.0, 0.5, 1.0])


def gamma_raw_log_density(z):
    shape = jnp.asarray(GAMMA_SHAPE - 1.0, z.dtype)
    rate = jnp.asarray(GAMMA_RATE, z.dtype)
    inside = jnp.all(z > 0)
    safe = jnp.where(inside, z, 1.0)
    return jnp.where(inside, jnp.sum(shape * jnp.log(safe) - rate * safe), -jnp.inf)


def test_find_map_backtracks_out_of_minus_infinity():
    # Starting far out on the positive axis, the first steps overshoot below zero where the
    # log density is -inf; the line search must back off. Mode of Gamma(k, r) is (k-1)/r.
    target = probinf.from_logdensity(gamma_raw_log_density, 3)
    result = find_map(target, init=np.array([40.0, 0.05, 60.0]))
    assert bool(result.converged)
    np.testing.assert_allclose(
        np.asarray(result.position), (GAMMA_SHAPE - 1) / GAMMA_RATE, rtol=2e-3
    )


# --- regularisation and failures ----------------------------------------------------------


def test_laplace_regularises_a_saddle_with_a_warning():
    # exp(-x^2/2) * exp(+y^2/2 - y^4/4): y = 0 is a local minimum in y (the maximisers are
    # y = +-1), so started on y = 0 the optimiser stays there and -Hessian = diag(1, -1).
    def log_density(z):
        return -0.5 * z[0] ** 2 + 0.5 * z[1] ** 2 - 0.25 * z[1] ** 4

    target = probinf.from_logdensity(log_density, 2)
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        approx = laplace(target, init=jnp.array([2.0, 0.0]))
    assert bool(approx.regularized)
    # The rule: negative eigenvalue -1 -> |-1| = 1, so the covariance is the identity.
    np.testing.assert_allclose(np.asarray(approx.family.covariance), np.eye(2), atol=1e-5)


def test_laplace_raises_on_a_non_finite_hessian():
    # |z|^1.5 has zero gradient and infinite curvature at its mode 0.
    target = probinf.from_logdensity(lambda z: -jnp.sum(jnp.abs(z) ** 1.5), 2)
    with pytest.raises(RuntimeError, match="non-finite"):
        laplace(target, init=jnp.zeros(2))


def test_find_map_warns_when_out_of_iterations():
    target = gaussian_target(MEAN, COV)
    with pytest.warns(RuntimeWarning, match="max_iters"):
        result = find_map(target, init=np.full(DIM, 30.0), max_iters=2)
    assert not bool(result.converged)
    assert int(result.num_iterations) == 2


def test_bad_arguments_are_named():
    target = gaussian_target(MEAN, COV)
    with pytest.raises(ValueError, match=r"`init` must have shape \(8,\).*\(3,\)"):
        find_map(target, init=np.zeros(3))
    with pytest.raises(ValueError, match="`init` must be finite"):
        find_map(target, init=np.full(DIM, np.nan))
    with pytest.raises(ValueError, match="`max_iters`"):
        find_map(target, max_iters=0)
    with pytest.raises(ValueError, match="`ftol`"):
        find_map(target, ftol=-1.0)
    with pytest.raises(TypeError, match="probinf.Target"):
        find_map(gaussian_log_density)
    nowhere = probinf.from_logdensity(lambda z: jnp.sum(z) * jnp.nan, 2)
    with pytest.raises(ValueError, match="log density at `init` is nan"):
        laplace(nowhere)

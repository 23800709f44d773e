"""Pathfinder and initialize against exact answers.

* The inverse-Hessian factors and the normal approximation against the explicit BFGS
  recursion and scipy's multivariate normal.
* An isotropic Gaussian, where Pathfinder is exact after one step: the first pair is
  consistent with H = sigma^2 I, the diagonal update returns alpha = sigma^2 and the
  BFGS update keeps it, so the mean, covariance and (zero-variance) ELBO are exact.
* A correlated, badly scaled Gaussian (condition number 1e3), where Pathfinder is only
  approximate, against closed-form KL divergences.
* A banana with a closed-form normaliser, a conjugate numpyro model, and targets built
  to make each fallback of ``initialize`` fire.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from scipy import stats

import probinf
from probinf.vi import _lbfgs, initialize, pathfinder

DIM = 8


def gaussian_log_density(z, params):
    residual = z - params["mean"].astype(z.dtype)
    return -0.5 * residual @ (params["precision"].astype(z.dtype) @ residual)


def gaussian_target(mean, covariance):
    params = {"mean": jnp.asarray(mean), "precision": jnp.asarray(np.linalg.inv(covariance))}
    return probinf.from_logdensity(gaussian_log_density, len(mean), params=params)


def correlated_gaussian(seed=0, dim=DIM, condition=1e3):
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    eigenvalues = np.logspace(-0.5 * math.log10(condition), 0.5 * math.log10(condition), dim)
    return 3.0 * rng.normal(size=dim), (rotation * eigenvalues) @ rotation.T


def gaussian_log_normaliser(covariance):
    return 0.5 * np.linalg.slogdet(2 * np.pi * covariance)[1]


def kl_gaussians(mean_q, cov_q, mean_p, cov_p):
    """KL(N(mean_q, cov_q) || N(mean_p, cov_p)) in closed form."""
    precision = np.linalg.inv(cov_p)
    diff = mean_p - mean_q
    return 0.5 * (
        np.trace(precision @ cov_q)
        + diff @ precision @ diff
        - len(mean_p)
        + np.linalg.slogdet(cov_p)[1]
        - np.linalg.slogdet(cov_q)[1]
    )


def moments(family):
    return np.asarray(family.loc, np.float64), np.asarray(family.covariance, np.float64)


MEAN, COV = correlated_gaussian()
ISO_MEAN, ISO_SD = np.arange(DIM) - 3.0, 0.3
ISO_COV = ISO_SD**2 * np.eye(DIM)


# --- the algebra --------------------------------------------------------------------------


def test_inverse_hessian_and_normal_approximation_match_explicit_bfgs():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        dim, m = 7, 4
        a = rng.normal(size=(dim, dim))
        hessian = a @ a.T + np.eye(dim)
        s = rng.normal(size=(m, dim))
        y = s @ hessian
        valid = np.array([False, True, True, True])  # the oldest slot is empty
        s[~valid], y[~valid] = 0.0, 0.0
        alpha = rng.uniform(0.5, 2.0, size=dim)
        # BFGS inverse update H <- (I - rho y s^T)^T H (I - rho y s^T) + rho s s^T from diag(alpha).
        expected = np.diag(alpha)
        for s_i, y_i in zip(s[valid], y[valid], strict=True):
            rho = 1.0 / (s_i @ y_i)
            v = np.eye(dim) - rho * np.outer(y_i, s_i)
            expected = v.T @ expected @ v + rho * np.outer(s_i, s_i)
        x, grad, u = rng.normal(size=dim), rng.normal(size=dim), rng.normal(size=(5, dim))

        @jax.jit  # one compilation instead of one per operation
        def compute(s, y, valid, alpha, x, grad, u):
            history = _lbfgs.History(s, y, valid)
            beta, gamma = _lbfgs.inverse_hessian_factors(alpha, history)
            approx = _lbfgs.normal_approximation(x, grad, alpha, history)
            z, log_q = _lbfgs.transform_draws(approx, u)
            scale = _lbfgs.approximation_scale(approx)
            return (
                beta @ gamma @ beta.T,
                approx,
                z,
                log_q,
                scale,
                _lbfgs.lower_triangular_factor(scale),
            )

        low_rank, approx, z, log_q, scale, tril = jax.tree_util.tree_map(
            np.asarray, compute(s, y, valid, alpha, x, grad, u)
        )
        np.testing.assert_allclose(np.diag(alpha) + low_rank, expected, atol=1e-12)
        np.testing.assert_allclose(approx.mean, x - expected @ grad, atol=1e-12)
        assert float(approx.log_det) == pytest.approx(np.linalg.slogdet(expected)[1], abs=1e-12)
        reference = stats.multivariate_normal(approx.mean, expected).logpdf(z)
        np.testing.assert_allclose(log_q, reference, atol=1e-10)
        np.testing.assert_allclose(scale @ scale.T, expected, atol=1e-12)
        np.testing.assert_array_equal(tril, np.tril(tril))
        assert np.all(np.diag(tril) > 0)
        np.testing.assert_allclose(tril @ tril.T, expected, atol=1e-12)


# --- Gaussian targets ---------------------------------------------------------------------


@pytest.mark.parametrize("x64", [False, True])
def test_pathfinder_is_exact_on_an_isotropic_gaussian(x64):
    with jax.enable_x64(x64):
        target = gaussian_target(ISO_MEAN, ISO_COV)
        result = pathfinder(jax.random.PRNGKey(0), target, init=np.full(DIM, 10.0))
        dtype = jnp.float64 if x64 else jnp.float32
        assert result.family.loc.dtype == dtype
        tol = 1e-12 if x64 else 2e-5
        np.testing.assert_allclose(np.asarray(result.family.loc), ISO_MEAN, atol=tol * 10)
        np.testing.assert_allclose(
            np.asarray(result.family.covariance), ISO_COV, atol=tol * ISO_SD**2
        )
        # log p - log q is the constant log Z for the exact q: the estimate has no variance.
        assert float(result.elbo) == pytest.approx(gaussian_log_normaliser(ISO_COV), abs=tol * 100)
        iterations = int(result.num_iterations)
        assert np.all(np.isfinite(np.asarray(result.elbos[: iterations + 1])))
        assert np.all(np.isnan(np.asarray(result.elbos[iterations + 1 :])))
        np.testing.assert_array_equal(np.asarray(result.path[0]), np.full(DIM, 10.0))


@pytest.mark.parametrize("x64", [False, True])
def test_pathfinder_on_a_correlated_badly_scaled_gaussian(x64):
    """Approximate, with the tolerance the method warrants.

    The covariance is the L-BFGS estimate: a diagonal plus the last 6 secant pairs.
    BFGS recovers a quadratic's inverse Hessian only with exact line searches (the
    hereditary property) and a full history, neither of which holds here, and the
    iterate is picked by a 25-draw ELBO estimate. Measured over 8 seeds on 8-d targets
    with condition number 1e3: KL(q || p) 0.8-1.9 nats (median 1.2), mean within 0.34
    posterior sd (the start is ~8e3 nats away).
    """
    with jax.enable_x64(x64):
        target = gaussian_target(MEAN, COV)
        start = np.full(DIM, 30.0)
        result = pathfinder(jax.random.PRNGKey(0), target, init=start)
        loc, cov = moments(result.family)
        kl = kl_gaussians(loc, cov, MEAN, COV)
        assert kl < 3.0
        diff = loc - MEAN
        assert math.sqrt(diff @ np.linalg.solve(COV, diff)) < 1.0
        assert kl_gaussians(start, np.eye(DIM), MEAN, COV) > 1e3
        # The reported ELBO is an unbiased 25-draw estimate of log Z - KL(q || p).
        exact_elbo = gaussian_log_normaliser(COV) - kl
        rng = np.random.default_rng(0)
        draws = rng.multivariate_normal(loc, cov, size=20000)
        log_w = -0.5 * np.einsum(
            "ni,ij,nj->n", draws - MEAN, np.linalg.inv(COV), draws - MEAN
        ) - stats.multivariate_normal(loc, cov).logpdf(draws)
        assert abs(float(result.elbo) - exact_elbo) < 5 * log_w.std() / math.sqrt(25)
        best = int(result.best_index)
        assert 0 < best <= int(result.num_iterations)
        assert float(result.elbos[best]) == np.nanmax(np.asarray(result.elbos))


def test_multi_path_pathfinder():
    target = gaussian_target(ISO_MEAN, ISO_COV)
    result = pathfinder(jax.random.PRNGKey(1), target, init=np.full(DIM, 10.0), num_paths=3)
    assert result.elbos.shape == (3, 1001)
    assert result.path.shape == (3, 1001, DIM)
    assert float(jnp.sum(result.path_weights)) == pytest.approx(1.0, abs=1e-6)
    # Every path finds the exact Gaussian, so the weighted mixture's moments are exact.
    np.testing.assert_allclose(np.asarray(result.family.loc), ISO_MEAN, atol=1e-4)
    np.testing.assert_allclose(np.asarray(result.family.covariance), ISO_COV, atol=1e-5)
    # The starts: the given point, then points within +-2 of it.
    starts = np.asarray(result.path[:, 0])
    np.testing.assert_array_equal(starts[0], np.full(DIM, 10.0))
    assert np.all(np.abs(starts[1:] - 10.0) <= 2.0) and not np.allclose(starts[1], starts[2])


# --- non-Gaussian and numpyro targets -----------------------------------------------------

BANANA_B, BANANA_S1, BANANA_S2 = 0.5, 1.0, 0.3


def banana_log_density(z):
    bend = z[1] - BANANA_B * z[0] ** 2
    return -0.5 * ((z[0] - 1.0) / BANANA_S1) ** 2 - 0.5 * (bend / BANANA_S2) ** 2


def banana_elbo(loc, cov, num_draws=200_000):
    """ELBO of N(loc, cov) on the banana by numpy Monte Carlo (independent of the code)."""
    draws = np.random.default_rng(0).multivariate_normal(loc, cov, size=num_draws)
    bend = draws[:, 1] - BANANA_B * draws[:, 0] ** 2
    log_p = -0.5 * ((draws[:, 0] - 1.0) / BANANA_S1) ** 2 - 0.5 * (bend / BANANA_S2) ** 2
    log_w = log_p - stats.multivariate_normal(loc, cov).logpdf(draws)
    return log_w.mean(), log_w.std()


def test_pathfinder_on_a_banana_beats_laplace():
    # Integrating x2 then x1 gives the normaliser Z = 2 pi s1 s2, so ELBO(q) <= log Z.
    log_z = math.log(2 * math.pi * BANANA_S1 * BANANA_S2)
    target = probinf.from_logdensity(banana_log_density, 2)
    start = jnp.array([-4.0, 12.0])
    result = pathfinder(jax.random.PRNGKey(0), target, init=start)
    elbo, spread = banana_elbo(*moments(result.family))
    assert elbo <= log_z
    assert abs(float(result.elbo) - elbo) < 5 * spread / math.sqrt(25)
    # The paper's point: picking the iterate by ELBO beats the Gaussian at the mode.
    # Measured KL(q || p): Pathfinder 0.87 nats, Laplace 4.19.
    laplace_elbo, _ = banana_elbo(*moments(probinf.vi.laplace(target, init=start).family))
    assert elbo > laplace_elbo + 1.0


def test_pathfinder_matches_a_conjugate_numpyro_posterior():
    # mu_j ~ N(0, tau^2), y_ij ~ N(mu_j, sigma^2), i = 1..n: the posterior is
    # N(precision^-1 * sum_i y_ij / sigma^2, precision^-1 I), precision = 1/tau^2 + n/sigma^2,
    # isotropic, so Pathfinder is exact.
    tau, sigma, n = 3.0, 0.5, 4
    y = np.random.default_rng(2).normal(loc=[1.0, -2.0, 0.5], scale=sigma, size=(n, 3))

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.0, tau).expand([3]).to_event(1))
        numpyro.sample("y", dist.Normal(mu, sigma).to_event(1), obs=y)

    target = probinf.from_numpyro(model, jnp.asarray(y))
    precision = 1 / tau**2 + n / sigma**2
    result = pathfinder(jax.random.PRNGKey(0), target)
    np.testing.assert_allclose(
        np.asarray(result.family.loc), y.sum(0) / sigma**2 / precision, atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(result.family.covariance), np.eye(3) / precision, atol=1e-5
    )


# --- initialize ---------------------------------------------------------------------------


def test_initialize_methods_and_families():
    target = gaussian_target(MEAN, COV)
    key = jax.random.PRNGKey(0)
    start = np.full(DIM, 30.0)
    # Pathfinder is approximate here (KL about 1 nat, above), while the Laplace approximation
    # at the end of its path is the exact posterior: its ELBO is log Z with no variance,
    # so initialize keeps it.
    full = initialize(key, target, init=start, standardized=False)
    assert isinstance(full, probinf.FullRankGaussian)
    np.testing.assert_allclose(np.asarray(full.covariance), COV, atol=2e-4 * np.abs(COV).max())
    mean_field = initialize(key, target, family="mean_field", init=start, standardized=False)
    assert isinstance(mean_field, probinf.MeanFieldGaussian)
    np.testing.assert_allclose(np.asarray(mean_field.scale) ** 2, np.diag(COV), rtol=1e-3)
    np.testing.assert_array_equal(np.asarray(mean_field.loc), np.asarray(full.loc))

    # On the isotropic Gaussian Pathfinder is exact already.
    iso = initialize(key, gaussian_target(ISO_MEAN, ISO_COV), init=np.full(DIM, 10.0))
    np.testing.assert_allclose(np.asarray(iso.covariance), ISO_COV, atol=2e-5 * ISO_SD**2)

    laplace_mf = initialize(key, target, family="mean_field", method="laplace", init=start,
                            standardized=False)
    np.testing.assert_allclose(np.asarray(laplace_mf.scale) ** 2, np.diag(COV), rtol=1e-3)

    median = initialize(key, target, method="prior_median", standardized=False)
    np.testing.assert_array_equal(np.asarray(median.loc), np.zeros(DIM))  # no init_position: zeros
    np.testing.assert_array_equal(np.asarray(median.covariance), np.eye(DIM))


def test_initialize_default_is_the_same_gaussian_in_its_own_frame():
    target = gaussian_target(MEAN, COV)
    key = jax.random.PRNGKey(0)
    start = np.full(DIM, 30.0)
    for kind in ("full_rank", "mean_field"):
        plain = initialize(key, target, family=kind, init=start, standardized=False)
        framed = initialize(key, target, family=kind, init=start)
        assert isinstance(framed, probinf.Standardized)
        np.testing.assert_allclose(np.asarray(framed.mean), np.asarray(plain.mean), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(framed.covariance), np.asarray(plain.covariance),
                                   rtol=1e-4, atol=1e-6 * np.abs(COV).max())
        points = np.asarray(plain.sample(jax.random.PRNGKey(1), 5))
        np.testing.assert_allclose(np.asarray(framed.log_prob(points)),
                                   np.asarray(plain.log_prob(points)), rtol=1e-5)
        # Draws with the same key are the same points: z = m + L u with u the base's draw.
        z_plain, lq_plain = plain.sample_and_log_prob(jax.random.PRNGKey(2), 4)
        z_framed, lq_framed = framed.sample_and_log_prob(jax.random.PRNGKey(2), 4)
        np.testing.assert_allclose(np.asarray(z_framed), np.asarray(z_plain), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(lq_framed), np.asarray(lq_plain), rtol=1e-5)


def ball_log_density(z, params):
    """NaN outside a ball of radius 0.05, so draws from any wide Gaussian fail; inside,
    -r^T P r / 2 - c sum |r|^1.5 with r = z - centre. One function for every fallback
    test, so they share compiled code."""
    r = z - params["centre"]
    inside = jnp.sum(r**2) < 0.05**2
    # Without the cusp, |r|^1.5 must not enter at all: its infinite curvature at r = 0
    # times a zero weight would still make the Hessian NaN there.
    r_cusp = jnp.where(params["cusp"] > 0, r, 1.0)
    value = -0.5 * r @ params["precision"] @ r - params["cusp"] * jnp.sum(jnp.abs(r_cusp) ** 1.5)
    return jnp.where(inside, value, jnp.nan)


def ball_target(centre, precision, cusp):
    params = {
        "centre": jnp.asarray(centre),
        "precision": jnp.asarray(precision),
        "cusp": jnp.asarray(cusp),
    }
    return probinf.from_logdensity(ball_log_density, len(centre), params=params)


def test_initialize_falls_back_to_laplace_when_pathfinder_fails():
    centre = np.array([1.0, -1.0])
    precision = np.array([[2.0, 0.5], [0.5, 1.0]])
    target = ball_target(centre, precision, 0.0)
    key = jax.random.PRNGKey(0)
    with pytest.warns(RuntimeWarning, match="not finite"):
        pathfinder(key, target, init=centre + 0.01)
    with pytest.warns(RuntimeWarning, match="Pathfinder failed.*Laplace"):
        family = initialize(key, target, init=centre + 0.01, standardized=False)
    np.testing.assert_allclose(np.asarray(family.loc), centre, atol=1e-3)
    np.testing.assert_allclose(np.asarray(family.covariance), np.linalg.inv(precision), rtol=1e-4)


def test_initialize_falls_back_to_unit_scale_when_laplace_fails_too():
    # |r|^1.5 has zero gradient and infinite curvature at the centre: no Laplace approximation.
    centre = np.array([0.5, 2.0])
    target = ball_target(centre, np.zeros((2, 2)), 1.0)
    with pytest.warns(RuntimeWarning) as record:
        family = initialize(jax.random.PRNGKey(0), target, init=centre, standardized=False)
    messages = " | ".join(str(w.message) for w in record)
    assert "Pathfinder failed" in messages and "Laplace approximation failed" in messages
    np.testing.assert_array_equal(np.asarray(family.loc), centre.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(family.covariance), np.eye(2))


def test_errors_name_the_argument():
    target = gaussian_target(MEAN, COV)
    key = jax.random.PRNGKey(0)
    nowhere = probinf.from_logdensity(lambda z: jnp.sum(z) * jnp.nan, 2)
    with pytest.raises(ValueError, match="log density at `init` is nan"):
        initialize(key, nowhere)
    with pytest.raises(ValueError, match="`method` must be one of"):
        initialize(key, target, method="newton")
    with pytest.raises(ValueError, match="`family` must be one of"):
        initialize(key, target, family="diagonal")
    with pytest.raises(ValueError, match=r"`init` must have shape \(8,\)"):
        initialize(key, target, init=np.zeros(7))
    with pytest.raises(ValueError, match="`init` must be finite"):
        pathfinder(key, target, init=np.full(DIM, np.inf))
    with pytest.raises(ValueError, match=r"`init` must have shape \(8,\) or \(3, 8\)"):
        pathfinder(key, target, init=np.zeros((2, DIM)), num_paths=3)
    with pytest.raises(ValueError, match="`num_draws`"):
        pathfinder(key, target, num_draws=0)
    with pytest.raises(ValueError, match="`num_paths`"):
        pathfinder(key, target, num_paths=1.5)
    with pytest.raises(TypeError, match="`key`"):
        pathfinder(0, target)
    with pytest.raises(TypeError, match="probinf.Target"):
        initialize(key, gaussian_log_density)

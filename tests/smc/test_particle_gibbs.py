"""Conditional SMC and particle Gibbs against an exact linear-Gaussian posterior."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from probinf import smc
from probinf.exact import linear_gaussian_posterior
from probinf.smc.feynman_kac import GuidedParticles

T, A, Q, R, P0, PRIOR_SD = 20, 0.8, 0.5, 0.4, 1.0, 2.0


def base_model():
    return smc.LinearGaussianSSM(
        jnp.zeros(1), P0 * jnp.eye(1), A * jnp.eye(1), Q * jnp.eye(1), jnp.eye(1),
        R * jnp.eye(1), jnp.zeros((T, 1)),
    )


BASE = base_model()
_, _Y = BASE.simulate(jax.random.key(5), T)
Y = _Y + 1.0  # observations y_t = x_t + b + noise with b = 1


def exact_offset_posterior():
    """p(b | y) for y_t = x_t + b + e_t, b ~ N(0, PRIOR_SD^2): a joint Gaussian in (x_{0:T-1}, b)."""
    var = [P0]
    for _ in range(1, T):
        var.append(A * A * var[-1] + Q)
    cov = np.zeros((T + 1, T + 1))
    for i in range(T):
        for j in range(T):
            cov[i, j] = var[min(i, j)] * A ** abs(i - j)
    cov[T, T] = PRIOR_SD**2
    design = np.hstack([np.eye(T), np.ones((T, 1))])
    mean, post_cov, _ = linear_gaussian_posterior(np.zeros(T + 1), cov, design, np.asarray(Y[:, 0]), R * np.eye(T))
    return mean[T], np.sqrt(post_cov[T, T])


def build_model(offset):
    return smc.Bootstrap(BASE.with_observations(Y - offset))


def update_offset(key, offset, states):
    """Exact Gibbs conditional b | x, y (conjugate normal)."""
    precision = 1.0 / PRIOR_SD**2 + T / R
    mean = jnp.sum(Y[:, 0] - states[:, 0]) / R / precision
    return mean + jax.random.normal(key) / jnp.sqrt(precision)


@pytest.mark.parametrize("ancestor_sampling, num_particles", [(True, 16), (False, 64)])
def test_particle_gibbs_recovers_the_exact_parameter_posterior(ancestor_sampling, num_particles):
    # Without ancestor sampling the early states stick (path degeneracy), so that variant
    # gets more particles to mix in the same number of iterations.
    exact_mean, exact_sd = exact_offset_posterior()
    chains, iterations, burn_in, batch = 4, 1600, 100, 250

    def run(key):
        return smc.particle_gibbs(key, build_model, update_offset, jnp.float32(0.0), iterations,
                                  num_particles, ancestor_sampling=ancestor_sampling,
                                  chunk_size=iterations).parameters

    draws = np.asarray(jax.vmap(run)(jax.random.split(jax.random.key(0), chains)))[:, burn_in:]
    # Batch means: 4 chains x 6 batches of 250 draws, long next to the autocorrelation time
    # (lag-50 autocorrelation < 0.3 in both variants), treated as independent: a t-test.
    batches = draws.reshape(chains, -1, batch).mean(-1).reshape(-1)
    standard_error = batches.std(ddof=1) / np.sqrt(batches.size)
    assert abs(draws.mean() - exact_mean) < stats.t.isf(5e-4, batches.size - 1) * standard_error
    # The posterior sd, from about 300 effective draws: relative error about 4%.
    assert draws.std() == pytest.approx(exact_sd, rel=0.15)


def test_conditional_smc_keeps_the_smoothing_distribution():
    # Iterating CSMC from a reference gives a chain on trajectories whose marginal
    # means at each t approach the RTS smoothed means.
    model = smc.Bootstrap(BASE.with_observations(Y))
    exact = smc.rts_smoother(BASE.with_observations(Y))
    reference = jnp.zeros((T, 1))

    def body(reference, key):
        trajectory = smc.conditional_smc(key, model, reference, 16, ancestor_sampling=True).trajectory
        return trajectory, trajectory[:, 0]

    _, paths = jax.lax.scan(body, reference, jax.random.split(jax.random.key(1), 2100))
    paths = np.asarray(paths)[100:]
    batches = paths.reshape(20, 100, T).mean(1)
    standard_error = batches.std(0, ddof=1) / np.sqrt(20)
    z = stats.t.isf(1e-3 / (2 * T), df=19)
    assert np.all(np.abs(paths.mean(0) - np.asarray(exact.smoothed_means[:, 0])) < z * standard_error)


def test_conditional_smc_bad_input():
    model = build_model(0.0)
    with pytest.raises(ValueError, match="num_particles"):
        smc.conditional_smc(jax.random.key(0), model, jnp.zeros((T, 1)), 1)
    with pytest.raises(ValueError, match="reference"):
        smc.conditional_smc(jax.random.key(0), model, jnp.zeros((T + 1, 1)), 8)
    guided = smc.Guided(BASE.with_observations(Y), BASE.with_observations(Y).optimal_proposal())
    reference = GuidedParticles(jnp.zeros((T, 1)), jnp.zeros(T))
    with pytest.raises(ValueError, match="ancestor_sampling"):
        smc.conditional_smc(jax.random.key(0), guided, reference, 8, ancestor_sampling=True)
    # Without ancestor sampling conditional SMC runs on a guided model.
    out = smc.conditional_smc(jax.random.key(0), guided, reference, 8)
    assert out.trajectory.state.shape == (T, 1)


def test_particle_gibbs_bad_input():
    with pytest.raises(TypeError, match="update_parameters"):
        smc.particle_gibbs(jax.random.key(0), build_model, None, 0.0, 10, 8)
    with pytest.raises(ValueError, match="num_iterations"):
        smc.particle_gibbs(jax.random.key(0), build_model, update_offset, 0.0, 0, 8)
    with pytest.raises(ValueError, match="update_parameters"):
        smc.particle_gibbs(jax.random.key(0), build_model, lambda k, th, x: jnp.zeros(3), jnp.float32(0.0), 10, 8)
    guided = lambda b: smc.Guided(BASE.with_observations(Y - b), BASE.with_observations(Y - b).optimal_proposal())
    with pytest.raises(ValueError, match="Bootstrap"):
        smc.particle_gibbs(jax.random.key(0), guided, update_offset, jnp.float32(0.0), 10, 8)

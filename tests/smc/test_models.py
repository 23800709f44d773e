"""The linear-Gaussian state-space model: shapes, simulation and its optimal proposal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf.exact import linear_gaussian_posterior
from probinf.smc.models import LinearGaussianSSM, gaussian_log_density

PIECES = dict(
    initial_mean=jnp.zeros(2),
    initial_cov=jnp.eye(2),
    transition_matrix=0.9 * jnp.eye(2),
    transition_cov=0.2 * jnp.eye(2),
    observation_matrix=jnp.array([[1.0, -1.0]]),
    observation_cov=jnp.array([[0.5]]),
    observations=jnp.ones((4, 1)),
)


@pytest.mark.parametrize(
    "name, value",
    [
        ("initial_cov", jnp.eye(3)),
        ("transition_matrix", jnp.eye(3)),
        ("transition_cov", jnp.ones(2)),
        ("observation_matrix", jnp.ones((1, 3))),
        ("observation_cov", jnp.eye(2)),
        ("observations", jnp.ones((4, 2))),
        ("initial_mean", jnp.zeros((2, 2))),
        ("transition_cov", jnp.full((2, 2), jnp.nan)),
    ],
)
def test_mismatched_shapes_name_the_piece(name, value):
    with pytest.raises(ValueError, match=name):
        LinearGaussianSSM(**{**PIECES, name: value})


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("initial_cov", -jnp.eye(2), r"positive semi-definite\), got smallest eigenvalue -1"),
        ("transition_cov", jnp.array([[1.0, 2.0], [2.0, 1.0]]), "smallest eigenvalue -1"),
        ("observation_cov", jnp.array([[-0.5]]), "smallest eigenvalue -0.5"),
        ("initial_cov", jnp.array([[1.0, 0.5], [0.0, 1.0]]), "symmetric covariance matrix"),
        ("initial_cov", jnp.array([[1.0, jnp.inf], [jnp.inf, 1.0]]), r"must be finite, got inf at index \(0, 1\)"),
        ("observations", jnp.ones((4, 1)).at[2, 0].set(jnp.nan), r"must be finite, got nan at index \(2, 0\)"),
    ],
)
def test_covariances_must_be_positive_semi_definite(name, value, message):
    # Before: kalman_filter on P0 = -I returned log_evidence = nan without a word.
    with pytest.raises(ValueError, match=f"`{name}` .*{message}"):
        LinearGaussianSSM(**{**PIECES, name: value})


def test_simulate_shapes_and_bad_length():
    model = LinearGaussianSSM(**PIECES)
    states, observations = model.simulate(jax.random.key(0), 7)
    assert states.shape == (7, 2) and observations.shape == (7, 1)
    assert model.with_observations(observations).num_steps == 7
    with pytest.raises(ValueError, match="num_steps"):
        model.simulate(jax.random.key(0), 0)


def test_gaussian_log_density_matches_scipy():
    from scipy.stats import multivariate_normal

    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    x = np.array([[0.1, -0.4], [1.0, 2.0]])
    expected = multivariate_normal(mean=[0.2, 0.1], cov=cov).logpdf(x)
    np.testing.assert_allclose(gaussian_log_density(jnp.asarray(x), jnp.array([0.2, 0.1]), jnp.asarray(cov)),
                               expected, rtol=1e-5)


def test_optimal_proposal_is_the_exact_conditional():
    # q(x_t | x_{t-1}) = p(x_t | x_{t-1}, y_t): the posterior of N(F x_{t-1}, Q) given y_t.
    model = LinearGaussianSSM(**PIECES)
    proposal = model.optimal_proposal()
    x_prev = jnp.array([[0.3, -0.2]])
    mean, cov = proposal._moments(2, x_prev)
    expected_mean, expected_cov, _ = linear_gaussian_posterior(
        np.asarray(x_prev[0] @ model.transition_matrix.T), np.asarray(model.transition_cov),
        np.asarray(model.observation_matrix), np.asarray(model.observations[2]),
        np.asarray(model.observation_cov),
    )
    np.testing.assert_allclose(mean[0], expected_mean, atol=1e-6)
    np.testing.assert_allclose(cov, expected_cov, atol=1e-6)
    x, log_q = proposal.sample(jax.random.key(0), 2, x_prev)
    np.testing.assert_allclose(log_q, gaussian_log_density(x, mean, cov), rtol=1e-6)

import jax.numpy as jnp
import numpy as np
import pytest

import probinf


def test_to_inference_data_shapes_and_errors():
    idata = probinf.to_inference_data({"mu": np.zeros((2, 50)), "theta": np.zeros((2, 50, 3))})
    assert idata.posterior["theta"].shape == (2, 50, 3)
    with pytest.raises(ValueError, match="empty"):
        probinf.to_inference_data({})
    with pytest.raises(ValueError, match="chains, draws"):
        probinf.to_inference_data({"a": np.zeros((2, 5)), "b": np.zeros((3, 5))})


def test_effective_sample_size():
    assert float(probinf.effective_sample_size(jnp.zeros(10))) == pytest.approx(10.0)
    one_hot = jnp.array([0.0, -jnp.inf, -jnp.inf])
    assert float(probinf.effective_sample_size(one_hot)) == pytest.approx(1.0)
    w = np.array([0.5, 0.3, 0.2])
    expected = w.sum() ** 2 / (w**2).sum()
    assert float(probinf.effective_sample_size(jnp.log(w) + 4.0)) == pytest.approx(expected, rel=1e-5)


def test_linear_gaussian_posterior_against_brute_force():
    """Posterior moments by dense quadrature on a 1-d problem."""
    mean, cov, log_z = probinf.exact.linear_gaussian_posterior(
        [1.0], [[2.0]], [[1.0], [0.5]], [0.3, 1.2], np.diag([0.5, 0.8])
    )
    grid = np.linspace(-15, 15, 200_001)
    dx = grid[1] - grid[0]
    log_prior = -0.5 * (grid - 1.0) ** 2 / 2.0 - 0.5 * np.log(2 * np.pi * 2.0)
    log_lik = (-0.5 * (0.3 - grid) ** 2 / 0.5 - 0.5 * np.log(2 * np.pi * 0.5)
               - 0.5 * (1.2 - 0.5 * grid) ** 2 / 0.8 - 0.5 * np.log(2 * np.pi * 0.8))
    joint = np.exp(log_prior + log_lik)
    evidence = joint.sum() * dx
    assert log_z == pytest.approx(np.log(evidence), abs=1e-8)
    post_mean = (grid * joint).sum() * dx / evidence
    assert mean[0] == pytest.approx(post_mean, abs=1e-8)
    assert cov[0, 0] == pytest.approx(((grid - post_mean) ** 2 * joint).sum() * dx / evidence, abs=1e-8)
    with pytest.raises(ValueError, match="design"):
        probinf.exact.linear_gaussian_posterior([0.0], [[1.0]], [[1.0, 2.0]], [0.0], [[1.0]])

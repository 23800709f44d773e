"""The test targets: energies at hand-computed points, and log normalisers checked by an
independent Monte Carlo estimate."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows.potentials import neal_funnel, rezende_mohamed


def test_energies_at_known_points():
    # U1 at (2, 0): radius term 0, and -log(e^0 + e^{-0.5 (4/0.6)^2}).
    target, _ = rezende_mohamed("U1")
    expected = np.log1p(np.exp(-0.5 * (4 / 0.6) ** 2))  # log density = -U1
    np.testing.assert_allclose(target.log_density(jnp.array([2.0, 0.0])), expected, atol=1e-6)
    # U2 at (1, 1): w1 = sin(pi/2) = 1, so U2 = 0 and only the prior remains.
    target, _ = rezende_mohamed("U2", prior_scale=2.0)
    prior = -0.5 * (1 + 1) / 4.0 - np.log(2 * np.pi * 4.0)
    np.testing.assert_allclose(target.log_density(jnp.array([1.0, 1.0])), prior, atol=1e-6)


@pytest.mark.parametrize("name,prior_scale", [("U1", None), ("U3", 2.0)])
def test_log_normaliser_matches_monte_carlo(name, prior_scale):
    """Z = E_r[exp(-U) (prior) / r] with a wide Gaussian r; the estimate is within 4 standard errors."""
    target, log_z = rezende_mohamed(name, prior_scale=prior_scale)
    rng = np.random.default_rng(0)
    scale = 3.0
    z = rng.normal(0.0, scale, size=(400_000, 2)).astype(np.float32)
    log_r = -0.5 * np.sum(z**2, -1) / scale**2 - np.log(2 * np.pi * scale**2)
    weights = np.exp(np.asarray(target.log_density(jnp.asarray(z)), np.float64) - log_r)
    estimate, standard_error = weights.mean(), weights.std() / np.sqrt(weights.size)
    assert abs(estimate - math.exp(log_z)) < 4 * standard_error


def test_funnel_is_normalised():
    target, log_z = neal_funnel(2)
    assert log_z == 0.0
    x = np.linspace(-300, 300, 120001)
    # Integrating x out leaves the N(0, 9) density of v, which integrates to 1: log Z = 0.
    for vi in (-3.0, 0.0, 4.0):
        density = np.exp(np.asarray(target.log_density(jnp.asarray(np.stack([np.full_like(x, vi), x], -1), jnp.float32)), np.float64))
        marginal = np.trapezoid(density, x)
        np.testing.assert_allclose(marginal, np.exp(-0.5 * vi**2 / 9) / np.sqrt(2 * np.pi * 9), rtol=1e-4)


def test_bad_potential_arguments():
    with pytest.raises(ValueError, match="name"):
        rezende_mohamed("U5")
    with pytest.raises(ValueError, match="prior_scale"):
        rezende_mohamed("U2")
    with pytest.raises(ValueError, match="prior_scale"):
        rezende_mohamed("U1", prior_scale=-1.0)
    with pytest.raises(ValueError, match="dim"):
        neal_funnel(1)
    assert flows.potentials.POTENTIALS == ("U1", "U2", "U3", "U4")
    assert jax.numpy.isfinite(neal_funnel(3)[0].log_density(jnp.zeros(3)))

"""probinf.pcn.generative: sampling moments, reconstruction and recall against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf import pcn
from probinf.exact import linear_gaussian_posterior

PRIOR_VAR, NOISE_VAR = 1.5, 0.4


def _linear_net(key, latent=2, data=4):
    key_w, key_m = jax.random.split(key)
    return pcn.PCN(
        [pcn.Dense(latent, data, key=key_w)], (latent,), variances=[NOISE_VAR],
        prior_variance=PRIOR_VAR, prior_mean=jax.random.normal(key_m, (latent,)),
    )


def _weights(net):
    layer = net.layers[0].linear
    return np.asarray(layer.weight, np.float64), np.asarray(layer.bias, np.float64)


@pytest.mark.parametrize("noise", [False, True])
def test_sample_moments_match_the_linear_gaussian_model(noise):
    net = _linear_net(jax.random.key(0))
    w, b = _weights(net)
    m0 = np.asarray(net.prior_mean, np.float64)
    mean = w @ m0 + b
    cov = PRIOR_VAR * w @ w.T + (NOISE_VAR * np.eye(4) if noise else 0.0)
    n = 40_000
    draws = np.asarray(pcn.sample(jax.random.key(1), net, n, noise=noise), np.float64)
    assert draws.shape == (n, 4)
    # Five standard errors: of a mean, sqrt(S_ii / n); of a covariance, sqrt((S_ii S_jj + S_ij^2) / n).
    np.testing.assert_array_less(np.abs(draws.mean(0) - mean), 5 * np.sqrt(np.diag(cov) / n))
    cov_se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    np.testing.assert_array_less(np.abs(np.cov(draws.T) - cov), 5 * cov_se)


def test_reconstruction_decodes_the_posterior_mean():
    with jax.enable_x64(True):
        net = _linear_net(jax.random.key(2))
        w, b = _weights(net)
        y = jax.random.normal(jax.random.key(3), (3, 4))
        recon = pcn.reconstruct(net, y, steps=400, step_size=0.1, method="heun")
        for row in range(3):
            mean, _, _ = linear_gaussian_posterior(
                np.asarray(net.prior_mean), PRIOR_VAR * np.eye(2), w, np.asarray(y[row]) - b,
                NOISE_VAR * np.eye(4),
            )
            np.testing.assert_allclose(recon[row], w @ mean + b, rtol=1e-8, atol=1e-8)


def test_recall_completes_missing_entries_with_the_exact_conditional_mean():
    with jax.enable_x64(True):
        net = _linear_net(jax.random.key(4), latent=2, data=5)
        w, b = _weights(net)
        observed = np.array([True, False, True, True, False])
        y = np.asarray(jax.random.normal(jax.random.key(5), (3, 5)))
        y_with_gaps = np.where(observed, y, np.nan)  # missing entries may hold anything
        completed = pcn.recall(net, y_with_gaps, observed, steps=600, step_size=0.1, method="heun")
        for row in range(3):
            mean, _, _ = linear_gaussian_posterior(
                np.asarray(net.prior_mean), PRIOR_VAR * np.eye(2), w[observed],
                y[row, observed] - b[observed], NOISE_VAR * np.eye(observed.sum()),
            )
            np.testing.assert_allclose(completed[row, observed], y[row, observed], rtol=1e-12)
            np.testing.assert_allclose(
                completed[row, ~observed], w[~observed] @ mean + b[~observed], rtol=1e-7, atol=1e-8
            )


def test_generative_errors():
    no_prior = pcn.mlp(jax.random.key(6), [2, 3])
    classifier = pcn.mlp(jax.random.key(6), [2, 3], output="categorical", prior_variance=1.0)
    net = _linear_net(jax.random.key(7))
    with pytest.raises(ValueError, match="prior_variance"):
        pcn.sample(jax.random.key(0), no_prior, 5)
    with pytest.raises(ValueError, match="Gaussian last node"):
        pcn.sample(jax.random.key(0), classifier, 5)
    with pytest.raises(ValueError, match="num_samples"):
        pcn.sample(jax.random.key(0), net, 0)
    with pytest.raises(TypeError, match="key"):
        pcn.sample(0, net, 3)
    with pytest.raises(ValueError, match="Gaussian last node"):
        pcn.reconstruct(classifier, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="y_mask"):
        pcn.recall(net, jnp.ones((2, 4)), jnp.ones(3, bool))
    with pytest.raises(ValueError, match="`y` must have shape"):
        pcn.reconstruct(net, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="steps"):
        pcn.recall(net, jnp.ones((2, 4)), jnp.ones(4, bool), steps=0)

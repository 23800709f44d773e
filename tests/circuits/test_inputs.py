"""Input layers against scipy's distributions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import circuits


def test_categorical_with_many_categories_uses_the_gather_path_and_matches_scipy():
    layer = circuits.Categorical(40)
    params = layer.init_params(jax.random.key(0), 3, 2)
    x = jax.random.randint(jax.random.key(1), (3, 5), 0, 40)
    ours = np.asarray(layer.log_prob(params, x))
    probs = np.asarray(jax.nn.softmax(params["logits"], -1), np.float64)
    for s in range(3):
        for k in range(2):
            expected = np.log(probs[s, k][np.asarray(x[s])])
            np.testing.assert_allclose(ours[s, :, k], expected, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(layer.mode(params)), probs.argmax(-1))


@pytest.mark.parametrize("layer", [circuits.Bernoulli(), circuits.Binomial(5),
                                   circuits.Categorical(4)])
def test_discrete_modes_and_their_log_probabilities(layer):
    params = layer.init_params(jax.random.key(2), 3, 2)
    upper = {"Bernoulli": 1, "Binomial": 5, "Categorical": 3}[type(layer).__name__]
    values = jnp.broadcast_to(jnp.arange(upper + 1), (3, upper + 1))
    table = np.asarray(layer.log_prob(params, values))  # (S, values, K)
    np.testing.assert_array_equal(np.asarray(layer.mode(params)), table.argmax(1))
    np.testing.assert_allclose(np.asarray(layer.mode_log_prob(params)), table.max(1), rtol=1e-5)


def test_binomial_and_gaussian_log_probabilities_match_scipy():
    binomial = circuits.Binomial(7)
    params = binomial.init_params(jax.random.key(3), 2, 3)
    x = jnp.array([[0, 3, 7], [5, 1, 2]])
    p = np.asarray(jax.nn.sigmoid(params["logits"]), np.float64)
    expected = stats.binom.logpmf(np.asarray(x)[..., None], 7, p[:, None, :])
    np.testing.assert_allclose(np.asarray(binomial.log_prob(params, x)), expected, rtol=1e-5)
    gaussian = circuits.Gaussian()
    params = gaussian.init_params(jax.random.key(4), 2, 3)
    x = jnp.array([[0.3, -1.0], [2.0, 0.0]])
    loc = np.asarray(params["loc"], np.float64)[:, None, :]
    scale = np.exp(np.asarray(params["log_scale"], np.float64))[:, None, :]
    expected = stats.norm.logpdf(np.asarray(x)[..., None], loc, scale)
    np.testing.assert_allclose(np.asarray(gaussian.log_prob(params, x)), expected, rtol=1e-5)


@pytest.mark.parametrize("make, message", [
    (lambda: circuits.Categorical(1), "num_categories"),
    (lambda: circuits.Binomial(0), "total_count"),
])
def test_layer_arguments_are_checked(make, message):
    with pytest.raises(ValueError, match=message):
        make()

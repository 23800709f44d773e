"""NPE with a conditional flow from ``flows``, checked against an exact Gaussian posterior."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

from amortized import MixturePosterior, monte_carlo_kl, sbc, train_npe
from amortized.calibration import sample_posteriors
from amortized.tasks import GaussianLinear


@pytest.fixture(scope="module")
def npe():
    task = GaussianLinear(dim=2)
    result = train_npe(jax.random.key(0), task, num_simulations=3000, num_layers=3, width=32,
                       max_epochs=40, patience=8, batch_size=100, learning_rate=1e-3, progress=False)
    return task, result


def test_npe_posterior_is_close_to_the_exact_one(npe):
    task, result = npe
    test = task.simulate(jax.random.key(1), 50)

    @eqx.filter_jit
    def kls(posterior, batch, key):
        def one(prior, y, m, k):
            exact = task.exact_posterior(prior, y, m)
            z = exact.sample(k, 2000)
            return jnp.mean(exact.log_prob(z) - posterior.log_prob(z, (prior, y, m)))

        return jax.vmap(one)(batch.prior, batch.observations, batch.mask, jax.random.split(key, 50))

    kl = kls(result.posterior, test, jax.random.key(2))
    kl_prior = jax.vmap(lambda y: monte_carlo_kl(jax.random.key(3), task.exact_posterior(task.prior, y), task.prior, 2000))(test.observations)
    assert float(kl_prior.mean()) > 0.5
    assert float(kl.mean()) < 0.1
    assert result.validation_losses.min() < result.validation_losses[0]


def test_npe_posterior_is_calibrated(npe):
    task, result = npe
    test = task.simulate(jax.random.key(4), 200)
    observations = (test.prior, test.observations, test.mask)
    assert sbc(jax.random.key(5), result.posterior, test.theta, observations).passed(0.01)
    exact = MixturePosterior(lambda o: task.exact_posterior(*o))
    assert sample_posteriors(jax.random.key(6), exact, observations, 3).shape == (200, 3, 2)


def test_bad_npe_input_is_rejected(npe):
    task, result = npe
    with pytest.raises(ValueError, match="num_simulations"):
        train_npe(jax.random.key(0), task, num_simulations=50, batch_size=100)
    with pytest.raises(ValueError, match="validation_fraction"):
        train_npe(jax.random.key(0), task, num_simulations=500, validation_fraction=1.5)
    with pytest.raises(TypeError, match="observation"):
        result.posterior.sample(jax.random.key(0), jnp.zeros((1, 2)), 5)

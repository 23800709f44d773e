"""NPE with a conditional flow from ``flows``, checked against an exact Gaussian posterior."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from amortized import MixturePosterior, NPEPosterior, monte_carlo_kl, sbc, train_npe
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


def test_symmetric_npe_averages_the_flow_over_sign_flips(npe):
    task, result = npe
    base = result.posterior
    sym = NPEPosterior(base.flow, base.theta_loc, base.theta_scale, base.context_loc, base.context_scale, (0,))
    test = task.simulate(jax.random.key(7), 1)
    obs = (task.prior, test.observations[0], test.mask[0])
    theta = jnp.asarray(np.random.default_rng(0).normal(size=(6, 2)) * 0.5)
    flip = jnp.array([-1.0, 1.0])

    # One compiled program instead of many eager dispatches: fewer compiled programs
    # (each holds memory mappings; see tests/conftest.py).
    @eqx.filter_jit
    def evaluate(base, sym, theta, obs):
        return (base.log_prob(theta, obs), base.log_prob(theta * flip, obs), sym.log_prob(theta, obs),
                sym.log_prob(theta * flip, obs), sym.sample(jax.random.key(8), obs, 4000),
                base.sample(jax.random.key(9), obs, 4000))

    base_lp, base_flipped, sym_lp, sym_flipped, draws, reference = evaluate(base, sym, theta, obs)
    expected = jnp.logaddexp(base_lp, base_flipped) - np.log(2)
    np.testing.assert_allclose(sym_lp, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sym_flipped, sym_lp, rtol=1e-5, atol=1e-5)
    draws, reference = np.asarray(draws), np.asarray(reference)
    # |theta_0| keeps the flow's law; its sign is a fair coin.
    assert abs(np.mean(draws[:, 0] < 0) - 0.5) < 0.03
    assert stats.ks_2samp(np.abs(draws[:, 0]), np.abs(reference[:, 0])).pvalue > 1e-3
    trained = train_npe(jax.random.key(0), task, num_simulations=400, num_layers=1, width=8, max_epochs=2,
                        batch_size=100, symmetric_axes=(1,), progress=False)
    assert trained.posterior.symmetric_axes == (1,)
    assert float(trained.posterior.theta_loc[1]) == 0.0 and np.isfinite(trained.validation_losses).all()
    with pytest.raises(ValueError, match="symmetric_axes"):
        train_npe(jax.random.key(0), task, num_simulations=400, batch_size=100, symmetric_axes=(2,))




def test_a_second_call_with_the_same_shapes_compiles_nothing(record_compilations):
    """The optimizer is cached per learning rate and the loss is hashable: nothing recompiles."""
    task = GaussianLinear(dim=2)

    def fit(seed):  # the small configuration of the test above: compiled once per module
        return train_npe(jax.random.key(seed), task, num_simulations=400, num_layers=1, width=8, max_epochs=2,
                         batch_size=100, symmetric_axes=(1,), progress=False)

    fit(0)
    with record_compilations() as compiled:
        fit(1)
    assert compiled == []

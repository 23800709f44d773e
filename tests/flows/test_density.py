"""Density estimation by maximum likelihood: exact recovery of the Gaussian MLE,
recovery of a known mixture, a conditional density, early stopping, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import flows
from flows import Flow, LULinear, fit_to_data

KEY = jax.random.key(0)


def test_linear_flow_recovers_the_gaussian_mle():
    """Flow(LULinear) is N(b, W W^T); its MLE is the sample mean and the (1/n) sample covariance."""
    rng = np.random.default_rng(0)
    data = rng.multivariate_normal([1.0, -2.0, 0.5], [[2.0, 0.8, 0.0], [0.8, 1.0, -0.3], [0.0, -0.3, 0.5]], 2000)
    result = fit_to_data(KEY, Flow(LULinear(3, key=KEY)), data, validation_fraction=0.0, batch_size=2000,
                         max_epochs=300, optimizer=optax.adam(5e-2), progress=False)
    layer = result.flow.bijection
    matrix = np.asarray(layer.matrix, np.float64)
    np.testing.assert_allclose(layer.bias, data.mean(0), atol=1e-4)
    np.testing.assert_allclose(matrix @ matrix.T, np.cov(data.T, bias=True), atol=1e-4)
    assert result.stop_reason == "max_epochs" and len(result.train_losses) == 300


def _mixture_sample(rng, n):
    centres = np.array([[-2.0, 0.0], [2.0, 1.0]])
    labels = rng.integers(0, 2, n)
    return centres[labels] + 0.5 * rng.normal(size=(n, 2))


def _mixture_log_density(x):
    centres = np.array([[-2.0, 0.0], [2.0, 1.0]])
    sq = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
    return np.log(0.5) + np.logaddexp(*(-sq / (2 * 0.25)).T) - np.log(2 * np.pi * 0.25)


def test_spline_flow_recovers_a_gaussian_mixture():
    """KL(p || q) estimated on fresh draws (mean of log p - log q) is below 0.05 nats."""
    rng = np.random.default_rng(1)
    flow = flows.spline_flow(KEY, 2, num_layers=4, width=32)
    result = fit_to_data(KEY, flow, _mixture_sample(rng, 4000), batch_size=256, max_epochs=60,
                         patience=10, optimizer=optax.adam(3e-3), progress=False)
    test = _mixture_sample(rng, 20_000)
    gap = _mixture_log_density(test) - np.asarray(result.flow.log_prob(jnp.asarray(test, jnp.float32)), np.float64)
    assert gap.mean() + 3 * gap.std() / np.sqrt(gap.size) < 0.05, gap.mean()


def test_conditional_density_estimation():
    """x | c ~ N(2c, 0.5^2): a conditional affine MAF learns the conditional density.

    With 20,000 draws the standard error of the fitted log density is ~0.01, so 0.05 is
    about four standard errors plus the network's approximation error."""
    rng = np.random.default_rng(2)
    context = rng.uniform(-1, 1, (20_000, 1))
    data = 2 * context + 0.5 * rng.normal(size=(20_000, 1))
    flow = flows.masked_autoregressive_flow(KEY, 1, num_layers=1, width=16, context_dim=1,
                                            activation=jnp.tanh)
    schedule = optax.cosine_decay_schedule(1e-2, 60 * 40)  # 60 epochs of 40 batches
    result = fit_to_data(KEY, flow, data, context=context, batch_size=500, max_epochs=60,
                         validation_fraction=0.0, optimizer=optax.adam(schedule), progress=False)
    grid_c = np.linspace(-0.9, 0.9, 7)[:, None]
    grid_x = 2 * grid_c + np.array([[-0.5], [0.0], [0.5]])[:, :, None].reshape(3, 1, 1)
    exact = -0.5 * ((grid_x - 2 * grid_c) / 0.5) ** 2 - np.log(0.5 * np.sqrt(2 * np.pi))
    ours = result.flow.log_prob(jnp.asarray(grid_x, jnp.float32), jnp.asarray(grid_c, jnp.float32))
    np.testing.assert_allclose(ours, exact[..., 0], atol=0.05)


def test_early_stopping_keeps_the_best_epoch():
    rng = np.random.default_rng(3)
    data = rng.normal(size=(60, 2))  # tiny: a wide flow overfits quickly
    flow = flows.spline_flow(KEY, 2, num_layers=4, width=64)
    result = fit_to_data(KEY, flow, data, validation_fraction=0.5, batch_size=30, max_epochs=2000,
                         patience=5, optimizer=optax.adam(1e-2), progress=False)
    assert result.stop_reason == "early_stopping"
    assert len(result.validation_losses) == len(result.train_losses) < 2000
    assert result.best_epoch == int(np.argmin(result.validation_losses))
    assert len(result.validation_losses) - 1 - result.best_epoch == 5


def test_bad_input():
    flow = flows.spline_flow(KEY, 2, num_layers=1, width=8)
    good = np.zeros((10, 2))
    with pytest.raises(ValueError, match="data"):
        fit_to_data(KEY, flow, np.array([[0.0, np.nan]] * 10))
    with pytest.raises(ValueError, match="data"):
        fit_to_data(KEY, flow, np.array([[0.0, np.inf]] * 10))
    with pytest.raises(ValueError, match="data"):
        fit_to_data(KEY, flow, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="context"):
        fit_to_data(KEY, flow, good, context=np.zeros((10, 1)))
    conditional = flows.spline_flow(KEY, 2, num_layers=1, width=8, context_dim=1)
    with pytest.raises(ValueError, match="context"):
        fit_to_data(KEY, conditional, good)
    with pytest.raises(ValueError, match="context"):
        fit_to_data(KEY, conditional, good, context=np.zeros((9, 1)))
    with pytest.raises(ValueError, match="context"):
        fit_to_data(KEY, conditional, good, context=np.full((10, 1), np.nan))
    with pytest.raises(ValueError, match="validation_fraction"):
        fit_to_data(KEY, flow, good, validation_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        fit_to_data(KEY, flow, good, batch_size=0)
    with pytest.raises(TypeError, match="flow"):
        fit_to_data(KEY, flow.bijection, good)
    with pytest.raises(TypeError, match="key"):
        fit_to_data(0, flow, good)
    with pytest.raises(TypeError, match="optimizer"):
        fit_to_data(KEY, flow, good, optimizer="adam")




def test_a_second_fit_with_the_same_shapes_compiles_nothing(record_compilations):
    """The default optimizer is one shared object, so the compiled loop is reused."""
    data = np.random.default_rng(4).normal(size=(200, 2))

    def fit(seed):
        flow = flows.spline_flow(jax.random.key(9), 2, num_layers=1, width=8)
        return fit_to_data(jax.random.key(seed), flow, data, max_epochs=2, batch_size=32, progress=False)

    fit(0)
    with record_compilations() as compiled:
        fit(1)
    assert compiled == []

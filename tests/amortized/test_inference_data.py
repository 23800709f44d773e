"""ArviZ export of amortized posteriors, against the exact conjugate posterior, its exact
leave-one-out predictive densities and closed-form likelihoods."""

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import special, stats

import amortized
import flows
from amortized import DistributionTransformer, MixturePosterior, NPEPosterior
from amortized.npe import flatten_context
from amortized.tasks import ConjugateGaussian, LogisticRegression

TASK = ConjugateGaussian(2, max_components=2, num_observations=(5, 7))
EXACT = MixturePosterior(lambda observation: TASK.exact_posterior(*observation))


def one_observation(task, seed):
    batch = task.simulate(jax.random.key(seed), 1)
    return (jax.tree.map(lambda leaf: leaf[0], batch.prior), batch.observations[0], batch.mask[0])


OBSERVATION = one_observation(TASK, 0)


def exact_loo(observation):
    """log p(y_i | y_-i) per real row: the exact posterior without row i (a mixture),
    pushed through y = A theta + b + N(0, R)."""
    prior, rows, mask = observation
    design, noise = np.asarray(TASK.design, np.float64), np.asarray(TASK.noise_covariance, np.float64)
    out = []
    for i in np.flatnonzero(np.asarray(mask)):
        without = TASK.exact_posterior(prior, rows, mask.at[i].set(False))
        terms = []
        for log_w, mean, tril in zip(np.asarray(without.log_weights, np.float64),
                                     np.asarray(without.means, np.float64),
                                     np.asarray(without.scale_tril, np.float64), strict=True):
            if np.isfinite(log_w):
                cov = design @ tril @ tril.T @ design.T + noise
                terms.append(log_w + stats.multivariate_normal.logpdf(
                    np.asarray(rows[i], np.float64), design @ mean + np.asarray(TASK.offset), cov))
        out.append(special.logsumexp(terms))
    return np.array(out)


def test_exact_posterior_export_has_every_group_and_the_exact_loo():
    idata = amortized.to_inference_data(jax.random.key(1), EXACT, OBSERVATION, 1000, task=TASK,
                                        num_chains=2)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    theta = idata.posterior["theta"].values
    assert theta.shape == (2, 1000, 2)
    _, rows, mask = OBSERVATION
    real = np.asarray(rows)[np.asarray(mask)]
    np.testing.assert_array_equal(idata.observed_data["y"], real)  # padding rows dropped
    # y_j ~ N(A theta + b, R) with A = I, b = 0, R = I here.
    expected = stats.norm.logpdf(real[None, None], theta[:, :, None], 1.0).sum(-1)
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(idata.sample_stats["log_q"],
                               EXACT.log_prob(jnp.asarray(theta), OBSERVATION), rtol=1e-5)
    loo = az.loo(idata, pointwise=True)
    exact = exact_loo(OBSERVATION)
    # PSIS-LOO of 2,000 exact draws: Monte Carlo error of a few hundredths.
    assert abs(loo.elpd_loo - exact.sum()) < 0.1
    np.testing.assert_allclose(loo.loo_i.values, exact, atol=0.05)
    summary = az.summary(idata)
    exact_mean = np.asarray(TASK.exact_posterior(*OBSERVATION).mean, np.float64)
    np.testing.assert_allclose(summary["mean"].values, exact_mean, atol=0.1)
    az.plot_posterior(idata)
    plt.close("all")


def test_distribution_transformer_and_npe_export():
    model = DistributionTransformer(2, 2, key=jax.random.key(2), d_model=16, num_heads=2)
    idata = amortized.to_inference_data(jax.random.key(3), model, OBSERVATION, 200, task=TASK)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    np.testing.assert_allclose(idata.sample_stats["log_q"][0],
                               model(*OBSERVATION).log_prob(jnp.asarray(idata.posterior["theta"][0])),
                               rtol=1e-5)
    assert np.isfinite(az.loo(idata).elpd_loo)
    # An (untrained) NPE posterior: the export only needs sample and log_prob.
    context_dim = flatten_context(*OBSERVATION).shape[0]
    flow = flows.spline_flow(jax.random.key(4), 2, num_layers=1, width=8, context_dim=context_dim)
    npe = NPEPosterior(flow, jnp.zeros(2), jnp.ones(2), jnp.zeros(context_dim), jnp.ones(context_dim))
    idata = amortized.to_inference_data(jax.random.key(5), npe, OBSERVATION, 200, task=TASK)
    np.testing.assert_allclose(idata.sample_stats["log_q"][0],
                               npe.log_prob(jnp.asarray(idata.posterior["theta"][0]), OBSERVATION),
                               rtol=1e-4, atol=1e-4)
    assert np.isfinite(az.loo(idata).elpd_loo)
    az.summary(idata)


def test_without_a_task_or_with_a_factor_likelihood_there_is_no_log_likelihood():
    idata = amortized.to_inference_data(jax.random.key(6), EXACT, OBSERVATION, 100)
    assert set(idata.groups()) == {"posterior", "sample_stats"}
    with pytest.raises(TypeError, match="log likelihood not found"):
        az.loo(idata)
    logistic = LogisticRegression(2, num_observations=(5, 8))
    prior_only = MixturePosterior(lambda observation: observation[0])
    idata = amortized.to_inference_data(jax.random.key(7), prior_only, one_observation(logistic, 1),
                                        100, task=logistic)
    assert "log_likelihood" not in idata.groups()  # numpyro.factor: no per-row likelihood


def test_bad_input_is_rejected():
    with pytest.raises(TypeError, match="posterior"):
        amortized.to_inference_data(jax.random.key(0), object(), OBSERVATION, 10)
    with pytest.raises(TypeError, match="triple"):
        amortized.to_inference_data(jax.random.key(0), EXACT, OBSERVATION[1], 10)
    with pytest.raises(ValueError, match="num_chains"):
        amortized.to_inference_data(jax.random.key(0), EXACT, OBSERVATION, 10, num_chains=0)

"""ArviZ export of particle filters (filtering and smoothing draws) and particle Gibbs,
against the exact Kalman / RTS answers and closed-form observation densities."""

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from probinf import smc
from probinf.smc.particle_gibbs import ParticleGibbsResult

T, A, Q, R = 12, 0.9, 0.5, 0.3
CHAINS, PARTICLES = 8, 512


def make_model():
    model = smc.LinearGaussianSSM(jnp.zeros(1), jnp.eye(1), A * jnp.eye(1), Q * jnp.eye(1),
                                  jnp.eye(1), R * jnp.eye(1), jnp.zeros((T, 1)))
    _, y = model.simulate(jax.random.key(0), T)
    return model.with_observations(y)


MODEL = make_model()
BOOTSTRAP = smc.Bootstrap(MODEL)
EXACT = smc.rts_smoother(MODEL)


@pytest.fixture(scope="module")
def runs():
    """Independent filters with their history: one chain each."""
    run = jax.vmap(lambda k: smc.particle_filter(k, BOOTSTRAP, PARTICLES, store_history=True))
    return run(jax.random.split(jax.random.key(1), CHAINS))


def assert_means_match(draws, exact_means):
    """Per step, a t-test across chains of the chain means (Bonferroni over the steps)."""
    chain_means = np.asarray(draws, np.float64).mean(axis=1)  # (chains, T)
    error = chain_means.mean(0) - np.asarray(exact_means, np.float64)
    standard_error = chain_means.std(0, ddof=1) / np.sqrt(chain_means.shape[0])
    limit = stats.t.isf(1e-3 / (2 * T), chain_means.shape[0] - 1)
    assert np.all(np.abs(error) < limit * standard_error), (error, standard_error)


def check_arviz_functions(idata, var_names):
    summary = az.summary(idata, var_names=var_names)
    assert np.all(np.isfinite(summary["mean"]))
    az.plot_posterior(idata, var_names=var_names[:1], coords={"time": [0]}
                      if "time" in idata.posterior[var_names[0]].dims else None)
    plt.close("all")


def test_filtering_draws_follow_the_kalman_filter(runs):
    idata = runs.to_inference_data(jax.random.key(2), BOOTSTRAP)
    x = idata.posterior["x"]
    assert x.dims == ("chain", "draw", "time", "x_dim_1") and x.shape == (CHAINS, PARTICLES, T, 1)
    assert_means_match(x.values[..., 0], EXACT.filtered_means[:, 0])
    # Filtering marginals are no joint posterior: no log likelihood for LOO. Their
    # leave-future-out counterparts, the one-step-ahead predictive densities, are kept.
    assert "log_likelihood" not in idata.groups()
    increments = idata.sample_stats["log_evidence_increment"]
    assert increments.dims == ("chain", "time")
    np.testing.assert_allclose(increments.sum("time"), runs.log_evidence, rtol=1e-5)
    np.testing.assert_array_equal(idata.sample_stats["ess"], runs.ess)
    np.testing.assert_array_equal(idata.observed_data["y"], MODEL.observations)
    with pytest.raises(TypeError, match="log likelihood not found"):
        az.loo(idata)
    check_arviz_functions(idata, ["x"])


def test_smoothing_draws_follow_rts_and_score_every_observation(runs):
    idata = runs.to_inference_data(jax.random.key(3), BOOTSTRAP, smoothing=True, num_draws=200)
    x = idata.posterior["x"].values  # (chains, draws, T, 1)
    assert x.shape == (CHAINS, 200, T, 1)
    assert_means_match(x[..., 0], EXACT.smoothed_means[:, 0])
    y = np.asarray(MODEL.observations[:, 0], np.float64)
    expected = stats.norm.logpdf(y, np.asarray(x[..., 0], np.float64), np.sqrt(R))
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-4, atol=1e-4)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "time")
    assert np.isfinite(az.loo(idata).elpd_loo)
    check_arviz_functions(idata, ["x"])


def test_filter_export_without_history_and_bad_input():
    result = smc.particle_filter(jax.random.key(4), BOOTSTRAP, 2000)
    idata = result.to_inference_data(jax.random.key(5), BOOTSTRAP, num_draws=4000)
    last = idata.posterior["x"].values  # the last step's cloud: no time axis
    assert last.shape == (1, 4000, 1)
    exact_mean = float(EXACT.filtered_means[-1, 0])
    exact_sd = float(np.sqrt(EXACT.filtered_covs[-1, 0, 0]))
    # The draws resample the weighted cloud: their mean is its weighted mean up to the
    # resampling noise, and that is the Kalman mean up to the cloud's ESS.
    weights = np.exp(np.asarray(result.log_weights, np.float64))
    cloud_mean = float(weights @ np.asarray(result.particles[:, 0], np.float64))
    assert abs(last.mean() - cloud_mean) < 5 * exact_sd / np.sqrt(4000)
    ess = float(result.ess[-1])
    assert abs(last.mean() - exact_mean) < 5 * exact_sd * np.sqrt(1 / ess + 1 / 4000)
    with pytest.raises(ValueError, match="store_history=True"):
        result.to_inference_data(jax.random.key(5), BOOTSTRAP, smoothing=True)
    with pytest.raises(ValueError, match="num_draws"):
        result.to_inference_data(jax.random.key(5), BOOTSTRAP, num_draws=0)


# --- particle Gibbs -----------------------------------------------------------------------

OFFSET_PRIOR_SD = 2.0
Y_SHIFTED = MODEL.observations + 1.0  # y_t = x_t + b + noise with b = 1


def build_model(offset):
    return smc.Bootstrap(MODEL.with_observations(Y_SHIFTED - offset))


def update_offset(key, offset, states):
    """Exact Gibbs conditional b | x, y (conjugate normal)."""
    precision = 1.0 / OFFSET_PRIOR_SD**2 + T / R
    mean = jnp.sum(Y_SHIFTED[:, 0] - states[:, 0]) / R / precision
    return mean + jax.random.normal(key) / jnp.sqrt(precision)


@pytest.fixture(scope="module")
def gibbs():
    run = jax.vmap(lambda k: smc.particle_gibbs(k, build_model, update_offset, jnp.asarray(0.0),
                                                120, 16, raise_on_failure=False))
    return run(jax.random.split(jax.random.key(6), 2))


def test_particle_gibbs_export(gibbs):
    idata = gibbs.to_inference_data(build_model, burn_in=20, observed_data={"y": Y_SHIFTED})
    assert set(idata.groups()) == {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    theta = idata.posterior["theta"].values
    x = idata.posterior["x"].values
    assert theta.shape == (2, 100) and x.shape == (2, 100, T, 1)
    np.testing.assert_array_equal(theta, gibbs.parameters[:, 20:])
    # Each stored pair (x^(k), theta^(k+1)) is scored with the model theta^(k+1) builds.
    y = np.asarray(Y_SHIFTED[:, 0], np.float64)
    expected = stats.norm.logpdf(y - theta[..., None], np.asarray(x[..., 0], np.float64), np.sqrt(R))
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(idata.sample_stats["failure"], 0)
    assert np.isfinite(az.loo(idata).elpd_loo)
    check_arviz_functions(idata, ["theta", "x"])
    single = jax.tree.map(lambda leaf: leaf[0], gibbs)
    plain = single.to_inference_data()
    assert set(plain.groups()) == {"posterior", "sample_stats"}
    assert plain.posterior["theta"].shape == (1, 120)
    with pytest.raises(ValueError, match="burn_in"):
        single.to_inference_data(burn_in=120)
    with pytest.raises(ValueError, match="StateSpaceModel"):
        single.to_inference_data(lambda theta: object())


def test_pytree_parameters_and_states_are_named_by_their_leaves(gibbs):
    single = jax.tree.map(lambda leaf: leaf[0], gibbs)
    renamed = ParticleGibbsResult(
        {"offset": single.parameters, "scale": 2.0 * single.parameters},
        single.trajectories, single.failure)
    idata = renamed.to_inference_data()
    assert set(idata.posterior.data_vars) == {"theta_offset", "theta_scale", "x"}

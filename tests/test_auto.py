"""`probinf.infer` against exact posteriors (conjugate models), every path it can take."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import probinf

# Gamma-Poisson: lambda ~ Gamma(A, B), y_i ~ Poisson(lambda) => lambda | y ~ Gamma(A + sum y, B + n).
# Few, small counts make the posterior of log(lambda) skewed, so Pathfinder's Gaussian is
# not enough on its own and the later stages have work to do.
A, B = 1.5, 1.0
COUNTS = jnp.array([0.0, 1.0, 0.0])
POST_SHAPE, POST_RATE = A + float(COUNTS.sum()), B + COUNTS.shape[0]
POST_MEAN = POST_SHAPE / POST_RATE
POST_SD = math.sqrt(POST_SHAPE) / POST_RATE


def gamma_poisson(y):
    rate = numpyro.sample("rate", dist.Gamma(A, B))
    numpyro.deterministic("log_rate", jnp.log(rate))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Poisson(rate), obs=y)


# Normal mean with a flat (improper) prior and known sd: mu | y ~ N(mean(y), SIGMA^2 / n).
SIGMA = 2.0
OBS = jnp.array([1.3, -0.4, 2.2, 0.9, 1.7])


def flat_normal_mean(y):
    mu = numpyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, SIGMA), obs=y)


def _moments(idata, name):
    draws = np.asarray(idata.posterior[name].values).ravel()
    return draws.mean(), draws.std(ddof=1), draws.size


def _check_against(idata, name, mean, sd, ess):
    """Mean within 5 Monte Carlo standard errors, sd within 5 of its own (ess effective draws)."""
    got_mean, got_sd, _ = _moments(idata, name)
    assert abs(got_mean - mean) < 5 * sd / math.sqrt(ess), (got_mean, mean)
    assert abs(math.log(got_sd / sd)) < 5 / math.sqrt(2 * ess), (got_sd, sd)


def test_flat_prior_gaussian_posterior_takes_the_pathfinder_path():
    idata = probinf.infer(flat_normal_mean, OBS, key=jax.random.key(0), num_draws=2000)
    attrs = idata.posterior.attrs
    # The posterior is Gaussian: Pathfinder's Gaussian is exact, so no flow is fitted.
    assert attrs["inference_path"] == "pathfinder+importance"
    assert attrs["pathfinder_khat"] <= 0.5
    assert "flow_khat" not in attrs
    _check_against(idata, "mu", float(OBS.mean()), SIGMA / math.sqrt(OBS.shape[0]),
                   ess=min(attrs["importance_ess"], 2000))
    assert idata.posterior["mu"].shape == (1, 2000)
    assert "log_importance_weight" in idata.sample_stats
    for stage in ("target", "pathfinder", "correction", "total"):
        assert attrs[f"time_{stage}_s"] >= 0.0
    _check_arviz_groups(idata)


def _check_arviz_groups(idata):
    """log_likelihood and observed_data of flat_normal_mean, and az.loo against the exact LOO:
    p(y_i | y_-i) = N(y_i; mean(y_-i), SIGMA^2 (1 + 1 / (n - 1))) under the flat prior."""
    import arviz as az
    from scipy import stats

    y = np.asarray(OBS, np.float64)
    mu = idata.posterior["mu"].values
    np.testing.assert_allclose(idata.log_likelihood["y"],
                               stats.norm.logpdf(y, mu[..., None], SIGMA), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(idata.observed_data["y"], OBS)
    n = y.size
    rest_means = (y.sum() - y) / (n - 1)
    exact = stats.norm.logpdf(y, rest_means, SIGMA * math.sqrt(1 + 1 / (n - 1)))
    loo = az.loo(idata, pointwise=True)
    assert abs(loo.elpd_loo - exact.sum()) < 0.1
    np.testing.assert_allclose(loo.loo_i.values, exact, atol=0.05)


def test_auto_path_on_a_skewed_posterior_matches_the_gamma_posterior():
    idata = probinf.infer(gamma_poisson, COUNTS, key=jax.random.key(1), num_draws=2000)
    attrs = idata.posterior.attrs
    assert attrs["inference_path"] in ("pathfinder+importance", "flow+importance", "tempered_smc")
    # SMC particles are correlated through resampling: count them as a quarter.
    ess = 500 if "smc_log_evidence" in attrs else min(attrs["importance_ess"], 2000)
    _check_against(idata, "rate", POST_MEAN, POST_SD, ess=ess)
    # Deterministic sites come along, computed from the same draws.
    np.testing.assert_allclose(idata.posterior["log_rate"], np.log(idata.posterior["rate"]),
                               rtol=1e-5)
    # Whichever path ran, the draws come with their pointwise log likelihood.
    from scipy import stats

    rate = idata.posterior["rate"].values
    np.testing.assert_allclose(idata.log_likelihood["y"],
                               stats.poisson.logpmf(np.asarray(COUNTS), rate[..., None]),
                               rtol=1e-4, atol=1e-5)


def test_forced_tempered_smc_path_matches_the_gamma_posterior():
    idata = probinf.infer(gamma_poisson, COUNTS, key=jax.random.key(2), method="smc",
                          num_draws=1000)
    attrs = idata.posterior.attrs
    assert attrs["inference_path"] == "tempered_smc"
    assert "flow_khat" not in attrs  # the SMC path does not fit a flow
    # log Z of the Gamma-Poisson model in closed form.
    y = np.asarray(COUNTS)
    log_z = (A * math.log(B) - math.lgamma(A) + math.lgamma(POST_SHAPE)
             - POST_SHAPE * math.log(POST_RATE) - sum(math.lgamma(v + 1) for v in y))
    assert abs(attrs["smc_log_evidence"] - log_z) < 0.1
    # SMC particles are correlated through resampling: count them as a quarter.
    _check_against(idata, "rate", POST_MEAN, POST_SD, ess=250)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`method`"):
        probinf.infer(gamma_poisson, COUNTS, key=jax.random.key(0), method="nuts")
    with pytest.raises(ValueError, match="`num_draws`"):
        probinf.infer(gamma_poisson, COUNTS, key=jax.random.key(0), num_draws=0)
    with pytest.raises(ValueError, match="'y'"):
        probinf.infer(gamma_poisson, jnp.array([1.0, jnp.nan]), key=jax.random.key(0))

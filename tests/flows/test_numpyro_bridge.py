"""The numpyro bridge: FlowGuide (for probinf.fit and numpyro SVI) and FlowDistribution,
checked against numpyro's own log densities, a conjugate posterior and its exact evidence.
Collapse on hierarchical models and the funnel: test_numpyro_bridge_collapse.py."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.util import log_density
from scipy import stats

import flows
import probinf
from flows import FlowDistribution, FlowGuide
from probinf import vi

KEY = jax.random.key(0)
Y = jnp.array([1.2, 0.3, 2.1, 1.7, 0.8, 1.1, 1.9, 0.4, 1.5, 1.0])
PRIOR_SD = 2.0


def conjugate_model(y):
    """mu ~ N(0, 2^2), y_i ~ N(mu, 1), and tau ~ Gamma(3, 2) untouched by the data.

    Exact posterior: mu ~ N(m, s^2) with s^2 = 1/(1/4 + n), m = s^2 sum(y); tau ~ Gamma(3, 2)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, PRIOR_SD))
    tau = numpyro.sample("tau", dist.Gamma(3.0, 2.0))
    numpyro.deterministic("mu_times_tau", mu * tau)
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


POST_VAR = 1.0 / (1.0 / PRIOR_SD**2 + Y.shape[0])
POST_MEAN = POST_VAR * float(Y.sum())


def _guide():
    return FlowGuide(conjugate_model, Y, key=KEY, num_layers=2, width=16, init="prior_median")


def test_guide_layout_matches_the_target():
    guide = _guide()
    assert guide.dim == 2 and guide.site_shapes == {"mu": (), "tau": ()}
    z = jnp.array([0.3, -0.4])
    sites = guide.target.constrain(z)
    np.testing.assert_allclose(sites["mu"], 0.3)
    np.testing.assert_allclose(sites["tau"], np.exp(-0.4), rtol=1e-6)  # numpyro's biject_to(positive)
    np.testing.assert_allclose(sites["mu_times_tau"], 0.3 * np.exp(-0.4), rtol=1e-6)


def test_guide_density_matches_numpyro():
    """log p(x, y) - log q(x) from numpyro's traces equals target.log_density(z) - log q_flow(z)."""
    guide = _guide()
    seeded = handlers.seed(guide, jax.random.key(1))
    trace = handlers.trace(seeded).get_trace(Y)
    z = trace["_flow_latent"]["value"]
    guide_log_q, _ = log_density(guide, (Y,), {}, {"_flow_latent": z})
    values = {name: trace[name]["value"] for name in ("mu", "tau")}
    model_log_p, _ = log_density(conjugate_model, (Y,), {}, values)
    expected = guide.target.log_density(z) - guide.flow.log_prob(z)
    np.testing.assert_allclose(model_log_p - guide_log_q, expected, rtol=1e-5, atol=1e-5)


def _check_posterior(draws):
    # 20,000 draws: Monte Carlo error ~1% of an sd; 5% leaves room for the VI error.
    assert abs(draws["mu"].mean() - POST_MEAN) < 0.05 * np.sqrt(POST_VAR)
    assert abs(draws["mu"].std() / np.sqrt(POST_VAR) - 1) < 0.05
    assert abs(draws["tau"].mean() - 1.5) < 0.05 * np.sqrt(0.75)
    assert abs(draws["tau"].std() / np.sqrt(0.75) - 1) < 0.05
    np.testing.assert_allclose(draws["mu_times_tau"], draws["mu"] * draws["tau"], rtol=1e-5)


def test_probinf_fit_recovers_the_conjugate_posterior():
    guide = _guide()
    result = probinf.fit(vi.ELBO(16), guide.flow, guide.target, key=KEY, steps=1500,
                         optimizer=optax.adam(optax.cosine_decay_schedule(1e-2, 1500)),
                         chunk_size=1500, progress=False, diagnose=False)
    _check_posterior(guide.sample_posterior(jax.random.key(2), 20_000, result.family))
    # FitResult names and constrains the sites the same way.
    direct = result.sample_posterior(jax.random.key(2), 10)
    assert set(direct) == {"mu", "tau", "mu_times_tau"}


def test_numpyro_svi_recovers_the_conjugate_posterior():
    guide = _guide()
    optimizer = numpyro.optim.optax_to_numpyro(optax.adam(optax.cosine_decay_schedule(1e-2, 1500)))
    svi = SVI(conjugate_model, guide, optimizer, Trace_ELBO(num_particles=16))
    state = svi.init(jax.random.key(3), Y)
    state, losses = jax.lax.scan(lambda s, _: svi.update(s, Y), state, None, length=1500)
    params = svi.get_params(state)
    assert set(params) == {guide.param_name}
    _check_posterior(guide.sample_posterior(jax.random.key(4), 20_000, params))
    idata = guide.to_inference_data(jax.random.key(5), 50, params)
    assert set(idata.posterior.data_vars) == {"mu", "tau", "mu_times_tau"}
    assert idata.posterior["mu"].shape == (1, 50)


def test_flow_distribution():
    flow = flows.spline_flow(KEY, 2, num_layers=1, width=8)
    distribution = FlowDistribution(flow)
    assert distribution.event_shape == (2,) and distribution.batch_shape == () and distribution.has_rsample
    draws = distribution.sample(jax.random.key(1), (3, 4))
    assert draws.shape == (3, 4, 2)
    np.testing.assert_allclose(distribution.log_prob(draws), flow.log_prob(draws), rtol=1e-6)

    def model():
        numpyro.sample("z", FlowDistribution(flow))

    point = jnp.array([0.5, -1.0])
    model_log_p, _ = log_density(model, (), {}, {"z": point})
    np.testing.assert_allclose(model_log_p, flow.log_prob(point), rtol=1e-6)

    conditional = flows.spline_flow(KEY, 2, num_layers=1, width=8, context_dim=3)
    batched = FlowDistribution(conditional, jnp.zeros((5, 3)))
    assert batched.batch_shape == (5,) and batched.sample(KEY, (2,)).shape == (2, 5, 2)
    with pytest.raises(ValueError, match="context"):
        FlowDistribution(conditional)
    with pytest.raises(TypeError, match="flow"):
        FlowDistribution(flow.bijection)


def test_bad_models_and_arguments():
    def discrete_model():
        numpyro.sample("k", dist.Bernoulli(0.3))
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'k' is a discrete latent"):
        FlowGuide(discrete_model, key=KEY)

    def no_latent_model():
        numpyro.sample("y", dist.Normal(0.0, 1.0), obs=0.0)

    with pytest.raises(ValueError, match="no latent"):
        FlowGuide(no_latent_model, key=KEY)
    with pytest.raises(ValueError, match="dim"):
        FlowGuide(conjugate_model, Y, key=KEY, flow=flows.coupling_flow(KEY, 3, num_layers=1))
    with pytest.raises(ValueError, match="unconditional"):
        FlowGuide(conjugate_model, Y, key=KEY, flow=flows.coupling_flow(KEY, 2, num_layers=1, context_dim=1))
    with pytest.raises(ValueError, match="num_layers"):
        FlowGuide(conjugate_model, Y, key=KEY, flow=flows.coupling_flow(KEY, 2, num_layers=1), num_layers=3)
    with pytest.raises(TypeError, match="key"):
        FlowGuide(conjugate_model, Y, key=0)
    with pytest.raises(ValueError, match="init"):
        FlowGuide(conjugate_model, Y, key=KEY, flow=flows.coupling_flow(KEY, 2, num_layers=1), init="laplace")
    with pytest.raises(ValueError, match="init"):
        FlowGuide(conjugate_model, Y, key=KEY, init="median")
    with pytest.raises(TypeError, match="init"):
        FlowGuide(conjugate_model, Y, key=KEY, init=3.0)
    with pytest.raises(ValueError, match="dim"):
        FlowGuide(conjugate_model, Y, key=KEY, init=probinf.FullRankGaussian.init(3))
    with pytest.raises(ValueError, match="init_scale"):
        FlowGuide(conjugate_model, Y, key=KEY, init="prior_median", init_scale=0.0)
    with pytest.raises(ValueError, match="init_scale"):
        FlowGuide(conjugate_model, Y, key=KEY, flow=flows.coupling_flow(KEY, 2, num_layers=1), init_scale=2.0)
    guide = FlowGuide(conjugate_model, Y, key=KEY, num_layers=1, width=8, init="prior_median")
    with pytest.raises(ValueError, match="params"):
        guide.flow_from_params({"other": 1})
    with pytest.raises(TypeError, match="flow"):
        guide.sample_posterior(KEY, 10, flow="trained")


def test_one_dimensional_model_gets_an_autoregressive_guide():
    def model():
        numpyro.sample("s", dist.HalfNormal(1.0))

    guide = FlowGuide(model, key=KEY, num_layers=1, width=8, init="prior_median")
    draws = guide.sample_posterior(KEY, 100)
    assert draws["s"].shape == (100,) and np.all(draws["s"] > 0)


# log Z of conjugate_model: mu integrates out to y ~ N(0, I + PRIOR_SD^2 11^T); the
# Gamma prior of tau integrates to one.
LOG_EVIDENCE = float(stats.multivariate_normal(
    np.zeros(Y.shape[0]), np.eye(Y.shape[0]) + PRIOR_SD**2).logpdf(np.asarray(Y, np.float64)))


def test_single_draw_svi_never_reports_an_elbo_above_the_evidence():
    """numpyro SVI with Trace_ELBO() (one draw per step) and Adam(1e-2), the default guide.

    Each step's loss is minus a one-draw ELBO estimate, an unbiased estimate of a number
    <= log Z: averaged over windows of 50 steps it must stay below log Z but for Monte Carlo
    noise (3 standard errors). A guide that re-scored its draws through an inexact inverse
    pass could report ELBOs far above log Z (issue 17: +18 to +22 against log Z = -7.4).
    """
    guide = FlowGuide(conjugate_model, Y, key=KEY, num_layers=2, width=16)
    svi = SVI(conjugate_model, guide, optax.adam(1e-2), Trace_ELBO())
    state = svi.init(jax.random.key(3), Y)
    state, losses = jax.lax.scan(lambda s, _: svi.update(s, Y), state, None, length=400)
    elbos = -np.asarray(losses, np.float64)
    assert np.all(np.isfinite(elbos))
    windows = elbos.reshape(8, 50)
    standard_errors = windows.std(axis=1, ddof=1) / np.sqrt(50)
    assert np.all(windows.mean(axis=1) <= LOG_EVIDENCE + 3 * standard_errors), (
        windows.mean(axis=1), LOG_EVIDENCE)
    # It trained: the last window is close to the bound (the optimum's ELBO is log Z, the
    # posterior being in the family up to the flow's spline error).
    assert windows[-1].mean() > LOG_EVIDENCE - 1.0

    # Exactly: the log q numpyro's ELBO uses for a guide draw is the forward-pass density
    # of that draw, and the one-draw ELBO it forms is the target's log density minus it.
    params = svi.get_params(state)
    flow = guide.flow_from_params(params)
    guide_log_q, guide_trace = log_density(handlers.seed(guide, jax.random.key(4)), (Y,), {}, params)
    site = guide_trace["_flow_latent"]
    draws, forward_log_q = flow.sample_and_log_prob(site["kwargs"]["rng_key"], 1)
    np.testing.assert_array_equal(site["value"], draws[0])
    np.testing.assert_array_equal(site["fn"].log_prob(site["value"], site["intermediates"]), forward_log_q[0])
    values = {name: guide_trace[name]["value"] for name in ("mu", "tau")}
    model_log_p, _ = log_density(conjugate_model, (Y,), {}, values)
    np.testing.assert_allclose(model_log_p - guide_log_q,
                               guide.target.log_density(draws[0]) - forward_log_q[0], rtol=1e-5, atol=1e-5)


def test_default_guide_starts_at_the_gaussian_approximation():
    """init="pathfinder" (default): the flow starts as probinf.vi.initialize's Gaussian, whose
    mu-marginal is close to the exact Gaussian posterior (Pathfinder ends at the mode, where
    the Gaussian part of this model is exact)."""
    guide = FlowGuide(conjugate_model, Y, key=KEY, num_layers=2, width=16)
    gaussian = guide.initial_gaussian
    z = jax.random.normal(jax.random.key(5), (50, 2))
    np.testing.assert_allclose(guide.flow.log_prob(z), gaussian.log_prob(z), rtol=1e-5, atol=1e-5)
    assert abs(float(gaussian.loc[0]) - POST_MEAN) < 0.1 * np.sqrt(POST_VAR)
    assert abs(float(np.sqrt(gaussian.covariance[0, 0])) / np.sqrt(POST_VAR) - 1.0) < 0.3
    scaled = FlowGuide(conjugate_model, Y, key=KEY, num_layers=1, width=8, init=gaussian, init_scale=2.0)
    np.testing.assert_allclose(scaled.initial_gaussian.covariance, 4.0 * gaussian.covariance, rtol=1e-5)


def test_improper_prior_model():
    """A flat prior (numpyro ImproperUniform: traced at numpyro's uniform initial values, never
    sampled): b | y ~ N(mean(y), 1/n) exactly."""
    from numpyro.distributions import constraints

    def flat_model(y):
        b = numpyro.sample("b", dist.ImproperUniform(constraints.real, (), ()))
        s = numpyro.sample("s", dist.ImproperUniform(constraints.positive, (), ()))
        with numpyro.plate("data", y.shape[0]):
            numpyro.sample("y", dist.Normal(b, 1.0), obs=y)
        numpyro.factor("s_prior", dist.Gamma(3.0, 2.0).log_prob(s))

    guide = FlowGuide(flat_model, Y, key=KEY, num_layers=2, width=16, init="laplace")
    result = probinf.fit(vi.ELBO(16), guide.flow, guide.target, key=KEY, steps=600,
                         optimizer=optax.adam(optax.cosine_decay_schedule(1e-2, 600)),
                         chunk_size=600, progress=False, diagnose=False)
    draws = guide.sample_posterior(jax.random.key(1), 20_000, result.family)
    exact_sd = 1.0 / np.sqrt(Y.shape[0])
    assert abs(draws["b"].mean() - float(Y.mean())) < 0.05 * exact_sd
    assert abs(draws["b"].std() / exact_sd - 1.0) < 0.05


def test_to_inference_data_has_every_arviz_group():
    import arviz as az
    import matplotlib.pyplot as plt
    from numpyro.infer.util import log_likelihood

    guide = _guide()
    idata = guide.to_inference_data(jax.random.key(6), 400)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    posterior = {name: idata.posterior[name].values for name in ("mu", "tau")}
    # Pointwise log likelihood: numpyro's own function on the user's model, and the closed form.
    expected = log_likelihood(conjugate_model, posterior, Y, batch_ndims=2)["y"]
    np.testing.assert_allclose(idata.log_likelihood["y"], expected, rtol=1e-5)
    np.testing.assert_allclose(idata.log_likelihood["y"],
                               stats.norm.logpdf(np.asarray(Y), posterior["mu"][..., None], 1.0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(idata.observed_data["y"], Y)
    # lp is the target's density at the draws (mapped back to the flat vector); the log
    # weights subtract log q, here from the inverse pass instead of the export's forward pass.
    z = jnp.stack([jnp.asarray(posterior["mu"][0]), jnp.log(jnp.asarray(posterior["tau"][0]))], -1)
    np.testing.assert_allclose(idata.sample_stats["lp"][0], guide.target.log_density(z), rtol=1e-5)
    np.testing.assert_allclose(idata.sample_stats["log_weight"][0],
                               guide.target.log_density(z) - guide.flow.log_prob(z),
                               rtol=1e-4, atol=1e-4)
    assert idata.sample_stats["khat"].dims == ("chain",)
    assert np.isfinite(az.loo(idata).elpd_loo)
    assert set(az.summary(idata).index) == {"mu", "tau", "mu_times_tau"}
    az.plot_posterior(idata, var_names=["mu"])
    plt.close("all")

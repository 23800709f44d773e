import jax.numpy as jnp
import numpy as np
import pytest

import probinf


def test_to_inference_data_shapes_and_errors():
    idata = probinf.to_inference_data({"mu": np.zeros((2, 50)), "theta": np.zeros((2, 50, 3))})
    assert idata.posterior["theta"].shape == (2, 50, 3)
    with pytest.raises(ValueError, match="empty"):
        probinf.to_inference_data({})
    with pytest.raises(ValueError, match="chains, draws"):
        probinf.to_inference_data({"a": np.zeros((2, 5)), "b": np.zeros((3, 5))})


def test_to_inference_data_groups_and_run_statistics():
    idata = probinf.to_inference_data(
        {"mu": np.zeros((2, 5))},
        log_likelihood={"y": np.ones((2, 5, 3))},
        observed_data={"y": np.arange(3.0)},
        constant_data={"x": np.arange(4.0)},
        sample_stats={"lp": np.full((2, 5), -1.0),
                      "log_evidence": (("chain",), np.array([1.0, 2.0])),
                      "temperature": (("chain", "stage"), np.array([[0.5, 1.0], [0.2, 1.0]]))},
    )
    assert set(idata.groups()) == {"posterior", "log_likelihood", "observed_data",
                                   "constant_data", "sample_stats"}
    stats = idata.sample_stats
    assert stats["lp"].dims == ("chain", "draw")
    assert stats["log_evidence"].dims == ("chain",)
    assert stats["temperature"].dims == ("chain", "stage")
    np.testing.assert_array_equal(stats["temperature"].sel(chain=1), [0.2, 1.0])
    # The same observation axis in both groups: ArviZ pairs them by dimension name.
    assert idata.log_likelihood["y"].dims[2] == idata.observed_data["y"].dims[0]
    only_run = probinf.to_inference_data({"mu": np.zeros((1, 5))},
                                         sample_stats={"khat": (("chain",), np.array([0.3]))})
    assert float(only_run.sample_stats["khat"][0]) == 0.3
    with pytest.raises(ValueError, match=r"`log_likelihood\['y'\]` must have the samples' leading"):
        probinf.to_inference_data({"mu": np.zeros((2, 5))}, log_likelihood={"y": np.ones((1, 5, 3))})
    with pytest.raises(ValueError, match=r"`sample_stats\['lp'\]`"):
        probinf.to_inference_data({"mu": np.zeros((2, 5))}, sample_stats={"lp": np.ones(5)})
    with pytest.raises(ValueError, match="dims starting with 'chain'"):
        probinf.to_inference_data({"mu": np.zeros((2, 5))},
                                  sample_stats={"t": (("stage",), np.ones(3))})
    with pytest.raises(ValueError, match="2 chain"):
        probinf.to_inference_data({"mu": np.zeros((2, 5))},
                                  sample_stats={"t": (("chain",), np.ones(3))})


def _observed_sites_model(x, y, counts, mask):
    """Every kind of site pointwise_log_likelihood meets: a constrained latent, a
    deterministic site, an event-shaped observation, a masked one and a factor."""
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    slope = numpyro.deterministic("slope", 2.0 * mu)
    with numpyro.plate("rows", x.shape[0]):
        numpyro.sample("y", dist.Normal(slope * x, sigma), obs=y)
    numpyro.sample("pairs", dist.MultivariateNormal(jnp.stack([mu, -mu]), jnp.eye(2) * sigma**2)
                   .expand([counts.shape[0]]), obs=counts)
    with numpyro.handlers.mask(mask=mask):
        numpyro.sample("masked", dist.Normal(mu, 1.0).expand([mask.shape[0]]), obs=jnp.zeros(3))
    numpyro.factor("penalty", -0.5 * mu**2)


MODEL_ARGS = (jnp.array([0.5, -1.0, 2.0, 0.1]), jnp.array([1.1, -1.7, 3.0, 0.0]),
              jnp.array([[0.3, -0.2], [1.0, -1.5]]), jnp.array([True, False, True]))


def test_pointwise_log_likelihood_matches_numpyro_and_closed_form():
    from numpyro.infer.util import log_likelihood
    from scipy import stats

    from probinf.diagnostics import pointwise_log_likelihood

    target = probinf.from_numpyro(_observed_sites_model, *MODEL_ARGS)
    z = np.random.default_rng(0).normal(size=(2, 7, target.dim))
    got = pointwise_log_likelihood(target, z)
    assert set(got) == {"y", "pairs", "masked"}  # the factor is no observation
    assert got["y"].shape == (2, 7, 4) and got["pairs"].shape == (2, 7, 2)
    sites = target.constrain(jnp.asarray(z))
    # numpyro's own function on the user's model (not the target's prepared copy).
    reference = log_likelihood(_observed_sites_model, sites, *MODEL_ARGS, batch_ndims=2)
    for name in got:
        np.testing.assert_allclose(got[name], reference[name], rtol=1e-5, atol=1e-5)
    x, y, counts, mask = (np.asarray(a, np.float64) for a in MODEL_ARGS)
    mu, sigma = np.asarray(sites["mu"], np.float64), np.asarray(sites["sigma"], np.float64)
    expected_y = stats.norm.logpdf(y, 2 * mu[..., None] * x, sigma[..., None])
    np.testing.assert_allclose(got["y"], expected_y, rtol=1e-4, atol=1e-4)
    expected_pairs = (stats.norm.logpdf(counts[:, 0], mu[..., None], sigma[..., None])
                      + stats.norm.logpdf(counts[:, 1], -mu[..., None], sigma[..., None]))
    np.testing.assert_allclose(got["pairs"], expected_pairs, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got["masked"][..., 1], 0.0)  # masked out: numpyro scores 0
    assert target.numpyro_model.likelihood_sites == ("y", "pairs", "masked")
    np.testing.assert_array_equal(target.numpyro_model.observed_data["pairs"], counts)


def test_target_inference_data_groups(monkeypatch):
    from probinf.diagnostics import pointwise_log_likelihood, target_inference_data

    target = probinf.from_numpyro(_observed_sites_model, *MODEL_ARGS)
    z = np.random.default_rng(1).normal(size=(3, 4, target.dim))
    idata = target_inference_data(target, z)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "observed_data", "sample_stats"}
    assert set(idata.posterior.data_vars) == {"mu", "sigma", "slope"}
    np.testing.assert_allclose(idata.sample_stats["lp"], target.log_density(jnp.asarray(z)),
                               rtol=1e-5)
    np.testing.assert_array_equal(idata.observed_data["y"], MODEL_ARGS[1])
    assert "log_likelihood" not in target_inference_data(target, z, log_likelihood=False).groups()
    # 12 draws x 11 observed values: over a limit of 100 the group is left out, and said so.
    monkeypatch.setattr(probinf.diagnostics, "MAX_LOG_LIKELIHOOD_ENTRIES", 100)
    with pytest.warns(RuntimeWarning, match="log_likelihood group was left out"):
        big = target_inference_data(target, z)
    assert "log_likelihood" not in big.groups() and "observed_data" in big.groups()
    # A plain log density says nothing about which part is likelihood: no such groups.
    plain = probinf.from_logdensity(lambda v: -0.5 * jnp.sum(v**2), 2)
    assert plain.numpyro_model is None
    idata = target_inference_data(plain, np.zeros((1, 5, 2)))
    assert set(idata.groups()) == {"posterior", "sample_stats"}
    with pytest.raises(ValueError, match="from_logdensity"):
        pointwise_log_likelihood(plain, np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"\(chains, draws, 2\)"):
        target_inference_data(plain, np.zeros((5, 2)))


def test_effective_sample_size():
    assert float(probinf.effective_sample_size(jnp.zeros(10))) == pytest.approx(10.0)
    one_hot = jnp.array([0.0, -jnp.inf, -jnp.inf])
    assert float(probinf.effective_sample_size(one_hot)) == pytest.approx(1.0)
    w = np.array([0.5, 0.3, 0.2])
    expected = w.sum() ** 2 / (w**2).sum()
    assert float(probinf.effective_sample_size(jnp.log(w) + 4.0)) == pytest.approx(expected, rel=1e-5)


def test_effective_sample_size_edge_cases_are_defined():
    ess = probinf.effective_sample_size
    inf = jnp.inf
    assert float(ess(jnp.full(4, -inf))) == 0.0  # no mass at all
    assert np.isnan(float(ess(jnp.array([0.0, jnp.nan, 0.0]))))  # an unknown weight
    assert float(ess(jnp.array([inf, 0.0, inf, -inf]))) == 2.0  # the +inf weights dominate
    # Rows of a batch are independent: Kish's formula on the finite row, the cases above elsewhere.
    rows = jnp.array([[0.0, 0.0, 0.0], [-inf, -inf, -inf], [jnp.nan, 0.0, 0.0], [0.0, inf, 0.0]])
    np.testing.assert_array_equal(np.asarray(ess(rows)), [3.0, 0.0, np.nan, 1.0])
    assert float(ess(jnp.array([0, 0]))) == 2.0  # integer log weights are read as floats
    for bad in (jnp.zeros(0), jnp.zeros((3, 0)), jnp.float32(0.0)):
        with pytest.raises(ValueError, match="`log_weights` must have a non-empty last axis"):
            ess(bad)


def test_linear_gaussian_posterior_against_brute_force():
    """Posterior moments by dense quadrature on a 1-d problem."""
    mean, cov, log_z = probinf.exact.linear_gaussian_posterior(
        [1.0], [[2.0]], [[1.0], [0.5]], [0.3, 1.2], np.diag([0.5, 0.8])
    )
    grid = np.linspace(-15, 15, 200_001)
    dx = grid[1] - grid[0]
    log_prior = -0.5 * (grid - 1.0) ** 2 / 2.0 - 0.5 * np.log(2 * np.pi * 2.0)
    log_lik = (-0.5 * (0.3 - grid) ** 2 / 0.5 - 0.5 * np.log(2 * np.pi * 0.5)
               - 0.5 * (1.2 - 0.5 * grid) ** 2 / 0.8 - 0.5 * np.log(2 * np.pi * 0.8))
    joint = np.exp(log_prior + log_lik)
    evidence = joint.sum() * dx
    assert log_z == pytest.approx(np.log(evidence), abs=1e-8)
    post_mean = (grid * joint).sum() * dx / evidence
    assert mean[0] == pytest.approx(post_mean, abs=1e-8)
    assert cov[0, 0] == pytest.approx(((grid - post_mean) ** 2 * joint).sum() * dx / evidence, abs=1e-8)
    with pytest.raises(ValueError, match="design"):
        probinf.exact.linear_gaussian_posterior([0.0], [[1.0]], [[1.0, 2.0]], [0.0], [[1.0]])


@pytest.mark.parametrize("shape", [0.2, 0.5, 0.9, 1.2])
def test_psis_recovers_the_pareto_shape_of_exact_quantiles(shape):
    """Weights w = u^(-k) have a generalised Pareto tail of shape exactly k (P(w > t) = t^(-1/k)).

    Their exact quantiles (no sampling noise) leave only the fit's prior, which pulls k-hat
    towards 0.5 by (M k + 5) / (M + 10) with M = 300 tail draws: under 0.012 here.
    """
    num_draws = 10_000
    quantiles = (np.arange(num_draws) + 0.5) / num_draws
    log_weights = np.random.default_rng(0).permutation(-shape * np.log(quantiles))
    smoothed, khat = probinf.diagnostics.psis(log_weights)
    assert abs(khat - shape) < 0.04
    assert smoothed.shape == (num_draws,) and smoothed.dtype == np.float64
    assert np.logaddexp.reduce(smoothed) == pytest.approx(0.0, abs=1e-12)
    # Log weights are defined up to a constant: nothing changes with a shift.
    shifted, khat_shifted = probinf.diagnostics.psis(log_weights + 123.0)
    assert khat_shifted == pytest.approx(khat, abs=1e-9)
    np.testing.assert_allclose(shifted, smoothed, atol=1e-9)
    # The body below the tail is untouched (only normalised).
    body = log_weights < np.quantile(log_weights, 0.9)
    np.testing.assert_allclose(smoothed[body] - smoothed[body][0],
                               log_weights[body] - log_weights[body][0], atol=1e-9)


def test_psis_non_finite_and_degenerate_weights():
    psis = probinf.diagnostics.psis
    log_weights = np.random.default_rng(1).normal(size=1000)
    # NaN and -inf count as zero weight, identically.
    with_nan, with_minus_inf = log_weights.copy(), log_weights.copy()
    with_nan[:50], with_minus_inf[:50] = np.nan, -np.inf
    smoothed_nan, khat_nan = psis(with_nan)
    smoothed_inf, khat_inf = psis(with_minus_inf)
    assert khat_nan == khat_inf and np.isfinite(khat_nan)
    np.testing.assert_array_equal(smoothed_nan, smoothed_inf)
    assert np.all(smoothed_nan[:50] == -np.inf)
    # No positive weight at all: nothing to smooth, k-hat infinite.
    smoothed, khat = psis(np.full(100, -np.inf))
    assert khat == np.inf and np.all(np.isnan(smoothed))
    # An unbounded weight: infinite k-hat, all the mass on it.
    unbounded = log_weights.copy()
    unbounded[[3, 7]] = np.inf
    smoothed, khat = psis(unbounded)
    assert khat == np.inf
    np.testing.assert_allclose(np.exp(smoothed[[3, 7]]), 0.5)
    assert np.exp(smoothed).sum() == pytest.approx(1.0)
    # Equal positive weights (q matches the target up to a constant): bounded, k-hat -inf.
    equal = np.where(np.arange(100) < 60, 2.5, -np.inf)
    smoothed, khat = psis(equal)
    assert khat == -np.inf
    np.testing.assert_allclose(np.exp(smoothed[:60]), 1 / 60)
    with pytest.raises(ValueError, match="1-d"):
        psis(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="1-d"):
        psis(np.zeros(0))


def test_khat_threshold_follows_vehtari_et_al_2024():
    threshold = probinf.diagnostics.khat_threshold
    assert threshold(100) == pytest.approx(0.5)
    assert threshold(1000) == pytest.approx(2 / 3)
    assert threshold(2000) == pytest.approx(1 - 1 / np.log10(2000))
    assert threshold(10_000) == 0.7  # capped: above 0.7 more draws do not help
    with pytest.raises(ValueError, match="num_draws"):
        threshold(1)

"""The posteriordb development suite (benchmarks/posteriordb): loading, naming, scoring, densities."""

from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import init_to_uniform
from numpyro.infer.util import log_density
from scipy import stats
from scipy.special import logsumexp

REPO_ROOT = Path(__file__).resolve().parents[2]  # as tests/conftest.py's REPO_ROOT
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.posteriordb import (  # noqa: E402
    POSTERIORS,
    data_directory,
    load,
    parameter_errors,
    score,
    to_posteriordb_names,
)


@pytest.fixture(scope="module")
def posteriors(shared_data):
    return {name: load(name, shared_data / "posteriordb") for name in POSTERIORS}


def _trace(posterior):
    # init_to_uniform supplies values for the improper (flat) priors, which cannot be sampled;
    # radius 0.5 keeps the ARMA's moving-average coefficient inside (-1, 1), where it is stable
    model = handlers.substitute(handlers.seed(posterior.model, 0), substitute_fn=init_to_uniform(radius=0.5))
    return handlers.trace(model).get_trace(*posterior.args, **posterior.kwargs)


def _latent_values(trace):
    return {name: site["value"] for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]}


def test_there_are_twelve_posteriors():
    assert len(POSTERIORS) == len(set(POSTERIORS)) == 12


@pytest.mark.parametrize("name", POSTERIORS)
def test_model_traces_and_its_sites_map_onto_the_reference(posteriors, name):
    posterior = posteriors[name]
    assert all(draws.shape == (10_000,) for draws in posterior.reference.values())
    trace = _trace(posterior)
    latent = _latent_values(trace)
    # one-to-one: the latent sites have as many scalar coordinates as the reference has parameters
    assert sum(math.prod(value.shape) for value in latent.values()) == posterior.dim
    sites = {name: trace[name]["value"][None] for name in posterior.reference_sites}
    assert list(to_posteriordb_names(sites)) == list(posterior.reference)
    log_joint, _ = log_density(posterior.model, posterior.args, posterior.kwargs, latent)
    assert jnp.isfinite(log_joint)


def test_score_of_the_reference_itself_is_exactly_zero(posteriors):
    for posterior in posteriors.values():
        assert score(posterior, posterior.reference) == (0.0, 0.0)


def test_score_of_shifted_and_scaled_draws_is_the_shift_and_log_scale(posteriors):
    posterior = posteriors["sblrc-blr"]
    shifts = dict(zip(posterior.reference, [0.3, -0.05, 0.7, 0.0, 0.1, -0.2], strict=True))
    shifted = {name: draws + shifts[name] * draws.std(ddof=1) for name, draws in posterior.reference.items()}
    mean_error, log_sd_ratio = score(posterior, shifted)
    np.testing.assert_allclose(mean_error, 0.7, rtol=1e-12)
    assert log_sd_ratio < 1e-12

    scales = dict(zip(posterior.reference, [1.0, 0.5, 1.2, 2.0, 1.0, 0.9], strict=True))
    scaled = {name: draws.mean() + scales[name] * (draws - draws.mean())
              for name, draws in posterior.reference.items()}
    mean_error, log_sd_ratio = score(posterior, scaled)
    assert mean_error < 1e-12
    np.testing.assert_allclose(log_sd_ratio, math.log(2.0), rtol=1e-12)
    errors = parameter_errors(posterior, scaled)
    np.testing.assert_allclose(errors["beta[2]"][1], abs(math.log(0.5)), rtol=1e-12)


def test_score_accepts_numpyro_site_names(posteriors):
    posterior = posteriors["hmm_example-hmm_example"]
    reference = posterior.reference
    samples = {site: np.stack([reference[f"{site}[1]"], reference[f"{site}[2]"]], axis=-1)
               for site in ("theta1", "theta2", "mu")}
    samples["theta1"] = samples["theta1"][::-1]  # same draws, other order: same mean and sd
    mean_error, log_sd_ratio = score(posterior, samples)
    assert mean_error < 1e-12 and log_sd_ratio < 1e-12


def test_score_names_a_missing_parameter(posteriors):
    posterior = posteriors["sblrc-blr"]
    draws = {name: values for name, values in posterior.reference.items() if name != "beta[3]"}
    with pytest.raises(KeyError, match=r"beta\[3\]"):
        score(posterior, draws)
    with pytest.raises(ValueError, match="non-finite"):
        score(posterior, {**posterior.reference, "sigma": np.full(10, np.nan)})


def test_name_mapping_of_scalar_vector_and_matrix_sites():
    draws = np.arange(4 * 2 * 3, dtype=np.float64).reshape(4, 2, 3)
    named = to_posteriordb_names({"Sigma": draws, "beta": draws[:, 0], "tau": draws[:, 0, 0]})
    assert list(named) == ["Sigma[1,1]", "Sigma[1,2]", "Sigma[1,3]", "Sigma[2,1]", "Sigma[2,2]",
                           "Sigma[2,3]", "beta[1]", "beta[2]", "beta[3]", "tau"]
    np.testing.assert_array_equal(named["Sigma[2,1]"], draws[:, 1, 0])
    np.testing.assert_array_equal(named["Sigma[1,3]"], draws[:, 0, 2])
    np.testing.assert_array_equal(named["beta[3]"], draws[:, 0, 2])
    np.testing.assert_array_equal(named["tau"], draws[:, 0, 0])


def test_data_directory_errors_and_override(tmp_path, monkeypatch, shared_data):
    monkeypatch.setenv("PROBINF_POSTERIORDB", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="PROBINF_POSTERIORDB"):
        data_directory()
    monkeypatch.setenv("PROBINF_POSTERIORDB", str(shared_data / "posteriordb"))
    assert data_directory() == shared_data / "posteriordb"
    with pytest.raises(ValueError, match="must be one of"):
        load("eight_schools")


def _relative_tolerance(value) -> float:
    return 1e-10 if jnp.asarray(value).dtype == jnp.float64 else 1e-5


def test_blr_log_density_matches_scipy(posteriors):
    """blr.stan: sum log N(beta | 0, 10) + log half-N(sigma | 10) + sum log N(y | X beta, sigma)."""
    posterior = posteriors["sblrc-blr"]
    X, y = posterior.kwargs["X"], posterior.kwargs["y"]
    for draw in (0, 4_321, 9_999):
        beta = np.array([posterior.reference[f"beta[{i}]"][draw] for i in range(1, 6)])
        sigma = posterior.reference["sigma"][draw]
        expected = (stats.norm(0, 10).logpdf(beta).sum() + stats.halfnorm(scale=10).logpdf(sigma)
                    + stats.norm(X @ beta, sigma).logpdf(y).sum())
        actual, _ = log_density(posterior.model, (), posterior.kwargs, {"beta": beta, "sigma": sigma})
        np.testing.assert_allclose(float(actual), expected, rtol=_relative_tolerance(actual))


def test_arma_log_density_matches_the_stan_recursion(posteriors):
    posterior = posteriors["arma-arma11"]
    y = posterior.kwargs["y"]
    for draw in (0, 5_000):
        mu, phi, theta, sigma = (posterior.reference[name][draw] for name in ("mu", "phi", "theta", "sigma"))
        err = np.empty_like(y)
        err[0] = y[0] - (mu + phi * mu)
        for t in range(1, len(y)):
            err[t] = y[t] - (mu + phi * y[t - 1] + theta * err[t - 1])
        expected = (stats.norm(0, 10).logpdf(mu) + stats.norm(0, 2).logpdf([phi, theta]).sum()
                    + stats.halfcauchy(scale=2.5).logpdf(sigma) + stats.norm(0, sigma).logpdf(err).sum())
        params = {"mu": mu, "phi": phi, "theta": theta, "sigma": sigma}
        actual, _ = log_density(posterior.model, (), posterior.kwargs, params)
        np.testing.assert_allclose(float(actual), expected, rtol=_relative_tolerance(actual))


def test_hmm_log_density_matches_brute_force_over_state_paths(posteriors):
    """Forward algorithm vs. the sum over all 2^8 state paths of an 8-step prefix of the data."""
    posterior = posteriors["hmm_example-hmm_example"]
    y = posterior.kwargs["y"][:8]
    theta1, theta2, mu = np.array([0.7, 0.3]), np.array([0.2, 0.8]), np.array([2.5, 9.0])
    transition = np.stack([theta1, theta2])
    path_log_probs = []
    for path in itertools.product(range(2), repeat=len(y)):
        log_prob = stats.norm(mu[list(path)], 1.0).logpdf(y).sum()
        log_prob += sum(np.log(transition[a, b]) for a, b in zip(path[:-1], path[1:], strict=True))
        path_log_probs.append(log_prob)
    # Stan's forward recursion starts from gamma_1(k) = log N(y_1 | mu_k, 1): no initial-state factor
    expected = stats.norm([3.0, 10.0], 1.0).logpdf(mu).sum() + logsumexp(path_log_probs)
    params = {"theta1": theta1, "theta2": theta2, "mu": mu}
    actual, _ = log_density(posterior.model, (), {"N": len(y), "K": 2, "y": y}, params)
    np.testing.assert_allclose(float(actual), expected, rtol=_relative_tolerance(actual))


def test_gp_log_density_is_finite_at_long_length_scales(posteriors):
    """rho = 10 is inside the posterior; there Stan's 1e-10 jitter is below float32 resolution."""
    posterior = posteriors["gp_pois_regr-gp_pois_regr"]
    params = {"rho": 10.0, "alpha": 2.0, "f_tilde": np.full(11, 0.1)}
    log_joint, trace = log_density(posterior.model, (), posterior.kwargs, params)
    assert jnp.isfinite(log_joint) and jnp.all(jnp.isfinite(trace["f"]["value"]))


def test_tempered_smc_defaults_on_a_badly_scaled_regression(posteriors):
    # kilpisjarvi: intercept and slope on uncentred years, correlation ~ -1 and posterior
    # sds ~1e-3 of the slope against a standard-normal reference. Moves whitened only by the
    # cloud's standard deviations ended 2 reference sds off; whitening by the cloud's
    # covariance follows the ridge.
    import jax

    import probinf
    from probinf import smc

    posterior = posteriors["kilpisjarvi_mod-kilpisjarvi"]
    target = probinf.from_numpyro(posterior.model, *posterior.args, **posterior.kwargs)
    result = smc.tempered_smc(jax.random.key(0), target, 1000)
    mean_error, log_sd_ratio = score(posterior, result.samples(target))
    # 1,000 correlated particles: a tenth of an sd is several Monte Carlo standard errors.
    assert mean_error < 0.15 and log_sd_ratio < 0.15

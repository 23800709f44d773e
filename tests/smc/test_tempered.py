"""Tempered SMC: log Z and moments on targets with known answers; bad input."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import probinf
from probinf import smc
from probinf.exact import linear_gaussian_posterior

MEAN = jnp.array([0.5, -1.0, 1.5])
SD = jnp.array([0.5, 1.0, 2.0])
LOG_Z = 2.0


def gaussian_log_density(z):
    # A normalised Gaussian times e^LOG_Z: the normalising constant is exactly e^LOG_Z.
    return LOG_Z + jnp.sum(jax.scipy.stats.norm.logpdf(z, MEAN, SD))


GAUSSIAN = probinf.from_logdensity(gaussian_log_density, 3)


def batch_runs(replicates, seed, target, n, **kwargs):
    run = jax.jit(jax.vmap(lambda k: smc.tempered_smc(k, target, n, **kwargs)))
    return run(jax.random.split(jax.random.key(seed), replicates))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel": "hmc"},
        {"kernel": "rwm", "temperatures": np.geomspace(0.02, 1.0, 8), "num_mcmc_steps": 20},
        {"kernel": "mala", "waste_free_chain_length": 8},
        {"kernel": "hmc", "num_mcmc_steps": 5, "max_mcmc_steps": 40},
    ],
    ids=["adaptive-hmc", "fixed-rwm", "waste-free-mala", "adaptive-moves-hmc"],
)
def test_gaussian_log_evidence_and_moments(kwargs):
    # The reference N(0, 3^2 I) is wider than the target in every direction, so the
    # incremental weights are bounded and Z-hat / Z has light tails: the z-test below is
    # sound. (From N(0, I) the weights of the sd-2 coordinate have infinite variance; the
    # estimator is still unbiased, but a mean of 16 heavy-tailed ratios is not normal.)
    replicates = 16
    reference = probinf.MeanFieldGaussian.init(3, scale=3.0)
    result = batch_runs(replicates, 0, GAUSSIAN, 256, reference=reference, **kwargs)
    result.check()
    # Z-hat is unbiased (up to O(1/N) from adaptation): z-test on the ratio Z-hat / Z over runs.
    ratio = np.exp(np.asarray(result.log_evidence, np.float64) - LOG_Z)
    assert abs(ratio.mean() - 1) < 4 * ratio.std(ddof=1) / np.sqrt(replicates)
    # Each run's particle mean / variance estimates the exact moments; t-test across runs,
    # Bonferroni over 3 coordinates x 2 moments.
    particles = np.asarray(result.particles, np.float64)
    t = stats.t.isf(1e-3 / (2 * 6), replicates - 1)
    for estimate, exact in ((particles.mean(1), MEAN), (particles.var(1), SD**2)):
        standard_error = estimate.std(0, ddof=1) / np.sqrt(replicates)
        assert np.all(np.abs(estimate.mean(0) - np.asarray(exact)) < t * standard_error)


def test_adaptive_moves_stop_when_the_cloud_has_left_its_start():
    # Target = reference: one stage at temperature 1. HMC forgets its start within a few
    # moves, so the second block adds nothing: exactly two blocks.
    reference = probinf.MeanFieldGaussian.init(3)
    standard = probinf.from_logdensity(lambda z: jnp.sum(jax.scipy.stats.norm.logpdf(z)), 3)
    fast = smc.tempered_smc(jax.random.key(0), standard, 1024, reference=reference,
                            temperatures=[1.0], num_mcmc_steps=5, max_mcmc_steps=50)
    assert int(fast.num_stages) == 1 and float(fast.mcmc_steps[0]) == 10
    # A random walk with a tiny fixed step keeps diffusing (the jump grows linearly):
    # it runs to the cap.
    slow = smc.tempered_smc(jax.random.key(0), standard, 1024, reference=reference,
                            temperatures=[1.0], kernel="rwm", tune=False, step_size=1e-3,
                            num_mcmc_steps=5, max_mcmc_steps=50)
    assert float(slow.mcmc_steps[0]) == 50


def test_a_stage_whose_moves_were_rejected_moves_again_with_a_smaller_step():
    """HMC at step size 40 on the (whitened) Gaussian rejects almost every move; the stage is
    redone at 10, then 2.5, where moves are accepted. The history records the step used."""
    reference = probinf.MeanFieldGaussian.init(3, scale=3.0)
    kwargs = dict(reference=reference, temperatures=[1.0], step_size=40.0)
    retried = smc.tempered_smc(jax.random.key(0), GAUSSIAN, 512, **kwargs)
    fixed = smc.tempered_smc(jax.random.key(0), GAUSSIAN, 512, tune=False, **kwargs)
    assert float(fixed.acceptance_rates[0]) < 0.25 * 0.65 and float(fixed.step_sizes[0]) == 40.0
    used = float(retried.step_sizes[0])
    assert used in (10.0, 2.5, 0.625)  # 40 / 4^k, k = 1..3
    assert float(retried.acceptance_rates[0]) >= 0.25 * 0.65
    # Rejected moves leave resampling's duplicates in place; accepted ones separate them.
    distinct = lambda result: len(np.unique(np.asarray(result.particles), axis=0))
    assert distinct(fixed) < 400 and distinct(retried) == 512
    # One stage at temperature 1 is importance sampling then moves that leave the target
    # invariant: the moved cloud has the target's spread.
    sd = np.asarray(retried.particles, np.float64).std(0)
    np.testing.assert_allclose(sd, np.asarray(SD), rtol=0.2)


def test_bimodal_target_mode_proportions():
    weight = 0.3

    def log_density(z):
        left = jnp.log(weight) + jax.scipy.stats.norm.logpdf(z[0], -3.0, 0.5)
        right = jnp.log(1 - weight) + jax.scipy.stats.norm.logpdf(z[0], 3.0, 0.5)
        return jnp.logaddexp(left, right)

    target = probinf.from_logdensity(log_density, 1)
    reference = probinf.MeanFieldGaussian.init(1, scale=3.0)
    replicates = 16
    result = batch_runs(replicates, 1, target, 256, reference=reference, kernel="hmc")
    left_fraction = np.mean(np.asarray(result.particles[..., 0]) < 0, axis=1)
    t = stats.t.isf(5e-4, replicates - 1)
    assert abs(left_fraction.mean() - weight) < t * left_fraction.std(ddof=1) / np.sqrt(replicates)
    assert np.all((left_fraction > 0.1) & (left_fraction < 0.5))  # every run found both modes
    ratio = np.exp(np.asarray(result.log_evidence, np.float64))  # Z = 1
    assert abs(ratio.mean() - 1) < t * ratio.std(ddof=1) / np.sqrt(replicates)


def eight_schools(sigma, y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, 5.0))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def test_numpyro_model_evidence_and_arviz_export():
    data = probinf.datasets.load_eight_schools()
    y, sigma = np.asarray(data["y"], np.float64), np.asarray(data["sigma"], np.float64)
    target = probinf.from_numpyro(eight_schools, jnp.asarray(sigma), y=jnp.asarray(y))
    j = y.size
    prior_cov = np.full((j + 1, j + 1), 25.0)
    prior_cov[1:, 1:] += 25.0 * np.eye(j)
    design = np.hstack([np.zeros((j, 1)), np.eye(j)])
    mean, _, log_z = linear_gaussian_posterior(np.zeros(j + 1), prior_cov, design, y, np.diag(sigma**2))

    replicates = 8
    result = batch_runs(replicates, 2, target, 256)
    log_evidence = np.asarray(result.log_evidence, np.float64)
    t = stats.t.isf(5e-4, replicates - 1)
    ratio = np.exp(log_evidence - log_z)
    assert abs(ratio.mean() - 1) < t * ratio.std(ddof=1) / np.sqrt(replicates)
    mu = np.asarray(result.samples(target)["mu"]).mean(1)
    assert abs(mu.mean() - mean[0]) < t * mu.std(ddof=1) / np.sqrt(replicates)

    idata = result.to_inference_data(target)
    assert idata.posterior["mu"].shape == (replicates, 256)
    assert idata.posterior["theta"].shape == (replicates, 256, j)
    # Independent runs are chains; each run's record rides along in sample_stats.
    assert idata.log_likelihood["y"].shape == (replicates, 256, j)
    np.testing.assert_array_equal(idata.observed_data["y"], y)
    sample_stats = idata.sample_stats
    np.testing.assert_array_equal(sample_stats["log_evidence"], result.log_evidence)
    np.testing.assert_array_equal(sample_stats["num_stages"], result.num_stages)
    stages = int(np.max(result.num_stages))
    assert sample_stats["temperature"].shape == (replicates, stages)
    for run in range(replicates):
        last = int(result.num_stages[run])
        schedule = sample_stats["temperature"].values[run]
        np.testing.assert_array_equal(schedule[:last], result.temperatures[run, :last])
        assert schedule[last - 1] == 1.0 and np.all(np.isnan(schedule[last:]))
    np.testing.assert_allclose(sample_stats["lp"], target.log_density(result.particles), rtol=1e-6)
    single = jax.tree.map(lambda x: x[0] if hasattr(x, "ndim") and x.ndim else x, result)
    single_idata = single.to_inference_data(target)
    assert single_idata.posterior["theta"].shape == (1, 256, j)
    assert single_idata.sample_stats["log_evidence"].shape == (1,)


def test_arviz_loo_summary_and_plot_match_the_exact_conjugate_answers(conjugate_normal_mean):
    import arviz as az
    import matplotlib.pyplot as plt

    case = conjugate_normal_mean
    y = jnp.array(case.y)
    target = probinf.from_numpyro(case.model, y)
    idata = batch_runs(4, 3, target, 500).to_inference_data(target)
    loo = az.loo(idata, pointwise=True)
    exact = case.exact_loo(y)
    # PSIS-LOO of exact posterior draws: Monte Carlo error about 0.01 with 2,000 draws.
    assert abs(loo.elpd_loo - exact.sum()) < 0.1
    np.testing.assert_allclose(loo.loo_i.values, exact, atol=0.03)
    summary = az.summary(idata)
    assert summary.loc["mu", "mean"] == pytest.approx(case.posterior_mean_and_var(y)[0], abs=0.05)
    assert summary.loc["mu", "r_hat"] < 1.05
    az.plot_posterior(idata)
    plt.close("all")


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "temperatures, message",
    [
        ([0.5, 0.3, 1.0], "strictly increasing"),
        ([0.2, 0.2, 1.0], "strictly increasing"),
        ([0.2, 0.9], "end at 1"),
        ([0.0, 0.5, 1.0], "end at 1"),
        ([[0.5, 1.0]], "1-d"),
        ([0.5, np.nan, 1.0], "finite"),
    ],
)
def test_bad_schedules(temperatures, message):
    with pytest.raises(ValueError, match=f"temperatures.*{message}|{message}.*temperatures|temperatures"):
        smc.tempered_smc(jax.random.key(0), GAUSSIAN, 16, temperatures=temperatures)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"kernel": "nuts"}, "kernel"),
        ({"target_ess": 1.0}, "target_ess"),
        ({"num_mcmc_steps": 0}, "num_mcmc_steps"),
        ({"waste_free_chain_length": 3}, "waste_free_chain_length"),
        ({"step_size": -1.0}, "step_size"),
        ({"resampling": "nope"}, "resampling"),
        ({"reference": probinf.MeanFieldGaussian.init(2)}, "reference"),
        ({"temperatures": [0.5, 1.0], "max_stages": 1}, "max_stages"),
        ({"max_mcmc_steps": 5}, "max_mcmc_steps"),
        ({"max_mcmc_steps": 40, "waste_free_chain_length": 8}, "max_mcmc_steps"),
    ],
)
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        smc.tempered_smc(jax.random.key(0), GAUSSIAN, 16, **kwargs)


def test_bad_sizes_and_types():
    with pytest.raises(ValueError, match="num_particles"):
        smc.tempered_smc(jax.random.key(0), GAUSSIAN, 0)
    with pytest.raises(TypeError, match="target"):
        smc.tempered_smc(jax.random.key(0), gaussian_log_density, 16)


@pytest.mark.parametrize(
    "log_density, code, message",
    [
        (lambda z: jnp.where(z[0] > 1.0, jnp.nan, -0.5 * jnp.sum(z**2)), 1, "NaN"),
        (lambda z: -jnp.inf + 0.0 * z[0], 2, "zero weight"),
        (lambda z: -1e4 * jnp.sum((z - 3.0) ** 2), 3, "max_stages"),
    ],
    ids=["nan", "zero", "too-few-stages"],
)
def test_failures_raise_or_flag(log_density, code, message):
    target = probinf.from_logdensity(log_density, 2)
    kwargs = {"kernel": "rwm", "num_mcmc_steps": 2, "max_stages": 3}
    with pytest.raises(ValueError, match=message):
        smc.tempered_smc(jax.random.key(0), target, 32, **kwargs)
    result = smc.tempered_smc(jax.random.key(0), target, 32, raise_on_failure=False, **kwargs)
    assert int(result.failure) == code and not bool(result.ok)
    assert not np.isfinite(float(result.log_evidence))


GP_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist
import probinf
from probinf import smc

x = jnp.linspace(-3.0, 3.0, 8)
y = jnp.array([0, 1, 1, 3, 5, 2, 1, 0])

def model():
    rho = numpyro.sample("rho", dist.Gamma(5.0, 2.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
    k = alpha**2 * jnp.exp(-(x[:, None] - x[None]) ** 2 / (2 * rho**2)) + 1e-4 * jnp.eye(8)
    numpyro.sample("y", dist.Poisson(jnp.exp(jnp.linalg.cholesky(k) @ f_tilde)).to_event(1), obs=y)

result = smc.tempered_smc(jax.random.key(0), probinf.from_numpyro(model), 2000)
assert np.isfinite(float(result.log_evidence)), result.log_evidence
print("GP-OK")
"""


def test_a_target_with_batched_cholesky_does_not_deadlock_xla_cpu(repo_root, tmp_path):
    # A latent GP evaluates one Cholesky factor per particle (a batched LAPACK call). When
    # the retry loop evaluated the kernel's initial states a second time, XLA:CPU ran two
    # such batches at once on its two-worker pool and both waited forever (jaxlib 0.10.2,
    # two cores). Run in a subprocess so that a regression fails instead of hanging.
    script = tmp_path / "gp_tempered.py"
    script.write_text(GP_SCRIPT)
    try:
        out = subprocess.run([sys.executable, str(script)], cwd=repo_root, capture_output=True,
                             text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("tempered_smc on a latent-GP target did not finish in 240 s (deadlock?)")
    if out.returncode != 0:
        pytest.fail(out.stdout + out.stderr)
    assert "GP-OK" in out.stdout

"""fit(): optima against exact answers, the training loop's contract, and bad input."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import probinf
from probinf import vi


def test_full_rank_elbo_optimum_is_the_exact_posterior(problem_2d):
    family = probinf.FullRankGaussian.init(2)
    result = probinf.fit(vi.ELBO(8, vi.STL()), family, problem_2d.target, key=jax.random.key(0),
                         steps=1500, optimizer=optax.adam(3e-2), progress=False)
    fitted = result.family
    np.testing.assert_allclose(fitted.mean, problem_2d.mean, atol=0.03)
    np.testing.assert_allclose(fitted.covariance, problem_2d.cov, atol=0.03)
    # At the optimum the ELBO equals log Z (STL's gradient and the ELBO's variance vanish there).
    elbo = -vi.ELBO(4096)(jax.random.key(1), fitted, problem_2d.target)
    assert abs(float(elbo) - problem_2d.log_z) < 5e-3


def test_numpyro_conjugate_model_posterior_and_evidence():
    """Normal mean with known noise through from_numpyro: moments and log evidence exact."""
    import numpyro
    import numpyro.distributions as dist

    y = jnp.array([1.2, 0.4, 2.1, 1.7])

    def model(y):
        mu = numpyro.sample("mu", dist.Normal(0.5, 2.0))
        numpyro.sample("y", dist.Normal(mu, 0.8), obs=y)

    mean, cov, log_z = probinf.exact.linear_gaussian_posterior(
        [0.5], [[4.0]], np.ones((4, 1)), y, 0.64 * np.eye(4)
    )
    target = probinf.from_numpyro(model, y)
    family = probinf.MeanFieldGaussian.init(1)
    result = probinf.fit(vi.ELBO(8, vi.STL()), family, target, key=jax.random.key(0), steps=800,
                         optimizer=optax.adam(5e-2), progress=False)
    draws = result.sample_posterior(jax.random.key(2), 20_000)["mu"]
    assert abs(draws.mean() - mean[0]) < 0.02
    assert abs(draws.std() - math.sqrt(cov[0, 0])) < 0.02
    elbo = float(-vi.ELBO(4096)(jax.random.key(3), result.family, target))
    assert abs(elbo - log_z) < 5e-3
    idata = result.to_inference_data(jax.random.key(4), 500)
    assert idata.posterior["mu"].shape == (1, 500)


def test_enumeration_fits_a_discrete_posterior_exactly():
    unnormalised = jnp.array([0.5, 2.0, 1.0, 0.1, 3.0])
    target = probinf.from_logdensity(lambda z: jnp.log(unnormalised)[z[0].astype(jnp.int32)], 1)
    family = probinf.Categorical.init(1, 5)
    result = probinf.fit(vi.ELBO(estimator=vi.Enumerate()), family, target, key=jax.random.key(0),
                         steps=600, optimizer=optax.adam(0.1), progress=False)
    probs = jax.nn.softmax(result.family.logits[0])
    np.testing.assert_allclose(probs, unnormalised / unnormalised.sum(), atol=1e-3)
    # No Pareto k-hat for a discrete family; the log evidence is exact here (q = p / Z).
    assert result.diagnostics.reliable is None
    assert abs(result.diagnostics.log_evidence - math.log(float(unnormalised.sum()))) < 1e-3
    assert abs(-result.losses[-1] - math.log(float(unnormalised.sum()))) < 1e-4


def test_mixture_family_fits_a_bimodal_target():
    weights, locs = jnp.array([0.3, 0.7]), jnp.array([-3.0, 2.5])

    def log_density(z):
        return jax.nn.logsumexp(jnp.log(weights) + jax.scipy.stats.norm.logpdf(z[0], locs, 0.5)) + 0.7

    target = probinf.from_logdensity(log_density, 1)
    family = probinf.Mixture(
        [probinf.MeanFieldGaussian.init(1, loc=-1.0), probinf.MeanFieldGaussian.init(1, loc=1.0)]
    )
    result = probinf.fit(vi.ELBO(8, vi.Enumerate(vi.STL())), family, target, key=jax.random.key(0),
                         steps=2000, optimizer=optax.adam(3e-2), progress=False)
    fitted = result.family
    np.testing.assert_allclose(jnp.exp(fitted.log_weights), weights, atol=0.02)
    np.testing.assert_allclose([c.loc[0] for c in fitted.components], locs, atol=0.05)
    elbo = -vi.ELBO(64, vi.Enumerate())(jax.random.key(1), fitted, target)
    assert abs(float(elbo) - 0.7) < 0.01


def test_rws_and_iwae_learn_model_parameters():
    """z ~ N(0,1), x | z ~ N(z + theta, 1), x = 2: the marginal likelihood peaks at theta = 2."""

    def log_joint(z, theta):
        return jax.scipy.stats.norm.logpdf(z[0]) + jax.scipy.stats.norm.logpdf(2.0, z[0] + theta, 1.0)

    for objective in (vi.RWS(8, "both"), vi.IWAE(8)):
        target = probinf.from_logdensity(log_joint, 1, params=jnp.array(0.0))
        result = probinf.fit(objective, probinf.MeanFieldGaussian.init(1), target,
                             key=jax.random.key(0), steps=2000,
                             optimizer=optax.adam(optax.cosine_decay_schedule(5e-2, 2000)),
                             learn_target=True, progress=False)
        assert abs(float(result.target.params) - 2.0) < 0.15, type(objective).__name__
        # q(z) tracks the exact posterior N((x - theta)/2, 1/2).
        assert abs(float(result.family.loc[0]) - (2.0 - float(result.target.params)) / 2) < 0.15


def test_learned_baseline_tracks_the_signal(problem_2d):
    family = probinf.MeanFieldGaussian.init(2)
    result = probinf.fit(vi.ELBO(4, vi.Score("learned")), family, problem_2d.target,
                         key=jax.random.key(0), steps=1500, optimizer=optax.adam(2e-2),
                         progress=False)
    baseline = float(result.objective.estimator.baseline.value)
    # The baseline minimises E[(l - b)^2], so it ends near the mean log weight (the ELBO).
    assert abs(baseline - (-result.losses[-300:].mean())) < 0.3
    assert -result.losses[-300:].mean() > problem_2d.log_z - 0.3


def test_chunking_does_not_change_the_result(problem_2d):
    family = probinf.MeanFieldGaussian.init(2)
    runs = [
        probinf.fit(vi.ELBO(2), family, problem_2d.target, key=jax.random.key(7), steps=60,
                    chunk_size=size, progress=False)
        for size in (7, 60, None)  # None: adaptive chunks
    ]
    for run in runs[1:]:
        np.testing.assert_array_equal(runs[0].family.loc, run.family.loc)
        np.testing.assert_array_equal(runs[0].losses, run.losses)
    assert runs[0].num_steps == 60 and runs[0].stop_reason == "completed"


def test_early_stopping_on_plateau(problem_2d):
    family = probinf.FullRankGaussian.init(2, loc=problem_2d.mean)
    result = probinf.fit(vi.ELBO(4, vi.STL()), family, problem_2d.target, key=jax.random.key(0),
                         steps=20_000, chunk_size=100, patience=3, min_delta=1e-3, progress=False)
    assert result.stop_reason == "plateau"
    assert result.num_steps < 20_000
    assert result.num_steps == len(result.losses)


def test_patience_without_chunk_size_uses_fixed_chunks(problem_2d):
    """With patience the default chunks are 100 steps, not adaptive: the stop is reproducible."""
    family = probinf.MeanFieldGaussian.init(2)
    runs = [
        probinf.fit(vi.ELBO(2), family, problem_2d.target, key=jax.random.key(3), steps=5000,
                    patience=2, min_delta=1e9, progress=False, **extra)
        for extra in ({}, {"chunk_size": 100})
    ]
    # min_delta this large: only the first chunk counts as an improvement.
    assert runs[0].stop_reason == runs[1].stop_reason == "plateau"
    assert runs[0].num_steps == runs[1].num_steps == 300
    np.testing.assert_array_equal(runs[0].losses, runs[1].losses)


def test_nan_mid_training_stops_and_keeps_last_finite_state():
    def log_density(z):  # undefined beyond |z| > 3, while the mode sits at 10
        return jnp.where(jnp.abs(z[0]) > 3.0, jnp.nan, -0.5 * (z[0] - 10.0) ** 2)

    target = probinf.from_logdensity(log_density, 1)
    family = probinf.MeanFieldGaussian.init(1, scale=0.05)
    with pytest.warns(RuntimeWarning, match="non-finite loss or gradient at step"):
        result = probinf.fit(vi.ELBO(1), family, target, key=jax.random.key(0), steps=3000,
                             optimizer=optax.adam(5e-2), progress=False)
    assert 0 < result.num_steps < 3000
    assert result.stop_reason.startswith(f"non-finite loss or gradient at step {result.num_steps}")
    assert np.all(np.isfinite(result.losses))
    # The kept state is exactly the state after the last finite step.
    clean = probinf.fit(vi.ELBO(1), family, target, key=jax.random.key(0),
                        steps=result.num_steps, optimizer=optax.adam(5e-2), progress=False)
    np.testing.assert_array_equal(result.family.loc, clean.family.loc)
    np.testing.assert_array_equal(result.losses, clean.losses)


def test_resume_from_optimizer_state(problem_2d):
    family = probinf.MeanFieldGaussian.init(2)
    first = probinf.fit(vi.ELBO(2), family, problem_2d.target, key=jax.random.key(0), steps=50,
                        progress=False)
    second = probinf.fit(vi.ELBO(2), first.family, problem_2d.target, key=jax.random.key(1),
                         steps=50, opt_state=first.opt_state, progress=False)
    assert second.num_steps == 50 and np.all(np.isfinite(second.losses))


def test_custom_objective_function(problem_2d):
    """Any (key, family, target) -> loss function trains with fit."""

    def neg_elbo_with_entropy_bonus(key, family, target):
        z, log_q = family.sample_and_log_prob(key, 8)
        return -jnp.mean(target.log_density(z) - log_q)

    result = probinf.fit(neg_elbo_with_entropy_bonus, probinf.MeanFieldGaussian.init(2),
                         problem_2d.target, key=jax.random.key(0), steps=800,
                         optimizer=optax.adam(3e-2), progress=False)
    np.testing.assert_allclose(result.family.loc, problem_2d.mean, atol=0.1)


def test_save_and_load_round_trip_exactly(tmp_path, problem_2d):
    result = probinf.fit(vi.ELBO(2), probinf.FullRankGaussian.init(2), problem_2d.target,
                         key=jax.random.key(0), steps=20, progress=False)
    path = tmp_path / "family.pkl"
    probinf.save(path, result.family)
    loaded = probinf.load(path)
    assert type(loaded) is type(result.family)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(result.family), strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    z = jnp.array([[0.3, -0.2]])
    np.testing.assert_array_equal(loaded.log_prob(z), result.family.log_prob(z))
    (tmp_path / "junk.pkl").write_bytes(__import__("pickle").dumps([1, 2]))
    with pytest.raises(ValueError, match="path"):
        probinf.load(tmp_path / "junk.pkl")


def test_bad_input_to_fit(problem_2d):
    target, key = problem_2d.target, jax.random.key(0)
    family = probinf.MeanFieldGaussian.init(2)
    with pytest.raises(ValueError, match="dimension mismatch"):
        probinf.fit(vi.ELBO(), probinf.MeanFieldGaussian.init(3), target, key=key, steps=5)
    with pytest.raises(TypeError, match="optimizer"):
        probinf.fit(vi.ELBO(), family, target, key=key, optimizer=0.01)
    with pytest.raises(TypeError, match="key"):
        probinf.fit(vi.ELBO(), family, target, key=0)
    with pytest.raises(ValueError, match="steps"):
        probinf.fit(vi.ELBO(), family, target, key=key, steps=0)
    with pytest.raises(ValueError, match="learn_target"):
        probinf.fit(vi.ELBO(), family, target, key=key, steps=5, learn_target=True)
    with pytest.raises(TypeError, match="family"):
        probinf.fit(vi.ELBO(), object(), target, key=key, steps=5)


def test_rws_wake_p_without_learn_target_is_rejected():
    # Before: the fit ran with nothing trained (family and params unchanged), without a word.
    target = probinf.from_logdensity(lambda z, p: -0.5 * jnp.sum((z - p) ** 2), 2, params=jnp.ones(2))
    family = probinf.MeanFieldGaussian.init(2)
    with pytest.raises(ValueError, match=r"RWS\(phase='p'\) trains only the target's `params`.*"
                                         "pass learn_target=True"):
        probinf.fit(vi.RWS(4, phase="p"), family, target, key=jax.random.key(0), steps=5)


class _IntegerShift(probinf.Family):
    """A family whose only array is an integer shift (so fit has nothing to train)."""

    shift: jax.Array

    @property
    def dim(self):
        return self.shift.shape[0]

    def sample_and_log_prob(self, key, n):
        z = jax.random.normal(key, (n, self.dim)) + self.shift
        return z, self.log_prob(z)

    def log_prob(self, z):
        return jnp.sum(jax.scipy.stats.norm.logpdf(z - self.shift), axis=-1)


def test_a_family_with_nothing_to_train_is_rejected(problem_2d):
    with pytest.raises(ValueError, match=r"nothing to train: `family` \(_IntegerShift\) holds no "
                                         "floating-point array"):
        probinf.fit(vi.ELBO(), _IntegerShift(jnp.array([1, 2])), problem_2d.target,
                    key=jax.random.key(0), steps=5)


@pytest.mark.parametrize("bad_value", [jnp.nan, jnp.inf])
def test_non_finite_target_is_named(bad_value):
    target = probinf.from_logdensity(lambda z: bad_value + 0.0 * z[0], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="`target` returned a non-finite log density"):
            probinf.fit(vi.ELBO(), probinf.MeanFieldGaussian.init(1), target,
                        key=jax.random.key(0), steps=10, progress=False)


def test_non_finite_loss_with_a_finite_target_blames_the_objective():
    """Diagnosed on the family as it was before the bad step (its update is NaN)."""
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 2)

    def nan_loss(key, family, target):
        return jnp.nan * jnp.sum(family.loc)

    with pytest.raises(ValueError, match="although the target is finite"):
        probinf.fit(nan_loss, probinf.MeanFieldGaussian.init(2), target,
                    key=jax.random.key(0), steps=10, progress=False)


def test_steps_none_converges_to_the_exact_optimum(problem_2d):
    """Gaussian target, full-rank family: the optimum is the target itself (q = p / Z).
    Run until converged: stops far below max_steps, at the optimum, and the diagnostics
    see (near-)constant weights whose average is Z."""
    family = probinf.FullRankGaussian.init(2)
    result = probinf.fit(vi.ELBO(8, vi.STL()), family, problem_2d.target, key=jax.random.key(0),
                         progress=False)
    assert result.stop_reason == "converged" and result.converged
    # STL's estimate has zero variance at this optimum: the iterates converge, the loss is
    # constant to rounding, and the last iterate (not a lagging average) is returned.
    assert not result.averaged
    assert 1000 < result.num_steps < 5000 and len(result.losses) == result.num_steps
    np.testing.assert_allclose(result.family.mean, problem_2d.mean, atol=0.01)
    np.testing.assert_allclose(result.family.covariance, problem_2d.cov, atol=0.01)
    diagnostics = result.diagnostics
    assert diagnostics.reliable and diagnostics.khat < 0.5 and diagnostics.num_draws == 2000
    assert abs(diagnostics.log_evidence - problem_2d.log_z) < 1e-3
    assert abs(diagnostics.elbo - problem_2d.log_z) < 1e-3
    assert "stop reason: converged" in result.summary() and "k-hat" in result.summary()


def test_a_converged_fit_returns_the_average_of_its_iterates():
    """Adam at a constant step leaves the last iterate fluctuating around the optimum; a
    converged fit returns the running average of the iterates, which is nearer it. On a
    6-d Gaussian target, started (by `vi.initialize`) at the exact answer, so that only the
    fluctuation is measured: the RMS error of the means (in posterior sds) and log sds over
    six seeds, with the trajectory itself unchanged (same losses)."""
    dim = 6
    rng = np.random.default_rng(3)
    mean = rng.normal(size=dim)
    factor = rng.normal(size=(dim, dim)) / np.sqrt(dim) + np.eye(dim)
    cov = factor @ factor.T
    precision = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    centre = jnp.asarray(mean, jnp.float32)
    target = probinf.from_logdensity(
        lambda z: -0.5 * (z - centre) @ precision @ (z - centre), dim)
    sd = np.sqrt(np.diag(cov))
    family = vi.initialize(jax.random.key(9), target)
    errors = {True: [], False: []}
    for seed in range(6):
        runs = {average: probinf.fit(vi.ELBO(4), family, target, key=jax.random.key(seed),
                                     progress=False, diagnose=False, average=average)
                for average in (True, False)}
        np.testing.assert_array_equal(runs[True].losses, runs[False].losses)
        assert runs[True].converged and runs[True].averaged and not runs[False].averaged
        for average, run in runs.items():
            fitted_sd = np.sqrt(np.diag(np.asarray(run.family.covariance)))
            errors[average] += [(np.asarray(run.family.mean) - mean) / sd,
                                np.log(fitted_sd / sd)]
    rms = {average: float(np.sqrt(np.mean(np.square(e)))) for average, e in errors.items()}
    assert rms[True] < 0.75 * rms[False], rms
    assert "running average of the iterates" in runs[True].summary()
    # Under 1,000 steps the rule cannot judge stationarity: the last iterate is returned.
    short = probinf.fit(vi.ELBO(4), family, target, key=jax.random.key(0), steps=300,
                        progress=False, diagnose=False)
    assert short.converged is None and not short.averaged


def test_slow_straight_climb_runs_to_max_steps_and_says_so():
    """Plain gradient descent with a tiny step on N(10, I): E[grad of the ELBO wrt loc] =
    10 - loc, so loc_t = 10 (1 - (1 - lr)^t) = 2.59 after 3,000 steps at lr = 1e-4 (the
    sampling noise adds ~0.002). The loss falls steadily the whole time: the rule must not
    stop, the run ends at max_steps with a warning, and k-hat flags the unfinished fit."""
    import optax

    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum((z - 10.0) ** 2), 2)
    with pytest.warns(RuntimeWarning) as record:
        result = probinf.fit(vi.ELBO(8), probinf.MeanFieldGaussian.init(2), target,
                             key=jax.random.key(0), optimizer=optax.sgd(1e-4), max_steps=3000,
                             progress=False)
    messages = [str(w.message) for w in record]
    assert any("did not converge in max_steps=3000" in m for m in messages), messages
    assert any("k-hat" in m and "unreliable" in m for m in messages), messages
    assert result.stop_reason == "max_steps" and result.num_steps == 3000
    assert result.converged is False and result.diagnostics.reliable is False
    np.testing.assert_allclose(result.family.loc, 10 * (1 - (1 - 1e-4) ** 3000), atol=0.02)


def test_max_steps_below_what_the_rule_needs_warns():
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 1)
    with pytest.warns(RuntimeWarning, match="at least 1000 steps to judge"):
        result = probinf.fit(vi.ELBO(2), probinf.MeanFieldGaussian.init(1), target,
                             key=jax.random.key(0), max_steps=200, progress=False, diagnose=False)
    assert result.stop_reason == "max_steps" and result.num_steps == 200
    assert result.converged is False and result.diagnostics is None


def test_convergence_stop_does_not_depend_on_chunking(problem_2d):
    family = probinf.MeanFieldGaussian.init(2, loc=problem_2d.mean)
    runs = [
        probinf.fit(vi.ELBO(2), family, problem_2d.target, key=jax.random.key(5),
                    chunk_size=size, progress=False, diagnose=False)
        for size in (7, 100, None)
    ]
    assert runs[0].stop_reason == "converged"
    for run in runs[1:]:
        assert run.num_steps == runs[0].num_steps
        np.testing.assert_array_equal(runs[0].family.loc, run.family.loc)
        np.testing.assert_array_equal(runs[0].losses, run.losses)


def test_fixed_steps_and_exports(problem_2d):
    """A fixed budget completes as asked; the diagnostics travel to ArviZ."""
    family = probinf.FullRankGaussian.init(2, loc=problem_2d.mean,
                                           scale_tril=jnp.linalg.cholesky(problem_2d.cov))
    # Plain SGD: STL's gradient vanishes at the optimum, so the family stays there (Adam's
    # normalised first steps would move it by about the learning rate).
    sgd = optax.sgd(1e-2)
    result = probinf.fit(vi.ELBO(4, vi.STL()), family, problem_2d.target, key=jax.random.key(0),
                         steps=30, optimizer=sgd, progress=False)
    assert result.stop_reason == "completed" and result.num_steps == 30
    assert result.converged is None  # under the 1,000 steps the rule needs
    idata = result.to_inference_data(jax.random.key(1), 200)
    attrs = idata.posterior.attrs
    assert attrs["vi_khat"] == result.diagnostics.khat
    assert attrs["vi_log_evidence"] == result.diagnostics.log_evidence
    assert attrs["vi_verdict"] == "good" and attrs["vi_stop_reason"] == "completed"
    # Each draw's log weight: at the optimum every one is log Z.
    log_weight = idata.sample_stats["log_weight"].values
    assert log_weight.shape == (1, 200)
    np.testing.assert_allclose(log_weight, problem_2d.log_z, atol=1e-4)
    assert probinf.fit(vi.ELBO(4, vi.STL()), family, problem_2d.target, key=jax.random.key(0),
                       steps=30, optimizer=sgd, progress=False, diagnose=False).diagnostics is None


def test_bad_stopping_and_diagnostic_options(problem_2d):
    target, key = problem_2d.target, jax.random.key(0)
    family = probinf.MeanFieldGaussian.init(2)
    with pytest.raises(ValueError, match="max_steps"):
        probinf.fit(vi.ELBO(), family, target, key=key, max_steps=0)
    with pytest.raises(ValueError, match="num_diagnostic_draws"):
        probinf.fit(vi.ELBO(), family, target, key=key, steps=5, num_diagnostic_draws=10)
    with pytest.raises(TypeError, match="diagnose"):
        probinf.fit(vi.ELBO(), family, target, key=key, steps=5, diagnose="yes")


# --- ArviZ export ---------------------------------------------------------------------------

def test_arviz_export_loo_summary_and_plot_of_a_numpyro_model(conjugate_normal_mean):
    import arviz as az
    import matplotlib.pyplot as plt
    from numpyro.infer.util import log_likelihood

    case = conjugate_normal_mean
    y = jnp.array(case.y)
    target = probinf.from_numpyro(case.model, y)
    result = probinf.fit(vi.ELBO(8, vi.STL()), probinf.MeanFieldGaussian.init(1), target,
                         key=jax.random.key(0), steps=800, optimizer=optax.adam(5e-2),
                         progress=False)
    own = result.to_inference_data(jax.random.key(1), 1000)
    assert set(own.groups()) == {"posterior", "log_likelihood", "sample_stats", "observed_data"}
    stats = own.sample_stats
    np.testing.assert_allclose(stats["log_weight"], stats["lp"] - result.family.log_prob(
        jnp.asarray(own.posterior["mu"].values[0, :, None])), atol=1e-4)
    np.testing.assert_allclose(np.exp(stats["psis_log_weight"]).sum(), 1.0, rtol=1e-6)
    assert stats["khat"].dims == ("chain",) and float(stats["khat"][0]) < 0.5
    # A close family: the smoothed weights' ESS is most of the draws (Kish, checked by hand).
    weights = np.exp(stats["psis_log_weight"].values[0])
    assert float(stats["ess"][0]) == pytest.approx(1.0 / np.sum(weights**2), rel=1e-4)
    assert 800 < float(stats["ess"][0]) <= 1000
    np.testing.assert_allclose(own.log_likelihood["y"],
                               log_likelihood(case.model, {"mu": own.posterior["mu"].values},
                                              y, batch_ndims=2)["y"], rtol=1e-5)
    np.testing.assert_array_equal(own.observed_data["y"], y)

    # Importance-resampled draws are draws of the posterior: their PSIS-LOO is the exact LOO
    # up to Monte Carlo error (about 0.01 with 1,000 draws here).
    resampled = result.to_inference_data(jax.random.key(2), 1000, resample=True)
    assert resampled.posterior.attrs["vi_resampled"] == 1
    loo = az.loo(resampled, pointwise=True)
    exact = case.exact_loo(y)
    assert abs(loo.elpd_loo - exact.sum()) < 0.1
    np.testing.assert_allclose(loo.loo_i.values, exact, atol=0.03)
    assert np.isfinite(az.loo(own).elpd_loo)
    summary = az.summary(resampled, var_names=["mu"])
    assert summary.loc["mu", "mean"] == pytest.approx(case.posterior_mean_and_var(y)[0], abs=0.05)
    az.plot_posterior(resampled)
    plt.close("all")

"""probinf.vi.diagnostics: PSIS diagnostics and importance resampling against closed forms.

The targets are Gaussians (`conftest.GaussianProblem`, log Z known) and the families
Gaussians whose importance weights have known moments: for a one-dimensional target
N(m, 1) and family N(m + d, s^2) (in units of the target's sd),

    E_q[w^2] / Z^2 = s / sqrt(2 a) * exp(b^2 / (4 a) + d^2 / (2 s^2)),
    a = 1 - 1/(2 s^2),  b = d / s^2,

which gives the Monte Carlo error of every estimate below; with s < 1 the weights'
tail is generalised Pareto with shape k = 1 - s^2.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probinf
from probinf import vi


def _second_moment(shift, scale):
    """E_q[w^2] / Z^2 for target N(0, 1) and family N(shift, scale^2) (module docstring)."""
    a = 1 - 1 / (2 * scale**2)
    b = shift / scale**2
    return scale / math.sqrt(2 * a) * math.exp(b**2 / (4 * a) + shift**2 / (2 * scale**2))


def test_exact_family_has_constant_weights(problem_2d):
    """q = p / Z: every log weight is log Z (to float32 rounding)."""
    family = probinf.FullRankGaussian.init(2, loc=problem_2d.mean,
                                           scale_tril=jnp.linalg.cholesky(problem_2d.cov))
    diagnostics = vi.diagnose(jax.random.key(0), family, problem_2d.target)
    assert diagnostics.num_draws == 2000 and diagnostics.num_nonfinite == 0
    assert diagnostics.khat <= 0.5 and diagnostics.reliable and diagnostics.verdict == "good"
    assert diagnostics.log_evidence == pytest.approx(problem_2d.log_z, abs=1e-5)
    assert diagnostics.elbo == pytest.approx(problem_2d.log_z, abs=1e-5)
    assert diagnostics.ess == pytest.approx(2000, rel=1e-4)
    assert diagnostics.ess_raw == pytest.approx(2000, rel=1e-4)
    assert diagnostics.khat_threshold == pytest.approx(1 - 1 / math.log10(2000))
    text = diagnostics.summary()
    assert "k-hat" in text and "good" in text and str(diagnostics) == text


def test_wider_family_estimates_against_closed_forms(problem_1d):
    """Family 1.5x wider than the target: bounded weights, so PSIS says good, and the
    log evidence, ELBO and ESS match their closed forms within Monte Carlo error."""
    sd = math.sqrt(float(problem_1d.cov[0, 0]))
    scale = 1.5
    family = probinf.MeanFieldGaussian.init(1, loc=problem_1d.mean, scale=scale * sd)
    diagnostics = vi.diagnose(jax.random.key(1), family, problem_1d.target, num_draws=2000)
    assert diagnostics.khat < 0.5 and diagnostics.verdict == "good"
    second = _second_moment(0.0, scale)  # 1.203
    # log Z-hat: sd of Z-hat / Z is sqrt((E[w^2]/Z^2 - 1) / S) = 0.010; 4 sd.
    assert abs(diagnostics.log_evidence - problem_1d.log_z) < 4 * math.sqrt((second - 1) / 2000)
    # ELBO = log Z - KL(q || p) = log Z - (s^2 - 1 - 2 log s) / 2; log w = c - a' x^2 with
    # a' = (1 - 1/s^2) / 2 and x ~ N(0, s^2), so sd(log w) = sqrt(2) a' s^2 = 0.88: 4 se.
    exact_elbo = problem_1d.log_z - 0.5 * (scale**2 - 1 - 2 * math.log(scale))
    elbo_se = math.sqrt(2) * 0.5 * (1 - 1 / scale**2) * scale**2 / math.sqrt(2000)
    assert abs(diagnostics.elbo - exact_elbo) < 4 * elbo_se
    # Kish ESS / S -> Z^2 / E[w^2] = 0.8315; its relative Monte Carlo sd here is about 2%.
    assert abs(diagnostics.ess_raw / 2000 - 1 / second) < 0.05
    assert diagnostics.ess <= 2000 + 1e-6


def test_narrow_family_is_flagged_unreliable():
    """Family 5x narrower than the target: weight tail shape k = 1 - 0.2^2 = 0.96. PSIS's
    k-hat is biased low on these log-normal-like tails (mean 0.86, sd 0.09 over seeds
    at S = 20,000 for k = 0.94), so the check is the verdict, with 3 sd of room."""
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 1)
    family = probinf.MeanFieldGaussian.init(1, scale=0.2)
    diagnostics = vi.diagnose(jax.random.key(2), family, target, num_draws=20_000)
    assert diagnostics.khat_threshold == 0.7
    assert abs(diagnostics.khat - 0.96) < 0.3
    assert diagnostics.khat > 0.7 and diagnostics.reliable is False
    assert diagnostics.verdict == "unreliable"
    assert "cannot repair" in diagnostics.unreliable_message()


@pytest.mark.parametrize("bad", [-jnp.inf, jnp.nan])
def test_non_finite_target_values_count_as_zero_weight(bad):
    """Target N(0, 1) truncated to z < 1 (-inf or NaN beyond), family N(0, 1): the weights
    are 1 below 1 and 0 above, so Z-hat is the fraction below, Z = Phi(1) = 0.8413,
    with binomial sd sqrt(Z (1 - Z) / S) = 0.0082 (relative 0.0097): 4 sd in log space."""
    target = probinf.from_logdensity(
        lambda z: jnp.where(z[0] < 1.0, -0.5 * z[0] ** 2 - 0.5 * math.log(2 * math.pi), bad), 1
    )
    diagnostics = vi.diagnose(jax.random.key(3), probinf.MeanFieldGaussian.init(1), target)
    z_exact = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert abs(diagnostics.log_evidence - math.log(z_exact)) < 4 * 0.0097
    assert abs(diagnostics.num_nonfinite / 2000 - (1 - z_exact)) < 4 * 0.0082
    assert diagnostics.elbo == -math.inf  # the target is -inf on a set the family covers
    # The weights are 0 or 1 up to float32 rounding (log p and log q are computed apart).
    assert diagnostics.khat <= 0.5 and diagnostics.reliable
    assert any("count as zero weight" in note for note in diagnostics.notes)


def test_every_weight_zero_is_reported_not_raised():
    target = probinf.from_logdensity(lambda z: -jnp.inf + 0.0 * z[0], 1)
    diagnostics = vi.diagnose(jax.random.key(4), probinf.MeanFieldGaussian.init(1), target, 100)
    assert diagnostics.khat == math.inf and diagnostics.reliable is False
    assert diagnostics.log_evidence == -math.inf and diagnostics.ess == 0.0
    assert any("every draw had zero weight" in note for note in diagnostics.notes)
    with pytest.raises(ValueError, match="every one of the"):
        vi.importance_resample(jax.random.key(5), probinf.MeanFieldGaussian.init(1), target, 10)


def test_discrete_family_gets_no_khat_but_exact_evidence():
    """Uniform family over 5 states, target masses p = [0.5, 2, 1, 0.1, 3]: w = 5 p_k,
    Z = 6.6, Var(w) = 5 sum p^2 - Z^2 = 27.74, so sd(Z-hat / Z) = 0.0178 at S = 2000."""
    masses = jnp.array([0.5, 2.0, 1.0, 0.1, 3.0])
    target = probinf.from_logdensity(lambda z: jnp.log(masses)[z[0].astype(jnp.int32)], 1)
    diagnostics = vi.diagnose(jax.random.key(6), probinf.Categorical.init(1, 5), target)
    assert math.isnan(diagnostics.khat) and diagnostics.reliable is None
    assert diagnostics.verdict == "not assessed"
    assert any("discrete" in note for note in diagnostics.notes)
    total = float(masses.sum())
    relative_sd = math.sqrt((5 * float(jnp.sum(masses**2)) - total**2) / 2000) / total
    assert abs(diagnostics.log_evidence - math.log(total)) < 4 * relative_sd


def test_hierarchical_family_is_assessed_with_its_estimated_density():
    """u ~ N(0, 1), z | u ~ N(u, 1) with the exact reverse model r(u | z) = N(z/2, 1/2):
    then the estimate of log q(z) is exact, so against the target N(0, 2) * e^0.3 every
    log weight equals 0.3 and the diagnostics are those of an exact family."""
    mixing = probinf.MeanFieldGaussian.init(1)
    conditional = probinf.AffineGaussianConditional(jnp.ones((1, 1)), jnp.zeros(1), jnp.zeros(1))
    reverse = probinf.AffineGaussianConditional(
        jnp.full((1, 1), 0.5), jnp.zeros(1), jnp.full(1, 0.5 * math.log(0.5))
    )
    family = probinf.HierarchicalFamily(mixing, conditional, reverse, num_inner=2)
    target = probinf.from_logdensity(
        lambda z: 0.3 - 0.25 * z[0] ** 2 - 0.5 * math.log(2 * math.pi * 2.0), 1
    )
    diagnostics = vi.diagnose(jax.random.key(7), family, target)
    assert diagnostics.log_evidence == pytest.approx(0.3, abs=1e-4)
    assert diagnostics.elbo == pytest.approx(0.3, abs=1e-4)
    assert diagnostics.reliable and diagnostics.khat <= 0.5
    assert any("no tractable log_prob" in note for note in diagnostics.notes)


def test_importance_resampling_corrects_a_wrong_gaussian(problem_1d):
    """Family N(mean + 0.5 sd, (1.5 sd)^2); exact posterior N(0.7, 0.6).

    Monte Carlo error of the resampled mean: resampling n = 4,000 of S = 40,000 proposals
    adds the resampling noise sd^2 / n to the importance-sampling noise sd^2 / ESS, with
    ESS / S = Z^2 / E[w^2] = 1 / 1.292 (module docstring), so
    se(mean) = sd * sqrt(1/4000 + 1.292/40000) = 0.0168 sd; se(sd) is about
    0.0168 sd / sqrt(2) (Gaussian). Both are checked at 4 se; the family's own draws
    miss by 0.5 sd, about 30 se.
    """
    mean, sd = float(problem_1d.mean[0]), math.sqrt(float(problem_1d.cov[0, 0]))
    family = probinf.MeanFieldGaussian.init(1, loc=mean + 0.5 * sd, scale=1.5 * sd)
    result = vi.FitResult(family=family, target=problem_1d.target, objective=None,
                          losses=np.zeros(0), num_steps=0, stop_reason="completed")
    draws = result.resample(jax.random.key(8), 4000, num_proposals=40_000)["z"][:, 0]
    se_mean = sd * math.sqrt(1 / 4000 + _second_moment(0.5, 1.5) / 40_000)
    assert abs(draws.mean() - mean) < 4 * se_mean
    assert abs(draws.std() - sd) < 4 * se_mean / math.sqrt(2)
    own = result.sample_posterior(jax.random.key(9), 4000)["z"][:, 0]
    assert abs(own.mean() - mean) > 10 * se_mean and abs(own.std() - sd) > 10 * se_mean
    # The unconstrained form, and its diagnostics of the proposals.
    z, diagnostics = vi.importance_resample(jax.random.key(8), family, problem_1d.target, 4000,
                                            num_proposals=40_000)
    np.testing.assert_array_equal(z[:, 0], draws)
    assert diagnostics.num_draws == 40_000 and diagnostics.reliable
    assert abs(diagnostics.ess / 40_000 - 1 / _second_moment(0.5, 1.5)) < 0.05


def test_resampling_warns_when_it_cannot_repair_the_family():
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 1)
    family = probinf.MeanFieldGaussian.init(1, scale=0.2)
    with pytest.warns(RuntimeWarning, match="cannot repair"):
        z, diagnostics = vi.importance_resample(jax.random.key(2), family, target, 100,
                                                num_proposals=20_000)
    assert z.shape == (100, 1) and diagnostics.reliable is False


def test_bad_input():
    target = probinf.from_logdensity(lambda z: -0.5 * jnp.sum(z**2), 1)
    family = probinf.MeanFieldGaussian.init(1)
    with pytest.raises(ValueError, match="num_draws"):
        vi.diagnose(jax.random.key(0), family, target, num_draws=50)
    with pytest.raises(ValueError, match="num_samples"):
        vi.importance_resample(jax.random.key(0), family, target, 0)
    with pytest.raises(ValueError, match="num_proposals"):
        vi.importance_resample(jax.random.key(0), family, target, 10, num_proposals=20)
    with pytest.raises(TypeError, match="family"):
        vi.diagnose(jax.random.key(0), object(), target)

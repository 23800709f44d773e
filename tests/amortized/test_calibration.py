"""SBC, TARP and C2ST on posteriors whose calibration is known exactly.

The exact conjugate posterior is calibrated by construction; scaling its components'
spread or shifting its means makes it provably miscalibrated. C2ST is checked on
Gaussians whose Bayes-optimal accuracy is known.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from amortized import GaussianMixture, MixturePosterior, c2st, sbc, tarp
from amortized.calibration import ks_uniform_test, sample_posteriors, sbc_uniformity_test
from amortized.tasks import ConjugateGaussian

TASK = ConjugateGaussian(2, max_components=2, num_observations=(1, 5))
NUM_SIMULATIONS = 400


@pytest.fixture(scope="module")
def simulations():
    batch = TASK.simulate(jax.random.key(0), NUM_SIMULATIONS)
    return batch.theta, (batch.prior, batch.observations, batch.mask)


def exact(observation):
    return TASK.exact_posterior(*observation)


def overconfident(observation):
    post = TASK.exact_posterior(*observation)
    return GaussianMixture(post.log_weights, post.means, 0.5 * post.scale_tril)


def biased(observation):
    post = TASK.exact_posterior(*observation)
    shift = jnp.sqrt(jnp.diagonal(post.covariance))
    return GaussianMixture(post.log_weights, post.means + shift, post.scale_tril)


def test_sbc_passes_for_the_exact_posterior_and_flags_miscalibrated_ones(simulations):
    thetas, observations = simulations
    good = sbc(jax.random.key(1), MixturePosterior(exact), thetas, observations)
    assert good.passed(0.01), good.p_values
    assert good.ranks.shape == (NUM_SIMULATIONS, 2) and good.ranks.max() <= 99
    for wrong in (overconfident, biased):
        bad = sbc(jax.random.key(1), MixturePosterior(wrong), thetas, observations)
        assert not bad.passed(0.01) and bad.combined_p_value < 1e-6, wrong.__name__


def test_tarp_passes_for_the_exact_posterior_and_flags_miscalibrated_ones(simulations):
    thetas, observations = simulations
    good = tarp(jax.random.key(2), MixturePosterior(exact), thetas, observations)
    assert good.passed(0.01), good.p_value
    # |ECP - alpha| of a correct posterior is a KS-type fluctuation of order 1/sqrt(n).
    assert good.area < 2.0 / np.sqrt(NUM_SIMULATIONS)
    bad = tarp(jax.random.key(2), MixturePosterior(overconfident), thetas, observations)
    assert not bad.passed(0.01) and bad.area > 3 * good.area
    # Overconfident: the truth is an outlier among the draws, so its level sits in the outer
    # tenths of [0, 1] far more often than the 20 % of a uniform level.
    levels = bad.coverage_levels
    assert np.mean((levels < 0.1) | (levels > 0.9)) > 0.3


def test_sbc_uniformity_test_against_scipy():
    ranks = np.random.default_rng(0).integers(0, 50, size=(300, 2))
    stats_, p_values = sbc_uniformity_test(ranks, 49, 10)
    for column, stat, p in zip(ranks.T, stats_, p_values, strict=True):
        counts = np.bincount(column // 5, minlength=10)
        reference = stats.chisquare(counts)
        assert stat == pytest.approx(reference.statistic, rel=1e-6)
        assert p == pytest.approx(reference.pvalue, rel=1e-4)
    flat = np.tile(np.arange(50), 6)[:, None]
    assert sbc_uniformity_test(flat, 49, 10)[1][0] == pytest.approx(1.0)


def test_ks_uniform_test_matches_the_kolmogorov_distribution():
    values = np.random.default_rng(1).uniform(size=200) ** 1.2
    statistic, p = ks_uniform_test(values)
    assert statistic == pytest.approx(stats.kstest(values, "uniform").statistic, rel=1e-9)
    n = values.size
    assert p == pytest.approx(special.kolmogorov((np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n)) * statistic), rel=1e-6)


def test_c2st_knows_equal_shifted_and_separated_gaussians():
    n = 1500
    x = jax.random.normal(jax.random.key(3), (n, 2))
    y = jax.random.normal(jax.random.key(4), (n, 2))
    shift = jnp.array([1.0, 0.0])
    # Half the samples from each side: accuracy sd is about sqrt(0.25 / 3000) ~ 0.009.
    assert abs(c2st(jax.random.key(5), x, y) - 0.5) < 0.05
    # Bayes-optimal accuracy for N(0, I) vs N(e1, I) is Phi(1/2) = 0.6915.
    assert abs(c2st(jax.random.key(5), x, y + shift) - stats.norm.cdf(0.5)) < 0.04
    assert c2st(jax.random.key(5), x, y + 6 * shift) > 0.98


class _NumpyPosterior:
    """A posterior written outside JAX: the diagnostics fall back to one call per observation."""

    def sample(self, key, observation, num_samples):
        seed = int(jax.random.randint(key, (), 0, 2**30))
        mean = np.asarray(observation)[0] / 2
        return np.random.default_rng(seed).normal(mean, np.sqrt(0.5), size=(num_samples, 1))


def test_non_jax_posteriors_work_through_the_fallback():
    rng = np.random.default_rng(2)
    theta = rng.normal(size=(300, 1))
    x = theta + rng.normal(size=(300, 1))  # posterior N(x/2, 1/2)
    draws = sample_posteriors(jax.random.key(0), _NumpyPosterior(), x, 7)
    assert draws.shape == (300, 7, 1)
    assert sbc(jax.random.key(6), _NumpyPosterior(), theta, x).passed(0.01)


def test_bad_diagnostic_input_is_rejected(simulations):
    thetas, observations = simulations
    with pytest.raises(ValueError, match="thetas"):
        sbc(jax.random.key(0), MixturePosterior(exact), thetas[:10], observations)
    with pytest.raises(ValueError, match="thetas"):
        tarp(jax.random.key(0), MixturePosterior(exact), thetas[:, 0], observations)
    with pytest.raises(TypeError, match="posterior"):
        sbc(jax.random.key(0), object(), thetas, observations)
    with pytest.raises(ValueError, match="num_bins"):
        sbc_uniformity_test(np.zeros((10, 1), int), 9, 11)
    with pytest.raises(ValueError, match="samples_p"):
        c2st(jax.random.key(0), np.zeros((20, 2)), np.zeros((20, 3)))
    with pytest.raises(ValueError, match="num_folds"):
        c2st(jax.random.key(0), np.zeros((3, 2)), np.zeros((20, 2)))
    with pytest.raises(ValueError, match="num_folds"):
        c2st(jax.random.key(0), np.zeros((20, 2)), np.zeros((20, 2)), num_folds=1)
    with pytest.raises(ValueError, match="batch_size"):
        c2st(jax.random.key(0), np.zeros((20, 2)), np.zeros((20, 2)), batch_size=0)
    with pytest.raises(ValueError, match="num_epochs"):
        c2st(jax.random.key(0), np.zeros((20, 2)), np.zeros((20, 2)), num_epochs=2.5)
    with pytest.raises(ValueError, match="learning_rate"):
        c2st(jax.random.key(0), np.zeros((20, 2)), np.zeros((20, 2)), learning_rate=-1.0)
    with pytest.raises(ValueError, match="finite"):
        c2st(jax.random.key(0), np.full((20, 2), np.nan), np.zeros((20, 2)))
    with pytest.raises(TypeError, match="key"):
        c2st(0, np.zeros((20, 2)), np.zeros((20, 2)))



def test_c2st_caps_the_batch_at_the_training_rows_and_takes_raw_keys():
    # 2 x 60 rows in 5 folds: 96 training rows per fold, fewer than the default batch_size
    # (128), so every epoch is one full-batch step. Samples 8 sd apart are disjoint in
    # practice (the chance of a row crossing the midpoint is ~1e-15): accuracy exactly 1.
    x = np.random.default_rng(5).normal(size=(60, 2))
    assert c2st(jax.random.PRNGKey(0), x, x + 8.0, num_epochs=200, learning_rate=1e-2) == 1.0


def test_a_second_c2st_with_the_same_shapes_compiles_nothing(record_compilations):
    """The loss is module-level and the optimizer shared per learning rate: the loop is reused."""
    # The shapes of test_c2st_knows_equal_shifted_and_separated_gaussians, whose compiled
    # loop this reuses when run after it.
    x = jax.random.normal(jax.random.key(3), (1500, 2))
    y = jax.random.normal(jax.random.key(4), (1500, 2))
    shifted = y + 6.0
    c2st(jax.random.key(0), x, y)
    with record_compilations() as compiled:
        separated = c2st(jax.random.key(1), x, shifted)
    assert compiled == []
    assert separated > 0.98

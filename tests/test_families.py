"""Families: densities against scipy, sampling moments, supports, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import probinf


def test_gaussian_densities_match_scipy():
    mf = probinf.MeanFieldGaussian(jnp.array([0.5, -1.0]), jnp.log(jnp.array([0.7, 1.3])))
    z = jnp.array([[0.1, 0.2], [1.5, -2.0]])
    expected = stats.norm.logpdf(np.asarray(z), [0.5, -1.0], [0.7, 1.3]).sum(-1)
    np.testing.assert_allclose(mf.log_prob(z), expected, rtol=1e-5)

    tril = jnp.array([[1.0, 0.0], [0.6, 0.5]])
    fr = probinf.FullRankGaussian.init(2, loc=jnp.array([0.3, 0.1]), scale_tril=tril)
    cov = np.asarray(tril @ tril.T)
    np.testing.assert_allclose(fr.covariance, cov, rtol=1e-6)
    np.testing.assert_allclose(
        fr.log_prob(z), stats.multivariate_normal.logpdf(np.asarray(z), [0.3, 0.1], cov), rtol=1e-5
    )


@pytest.mark.parametrize(
    "family",
    [
        probinf.MeanFieldGaussian(jnp.array([0.5, -1.0]), jnp.log(jnp.array([0.7, 1.3]))),
        probinf.FullRankGaussian.init(2, loc=jnp.array([0.3, 0.1]),
                                      scale_tril=jnp.array([[1.0, 0.0], [0.6, 0.5]])),
    ],
    ids=["mean-field", "full-rank"],
)
def test_sample_and_log_prob_consistent_and_moments(family):
    z, log_q = family.sample_and_log_prob(jax.random.key(0), 50_000)
    np.testing.assert_allclose(log_q, family.log_prob(z), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(z.mean(0), family.mean, atol=0.03)
    np.testing.assert_allclose(jnp.cov(z.T), family.covariance, atol=0.03)


def test_mixture_density_and_weights():
    components = [probinf.MeanFieldGaussian.init(1, loc=-2.0), probinf.MeanFieldGaussian.init(1, loc=3.0)]
    mixture = probinf.Mixture(components, logits=jnp.log(jnp.array([0.25, 0.75])))
    z = jnp.array([[0.0], [3.0]])
    expected = np.log(0.25 * stats.norm.pdf([0.0, 3.0], -2) + 0.75 * stats.norm.pdf([0.0, 3.0], 3))
    np.testing.assert_allclose(mixture.log_prob(z), expected, rtol=1e-5)
    samples = mixture.sample(jax.random.key(1), 40_000)
    assert abs(float(jnp.mean(samples[:, 0] > 0.5)) - 0.75) < 0.01


def test_discrete_supports_are_normalised():
    bern = probinf.Bernoulli.init(3, probs=jnp.array([0.2, 0.5, 0.9]))
    assert bern.support().shape == (8, 3)
    np.testing.assert_allclose(jnp.exp(bern.log_prob(bern.support())).sum(), 1.0, rtol=1e-6)
    cat = probinf.Categorical(jnp.array([[0.0, 1.0, -1.0], [2.0, 0.0, 0.5]]))
    assert cat.support().shape == (9, 2)
    np.testing.assert_allclose(jnp.exp(cat.log_prob(cat.support())).sum(), 1.0, rtol=1e-6)
    draws = cat.sample(jax.random.key(0), 30_000)
    freq = np.mean(np.asarray(draws[:, 0]) == 1)
    assert abs(freq - float(jax.nn.softmax(cat.logits[0])[1])) < 0.015


def test_bad_input():
    with pytest.raises(ValueError, match="scale"):
        probinf.MeanFieldGaussian.init(2, scale=-1.0)
    with pytest.raises(ValueError, match="loc"):
        probinf.MeanFieldGaussian.init(2, loc=jnp.zeros(3))
    with pytest.raises(ValueError, match="dim"):
        probinf.FullRankGaussian.init(0)
    with pytest.raises(ValueError, match="scale_tril"):
        probinf.FullRankGaussian.init(2, scale_tril=-jnp.eye(2))
    with pytest.raises(ValueError, match="share one dim"):
        probinf.Mixture([probinf.MeanFieldGaussian.init(1), probinf.MeanFieldGaussian.init(2)])
    with pytest.raises(ValueError, match="logits"):
        probinf.Mixture([probinf.MeanFieldGaussian.init(1)], logits=jnp.zeros(2))
    with pytest.raises(ValueError, match="probs"):
        probinf.Bernoulli.init(2, probs=1.0)
    with pytest.raises(ValueError, match="n"):
        probinf.MeanFieldGaussian.init(2).sample(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="enumeration allows"):
        probinf.Bernoulli.init(20).support()
    with pytest.raises(ValueError, match="last axis"):
        probinf.MeanFieldGaussian.init(2).log_prob(jnp.zeros(3))


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: probinf.MeanFieldGaussian.init(2, loc=[0.0, NAN]), "`loc` must be finite, got nan at index 1"),
        (lambda: probinf.MeanFieldGaussian.init(2, scale=INF), "`scale` must be finite, got inf"),
        (lambda: probinf.FullRankGaussian.init(2, loc=-INF), "`loc` must be finite, got -inf"),
        (lambda: probinf.FullRankGaussian.init(2, scale_tril=[[1.0, 0.0], [NAN, 1.0]]),
         r"`scale_tril` must be finite, got nan at index \(1, 0\)"),
        (lambda: probinf.Mixture([probinf.MeanFieldGaussian.init(1)] * 2, logits=[NAN, 0.0]),
         "`logits` must be finite, got nan at index 0"),
        (lambda: probinf.Mixture([probinf.MeanFieldGaussian.init(1)] * 2, logits=[0.0, INF]),
         "`logits` must be finite, got inf at index 1"),
        (lambda: probinf.Bernoulli.init(2, probs=NAN), "`probs` must be finite"),
        (lambda: probinf.AffineGaussianConditional.init(2, 1, scale=NAN),
         "`scale` must be a positive finite number, got nan"),
    ],
)
def test_nonfinite_parameters_are_rejected_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_traced_parameters_are_accepted():
    # Values inside jit are unknown at build time: the finiteness check is at the boundary only.
    components = [probinf.MeanFieldGaussian.init(1)] * 2
    density = jax.jit(lambda logits: probinf.Mixture(components, logits).log_prob(jnp.zeros(1)))
    assert float(density(jnp.array([0.0, 0.0]))) == pytest.approx(stats.norm.logpdf(0.0), rel=1e-6)


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: probinf.MeanFieldGaussian(jnp.array([0, 1]), jnp.zeros(2)), "loc"),
        (lambda: probinf.MeanFieldGaussian(jnp.zeros(2), np.zeros(2, np.int64)), "log_scale"),
        (lambda: probinf.FullRankGaussian(jnp.zeros(2), jnp.zeros(2), jnp.zeros((2, 2), int)),
         "off_diagonal"),
        (lambda: probinf.Bernoulli(jnp.array([True, False])), "logits"),
        (lambda: probinf.Categorical(jnp.zeros((2, 3), jnp.int32)), "logits"),
        (lambda: probinf.AffineGaussianConditional(jnp.zeros((1, 2), int), jnp.zeros(1), jnp.zeros(1)),
         "weight"),
    ],
)
def test_integer_parameters_are_rejected_because_fit_would_never_train_them(build, name):
    with pytest.raises(TypeError, match=f"`{name}` of .* must be a floating-point array, got dtype "
                                        ".*would never be trained"):
        build()

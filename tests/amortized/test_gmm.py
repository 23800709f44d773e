"""Gaussian-mixture algebra against independent answers (scipy densities, quadrature, Kalman)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from amortized.gmm import (
    GaussianMixture,
    condition_linear_gaussian,
    flip_averaged_log_prob,
    monte_carlo_kl,
    random_sign_flips,
    sign_patterns,
    sign_symmetrize,
)
from probinf.exact import linear_gaussian_posterior

WEIGHTS = np.array([0.2, 0.5, 0.3])
MEANS = np.array([[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]])
COVS = np.array([np.eye(2), [[2.0, 0.5], [0.5, 1.0]], [[0.3, -0.1], [-0.1, 0.6]]])


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.from_covariances(WEIGHTS, MEANS, COVS)


def scipy_log_prob(z):
    per = [np.log(w) + stats.multivariate_normal(m, c).logpdf(z) for w, m, c in zip(WEIGHTS, MEANS, COVS, strict=True)]
    return logsumexp(np.stack(per), axis=0)


def test_log_prob_matches_scipy(mixture):
    z = np.random.default_rng(0).normal(size=(7, 2)) * 2
    np.testing.assert_allclose(mixture.log_prob(z), scipy_log_prob(z), rtol=1e-5, atol=1e-5)
    assert mixture.log_prob(z.reshape(7, 1, 2)).shape == (7, 1)


def test_from_scale_tril_and_gaussian_agree_with_covariances(mixture):
    tril = np.linalg.cholesky(COVS)
    other = GaussianMixture.from_scale_tril(WEIGHTS, MEANS, tril)
    z = np.array([[0.3, -0.2], [1.0, 2.0]])
    np.testing.assert_allclose(other.log_prob(z), mixture.log_prob(z), rtol=1e-6)
    single = GaussianMixture.gaussian([1.0, 2.0], 0.5)
    np.testing.assert_allclose(single.log_prob(z), stats.multivariate_normal([1.0, 2.0], 0.5 * np.eye(2)).logpdf(z), rtol=1e-5)


def test_moments_match_quadrature():
    mix = GaussianMixture.from_covariances([0.3, 0.7], [[-1.0], [2.0]], [[[0.5]], [[1.5]]])
    grid = np.linspace(-12, 14, 20001)
    density = np.exp(np.asarray(mix.log_prob(grid[:, None]), np.float64))
    step = grid[1] - grid[0]
    mean = np.sum(grid * density) * step
    var = np.sum((grid - mean) ** 2 * density) * step
    assert np.sum(density) * step == pytest.approx(1.0, abs=1e-5)
    assert float(mix.mean[0]) == pytest.approx(mean, abs=1e-4)
    assert float(mix.covariance[0, 0]) == pytest.approx(var, abs=1e-3)


def test_sampling_matches_the_mixture_cdf():
    mix = GaussianMixture.from_covariances([0.3, 0.7], [[-1.0], [2.0]], [[[0.5]], [[1.5]]])
    draws = np.asarray(mix.sample(jax.random.key(0), 4000))[:, 0]

    def cdf(x):
        return 0.3 * stats.norm.cdf(x, -1.0, np.sqrt(0.5)) + 0.7 * stats.norm.cdf(x, 2.0, np.sqrt(1.5))

    assert stats.kstest(draws, cdf).pvalue > 1e-3
    z, log_q = mix.sample_and_log_prob(jax.random.key(1), 5)
    np.testing.assert_allclose(log_q, mix.log_prob(z), rtol=1e-6)


def test_affine_moments_match_transformed_samples(mixture):
    matrix = np.array([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]])
    offset = np.array([0.1, -0.2, 0.3])
    noise = 0.2 * np.eye(3)
    moved = mixture.affine(matrix, offset, noise)
    n = 200_000
    z = np.asarray(mixture.sample(jax.random.key(2), n), np.float64)
    eta = np.random.default_rng(1).normal(size=(n, 3)) * np.sqrt(0.2)
    w = z @ matrix.T + offset + eta
    se = w.std(0) / np.sqrt(n)
    assert np.all(np.abs(np.asarray(moved.mean) - w.mean(0)) < 5 * se)
    np.testing.assert_allclose(moved.covariance, np.cov(w.T), rtol=0.03, atol=0.02)
    marginal = mixture.marginal([1])
    np.testing.assert_allclose(marginal.log_prob(np.array([[0.4]])), np.log(sum(
        w_ * stats.norm.pdf(0.4, m[1], np.sqrt(c[1, 1])) for w_, m, c in zip(WEIGHTS, MEANS, COVS, strict=True)
    )), rtol=1e-5)


def test_conditioning_matches_per_component_kalman_and_evidence(mixture):
    design = np.array([[1.0, 0.5]])
    noise = np.array([[0.5]])
    y = np.array([[1.0], [2.0], [0.3]])
    posterior, log_evidence = condition_linear_gaussian(mixture, y, design, noise)
    stacked_design = np.vstack([design] * 3)
    log_terms = []
    for k in range(3):
        mean, cov, log_z = linear_gaussian_posterior(MEANS[k], COVS[k], stacked_design, y.ravel(), 0.5 * np.eye(3))
        np.testing.assert_allclose(posterior.means[k], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(posterior.covariances[k], cov, rtol=1e-4, atol=1e-5)
        log_terms.append(np.log(WEIGHTS[k]) + log_z)
    np.testing.assert_allclose(log_evidence, logsumexp(log_terms), rtol=1e-5)
    np.testing.assert_allclose(posterior.log_weights, np.array(log_terms) - logsumexp(log_terms), atol=1e-5)


def test_conditioning_matches_quadrature_in_one_dimension():
    prior = GaussianMixture.from_covariances([0.4, 0.6], [[-2.0], [1.5]], [[[0.7]], [[1.2]]])
    y = np.array([[0.5], [1.1]])
    posterior, log_evidence = condition_linear_gaussian(prior, y, [[2.0]], [[0.8]], offset=[0.3])
    grid = np.linspace(-10, 10, 40001)
    log_joint = np.asarray(prior.log_prob(grid[:, None]), np.float64) + sum(
        stats.norm.logpdf(yy, 2.0 * grid + 0.3, np.sqrt(0.8)) for yy in y[:, 0]
    )
    step = grid[1] - grid[0]
    assert float(log_evidence) == pytest.approx(logsumexp(log_joint) + np.log(step), abs=1e-4)
    exact_post = np.exp(log_joint - logsumexp(log_joint)) / step
    np.testing.assert_allclose(np.exp(np.asarray(posterior.log_prob(grid[:, None]), np.float64)), exact_post, atol=1e-4)


def test_sequential_conditioning_equals_batch_and_mask_drops_rows(mixture):
    design, noise = np.array([[1.0, -1.0], [0.5, 0.5]]), np.array([[0.4, 0.1], [0.1, 0.3]])
    y = np.random.default_rng(2).normal(size=(5, 2))
    batch, _ = condition_linear_gaussian(mixture, y, design, noise)
    seq = mixture
    for row in y:
        seq, _ = condition_linear_gaussian(seq, row[None], design, noise)
    z = np.array([[0.2, 0.1], [-1.0, 1.0]])
    np.testing.assert_allclose(seq.log_prob(z), batch.log_prob(z), rtol=1e-4, atol=1e-4)
    masked, _ = condition_linear_gaussian(mixture, y, design, noise, mask=np.array([1, 1, 0, 1, 0], bool))
    subset, _ = condition_linear_gaussian(mixture, y[[0, 1, 3]], design, noise)
    np.testing.assert_allclose(masked.log_prob(z), subset.log_prob(z), rtol=1e-5, atol=1e-5)


def test_padding_components_changes_nothing(mixture):
    padded = mixture.pad(5)
    assert padded.num_components == 5
    z = np.array([[0.3, 0.3], [2.0, -2.0]])
    np.testing.assert_allclose(padded.log_prob(z), mixture.log_prob(z), rtol=1e-6)
    post, lz = condition_linear_gaussian(mixture, [[0.5, 0.5]], np.eye(2), np.eye(2))
    post_p, lz_p = condition_linear_gaussian(padded, [[0.5, 0.5]], np.eye(2), np.eye(2))
    np.testing.assert_allclose(post_p.log_prob(z), post.log_prob(z), rtol=1e-6)
    assert float(lz_p) == pytest.approx(float(lz), rel=1e-6)
    assert not bool(post_p.component_mask[3]) and np.all(np.isfinite(post_p.scale_tril))


def test_monte_carlo_kl_matches_gaussian_closed_form():
    p = GaussianMixture.gaussian([0.0, 1.0], [[1.0, 0.3], [0.3, 0.5]])
    q = GaussianMixture.gaussian([0.5, 0.0], [[2.0, 0.0], [0.0, 1.0]])
    s0, s1 = np.array([[1.0, 0.3], [0.3, 0.5]]), np.diag([2.0, 1.0])
    d = np.array([0.5, -1.0])
    exact = 0.5 * (np.trace(np.linalg.solve(s1, s0)) + d @ np.linalg.solve(s1, d) - 2 + np.log(np.linalg.det(s1) / np.linalg.det(s0)))
    n = 100_000
    z = p.sample(jax.random.key(3), n)
    diffs = np.asarray(p.log_prob(z) - q.log_prob(z), np.float64)
    estimate = float(monte_carlo_kl(jax.random.key(3), p, q, n))
    assert abs(estimate - exact) < 5 * diffs.std() / np.sqrt(n)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, 0.6], means=[[0.0], [1.0]], covariances=[[[1.0]], [[1.0]]]), "weights"),
        (dict(weights=[-0.5, 1.5], means=[[0.0], [1.0]], covariances=[[[1.0]], [[1.0]]]), "weights"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covariances=[[[1.0, 2.0], [2.0, 1.0]]]), "covariances"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covariances=[[[1.0, 0.5], [0.0, 1.0]]]), "covariances"),
        (dict(weights=[1.0], means=[[0.0, 0.0]], covariances=[[[1.0]]]), "covariances"),
        (dict(weights=[1.0], means=[0.0], covariances=[[[1.0]]]), "means"),
        (dict(weights=[0.5, 0.5], means=[[0.0]], covariances=[[[1.0]]]), "weights"),
    ],
)
def test_bad_mixtures_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture.from_covariances(**kwargs)


def test_bad_scale_tril_is_rejected():
    with pytest.raises(ValueError, match="scale_tril"):
        GaussianMixture.from_scale_tril([1.0], [[0.0, 0.0]], [[[1.0, 0.3], [0.0, 1.0]]])
    with pytest.raises(ValueError, match="scale_tril"):
        GaussianMixture.from_scale_tril([1.0], [[0.0, 0.0]], [[[-1.0, 0.0], [0.0, 1.0]]])


def test_bad_conditioning_input_is_rejected(mixture):
    with pytest.raises(ValueError, match="observations"):
        condition_linear_gaussian(mixture, np.zeros((0, 1)), [[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="observations"):
        condition_linear_gaussian(mixture, np.zeros((3, 2)), [[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="design"):
        condition_linear_gaussian(mixture, np.zeros((3, 1)), [[1.0, 0.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="noise_covariance"):
        condition_linear_gaussian(mixture, np.zeros((3, 1)), [[1.0, 0.0]], [[-1.0]])
    with pytest.raises(ValueError, match="mask"):
        condition_linear_gaussian(mixture, np.zeros((2, 1)), [[1.0, 0.0]], [[1.0]], mask=np.zeros(2, bool))
    with pytest.raises(TypeError, match="prior"):
        condition_linear_gaussian("prior", np.zeros((2, 1)), [[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="z"):
        mixture.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="num_components"):
        mixture.pad(2)


def test_sign_symmetrize_averages_the_density_over_the_flips():
    mix = GaussianMixture.from_covariances(
        [0.6, 0.4], [[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]],
        [[[1.0, 0.3, 0.1], [0.3, 0.8, -0.2], [0.1, -0.2, 0.5]], 0.4 * np.eye(3)],
    )
    sym = sign_symmetrize(mix, (0, 2))
    assert sym.num_components == 8
    z = np.random.default_rng(1).normal(size=(9, 3)) * 2
    flips = [np.array([a, 1.0, b]) for a in (1.0, -1.0) for b in (1.0, -1.0)]
    expected = logsumexp(np.stack([np.asarray(mix.log_prob(z * d)) for d in flips]), axis=0) - np.log(4)
    np.testing.assert_allclose(sym.log_prob(z), expected, rtol=1e-5, atol=1e-5)
    for d in flips:
        np.testing.assert_allclose(sym.log_prob(z * d), sym.log_prob(z), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sum(np.exp(sym.log_weights)), 1.0, rtol=1e-6)
    assert np.all(np.asarray(sym.scale_tril)[:, [0, 0, 1], [1, 2, 2]] == 0)  # still lower triangular
    assert sign_symmetrize(mix, ()) is mix
    with pytest.raises(ValueError, match="axes"):
        sign_symmetrize(mix, (0, 0))
    with pytest.raises(ValueError, match="axes"):
        sign_symmetrize(mix, (3,))


def test_flip_averaged_log_prob_is_the_log_of_the_mean_density_over_flips(mixture):
    z = np.random.default_rng(2).normal(size=(7, 2)) * 2
    flips = jnp.asarray(sign_patterns(2, (1,)))
    expected = np.logaddexp(scipy_log_prob(z), scipy_log_prob(z * [1.0, -1.0])) - np.log(2)
    np.testing.assert_allclose(flip_averaged_log_prob(mixture.log_prob, jnp.asarray(z), flips), expected,
                               rtol=1e-5, atol=1e-5)


def test_random_sign_flips_flips_only_the_given_axes_each_by_a_fair_coin():
    x = jnp.asarray(np.random.default_rng(3).uniform(0.5, 2.0, size=(20_000, 3)))
    y = np.asarray(random_sign_flips(jax.random.key(0), x, (0, 2)))
    np.testing.assert_array_equal(np.abs(y), np.asarray(x))
    np.testing.assert_array_equal(y[:, 1], np.asarray(x)[:, 1])
    negative = y[:, [0, 2]] < 0
    # Fair and independent: each of the four sign patterns has probability 1/4 (4 sd ~ 0.012).
    for a in (False, True):
        for b in (False, True):
            assert abs(np.mean((negative[:, 0] == a) & (negative[:, 1] == b)) - 0.25) < 0.013
    assert random_sign_flips(jax.random.key(0), x, ()) is x

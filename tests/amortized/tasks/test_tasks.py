"""Simulators against their definitions: likelihoods, exact posteriors, reference samplers, Kalman."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from amortized import GaussianMixture
from amortized.tasks import (
    SLCP,
    ConjugateGaussian,
    GaussianLinear,
    InverseGammaVariance,
    LinearGaussianStateSpace,
    LogisticRegression,
    TwoMoons,
    kalman_filter,
    random_mixture_prior,
)
from probinf.exact import linear_gaussian_posterior


def test_random_mixture_priors_are_valid_and_vary_in_size():
    priors = jax.vmap(lambda k: random_mixture_prior(k, 2, 3))(jax.random.split(jax.random.key(0), 200))
    sizes = np.asarray(jnp.sum(priors.component_mask, axis=1))
    assert set(sizes) == {1, 2, 3}
    np.testing.assert_allclose(jnp.sum(jnp.exp(priors.log_weights), axis=1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(jnp.diagonal(priors.scale_tril, axis1=-2, axis2=-1)) > 0)


def test_conjugate_task_simulates_its_likelihood():
    task = ConjugateGaussian(2, design=[[1.0, 2.0]], noise_covariance=[[0.25]], offset=[1.0], num_observations=(3, 6))
    theta = jnp.array([0.5, -0.3])
    draws, masks = jax.vmap(lambda k: task.simulate_data(k, theta))(jax.random.split(jax.random.key(1), 4000))
    assert set(np.asarray(masks.sum(1))) == {3, 4, 5, 6}
    first = np.asarray(draws[:, 0, 0])
    assert stats.kstest(first, stats.norm(1.0 + 0.5 - 0.6, 0.5).cdf).pvalue > 1e-3
    assert np.all(np.asarray(draws)[~np.asarray(masks)] == 0)


def test_inverse_gamma_task_density_and_exact_posterior():
    task = InverseGammaVariance()
    prior = jnp.log(jnp.array([3.0, 2.0]))
    dist = task.prior_distribution(prior)
    v = np.linspace(-8, 8, 20001)
    # The density over log-variance is InvGamma(e^v) * e^v.
    reference = stats.invgamma(3.0, scale=2.0).logpdf(np.exp(v)) + v
    np.testing.assert_allclose(dist.log_prob(v[:, None]), reference, rtol=1e-4, atol=1e-4)
    y = jnp.array([[0.5], [-1.2], [2.0], [0.0]])
    mask = jnp.array([True, True, True, False])
    post = task.exact_posterior(prior, y, mask)
    log_joint = reference + stats.norm.logpdf(np.asarray(y[:3]), 0.0, np.exp(0.5 * v)).sum(0)
    step = v[1] - v[0]
    numeric = log_joint - logsumexp(log_joint) - np.log(step)
    np.testing.assert_allclose(post.log_prob(v[:, None]), numeric, rtol=1e-5, atol=1e-3)
    draws = np.asarray(post.sample(jax.random.key(2), 4000))[:, 0]
    a, b = float(post.concentration), float(post.rate)
    assert stats.kstest(np.exp(draws), stats.invgamma(a, scale=b).cdf).pvalue > 1e-3


def test_logistic_regression_likelihood_and_labels():
    task = LogisticRegression(2)
    theta = jnp.array([1.5, -0.5])
    obs, mask = task.simulate_data(jax.random.key(3), theta)
    x, y = np.asarray(obs[:, :2]), np.asarray(obs[:, 2])
    m = np.asarray(mask)
    p = 1 / (1 + np.exp(-x @ np.asarray(theta)))
    expected = np.sum((y * np.log(p) + (1 - y) * np.log(1 - p))[m])
    assert float(task.log_likelihood(theta, obs, mask)) == pytest.approx(expected, rel=1e-5)
    xs = jnp.tile(jnp.array([[0.8, 0.4]]), (20000, 1))
    labels = jax.random.bernoulli(jax.random.key(4), jax.nn.sigmoid(xs @ theta))
    assert float(labels.mean()) == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.015)


def test_gaussian_linear_matches_sbibm_and_its_closed_form():
    task = GaussianLinear()
    x = jnp.full((1, 10), 0.4)
    post = task.exact_posterior(task.prior, x)
    np.testing.assert_allclose(post.means[0], 0.2 * np.ones(10), rtol=1e-5)
    np.testing.assert_allclose(post.covariances[0], 0.05 * np.eye(10), rtol=1e-5)
    batch = task.simulate(jax.random.key(5), 4000)
    residual = np.asarray(batch.observations[:, 0] - batch.theta)
    assert residual.std() == pytest.approx(np.sqrt(0.1), rel=0.03)
    assert np.asarray(batch.theta).std() == pytest.approx(np.sqrt(0.1), rel=0.03)


def test_two_moons_reference_sampler_matches_the_likelihood():
    task = TwoMoons()
    x = jnp.array([0.05, -0.1])
    draws = np.asarray(task.reference_posterior_samples(jax.random.key(6), x, 20000))
    assert np.all(np.abs(draws) <= 1)
    # Posterior on a grid from the exact likelihood (uniform prior), compared by binned probabilities.
    edges = np.linspace(-1, 1, 41)
    centres = 0.5 * (edges[1:] + edges[:-1])
    fine = np.linspace(-1, 1, 801)
    g0, g1 = np.meshgrid(fine, fine, indexing="ij")
    log_lik = np.asarray(jax.vmap(lambda t: task.log_likelihood(t, x))(jnp.stack([g0.ravel(), g1.ravel()], -1)))
    weights = np.exp(log_lik - log_lik.max())
    grid_hist = np.histogram2d(g0.ravel(), g1.ravel(), bins=[edges, edges], weights=weights)[0]
    grid_hist /= grid_hist.sum()
    sample_hist = np.histogram2d(draws[:, 0], draws[:, 1], bins=[edges, edges])[0] / draws.shape[0]
    assert centres.size == 40
    assert 0.5 * np.abs(grid_hist - sample_hist).sum() < 0.06  # total variation, binned


def test_two_moons_simulator_follows_sbibm():
    task = TwoMoons()
    theta = jnp.array([0.3, -0.6])
    draws = np.asarray(jax.vmap(lambda k: task.simulate_data(k, theta)[0][0])(jax.random.split(jax.random.key(7), 5000)))
    shift = np.array([-abs(0.3 - 0.6) / np.sqrt(2), (-0.6 - 0.3) / np.sqrt(2)])
    p = draws - shift
    radius = np.hypot(p[:, 0] - 0.25, p[:, 1])
    assert radius.mean() == pytest.approx(0.1, abs=1e-3) and radius.std() == pytest.approx(0.01, rel=0.05)
    assert np.all(p[:, 0] >= 0.25 - 1e-6)


def test_slcp_likelihood_and_simulator():
    task = SLCP()
    theta = jnp.array([0.7, -1.2, 1.1, -0.9, 0.4])
    x, mask = task.simulate_data(jax.random.key(8), theta)
    assert x.shape == (4, 2) and bool(mask.all())
    s1, s2, rho = 1.1**2, 0.9**2, np.tanh(0.4)
    cov = np.array([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]]) + 1e-6 * np.eye(2)
    expected = stats.multivariate_normal([0.7, -1.2], cov).logpdf(np.asarray(x)).sum()
    assert float(task.log_likelihood(theta, x)) == pytest.approx(expected, rel=1e-4)
    many = np.asarray(jax.vmap(lambda k: task.simulate_data(k, theta)[0])(jax.random.split(jax.random.key(9), 3000)))
    np.testing.assert_allclose(np.cov(many.reshape(-1, 2).T), cov, rtol=0.06, atol=0.02)
    flipped = theta.at[2].multiply(-1).at[3].multiply(-1)
    assert float(task.log_likelihood(flipped, x)) == pytest.approx(float(task.log_likelihood(theta, x)))


SSM = LinearGaussianStateSpace([[0.9, 0.3], [-0.3, 0.9]], 0.2 * np.eye(2), [[1.0, 0.0]], [[0.5]])


def joint_filter_reference(initial_mean, initial_cov, ys):
    """Filtering marginals from the full joint Gaussian of (x_1..x_T, y_1..y_t), by brute force."""
    t_max, d = ys.shape[0], 2
    f, q, h, r = (np.asarray(a, np.float64) for a in (SSM.transition, SSM.transition_noise, SSM.observation_matrix, SSM.observation_noise))
    # x = M w with w = (x_1, eta_1, ..., eta_{T-1}); build the prior of the stacked states.
    mean = np.zeros(t_max * d)
    cov = np.zeros((t_max * d, t_max * d))
    transfer = [np.linalg.matrix_power(f, k) for k in range(t_max)]
    for i in range(t_max):
        mean[i * d:(i + 1) * d] = transfer[i] @ initial_mean
        for j in range(t_max):
            block = transfer[i] @ initial_cov @ transfer[j].T
            for k in range(1, min(i, j) + 1):
                block = block + transfer[i - k] @ q @ transfer[j - k].T
            cov[i * d:(i + 1) * d, j * d:(j + 1) * d] = block
    out = []
    for t in range(1, t_max + 1):
        design = np.zeros((t, t_max * d))
        for s in range(t):
            design[s, s * d:(s + 1) * d] = h[0]
        m, c, log_z = linear_gaussian_posterior(mean, cov, design, ys[:t, 0], r[0, 0] * np.eye(t))
        out.append((m[(t - 1) * d:t * d], c[(t - 1) * d:t * d, (t - 1) * d:t * d], log_z))
    return out


def test_kalman_filter_matches_the_joint_gaussian():
    initial_mean, initial_cov = np.array([0.5, -0.2]), np.array([[1.0, 0.2], [0.2, 0.7]])
    _, ys = SSM.simulate(jax.random.key(10), GaussianMixture.gaussian(initial_mean, initial_cov), 6)
    means, covs, log_lik = kalman_filter(jnp.asarray(initial_mean), jnp.asarray(initial_cov), SSM.transition,
                                         SSM.transition_noise, SSM.observation_matrix, SSM.observation_noise, ys)
    reference = joint_filter_reference(initial_mean, initial_cov, np.asarray(ys, np.float64))
    for t, (m, c, _) in enumerate(reference):
        np.testing.assert_allclose(means[t], m, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(covs[t], c, rtol=1e-4, atol=1e-4)
    assert float(log_lik) == pytest.approx(reference[-1][2], rel=1e-4)


def test_exact_mixture_filter_is_a_mixture_of_kalman_filters():
    initial = GaussianMixture.from_covariances([0.3, 0.7], [[-1.0, 0.0], [1.0, 0.5]], [np.eye(2), 0.5 * np.eye(2)])
    _, ys = SSM.simulate(jax.random.key(11), initial, 8)
    filtered = SSM.filter(initial, ys)
    per_component = [
        kalman_filter(initial.means[k], initial.covariances[k], SSM.transition, SSM.transition_noise,
                      SSM.observation_matrix, SSM.observation_noise, ys)
        for k in range(2)
    ]
    log_w = np.log([0.3, 0.7]) + np.array([float(c[2]) for c in per_component])
    weights = np.exp(log_w - logsumexp(log_w))
    np.testing.assert_allclose(jnp.exp(filtered.log_weights[-1]), weights, rtol=1e-3, atol=1e-5)
    for k in range(2):
        np.testing.assert_allclose(filtered.means[:, k], per_component[k][0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(filtered.covariances[:, k], per_component[k][1], rtol=1e-4, atol=1e-4)


def test_bad_task_input_is_rejected():
    with pytest.raises(ValueError, match="noise_covariance"):
        ConjugateGaussian(1, noise_covariance=[[-1.0]])
    with pytest.raises(ValueError, match="design"):
        ConjugateGaussian(2, design=[[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="num_observations"):
        ConjugateGaussian(1, num_observations=(0, 3))
    with pytest.raises(ValueError, match="transition_noise"):
        LinearGaussianStateSpace(np.eye(2), -np.eye(2), [[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="observations"):
        SSM.filter(GaussianMixture.gaussian([0.0, 0.0], 1.0), jnp.zeros((0, 1)))
    with pytest.raises(ValueError, match="rate_range"):
        InverseGammaVariance(rate_range=(-1.0, 2.0))


def test_slcp_declares_its_sign_symmetries_and_models_train_with_or_without_them():
    task = SLCP(num_components=2)
    assert task.model_options()["symmetric_axes"] == task.symmetric_axes == (2, 3)
    theta = jnp.array([0.7, -1.2, 1.1, -0.9, 0.4])
    x, _ = task.simulate_data(jax.random.key(8), theta)
    base = float(task.log_likelihood(theta, x))
    for axis in range(5):
        flipped = float(task.log_likelihood(theta.at[axis].multiply(-1), x))
        assert (flipped == pytest.approx(base)) == (axis in task.symmetric_axes)
    from amortized import DistributionTransformer, train

    options = task.model_options()
    for opts in (options, {k: v for k, v in options.items() if k != "symmetric_axes"}):
        model = DistributionTransformer(key=jax.random.key(0), d_model=8, num_heads=2, num_encoder_layers=1,
                                        num_decoder_layers=1, **opts)
        result = train(model, task, key=jax.random.key(1), steps=2, batch_size=8, chunk_size=2, progress=False)
        assert result.stop_reason == "completed" and np.all(np.isfinite(result.losses))
        assert result.model(task.prior_params, x).num_components == 2 * 2 ** len(opts.get("symmetric_axes", ()))


def test_slcp_reference_sampler_agrees_with_importance_sampling_from_the_prior():
    task = SLCP()
    theta = jnp.array([0.5, -0.5, 1.8, 1.5, 0.8])  # broad posterior: prior importance sampling works
    x, _ = task.simulate_data(jax.random.key(3), theta)
    draws = np.asarray(task.reference_posterior_samples(jax.random.key(4), x, 4000, grid=(128, 64)))
    assert draws.shape == (4000, 5) and np.all(np.abs(draws) <= 3.0)
    with pytest.raises(ValueError, match="observation"):
        task.reference_posterior_samples(jax.random.key(4), x[:3], 10)
    with pytest.raises(ValueError, match="grid"):
        task.reference_posterior_samples(jax.random.key(4), x, 10, grid=(64,))
    z = np.asarray(jax.random.uniform(jax.random.key(5), (400_000, 5), minval=-3.0, maxval=3.0))
    log_w = np.asarray(jax.jit(jax.vmap(lambda t: task.log_likelihood(t, x)))(z), np.float64)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    assert 1.0 / np.sum(w**2) > 2000  # effective sample size of the independent answer
    for f in (lambda t: t[:, 0], lambda t: t[:, 1], lambda t: np.abs(t[:, 2]), lambda t: np.abs(t[:, 3]),
              lambda t: t[:, 4], lambda t: np.sign(t[:, 2] * t[:, 3])):
        expected = np.sum(w * f(z))
        sd = np.sqrt(np.sum(w * (f(z) - expected) ** 2))
        assert abs(f(draws).mean() - expected) < 0.1 * sd + 0.01

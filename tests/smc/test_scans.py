"""Kalman filter / RTS smoother and HMM forward-backward: sequential vs parallel vs exact answers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from probinf.exact import linear_gaussian_posterior
from probinf.smc.models import LinearGaussianSSM
from probinf.smc.scans import hmm_filter, hmm_smoother, kalman_filter, rts_smoother


def make_model(num_steps, seed=0):
    model = LinearGaussianSSM(
        initial_mean=jnp.array([0.5, -1.0]),
        initial_cov=jnp.array([[1.0, 0.3], [0.3, 0.8]]),
        transition_matrix=jnp.array([[0.9, 0.2], [-0.1, 0.8]]),
        transition_cov=jnp.array([[0.3, 0.05], [0.05, 0.2]]),
        observation_matrix=jnp.array([[1.0, 0.5]]),
        observation_cov=jnp.array([[0.4]]),
        observations=jnp.zeros((num_steps, 1)),
    )
    _, y = model.simulate(jax.random.key(seed), num_steps)
    return model.with_observations(y)


def joint_gaussian(model):
    """Prior covariance of the stacked states x_{0:T-1} and the design mapping them to y (float64)."""
    f = np.asarray(model.transition_matrix, np.float64)
    q = np.asarray(model.transition_cov, np.float64)
    h = np.asarray(model.observation_matrix, np.float64)
    t_steps, dx = model.num_steps, model.state_dim
    means = [np.asarray(model.initial_mean, np.float64)]
    marginal = [np.asarray(model.initial_cov, np.float64)]
    for _ in range(1, t_steps):
        means.append(f @ means[-1])
        marginal.append(f @ marginal[-1] @ f.T + q)
    cov = np.zeros((t_steps * dx, t_steps * dx))
    for i in range(t_steps):
        for j in range(i, t_steps):
            block = np.linalg.matrix_power(f, j - i) @ marginal[i]  # Cov(x_j, x_i)
            cov[j * dx:(j + 1) * dx, i * dx:(i + 1) * dx] = block
            cov[i * dx:(i + 1) * dx, j * dx:(j + 1) * dx] = block.T
    design = np.kron(np.eye(t_steps), h)
    noise = np.kron(np.eye(t_steps), np.asarray(model.observation_cov, np.float64))
    return np.concatenate(means), cov, design, noise


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_kalman_matches_the_joint_gaussian_posterior(method):
    model = make_model(8)
    mean0, cov0, design, noise = joint_gaussian(model)
    y = np.asarray(model.observations, np.float64).reshape(-1)
    mean, cov, log_evidence = linear_gaussian_posterior(mean0, cov0, design, y, noise)
    result = rts_smoother(model, method)
    assert float(result.log_evidence) == pytest.approx(log_evidence, rel=1e-5, abs=1e-4)
    np.testing.assert_allclose(result.smoothed_means, mean.reshape(8, 2), atol=2e-4)
    blocks = np.stack([cov[2 * t:2 * t + 2, 2 * t:2 * t + 2] for t in range(8)])
    np.testing.assert_allclose(result.smoothed_covs, blocks, atol=2e-4)
    # The filtered marginal at the last step is the smoothed one.
    np.testing.assert_allclose(result.filtered_means[-1], mean.reshape(8, 2)[-1], atol=2e-4)
    # Filtered marginal at t from the joint posterior of the prefix y_{0:t}.
    t = 3
    prefix = slice(0, 2 * (t + 1))
    m_t, c_t, _ = linear_gaussian_posterior(
        mean0[prefix], cov0[prefix, prefix], design[: t + 1, prefix], y[: t + 1],
        noise[: t + 1, : t + 1],
    )
    np.testing.assert_allclose(result.filtered_means[t], m_t[-2:], atol=2e-4)
    np.testing.assert_allclose(result.filtered_covs[t], c_t[-2:, -2:], atol=2e-4)


def test_parallel_and_sequential_kalman_agree_on_a_long_series():
    model = make_model(200, seed=1)
    sequential = rts_smoother(model, "sequential")
    parallel = rts_smoother(model, "parallel")
    # float32: a few ulps of accumulated rounding per step on O(1) quantities.
    np.testing.assert_allclose(parallel.filtered_means, sequential.filtered_means, atol=1e-4)
    np.testing.assert_allclose(parallel.filtered_covs, sequential.filtered_covs, atol=1e-5)
    np.testing.assert_allclose(parallel.smoothed_means, sequential.smoothed_means, atol=1e-4)
    np.testing.assert_allclose(parallel.smoothed_covs, sequential.smoothed_covs, atol=1e-5)
    np.testing.assert_allclose(parallel.log_likelihoods, sequential.log_likelihoods, atol=1e-4)
    assert float(parallel.log_evidence) == pytest.approx(float(sequential.log_evidence), rel=1e-5)


def test_single_step_series():
    model = make_model(1)
    for method in ("sequential", "parallel"):
        result = rts_smoother(model, method)
        np.testing.assert_allclose(result.smoothed_means, result.filtered_means)
        assert result.log_likelihoods.shape == (1,)


def test_kalman_is_jittable():
    model = make_model(8)
    out = jax.jit(lambda m: rts_smoother(m, "sequential").log_evidence)(model)
    assert float(out) == pytest.approx(float(rts_smoother(model, "sequential").log_evidence), rel=1e-6)


# --- hidden Markov models ---------------------------------------------------------------------


def random_hmm(key, num_states, num_steps):
    k1, k2, k3 = jax.random.split(key, 3)
    log_initial = jax.nn.log_softmax(jax.random.normal(k1, (num_states,)))
    log_transition = jax.nn.log_softmax(2 * jax.random.normal(k2, (num_states, num_states)), axis=1)
    log_likelihoods = 2 * jax.random.normal(k3, (num_steps, num_states)) - 3.0
    return log_initial, log_transition, log_likelihoods


def brute_force(log_initial, log_transition, log_likelihoods):
    """Enumerate every path (float64): log evidence, filtered and smoothed marginals."""
    li, lt, ll = (np.asarray(a, np.float64) for a in (log_initial, log_transition, log_likelihoods))
    num_steps, k = ll.shape
    paths = np.array(list(itertools.product(range(k), repeat=num_steps)))
    log_joint = li[paths[:, 0]] + ll[0, paths[:, 0]]
    prefix_joint = [log_joint.copy()]
    for t in range(1, num_steps):
        log_joint = log_joint + lt[paths[:, t - 1], paths[:, t]] + ll[t, paths[:, t]]
        prefix_joint.append(log_joint.copy())
    log_evidence = logsumexp(log_joint)
    smoothed = np.stack([
        [logsumexp(log_joint[paths[:, t] == s]) - log_evidence for s in range(k)]
        for t in range(num_steps)
    ])
    # Filtered at t: marginalise the prefix joint; later factors sum to one per prefix
    # only after dividing by the K^(T-1-t) copies of each prefix, which cancel in the ratio.
    filtered = np.stack([
        [logsumexp(prefix_joint[t][paths[:, t] == s]) for s in range(k)]
        for t in range(num_steps)
    ])
    filtered -= logsumexp(filtered, axis=1, keepdims=True)
    return log_evidence, filtered, smoothed


@pytest.mark.parametrize("method", ["sequential", "parallel"])
def test_hmm_matches_brute_force_enumeration(method):
    args = random_hmm(jax.random.key(0), 3, 6)
    log_evidence, filtered, smoothed = brute_force(*args)
    result = hmm_smoother(*args, method=method)
    assert float(result.log_evidence) == pytest.approx(log_evidence, abs=1e-4)
    np.testing.assert_allclose(result.log_filtered, filtered, atol=1e-4)
    np.testing.assert_allclose(result.log_smoothed, smoothed, atol=1e-4)
    filter_only = hmm_filter(*args, method=method)
    np.testing.assert_allclose(filter_only.log_filtered, result.log_filtered)
    assert filter_only.log_smoothed is None


def test_parallel_hmm_equals_forward_algorithm_on_a_long_chain():
    args = random_hmm(jax.random.key(1), 4, 1000)
    sequential = hmm_smoother(*args, method="sequential")
    parallel = hmm_smoother(*args, method="parallel")
    # Probabilities compared on the natural scale; the log evidence (about -4e3) to float32 precision.
    np.testing.assert_allclose(np.exp(parallel.log_filtered), np.exp(sequential.log_filtered), atol=1e-4)
    np.testing.assert_allclose(np.exp(parallel.log_smoothed), np.exp(sequential.log_smoothed), atol=1e-4)
    assert float(parallel.log_evidence) == pytest.approx(float(sequential.log_evidence), rel=1e-5)


def test_hmm_with_impossible_transitions():
    # A left-to-right chain: zero-probability transitions are -inf and must not produce NaN.
    log_initial = jnp.log(jnp.array([1.0, 0.0, 0.0]))
    log_transition = jnp.log(jnp.array([[0.6, 0.4, 0.0], [0.0, 0.7, 0.3], [0.0, 0.0, 1.0]]))
    log_likelihoods = jax.random.normal(jax.random.key(2), (5, 3))
    expected = brute_force(log_initial, log_transition, log_likelihoods)
    for method in ("sequential", "parallel"):
        result = hmm_smoother(log_initial, log_transition, log_likelihoods, method=method)
        assert float(result.log_evidence) == pytest.approx(expected[0], abs=1e-4)
        np.testing.assert_allclose(np.exp(result.log_smoothed), np.exp(expected[2]), atol=1e-5)


def test_hmm_observations_of_probability_zero_have_evidence_minus_inf():
    # Step 1 is impossible: the only state reachable from state 0 (the certain start) has
    # zero likelihood there. The evidence is exactly zero; filtering from step 1 on and
    # all smoothing condition on an event of probability zero, so they are undefined (NaN).
    log_initial = jnp.log(jnp.array([1.0, 0.0]))
    log_transition = jnp.log(jnp.array([[1.0, 0.0], [0.5, 0.5]]))
    log_likelihoods = jnp.log(jnp.array([[0.3, 0.9], [0.0, 0.8], [0.5, 0.5]]))
    with np.errstate(invalid="ignore"):  # the brute force's marginals are 0/0 too
        assert brute_force(log_initial, log_transition, log_likelihoods)[0] == -np.inf
    for method in ("sequential", "parallel"):
        with pytest.warns(RuntimeWarning, match="probability zero under the model: at step 1 "):
            result = hmm_smoother(log_initial, log_transition, log_likelihoods, method=method)
        assert float(result.log_evidence) == -np.inf
        np.testing.assert_allclose(np.exp(result.log_filtered[0]), [1.0, 0.0])
        assert np.isnan(result.log_filtered[1:]).all() and np.isnan(result.log_smoothed).all()
        # An emission row of -inf everywhere: the same, from that step.
        rows = log_likelihoods.at[1].set(-jnp.inf).at[0].set(0.0)
        with pytest.warns(RuntimeWarning, match="at step 1 .* from that step on are NaN"):
            assert float(hmm_filter(log_initial, log_transition, rows, method=method).log_evidence) == -np.inf
    # Inside jit (no warning there) the evidence is -inf too.
    evidence = jax.jit(lambda ll: hmm_filter(log_initial, log_transition, ll).log_evidence)
    assert float(evidence(log_likelihoods)) == -np.inf


def test_kalman_with_a_singular_observation_covariance_raises_naming_the_step():
    # A state known exactly (P0 = 0) observed without noise (R = 0): p(y_0) is a point mass.
    eye = np.eye(2)
    model = LinearGaussianSSM(np.zeros(2), 0 * eye, eye, eye, eye, 0 * eye, np.ones((3, 2)))
    message = r"log likelihood .* is NaN at step 0: the predicted observation covariance"
    for method in ("sequential", "parallel"):
        with pytest.raises(ValueError, match=message):
            kalman_filter(model, method)
    with pytest.raises(jax.errors.JaxRuntimeError, match="is NaN at some step"):
        jax.block_until_ready(jax.jit(lambda m: kalman_filter(m).log_evidence)(model))
    # Semi-definite covariances the filter handles are accepted: P0 = 0 with R > 0, Q = 0.
    known_start = LinearGaussianSSM(np.zeros(2), 0 * eye, eye, 0 * eye, eye, eye, np.ones((1, 2)))
    expected = -np.log(2 * np.pi) - 0.5 * 2.0  # log N((1, 1); 0, I)
    assert float(kalman_filter(known_start).log_evidence) == pytest.approx(expected, rel=1e-6)


# --- bad input -------------------------------------------------------------------------------


def test_unknown_method():
    with pytest.raises(ValueError, match="method"):
        kalman_filter(make_model(3), "fast")
    with pytest.raises(ValueError, match="method"):
        hmm_filter(*random_hmm(jax.random.key(0), 2, 3), method="fast")


def test_kalman_needs_a_linear_gaussian_model():
    with pytest.raises(TypeError, match="model"):
        kalman_filter("not a model")


@pytest.mark.parametrize(
    "args, name",
    [
        ((jnp.zeros(3), jnp.zeros((2, 2)), jnp.zeros((4, 3))), "log_transition"),
        ((jnp.zeros(3), jnp.zeros((3, 3)), jnp.zeros((4, 2))), "log_likelihoods"),
        ((jnp.zeros((3, 1)), jnp.zeros((3, 3)), jnp.zeros((4, 3))), "log_initial"),
        ((jnp.zeros(3), jnp.full((3, 3), jnp.nan), jnp.zeros((4, 3))), "log_transition"),
        ((jnp.zeros(3), jnp.zeros((3, 3)), jnp.zeros((4, 3)).at[2, 1].set(jnp.inf)),
         r"`log_likelihoods` must hold log probabilities \(no NaN or \+inf\), got inf at index \(2, 1\)"),
    ],
)
def test_hmm_bad_shapes(args, name):
    with pytest.raises(ValueError, match=name):
        hmm_smoother(*args)

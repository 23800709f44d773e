"""Particle filters on a linear-Gaussian model, checked against the exact Kalman answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from probinf import smc
from probinf.smc.feynman_kac import FeynmanKac, trace_genealogy
from probinf.smc.models import gaussian_log_density

NUM_STEPS = 15


def make_model():
    model = smc.LinearGaussianSSM(
        jnp.zeros(1), jnp.eye(1), 0.9 * jnp.eye(1), 0.5 * jnp.eye(1), jnp.eye(1),
        0.3 * jnp.eye(1), jnp.zeros((NUM_STEPS, 1)),
    )
    _, y = model.simulate(jax.random.key(0), NUM_STEPS)
    return model.with_observations(y)


MODEL = make_model()
EXACT = smc.rts_smoother(MODEL)
LOG_Z = float(EXACT.log_evidence)


def predictive_lookahead(t, x):
    """log p(y_t | x_{t-1}) of the linear-Gaussian model: the ideal auxiliary look-ahead."""
    m = MODEL
    hf = m.observation_matrix @ m.transition_matrix
    cov = m.observation_matrix @ m.transition_cov @ m.observation_matrix.T + m.observation_cov
    return gaussian_log_density(m.observations[t], x @ hf.T, cov)


def log_evidence_runs(model, num_particles, replicates, seed, **kwargs):
    run = jax.jit(jax.vmap(lambda k: smc.particle_filter(k, model, num_particles, **kwargs).log_evidence))
    return np.asarray(run(jax.random.split(jax.random.key(seed), replicates)), np.float64)


def assert_unbiased(log_evidence, z=4.0):
    """E[Z-hat / Z] = 1: a z-test on the mean ratio with its standard error (false alarm 6e-5)."""
    ratio = np.exp(log_evidence - LOG_Z)
    standard_error = ratio.std(ddof=1) / np.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) < z * standard_error, (ratio.mean(), standard_error)


@pytest.fixture(scope="module")
def bootstrap_runs():
    return {
        128: log_evidence_runs(smc.Bootstrap(MODEL), 128, 256, seed=1),
        2048: log_evidence_runs(smc.Bootstrap(MODEL), 2048, 64, seed=2),
    }


def test_bootstrap_evidence_is_unbiased(bootstrap_runs):
    assert_unbiased(bootstrap_runs[128])
    assert_unbiased(bootstrap_runs[2048])


def test_evidence_error_shrinks_with_n(bootstrap_runs):
    # Var(log Z-hat) ~ c / N, so 16x the particles should cut the sd about 4x. The sample sd
    # of R normal draws has relative sd 1/sqrt(2(R-1)); a factor of 2 is > 5 such sds away.
    small, large = bootstrap_runs[128], bootstrap_runs[2048]
    assert small.std(ddof=1) / large.std(ddof=1) > 2.0
    assert np.sqrt(np.mean((large - LOG_Z) ** 2)) < np.sqrt(np.mean((small - LOG_Z) ** 2))


def test_guided_filter_with_optimal_proposal_is_unbiased_and_better():
    guided = log_evidence_runs(smc.Guided(MODEL, MODEL.optimal_proposal()), 128, 256, seed=3,
                               resampling="residual")
    assert_unbiased(guided)


def test_auxiliary_filter_is_unbiased():
    model = smc.Auxiliary(smc.Bootstrap(MODEL), predictive_lookahead)
    assert_unbiased(log_evidence_runs(model, 128, 256, seed=4, resampling="multinomial",
                                      ess_threshold=1.0))


def test_no_resampling_is_importance_sampling_exactly():
    # With ess_threshold=0 the filter is sequential importance sampling: log Z-hat is the
    # log mean of the product of potentials along each independent path.
    result = smc.particle_filter(jax.random.key(5), smc.Bootstrap(MODEL), 50,
                                 ess_threshold=0.0, store_history=True)
    assert not np.any(result.resampled)
    np.testing.assert_array_equal(result.history.ancestors, np.tile(np.arange(50), (NUM_STEPS, 1)))
    paths = result.history.particles
    log_g = np.stack([MODEL.log_observation(t, paths[t]) for t in range(NUM_STEPS)]).sum(0)
    expected = jax.scipy.special.logsumexp(log_g) - np.log(50)
    assert float(result.log_evidence) == pytest.approx(float(expected), abs=1e-3)
    assert float(jnp.sum(result.log_evidence_increments)) == pytest.approx(float(result.log_evidence), abs=1e-4)


def test_always_resampling_and_ess_record():
    result = smc.particle_filter(jax.random.key(6), smc.Bootstrap(MODEL), 64, ess_threshold=1.0)
    assert not result.resampled[0] and np.all(result.resampled[1:])
    assert np.all((result.ess >= 1.0 - 1e-4) & (result.ess <= 64 + 1e-3))
    assert float(jnp.exp(jax.scipy.special.logsumexp(result.log_weights))) == pytest.approx(1.0, abs=1e-5)


def test_backward_sampling_matches_the_rts_smoother():
    # R independent filter + FFBS runs; each run's smoothed means are an estimate with
    # O(1/N) bias; the test uses the spread across runs (Bonferroni over the T marginals).
    model = smc.Bootstrap(MODEL)

    def one(key):
        key_filter, key_backward = jax.random.split(key)
        result = smc.particle_filter(key_filter, model, 256, resampling="stratified", store_history=True)
        paths = smc.backward_sampling(key_backward, model, result, 64)
        return paths[..., 0].mean(1), (paths[..., 0] ** 2).mean(1)

    replicates = 24
    means, second = jax.lax.map(one, jax.random.split(jax.random.key(7), replicates))
    means, second = np.asarray(means), np.asarray(second)
    exact_mean = np.asarray(EXACT.smoothed_means[:, 0])
    exact_second = exact_mean**2 + np.asarray(EXACT.smoothed_covs[:, 0, 0])
    z = stats.norm.isf(1e-3 / (2 * 2 * NUM_STEPS))
    for estimate, exact in ((means, exact_mean), (second, exact_second)):
        standard_error = estimate.std(0, ddof=1) / np.sqrt(replicates)
        assert np.all(np.abs(estimate.mean(0) - exact) < z * standard_error)


def test_genealogy_follows_the_ancestors():
    result = smc.particle_filter(jax.random.key(8), smc.Bootstrap(MODEL), 32, store_history=True)
    paths = np.asarray(result.genealogy())
    particles = np.asarray(result.history.particles)
    ancestors = np.asarray(result.history.ancestors)
    np.testing.assert_array_equal(paths[-1], particles[-1])
    index = np.arange(32)
    for t in range(NUM_STEPS - 1, 0, -1):
        index = ancestors[t][index]
        np.testing.assert_array_equal(paths[t - 1], particles[t - 1][index])
    np.testing.assert_array_equal(trace_genealogy(result.history.particles, result.history.ancestors,
                                                  jnp.array([3]))[:, 0], paths[:, 3])


def test_filtering_weights_of_the_auxiliary_filter_estimate_the_filter_mean():
    model = smc.Auxiliary(smc.Bootstrap(MODEL), predictive_lookahead)
    result = smc.particle_filter(jax.random.key(9), model, 4096, store_history=True)
    weights = np.exp(np.asarray(result.history.log_weights))
    means = (weights * np.asarray(result.history.particles.inner[..., 0])).sum(1)
    # One large run: importance-sampling error of order sd / sqrt(ESS).
    sd = np.sqrt(np.asarray(EXACT.filtered_covs[:, 0, 0]))
    ess = 1.0 / (weights**2).sum(1)
    assert np.all(np.abs(means - np.asarray(EXACT.filtered_means[:, 0])) < 5 * sd / np.sqrt(ess) + 1e-3)


# --- bad input -------------------------------------------------------------------------------


class Faulty(FeynmanKac):
    """A random walk whose potential turns NaN or -inf at a chosen step, or has a wrong shape."""

    fault: str = "none"
    fault_step: int = 3

    @property
    def num_steps(self):
        return 6

    def init(self, key, n):
        if self.fault == "init_shape":
            return jax.random.normal(key, (n + 1, 2))
        return jax.random.normal(key, (n, 2))

    def transition(self, key, t, particles):
        if self.fault == "transition_shape":
            return particles[:, :1]
        return particles + jax.random.normal(key, particles.shape)

    def log_potential(self, t, particles):
        value = -0.5 * jnp.sum(particles**2, axis=-1)
        if self.fault == "nan":
            value = jnp.where(t == self.fault_step, value.at[0].set(jnp.nan), value)
        if self.fault == "zero":
            value = jnp.where(t == self.fault_step, -jnp.inf, value)
        if self.fault == "potential_shape":
            return value[:, None]
        return value


def test_sound_faulty_model_runs():
    assert bool(smc.particle_filter(jax.random.key(0), Faulty(), 16).ok)


@pytest.mark.parametrize("fault, message, code", [("nan", "NaN", 1), ("zero", "zero weight", 2)])
def test_failures_raise_or_flag(fault, message, code):
    model = Faulty(fault=fault)
    with pytest.raises(ValueError, match=f"step 3: .*{message}"):
        smc.particle_filter(jax.random.key(0), model, 16)
    result = smc.particle_filter(jax.random.key(0), model, 16, raise_on_failure=False)
    assert int(result.failure) == code and int(result.failed_at) == 3 and not bool(result.ok)
    assert np.isnan(result.log_evidence) if code == 1 else result.log_evidence == -np.inf
    # Inside jit the flag is the only report, and nothing after the failure is NaN-poisoned.
    flagged = jax.jit(lambda k: smc.particle_filter(k, model, 16))(jax.random.key(0))
    assert int(flagged.failure) == code and np.all(np.isfinite(flagged.log_weights))


@pytest.mark.parametrize(
    "fault, piece",
    [("init_shape", "init"), ("transition_shape", "transition"), ("potential_shape", "log_potential")],
)
def test_mismatched_shapes(fault, piece):
    with pytest.raises(ValueError, match=piece):
        smc.particle_filter(jax.random.key(0), Faulty(fault=fault), 16)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_num_particles(n):
    with pytest.raises(ValueError, match="num_particles"):
        smc.particle_filter(jax.random.key(0), Faulty(), n)


@pytest.mark.parametrize("kwargs, name", [
    ({"ess_threshold": 1.5}, "ess_threshold"),
    ({"ess_threshold": -0.1}, "ess_threshold"),
    ({"resampling": "optimal"}, "resampling"),
])
def test_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        smc.particle_filter(jax.random.key(0), Faulty(), 8, **kwargs)


def test_not_a_model():
    with pytest.raises(TypeError, match="model"):
        smc.particle_filter(jax.random.key(0), object(), 8)
    with pytest.raises(TypeError, match="ssm"):
        smc.Bootstrap("not a model")
    with pytest.raises(TypeError, match="proposal"):
        smc.Guided(MODEL, object())


def test_backward_sampling_needs_history_and_a_density():
    result = smc.particle_filter(jax.random.key(0), smc.Bootstrap(MODEL), 8)
    with pytest.raises(ValueError, match="store_history"):
        smc.backward_sampling(jax.random.key(0), smc.Bootstrap(MODEL), result, 4)
    with pytest.raises(ValueError, match="store_history"):
        result.genealogy()
    history = smc.particle_filter(jax.random.key(0), Faulty(), 8, store_history=True)
    with pytest.raises(TypeError, match="log_transition_density"):
        smc.backward_sampling(jax.random.key(0), Faulty(), history, 4)
    with pytest.raises(ValueError, match="num_trajectories"):
        smc.backward_sampling(jax.random.key(0), smc.Bootstrap(MODEL), result, 0)


def test_progress_chunks_do_not_change_the_answer():
    # Step t uses fold_in(key, t): splitting the scan into chunks for the progress bar
    # must give the same run.
    plain = smc.particle_filter(jax.random.key(10), smc.Bootstrap(MODEL), 32, store_history=True)
    chunked = smc.particle_filter(jax.random.key(10), smc.Bootstrap(MODEL), 32, store_history=True,
                                  progress=True)
    np.testing.assert_array_equal(chunked.history.ancestors, plain.history.ancestors)
    np.testing.assert_allclose(chunked.log_evidence, plain.log_evidence, rtol=1e-6)
    np.testing.assert_allclose(chunked.history.particles, plain.history.particles, rtol=1e-6)

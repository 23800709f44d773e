"""The Feynman–Kac kernel (`init`, `step`) against exact answers: Kalman evidence, hand-computed
weights, ESS and resampling decisions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf import smc


class Counter(smc.FeynmanKac):
    """Particle i is the number i; M_t is the identity; log G_t(x) = log(x + 1)."""

    @property
    def num_steps(self):
        return 3

    def init(self, key, n):
        return jnp.arange(n, dtype=jnp.result_type(float))

    def transition(self, key, t, particles):
        return particles

    def log_potential(self, t, particles):
        return jnp.log(particles + 1.0)


def state_with_weights(weights):
    weights = np.asarray(weights, np.float64)
    n = weights.size
    dtype = jnp.result_type(float)
    return smc.FilterState(
        particles=jnp.arange(n, dtype=dtype),
        log_weights=jnp.log(jnp.asarray(weights, dtype)),
        log_evidence=jnp.zeros((), dtype),
        ess=jnp.asarray(1.0 / np.sum(weights**2), dtype),
        failure=jnp.int32(0),
        failed_at=jnp.int32(-1),
    )


STEP = jax.jit(smc.step, static_argnames=("model", "resampling", "ess_threshold", "conditional", "num_ancestors"))


def test_step_resamples_when_the_ess_is_low_and_reweights_by_hand():
    # ESS of (0.7, 0.1, 0.1, 0.1) is 1 / 0.52 = 1.92 < 0.5 * 4: resample, then W ∝ G(x^{a_i}).
    state = state_with_weights([0.7, 0.1, 0.1, 0.1])
    new, info = STEP(jax.random.key(0), state, jnp.int32(1), Counter(), ess_threshold=0.5)
    ancestors = np.asarray(info.ancestors)
    assert bool(info.resampled)
    # Systematic resampling gives particle i floor(n w_i) or ceil(n w_i) children.
    counts = np.bincount(ancestors, minlength=4)
    assert np.all(counts >= np.floor(4 * np.array([0.7, 0.1, 0.1, 0.1])))
    assert np.all(counts <= np.ceil(4 * np.array([0.7, 0.1, 0.1, 0.1])))
    potentials = ancestors + 1.0
    np.testing.assert_allclose(np.asarray(new.particles), ancestors)
    np.testing.assert_allclose(float(info.log_evidence_increment), np.log(potentials.mean()), rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(new.log_weights)), potentials / potentials.sum(), rtol=1e-6)
    expected_ess = potentials.sum() ** 2 / np.sum(potentials**2)
    np.testing.assert_allclose(float(info.ess), expected_ess, rtol=1e-6)
    np.testing.assert_allclose(float(new.ess), expected_ess, rtol=1e-6)
    np.testing.assert_allclose(float(new.log_evidence), np.log(potentials.mean()), rtol=1e-6)


def test_step_keeps_the_cloud_when_the_ess_is_high():
    # ESS of (0.4, 0.2, 0.2, 0.2) is 1 / 0.28 = 3.57 >= 2: no resampling, W ∝ W_prev * G.
    weights = np.array([0.4, 0.2, 0.2, 0.2])
    state = state_with_weights(weights)
    new, info = STEP(jax.random.key(0), state, jnp.int32(1), Counter(), ess_threshold=0.5)
    assert not bool(info.resampled)
    np.testing.assert_array_equal(np.asarray(info.ancestors), np.arange(4))
    products = weights * (np.arange(4) + 1.0)  # (0.4, 0.4, 0.6, 0.8)
    np.testing.assert_allclose(float(info.log_evidence_increment), np.log(2.2), rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(new.log_weights)), products / 2.2, rtol=1e-6)
    np.testing.assert_allclose(float(info.ess), 2.2**2 / np.sum(products**2), rtol=1e-6)


@pytest.mark.parametrize("threshold, resampled", [(1.0, True), (0.0, False)])
def test_threshold_one_always_and_zero_never_resamples(threshold, resampled):
    state = state_with_weights([0.25, 0.25, 0.25, 0.25])  # ESS = n: the highest possible
    if threshold == 0.0:
        state = state_with_weights([0.97, 0.01, 0.01, 0.01])  # ESS about 1.06: the lowest here
    _, info = STEP(jax.random.key(1), state, jnp.int32(1), Counter(), ess_threshold=threshold)
    assert bool(info.resampled) is resampled
    assert smc.should_resample(4.0, 4, threshold) is resampled


def test_should_resample_rule():
    assert bool(smc.should_resample(1.9, 4, 0.5)) and not bool(smc.should_resample(2.0, 4, 0.5))
    assert bool(smc.should_resample(jnp.float32(1.9), 4, 0.5))


def test_reweight_by_hand_and_failures():
    log_weights = jnp.log(jnp.array([0.5, 0.25, 0.25]))
    new, increment, ess, failure = smc.reweight(log_weights, jnp.log(jnp.array([2.0, 4.0, 0.0])))
    np.testing.assert_allclose(np.exp(np.asarray(new)), [0.5, 0.5, 0.0], atol=1e-7)
    np.testing.assert_allclose(float(increment), np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(float(ess), 2.0, rtol=1e-6)
    assert int(failure) == 0
    for potential, code in [([0.0, jnp.nan, 0.0], 1), ([0.0, jnp.inf, 0.0], 1), ([-jnp.inf] * 3, 2)]:
        new, increment, ess, failure = smc.reweight(log_weights, jnp.asarray(potential))
        assert int(failure) == code and float(increment) == 0.0
        np.testing.assert_allclose(np.exp(np.asarray(new)), np.full(3, 1 / 3), rtol=1e-6)


def test_a_failed_step_is_recorded_once_and_freezes_the_evidence():
    class Breaks(Counter):
        def log_potential(self, t, particles):
            return jnp.where(t == 2, jnp.nan, jnp.log(particles + 1.0))

    model = Breaks()
    state = smc.init(jax.random.key(0), model, 4)
    np.testing.assert_allclose(float(state.log_evidence), np.log(2.5), rtol=1e-6)  # log mean(1..4)
    evidence = []
    for t in (1, 2, 3):
        state, info = STEP(jax.random.key(t), state, jnp.int32(t), model, ess_threshold=0.0)
        evidence.append(float(state.log_evidence))
    assert int(state.failure) == 1 and int(state.failed_at) == 2
    assert evidence[1] == evidence[2] == evidence[0]  # nothing added after the failure
    assert np.all(np.isfinite(np.asarray(state.log_weights)))


def test_conditional_hook_rewrites_the_ancestors():
    everyone_from_three = lambda key, t, state, ancestors: jnp.full_like(ancestors, 3)
    state = state_with_weights([0.97, 0.01, 0.01, 0.01])
    new, info = STEP(jax.random.key(0), state, jnp.int32(1), Counter(), ess_threshold=1.0,
                     conditional=everyone_from_three)
    np.testing.assert_array_equal(np.asarray(info.ancestors), [3, 3, 3, 3])
    np.testing.assert_array_equal(np.asarray(new.particles), [3.0, 3.0, 3.0, 3.0])
    np.testing.assert_allclose(float(info.log_evidence_increment), np.log(4.0), rtol=1e-6)


def test_fewer_ancestors_than_particles_for_waste_free_moves():
    # Draw m = 2 parents from W = (0.5, 0, 0, 0.5) (systematic: one child each) and let the
    # transition make two particles of each (a chain of length 2): W ∝ G(x) on the 4 children.
    class Chains(Counter):
        def transition(self, key, t, parents):
            return jnp.repeat(parents, 2) + jnp.tile(jnp.array([0.0, 1.0]), parents.shape[0])

    state = state_with_weights([0.5, 0.0, 0.0, 0.5])
    new, info = STEP(jax.random.key(0), state, jnp.int32(1), Chains(), ess_threshold=1.0,
                     num_ancestors=2)
    np.testing.assert_array_equal(np.asarray(info.ancestors), [0, 3])
    np.testing.assert_array_equal(np.asarray(new.particles), [0.0, 1.0, 3.0, 4.0])
    potentials = np.array([1.0, 2.0, 4.0, 5.0])
    np.testing.assert_allclose(float(info.log_evidence_increment), np.log(potentials.mean()), rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(new.log_weights)), potentials / potentials.sum(), rtol=1e-6)
    for bad in ({"ess_threshold": 0.5}, {"conditional": lambda key, t, state, a: a}):
        with pytest.raises(ValueError, match="num_ancestors"):
            smc.step(jax.random.key(0), state, jnp.int32(1), Chains(), num_ancestors=2,
                     **{"ess_threshold": 1.0, **bad})
    with pytest.raises(ValueError, match="model.transition"):  # m parents must become n particles
        smc.step(jax.random.key(0), state, jnp.int32(1), Counter(), ess_threshold=1.0, num_ancestors=2)


def test_step_checks_shapes_when_traced():
    class Wrong(Counter):
        def transition(self, key, t, particles):
            return particles[:-1]

    state = smc.init(jax.random.key(0), Wrong(), 4)
    with pytest.raises(ValueError, match="model.transition"):
        smc.step(jax.random.key(0), state, jnp.int32(1), Wrong())
    with pytest.raises(ValueError, match="ess_threshold"):
        smc.step(jax.random.key(0), state, jnp.int32(1), Counter(), ess_threshold=2.0)
    with pytest.raises(ValueError, match="resampling"):
        smc.step(jax.random.key(0), state, jnp.int32(1), Counter(), resampling="best")


def _run(key, model, n, ess_threshold):
    """The particle filter written by hand as a scan over `step`."""
    key_init, key_steps = jax.random.split(key)
    state = smc.init(key_init, model, n)

    def body(state, t):
        return smc.step(jax.random.fold_in(key_steps, t), state, t, model, ess_threshold=ess_threshold)

    state, infos = jax.lax.scan(body, state, jnp.arange(1, model.num_steps, dtype=jnp.int32))
    return state.log_evidence, infos


def lgssm(transition, num_steps=10):
    model = smc.LinearGaussianSSM(jnp.zeros(1), jnp.eye(1), transition * jnp.eye(1), 0.5 * jnp.eye(1),
                                  jnp.eye(1), 0.3 * jnp.eye(1), jnp.zeros((num_steps, 1)))
    _, y = model.simulate(jax.random.key(7), num_steps)
    return model.with_observations(y)


@pytest.mark.parametrize("ess_threshold", [0.0, 0.5, 1.0])
def test_optimal_proposal_with_constant_weights_gives_the_exact_evidence(ess_threshold):
    # With F = 0, p(y_t | x_{t-1}) does not depend on x_{t-1}: under the optimal proposal every
    # particle has the same weight, so each step's increment is exactly log p(y_t | y_{0:t-1}).
    model = lgssm(0.0)
    exact = smc.kalman_filter(model)
    guided = smc.Guided(model, model.optimal_proposal())
    log_evidence, infos = jax.jit(_run, static_argnums=(2, 3))(jax.random.key(0), guided, 8, ess_threshold)
    np.testing.assert_allclose(float(log_evidence), float(exact.log_evidence), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(infos.log_evidence_increment),
                               np.asarray(exact.log_likelihoods[1:]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(infos.ess), 8.0, rtol=1e-5)


def test_bootstrap_evidence_is_unbiased_for_the_kalman_evidence():
    # E[Z_hat] = Z: the mean of Z_hat / Z over independent runs is 1 within its standard error.
    model = lgssm(0.9)
    exact = float(smc.kalman_filter(model).log_evidence)
    runs = jax.jit(jax.vmap(lambda k: _run(k, smc.Bootstrap(model), 1024, 0.5)[0]))(
        jax.random.split(jax.random.key(3), 64))
    ratios = np.exp(np.asarray(runs, np.float64) - exact)
    standard_error = ratios.std(ddof=1) / math.sqrt(ratios.size)
    assert standard_error < 0.05  # enough particles for the test to have power
    assert abs(ratios.mean() - 1.0) < 4 * standard_error

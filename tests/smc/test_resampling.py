"""Resampling schemes: unbiased offspring counts, exact structural properties, bad input."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from probinf.smc import resampling
from probinf.smc.resampling import SCHEMES, resample

WEIGHTS = np.array([0.05, 0.0, 0.31, 0.12, 0.02, 0.27, 0.0, 0.23])
LOG_WEIGHTS = jnp.log(jnp.asarray(WEIGHTS, jnp.float32)) + 3.7  # unnormalised on purpose


def offspring_counts(scheme, key, log_weights, n, replicates):
    draw = jax.jit(jax.vmap(lambda k: SCHEMES[scheme](k, log_weights, n)))
    ancestors = np.asarray(draw(jax.random.split(key, replicates)))
    return np.stack([np.bincount(a, minlength=log_weights.shape[0]) for a in ancestors])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("n", [8, 13])
def test_offspring_counts_are_unbiased(scheme, n):
    # E[N_i] = n w_i. Each mean over R replicates is tested with its own standard error;
    # the z threshold gives a family-wise false-alarm rate of 1e-4 over all parametrizations.
    replicates = 20_000
    counts = offspring_counts(scheme, jax.random.key(n), LOG_WEIGHTS, n, replicates)
    expected = n * WEIGHTS
    mean = counts.mean(0)
    standard_error = counts.std(0, ddof=1) / np.sqrt(replicates)
    num_tests = len(SCHEMES) * 2 * len(WEIGHTS)
    z = stats.norm.isf(1e-4 / (2 * num_tests))
    positive = WEIGHTS > 0
    assert np.all(np.abs(mean - expected)[positive] <= z * standard_error[positive] + 1e-9)
    # Particles of zero weight are never drawn.
    assert np.all(counts[:, ~positive] == 0)
    assert np.all(counts.sum(1) == n)


def test_multinomial_counts_have_multinomial_variance():
    n, replicates = 13, 20_000
    counts = offspring_counts("multinomial", jax.random.key(1), LOG_WEIGHTS, n, replicates)
    variance = n * WEIGHTS * (1 - WEIGHTS)
    # Sample variance of R iid draws: chi-square with R-1 dof / (R-1); normal approx is fine here.
    for i in np.flatnonzero(WEIGHTS > 0):
        sd_of_variance = variance[i] * np.sqrt(2 / (replicates - 1))
        assert abs(counts[:, i].var(ddof=1) - variance[i]) < 5 * sd_of_variance


@pytest.mark.parametrize("scheme", ["systematic", "residual"])
def test_low_variance_schemes_keep_the_integer_part(scheme):
    # Systematic: N_i is floor(n w_i) or ceil(n w_i). Residual: N_i >= floor(n w_i).
    n = 13
    counts = offspring_counts(scheme, jax.random.key(2), LOG_WEIGHTS, n, 2000)
    floor = np.floor(n * WEIGHTS)
    assert np.all(counts >= floor)
    if scheme == "systematic":
        assert np.all(counts <= np.ceil(n * WEIGHTS))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_integer_expected_counts_are_exact_for_low_variance_schemes(scheme):
    # With n w_i all integers, systematic and residual copy every particle exactly n w_i times.
    weights = jnp.array([0.25, 0.5, 0.25])
    ancestors = resample(jax.random.key(0), jnp.log(weights), 8, scheme)
    assert ancestors.shape == (8,) and ancestors.dtype == jnp.int32
    if scheme in ("systematic", "residual"):
        np.testing.assert_array_equal(np.bincount(np.asarray(ancestors), minlength=3), [2, 4, 2])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_jit_with_static_n_and_n_different_from_m(scheme):
    fn = jax.jit(SCHEMES[scheme], static_argnums=2)
    for n in (1, 3, 50):
        ancestors = fn(jax.random.key(3), LOG_WEIGHTS, n)
        assert ancestors.shape == (n,)
        assert np.all(WEIGHTS[np.asarray(ancestors)] > 0)


def test_single_particle_with_all_mass():
    log_weights = jnp.array([-jnp.inf, 0.0, -jnp.inf])
    for scheme in SCHEMES:
        np.testing.assert_array_equal(resample(jax.random.key(0), log_weights, 5, scheme), 1)


def test_extreme_log_weights_do_not_overflow():
    log_weights = jnp.array([1e4, 1e4 - 50.0, -1e4])
    for scheme in SCHEMES:
        assert np.all(np.asarray(resample(jax.random.key(0), log_weights, 10, scheme)) == 0)


def test_effective_sample_size_reexported():
    assert resampling.effective_sample_size(jnp.zeros(7)) == pytest.approx(7.0, rel=1e-6)


# --- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize(
    "log_weights",
    [jnp.full(4, -jnp.inf), jnp.array([0.0, jnp.nan, 0.0]), jnp.array([0.0, jnp.inf])],
    ids=["all-minus-inf", "nan", "plus-inf"],
)
def test_invalid_weights_raise(scheme, log_weights):
    with pytest.raises(ValueError, match="log_weights"):
        resample(jax.random.key(0), log_weights, 4, scheme)


INVALID = [
    (jnp.full(3, -jnp.inf), "every weight is -inf"),
    (jnp.array([0.0, jnp.nan, 0.0]), "it holds a NaN"),
    (jnp.array([0.0, jnp.inf]), r"it holds \+inf"),
]


@pytest.mark.parametrize("log_weights, reason", INVALID, ids=["all-minus-inf", "nan", "plus-inf"])
def test_invalid_weights_raise_inside_jit_with_the_same_message(log_weights, reason):
    message = f"`log_weights` cannot be normalised to resampling probabilities: {reason}"
    with pytest.raises(ValueError, match=message):  # outside jit
        resample(jax.random.key(0), log_weights, 4)
    fn = functools.partial(resample, n=4, scheme="systematic")
    # equinox.filter_jit re-raises the run-time check as its own error, message intact.
    with pytest.raises(eqx.EquinoxRuntimeError, match=f"EquinoxRuntimeError: {message}"):
        jax.block_until_ready(eqx.filter_jit(fn)(jax.random.key(0), log_weights))
    # Plain jax.jit: JAX's callback error holds the message after the callback's stack.
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        jax.block_until_ready(jax.jit(fn)(jax.random.key(0), log_weights))
    assert jax.jit(fn)(jax.random.key(0), jnp.zeros(3)).shape == (4,)


@pytest.mark.parametrize("n", [0, -2, 2.0, True])
def test_bad_n(n):
    with pytest.raises(ValueError, match="`n`"):
        resample(jax.random.key(0), jnp.zeros(3), n)


@pytest.mark.parametrize("shape", [(), (0,), (2, 3)])
def test_bad_log_weight_shape(shape):
    with pytest.raises(ValueError, match="log_weights"):
        resample(jax.random.key(0), jnp.zeros(shape), 3)


def test_unknown_scheme():
    with pytest.raises(ValueError, match="scheme"):
        resample(jax.random.key(0), jnp.zeros(3), 3, "optimal")

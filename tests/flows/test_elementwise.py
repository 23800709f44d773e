"""Elementwise bijections: property-based round trips over the float32 range where
each map is resolvable, closed-form log-derivatives, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import flows
from flows import Affine, Exp, Sigmoid, Softplus, Spline, Tanh

# (bijection, input range where float32 resolves the output from its bound, scalar map)
CASES = {
    "exp": (Exp(3), (-80.0, 80.0), jnp.exp),
    "softplus": (Softplus(3), (-80.0, 80.0), jax.nn.softplus),
    "sigmoid": (Sigmoid(3), (-80.0, 8.0), jax.nn.sigmoid),
    "tanh": (Tanh(3), (-4.0, 4.0), jnp.tanh),
}


def _round_trip_check(bijection, x):
    y, log_det = bijection.forward_and_log_det(x)
    x_back, inverse_log_det = bijection.inverse_and_log_det(y)
    return y, log_det, x_back, inverse_log_det


_jitted = jax.jit(_round_trip_check, static_argnums=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_property(name):
    bijection, (low, high), _ = CASES[name]

    @settings(max_examples=50, deadline=None)
    @given(arrays(np.float32, (3,), elements=st.floats(low, high, width=32)))
    def check(x):
        y, log_det, x_back, inverse_log_det = _jitted(bijection, jnp.asarray(x))
        assert np.all(np.isfinite(y)) and np.isfinite(log_det)
        # Tolerance from float32 resolution of the output: |dx| <= eps*|y| / f'(x) (+ rounding).
        slope = np.abs(np.asarray(jax.vmap(jax.grad(CASES[name][2]))(jnp.asarray(x))))
        resolution = 2 * np.finfo(np.float32).eps * np.maximum(np.abs(np.asarray(y)), np.finfo(np.float32).tiny)
        np.testing.assert_array_less(np.abs(np.asarray(x_back) - x), resolution / slope + 1e-5 * np.abs(x) + 1e-6)
        np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-3, atol=1e-3)

    check()


@pytest.mark.parametrize("name", sorted(CASES))
def test_log_derivative_closed_form(name):
    bijection, (low, high), scalar = CASES[name]
    x = jnp.linspace(max(low, -30.0), min(high, 30.0), 3 * 101).reshape(101, 3)
    _, log_det = jax.vmap(bijection.forward_and_log_det)(x)
    reference = jnp.sum(jnp.log(jax.vmap(jax.vmap(jax.grad(scalar)))(x)), axis=-1)
    finite = np.isfinite(np.asarray(reference))  # the float32 derivative itself underflows far out
    np.testing.assert_allclose(np.asarray(log_det)[finite], np.asarray(reference)[finite], rtol=1e-4, atol=1e-4)
    assert np.all(np.isfinite(log_det))


def test_constraint_maps_reach_their_supports():
    x = jnp.array([-30.0, 0.0, 30.0])
    assert np.all(Exp(3).forward(x) > 0) and np.all(Softplus(3).forward(x) > 0)
    assert np.all((Sigmoid(3).forward(x) >= 0) & (Sigmoid(3).forward(x) <= 1))
    assert np.all(np.abs(Tanh(3).forward(x)) <= 1)
    np.testing.assert_allclose(Softplus(3).inverse(jnp.array([1e-20, 1.0, 100.0])),
                               [np.log(1e-20), np.log(np.e - 1), 100.0], rtol=1e-5)


def test_affine_init_and_errors():
    affine = Affine.init(2, loc=[1.0, -1.0], scale=[2.0, 0.5])
    y, log_det = affine.forward_and_log_det(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(y, [3.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(log_det, np.log(2.0 * 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        Affine.init(2, scale=[1.0, -1.0])
    with pytest.raises(ValueError, match="loc"):
        Affine.init(2, loc=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="loc"):
        Affine.init(2, loc=[1.0, np.nan])
    with pytest.raises(ValueError, match="dim"):
        Exp(0)
    with pytest.raises(ValueError, match="params"):
        Spline(2, num_bins=4, params=jnp.zeros((2, 3)))


def test_flow_through_exp_is_lognormal():
    """exp of a standard normal: log q(y) = log N(log y; 0, 1) - log y, exactly."""
    flow = flows.Flow(Exp(2))
    y = jnp.array([[0.5, 2.0], [1.0, 3.0]])
    expected = np.sum(-0.5 * np.log(y) ** 2 - 0.5 * np.log(2 * np.pi) - np.log(y), axis=-1)
    np.testing.assert_allclose(flow.log_prob(y), expected, rtol=1e-5)

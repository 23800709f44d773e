"""Rational-quadratic splines: exact round trips (property-based, tails and extreme
inputs included), identity at zero parameters, monotonicity, normalisation, and
the transformers' parameter counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import flows
from flows.spline import (
    AffineTransformer,
    SplineTransformer,
    make_transformer,
    rational_quadratic_forward,
    rational_quadratic_inverse,
    spline_knots,
)

NUM_BINS = 6
BOUND = 3.0
NUM_PARAMS = 3 * NUM_BINS - 1

_forward = jax.jit(lambda x, raw: rational_quadratic_forward(x, *spline_knots(raw, NUM_BINS, BOUND)))
_inverse = jax.jit(lambda y, raw: rational_quadratic_inverse(y, *spline_knots(raw, NUM_BINS, BOUND)))
_derivative = jax.jit(jax.vmap(jax.grad(
    lambda x, raw: rational_quadratic_forward(x[None], *spline_knots(raw[None], NUM_BINS, BOUND))[0][0]
)))

# Raw parameters in [-3, 3] keep the smallest slope above ~1e-3, where float32
# round trips are accurate to ~1e-4 (the inverse's error grows like 1/slope).
raw_params = arrays(np.float32, (8, NUM_PARAMS), elements=st.floats(-3, 3, width=32))
inside = st.floats(-BOUND, BOUND, width=32)
anywhere = st.one_of(
    inside,
    st.floats(-1e6, 1e6, width=32),          # far into the identity tails
    st.sampled_from([-BOUND, BOUND, np.nextafter(np.float32(BOUND), np.float32(0)),
                     np.nextafter(np.float32(-BOUND), np.float32(0)), 0.0, -1e30, 1e30]),
)


@settings(max_examples=60, deadline=None)
@given(raw=raw_params, x=arrays(np.float32, (8,), elements=anywhere))
def test_inverse_of_forward_is_identity(raw, x):
    y, log_det = _forward(x, raw)
    x_back, inverse_log_det = _inverse(y, raw)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(log_det))
    np.testing.assert_allclose(x_back, x, atol=2e-4, rtol=1e-5)
    # The inverse's log-det is exact at the point it returns (comparing with the forward
    # log-det at x itself would mix in float32 conditioning near tiny bins).
    np.testing.assert_allclose(inverse_log_det, -_forward(x_back, raw)[1], atol=1e-4, rtol=1e-4)
    outside = np.abs(x) >= BOUND
    np.testing.assert_array_equal(np.asarray(y)[outside], x[outside])  # identity tails, exactly
    np.testing.assert_array_equal(np.asarray(log_det)[outside], 0.0)


@settings(max_examples=40, deadline=None)
@given(raw=raw_params, x=arrays(np.float32, (8,), elements=inside))
def test_log_derivative_matches_autodiff(raw, x):
    _, log_det = _forward(x, raw)
    np.testing.assert_allclose(np.exp(log_det), _derivative(x, raw), rtol=1e-3, atol=1e-6)


def test_knots_span_the_interval_and_zero_params_give_identity():
    raw = jax.random.normal(jax.random.key(0), (5, NUM_PARAMS))
    x_knots, y_knots, derivatives = spline_knots(raw, NUM_BINS, BOUND)
    np.testing.assert_array_equal(x_knots[:, [0, -1]], np.tile([-BOUND, BOUND], (5, 1)))
    np.testing.assert_array_equal(y_knots[:, [0, -1]], np.tile([-BOUND, BOUND], (5, 1)))
    assert np.all(np.diff(np.asarray(x_knots), axis=-1) > 0)
    np.testing.assert_array_equal(derivatives[:, [0, -1]], 1.0)  # slopes meet the tails
    x = jnp.linspace(-4.0, 4.0, 41)
    y, log_det = _forward(x, jnp.zeros((41, NUM_PARAMS)))
    np.testing.assert_allclose(y, x, atol=1e-6)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)


def test_spline_is_increasing_and_continuous_at_knots():
    raw = 2.0 * jax.random.normal(jax.random.key(1), (NUM_PARAMS,))
    x = jnp.linspace(-BOUND - 1, BOUND + 1, 20001)
    y, log_det = _forward(x, jnp.broadcast_to(raw, (x.shape[0], NUM_PARAMS)))
    steps = np.diff(np.asarray(y))
    assert np.all(steps >= 0) and np.all(np.isfinite(log_det))  # g' = exp(log_det) > 0
    assert steps.max() < 50 * (x[1] - x[0])  # no jump anywhere (slopes are bounded by ~1/min bin)


def test_elementwise_spline_density_integrates_to_one():
    raw = 1.5 * jax.random.normal(jax.random.key(2), (1, NUM_PARAMS))
    flow = flows.Flow(flows.Spline(1, num_bins=NUM_BINS, bound=BOUND, params=raw))
    grid = np.linspace(-12.0, 12.0, 240001)
    density = np.exp(np.asarray(flow.log_prob(jnp.asarray(grid[:, None], jnp.float32)), np.float64))
    assert abs(np.trapezoid(density, grid) - 1.0) < 1e-4


def test_transformers():
    assert AffineTransformer().num_params == 2
    assert SplineTransformer(num_bins=5).num_params == 14
    y, log_det = AffineTransformer().forward(jnp.array([1.0, 2.0]), jnp.array([[1.0, 0.0], [0.0, 0.0]]))
    np.testing.assert_allclose(y, [2.0, 2.0], atol=1e-6)  # raw scale 0 means scale 1
    np.testing.assert_allclose(log_det, 0.0, atol=1e-6)
    assert isinstance(make_transformer("spline", 4, 2.0), SplineTransformer)
    with pytest.raises(ValueError, match="transformer"):
        make_transformer("cubic", 4, 2.0)
    with pytest.raises(ValueError, match="num_bins"):
        SplineTransformer(num_bins=1)
    with pytest.raises(ValueError, match="bound"):
        SplineTransformer(bound=-1.0)
    with pytest.raises(ValueError, match="bound"):
        SplineTransformer(bound=math.inf)

"""Masked autoregressive layers: output i depends only on inputs before i (and the
context), exactly; the sequential inverse is exact; MADE masks are right."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows import MaskedAutoregressive
from flows._nn import made_degrees

KEY = jax.random.key(0)


def _randomised(layer):
    leaves, treedef = jax.tree_util.tree_flatten(layer)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    noisy = [leaf + 0.3 * jax.random.normal(k, leaf.shape) if eqx.is_inexact_array(leaf) else leaf
             for leaf, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_jacobian_is_lower_triangular(transformer):
    layer = _randomised(MaskedAutoregressive(KEY, 5, transformer=transformer, width=16, context_dim=2,
                                             activation=jnp.tanh))  # no dead units
    x = jnp.array([0.3, -0.7, 1.1, 0.2, -1.5])
    context = jnp.array([1.0, -2.0])
    jacobian = np.asarray(jax.jacfwd(layer.forward)(x, context))
    np.testing.assert_array_equal(np.triu(jacobian, 1), 0.0)
    assert np.all(np.abs(np.tril(jacobian, -1)[np.tril_indices(5, -1)]) > 0)  # and does use x_{<i}
    # The first output depends on the context only.
    other = layer.forward(x, context + 1.0)
    assert abs(float(other[0] - layer.forward(x, context)[0])) > 1e-4


def test_sequential_inverse_is_exact():
    layer = _randomised(MaskedAutoregressive(KEY, 6, transformer="spline", width=16))
    x = jax.random.normal(jax.random.key(1), (6,))
    y, log_det = layer.forward_and_log_det(x)
    x_back, inverse_log_det = layer.inverse_and_log_det(y)
    np.testing.assert_allclose(x_back, x, atol=1e-5)
    np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-4)


def test_made_degrees():
    inputs, hidden, _, outputs = made_degrees(dim=4, context_dim=2, width=6, depth=2)
    np.testing.assert_array_equal(inputs, [0, 0, 1, 2, 3, 4])
    assert set(hidden.tolist()) == {0, 1, 2, 3}
    assert set(made_degrees(dim=4, context_dim=0, width=6, depth=1)[1].tolist()) == {1, 2, 3}
    np.testing.assert_array_equal(outputs, [1, 2, 3, 4])


def test_one_dimensional_autoregressive_flow_is_affine_in_the_base():
    """With dim 1 there is nothing to condition on: each layer is a learned elementwise map."""
    flow = flows.inverse_autoregressive_flow(KEY, 1, num_layers=2, width=8)
    x, log_q = flow.sample_and_log_prob(jax.random.key(3), 7)
    np.testing.assert_allclose(log_q, flow.log_prob(x), atol=1e-5)
    np.testing.assert_allclose(log_q, -0.5 * x[:, 0] ** 2 - 0.5 * np.log(2 * np.pi), atol=1e-5)

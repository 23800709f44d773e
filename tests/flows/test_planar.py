"""Planar and radial flows stay invertible for any parameters and invert exactly."""

import jax
import jax.numpy as jnp
import numpy as np

from flows import Planar, Radial


def test_planar_is_invertible_for_any_parameters():
    """w . u_hat > -1 holds even when the raw u points against w."""
    for seed in range(5):
        layer = Planar(jax.random.key(seed), 3, init_scale=3.0)
        layer = Planar.__new__(Planar)
        key_u, key_w = jax.random.split(jax.random.key(seed))
        w = 3.0 * jax.random.normal(key_w, (3,))
        object.__setattr__(layer, "u", -2.0 * w)  # raw w.u is very negative
        object.__setattr__(layer, "w", w)
        object.__setattr__(layer, "b", jnp.asarray(0.3))
        assert float(jnp.dot(layer.w, layer._u_hat())) > -1.0
        x = jax.random.normal(key_u, (3,)) * 2.0
        y, log_det = layer.forward_and_log_det(x)
        x_back, inverse_log_det = layer.inverse_and_log_det(y)
        np.testing.assert_allclose(x_back, x, atol=1e-4)
        np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-4)


def test_planar_inverse_gradient_matches_implicit_function_theorem():
    """d/db of f^{-1}(y) equals -(J_f)^{-1} df/db at x = f^{-1}(y) (implicit differentiation)."""
    layer = Planar(jax.random.key(1), 2, init_scale=1.0)
    y = jnp.array([0.7, -0.4])
    x = layer.inverse(y)
    grad_b = jax.jacfwd(lambda b: Planar.inverse(eqx_replace(layer, b), y))(layer.b)
    jacobian = jax.jacfwd(layer.forward)(x)
    df_db = jax.jacfwd(lambda b: Planar.forward(eqx_replace(layer, b), x))(layer.b)
    np.testing.assert_allclose(grad_b, -np.linalg.solve(jacobian, df_db), rtol=1e-4, atol=1e-5)


def eqx_replace(layer, b):
    import equinox as eqx

    return eqx.tree_at(lambda m: m.b, layer, b)


def test_radial_inverse_far_and_near_the_centre():
    layer = Radial(jax.random.key(2), 3)
    layer = eqx_tree(layer, raw_beta=jnp.asarray(2.0), raw_alpha=jnp.asarray(-1.0))
    for scale in (1e-3, 1.0, 1e3):
        x = layer.center + scale * jnp.array([0.3, -0.2, 0.5])
        y, log_det = layer.forward_and_log_det(x)
        x_back, inverse_log_det = layer.inverse_and_log_det(y)
        np.testing.assert_allclose(x_back, x, rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-4)


def eqx_tree(layer, **values):
    import equinox as eqx

    for name, value in values.items():
        layer = eqx.tree_at(lambda m, n=name: getattr(m, n), layer, value)
    return layer

"""Coupling layers: the conditioning part passes through unchanged, the Jacobian is
triangular, and bad settings are rejected with the argument named."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows import Coupling, MaskedCoupling

KEY = jax.random.key(0)


def _randomised(layer):
    params, static = jax.tree_util.tree_flatten(layer)
    keys = jax.random.split(jax.random.key(5), len(params))
    noisy = [p + 0.3 * jax.random.normal(k, p.shape) if eqx.is_inexact_array(p) else p
             for p, k in zip(params, keys, strict=True)]
    return jax.tree_util.tree_unflatten(static, noisy)


@pytest.mark.parametrize("transformer", ["affine", "spline"])
def test_split_coupling_structure(transformer):
    layer = _randomised(Coupling(KEY, 5, split=2, transformer=transformer, width=8))
    x = jnp.array([0.3, -0.7, 1.1, 0.2, -1.5])
    y = layer.forward(x)
    np.testing.assert_array_equal(y[:2], x[:2])
    jacobian = np.asarray(jax.jacfwd(layer.forward)(x))
    np.testing.assert_array_equal(jacobian[:2, 2:], 0.0)  # fixed part ignores the moved part
    np.testing.assert_array_equal(jacobian[2:, 2:], np.diag(np.diag(jacobian[2:, 2:])))  # elementwise


def test_masked_coupling_structure():
    mask = np.array([True, False, False, True])
    layer = _randomised(MaskedCoupling(KEY, 4, mask=mask, transformer="spline", width=8))
    x = jnp.array([0.3, -0.7, 1.1, 0.2])
    y = layer.forward(x)
    np.testing.assert_array_equal(np.asarray(y)[mask], np.asarray(x)[mask])
    jacobian = np.asarray(jax.jacfwd(layer.forward)(x))
    np.testing.assert_array_equal(jacobian[np.ix_(~mask, ~mask)],
                                  np.diag(np.diag(jacobian[np.ix_(~mask, ~mask)])))
    np.testing.assert_array_equal(jacobian[np.ix_(mask, ~mask)], 0.0)


def test_bad_coupling_settings():
    with pytest.raises(ValueError, match="dim"):
        Coupling(KEY, 1)
    with pytest.raises(ValueError, match="dim"):
        MaskedCoupling(KEY, 1)
    with pytest.raises(ValueError, match="split"):
        Coupling(KEY, 4, split=4)
    with pytest.raises(ValueError, match="mask"):
        MaskedCoupling(KEY, 3, mask=np.array([True, True, True]))
    with pytest.raises(ValueError, match="mask"):
        MaskedCoupling(KEY, 3, mask=np.array([1, 0, 1]))
    with pytest.raises(ValueError, match="width"):
        Coupling(KEY, 4, width=0)
    with pytest.raises(TypeError, match="activation"):
        Coupling(KEY, 4, activation="sine")
    with pytest.raises(ValueError, match="context_dim"):
        Coupling(KEY, 4, context_dim=0)


def test_activation_names_still_work_with_a_deprecation_warning():
    """The names flows took before activations became functions build the same layer."""
    with pytest.warns(DeprecationWarning, match=r"jnp\.tanh"):
        by_name = Coupling(KEY, 4, activation="tanh")
    by_function = Coupling(KEY, 4, activation=jnp.tanh)
    assert by_name.conditioner.activation is jnp.tanh
    x = jnp.array([0.3, -0.7, 1.1, 0.2])
    np.testing.assert_array_equal(by_name.conditioner(x[:2]), by_function.conditioner(x[:2]))

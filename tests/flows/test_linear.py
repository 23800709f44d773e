"""Permutations and the LU-parameterised linear layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flows import LULinear, Permutation, TriangularAffine


def test_permutation_round_trip_and_errors():
    perm = Permutation(jnp.array([2, 0, 1]))
    x = jnp.array([10.0, 20.0, 30.0])
    np.testing.assert_array_equal(perm.forward(x), [30.0, 10.0, 20.0])
    np.testing.assert_array_equal(perm.inverse(perm.forward(x)), x)
    np.testing.assert_array_equal(Permutation.reverse(3).forward(x), [30.0, 20.0, 10.0])
    with pytest.raises(ValueError, match="permutation"):
        Permutation(jnp.array([0, 0, 1]))
    with pytest.raises(ValueError, match="permutation"):
        Permutation(jnp.array([0.0, 1.0]))


def test_lu_linear_matches_its_matrix():
    layer = LULinear(4, key=jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 4)
    layer = LULinear.__new__(LULinear)
    object.__setattr__(layer, "lower", jax.random.normal(keys[0], (4, 4)))
    object.__setattr__(layer, "upper", jax.random.normal(keys[1], (4, 4)))
    object.__setattr__(layer, "log_diagonal", 0.5 * jax.random.normal(keys[2], (4,)))
    object.__setattr__(layer, "bias", jax.random.normal(keys[3], (4,)))
    object.__setattr__(layer, "permutation", jnp.array([3, 1, 0, 2], jnp.int32))
    matrix = np.asarray(layer.matrix)
    x = jnp.array([0.5, -1.0, 2.0, 0.1])
    y, log_det = layer.forward_and_log_det(x)
    np.testing.assert_allclose(y, matrix @ np.asarray(x) + np.asarray(layer.bias), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(matrix)[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.inverse(y), x, atol=1e-5)
    assert layer.permutation.dtype == jnp.int32  # never trained by probinf.fit


def test_triangular_affine_pushes_the_standard_normal_to_its_gaussian():
    from scipy import stats

    import flows
    import probinf

    scale_tril = np.array([[1.5, 0.0, 0.0], [0.4, 0.2, 0.0], [-0.7, 0.3, 2.0]])
    loc = np.array([1.0, -2.0, 0.5])
    layer = TriangularAffine.from_gaussian(probinf.FullRankGaussian.init(3, loc=loc, scale_tril=scale_tril))
    np.testing.assert_allclose(layer.scale_tril, scale_tril, rtol=1e-6)
    flow = flows.Flow(layer)
    z = jax.random.normal(jax.random.key(0), (5, 3)) * 2.0
    exact = stats.multivariate_normal(loc, scale_tril @ scale_tril.T).logpdf(np.asarray(z))
    np.testing.assert_allclose(flow.log_prob(z), exact, rtol=1e-5)
    draws, log_q = flow.sample_and_log_prob(jax.random.key(1), 5)
    np.testing.assert_allclose(log_q, stats.multivariate_normal(loc, scale_tril @ scale_tril.T).logpdf(
        np.asarray(draws)), rtol=1e-5)
    # A mean-field Gaussian gives a diagonal factor.
    diagonal = TriangularAffine.from_gaussian(probinf.MeanFieldGaussian.init(3, loc=loc, scale=[1.0, 2.0, 3.0]))
    np.testing.assert_allclose(diagonal.scale_tril, np.diag([1.0, 2.0, 3.0]), rtol=1e-6)
    with pytest.raises(TypeError, match="gaussian"):
        TriangularAffine.from_gaussian("not a Gaussian")
    with pytest.raises(ValueError, match="shapes"):
        TriangularAffine(jnp.zeros(3), jnp.zeros(2), jnp.zeros((3, 3)))

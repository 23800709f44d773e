"""probinf.linalg (plain-JAX Cholesky and triangular solves) against LAPACK through jax.numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf.linalg import cho_solve, cholesky, solve_triangular


def spd(rng, shape):
    m = rng.normal(size=shape)
    return m @ np.swapaxes(m, -1, -2) + shape[-1] * np.eye(shape[-1])


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 5, 5), (2, 3, 6, 6)])
def test_cholesky_and_solves_match_lapack(shape):
    rng = np.random.default_rng(0)
    a = spd(rng, shape)
    factor = np.asarray(cholesky(a))
    np.testing.assert_allclose(factor, np.linalg.cholesky(a), atol=1e-5)
    b_vector = rng.normal(size=shape[:-1])
    b_matrix = rng.normal(size=shape[:-1] + (3,))
    for lower in (True, False):
        t = factor if lower else np.swapaxes(factor, -1, -2)
        for transpose in (False, True):
            for unit in (False, True):
                tm = t + (np.eye(shape[-1]) - np.eye(shape[-1]) * t) if unit else t
                for b in (b_vector, b_matrix):
                    rhs = b[..., None] if b is b_vector else b
                    expected = jax.scipy.linalg.solve_triangular(
                        tm, rhs, lower=lower, trans=1 if transpose else 0, unit_diagonal=unit)
                    expected = expected[..., 0] if b is b_vector else expected
                    got = solve_triangular(tm, b, lower=lower, transpose=transpose, unit_diagonal=unit)
                    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cho_solve(factor, b_matrix), np.linalg.solve(a, b_matrix), rtol=1e-4, atol=1e-5)


def test_cholesky_gradient_matches_jax_and_non_pd_gives_nan():
    a = jnp.asarray(spd(np.random.default_rng(1), (4, 4)), jnp.float32)
    ours = jax.grad(lambda m: jnp.sum(jnp.sin(cholesky(m))))(a)
    reference = jax.grad(lambda m: jnp.sum(jnp.sin(jnp.linalg.cholesky(m))))(a)
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
    assert np.isnan(np.asarray(cholesky(-jnp.eye(2)))).any()


def test_many_concurrent_batched_solves_finish():
    """The pattern that hangs jaxlib 0.10.2's batched LAPACK kernels on 2 cores."""
    rng = np.random.default_rng(2)
    factors = jnp.asarray(np.linalg.cholesky(spd(rng, (8, 3, 3))), jnp.float32)
    points = jnp.asarray(rng.normal(size=(8, 3, 500)), jnp.float32)

    @jax.jit
    def independent_solves(f, x):
        return [jnp.sum(solve_triangular(f + i, x)) for i in range(6)]

    for _ in range(20):
        jax.block_until_ready(independent_solves(factors, points))

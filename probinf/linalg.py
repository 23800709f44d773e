"""Cholesky factors and triangular solves of small matrices, in plain JAX operations.

jaxlib 0.10.2's CPU LAPACK kernels (``potrf``, ``trsm``) split a *batch* of matrices
into chunks on XLA's intra-op thread pool and block until the chunks finish. When
XLA runs as many independent batched LAPACK calls at once as the pool has threads
(two on a 2-core machine), every pool thread blocks waiting for chunks queued behind
it and the program hangs forever. Mixture densities, their gradients and vmapped
conjugate updates produce exactly such calls. These routines use only element-wise
operations, reductions and a ``fori_loop`` over the matrix size, so they never
enter that kernel; they cost :math:`O(d^3)` per matrix like LAPACK and are meant for
the small dimensions (up to a few dozen) where they are used.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array

__all__ = ["cholesky", "solve_triangular", "cho_solve"]


def cholesky(a: Array) -> Array:
    """Lower Cholesky factor :math:`L` with :math:`LL^\\top = A` of ``(..., d, d)`` matrices.

    Column by column (Cholesky–Crout): :math:`L_{jj} = \\sqrt{A_{jj} - \\sum_{k<j} L_{jk}^2}`,
    :math:`L_{ij} = (A_{ij} - \\sum_{k<j} L_{ik}L_{jk}) / L_{jj}` for :math:`i > j`. A matrix
    that is not positive definite gives NaN, as ``jnp.linalg.cholesky`` does. The input
    is symmetrised first, so gradients match ``jnp.linalg.cholesky``'s.
    """
    a = jnp.asarray(a)
    a = 0.5 * (a + jnp.swapaxes(a, -1, -2))
    d = a.shape[-1]
    index = jnp.arange(d)

    def column(j, factor):
        done = index < j  # columns k < j are final
        row_j = jnp.where(done, factor[..., j, :], 0.0)
        diagonal = jnp.sqrt(a[..., j, j] - jnp.sum(row_j * row_j, axis=-1))
        below = a[..., :, j] - jnp.sum(jnp.where(done, factor, 0.0) * row_j[..., None, :], axis=-1)
        new_column = jnp.where(index > j, below / diagonal[..., None], 0.0)
        new_column = jnp.where(index == j, diagonal[..., None], new_column)
        return jnp.where(index == j, new_column[..., :, None], factor)

    return jax.lax.fori_loop(0, d, column, jnp.zeros_like(a))


def solve_triangular(
    matrix: Array, b: Array, *, lower: bool = True, transpose: bool = False, unit_diagonal: bool = False
) -> Array:
    """Solve :math:`Tx = b` (or :math:`T^\\top x = b`) for triangular ``(..., d, d)`` matrices.

    ``b`` is ``(..., d)`` or ``(..., d, m)`` with batch dimensions broadcasting against
    ``matrix``'s. Substitution runs row by row in the order the triangle dictates.
    """
    matrix = jnp.asarray(matrix)
    b = jnp.asarray(b)
    vector = b.ndim == matrix.ndim - 1
    if vector:
        b = b[..., None]
    if transpose:
        matrix = jnp.swapaxes(matrix, -1, -2)
        lower = not lower
    d = matrix.shape[-1]
    index = jnp.arange(d)
    shape = jnp.broadcast_shapes(matrix.shape[:-2], b.shape[:-2]) + b.shape[-2:]
    dtype = jnp.result_type(matrix, b)

    def row(step, x):
        i = step if lower else d - 1 - step
        solved = (index < i) if lower else (index > i)
        coefficients = jnp.where(solved, matrix[..., i, :], 0.0)  # (..., d)
        residual = b[..., i, :] - jnp.sum(coefficients[..., :, None] * x, axis=-2)
        value = residual if unit_diagonal else residual / matrix[..., i, i][..., None]
        return jnp.where((index == i)[:, None], value[..., None, :], x)

    x = jax.lax.fori_loop(0, d, row, jnp.zeros(shape, dtype))
    return x[..., 0] if vector else x


def cho_solve(factor: Array, b: Array) -> Array:
    """Solve :math:`Ax = b` given the lower Cholesky factor of :math:`A`."""
    return solve_triangular(factor, solve_triangular(factor, b, lower=True), lower=True, transpose=True)

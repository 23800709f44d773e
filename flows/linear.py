"""Linear bijections: fixed permutations and an LU-parameterised invertible matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from flows._checks import check_positive_int
from flows.bijection import Bijection

__all__ = ["Permutation", "LULinear"]


class Permutation(Bijection):
    """``y = x[permutation]``, volume preserving (:math:`\\log|\\det J| = 0`).

    The permutation is an integer array, so :func:`probinf.vi.fit` never trains it.
    """

    permutation: Int[Array, " dim"]
    inverse_permutation: Int[Array, " dim"]

    def __init__(self, permutation: object):
        permutation = jnp.asarray(permutation)
        if permutation.ndim != 1 or not jnp.issubdtype(permutation.dtype, jnp.integer):
            raise ValueError(
                f"`permutation` must be a 1-d integer array, got dtype {permutation.dtype} "
                f"and shape {tuple(permutation.shape)}"
            )
        if not isinstance(permutation, jax.core.Tracer):
            values = np.asarray(permutation)
            if not np.array_equal(np.sort(values), np.arange(values.shape[0])):
                raise ValueError(
                    f"`permutation` must hold each of 0..{values.shape[0] - 1} once, got {values.tolist()}"
                )
        self.permutation = permutation.astype(jnp.int32)
        self.inverse_permutation = jnp.argsort(self.permutation).astype(jnp.int32)

    @classmethod
    def random(cls, key: PRNGKeyArray, dim: int) -> Permutation:
        """A uniformly random permutation of ``dim`` coordinates."""
        dim = check_positive_int(dim, "dim")
        return cls(jax.random.permutation(key, dim))

    @classmethod
    def reverse(cls, dim: int) -> Permutation:
        """The order reversal ``(dim-1, ..., 0)``."""
        dim = check_positive_int(dim, "dim")
        return cls(jnp.arange(dim - 1, -1, -1))

    @property
    def dim(self) -> int:
        return self.permutation.shape[-1]

    @property
    def context_dim(self) -> None:
        return None

    def forward_and_log_det(self, x, context=None):
        return x[self.permutation], jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, context=None):
        return y[self.inverse_permutation], jnp.zeros((), y.dtype)


class LULinear(Bijection):
    """``y = P L U x + b`` with ``L`` unit lower triangular, ``U`` upper triangular with
    diagonal :math:`e^{\\lambda}`, and ``P`` a fixed permutation (Kingma & Dhariwal,
    2018, "Glow", section 3.2).

    .. math:: \\log|\\det J| = \\sum_i \\lambda_i,

    and the inverse is two triangular solves. Only the strictly lower part of
    ``lower`` and the strictly upper part of ``upper`` are used.
    """

    lower: Float[Array, "dim dim"]
    upper: Float[Array, "dim dim"]
    log_diagonal: Float[Array, " dim"]
    bias: Float[Array, " dim"]
    permutation: Int[Array, " dim"]

    def __init__(self, dim: int, *, key: PRNGKeyArray | None = None):
        """The identity map when ``key`` is None, else a random permutation ``P``."""
        dim = check_positive_int(dim, "dim")
        self.lower = jnp.zeros((dim, dim))
        self.upper = jnp.zeros((dim, dim))
        self.log_diagonal = jnp.zeros(dim)
        self.bias = jnp.zeros(dim)
        perm = jnp.arange(dim) if key is None else jax.random.permutation(key, dim)
        self.permutation = perm.astype(jnp.int32)

    @property
    def dim(self) -> int:
        return self.bias.shape[-1]

    @property
    def context_dim(self) -> None:
        return None

    def _factors(self):
        dim = self.dim
        lower = jnp.tril(self.lower, -1) + jnp.eye(dim, dtype=self.lower.dtype)
        upper = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diagonal))
        return lower, upper

    @property
    def matrix(self) -> Float[Array, "dim dim"]:
        """The matrix ``P L U``."""
        lower, upper = self._factors()
        return (lower @ upper)[self.permutation]

    def forward_and_log_det(self, x, context=None):
        lower, upper = self._factors()
        return (lower @ (upper @ x))[self.permutation] + self.bias, jnp.sum(self.log_diagonal)

    def inverse_and_log_det(self, y, context=None):
        lower, upper = self._factors()
        z = jnp.zeros_like(y).at[self.permutation].set(y - self.bias)
        z = jsl.solve_triangular(lower, z, lower=True, unit_diagonal=True)
        x = jsl.solve_triangular(upper, z, lower=False)
        return x, -jnp.sum(self.log_diagonal)

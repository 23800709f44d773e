"""Linear bijections: fixed permutations, an LU-parameterised invertible matrix, and a
lower-triangular affine map (a full-rank Gaussian as a flow layer)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from flows._checks import check_positive_int
from flows.bijection import Bijection
from probinf.linalg import solve_triangular
from probinf.validation import is_traced

__all__ = ["Permutation", "LULinear", "TriangularAffine", "as_gaussian"]


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
        if not is_traced(permutation):
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
        # Plain-JAX substitution (probinf.linalg): vmapped LAPACK solves can hang on 2 cores.
        z = solve_triangular(lower, z, lower=True, unit_diagonal=True)
        x = solve_triangular(upper, z, lower=False)
        return x, -jnp.sum(self.log_diagonal)


def as_gaussian(gaussian: object):
    """``gaussian`` as a :class:`probinf.FullRankGaussian` or :class:`probinf.MeanFieldGaussian`.

    A :class:`probinf.Standardized` family with a Gaussian base (what
    :func:`probinf.vi.initialize` returns) is the Gaussian with mean :math:`m + L\\mu` and
    Cholesky factor :math:`L L_{\\text{base}}`.
    """
    from probinf.families import FullRankGaussian, MeanFieldGaussian, Standardized

    if isinstance(gaussian, (FullRankGaussian, MeanFieldGaussian)):
        return gaussian
    if isinstance(gaussian, Standardized) and isinstance(gaussian.base, (FullRankGaussian, MeanFieldGaussian)):
        base = gaussian.base
        base_tril = base.scale_tril if isinstance(base, FullRankGaussian) else jnp.diag(base.scale)
        tril = gaussian.frame_scale_tril @ base_tril
        return FullRankGaussian(gaussian.frame_loc + gaussian.frame_scale_tril @ base.loc,
                                jnp.log(jnp.diag(tril)), jnp.tril(tril, -1))
    raise TypeError(
        "`gaussian` must be a probinf.FullRankGaussian, MeanFieldGaussian or a Standardized "
        f"Gaussian (from probinf.vi.initialize), got {type(gaussian).__name__}"
    )


class TriangularAffine(Bijection):
    """``y = loc + L x`` with ``L`` lower triangular, diagonal :math:`e^{\\lambda}`.

    .. math:: \\log|\\det J| = \\sum_i \\lambda_i,

    the inverse is one triangular solve. Pushed through it, :math:`\\mathcal N(0, I)`
    becomes :math:`\\mathcal N(\\mathrm{loc}, L L^\\top)` (:meth:`from_gaussian`). Only the
    strictly lower part of ``off_diagonal`` is used.

    With ``trainable=False`` the layer is a fixed *frame*: its arrays enter the maps
    through ``stop_gradient``, so optimisers leave them where they are. A flow ending in
    a frame trains in that frame's units (the preconditioning of
    :class:`probinf.Standardized`): Adam's steps of about its learning rate are then a
    fraction of the frame's scale in every direction, whatever the model's units.
    """

    loc: Float[Array, " dim"]
    log_diagonal: Float[Array, " dim"]
    off_diagonal: Float[Array, "dim dim"]
    trainable: bool = eqx.field(static=True, default=True)

    def __init__(self, loc: object, log_diagonal: object, off_diagonal: object, *,
                 trainable: bool = True):
        loc = jnp.asarray(loc)
        dtype = jnp.result_type(loc, log_diagonal, off_diagonal, float)
        loc = loc.astype(dtype)
        log_diagonal = jnp.asarray(log_diagonal, dtype)
        off_diagonal = jnp.asarray(off_diagonal, dtype)
        dim = loc.shape[-1] if loc.ndim == 1 else -1
        if loc.ndim != 1 or log_diagonal.shape != (dim,) or off_diagonal.shape != (dim, dim):
            raise ValueError(
                "`loc`, `log_diagonal` and `off_diagonal` must have shapes (dim,), (dim,) and "
                f"(dim, dim), got {tuple(loc.shape)}, {tuple(log_diagonal.shape)} and "
                f"{tuple(off_diagonal.shape)}"
            )
        self.loc = loc
        self.log_diagonal = log_diagonal
        self.off_diagonal = jnp.tril(off_diagonal, -1)
        self.trainable = bool(trainable)

    @classmethod
    def identity(cls, dim: int) -> TriangularAffine:
        """The identity map on ``R^dim`` (trainable)."""
        dim = check_positive_int(dim, "dim")
        return cls(jnp.zeros(dim), jnp.zeros(dim), jnp.zeros((dim, dim)))

    @classmethod
    def from_gaussian(cls, gaussian: object, *, trainable: bool = True) -> TriangularAffine:
        """The layer mapping :math:`\\mathcal N(0, I)` to ``gaussian`` (see :func:`as_gaussian`).

        A :class:`probinf.FullRankGaussian`'s Cholesky factor is copied; a
        :class:`probinf.MeanFieldGaussian` gives a diagonal ``L``.
        """
        from probinf.families import FullRankGaussian

        gaussian = as_gaussian(gaussian)
        if isinstance(gaussian, FullRankGaussian):
            return cls(gaussian.loc, gaussian.log_diagonal, gaussian.off_diagonal, trainable=trainable)
        dim = gaussian.loc.shape[-1]
        return cls(gaussian.loc, gaussian.log_scale, jnp.zeros((dim, dim), jnp.result_type(gaussian.loc)),
                   trainable=trainable)

    @property
    def dim(self) -> int:
        return self.loc.shape[-1]

    @property
    def context_dim(self) -> None:
        return None

    def _params(self):
        params = (self.loc, self.log_diagonal, self.off_diagonal)
        return params if self.trainable else jax.lax.stop_gradient(params)

    @property
    def scale_tril(self) -> Float[Array, "dim dim"]:
        """The lower-triangular matrix ``L``."""
        _, log_diagonal, off_diagonal = self._params()
        return jnp.tril(off_diagonal, -1) + jnp.diag(jnp.exp(log_diagonal))

    def forward_and_log_det(self, x, context=None):
        loc, log_diagonal, _ = self._params()
        return loc + self.scale_tril @ x, jnp.sum(log_diagonal)

    def inverse_and_log_det(self, y, context=None):
        loc, log_diagonal, _ = self._params()
        # Plain-JAX substitution (probinf.linalg): vmapped LAPACK solves can hang on 2 cores.
        return solve_triangular(self.scale_tril, y - loc, lower=True), -jnp.sum(log_diagonal)

"""Gaussian mixtures as pytrees, and their closed-form algebra.

A :class:`GaussianMixture` is

.. math::
    p(\\theta) = \\sum_{k=1}^K w_k\\, \\mathcal N(\\theta; m_k, L_k L_k^\\top),

stored as log-weights, means and lower Cholesky factors. A component whose
log-weight is :math:`-\\infty` is *padding*: it contributes nothing, which lets
mixtures with different numbers of components share one array shape (and one
compiled program). Batches of mixtures are mixtures with leading axes on every
array; map over them with :func:`jax.vmap`.

The exact posterior of a mixture prior under a linear-Gaussian likelihood is again
a mixture (:func:`condition_linear_gaussian`); it is the ground truth the
Distribution Transformer is checked against.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from probinf.families import Family, check_num_samples
from probinf.linalg import cho_solve, cholesky, solve_triangular
from probinf.validation import is_traced

__all__ = [
    "GaussianMixture",
    "condition_linear_gaussian",
    "monte_carlo_kl",
    "sign_symmetrize",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _cholesky_or_raise(matrices: np.ndarray, name: str) -> None:
    """Raise a ValueError naming ``name`` unless every matrix is symmetric positive definite."""
    mats = np.asarray(matrices, dtype=np.float64).reshape((-1,) + np.shape(matrices)[-2:])
    for index, mat in enumerate(mats):
        if not np.all(np.isfinite(mat)):
            raise ValueError(f"`{name}` must be finite, entry {index} is not")
        scale = max(1.0, float(np.max(np.abs(mat))))
        if not np.allclose(mat, mat.T, atol=1e-5 * scale, rtol=1e-5):
            raise ValueError(f"`{name}` must be symmetric, entry {index} is not")
        smallest = float(np.linalg.eigvalsh(0.5 * (mat + mat.T)).min())
        if smallest <= 0:
            raise ValueError(
                f"`{name}` must be positive definite, entry {index} has smallest eigenvalue "
                f"{smallest:.3g}"
            )


def _check_weights(weights: np.ndarray, k: int, atol: float) -> None:
    if weights.shape != (k,):
        raise ValueError(f"`weights` must have shape ({k},), got {weights.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError(f"`weights` must be finite and non-negative, got {weights}")
    total = float(weights.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"`weights` must sum to one, they sum to {total:.6g}")


class GaussianMixture(Family):
    """A mixture of full-covariance Gaussians (see the module docstring).

    Build one with :meth:`from_covariances` or :meth:`from_scale_tril` (both check
    their input); the plain constructor takes the arrays as they are, for use inside
    traced code. ``dim``/``num_components`` are read from the array shapes.

    Attributes:
        log_weights: ``(K,)`` normalised log-weights; ``-inf`` marks padding.
        means: ``(K, dim)`` component means.
        scale_tril: ``(K, dim, dim)`` lower Cholesky factors with positive diagonals.
    """

    log_weights: Float[Array, " k"]
    means: Float[Array, "k dim"]
    scale_tril: Float[Array, "k dim dim"]
    reparameterized: ClassVar[bool] = False

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_covariances(
        cls, weights: object, means: object, covariances: object, *, atol: float = 1e-4
    ) -> GaussianMixture:
        """A mixture from weights ``(K,)``, means ``(K, dim)`` and covariances ``(K, dim, dim)``.

        Raises:
            ValueError: shapes that disagree, weights that are negative or do not sum to
                one (within ``atol``), or a covariance that is not symmetric positive
                definite.
        """
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"`means` must have shape (K, dim) with K, dim >= 1, got {means.shape}")
        k, dim = means.shape
        weights = np.asarray(weights, dtype=np.float64)
        _check_weights(weights, k, atol)
        covariances = np.asarray(covariances, dtype=np.float64)
        if covariances.shape != (k, dim, dim):
            raise ValueError(
                f"`covariances` must have shape ({k}, {dim}, {dim}), got {covariances.shape}"
            )
        if not np.all(np.isfinite(means)):
            raise ValueError("`means` must be finite")
        _cholesky_or_raise(covariances, "covariances")
        tril = np.linalg.cholesky(0.5 * (covariances + np.swapaxes(covariances, -1, -2)))
        return cls._from_numpy(weights, means, tril)

    @classmethod
    def from_scale_tril(
        cls, weights: object, means: object, scale_tril: object, *, atol: float = 1e-4
    ) -> GaussianMixture:
        """A mixture from weights, means and lower Cholesky factors ``(K, dim, dim)``.

        Raises:
            ValueError: shapes that disagree, invalid weights, or a factor that is not
                lower triangular with a positive diagonal.
        """
        means = np.asarray(means, dtype=np.float64)
        if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"`means` must have shape (K, dim) with K, dim >= 1, got {means.shape}")
        k, dim = means.shape
        weights = np.asarray(weights, dtype=np.float64)
        _check_weights(weights, k, atol)
        tril = np.asarray(scale_tril, dtype=np.float64)
        if tril.shape != (k, dim, dim):
            raise ValueError(f"`scale_tril` must have shape ({k}, {dim}, {dim}), got {tril.shape}")
        if not np.all(np.isfinite(tril)) or not np.all(np.isfinite(means)):
            raise ValueError("`means` and `scale_tril` must be finite")
        if np.any(np.triu(tril, 1) != 0):
            raise ValueError("`scale_tril` must be lower triangular")
        if np.any(np.diagonal(tril, axis1=-2, axis2=-1) <= 0):
            raise ValueError("`scale_tril` must have a positive diagonal")
        return cls._from_numpy(weights, means, tril)

    @classmethod
    def gaussian(cls, mean: object, covariance: object) -> GaussianMixture:
        """A single Gaussian as a one-component mixture (checked like :meth:`from_covariances`)."""
        mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        covariance = np.asarray(covariance, dtype=np.float64)
        if covariance.ndim == 0:
            covariance = covariance * np.eye(mean.shape[0])
        return cls.from_covariances([1.0], mean[None], covariance[None])

    @classmethod
    def _from_numpy(cls, weights: np.ndarray, means: np.ndarray, tril: np.ndarray) -> GaussianMixture:
        with np.errstate(divide="ignore"):
            log_weights = np.log(weights / weights.sum())
        dtype = jnp.result_type(float)
        return cls(
            log_weights=jnp.asarray(log_weights, dtype),
            means=jnp.asarray(means, dtype),
            scale_tril=jnp.asarray(tril, dtype),
        )

    # -- shape ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[-2]

    @property
    def component_mask(self) -> Bool[Array, " k"]:
        """``True`` for real components, ``False`` for padding."""
        return jnp.isfinite(self.log_weights)

    @property
    def weights(self) -> Float[Array, " k"]:
        return jnp.exp(self.log_weights)

    @property
    def covariances(self) -> Float[Array, "k dim dim"]:
        return self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)

    # -- density and sampling -------------------------------------------------------
    # Public methods are compiled (eqx.filter_jit): called eagerly, op-by-op dispatch
    # would compile every primitive separately.
    @eqx.filter_jit
    def component_log_prob(self, z: Float[Array, "... dim"]) -> Float[Array, "... k"]:
        """:math:`\\log \\mathcal N(z; m_k, \\Sigma_k)` for every component (without weights)."""
        z = jnp.asarray(z)
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(f"`z` must have last axis of length {self.dim}, got shape {z.shape}")
        flat = z.reshape(-1, self.dim)

        def one(mean, tril):
            eps = solve_triangular(tril, (flat - mean).T)
            log_det = jnp.sum(jnp.log(jnp.diagonal(tril)))
            return -0.5 * jnp.sum(eps**2, axis=0) - log_det - 0.5 * self.dim * _LOG_2PI

        per_component = jax.vmap(one)(self.means, self.scale_tril)  # (K, N)
        return per_component.T.reshape(z.shape[:-1] + (self.num_components,))

    @eqx.filter_jit
    def log_prob(self, z: Float[Array, "... dim"]) -> Float[Array, "..."]:
        """Mixture log density :math:`\\log \\sum_k w_k \\mathcal N(z; m_k, \\Sigma_k)`."""
        return jax.nn.logsumexp(self.component_log_prob(z) + self.log_weights, axis=-1)

    def responsibilities(self, z: Float[Array, "... dim"]) -> Float[Array, "... k"]:
        """Posterior component probabilities :math:`p(k \\mid z)`."""
        joint = self.component_log_prob(z) + self.log_weights
        return jnp.exp(joint - jax.nn.logsumexp(joint, axis=-1, keepdims=True))

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n dim"]:
        """``n`` draws: a component by weight, then :math:`m_k + L_k \\varepsilon`."""
        return _sample(self, key, check_num_samples(n))

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        z = self.sample(key, n)
        return z, self.log_prob(z)

    # -- moments --------------------------------------------------------------------
    @property
    def mean(self) -> Float[Array, " dim"]:
        """:math:`\\mathbb E[\\theta] = \\sum_k w_k m_k`."""
        return jnp.einsum("k,kd->d", self.weights, self.means)

    @property
    def covariance(self) -> Float[Array, "dim dim"]:
        """:math:`\\sum_k w_k (\\Sigma_k + m_k m_k^\\top) - \\mu\\mu^\\top`."""
        mu = self.mean
        second = self.covariances + jnp.einsum("ki,kj->kij", self.means, self.means)
        return jnp.einsum("k,kij->ij", self.weights, second) - jnp.outer(mu, mu)

    # -- algebra --------------------------------------------------------------------
    def affine(
        self,
        matrix: Float[Array, "out dim"],
        offset: Float[Array, " out"] | None = None,
        noise_covariance: Float[Array, "out out"] | None = None,
    ) -> GaussianMixture:
        """The law of :math:`A\\theta + b + \\eta`, :math:`\\eta \\sim \\mathcal N(0, Q)`.

        Each component maps to :math:`\\mathcal N(A m_k + b, A \\Sigma_k A^\\top + Q)`; the
        weights are unchanged. This is the prediction step of a linear-Gaussian filter.
        ``A S A^T + Q`` must be positive definite (``Q`` may be omitted when ``A`` has
        full row rank).
        """
        matrix = jnp.asarray(matrix, self.means.dtype)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim:
            raise ValueError(f"`matrix` must have shape (out, {self.dim}), got {matrix.shape}")
        out = matrix.shape[0]
        offset = jnp.zeros(out, self.means.dtype) if offset is None else jnp.asarray(offset)
        if offset.shape != (out,):
            raise ValueError(f"`offset` must have shape ({out},), got {offset.shape}")
        noise = jnp.zeros((out, out), self.means.dtype) if noise_covariance is None else jnp.asarray(
            noise_covariance
        )
        if noise.shape != (out, out):
            raise ValueError(f"`noise_covariance` must have shape ({out}, {out}), got {noise.shape}")
        if noise_covariance is not None and not is_traced(noise):
            _cholesky_or_raise(np.asarray(noise), "noise_covariance")
        means = self.means @ matrix.T + offset
        covs = matrix @ self.covariances @ matrix.T + noise
        covs = 0.5 * (covs + jnp.swapaxes(covs, -1, -2))
        eye = jnp.eye(out, dtype=covs.dtype)
        # Padding components keep an identity factor so that they stay valid.
        covs = jnp.where(self.component_mask[:, None, None], covs, eye)
        return GaussianMixture(self.log_weights, means, cholesky(covs))

    def marginal(self, indices: object) -> GaussianMixture:
        """The mixture of the coordinates ``indices`` (a mixture again)."""
        indices = np.atleast_1d(np.asarray(indices))
        if indices.ndim != 1 or indices.size == 0 or np.any((indices < 0) | (indices >= self.dim)):
            raise ValueError(f"`indices` must be non-empty positions in [0, {self.dim}), got {indices}")
        selector = np.eye(self.dim)[indices]
        return self.affine(selector)

    def pad(self, num_components: int) -> GaussianMixture:
        """The same mixture with padding components up to ``num_components``."""
        extra = num_components - self.num_components
        if extra < 0:
            raise ValueError(
                f"`num_components` ({num_components}) is below the mixture's {self.num_components}"
            )
        dtype = self.means.dtype
        return GaussianMixture(
            jnp.concatenate([self.log_weights, jnp.full(extra, -jnp.inf, dtype)]),
            jnp.concatenate([self.means, jnp.zeros((extra, self.dim), dtype)]),
            jnp.concatenate([self.scale_tril, jnp.broadcast_to(jnp.eye(self.dim, dtype=dtype), (extra, self.dim, self.dim))]),
        )


@eqx.filter_jit
def _sample(mixture: GaussianMixture, key, n: int) -> Array:
    key_index, key_noise = jax.random.split(key)
    index = jax.random.categorical(key_index, mixture.log_weights, shape=(n,))
    eps = jax.random.normal(key_noise, (n, mixture.dim), dtype=mixture.means.dtype)
    return mixture.means[index] + jnp.einsum("nij,nj->ni", mixture.scale_tril[index], eps)


def _check_linear_gaussian(prior, observations, design, noise_covariance, offset, mask):
    if not isinstance(prior, GaussianMixture):
        raise TypeError(f"`prior` must be a GaussianMixture, got {type(prior).__name__}")
    observations = jnp.asarray(observations)
    design = jnp.asarray(design)
    if design.ndim != 2 or design.shape[1] != prior.dim:
        raise ValueError(f"`design` must have shape (obs_dim, {prior.dim}), got {design.shape}")
    obs_dim = design.shape[0]
    if observations.ndim == 1 and obs_dim == observations.shape[0]:
        observations = observations[None]
    if observations.ndim != 2 or observations.shape[1] != obs_dim:
        raise ValueError(
            f"`observations` must have shape (n, {obs_dim}) to match `design`, got {observations.shape}"
        )
    if observations.shape[0] == 0:
        raise ValueError("`observations` is empty: at least one observation is needed")
    noise_covariance = jnp.asarray(noise_covariance)
    if noise_covariance.shape != (obs_dim, obs_dim):
        raise ValueError(
            f"`noise_covariance` must have shape ({obs_dim}, {obs_dim}), got {noise_covariance.shape}"
        )
    if not is_traced(noise_covariance):
        _cholesky_or_raise(np.asarray(noise_covariance), "noise_covariance")
    offset = jnp.zeros(obs_dim) if offset is None else jnp.asarray(offset)
    if offset.shape != (obs_dim,):
        raise ValueError(f"`offset` must have shape ({obs_dim},), got {offset.shape}")
    n = observations.shape[0]
    mask = jnp.ones(n, bool) if mask is None else jnp.asarray(mask, bool)
    if mask.shape != (n,):
        raise ValueError(f"`mask` must have shape ({n},), got {mask.shape}")
    if not is_traced(mask) and not bool(jnp.any(mask)):
        raise ValueError("`mask` selects no observation: the dataset is empty")
    return observations, design, noise_covariance, offset, mask


def sign_patterns(dim: int, axes: tuple[int, ...], name: str = "axes") -> np.ndarray:
    """The ``(2^m, dim)`` sign vectors that flip every subset of the ``m`` coordinates ``axes``
    (the first row is all ones). Raises a ValueError naming ``name`` unless ``axes`` are
    distinct integers in ``[0, dim)``."""
    if not isinstance(axes, (tuple, list)):
        raise ValueError(f"`{name}` must be a tuple of coordinates, got {axes!r}")
    axes = tuple(axes)
    if (not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes)
            or len(set(axes)) != len(axes) or not all(0 <= a < dim for a in axes)):
        raise ValueError(f"`{name}` must be distinct coordinates in [0, {dim}), got {axes!r}")
    patterns = np.ones((2 ** len(axes), dim))
    for row in range(patterns.shape[0]):
        for bit, axis in enumerate(axes):
            if row >> bit & 1:
                patterns[row, axis] = -1.0
    return patterns


def random_sign_flips(key: PRNGKeyArray, samples: Float[Array, "n dim"], axes: tuple[int, ...]) -> Array:
    """``samples`` with the sign of each coordinate in ``axes`` flipped by an independent fair
    coin per draw: draws of :math:`q` become draws of its flip average :math:`\\bar q`
    (see :func:`sign_symmetrize`)."""
    if not axes:
        return samples
    signs = jnp.where(jax.random.bernoulli(key, 0.5, (samples.shape[0], len(axes))), -1.0, 1.0)
    return samples.at[:, list(axes)].multiply(signs.astype(samples.dtype))


def flip_averaged_log_prob(log_prob, x: Array, flips: Array) -> Array:
    """:math:`\\log \\frac{1}{|G|}\\sum_{D\\in G} \\exp \\text{log\\_prob}(D x)` for the sign
    patterns ``flips`` (``(|G|, dim)``, from :func:`sign_patterns`): the log density of the
    flip average of any density."""
    per_flip = jax.vmap(lambda d: log_prob(x * d))(flips)
    return jax.scipy.special.logsumexp(per_flip, axis=0) - math.log(flips.shape[0])


def sign_symmetrize(mixture: GaussianMixture, axes: tuple[int, ...]) -> GaussianMixture:
    """The mixture averaged over sign flips of the coordinates ``axes``.

    For the group :math:`G` of the :math:`2^m` diagonal sign matrices :math:`D` that flip
    any subset of the :math:`m` coordinates in ``axes``,

    .. math::
        \\bar q(\\theta) = \\frac{1}{|G|}\\sum_{D\\in G} q(D\\theta)
        = \\sum_{D\\in G}\\sum_k \\frac{w_k}{|G|}\\,\\mathcal N(\\theta; D m_k, (D L_k D)(D L_k D)^\\top),

    a mixture of :math:`2^m K` components (:math:`D L_k D` is again lower triangular with
    the same positive diagonal) that is exactly invariant under every flip in :math:`G`.
    Components are ordered sign pattern by sign pattern (the first :math:`K` are
    ``mixture`` itself). Works on unbatched mixtures; :func:`jax.vmap` it for batches.

    Args:
        mixture: the mixture :math:`q` (``(K,)`` log-weights).
        axes: distinct coordinates in ``[0, dim)``; ``()`` returns ``mixture``.
    """
    if not axes:
        return mixture
    if mixture.log_weights.ndim != 1:
        raise ValueError("`mixture` must be a single mixture (vmap over batches)")
    signs = jnp.asarray(sign_patterns(mixture.dim, axes), mixture.means.dtype)  # (|G|, dim)
    means = signs[:, None, :] * mixture.means[None]
    tril = signs[:, None, :, None] * mixture.scale_tril[None] * signs[:, None, None, :]
    log_weights = jnp.broadcast_to(mixture.log_weights, (signs.shape[0],) + mixture.log_weights.shape)
    return GaussianMixture(
        (log_weights - math.log(signs.shape[0])).reshape(-1),
        means.reshape(-1, mixture.dim),
        tril.reshape(-1, mixture.dim, mixture.dim),
    )


def condition_linear_gaussian(
    prior: GaussianMixture,
    observations: Float[Array, "n obs_dim"],
    design: Float[Array, "obs_dim dim"],
    noise_covariance: Float[Array, "obs_dim obs_dim"],
    offset: Float[Array, " obs_dim"] | None = None,
    mask: Bool[Array, " n"] | None = None,
) -> tuple[GaussianMixture, Float[Array, ""]]:
    """Exact posterior of a mixture prior under :math:`y_j \\mid \\theta \\sim \\mathcal N(A\\theta + b, R)`.

    For each component (information form, with :math:`n` the number of unmasked
    observations)

    .. math::
        P_k' = \\Sigma_k^{-1} + n A^\\top R^{-1} A,\\qquad
        m_k' = P_k'^{-1}\\Big(\\Sigma_k^{-1} m_k + A^\\top R^{-1} \\sum_j (y_j - b)\\Big),

    and the component evidence follows from Bayes' rule evaluated at :math:`m_k'`,

    .. math::
        \\log Z_k = \\log\\mathcal N(m_k'; m_k, \\Sigma_k)
            + \\sum_j \\log \\mathcal N(y_j; A m_k' + b, R) - \\log \\mathcal N(m_k'; m_k', \\Sigma_k'),

    so the posterior weights are :math:`w_k' \\propto w_k Z_k` and the log evidence is
    :math:`\\log \\sum_k w_k Z_k`.

    Args:
        prior: the mixture prior over :math:`\\theta` (``dim``).
        observations: ``(n, obs_dim)`` i.i.d. observations (a single ``(obs_dim,)`` vector is
            accepted as ``n = 1``).
        design: :math:`A`, ``(obs_dim, dim)``.
        noise_covariance: :math:`R`, ``(obs_dim, obs_dim)``, positive definite.
        offset: :math:`b`, ``(obs_dim,)`` (default zero).
        mask: ``(n,)`` booleans; ``False`` rows are ignored (padding).

    Returns:
        ``(posterior, log_evidence)``.

    Raises:
        ValueError: an empty dataset, shapes that disagree, or a noise covariance that is
            not positive definite. TypeError: a prior that is not a mixture.
    """
    observations, design, noise_covariance, offset, mask = _check_linear_gaussian(
        prior, observations, design, noise_covariance, offset, mask
    )
    return _condition(prior, observations, design, noise_covariance, offset, mask)


@eqx.filter_jit
def _condition(prior, observations, design, noise_covariance, offset, mask):
    dtype = prior.means.dtype
    dim = prior.dim
    weight = mask.astype(dtype)
    noise_tril = cholesky(noise_covariance)
    white_design = solve_triangular(noise_tril, design)  # R^{-1/2} A
    white_obs = solve_triangular(noise_tril, (observations - offset).T).T
    count = jnp.sum(weight)
    info_lik = count * white_design.T @ white_design
    shift_lik = white_design.T @ jnp.sum(weight[:, None] * white_obs, axis=0)
    eye = jnp.eye(dim, dtype=dtype)

    noise_log_det = jnp.sum(jnp.log(jnp.diagonal(noise_tril)))
    obs_dim = design.shape[0]

    def one(mean, tril):
        tril_inv = solve_triangular(tril, eye)
        prior_precision = tril_inv.T @ tril_inv
        precision = prior_precision + info_lik
        precision = 0.5 * (precision + precision.T)
        precision_tril = cholesky(precision)
        post_mean = cho_solve(precision_tril, prior_precision @ mean + shift_lik)
        post_cov = cho_solve(precision_tril, eye)
        post_tril = cholesky(0.5 * (post_cov + post_cov.T))
        # log N(m'; m, S) - log N(m'; m', S') = -0.5 |L^{-1}(m'-m)|^2 - log|L| + log|L'|
        #   with log|L'| = -log|chol(P')|
        prior_term = -0.5 * jnp.sum((tril_inv @ (post_mean - mean)) ** 2) - jnp.sum(
            jnp.log(jnp.diagonal(tril))
        )
        post_term = jnp.sum(jnp.log(jnp.diagonal(precision_tril)))
        residual = white_obs - white_design @ post_mean
        lik_term = jnp.sum(weight * (-0.5 * jnp.sum(residual**2, axis=-1))) - count * (
            noise_log_det + 0.5 * obs_dim * _LOG_2PI
        )
        return post_mean, post_tril, prior_term - post_term + lik_term

    means, trils, log_z = jax.vmap(one)(prior.means, prior.scale_tril)
    valid = prior.component_mask
    trils = jnp.where(valid[:, None, None], trils, eye)
    means = jnp.where(valid[:, None], means, 0.0)
    joint = jnp.where(valid, prior.log_weights + log_z, -jnp.inf)
    log_evidence = jax.nn.logsumexp(joint)
    return GaussianMixture(joint - log_evidence, means, trils), log_evidence


def monte_carlo_kl(key: PRNGKeyArray, p, q, num_samples: int = 10_000) -> Float[Array, ""]:
    """Monte Carlo estimate of :math:`\\mathrm{KL}(p \\,\\|\\, q) = \\mathbb E_p[\\log p - \\log q]`.

    ``p`` needs ``sample(key, n)`` and ``log_prob``; ``q`` needs ``log_prob``. The
    estimate is unbiased with standard error ``std(log p - log q) / sqrt(num_samples)``.
    """
    num_samples = check_num_samples(num_samples, "num_samples")
    for name, dist in (("p", p), ("q", q)):
        if not hasattr(dist, "log_prob"):
            raise TypeError(f"`{name}` must provide log_prob, got {type(dist).__name__}")
    if not hasattr(p, "sample"):
        raise TypeError(f"`p` must provide sample(key, n), got {type(p).__name__}")
    return _monte_carlo_kl(key, p, q, num_samples)


@eqx.filter_jit
def _monte_carlo_kl(key, p, q, num_samples: int):
    z = p.sample(key, num_samples)
    return jnp.mean(p.log_prob(z) - q.log_prob(z))

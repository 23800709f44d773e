"""Mixture prior, linear-Gaussian likelihood: the task whose posterior is known exactly."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from amortized.gmm import GaussianMixture, _cholesky_or_raise, condition_linear_gaussian
from amortized.tasks.base import Task, observation_mask, random_mixture_prior
from probinf.linalg import cholesky

__all__ = ["ConjugateGaussian"]


class ConjugateGaussian(Task):
    """:math:`\\theta \\sim \\sum_k w_k \\mathcal N(m_k, \\Sigma_k)`, :math:`y_j \\mid \\theta \\sim \\mathcal N(A\\theta + b, R)`.

    Priors come from :func:`~amortized.tasks.random_mixture_prior`; the exact posterior
    is the mixture of :func:`~amortized.gmm.condition_linear_gaussian`.

    Args:
        dim: length of :math:`\\theta`.
        design: :math:`A`, ``(obs_dim, dim)`` (default: the identity, ``obs_dim = dim``).
        noise_covariance: :math:`R` (default: the identity).
        offset: :math:`b` (default: zero).
        max_components: most prior components (priors have 1 to this many).
        num_observations: ``(low, high)`` number of observations per dataset.
        mean_scale: spread of the prior means in the meta-prior (see
            :func:`~amortized.tasks.random_mixture_prior`).
        scale_range: range of the prior components' standard deviations.
        correlation: strength of the prior components' correlations.
    """

    name: ClassVar[str] = "conjugate_gaussian"
    design: Float[Array, "obs_dim dim"]
    noise_covariance: Float[Array, "obs_dim obs_dim"]
    offset: Float[Array, " obs_dim"]
    components: int = eqx.field(static=True)
    num_observations: tuple[int, int] = eqx.field(static=True)
    mean_scale: float = eqx.field(static=True)
    scale_range: tuple[float, float] = eqx.field(static=True)
    correlation: float = eqx.field(static=True)

    def __init__(
        self,
        dim: int = 1,
        *,
        design: object = None,
        noise_covariance: object = None,
        offset: object = None,
        max_components: int = 2,
        num_observations: tuple[int, int] = (1, 10),
        mean_scale: float = 2.0,
        scale_range: tuple[float, float] = (0.3, 2.0),
        correlation: float = 0.5,
    ):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"`dim` must be a positive integer, got {dim!r}")
        design = np.eye(dim) if design is None else np.asarray(design, np.float64)
        if design.ndim != 2 or design.shape[1] != dim:
            raise ValueError(f"`design` must have shape (obs_dim, {dim}), got {design.shape}")
        obs_dim = design.shape[0]
        noise = np.eye(obs_dim) if noise_covariance is None else np.asarray(noise_covariance, np.float64)
        if noise.shape != (obs_dim, obs_dim):
            raise ValueError(f"`noise_covariance` must have shape ({obs_dim}, {obs_dim}), got {noise.shape}")
        _cholesky_or_raise(noise, "noise_covariance")
        offset = np.zeros(obs_dim) if offset is None else np.asarray(offset, np.float64)
        if offset.shape != (obs_dim,):
            raise ValueError(f"`offset` must have shape ({obs_dim},), got {offset.shape}")
        low, high = num_observations
        if not (1 <= low <= high):
            raise ValueError(f"`num_observations` must be (low, high) with 1 <= low <= high, got {num_observations}")
        if max_components < 1:
            raise ValueError(f"`max_components` must be at least 1, got {max_components}")
        dtype = jnp.result_type(float)
        self.design = jnp.asarray(design, dtype)
        self.noise_covariance = jnp.asarray(noise, dtype)
        self.offset = jnp.asarray(offset, dtype)
        self.components = int(max_components)
        self.num_observations = (int(low), int(high))
        self.mean_scale = float(mean_scale)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.correlation = float(correlation)

    @property
    def dim(self) -> int:
        return self.design.shape[1]

    @property
    def obs_dim(self) -> int:
        return self.design.shape[0]

    @property
    def max_observations(self) -> int:
        return self.num_observations[1]

    @property
    def max_components(self) -> int:
        return self.components

    def sample_prior(self, key) -> GaussianMixture:
        return random_mixture_prior(
            key, self.dim, self.components, mean_scale=self.mean_scale,
            scale_range=self.scale_range, correlation=self.correlation,
        )

    def sample_theta(self, key, prior: GaussianMixture) -> Array:
        return prior.sample(key, 1)[0]

    def simulate_data(self, key, theta: Array) -> tuple[Array, Array]:
        k_noise, k_mask = jax.random.split(key)
        noise_tril = cholesky(self.noise_covariance)
        eps = jax.random.normal(k_noise, (self.max_observations, self.obs_dim))
        observations = self.design @ theta + self.offset + eps @ noise_tril.T
        mask = observation_mask(k_mask, self.num_observations)
        return jnp.where(mask[:, None], observations, 0.0), mask

    def exact_posterior(self, prior: GaussianMixture, observations: Array, mask: Array | None = None) -> GaussianMixture:
        """The exact posterior mixture (:func:`~amortized.gmm.condition_linear_gaussian`)."""
        return condition_linear_gaussian(
            prior, observations, self.design, self.noise_covariance, self.offset, mask
        )[0]

    def numpyro_model(self, prior: GaussianMixture, observations: Array, mask: Array):
        import numpyro
        import numpyro.distributions as dist

        theta = numpyro.sample("theta", _numpyro_mixture(prior))
        mean = self.design @ theta + self.offset
        with numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.MultivariateNormal(mean, self.noise_covariance).expand([observations.shape[0]]),
                           obs=observations)


def _numpyro_mixture(prior: GaussianMixture):
    import numpyro.distributions as dist

    # Padding components (log-weight -inf) get a finite, negligible logit: numpyro validates logits.
    logits = jnp.where(prior.component_mask, prior.log_weights, -1e10)
    return dist.MixtureSameFamily(
        dist.Categorical(logits=logits),
        dist.MultivariateNormal(prior.means, scale_tril=prior.scale_tril),
    )

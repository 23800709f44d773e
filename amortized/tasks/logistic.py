"""Bayesian logistic regression with mixture priors over the weights."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from amortized.gmm import GaussianMixture
from amortized.tasks.base import Task, observation_mask, random_mixture_prior
from amortized.tasks.conjugate import _numpyro_mixture

__all__ = ["LogisticRegression"]


class LogisticRegression(Task):
    """:math:`w \\sim \\sum_k \\pi_k \\mathcal N(m_k, \\Sigma_k)`, :math:`y_j \\sim \\mathrm{Bernoulli}(\\sigma(x_j^\\top w))`.

    Covariates are :math:`x_j \\sim \\mathcal N(0, I)`; each observation token is
    :math:`(x_j, y_j)` of length ``dim + 1``. There is no closed-form posterior: the
    reference is NUTS on :meth:`numpyro_model` (or, in two dimensions, quadrature).

    Args:
        dim: number of weights.
        max_components: most prior components.
        num_observations: ``(low, high)`` observations per dataset.
        mean_scale: spread of the prior means in the meta-prior
            (:func:`~amortized.tasks.random_mixture_prior`).
        scale_range: range of the prior components' standard deviations.
    """

    name: ClassVar[str] = "logistic_regression"
    weights_dim: int = eqx.field(static=True)
    components: int = eqx.field(static=True)
    num_observations: tuple[int, int] = eqx.field(static=True)
    mean_scale: float = eqx.field(static=True)
    scale_range: tuple[float, float] = eqx.field(static=True)

    def __init__(
        self,
        dim: int = 2,
        *,
        max_components: int = 2,
        num_observations: tuple[int, int] = (5, 20),
        mean_scale: float = 1.0,
        scale_range: tuple[float, float] = (0.5, 2.0),
    ):
        low, high = num_observations
        if not (1 <= low <= high):
            raise ValueError(f"`num_observations` must be (low, high) with 1 <= low <= high, got {num_observations}")
        if dim < 1 or max_components < 1:
            raise ValueError(f"`dim` and `max_components` must be positive, got {dim}, {max_components}")
        self.weights_dim = int(dim)
        self.components = int(max_components)
        self.num_observations = (int(low), int(high))
        self.mean_scale = float(mean_scale)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    @property
    def dim(self) -> int:
        return self.weights_dim

    @property
    def obs_dim(self) -> int:
        return self.weights_dim + 1

    @property
    def max_observations(self) -> int:
        return self.num_observations[1]

    @property
    def max_components(self) -> int:
        return self.components

    def sample_prior(self, key) -> GaussianMixture:
        return random_mixture_prior(
            key, self.dim, self.components, mean_scale=self.mean_scale, scale_range=self.scale_range
        )

    def sample_theta(self, key, prior: GaussianMixture) -> Array:
        return prior.sample(key, 1)[0]

    def simulate_data(self, key, theta: Array) -> tuple[Array, Array]:
        k_x, k_y, k_mask = jax.random.split(key, 3)
        covariates = jax.random.normal(k_x, (self.max_observations, self.dim))
        labels = jax.random.bernoulli(k_y, jax.nn.sigmoid(covariates @ theta)).astype(covariates.dtype)
        mask = observation_mask(k_mask, self.num_observations)
        observations = jnp.concatenate([covariates, labels[:, None]], axis=-1)
        return jnp.where(mask[:, None], observations, 0.0), mask

    def log_likelihood(self, theta: Array, observations: Array, mask: Array) -> Array:
        """:math:`\\sum_j y_j \\log\\sigma(x_j^\\top w) + (1-y_j)\\log(1-\\sigma(x_j^\\top w))` over real rows."""
        covariates, labels = observations[..., :-1], observations[..., -1]
        logits = covariates @ theta
        per_point = labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(-logits)
        return jnp.sum(jnp.where(mask, per_point, 0.0))

    def numpyro_model(self, prior: GaussianMixture, observations: Array, mask: Array):
        import numpyro

        theta = numpyro.sample("theta", _numpyro_mixture(prior))
        numpyro.factor("likelihood", self.log_likelihood(theta, observations, mask))

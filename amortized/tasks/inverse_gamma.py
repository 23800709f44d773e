"""Unknown variance with an inverse-gamma prior: a parametric prior with an exact posterior."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, Float

from amortized.tasks.base import Task, observation_mask
from probinf.families import check_num_samples

__all__ = ["InverseGammaVariance", "LogInverseGamma"]


class LogInverseGamma(eqx.Module):
    """The law of :math:`v = \\log \\sigma^2` when :math:`\\sigma^2 \\sim \\mathrm{InvGamma}(\\alpha, \\beta)`.

    .. math::
        \\log p(v) = \\alpha \\log\\beta - \\log\\Gamma(\\alpha) - \\alpha v - \\beta e^{-v}.
    """

    concentration: Float[Array, ""]
    rate: Float[Array, ""]

    @property
    def dim(self) -> int:
        return 1

    def log_prob(self, v: Float[Array, "... 1"]) -> Float[Array, "..."]:
        v = jnp.asarray(v)[..., 0]
        a, b = self.concentration, self.rate
        return a * jnp.log(b) - gammaln(a) - a * v - b * jnp.exp(-v)

    def sample(self, key, n: int) -> Float[Array, "n 1"]:
        n = check_num_samples(n)
        gamma = jax.random.gamma(key, self.concentration, (n,))
        return (jnp.log(self.rate) - jnp.log(gamma))[:, None]


class InverseGammaVariance(Task):
    """:math:`\\sigma^2 \\sim \\mathrm{InvGamma}(\\alpha, \\beta)`, :math:`y_j \\mid \\sigma^2 \\sim \\mathcal N(\\mu, \\sigma^2)`.

    The parameter seen by the model is :math:`\\theta = \\log\\sigma^2` (mixtures live on
    the real line); the prior is given to the model as :math:`(\\log\\alpha, \\log\\beta)`.
    The meta-prior draws :math:`\\log\\alpha` and :math:`\\log\\beta` uniformly from the
    logs of ``concentration_range`` and ``rate_range``. The exact posterior is
    :math:`\\mathrm{InvGamma}(\\alpha + n/2,\\; \\beta + \\tfrac12\\sum_j (y_j-\\mu)^2)`.

    Args:
        num_observations: ``(low, high)`` observations per dataset.
        concentration_range: range of :math:`\\alpha`.
        rate_range: range of :math:`\\beta`.
        mean: the known mean :math:`\\mu`.
        num_components: mixture size of the model's posterior.
    """

    name: ClassVar[str] = "inverse_gamma_variance"
    num_observations: tuple[int, int] = eqx.field(static=True)
    concentration_range: tuple[float, float] = eqx.field(static=True)
    rate_range: tuple[float, float] = eqx.field(static=True)
    known_mean: float = eqx.field(static=True)
    components: int = eqx.field(static=True)

    def __init__(
        self,
        *,
        num_observations: tuple[int, int] = (1, 20),
        concentration_range: tuple[float, float] = (1.5, 8.0),
        rate_range: tuple[float, float] = (0.5, 8.0),
        mean: float = 0.0,
        num_components: int = 3,
    ):
        low, high = num_observations
        if not (1 <= low <= high):
            raise ValueError(f"`num_observations` must be (low, high) with 1 <= low <= high, got {num_observations}")
        for name, (lo, hi) in (("concentration_range", concentration_range), ("rate_range", rate_range)):
            if not (0 < lo <= hi):
                raise ValueError(f"`{name}` must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        self.num_observations = (int(low), int(high))
        self.concentration_range = (float(concentration_range[0]), float(concentration_range[1]))
        self.rate_range = (float(rate_range[0]), float(rate_range[1]))
        self.known_mean = float(mean)
        self.components = int(num_components)

    @property
    def dim(self) -> int:
        return 1

    @property
    def obs_dim(self) -> int:
        return 1

    @property
    def max_observations(self) -> int:
        return self.num_observations[1]

    @property
    def prior_param_dim(self) -> int:
        return 2

    @property
    def num_posterior_components(self) -> int:
        return self.components

    def sample_prior(self, key) -> Array:
        low = jnp.log(jnp.array([self.concentration_range[0], self.rate_range[0]]))
        high = jnp.log(jnp.array([self.concentration_range[1], self.rate_range[1]]))
        return jax.random.uniform(key, (2,), minval=low, maxval=high)

    def prior_distribution(self, prior_params: Array) -> LogInverseGamma:
        """The prior over :math:`\\log\\sigma^2` for ``prior_params = (log alpha, log beta)``."""
        return LogInverseGamma(jnp.exp(prior_params[0]), jnp.exp(prior_params[1]))

    def sample_theta(self, key, prior: Array) -> Array:
        return self.prior_distribution(prior).sample(key, 1)[0]

    def simulate_data(self, key, theta: Array) -> tuple[Array, Array]:
        k_noise, k_mask = jax.random.split(key)
        scale = jnp.exp(0.5 * theta[0])
        observations = self.known_mean + scale * jax.random.normal(k_noise, (self.max_observations, 1))
        mask = observation_mask(k_mask, self.num_observations)
        return jnp.where(mask[:, None], observations, 0.0), mask

    def numpyro_model(self, prior: Array, observations: Array, mask: Array):
        import numpyro
        import numpyro.distributions as dist

        prior_dist = self.prior_distribution(prior)
        log_variance = dist.TransformedDistribution(
            dist.InverseGamma(prior_dist.concentration, prior_dist.rate), dist.transforms.ExpTransform().inv
        )
        theta = numpyro.sample("theta", log_variance.expand([1]).to_event(1))
        with numpyro.handlers.mask(mask=mask):
            numpyro.sample("y", dist.Normal(self.known_mean, jnp.exp(0.5 * theta[0])).expand([observations.shape[0]]),
                           obs=observations[:, 0])

    def exact_posterior(self, prior: Array, observations: Array, mask: Array | None = None) -> LogInverseGamma:
        """The exact posterior over :math:`\\log\\sigma^2` (a :class:`LogInverseGamma`)."""
        observations = jnp.asarray(observations).reshape(-1)
        mask = jnp.ones(observations.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
        count = jnp.sum(mask)
        squares = jnp.sum(jnp.where(mask, (observations - self.known_mean) ** 2, 0.0))
        prior_dist = self.prior_distribution(jnp.asarray(prior))
        return LogInverseGamma(prior_dist.concentration + 0.5 * count, prior_dist.rate + 0.5 * squares)

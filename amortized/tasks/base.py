"""What every simulation task provides, and the pieces they share.

A task is an :class:`equinox.Module` (so it can be traced into a training step) that
draws *(prior, parameter, data)* triples:

1. a prior — a :class:`~amortized.gmm.GaussianMixture` padded to ``max_components``
   (mixture-prior tasks) or a parameter vector of length ``prior_param_dim``
   (parametric-prior tasks);
2. a parameter :math:`\\theta \\sim` prior, a ``(dim,)`` vector in the space where the
   posterior mixture lives (e.g. a log-variance);
3. a dataset of up to ``max_observations`` tokens of length ``obs_dim``, with a mask
   marking the real ones (the number of observations may vary).

:meth:`Task.simulate` batches these; :func:`amortized.train` consumes it.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized.gmm import GaussianMixture
from probinf.families import check_num_samples

__all__ = [
    "SimulationBatch",
    "Task",
    "random_mixture_prior",
    "observation_mask",
    "nuts_posterior_samples",
]


class SimulationBatch(eqx.Module):
    """A batch of simulated triples (leading axis ``batch`` on every array).

    Attributes:
        prior: batched :class:`~amortized.gmm.GaussianMixture` or ``(batch, prior_param_dim)``.
        theta: ``(batch, dim)`` parameters drawn from their priors.
        observations: ``(batch, max_observations, obs_dim)`` data (padding rows are zero).
        mask: ``(batch, max_observations)`` booleans marking real observations.
    """

    prior: GaussianMixture | Float[Array, "batch p"]
    theta: Float[Array, "batch dim"]
    observations: Float[Array, "batch n obs_dim"]
    mask: Bool[Array, "batch n"]


def observation_mask(key: PRNGKeyArray, num_observations: tuple[int, int]) -> Bool[Array, " n"]:
    """A mask with a uniformly drawn number of leading ``True`` in ``[low, high]``."""
    low, high = num_observations
    count = jax.random.randint(key, (), low, high + 1)
    return jnp.arange(high) < count


def random_mixture_prior(
    key: PRNGKeyArray,
    dim: int,
    max_components: int,
    *,
    min_components: int = 1,
    mean_scale: float = 2.0,
    scale_range: tuple[float, float] = (0.3, 2.0),
    correlation: float = 0.5,
) -> GaussianMixture:
    """A random mixture prior (the *meta-prior* over priors used for training).

    The number of components is uniform in ``[min_components, max_components]`` (the
    rest is padding); weights are uniform on the simplex (Dirichlet(1), drawn as normalised
    exponential variables, which compile far faster than gamma variables); means are
    :math:`\\mathcal N(0, \\text{mean\\_scale}^2 I)`; each Cholesky factor is
    :math:`\\operatorname{diag}(s)(I + \\text{correlation}\\cdot\\operatorname{tril}_{-1}(Z))`
    with :math:`\\log s` uniform on ``log(scale_range)`` and :math:`Z` standard normal.
    """
    k_count, k_w, k_m, k_s, k_z = jax.random.split(key, 5)
    count = jax.random.randint(k_count, (), min_components, max_components + 1)
    active = jnp.arange(max_components) < count
    raw = jax.random.exponential(k_w, (max_components,))
    raw = jnp.where(active, raw, 0.0)
    log_weights = jnp.where(active, jnp.log(raw) - jnp.log(jnp.sum(raw)), -jnp.inf)
    means = mean_scale * jax.random.normal(k_m, (max_components, dim))
    low, high = np.log(scale_range[0]), np.log(scale_range[1])
    scales = jnp.exp(jax.random.uniform(k_s, (max_components, dim), minval=low, maxval=high))
    lower = correlation * jnp.tril(jax.random.normal(k_z, (max_components, dim, dim)), -1)
    tril = scales[:, :, None] * (jnp.eye(dim) + lower)
    tril = jnp.where(active[:, None, None], tril, jnp.eye(dim))
    means = jnp.where(active[:, None], means, 0.0)
    return GaussianMixture(log_weights, means, tril)


class Task(eqx.Module):
    """Base class of simulation tasks (see the module docstring).

    Subclasses set ``dim``, ``obs_dim``, ``max_observations`` and either
    ``max_components`` (mixture priors) or ``prior_param_dim`` (parametric priors), and
    implement :meth:`sample_prior`, :meth:`sample_theta` and :meth:`simulate_data`.
    """

    name: ClassVar[str] = "task"

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Length of :math:`\\theta`."""

    @property
    @abc.abstractmethod
    def obs_dim(self) -> int:
        """Length of one observation token."""

    @property
    @abc.abstractmethod
    def max_observations(self) -> int:
        """Padded number of observation tokens per dataset."""

    @property
    def prior_param_dim(self) -> int | None:
        """Length of a parametric prior's vector, ``None`` for mixture priors."""
        return None

    @property
    def max_components(self) -> int | None:
        """Padded number of prior components (mixture priors)."""
        return None

    @abc.abstractmethod
    def sample_prior(self, key: PRNGKeyArray):
        """One prior from the task's meta-prior (a mixture or a parameter vector)."""

    @abc.abstractmethod
    def sample_theta(self, key: PRNGKeyArray, prior) -> Float[Array, " dim"]:
        """One draw :math:`\\theta \\sim` ``prior``."""

    @abc.abstractmethod
    def simulate_data(self, key: PRNGKeyArray, theta: Array) -> tuple[Array, Array]:
        """One dataset ``(observations (max_observations, obs_dim), mask (max_observations,))``."""

    def simulate(self, key: PRNGKeyArray, batch_size: int) -> SimulationBatch:
        """``batch_size`` independent (prior, parameter, data) triples (compiled)."""
        return _simulate(self, key, check_num_samples(batch_size, "batch_size"))

    def model_options(self) -> dict:
        """The arguments a :class:`~amortized.DistributionTransformer` needs for this task.

        The shapes, plus ``symmetric_axes`` when the task declares sign symmetries of its
        posterior (drop that key to train a model that has to learn them).
        """
        options = {"dim": self.dim, "obs_dim": self.obs_dim}
        if self.prior_param_dim is not None:
            options.update(prior_param_dim=self.prior_param_dim, num_components=self.num_posterior_components)
        if self.symmetric_axes:
            options["symmetric_axes"] = self.symmetric_axes
        return options

    @property
    def num_posterior_components(self) -> int | None:
        """Mixture size of the posterior for parametric priors (``None`` otherwise)."""
        return None

    @property
    def symmetric_axes(self) -> tuple[int, ...]:
        """Coordinates of :math:`\\theta` whose sign the posterior cannot depend on (the
        likelihood sees only their absolute values and the prior is symmetric in them)."""
        return ()

    def numpyro_model(self, prior, observations: Array, mask: Array):
        """A numpyro model of prior and likelihood (for NUTS references); optional."""
        raise NotImplementedError(f"{type(self).__name__} has no numpyro model")


@eqx.filter_jit
def _simulate(task: Task, key: PRNGKeyArray, batch_size: int) -> SimulationBatch:
    def one(k):
        k_prior, k_theta, k_data = jax.random.split(k, 3)
        prior = task.sample_prior(k_prior)
        theta = task.sample_theta(k_theta, prior)
        observations, mask = task.simulate_data(k_data, theta)
        return SimulationBatch(prior, theta, observations, mask)

    return jax.vmap(one)(jax.random.split(key, batch_size))


def nuts_posterior_samples(
    key: PRNGKeyArray,
    task: Task,
    prior,
    observations: Array,
    mask: Array | None = None,
    *,
    num_samples: int = 2000,
    num_warmup: int = 1000,
    num_chains: int = 1,
    progress: bool = False,
) -> Float[Array, "num_samples dim"]:
    """Reference posterior draws by NUTS (numpyro) on ``task.numpyro_model``.

    Chains run one after another (``chain_method="sequential"``); the draws of all
    chains are pooled, ``(num_chains * num_samples, dim)``.
    """
    from numpyro.infer import MCMC, NUTS

    observations = jnp.asarray(observations)
    mask = jnp.ones(observations.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
    mcmc = MCMC(
        NUTS(task.numpyro_model),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=progress,
    )
    mcmc.run(key, prior, observations, mask)
    return mcmc.get_samples()["theta"].reshape(-1, task.dim)

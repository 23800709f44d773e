"""A linear-Gaussian state-space model: sequential inference checked against a Kalman filter.

.. math::
    x_1 \\sim \\pi_1,\\qquad x_{t+1} = F x_t + \\eta_t,\\; \\eta_t \\sim \\mathcal N(0, Q),\\qquad
    y_t = H x_t + \\varepsilon_t,\\; \\varepsilon_t \\sim \\mathcal N(0, R).

Filtering alternates an exact *prediction* (a mixture stays a mixture under
:meth:`~amortized.gmm.GaussianMixture.affine`) with an *update* by any map
``(prior mixture, observations, mask) -> posterior mixture``: the exact conjugate update,
or a Distribution Transformer trained on :meth:`LinearGaussianStateSpace.update_task`.
Each filtered posterior is fed back as the next prior.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from amortized.gmm import GaussianMixture, _cholesky_or_raise, _condition
from amortized.tasks.conjugate import ConjugateGaussian
from probinf.linalg import cho_solve, cholesky, solve_triangular

__all__ = ["LinearGaussianStateSpace", "kalman_filter"]


def kalman_filter(
    initial_mean: Float[Array, " d"],
    initial_covariance: Float[Array, "d d"],
    transition: Float[Array, "d d"],
    transition_noise: Float[Array, "d d"],
    observation_matrix: Float[Array, "p d"],
    observation_noise: Float[Array, "p p"],
    observations: Float[Array, "T p"],
) -> tuple[Float[Array, "T d"], Float[Array, "T d d"], Float[Array, ""]]:
    """The Kalman filter (Kalman, 1960): filtered means, covariances and the log likelihood.

    Step :math:`t` updates the prediction :math:`(m^-_t, P^-_t)` with :math:`y_t`:

    .. math::
        S = H P^- H^\\top + R,\\; K = P^- H^\\top S^{-1},\\;
        m_t = m^- + K(y_t - H m^-),\\; P_t = (I - KH) P^- (I - KH)^\\top + K R K^\\top,

    then predicts :math:`m^-_{t+1} = F m_t`, :math:`P^-_{t+1} = F P_t F^\\top + Q`. The first
    prediction is the initial distribution of :math:`x_1`. Runs under ``lax.scan``.
    """
    eye = jnp.eye(initial_mean.shape[0], dtype=initial_mean.dtype)

    def step(carry, y):
        mean, cov, log_lik = carry
        innovation_cov = observation_matrix @ cov @ observation_matrix.T + observation_noise
        chol = cholesky(innovation_cov)
        gain = cho_solve(chol, observation_matrix @ cov).T
        residual = y - observation_matrix @ mean
        white = solve_triangular(chol, residual)
        log_lik = log_lik - 0.5 * jnp.sum(white**2) - jnp.sum(jnp.log(jnp.diagonal(chol))) - 0.5 * y.shape[0] * jnp.log(2 * jnp.pi)
        filt_mean = mean + gain @ residual
        joseph = eye - gain @ observation_matrix
        filt_cov = joseph @ cov @ joseph.T + gain @ observation_noise @ gain.T
        next_mean = transition @ filt_mean
        next_cov = transition @ filt_cov @ transition.T + transition_noise
        return (next_mean, next_cov, log_lik), (filt_mean, filt_cov)

    init = (initial_mean, initial_covariance, jnp.zeros((), initial_mean.dtype))
    (_, _, log_lik), (means, covs) = jax.lax.scan(step, init, observations)
    return means, covs, log_lik


class LinearGaussianStateSpace(eqx.Module):
    """The model of the module docstring, with its simulator and filters.

    Args:
        transition: :math:`F`, ``(d, d)``.
        transition_noise: :math:`Q`, ``(d, d)`` positive definite.
        observation_matrix: :math:`H`, ``(p, d)``.
        observation_noise: :math:`R`, ``(p, p)`` positive definite.
    """

    transition: Float[Array, "d d"]
    transition_noise: Float[Array, "d d"]
    observation_matrix: Float[Array, "p d"]
    observation_noise: Float[Array, "p p"]

    def __init__(self, transition, transition_noise, observation_matrix, observation_noise):
        f = np.asarray(transition, np.float64)
        if f.ndim != 2 or f.shape[0] != f.shape[1]:
            raise ValueError(f"`transition` must be square, got shape {f.shape}")
        d = f.shape[0]
        q = np.asarray(transition_noise, np.float64)
        if q.shape != (d, d):
            raise ValueError(f"`transition_noise` must have shape ({d}, {d}), got {q.shape}")
        _cholesky_or_raise(q, "transition_noise")
        h = np.asarray(observation_matrix, np.float64)
        if h.ndim != 2 or h.shape[1] != d:
            raise ValueError(f"`observation_matrix` must have shape (p, {d}), got {h.shape}")
        r = np.asarray(observation_noise, np.float64)
        if r.shape != (h.shape[0], h.shape[0]):
            raise ValueError(f"`observation_noise` must have shape {(h.shape[0], h.shape[0])}, got {r.shape}")
        _cholesky_or_raise(r, "observation_noise")
        dtype = jnp.result_type(float)
        self.transition = jnp.asarray(f, dtype)
        self.transition_noise = jnp.asarray(q, dtype)
        self.observation_matrix = jnp.asarray(h, dtype)
        self.observation_noise = jnp.asarray(r, dtype)

    @property
    def state_dim(self) -> int:
        return self.transition.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.observation_matrix.shape[0]

    def simulate(self, key, initial: GaussianMixture, num_steps: int) -> tuple[Array, Array]:
        """States ``(T, d)`` and observations ``(T, p)`` with :math:`x_1 \\sim` ``initial``."""
        k0, k_rest = jax.random.split(key)
        x1 = initial.sample(k0, 1)[0]
        q_tril = cholesky(self.transition_noise)
        r_tril = cholesky(self.observation_noise)

        def step(x, k):
            k_obs, k_next = jax.random.split(k)
            y = self.observation_matrix @ x + r_tril @ jax.random.normal(k_obs, (self.obs_dim,))
            x_next = self.transition @ x + q_tril @ jax.random.normal(k_next, (self.state_dim,))
            return x_next, (x, y)

        _, (states, observations) = jax.lax.scan(step, x1, jax.random.split(k_rest, num_steps))
        return states, observations

    def update_task(self, **options) -> ConjugateGaussian:
        """The single-observation update :math:`y_t \\mid x_t` as a training task.

        ``options`` set the meta-prior over the predicted priors (``max_components``,
        ``mean_scale``, ``scale_range``, ``correlation``); ``num_observations`` is ``(1, 1)``.
        """
        options.setdefault("num_observations", (1, 1))
        return ConjugateGaussian(
            self.state_dim, design=np.asarray(self.observation_matrix),
            noise_covariance=np.asarray(self.observation_noise), **options,
        )

    def exact_update(self, prior: GaussianMixture, observations: Array, mask: Array) -> GaussianMixture:
        """The exact conjugate update (mixture in, mixture out)."""
        offset = jnp.zeros(self.obs_dim, prior.means.dtype)
        return _condition(prior, observations, self.observation_matrix, self.observation_noise, offset, mask)[0]

    def filter(
        self,
        initial: GaussianMixture,
        observations: Float[Array, "T p"],
        update: Callable[[GaussianMixture, Array, Array], GaussianMixture] | None = None,
    ) -> GaussianMixture:
        """Filtered posteriors :math:`p(x_t \\mid y_{1:t})` as a mixture batched over ``T``.

        Args:
            initial: the prior of :math:`x_1`.
            observations: ``(T, p)``.
            update: ``(prior, observations (1, p), mask (1,)) -> posterior``; a trained
                :class:`~amortized.DistributionTransformer`'s ``forward`` (wrapped to
                return the posterior) or ``None`` for the exact update.

        Returns:
            A :class:`~amortized.gmm.GaussianMixture` whose arrays have a leading ``T`` axis.
        """
        observations = jnp.asarray(observations)
        if observations.ndim != 2 or observations.shape[1] != self.obs_dim:
            raise ValueError(f"`observations` must have shape (T, {self.obs_dim}), got {observations.shape}")
        if observations.shape[0] == 0:
            raise ValueError("`observations` is empty: nothing to filter")
        if initial.dim != self.state_dim:
            raise ValueError(f"`initial` must be over dim {self.state_dim}, got dim {initial.dim}")
        update = self.exact_update if update is None else update
        mask = jnp.ones(1, bool)

        def step(prior, y):
            posterior = update(prior, y[None], mask)
            predicted = posterior.affine(self.transition, None, self.transition_noise)
            return predicted, posterior

        _, filtered = jax.lax.scan(step, initial, observations)
        return filtered

r"""Ready-made state-space models.

`LinearGaussianSSM` is the linear-Gaussian state-space model

$$
x_0 \sim \mathcal N(m_0, P_0),\qquad
x_t = F x_{t-1} + \varepsilon_t,\ \varepsilon_t \sim \mathcal N(0, Q),\qquad
y_t = H x_t + \nu_t,\ \nu_t \sim \mathcal N(0, R),
$$

for $t = 0, \dots, T-1$ (an observation at every step, including the first).
It is a `probinf.smc.feynman_kac.StateSpaceModel`, so every particle filter
runs on it, and its exact filter, smoother and evidence come from
`probinf.smc.scans.kalman_filter` and `probinf.smc.scans.rts_smoother`;
that pairing is how the particle methods are tested.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probinf.linalg import cholesky, solve_triangular
from probinf.smc.feynman_kac import StateSpaceModel
from probinf.validation import check_finite, is_traced

__all__ = ["LinearGaussianSSM", "gaussian_log_density"]


def gaussian_log_density(x: Float[Array, "... d"], mean: Float[Array, "... d"], cov) -> Array:
    """$\\log \\mathcal N(x; \\mu, \\Sigma)$ through a Cholesky factor (batched over leading axes)."""
    cov = jnp.asarray(cov)
    chol = cholesky(cov)
    residual = jnp.asarray(x) - mean
    dim = residual.shape[-1]
    # Whitening by the inverse Cholesky factor: a (d, d) triangular solve, then one matmul
    # over all points (XLA's CPU triangular solve with many right-hand sides is slow).
    eye = jnp.broadcast_to(jnp.eye(dim, dtype=chol.dtype), chol.shape)
    inverse_chol = solve_triangular(chol, eye)
    solved = (inverse_chol @ residual[..., None])[..., 0] if cov.ndim > 2 else residual @ inverse_chol.T
    squared = jnp.sum(solved**2, axis=-1)
    half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    return -0.5 * squared - half_logdet - 0.5 * dim * math.log(2 * math.pi)


def _as_matrix(value, shape, name, dtype):
    array = jnp.asarray(value, dtype=dtype)
    if array.shape != shape:
        raise ValueError(f"`{name}` must have shape {shape}, got {tuple(array.shape)}")
    return check_finite(array, name)


def _as_covariance(value, shape, name, dtype):
    """A finite, symmetric positive semi-definite matrix (checked when concrete).

    Semi-definite, not definite: a state known exactly (``initial_cov = 0``) or noise-free
    dynamics (``transition_cov = 0``) are valid models for the Kalman filter.
    """
    array = _as_matrix(value, shape, name, dtype)
    if is_traced(array):
        return array
    matrix = np.asarray(array, np.float64)
    # Rounding of the input's own precision is tolerated, relative to the matrix's scale.
    tolerance = 10 * shape[0] * np.finfo(np.dtype(dtype)).eps * max(np.abs(matrix).max(), 1e-300)
    asymmetry = np.abs(matrix - matrix.T).max()
    if asymmetry > tolerance:
        raise ValueError(f"`{name}` must be a symmetric covariance matrix, got entries that differ "
                         f"from their transposes by up to {asymmetry:.3g}")
    smallest = float(np.linalg.eigvalsh(matrix).min())
    if smallest < -tolerance:
        raise ValueError(f"`{name}` must be a covariance matrix (positive semi-definite), got "
                         f"smallest eigenvalue {smallest:.3g}")
    return array


class LinearGaussianSSM(StateSpaceModel):
    """A time-invariant linear-Gaussian state-space model with its observations.

    Attributes:
        initial_mean: ``(dx,)`` mean $m_0$ of $x_0$.
        initial_cov: ``(dx, dx)`` covariance $P_0$.
        transition_matrix: ``(dx, dx)`` $F$.
        transition_cov: ``(dx, dx)`` $Q$.
        observation_matrix: ``(dy, dx)`` $H$.
        observation_cov: ``(dy, dy)`` $R$.
        observations: ``(T, dy)`` observations $y_{0:T-1}$.
    """

    initial_mean: Float[Array, " dx"]
    initial_cov: Float[Array, "dx dx"]
    transition_matrix: Float[Array, "dx dx"]
    transition_cov: Float[Array, "dx dx"]
    observation_matrix: Float[Array, "dy dx"]
    observation_cov: Float[Array, "dy dy"]
    observations: Float[Array, "T dy"]

    def __init__(
        self,
        initial_mean,
        initial_cov,
        transition_matrix,
        transition_cov,
        observation_matrix,
        observation_cov,
        observations,
    ):
        """Build the model, checking every shape.

        Raises:
            ValueError: if a piece has the wrong shape (the message names it and the
                shape it should have) or a non-finite entry, or a covariance is not
                symmetric positive semi-definite.
        """
        pieces = (initial_mean, initial_cov, transition_matrix, transition_cov, observation_matrix,
                  observation_cov, observations)
        # One float dtype for the model: the inputs' widest (float64 under x64), integers -> float.
        dtype = jnp.result_type(*(p if hasattr(p, "dtype") else np.asarray(p) for p in pieces), float)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"the model's arrays must hold real numbers, got dtype {dtype}")
        mean = jnp.asarray(initial_mean, dtype=dtype)
        if mean.ndim != 1 or mean.shape[0] < 1:
            raise ValueError(f"`initial_mean` must be a non-empty 1-d array, got shape {mean.shape}")
        dx = mean.shape[0]
        observation_matrix = jnp.asarray(observation_matrix, dtype=dtype)
        if observation_matrix.ndim != 2 or observation_matrix.shape[1] != dx:
            raise ValueError(
                f"`observation_matrix` must have shape (dy, {dx}), got {observation_matrix.shape}"
            )
        dy = observation_matrix.shape[0]
        observations = jnp.asarray(observations, dtype=dtype)
        if observations.ndim != 2 or observations.shape[1] != dy or observations.shape[0] < 1:
            raise ValueError(
                f"`observations` must have shape (T, {dy}) with T >= 1, got {observations.shape}"
            )
        self.initial_mean = _as_matrix(mean, (dx,), "initial_mean", dtype)
        self.initial_cov = _as_covariance(initial_cov, (dx, dx), "initial_cov", dtype)
        self.transition_matrix = _as_matrix(transition_matrix, (dx, dx), "transition_matrix", dtype)
        self.transition_cov = _as_covariance(transition_cov, (dx, dx), "transition_cov", dtype)
        self.observation_matrix = _as_matrix(observation_matrix, (dy, dx), "observation_matrix", dtype)
        self.observation_cov = _as_covariance(observation_cov, (dy, dy), "observation_cov", dtype)
        self.observations = check_finite(observations, "observations")

    @property
    def num_steps(self) -> int:
        return int(self.observations.shape[0])

    @property
    def state_dim(self) -> int:
        return int(self.initial_mean.shape[0])

    @property
    def observation_dim(self) -> int:
        return int(self.observation_matrix.shape[0])

    def with_observations(self, observations) -> LinearGaussianSSM:
        """The same model with other observations."""
        return LinearGaussianSSM(
            self.initial_mean, self.initial_cov, self.transition_matrix, self.transition_cov,
            self.observation_matrix, self.observation_cov, observations,
        )

    def simulate(self, key: PRNGKeyArray, num_steps: int) -> tuple[Array, Array]:
        """Draw states ``(T, dx)`` and observations ``(T, dy)`` from the model."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}")
        key_init, key_steps, key_obs = jax.random.split(key, 3)
        x0 = self.sample_initial(key_init, 1)[0]

        def step(x, key):
            x_next = self.sample_transition(key, 0, x[None])[0]
            return x_next, x_next

        _, rest = jax.lax.scan(step, x0, jax.random.split(key_steps, num_steps - 1))
        states = jnp.concatenate([x0[None], rest])
        chol_r = jnp.linalg.cholesky(self.observation_cov)
        noise = jax.random.normal(key_obs, (num_steps, self.observation_dim)) @ chol_r.T
        return states, states @ self.observation_matrix.T + noise

    # --- StateSpaceModel -------------------------------------------------------------------

    def sample_initial(self, key, n):
        chol = jnp.linalg.cholesky(self.initial_cov)
        return self.initial_mean + jax.random.normal(key, (n, self.state_dim)) @ chol.T

    def sample_transition(self, key, t, x_prev):
        chol = jnp.linalg.cholesky(self.transition_cov)
        noise = jax.random.normal(key, x_prev.shape) @ chol.T
        return x_prev @ self.transition_matrix.T + noise

    def log_observation(self, t, x):
        y = self.observations[t]
        return gaussian_log_density(y, x @ self.observation_matrix.T, self.observation_cov)

    def log_initial_density(self, x):
        return gaussian_log_density(x, self.initial_mean, self.initial_cov)

    def log_transition_density(self, t, x_prev, x):
        return gaussian_log_density(x, x_prev @ self.transition_matrix.T, self.transition_cov)

    # --- the locally optimal proposal ------------------------------------------------------

    def optimal_proposal(self) -> LinearGaussianOptimalProposal:
        """The locally optimal proposal $p(x_t \\mid x_{t-1}, y_t)$ (for the guided filter)."""
        return LinearGaussianOptimalProposal(self)


class LinearGaussianOptimalProposal(eqx.Module):
    r"""Proposal $q_t(x_t \mid x_{t-1}) = p(x_t \mid x_{t-1}, y_t)$ of a linear-Gaussian model.

    With $S = H Q H^\top + R$ and $K = Q H^\top S^{-1}$, it is
    $\mathcal N\big(F x_{t-1} + K (y_t - H F x_{t-1}),\ (I - K H) Q\big)$
    (and the same with $m_0, P_0$ at $t = 0$). The guided filter's weights
    then depend on $x_{t-1}$ only: the predictive likelihood $p(y_t \mid x_{t-1})$.
    """

    model: LinearGaussianSSM

    def _moments(self, t, x_prev):
        m = self.model
        mean = x_prev @ m.transition_matrix.T
        return self._condition(mean, m.transition_cov, m.observations[t])

    def _condition(self, mean, cov, y):
        m = self.model
        h = m.observation_matrix
        s = h @ cov @ h.T + m.observation_cov
        gain = jnp.linalg.solve(s, h @ cov).T
        post_mean = mean + (y - mean @ h.T) @ gain.T
        post_cov = cov - gain @ s @ gain.T
        return post_mean, 0.5 * (post_cov + post_cov.T)

    def sample_initial(self, key, n):
        m = self.model
        mean, cov = self._condition(m.initial_mean, m.initial_cov, m.observations[0])
        x = mean + jax.random.normal(key, (n, m.state_dim)) @ jnp.linalg.cholesky(cov).T
        return x, gaussian_log_density(x, mean, cov)

    def sample(self, key, t, x_prev):
        mean, cov = self._moments(t, x_prev)
        x = mean + jax.random.normal(key, x_prev.shape) @ jnp.linalg.cholesky(cov).T
        return x, gaussian_log_density(x, mean, cov)

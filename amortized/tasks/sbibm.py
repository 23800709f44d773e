"""Three tasks of the simulation-based inference benchmark, written in JAX.

Definitions follow sbibm (Lueckmann, Boelts, Greenberg, Gonçalves, Macke, 2021,
*Benchmarking Simulation-Based Inference*, AISTATS):

* **gaussian_linear** — :math:`\\theta \\sim \\mathcal N(0, 0.1 I_{10})`,
  :math:`x \\mid \\theta \\sim \\mathcal N(\\theta, 0.1 I_{10})`; the posterior is
  :math:`\\mathcal N(x/2, 0.05 I)`.
* **two_moons** — :math:`\\theta \\sim \\mathcal U([-1, 1]^2)`,
  :math:`a \\sim \\mathcal U(-\\pi/2, \\pi/2)`, :math:`r \\sim \\mathcal N(0.1, 0.01^2)`,
  :math:`x = (r\\cos a + 0.25,\\, r \\sin a) + \\big(-|\\theta_1+\\theta_2|/\\sqrt2,\\, (\\theta_2-\\theta_1)/\\sqrt2\\big)`.
* **slcp** — :math:`\\theta \\sim \\mathcal U([-3, 3]^5)`, four i.i.d. draws
  :math:`x_j \\sim \\mathcal N\\big((\\theta_1, \\theta_2), S\\big)` with
  :math:`s_1 = \\theta_3^2`, :math:`s_2 = \\theta_4^2`, :math:`\\rho = \\tanh\\theta_5`,
  :math:`S = [[s_1^2, \\rho s_1 s_2], [\\rho s_1 s_2, s_2^2]] + 10^{-6} I`.

Each dataset is a set of observation tokens: one 10-vector (gaussian_linear), one
2-vector (two_moons), four 2-vectors (slcp; sbibm's flat ``x`` of length 8 is these
four in order). The uniform priors are handed to the model as the box
``(low, high)`` (a parametric prior); gaussian_linear's prior is a one-component
mixture.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from amortized.gmm import GaussianMixture, _condition, random_sign_flips
from amortized.tasks.base import Task
from probinf.families import check_num_samples
from probinf.linalg import cholesky

__all__ = ["GaussianLinear", "TwoMoons", "SLCP"]


class _BoxPriorTask(Task):
    """A task with a fixed uniform prior on a box, given to the model as ``(low, high)``."""

    low: Float[Array, " dim"]
    high: Float[Array, " dim"]
    components: int = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.low.shape[0]

    @property
    def prior_param_dim(self) -> int:
        return 2 * self.dim

    @property
    def num_posterior_components(self) -> int:
        return self.components

    @property
    def prior_params(self) -> Array:
        """The fixed prior as the model sees it: ``concatenate([low, high])``."""
        return jnp.concatenate([self.low, self.high])

    def sample_prior(self, key) -> Array:
        return self.prior_params

    def sample_theta(self, key, prior: Array) -> Array:
        return jax.random.uniform(key, (self.dim,), minval=prior[: self.dim], maxval=prior[self.dim :])

    def in_support(self, theta: Array) -> Array:
        """Whether ``theta`` (``(..., dim)``) lies in the prior's box."""
        return jnp.all((theta >= self.low) & (theta <= self.high), axis=-1)

    def _numpyro_prior(self):
        import numpyro
        import numpyro.distributions as dist

        return numpyro.sample("theta", dist.Uniform(self.low, self.high).to_event(1))


class GaussianLinear(Task):
    """sbibm's gaussian_linear (see the module docstring); the exact posterior is Gaussian."""

    name: ClassVar[str] = "gaussian_linear"
    size: int = eqx.field(static=True)
    prior_variance: float = eqx.field(static=True)
    noise_variance: float = eqx.field(static=True)

    def __init__(self, dim: int = 10, prior_variance: float = 0.1, noise_variance: float = 0.1):
        self.size = int(dim)
        self.prior_variance = float(prior_variance)
        self.noise_variance = float(noise_variance)

    @property
    def dim(self) -> int:
        return self.size

    @property
    def obs_dim(self) -> int:
        return self.size

    @property
    def max_observations(self) -> int:
        return 1

    @property
    def max_components(self) -> int:
        return 1

    @property
    def prior(self) -> GaussianMixture:
        """The prior :math:`\\mathcal N(0, 0.1 I)` as a one-component mixture."""
        scale = math.sqrt(self.prior_variance)
        return GaussianMixture(jnp.zeros(1), jnp.zeros((1, self.dim)), scale * jnp.eye(self.dim)[None])

    def sample_prior(self, key) -> GaussianMixture:
        return self.prior

    def sample_theta(self, key, prior: GaussianMixture) -> Array:
        return prior.sample(key, 1)[0]

    def simulate_data(self, key, theta: Array) -> tuple[Array, Array]:
        x = theta + math.sqrt(self.noise_variance) * jax.random.normal(key, (self.dim,))
        return x[None], jnp.ones(1, bool)

    def exact_posterior(self, prior: GaussianMixture, observations: Array, mask: Array | None = None) -> GaussianMixture:
        """The exact Gaussian posterior (for any mixture prior)."""
        observations = jnp.asarray(observations).reshape(-1, self.dim)
        mask = jnp.ones(observations.shape[0], bool) if mask is None else jnp.asarray(mask, bool)
        eye = jnp.eye(self.dim, dtype=prior.means.dtype)
        return _condition(prior, observations, eye, self.noise_variance * eye, jnp.zeros(self.dim), mask)[0]

    def numpyro_model(self, prior: GaussianMixture, observations: Array, mask: Array):
        import numpyro
        import numpyro.distributions as dist

        from amortized.tasks.conjugate import _numpyro_mixture

        theta = numpyro.sample("theta", _numpyro_mixture(prior))
        with numpyro.handlers.mask(mask=mask):
            numpyro.sample("x", dist.Normal(theta, math.sqrt(self.noise_variance)).to_event(1)
                           .expand([observations.shape[0]]), obs=observations)


class TwoMoons(_BoxPriorTask):
    """sbibm's two_moons (see the module docstring), with an exact posterior sampler.

    Args:
        num_components: mixture size of the model's posterior.
    """

    name: ClassVar[str] = "two_moons"

    def __init__(self, num_components: int = 10):
        self.low = -jnp.ones(2)
        self.high = jnp.ones(2)
        self.components = int(num_components)

    @property
    def obs_dim(self) -> int:
        return 2

    @property
    def max_observations(self) -> int:
        return 1

    @staticmethod
    def _shift(theta: Array) -> Array:
        z0 = (theta[..., 0] + theta[..., 1]) / math.sqrt(2.0)
        z1 = (theta[..., 1] - theta[..., 0]) / math.sqrt(2.0)
        return jnp.stack([-jnp.abs(z0), z1], axis=-1)

    def simulate_data(self, key, theta: Array) -> tuple[Array, Array]:
        k_a, k_r = jax.random.split(key)
        a = jax.random.uniform(k_a, minval=-math.pi / 2, maxval=math.pi / 2)
        r = 0.1 + 0.01 * jax.random.normal(k_r)
        p = jnp.stack([r * jnp.cos(a) + 0.25, r * jnp.sin(a)])
        return (p + self._shift(theta))[None], jnp.ones(1, bool)

    def log_likelihood(self, theta: Array, observation: Array) -> Array:
        """Exact :math:`\\log p(x\\mid\\theta)`: with :math:`p = x - \\text{shift}(\\theta)` in polar
        coordinates around :math:`(0.25, 0)`, :math:`\\log\\mathcal N(r; 0.1, 0.01^2) - \\log(\\pi r)`
        on the right half-plane, :math:`-\\infty` elsewhere."""
        p = observation.reshape(2) - self._shift(theta)
        u, v = p[..., 0] - 0.25, p[..., 1]
        r = jnp.sqrt(u**2 + v**2)
        log_r = -0.5 * ((r - 0.1) / 0.01) ** 2 - math.log(0.01 * math.sqrt(2 * math.pi))
        return jnp.where(u >= 0, log_r - jnp.log(math.pi * r), -jnp.inf)

    def reference_posterior_samples(self, key, observation: Array, num_samples: int) -> Array:
        """Exact posterior draws (sbibm's construction): draw the noise :math:`p`, solve
        :math:`x = p + \\text{shift}(\\theta)` for :math:`\\theta` (a random one of the two
        mirror solutions), keep feasible solutions inside the prior box. (Unlike sbibm's
        sampler, draws with :math:`p_1 < x_1`, which no :math:`\theta` can produce, are rejected.)"""
        num_samples = check_num_samples(num_samples, "num_samples")
        x = jnp.asarray(observation).reshape(2)
        batch = 4 * num_samples + 64
        kept, total = [], 0
        while total < num_samples:
            key, k_p, k_flip = jax.random.split(key, 3)
            p, _ = jax.vmap(self.simulate_data)(jax.random.split(k_p, batch), jnp.zeros((batch, 2)))
            p = p[:, 0]
            q0 = p[:, 0] - x[0]  # = |z0| >= 0 for a feasible draw
            q1 = x[1] - p[:, 1]
            z0 = jnp.where(jax.random.bernoulli(k_flip, 0.5, (batch,)), -q0, q0)
            c = s = math.sqrt(0.5)
            theta = jnp.stack([c * z0 - s * q1, s * z0 + c * q1], axis=-1)
            theta = theta[self.in_support(theta) & (q0 >= 0)]
            kept.append(theta)
            total += theta.shape[0]
        return jnp.concatenate(kept)[:num_samples]

    def numpyro_model(self, prior, observations: Array, mask: Array):
        import numpyro

        theta = self._numpyro_prior()
        numpyro.factor("likelihood", self.log_likelihood(theta, observations[0]))


class SLCP(_BoxPriorTask):
    """sbibm's slcp (see the module docstring).

    The posterior is invariant under :math:`\\theta_3 \\to -\\theta_3` and
    :math:`\\theta_4 \\to -\\theta_4` (they enter squared and the prior is symmetric), so it
    has up to four symmetric modes; :meth:`symmetrize` spreads reference draws over them,
    and ``model_options()`` gives a Distribution Transformer ``symmetric_axes=(2, 3)``.

    Args:
        num_components: mixture size of the model's posterior.
    """

    name: ClassVar[str] = "slcp"

    def __init__(self, num_components: int = 8):
        self.low = -3.0 * jnp.ones(5)
        self.high = 3.0 * jnp.ones(5)
        self.components = int(num_components)

    @property
    def obs_dim(self) -> int:
        return 2

    @property
    def max_observations(self) -> int:
        return 4

    @staticmethod
    def _mean_and_covariance(theta: Array) -> tuple[Array, Array]:
        s1, s2 = theta[..., 2] ** 2, theta[..., 3] ** 2
        rho = jnp.tanh(theta[..., 4])
        cov = jnp.stack([
            jnp.stack([s1**2 + 1e-6, rho * s1 * s2], -1),
            jnp.stack([rho * s1 * s2, s2**2 + 1e-6], -1),
        ], -2)
        return theta[..., :2], cov

    def simulate_data(self, key, theta: Array) -> tuple[Array, Array]:
        mean, cov = self._mean_and_covariance(theta)
        chol = cholesky(cov)
        x = mean + jax.random.normal(key, (4, 2)) @ chol.T
        return x, jnp.ones(4, bool)

    def log_likelihood(self, theta: Array, observations: Array) -> Array:
        """:math:`\\sum_{j=1}^4 \\log\\mathcal N(x_j; (\\theta_1,\\theta_2), S(\\theta))`."""
        mean, cov = self._mean_and_covariance(theta)
        det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
        d = observations.reshape(4, 2) - mean
        quad = (cov[..., 1, 1] * d[:, 0] ** 2 - 2 * cov[..., 0, 1] * d[:, 0] * d[:, 1] + cov[..., 0, 0] * d[:, 1] ** 2) / det
        return jnp.sum(-0.5 * quad - 0.5 * jnp.log(det) - math.log(2 * math.pi))

    @property
    def symmetric_axes(self) -> tuple[int, ...]:
        """:math:`\\theta_3, \\theta_4` (indices 2 and 3) enter the likelihood squared."""
        return (2, 3)

    def reference_posterior_samples(
        self, key, observation: Array, num_samples: int, *, grid: tuple[int, int] = (256, 128)
    ) -> Array:
        """Posterior draws that need no MCMC: the means integrated out exactly, a grid for the rest.

        Given :math:`\\phi = (\\theta_3, \\theta_4, \\theta_5)`, the likelihood is Gaussian in
        the mean :math:`\\mu = (\\theta_1, \\theta_2)`: with the sample mean :math:`\\bar x` and
        scatter :math:`W = \\sum_j (x_j - \\bar x)(x_j - \\bar x)^\\top`,

        .. math::
            p(\\phi \\mid x) \\propto |S|^{-3/2} e^{-\\operatorname{tr}(S^{-1}W)/2}\\,
            P_{\\mathcal N(\\bar x, S/4)}\\big(\\mu \\in [-3, 3]^2\\big),\\qquad
            \\mu \\mid \\phi, x \\sim \\mathcal N(\\bar x, S/4) \\text{ restricted to the box.}

        The box probability is a 64-node Gauss–Legendre quadrature of the conditional
        normal CDF. :math:`\\phi` is drawn from its marginal on a grid of cells (midpoint
        masses, uniform within a cell): :math:`|\\theta_3|, |\\theta_4| = 3t^3` on ``grid[0]``
        cells of :math:`t \\in [0, 1]` each (fine near zero, where :math:`\\theta_1`'s posterior
        is a narrow funnel), :math:`\\theta_5` on ``grid[1]`` cells of :math:`[-3, 3]`; the
        signs of :math:`\\theta_3, \\theta_4` are fair coins (the symmetry). :math:`\\mu` is
        then drawn by rejection from its conditional (256 tries; if all fall outside the
        box, which needs a box probability below ~2 %, the last is clipped to the box).

        Args:
            key: PRNG key.
            observation: the four 2-d observations, ``(4, 2)`` or sbibm's flat ``(8,)``.
            num_samples: number of draws.
            grid: cells per axis for :math:`|\\theta_3|, |\\theta_4|` and for :math:`\\theta_5`.
        """
        num_samples = check_num_samples(num_samples, "num_samples")
        x = jnp.asarray(observation, jnp.result_type(float))  # the default float (float64 under x64)
        if x.size != 8 or not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"`observation` must be four finite 2-d observations, got shape {x.shape}")
        x = x.reshape(4, 2)
        if not (isinstance(grid, (tuple, list)) and len(grid) == 2):
            raise ValueError(f"`grid` must be a pair (cells for |theta3|, |theta4|; cells for theta5), got {grid!r}")
        n_abs, n_rho = (check_num_samples(g, "grid") for g in grid)
        t_mid = (jnp.arange(n_abs) + 0.5) / n_abs
        abs_mid = 3.0 * t_mid**3
        rho_mid = -3.0 + 6.0 * (jnp.arange(n_rho) + 0.5) / n_rho
        log_mass = np.asarray(_slcp_phi_log_mass(x, abs_mid, rho_mid), np.float64)
        # Cell volume in theta: d|theta3| d|theta4| dtheta5 = 9t^2/n * 9t^2/n * 6/n_rho.
        log_width = np.log(9.0 * np.asarray(t_mid, np.float64) ** 2 / n_abs)
        log_mass = log_mass + log_width[:, None, None] + log_width[None, :, None]
        prob = np.exp(log_mass - log_mass.max()).reshape(-1)
        cdf = np.cumsum(prob) / prob.sum()
        k_cell, k_jitter, k_sign, k_mu = jax.random.split(key, 4)
        cells = np.minimum(np.searchsorted(cdf, np.asarray(jax.random.uniform(k_cell, (num_samples,)))), cdf.size - 1)
        i3, i4, i5 = np.unravel_index(cells, log_mass.shape)
        u = np.asarray(jax.random.uniform(k_jitter, (num_samples, 3)), np.float64)
        t3 = (i3 + u[:, 0]) / n_abs
        t4 = (i4 + u[:, 1]) / n_abs
        theta5 = -3.0 + 6.0 * (i5 + u[:, 2]) / n_rho
        # The grid holds |theta3|, |theta4|; their signs are fair coins (the symmetry).
        phi = jnp.asarray(np.stack([3.0 * t3**3, 3.0 * t4**3, theta5], axis=-1), jnp.result_type(float))
        phi = random_sign_flips(k_sign, phi, (0, 1))
        mu = _slcp_conditional_mean_draws(k_mu, x, phi)
        return jnp.concatenate([mu, phi], axis=-1)

    @staticmethod
    def symmetrize(key, samples: Array) -> Array:
        """Flip the signs of :math:`\\theta_3` and :math:`\\theta_4` independently at random."""
        return random_sign_flips(key, jnp.asarray(samples), (2, 3))

    def numpyro_model(self, prior, observations: Array, mask: Array):
        import numpyro

        theta = self._numpyro_prior()
        numpyro.factor("likelihood", self.log_likelihood(theta, observations))


def _slcp_covariance(phi: Array) -> Array:
    theta = jnp.concatenate([jnp.zeros(phi.shape[:-1] + (2,), phi.dtype), phi], axis=-1)
    return SLCP._mean_and_covariance(theta)[1]


def _box_probability(mean: Array, cov: Array, nodes: Array, weights: Array) -> Array:
    """:math:`P(\\mu \\in [-3, 3]^2)` for :math:`\\mu \\sim \\mathcal N(\\text{mean}, \\text{cov})`:
    Gauss–Legendre over the standardised first coordinate (within 8 sd) of the
    conditional normal probability of the second."""
    sd1 = jnp.sqrt(cov[0, 0])
    lo = jnp.maximum((-3.0 - mean[0]) / sd1, -8.0)
    hi = jnp.minimum((3.0 - mean[0]) / sd1, 8.0)
    half = 0.5 * jnp.maximum(hi - lo, 0.0)
    z = lo + half * (nodes + 1.0)
    mean2 = mean[1] + cov[0, 1] / sd1 * z
    sd2 = jnp.sqrt(jnp.maximum(cov[1, 1] - cov[0, 1] ** 2 / cov[0, 0], 1e-30))
    inside2 = jax.scipy.stats.norm.cdf((3.0 - mean2) / sd2) - jax.scipy.stats.norm.cdf((-3.0 - mean2) / sd2)
    return half * jnp.sum(weights * jax.scipy.stats.norm.pdf(z) * inside2)


@jax.jit
def _slcp_phi_log_mass(x: Array, abs_mid: Array, rho_mid: Array) -> Array:
    """Unnormalised :math:`\\log p(\\phi\\mid x)` on the grid ``abs_mid x abs_mid x rho_mid``."""
    nodes, weights = (jnp.asarray(a, x.dtype) for a in np.polynomial.legendre.leggauss(64))
    mean = x.mean(0)
    centred = x - mean
    scatter = centred.T @ centred

    def one(a3, a4, t5):
        cov = _slcp_covariance(jnp.stack([a3, a4, t5]))
        det = cov[0, 0] * cov[1, 1] - cov[0, 1] ** 2
        inv = jnp.array([[cov[1, 1], -cov[0, 1]], [-cov[0, 1], cov[0, 0]]]) / det
        box = _box_probability(mean, cov / 4.0, nodes, weights)
        return -1.5 * jnp.log(det) - 0.5 * jnp.sum(inv * scatter) + jnp.log(box)

    def slab(a3):
        return jax.vmap(lambda a4: jax.vmap(lambda t5: one(a3, a4, t5))(rho_mid))(abs_mid)

    return jax.lax.map(slab, abs_mid)


@jax.jit
def _slcp_conditional_mean_draws(key, x: Array, phi: Array) -> Array:
    """:math:`\\mu \\sim \\mathcal N(\\bar x, S(\\phi)/4)` restricted to the box, by rejection."""
    mean = x.mean(0)

    def one(k, p):
        chol = cholesky(_slcp_covariance(p) / 4.0)
        tries = mean + jax.random.normal(k, (256, 2)) @ chol.T
        inside = jnp.all(jnp.abs(tries) <= 3.0, axis=-1)
        first = jnp.argmax(inside)
        return jnp.where(jnp.any(inside), tries[first], jnp.clip(tries[-1], -3.0, 3.0))

    return jax.vmap(one)(jax.random.split(key, phi.shape[0]), phi)

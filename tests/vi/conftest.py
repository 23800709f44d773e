"""Gaussian problems with exact answers for the VI tests.

The target is an unnormalised Gaussian, ``log p(z) = log Z + log N(z; mean, cov)``,
so the ELBO of a Gaussian family has a closed form and every K-sample objective
``E[F(l_1..l_K)]`` of a one-dimensional family can be computed to high accuracy by
tensor-product Gauss–Hermite quadrature — both independent of the estimator code.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probinf

jax.config.update("jax_enable_x64", False)


class GaussianProblem:
    def __init__(self, mean, cov, log_z):
        self.mean = jnp.asarray(mean, jnp.float32)
        self.cov = jnp.asarray(cov, jnp.float32)
        self.log_z = float(log_z)
        self.dim = self.mean.shape[0]
        chol = jnp.linalg.cholesky(self.cov)
        mean_, log_z_ = self.mean, self.log_z

        def log_density(z):
            white = jax.scipy.linalg.solve_triangular(chol, z - mean_, lower=True)
            return (
                log_z_
                - 0.5 * jnp.sum(white**2)
                - jnp.sum(jnp.log(jnp.diag(chol)))
                - 0.5 * self.dim * math.log(2 * math.pi)
            )

        self.target = probinf.from_logdensity(log_density, self.dim)

    def exact_elbo(self, loc, log_scale):
        """log Z - KL(N(loc, diag exp(2 log_scale)) || N(mean, cov)) in closed form."""
        var_q = jnp.exp(2 * log_scale)
        prec = jnp.linalg.inv(self.cov)
        diff = self.mean - loc
        kl = 0.5 * (
            jnp.sum(jnp.diag(prec) * var_q)
            + diff @ prec @ diff
            - self.dim
            + jnp.linalg.slogdet(self.cov)[1]
            - jnp.sum(2 * log_scale)
        )
        return self.log_z - kl


def gauss_hermite_expectation(reduce_fn, log_weight_fn, loc, log_scale, num_samples, nodes=24):
    """E_{z_1..K ~ N(loc, s^2) iid}[F(l(z_1), ..., l(z_K))] for a 1-d family, by quadrature."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)  # weight exp(-x^2/2)
    w = w / w.sum()
    grid = np.array(list(itertools.product(range(nodes), repeat=num_samples)))
    eps = jnp.asarray(x[grid], jnp.float32)  # (G, K)
    weights = jnp.asarray(np.prod(w[grid], axis=1), jnp.float32)
    z = loc + jnp.exp(log_scale) * eps
    log_q = -0.5 * eps**2 - 0.5 * math.log(2 * math.pi) - log_scale
    log_w = log_weight_fn(z, log_q)
    return jnp.sum(weights * jax.vmap(reduce_fn)(log_w))


@pytest.fixture(scope="module")
def problem_2d():
    return GaussianProblem(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 0.5]], log_z=1.3)


@pytest.fixture(scope="module")
def problem_1d():
    return GaussianProblem(mean=[0.7], cov=[[0.6]], log_z=-0.4)


@pytest.fixture(scope="session")
def quadrature():
    return gauss_hermite_expectation

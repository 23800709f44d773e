"""Helpers shared by the flows tests: checking that a flow's two passes agree."""

import math
from types import SimpleNamespace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy import stats

import flows
from probinf.families import Family

BOUND = 5.0  # the spline interval used by these checks (the builders' default)
RTOL = 1e-4
ATOL = 1e-5  # for log densities near zero, where a relative tolerance means nothing


class FixedDraws(Family):
    """A standard-normal "base" whose draws are given points: ``Flow.sample_and_log_prob``
    then pushes exactly those points through the forward pass."""

    points: jax.Array

    @property
    def dim(self) -> int:
        return self.points.shape[-1]

    def sample_and_log_prob(self, key, n):
        assert n == self.points.shape[0]
        return self.points, self.log_prob(self.points)

    def log_prob(self, z):
        return jnp.sum(stats.norm.logpdf(z), axis=-1)


def trained_like(module, key, scale=0.3):
    """Parameters like trained ones: Gaussian noise on every float array, ``scale`` for
    vectors and ``scale / sqrt(fan-in)`` for weight matrices, so a conditioner's outputs
    (the raw transformer parameters) move by about ``scale`` per unit of hidden activation.

    At 0.3 that makes raw spline parameters about 2.5 times as large as those of flows
    trained for 400 Adam steps (ELBO, 8 draws, rate 1e-2) on a skewed, heavy-tailed 3-d
    target: median |raw| 0.23 against 0.09, 99th percentile about 1 against 0.3-1.5.
    """
    leaves, treedef = jax.tree_util.tree_flatten(module)
    keys = jax.random.split(key, len(leaves))
    noisy = []
    for leaf, k in zip(leaves, keys, strict=True):
        if eqx.is_inexact_array(leaf):
            size = scale / math.sqrt(leaf.shape[-1]) if leaf.ndim >= 2 else scale
            leaf = leaf + size * jax.random.normal(k, leaf.shape, leaf.dtype)
        noisy.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, noisy)


def base_points(key, dim):
    """Typical draws, tail draws (radius 4 to 6; P(|u| > 4) ~ 6e-5 per coordinate) and
    points at and just inside the spline interval's edges."""
    k1, k2 = jax.random.split(key)
    typical = jax.random.normal(k1, (1000, dim))
    direction = jax.random.normal(k2, (200, dim))
    radius = jnp.linspace(4.0, 6.0, 200)[:, None]
    tails = radius * direction / jnp.max(jnp.abs(direction), axis=1, keepdims=True)
    inside = float(np.nextafter(np.float32(BOUND), np.float32(0.0)))
    edges = jnp.array([BOUND, -BOUND, inside, -inside, 0.0])
    edge_points = jnp.stack(jnp.meshgrid(*[edges] * dim), axis=-1).reshape(-1, dim)
    return jnp.concatenate([typical, tails, edge_points])


@eqx.filter_jit
def _both_passes(bijection, points):
    flow = flows.Flow(bijection, FixedDraws(points))
    x, forward = flow.sample_and_log_prob(jax.random.key(0), points.shape[0])
    return x, forward, flow.log_prob(x)


def assert_passes_agree(bijection, points):
    x, forward, inverse = _both_passes(bijection, points)
    assert np.all(np.isfinite(np.asarray(forward)))
    np.testing.assert_allclose(inverse, forward, rtol=RTOL, atol=ATOL)


@pytest.fixture(scope="session")
def passes():
    """``FixedDraws``, ``trained_like``, ``base_points``, ``both_passes``, ``assert_agree``."""
    return SimpleNamespace(FixedDraws=FixedDraws, trained_like=trained_like, base_points=base_points,
                           both_passes=_both_passes, assert_agree=assert_passes_agree,
                           bound=BOUND)

"""The documented recipe for a new objective works with every estimator (docs/vi.md)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import probinf
from probinf import vi


class WeightedEntropyELBO(vi.Objective):
    """E_q[log p(z) - lam * log q(z)] — an ELBO for the tempered target p^(1/lam)."""

    lam: float = eqx.field(static=True)

    def __init__(self, lam, num_samples=8, estimator=None):
        self.lam, self.num_samples, self.num_batches = lam, num_samples, 1
        self.estimator = vi.Reparam() if estimator is None else estimator

    def log_weight(self, target, z, log_q, step):
        return target.log_density(z) - self.lam * log_q


@pytest.mark.parametrize("estimator", [vi.Reparam(), vi.STL(), vi.Score("loo")],
                         ids=["reparam", "stl", "score-loo"])
def test_weighted_entropy_elbo_targets_the_tempered_posterior(problem_1d, estimator):
    """The optimum of E[log p - 2 log q] over Gaussians is N(mean, 2 * var) = p^(1/2) normalised."""
    result = probinf.fit(WeightedEntropyELBO(2.0, 16, estimator), probinf.MeanFieldGaussian.init(1),
                         problem_1d.target, key=jax.random.key(0), steps=1500,
                         optimizer=optax.adam(optax.cosine_decay_schedule(3e-2, 1500)),
                         progress=False)
    np.testing.assert_allclose(result.family.loc, problem_1d.mean, atol=0.05)
    np.testing.assert_allclose(jnp.exp(2 * result.family.log_scale), 2 * problem_1d.cov[0], atol=0.08)


def test_weighted_entropy_elbo_with_enumeration():
    weights = jnp.array([0.2, 0.5, 0.3])
    target = probinf.from_logdensity(lambda z: jnp.log(weights)[z[0].astype(jnp.int32)], 1)
    result = probinf.fit(WeightedEntropyELBO(2.0, estimator=vi.Enumerate()),
                         probinf.Categorical.init(1, 3), target, key=jax.random.key(0),
                         steps=800, optimizer=optax.adam(0.1), progress=False)
    tempered = jnp.sqrt(weights) / jnp.sqrt(weights).sum()
    np.testing.assert_allclose(jax.nn.softmax(result.family.logits[0]), tempered, atol=2e-3)

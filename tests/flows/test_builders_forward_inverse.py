"""The two passes of every builder's flow agree (flows/builders.py through flows/distribution.py).

As test_forward_inverse.py does for single bijections: at parameters like trained ones
(``conftest.trained_like``) and after real training on a skewed, heavy-tailed target, the
forward log density of draws (``Flow.sample_and_log_prob``) equals the inverse-pass log
density of the same points (``Flow.log_prob``) to a relative 1e-4 in float32, on draws that
include the base's tails (radius 4 to 6) and the spline interval's edges.
"""

import jax
import jax.numpy as jnp
import optax
import pytest
from jax.scipy import stats

import flows
import probinf
from probinf import vi

DIM = 3
KEY = jax.random.key(0)


BUILDERS = {
    "coupling_affine": lambda k: flows.coupling_flow(k, DIM, num_layers=4, width=16),
    "coupling_spline": lambda k: flows.spline_flow(k, DIM, num_layers=4, width=16),
    "maf_affine": lambda k: flows.masked_autoregressive_flow(k, DIM, num_layers=3, width=16),
    "maf_spline": lambda k: flows.spline_flow(k, DIM, kind="maf", num_layers=3, width=16),
    "iaf_affine": lambda k: flows.inverse_autoregressive_flow(k, DIM, num_layers=3, width=16),
    "iaf_spline": lambda k: flows.spline_flow(k, DIM, kind="iaf", num_layers=3, width=16),
    "planar": lambda k: flows.planar_flow(k, DIM, num_layers=8),
    "radial": lambda k: flows.planar_flow(k, DIM, num_layers=8, kind="radial"),
    "spline_loc_scale": lambda k: flows.spline_flow(k, DIM, num_layers=2, width=16, loc=1.0, scale=0.5),
    "spline_gaussian": lambda k: flows.spline_flow(
        k, DIM, num_layers=2, width=16,
        gaussian=probinf.FullRankGaussian.init(DIM, loc=1.0, scale_tril=jnp.array(
            [[1.0, 0.0, 0.0], [0.5, 0.3, 0.0], [-0.2, 0.1, 2.0]]))),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder(passes, name, seed):
    key_init, key_noise, key_points = jax.random.split(jax.random.key(seed), 3)
    flow = passes.trained_like(BUILDERS[name](key_init), key_noise)
    passes.assert_agree(flow.bijection, passes.base_points(key_points, DIM))


def _skewed_heavy_tailed(z):
    """Gumbel (skewed) x Student-t with 3 degrees of freedom x a curved conditional."""
    gumbel = -(z[0] + jnp.exp(-z[0]))
    student = stats.t.logpdf(z[1], 3.0)
    curved = stats.norm.logpdf(z[2], 0.5 * z[0] ** 2 - 1.0, 0.5)
    return gumbel + student + curved


def _kl(flow, target):
    """KL(q || p) = -ELBO, since the target is normalised (log Z = 0)."""
    z, log_q = flow.sample_and_log_prob(jax.random.key(9), 4000)
    return float(jnp.mean(log_q - target.log_density(z)))


def test_trained_spline_flow(passes):
    """Trained for real: 300 Adam steps of the ELBO on a skewed, heavy-tailed target."""
    target = probinf.from_logdensity(_skewed_heavy_tailed, DIM)
    flow = flows.spline_flow(KEY, DIM, num_layers=3, width=16)
    result = probinf.fit(vi.ELBO(8), flow, target, key=jax.random.key(1), steps=300,
                         optimizer=optax.adam(1e-2), chunk_size=300, progress=False, diagnose=False)
    # It moved far from its identity start: most of the initial KL is gone.
    assert _kl(result.family, target) < 0.2 * _kl(flow, target)
    passes.assert_agree(result.family.bijection, passes.base_points(jax.random.key(2), DIM))

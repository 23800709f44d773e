"""The two passes of a flow agree, for every bijection (flows/distribution.py with each
bijection module); the flow builders are checked in test_builders_forward_inverse.py.

``Flow.sample_and_log_prob`` scores a draw with the forward pass, ``Flow.log_prob`` a point
with the inverse pass. At parameters like trained ones (``conftest.trained_like``) the two
agree to a relative 1e-4 in float32 on draws that include the tails of the base (radius 4
to 6) and points on the spline intervals' edges and knots. Planar's inverse is a
bisection with a Newton step and the autoregressive layers' inverse a fixed-point sweep:
iterative, but accurate to rounding here.

Where the inverse is inexact — its error is about ``ulp(y) / g'`` for a layer of slope
``g'``, so a layer that squeezes many base values into few float32 numbers (a near-flat
spline bin, a saturated sigmoid) cannot be undone — the last tests show the error and
check that every place that scores the flow's own draws (``sample_and_log_prob``,
``sample_and_frozen_log_prob`` for STL/DReG, ``FlowDistribution`` under numpyro) reports
the forward value there.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
from flows import (
    Affine,
    Chain,
    Coupling,
    Exp,
    FlowDistribution,
    Invert,
    LULinear,
    MaskedAutoregressive,
    MaskedCoupling,
    Permutation,
    Planar,
    Radial,
    Sigmoid,
    Softplus,
    Spline,
    Tanh,
    TriangularAffine,
)
from flows.spline import spline_knots

DIM = 3
BOUND = 5.0
KEY = jax.random.key(0)


def _knot_points(raw, num_bins, base):
    """``base`` repeated with coordinate ``i`` set to each knot of spline ``i`` (raw ``(dim, p)``)."""
    x_knots, _, _ = spline_knots(raw, num_bins, BOUND)
    rows = []
    for i in range(raw.shape[0]):
        for knot in np.asarray(x_knots[i]):
            for nudge in (0.0, -1e-6, 1e-6):
                rows.append(base.at[i].set(knot + nudge))
    return jnp.stack(rows)


BIJECTIONS = {
    "affine": lambda k: Affine.init(DIM),
    "exp": lambda k: Exp(DIM),
    "softplus": lambda k: Softplus(DIM),
    # Raw spline parameters as large as a conditioner's outputs under the noise above.
    "spline": lambda k: Spline(DIM, bound=BOUND, params=0.5 * jax.random.normal(k, (DIM, 23))),
    "lu_linear": lambda k: LULinear(DIM, key=k),
    "triangular_affine": lambda k: TriangularAffine(jnp.zeros(DIM), jnp.zeros(DIM), jnp.zeros((DIM, DIM))),
    "permutation": lambda k: Permutation.random(k, DIM),
    "coupling_affine": lambda k: Coupling(k, DIM, width=16),
    "coupling_spline": lambda k: Coupling(k, DIM, transformer="spline", width=16, bound=BOUND),
    "masked_coupling_spline": lambda k: MaskedCoupling(k, DIM, transformer="spline", width=16, bound=BOUND),
    "iaf_affine": lambda k: MaskedAutoregressive(k, DIM, width=16),
    "iaf_spline": lambda k: MaskedAutoregressive(k, DIM, transformer="spline", width=16, bound=BOUND),
    "maf_spline": lambda k: Invert(MaskedAutoregressive(k, DIM, transformer="spline", width=16, bound=BOUND)),
    # Planar's inverse is a bisection with a Newton step, radial's a quadratic: both are
    # root solves, accurate to rounding at these (and larger) parameters.
    "planar": lambda k: Planar(k, DIM),
    "radial": lambda k: Radial(k, DIM),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(BIJECTIONS))
def test_every_bijection(passes, name, seed):
    key_init, key_noise, key_points = jax.random.split(jax.random.key(seed), 3)
    bijection = passes.trained_like(BIJECTIONS[name](key_init), key_noise)
    points = passes.base_points(key_points, DIM)
    if name == "spline":
        points = jnp.concatenate([points, _knot_points(bijection.params, 8, points[0])])
    if name == "coupling_spline":  # the moved coordinates on the knots their spline has at points[0]
        params = bijection._params(points[0, : bijection.split], None)
        knots = _knot_points(params, 8, points[0, bijection.split :])
        fixed = jnp.broadcast_to(points[0, : bijection.split], (knots.shape[0], bijection.split))
        points = jnp.concatenate([points, jnp.concatenate([fixed, knots], axis=1)])
    passes.assert_agree(bijection, points)


# The squashing maps resolve their inverse only while the output stays away from its bound
# in float32 (flows/elementwise.py): within that range they agree like the rest.
SQUASHING = {"sigmoid": (Sigmoid, 8.0), "tanh": (Tanh, 4.0)}


@pytest.mark.parametrize("name", sorted(SQUASHING))
def test_squashing_maps_where_float32_resolves_them(passes, name):
    cls, limit = SQUASHING[name]
    points = jnp.clip(passes.base_points(jax.random.key(5), DIM), -limit, limit)
    passes.assert_agree(cls(DIM), points)


# --- Where the inverse is inexact, the forward value is what gets reported. ---------------


def _squeezing_spline():
    """An elementwise spline that maps x in [-1.25, 5] onto y in [4.95, 5]: the first three
    bins take nearly all the height, the other five the minimum (1e-3 of the interval)
    each, with steep derivatives at their knots, so the slope there falls to ~1e-6 while
    float32 resolves y near 5 only to 4.8e-7."""
    num_bins = 8
    heights = jnp.array([5.0, 5.0, 5.0, -20.0, -20.0, -20.0, -20.0, -20.0])
    raw = jnp.concatenate([jnp.zeros(num_bins), heights, jnp.full(num_bins - 1, 20.0)])
    return Spline(1, num_bins=num_bins, bound=BOUND, params=raw[None])


def test_inverse_is_inexact_where_the_flow_squeezes_and_forward_is_reported(passes):
    flow = flows.Flow(_squeezing_spline())
    points = jnp.linspace(-1.2, 1.5, 28)[:, None]  # inside the squeezed bins
    x, forward, inverse = passes.both_passes(flow.bijection, points)
    # The documented failure: the inverse cannot recover u from the rounded x (the
    # disagreement here reaches about 0.1 nats, a thousand times the tolerance above).
    assert np.max(np.abs(np.asarray(inverse - forward))) > 0.01

    key = jax.random.key(3)
    draws, log_q = flow.sample_and_log_prob(key, 4000)
    inverse_log_q = flow.log_prob(draws)
    assert np.max(np.abs(np.asarray(inverse_log_q - log_q))) > 0.01  # some draws hit it
    # STL / DReG's path term reports the forward value, with the path gradient.
    frozen_draws, frozen_log_q = flow.sample_and_frozen_log_prob(key, 4000)
    np.testing.assert_array_equal(frozen_draws, draws)
    np.testing.assert_array_equal(frozen_log_q, log_q)
    # numpyro: a draw's intermediates carry the forward value, and log_prob returns it.
    distribution = FlowDistribution(flow)
    value, intermediates = distribution.sample_with_intermediates(key, (4000,))
    np.testing.assert_array_equal(value, draws)
    np.testing.assert_array_equal(distribution.log_prob(value, intermediates), log_q)
    np.testing.assert_array_equal(distribution.log_prob(value), inverse_log_q)


def test_saturated_sigmoid_draws_keep_their_forward_log_density(passes):
    points = jnp.array([[20.0], [40.0], [-110.0]])  # 1.0, 1.0 and 0.0 in float32
    x, forward, inverse = passes.both_passes(Sigmoid(1), points)
    assert np.all(np.isfinite(np.asarray(forward)))
    assert not np.any(np.isfinite(np.asarray(inverse)))  # the inverse is undefined at 0 and 1
    distribution = FlowDistribution(flows.Flow(Sigmoid(1), passes.FixedDraws(points)))
    value, intermediates = distribution.sample_with_intermediates(KEY, (3,))
    np.testing.assert_array_equal(distribution.log_prob(value, intermediates), forward)


def test_frozen_log_prob_has_the_path_gradient(passes):
    """sample_and_frozen_log_prob: gradient of log q through the draw only, i.e. the
    gradient of ``log_prob`` with stopped parameters at ``x = f_phi(u)`` (STL's term)."""
    bijection = Chain([Spline(2, params=0.5 * jax.random.normal(KEY, (2, 23))), LULinear(2, key=KEY)])
    flow = passes.trained_like(flows.Flow(bijection), jax.random.key(4))
    params, static = eqx.partition(flow, eqx.is_inexact_array)

    def value(p):
        return jnp.sum(eqx.combine(p, static).sample_and_frozen_log_prob(KEY, 8)[1])

    def reference(p):
        live = eqx.combine(p, static)
        draws = live.sample(KEY, 8)
        return jnp.sum(jax.lax.stop_gradient(live).log_prob(draws))

    np.testing.assert_allclose(value(params), reference(params), rtol=1e-5)
    # A conditional flow at a fixed context reports its draws' forward value too.
    conditional = flows.spline_flow(KEY, 2, num_layers=1, width=8, context_dim=1)
    conditioned = passes.trained_like(conditional, jax.random.key(5)).condition(jnp.array([0.7]))
    draws, log_q = conditioned.sample_and_log_prob(KEY, 8)
    frozen_draws, frozen_log_q = conditioned.sample_and_frozen_log_prob(KEY, 8)
    np.testing.assert_array_equal(frozen_draws, draws)
    np.testing.assert_array_equal(frozen_log_q, log_q)
    got, want = jax.grad(value)(params), jax.grad(reference)(params)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

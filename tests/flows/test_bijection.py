"""Every bijection: log-determinant equals log|det J| from jax.jacfwd, and the
inverse undoes the forward map; composition rules of Chain, Invert and Scan."""

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
    Identity,
    Invert,
    LULinear,
    MaskedAutoregressive,
    MaskedCoupling,
    Permutation,
    Planar,
    Radial,
    Scan,
    Sigmoid,
    Softplus,
    Spline,
    Tanh,
    TriangularAffine,
)

DIM = 4
CONTEXT_DIM = 2
KEY = jax.random.key(0)


def perturb(module, key, scale):
    """Add Gaussian noise to every float array, so no bijection sits at its identity init."""
    leaves, treedef = jax.tree_util.tree_flatten(module)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) if eqx.is_inexact_array(leaf) else leaf
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def _coupling_stack(key):
    return Scan.build(
        lambda k: Chain([Coupling(k, DIM, transformer="spline", width=8), Permutation.random(k, DIM)]),
        key, 3,
    )


BIJECTIONS = {
    "identity": lambda: Identity(DIM),
    "affine": lambda: Affine.init(DIM),
    "exp": lambda: Exp(DIM),
    "softplus": lambda: Softplus(DIM),
    "sigmoid": lambda: Sigmoid(DIM),
    "tanh": lambda: Tanh(DIM),
    "spline": lambda: Spline(DIM, num_bins=6, bound=3.0),
    "permutation": lambda: Permutation.random(KEY, DIM),
    "lu_linear": lambda: LULinear(DIM, key=KEY),
    "triangular_affine": lambda: TriangularAffine(jnp.zeros(DIM), jnp.zeros(DIM), jnp.zeros((DIM, DIM))),
    "coupling_affine": lambda: Coupling(KEY, DIM, width=8),
    "coupling_spline": lambda: Coupling(KEY, DIM, transformer="spline", width=8, bound=3.0),
    "coupling_split_1": lambda: Coupling(KEY, DIM, split=1, width=8),
    "masked_coupling_affine": lambda: MaskedCoupling(KEY, DIM, width=8),
    "masked_coupling_spline": lambda: MaskedCoupling(KEY, DIM, transformer="spline", width=8),
    "autoregressive_affine": lambda: MaskedAutoregressive(KEY, DIM, width=8),
    "autoregressive_spline": lambda: MaskedAutoregressive(KEY, DIM, transformer="spline", width=8),
    "maf_layer": lambda: Invert(MaskedAutoregressive(KEY, DIM, width=8)),
    "planar": lambda: Planar(KEY, DIM),
    "radial": lambda: Radial(KEY, DIM),
    "chain": lambda: Chain([Affine.init(DIM), Spline(DIM), LULinear(DIM, key=KEY)]),
    "invert_chain": lambda: Invert(Chain([Softplus(DIM), Affine.init(DIM)])),
    "scan": lambda: _coupling_stack(KEY),
    # conditional versions
    "cond_coupling_spline": lambda: Coupling(KEY, DIM, transformer="spline", width=8, context_dim=CONTEXT_DIM),
    "cond_masked_coupling": lambda: MaskedCoupling(KEY, DIM, width=8, context_dim=CONTEXT_DIM),
    "cond_autoregressive_spline": lambda: MaskedAutoregressive(
        KEY, DIM, transformer="spline", width=8, context_dim=CONTEXT_DIM
    ),
    "cond_scan": lambda: flows.spline_flow(KEY, DIM, num_layers=2, width=8, context_dim=CONTEXT_DIM).bijection,
    "cond_maf": lambda: flows.masked_autoregressive_flow(
        KEY, DIM, num_layers=2, width=8, context_dim=CONTEXT_DIM
    ).bijection,
}


def _instance(name):
    return perturb(BIJECTIONS[name](), jax.random.key(1), 0.1)


def _points(name):
    x = 0.8 * jax.random.normal(jax.random.key(2), (3, DIM))
    if name == "invert_chain":  # the inverse of softplus needs positive inputs: map them there
        x = jax.nn.softplus(x) * 1.5 + 0.5
    return x


def _context(bijection):
    return None if bijection.context_dim is None else jnp.array([0.4, -1.1])


@eqx.filter_jit
def _log_dets_and_round_trip(bijection, x, context):
    """For each point: log-det, log|det jacfwd|, both again for the inverse, and f^-1(f(x))."""

    def one(point):
        y, log_det = bijection.forward_and_log_det(point, context)
        reference = jnp.linalg.slogdet(jax.jacfwd(lambda v: bijection.forward(v, context))(point))
        x_back, inverse_log_det = bijection.inverse_and_log_det(y, context)
        inverse_reference = jnp.linalg.slogdet(
            jax.jacfwd(lambda v: bijection.inverse(v, context))(y)
        )[1]
        return log_det, reference[0], reference[1], inverse_log_det, inverse_reference, x_back

    return jax.vmap(one)(x)


@pytest.mark.parametrize("name", sorted(BIJECTIONS))
def test_log_det_matches_jacobian_and_inverse_undoes_forward(name):
    bijection = _instance(name)
    x = _points(name)
    log_det, sign, reference, inverse_log_det, inverse_reference, x_back = (
        _log_dets_and_round_trip(bijection, x, _context(bijection))
    )
    assert np.all(np.asarray(sign) != 0.0)
    np.testing.assert_allclose(log_det, reference, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(inverse_log_det, inverse_reference, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(inverse_log_det, -log_det, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(x_back, x, atol=2e-5, rtol=2e-5)


def test_conditional_bijection_depends_on_context():
    bijection = _instance("cond_coupling_spline")
    x = _points("cond_coupling_spline")[0]
    y1 = bijection.forward(x, jnp.array([0.0, 0.0]))
    y2 = bijection.forward(x, jnp.array([2.0, -2.0]))
    assert float(jnp.max(jnp.abs(y1 - y2))) > 1e-3


def test_new_layers_start_at_identity():
    x = _points("coupling_affine")[0]
    for name in ("coupling_spline", "masked_coupling_spline", "autoregressive_spline", "scan", "radial"):
        y, log_det = BIJECTIONS[name]().forward_and_log_det(x) if name != "scan" else (
            _coupling_stack(KEY).forward_and_log_det(x)
        )
        if name == "scan":  # permutations only reorder
            np.testing.assert_allclose(jnp.sort(y), jnp.sort(x), atol=1e-6)
        else:
            np.testing.assert_allclose(y, x, atol=1e-6)
        np.testing.assert_allclose(log_det, 0.0, atol=1e-6)


def test_chain_order_and_invert():
    a, b = Affine(jnp.full(DIM, 1.0), jnp.zeros(DIM)), Exp(DIM)
    x = jnp.linspace(-1.0, 1.0, DIM)
    np.testing.assert_allclose(Chain([a, b]).forward(x), jnp.exp(x + 1.0), rtol=1e-6)
    np.testing.assert_allclose(Invert(Chain([a, b])).forward(jnp.exp(x + 1.0)), x, atol=1e-6)
    y, log_det = Invert(b).forward_and_log_det(jnp.exp(x))
    np.testing.assert_allclose(log_det, -jnp.sum(x), atol=1e-6)


def test_scan_equals_chain_of_its_layers():
    stack = perturb(_coupling_stack(KEY), jax.random.key(3), 0.1)
    chain = Chain([stack.layer(i) for i in range(stack.num_layers)])
    x = _points("scan")[0]
    y_scan, ld_scan = stack.forward_and_log_det(x)
    y_chain, ld_chain = chain.forward_and_log_det(x)
    np.testing.assert_allclose(y_scan, y_chain, atol=1e-5)
    np.testing.assert_allclose(ld_scan, ld_chain, atol=1e-5)
    np.testing.assert_allclose(stack.inverse(y_scan), chain.inverse(y_chain), atol=1e-5)


def test_program_size_does_not_grow_with_depth():
    """lax.scan traces the layer once: the jaxpr of a 2- and a 12-layer flow are the same size."""

    def size(num_layers):
        flow = flows.spline_flow(KEY, 3, num_layers=num_layers, width=8)
        jaxpr, _, _ = eqx.filter_make_jaxpr(lambda f: f.sample_and_log_prob(KEY, 4))(flow)
        return len(jaxpr.eqns)

    assert size(2) == size(12)


def test_chain_rejects_mismatched_members():
    with pytest.raises(ValueError, match="dim"):
        Chain([Affine.init(2), Affine.init(3)])
    with pytest.raises(ValueError, match="bijections"):
        Chain([])
    with pytest.raises(TypeError, match=r"bijections\[1\]"):
        Chain([Affine.init(2), "exp"])
    with pytest.raises(ValueError, match="context_dim"):
        Chain([Coupling(KEY, 2, context_dim=1), Coupling(KEY, 2, context_dim=3)])


def test_scan_rejects_unstacked_layers():
    with pytest.raises(ValueError, match="num_layers"):
        Scan(Affine.init(3), num_layers=2)
    with pytest.raises(TypeError, match="layers"):
        Scan("not a bijection", num_layers=2)
    with pytest.raises(TypeError, match="bijection"):
        Invert(3)

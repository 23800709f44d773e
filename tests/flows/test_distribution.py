"""Flow as a distribution: normalised, consistent between sampling and density,
context handling, exact save/reload, and bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flows
import probinf
from flows import Affine, Flow, StandardNormal

KEY = jax.random.key(0)


def perturb(module, key, scale):
    leaves, treedef = jax.tree_util.tree_flatten(module)
    keys = jax.random.split(key, len(leaves))
    noisy = [leaf + scale * jax.random.normal(k, leaf.shape) if eqx.is_inexact_array(leaf) else leaf
             for leaf, k in zip(leaves, keys, strict=True)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def test_density_integrates_to_one():
    flow = perturb(flows.spline_flow(KEY, 2, num_layers=2, width=8, bound=3.0), jax.random.key(1), 0.3)
    grid = np.linspace(-10.0, 10.0, 801)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    log_q = flow.log_prob(jnp.asarray(np.stack([a, b], -1), jnp.float32))
    density = np.exp(np.asarray(log_q, np.float64))
    total = np.trapezoid(np.trapezoid(density, grid, axis=1), grid)
    assert abs(total - 1.0) < 2e-3


@pytest.mark.parametrize("builder", ["coupling", "iaf", "maf", "planar"])
def test_sampled_log_prob_equals_log_prob(builder):
    make = {
        "coupling": lambda: flows.coupling_flow(KEY, 3, num_layers=2, width=8),
        "iaf": lambda: flows.inverse_autoregressive_flow(KEY, 3, num_layers=2, width=8, transformer="spline"),
        "maf": lambda: flows.masked_autoregressive_flow(KEY, 3, num_layers=2, width=8),
        "planar": lambda: flows.planar_flow(KEY, 3, num_layers=3),
    }[builder]
    flow = perturb(make(), jax.random.key(2), 0.2)
    x, log_q = flow.sample_and_log_prob(jax.random.key(3), 16)
    assert x.shape == (16, 3) and log_q.shape == (16,)
    np.testing.assert_allclose(log_q, flow.log_prob(x), atol=2e-4, rtol=1e-5)


def test_affine_flow_is_the_gaussian_it_encodes():
    flow = Flow(Affine.init(2, loc=[1.0, -2.0], scale=[0.5, 3.0]))
    x = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    expected = (-0.5 * ((x - jnp.array([1.0, -2.0])) / jnp.array([0.5, 3.0])) ** 2
                - jnp.log(jnp.array([0.5, 3.0])) - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(flow.log_prob(x), expected, rtol=1e-6)
    draws = flow.sample(KEY, 40_000)
    mean, sd = np.asarray(draws.mean(0)), np.asarray(draws.std(0))
    standard_errors = np.array([0.5, 3.0]) / np.sqrt(40_000)
    assert np.all(np.abs(mean - [1.0, -2.0]) < 5 * standard_errors)
    np.testing.assert_allclose(sd, [0.5, 3.0], rtol=5 / np.sqrt(2 * 40_000))


def test_learnable_base():
    base = probinf.MeanFieldGaussian.init(2, loc=[1.0, 2.0], scale=2.0)
    flow = Flow(flows.Identity(2), base=base)
    x = jnp.array([0.5, 0.5])
    np.testing.assert_allclose(flow.log_prob(x), base.log_prob(x), rtol=1e-6)


def test_conditional_flow_shapes_and_broadcasting():
    flow = perturb(flows.spline_flow(KEY, 3, num_layers=2, width=8, context_dim=2), jax.random.key(4), 0.2)
    contexts = jnp.array([[0.0, 1.0], [2.0, -1.0], [1.0, 1.0], [0.5, 0.5]])
    x, log_q = flow.sample_and_log_prob(KEY, 5, contexts)
    assert x.shape == (5, 4, 3) and log_q.shape == (5, 4)
    np.testing.assert_allclose(flow.log_prob(x, contexts), log_q, atol=2e-4)
    one = flow.sample(KEY, 5, contexts[1])
    assert one.shape == (5, 3)
    assert flow.log_prob(x[:, 0], contexts[0]).shape == (5,)        # one context, many points
    assert flow.log_prob(x[0, 0], contexts).shape == (4,)           # one point, many contexts
    conditioned = flow.condition(contexts[1])
    np.testing.assert_allclose(conditioned.log_prob(x[:, 1]), flow.log_prob(x[:, 1], contexts[1]), atol=1e-6)
    assert conditioned.dim == 3


def test_context_errors():
    flow = flows.spline_flow(KEY, 3, num_layers=1, width=8, context_dim=2)
    with pytest.raises(ValueError, match="context"):
        flow.sample(KEY, 3)
    with pytest.raises(ValueError, match="context"):
        flow.log_prob(jnp.zeros(3), jnp.zeros(5))
    with pytest.raises(ValueError, match="context"):
        flow.condition(jnp.zeros((2, 2)))
    plain = flows.spline_flow(KEY, 3, num_layers=1, width=8)
    with pytest.raises(ValueError, match="context"):
        plain.log_prob(jnp.zeros(3), jnp.zeros(2))
    with pytest.raises(ValueError, match="`x`"):
        plain.log_prob(jnp.zeros(4))
    with pytest.raises(ValueError, match="`n`"):
        plain.sample(KEY, 0)


def test_flow_construction_errors():
    with pytest.raises(TypeError, match="bijection"):
        Flow(jnp.zeros(3))
    with pytest.raises(ValueError, match="base"):
        Flow(Affine.init(3), base=StandardNormal(2))
    with pytest.raises(ValueError, match="base"):
        Flow(Affine.init(2), base=probinf.Bernoulli.init(2))
    with pytest.raises(TypeError, match="base"):
        Flow(Affine.init(2), base="normal")


def test_save_and_reload_exactly(tmp_path):
    flow = perturb(flows.spline_flow(KEY, 3, num_layers=2, width=8, context_dim=1), jax.random.key(5), 0.2)
    path = tmp_path / "flow.pkl"
    probinf.save(path, flow)
    loaded = probinf.load(path)
    assert type(loaded) is type(flow)
    for a, b in zip(jax.tree_util.tree_leaves(flow), jax.tree_util.tree_leaves(loaded), strict=True):
        if eqx.is_array(a):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        else:  # the conditioners' activations (jax.nn.relu, equinox's identity), stored by reference
            assert callable(a) and a is b
    x = jax.random.normal(KEY, (4, 3))
    context = jnp.ones((4, 1))
    np.testing.assert_array_equal(loaded.log_prob(x, context), flow.log_prob(x, context))

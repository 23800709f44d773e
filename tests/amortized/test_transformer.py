"""The Distribution Transformer's structure: identity start, symmetries, masking, checks, saving."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import probinf
from amortized import DistributionTransformer, GaussianMixture
from amortized.transformer import component_coordinates, mixture_from_coordinates

PRIOR = GaussianMixture.from_covariances(
    [0.2, 0.5, 0.3],
    [[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]],
    [np.eye(2), [[2.0, 0.5], [0.5, 1.0]], [[0.3, -0.1], [-0.1, 0.6]]],
)
DATA = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)))


def assert_same_mixture(a, b, atol=1e-6):
    np.testing.assert_allclose(a.log_weights, b.log_weights, atol=atol)
    np.testing.assert_allclose(a.means, b.means, atol=atol)
    np.testing.assert_allclose(a.scale_tril, b.scale_tril, atol=atol)


def take(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def perturbed(model, key, scale=0.3):
    """The model with every weight moved at random, so no branch is zero any more."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)


@pytest.fixture(scope="module")
def model():
    return DistributionTransformer(2, 3, key=jax.random.key(0), d_model=16, num_heads=2)


@pytest.fixture(scope="module")
def trained_like(model):
    return perturbed(model, jax.random.key(1))


def test_coordinates_round_trip():
    back = mixture_from_coordinates(component_coordinates(PRIOR), PRIOR.component_mask, 2)
    assert_same_mixture(back, PRIOR)


def test_untrained_model_returns_the_prior(model):
    assert_same_mixture(model(PRIOR, DATA), PRIOR)
    assert_same_mixture(model(PRIOR, DATA[:1]), PRIOR)
    padded = PRIOR.pad(5)
    out = model(padded, DATA, jnp.array([True, True, False, True, False, False]))
    assert_same_mixture(out, padded)


def test_batched_call_equals_single_calls(trained_like):
    priors = jax.tree_util.tree_map(lambda x: jnp.stack([x, x[::-1]]), PRIOR)
    data = jnp.stack([DATA, -DATA])
    mask = jnp.array([[True] * 6, [True] * 3 + [False] * 3])
    batched = trained_like(priors, data, mask)
    for i in range(2):
        single = trained_like(take(priors, i), data[i], mask[i])
        assert_same_mixture(take(batched, i), single, atol=1e-5)
    shared = trained_like(PRIOR, data, mask)
    assert_same_mixture(jax.tree_util.tree_map(lambda x: x[0], shared), trained_like(PRIOR, DATA), atol=1e-5)


def test_component_permutation_equivariance(trained_like):
    order = np.array([2, 0, 1])
    permuted = jax.tree_util.tree_map(lambda x: x[order], PRIOR)
    out = trained_like(PRIOR, DATA)
    out_permuted = trained_like(permuted, DATA)
    assert_same_mixture(out_permuted, jax.tree_util.tree_map(lambda x: x[order], out), atol=1e-5)
    assert not np.allclose(out.means, PRIOR.means, atol=1e-3)  # the perturbed model does update


def test_observation_permutation_invariance_and_masking(trained_like):
    out = trained_like(PRIOR, DATA)
    assert_same_mixture(trained_like(PRIOR, DATA[::-1]), out, atol=1e-5)
    mask = jnp.array([True, False, True, True, False, True])
    garbage = DATA.at[1].set(100.0).at[4].set(-7.0)
    assert_same_mixture(trained_like(PRIOR, garbage, mask), trained_like(PRIOR, DATA[mask]), atol=1e-5)


def test_padding_components_do_not_change_real_ones(trained_like):
    out = trained_like(PRIOR, DATA)
    padded = trained_like(PRIOR.pad(5), DATA)
    assert_same_mixture(jax.tree_util.tree_map(lambda x: x[:3], padded), out, atol=1e-5)
    assert np.all(np.isneginf(padded.log_weights[3:]))


def test_parametric_prior_model():
    model = DistributionTransformer(1, 1, key=jax.random.key(2), d_model=16, num_heads=2,
                                    prior_param_dim=2, num_components=4)
    post = model(jnp.array([0.5, 1.0]), jnp.ones((3, 1)))
    assert post.num_components == 4 and post.dim == 1
    np.testing.assert_allclose(jnp.sum(post.weights), 1.0, rtol=1e-6)
    approx = model.prior_approximation(jnp.array([0.5, 1.0]))
    np.testing.assert_allclose(model.forward(jnp.array([0.5, 1.0]), jnp.ones((3, 1)), jnp.ones(3, bool))[0].means, approx.means)
    batch = model(jnp.zeros((4, 2)), jnp.ones((4, 3, 1)))
    assert batch.means.shape == (4, 4, 1)


def test_symmetric_axes_make_the_posterior_exactly_sign_invariant(tmp_path):
    model = DistributionTransformer(3, 2, key=jax.random.key(3), d_model=16, num_heads=2,
                                    prior_param_dim=2, num_components=3, symmetric_axes=(1,))
    model = perturbed(model, jax.random.key(4))
    params = jnp.array([-1.0, 1.0])
    post = model(params, DATA[:, :2])
    assert post.num_components == 6
    z = jnp.asarray(np.random.default_rng(2).normal(size=(5, 3)))
    np.testing.assert_allclose(post.log_prob(z * jnp.array([1.0, -1.0, 1.0])), post.log_prob(z), rtol=1e-5, atol=1e-5)
    assert not np.allclose(post.log_prob(z * jnp.array([-1.0, 1.0, 1.0])), post.log_prob(z), atol=1e-3)
    prior = model.prior_approximation(params)
    np.testing.assert_allclose(prior.log_prob(z * jnp.array([1.0, -1.0, 1.0])), prior.log_prob(z), rtol=1e-5, atol=1e-5)
    probinf.save(tmp_path / "sym.pkl", model)
    assert_same_mixture(probinf.load(tmp_path / "sym.pkl")(params, DATA[:, :2]), post, atol=0)


def test_observation_readout_starts_at_the_prior_and_adds_a_linear_map_of_an_observation_average(tmp_path):
    plain = DistributionTransformer(2, 3, key=jax.random.key(5), d_model=16, num_heads=2)
    model = DistributionTransformer(2, 3, key=jax.random.key(5), d_model=16, num_heads=2, observation_readout=True)
    assert_same_mixture(model(PRIOR, DATA), PRIOR)
    # Every other weight moved, the read-out set to a known map: uniform attention over the
    # real observations and a fixed matrix, so the means move by exactly A @ mean(y).
    moved = eqx.tree_at(lambda m: m.observation_readout, perturbed(model, jax.random.key(6)), model.observation_readout)
    matrix = jnp.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    moved = eqx.tree_at(lambda m: m.observation_readout.mix.bias, moved, matrix.reshape(-1))
    without = eqx.tree_at(lambda m: m.observation_readout, moved, None)
    assert without.observation_readout is None and plain.observation_readout is None
    mask = jnp.array([True, False, True, True, False, True])
    garbage = DATA.at[1].set(100.0).at[4].set(-7.0)
    out, base = moved(PRIOR, garbage, mask), without(PRIOR, garbage, mask)
    np.testing.assert_allclose(out.means - base.means, jnp.broadcast_to(matrix @ DATA[mask].mean(0), (3, 2)), atol=1e-5)
    np.testing.assert_allclose(out.scale_tril, base.scale_tril, atol=1e-6)
    np.testing.assert_allclose(out.log_weights, base.log_weights, atol=1e-6)
    # With learned attention too: still invariant to observation order, blind to padding.
    trained = perturbed(model, jax.random.key(7))
    assert_same_mixture(trained(PRIOR, garbage, mask), trained(PRIOR, DATA[mask][::-1]), atol=1e-5)
    probinf.save(tmp_path / "readout.pkl", trained)
    assert_same_mixture(probinf.load(tmp_path / "readout.pkl")(PRIOR, DATA), trained(PRIOR, DATA), atol=0)
    with pytest.raises(TypeError, match="observation_readout"):
        DistributionTransformer(2, 3, key=jax.random.key(5), observation_readout="yes")


def test_save_and_load_reproduce_the_model_exactly(trained_like, tmp_path):
    probinf.save(tmp_path / "dt.pkl", trained_like)
    loaded = probinf.load(tmp_path / "dt.pkl")
    for a, b in zip(jax.tree_util.tree_leaves(trained_like), jax.tree_util.tree_leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert_same_mixture(loaded(PRIOR, DATA), trained_like(PRIOR, DATA), atol=0)


def test_bad_input_is_rejected(model):
    with pytest.raises(ValueError, match="observations"):
        model(PRIOR, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="observations"):
        model(PRIOR, jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="mask"):
        model(PRIOR, DATA, jnp.zeros(6, bool))
    with pytest.raises(ValueError, match="mask"):
        model(PRIOR, DATA, jnp.ones(5, bool))
    with pytest.raises(TypeError, match="mask"):
        model(PRIOR, DATA, jnp.ones(6))
    with pytest.raises(ValueError, match="prior"):
        model(GaussianMixture.gaussian([0.0], 1.0), DATA)
    with pytest.raises(TypeError, match="prior"):
        model(jnp.zeros(2), DATA)
    with pytest.raises(ValueError, match="observations"):
        model(PRIOR, DATA.at[0, 0].set(jnp.nan))
    model(PRIOR, DATA.at[0, 0].set(jnp.nan), jnp.arange(6) > 0)  # masked out: accepted
    with pytest.raises(ValueError, match="mask"):  # one of two data sets has no observation
        model(PRIOR, jnp.stack([DATA, DATA]), jnp.stack([jnp.ones(6, bool), jnp.zeros(6, bool)]))
    priors = jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), PRIOR)
    with pytest.raises(ValueError, match="prior"):
        model(priors, jnp.stack([DATA] * 3))
    with pytest.raises(ValueError, match="batch"):
        model(priors, DATA)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0, obs_dim=1), "dim"),
        (dict(dim=1, obs_dim=1, d_model=10, num_heads=4), "num_heads"),
        (dict(dim=1, obs_dim=1, prior_param_dim=2), "prior_param_dim"),
        (dict(dim=1, obs_dim=1, num_decoder_layers=-1), "num_decoder_layers"),
        (dict(dim=2, obs_dim=1, symmetric_axes=(0,)), "symmetric_axes"),
        (dict(dim=2, obs_dim=1, prior_param_dim=2, num_components=2, symmetric_axes=(2,)), "symmetric_axes"),
        (dict(dim=2, obs_dim=1, prior_param_dim=2, num_components=2, symmetric_axes=(1, 1)), "symmetric_axes"),
        (dict(dim=2, obs_dim=1, prior_param_dim=2, num_components=2, symmetric_axes=1), "symmetric_axes"),
    ],
)
def test_bad_construction_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributionTransformer(key=jax.random.key(0), **kwargs)

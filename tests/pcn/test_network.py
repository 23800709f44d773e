"""probinf.pcn.network: node shapes, energies against hand-written formulas, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf import pcn


def _weights(net):
    return [(np.asarray(layer.linear.weight), np.asarray(layer.linear.bias)) for layer in net.layers]


def test_mlp_node_shapes_and_forward_match_numpy():
    net = pcn.mlp(jax.random.key(0), [4, 6, 3], activation=jnp.tanh)
    assert net.node_shapes == ((4,), (6,), (3,))
    assert net.num_layers == 2
    x = np.linspace(-1.0, 1.0, 4)
    (w1, b1), (w2, b2) = _weights(net)
    hidden = np.tanh(w1 @ x + b1)
    values = net.forward(jnp.asarray(x))
    np.testing.assert_allclose(values[1], hidden, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values[2], w2 @ hidden + b2, rtol=1e-5, atol=1e-6)


def test_gaussian_energies_and_errors_match_formula():
    net = pcn.mlp(jax.random.key(1), [3, 5, 2], variances=[0.5, 2.0], prior_variance=4.0)
    rng = np.random.default_rng(0)
    acts = [rng.normal(size=s).astype(np.float32) for s in ((3,), (5,), (2,))]
    (w1, b1), (w2, b2) = _weights(net)
    mu1 = np.tanh(w1 @ acts[0] + b1)
    mu2 = w2 @ acts[1] + b2
    expected = [
        0.5 * np.sum(acts[0] ** 2) / 4.0,  # prior mean starts at zero
        0.5 * np.sum((acts[1] - mu1) ** 2) / 0.5,
        0.5 * np.sum((acts[2] - mu2) ** 2) / 2.0,
    ]
    energies, errors = net.energies_and_errors(tuple(map(jnp.asarray, acts)))
    np.testing.assert_allclose(energies, expected, rtol=1e-5)
    np.testing.assert_allclose(errors[1], acts[1] - mu1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.energy(tuple(map(jnp.asarray, acts))), sum(expected), rtol=1e-5)


def test_categorical_energy_is_cross_entropy():
    net = pcn.mlp(jax.random.key(2), [3, 4], output="categorical")
    x = np.array([0.3, -1.0, 2.0], np.float32)
    label = np.eye(4, dtype=np.float32)[2]
    w, b = _weights(net)[0]
    logits = w @ x + b
    log_probs = logits - np.log(np.sum(np.exp(logits)))
    energies, errors = net.energies_and_errors((jnp.asarray(x), jnp.asarray(label)))
    np.testing.assert_allclose(energies[1], -log_probs[2], rtol=1e-5)
    np.testing.assert_allclose(errors[1], label - np.exp(log_probs), rtol=1e-5, atol=1e-6)
    assert float(energies[0]) == 0.0  # no prior: node 0 carries no energy
    np.testing.assert_allclose(net.feedforward_loss(jnp.asarray(x), jnp.asarray(label)), -log_probs[2], rtol=1e-5)


def test_conv_network_shapes_chain_into_dense():
    keys = jax.random.split(jax.random.key(3), 3)
    layers = [
        pcn.Conv(1, 1, 4, 3, key=keys[0], activation=jnp.tanh),  # (1, 10) -> (4, 8)
        pcn.Conv(1, 4, 2, 3, key=keys[1], stride=2, activation=jnp.tanh),  # -> (2, 3)
        pcn.Dense(6, 5, key=keys[2]),  # flattens (2, 3)
    ]
    net = pcn.PCN(layers, (1, 10), output="categorical")
    assert net.node_shapes == ((1, 10), (4, 8), (2, 3), (5,))
    decoder = pcn.Conv(1, 2, 1, 3, key=keys[0], transpose=True)
    assert pcn.PCN([decoder], (2, 8)).node_shapes == ((2, 8), (1, 10))


def test_any_equinox_module_can_be_a_layer():
    key = jax.random.key(4)
    layer = eqx.nn.Sequential([eqx.nn.Linear(3, 4, key=key), eqx.nn.Lambda(jax.nn.relu)])
    net = pcn.PCN([layer], 3)
    assert net.node_shapes == ((3,), (4,))


def test_layer_shape_mismatch_names_the_layer():
    keys = jax.random.split(jax.random.key(5), 2)
    with pytest.raises(ValueError, match=r"layers\[1\].*shape \(5,\)"):
        pcn.PCN([pcn.Dense(3, 5, key=keys[0]), pcn.Dense(4, 2, key=keys[1])], (3,))
    with pytest.raises(ValueError, match=r"layers\[0\].*input_shape"):
        pcn.PCN([pcn.Dense(3, 5, key=keys[0])], (7,))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(output="poisson"), "output"),
        (dict(variances=[1.0]), "variances"),
        (dict(variances=[1.0, -1.0]), r"variances\[1\]"),
        (dict(prior_variance=0.0), "prior_variance"),
        (dict(prior_mean=jnp.zeros(3)), "prior_mean"),
        (dict(prior_variance=1.0, prior_mean=jnp.zeros(2)), "prior_mean"),
    ],
)
def test_bad_network_options(kwargs, match):
    keys = jax.random.split(jax.random.key(6), 2)
    layers = [pcn.Dense(3, 5, key=keys[0]), pcn.Dense(5, 2, key=keys[1])]
    with pytest.raises(ValueError, match=match):
        pcn.PCN(layers, (3,), **kwargs)


def test_bad_layers_and_shapes():
    with pytest.raises(ValueError, match="layers"):
        pcn.PCN([], (3,))
    with pytest.raises(TypeError, match=r"layers\[0\]"):
        pcn.PCN([3], (3,))
    with pytest.raises(ValueError, match="input_shape"):
        pcn.PCN([pcn.Dense(3, 2, key=jax.random.key(0))], (0,))
    with pytest.raises(ValueError, match="sizes"):
        pcn.mlp(jax.random.key(0), [3])
    conv = pcn.Conv(1, 1, 2, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="categorical"):
        pcn.PCN([conv], (1, 6), output="categorical")


def test_an_activation_must_be_a_function():
    """The activation rule of every package: functions, never names."""
    with pytest.raises(TypeError, match="`activation` must be a function"):
        pcn.mlp(jax.random.key(0), [2, 3], activation="tanh")
    with pytest.raises(TypeError, match="`output_activation` must be a function"):
        pcn.mlp(jax.random.key(0), [2, 3], output_activation="softmax")
    with pytest.raises(TypeError, match="`activation` must be a function"):
        pcn.Dense(2, 3, key=jax.random.key(0), activation=None)

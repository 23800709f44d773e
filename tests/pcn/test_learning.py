"""probinf.pcn.learning: PC equals backprop in the small-error limit, hand-written PC/iPC
steps, exact agreement where theory says so, and bad input."""


import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from probinf import pcn


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(tree)])


def _dense_params(net):
    return [(layer.linear.weight, layer.linear.bias) for layer in net.layers]


def _feedforward(params, x, activation=jnp.tanh):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w.T + b
        if i < len(params) - 1:
            h = activation(h)
    return h


def _bp_loss(params, x, y, output):
    """The feed-forward loss, written independently of the library."""
    out = _feedforward(params, x)
    if output == "gaussian":
        return jnp.mean(0.5 * jnp.sum((y - out) ** 2, axis=1))
    return jnp.mean(-jnp.sum(y * jax.nn.log_softmax(out), axis=1))


@pytest.mark.parametrize("output", ["gaussian", "categorical"])
def test_pc_weight_update_equals_backprop_in_the_small_output_error_limit(output):
    """Whittington & Bogacz (2017): with the output energy scaled by beta -> 0 (output
    variance 1/beta), the relaxed hidden errors are beta times the backprop deltas, so the PC
    weight gradient over beta tends to the backprop gradient, with an O(beta) error."""
    with jax.enable_x64(True):
        kx, ky, kn = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (6, 4))
        y = jax.random.normal(ky, (6, 3)) if output == "gaussian" else jax.nn.one_hot(jnp.arange(6) % 3, 3)
        errors = []
        for beta in (1e-3, 1e-4):
            net = pcn.mlp(kn, [4, 6, 5, 3], output=output, variances=[1.0, 1.0, 1.0 / beta])
            relaxed = pcn.infer(net, x, y, steps=300, step_size=0.3, method="heun")
            pc_grad = _flat(_dense_params(pcn.parameter_gradients(net, relaxed.activities))) / beta
            bp_grad = _flat(jax.jit(jax.grad(_bp_loss), static_argnums=3)(_dense_params(net), x, y, output))
            errors.append(float(np.linalg.norm(pc_grad - bp_grad) / np.linalg.norm(bp_grad)))
        # First order in beta: ten times smaller beta, ten times smaller error.
        assert 7 < errors[0] / errors[1] < 13
        assert errors[1] < 1e-3


def test_pc_equals_backprop_in_a_convolutional_network():
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(1), 4)
        beta = 1e-5
        layers = [pcn.Conv(1, 1, 2, 3, key=keys[0], activation=jnp.tanh), pcn.Dense(12, 3, key=keys[1])]
        net = pcn.PCN(layers, (1, 8), output="categorical", variances=[1.0, 1.0 / beta])
        x, y = jax.random.normal(keys[2], (5, 1, 8)), jnp.arange(5) % 3
        relaxed = pcn.infer(net, x, y, steps=200, step_size=0.3, method="heun")
        params, static = eqx.partition(net, eqx.is_inexact_array)
        pc_grad = _flat(pcn.parameter_gradients(net, relaxed.activities)) / beta

        def bp_loss(params):
            model = eqx.combine(params, static)
            hidden = jax.vmap(lambda v: jnp.tanh(model.layers[0].conv(v)))(x)
            logits = jax.vmap(lambda h: model.layers[1].linear(h.ravel()))(hidden)
            return -jnp.mean(jnp.sum(jax.nn.one_hot(y, 3) * jax.nn.log_softmax(logits), axis=1))

        bp_grad = _flat(jax.jit(jax.grad(bp_loss))(params))
        assert float(np.linalg.norm(pc_grad - bp_grad) / np.linalg.norm(bp_grad)) < 1e-4


def _energy(params, activities, x, y):
    """Total energy per sample of a tanh MLP with unit variances, written by hand."""
    values = [x, *activities, y]
    total = 0.0
    for i, (w, b) in enumerate(params):
        mu = values[i] @ w.T + b
        if i < len(params) - 1:
            mu = jnp.tanh(mu)
        total = total + 0.5 * jnp.sum((values[i + 1] - mu) ** 2, axis=-1)
    return total


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("algorithm", ["pc", "ipc"])
def test_train_step_matches_a_hand_written_step(algorithm, method):
    keys = jax.random.split(jax.random.key(2), 3)
    net = pcn.mlp(keys[0], [3, 5, 4, 2])
    x, y = jax.random.normal(keys[1], (4, 3)), jax.random.normal(keys[2], (4, 2))
    eta, lr, steps = 0.1, 0.5, 3
    params = _dense_params(net)
    hidden = [jnp.tanh(x @ params[0][0].T + params[0][1])]
    hidden.append(jnp.tanh(hidden[0] @ params[1][0].T + params[1][1]))
    grad_x = jax.jit(jax.grad(lambda h, p: jnp.sum(_energy(p, h, x, y))))
    grad_p = jax.jit(jax.grad(lambda p, h: jnp.mean(_energy(p, h, x, y))))

    def activity_step(h, p):
        g0 = grad_x(h, p)
        euler = [a - eta * g for a, g in zip(h, g0, strict=True)]
        if method == "euler":
            return euler
        g1 = grad_x(euler, p)
        return [a - 0.5 * eta * (u + v) for a, u, v in zip(h, g0, g1, strict=True)]

    for _ in range(steps):
        if algorithm == "ipc":
            gp = grad_p(params, hidden)
            hidden = activity_step(hidden, params)
            params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, gp)
        else:
            hidden = activity_step(hidden, params)
    if algorithm == "pc":
        params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grad_p(params, hidden))

    optimizer = optax.sgd(lr)
    opt_state = optimizer.init(eqx.filter(net, eqx.is_inexact_array))
    trained, _, energies = pcn.train_step(
        jax.random.key(3), net, opt_state, optimizer, x, y,
        algorithm=algorithm, steps=steps, step_size=eta, method=method,
    )
    np.testing.assert_allclose(_flat(_dense_params(trained)), _flat(params), rtol=2e-5, atol=2e-6)
    assert energies.shape == (steps + 1, 4)
    final_params = params if algorithm == "ipc" else _dense_params(net)
    np.testing.assert_allclose(energies[-1].sum(), jnp.mean(_energy(final_params, hidden, x, y)), rtol=1e-5)


def test_without_hidden_nodes_pc_is_backprop_exactly():
    """With no hidden node every value is clamped, the energy is the loss, and PC's weight
    update is the backprop update."""
    keys = jax.random.split(jax.random.key(4), 3)
    net = pcn.mlp(keys[0], [4, 3], output="categorical")
    x, y = jax.random.normal(keys[1], (40, 4)), jnp.arange(40) % 3
    kwargs = dict(epochs=3, batch_size=8, steps=2)
    by_pc = pcn.train(keys[2], net, optax.adam(1e-2), x, y, algorithm="pc", **kwargs)
    by_bp = pcn.train(keys[2], net, optax.adam(1e-2), x, y, algorithm="backprop", **kwargs)
    np.testing.assert_allclose(_flat(_dense_params(by_pc.net)), _flat(_dense_params(by_bp.net)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_pc.final_energies[:, -1], by_bp.final_energies[:, -1], rtol=1e-5)


def test_train_on_one_full_batch_is_train_step():
    keys = jax.random.split(jax.random.key(5), 3)
    net = pcn.mlp(keys[0], [3, 6, 2], prior_variance=1.0)
    y = jax.random.normal(keys[1], (10, 2))
    optimizer = optax.adam(1e-2)
    result = pcn.train(keys[2], net, optimizer, None, y, batch_size=10, steps=4)
    opt_state = optimizer.init(eqx.filter(net, eqx.is_inexact_array))
    stepped, _, energies = pcn.train_step(keys[2], net, opt_state, optimizer, None, y, steps=4)
    np.testing.assert_allclose(_flat(eqx.filter(result.net, eqx.is_inexact_array)),
                               _flat(eqx.filter(stepped, eqx.is_inexact_array)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.energies[0], energies, rtol=1e-5, atol=1e-7)


def test_diverging_training_raises_and_keeps_the_last_finite_state():
    keys = jax.random.split(jax.random.key(6), 3)
    net = pcn.mlp(keys[0], [3, 4, 2])
    x, y = jax.random.normal(keys[1], (16, 3)), 5.0 * jax.random.normal(keys[2], (16, 2))
    with pytest.raises(pcn.NonFiniteEnergyError, match=r"epoch 0, batch 0.*step_size") as info:
        pcn.train(keys[0], net, optax.sgd(1e-3), x, y, batch_size=4, steps=300, step_size=3.0)
    assert info.value.result.num_epochs == 0
    np.testing.assert_array_equal(_flat(_dense_params(info.value.result.net)), _flat(_dense_params(net)))
    opt_state = optax.sgd(1e-3).init(eqx.filter(net, eqx.is_inexact_array))
    with pytest.raises(pcn.NonFiniteEnergyError, match="step_size"):
        pcn.train_step(keys[0], net, opt_state, optax.sgd(1e-3), x, y, steps=300, step_size=3.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(algorithm="hebb"), ValueError, "algorithm"),
        (dict(epochs=0), ValueError, "epochs"),
        (dict(batch_size=100), ValueError, "batch_size"),
        (dict(steps=0), ValueError, "steps"),
        (dict(step_size=0.0), ValueError, "step_size"),
        (dict(method="midpoint"), ValueError, "method"),
    ],
)
def test_bad_training_options(kwargs, error, match):
    net = pcn.mlp(jax.random.key(7), [3, 4, 2])
    with pytest.raises(error, match=match):
        pcn.train(jax.random.key(0), net, optax.adam(1e-3), jnp.ones((8, 3)), jnp.ones((8, 2)), **kwargs)


def test_bad_training_arguments():
    net = pcn.mlp(jax.random.key(8), [3, 4, 2])
    x, y = jnp.ones((8, 3)), jnp.ones((8, 2))
    with pytest.raises(TypeError, match="optimizer"):
        pcn.train(jax.random.key(0), net, "adam", x, y)
    with pytest.raises(TypeError, match="key"):
        pcn.train(0, net, optax.adam(1e-3), x, y)
    with pytest.raises(ValueError, match="`y` is required"):
        pcn.train(jax.random.key(0), net, optax.adam(1e-3), x)
    with pytest.raises(ValueError, match="backprop.*`x`"):
        pcn.train(jax.random.key(0), net, optax.adam(1e-3), None, y, algorithm="backprop")
    with pytest.raises(ValueError, match="shape mismatch: `y`"):
        pcn.train(jax.random.key(0), net, optax.adam(1e-3), x, jnp.ones((8, 5)))


def test_training_history_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = jax.random.split(jax.random.key(9), 3)
    net = pcn.mlp(keys[0], [3, 8, 2], output="categorical")
    x = jax.random.normal(keys[1], (64, 3))
    labels = (x[:, 0] > 0).astype(jnp.int32)
    result = pcn.train(keys[2], net, optax.adam(3e-2), x, labels, epochs=4, batch_size=16, steps=5)
    assert result.energies.shape == (4, 6, 3) and result.num_epochs == 4
    # The recorded end-of-inference output energy is the batch-mean cross-entropy.
    assert result.final_energies[-1, -1] < result.final_energies[0, -1]
    ax = result.plot()
    assert len(ax.lines) == 2
    plt.close("all")


def test_training_with_unstable_inference_warns():
    keys = jax.random.split(jax.random.key(6), 3)
    net = pcn.mlp(keys[0], [3, 4, 2])
    x, y = jax.random.normal(keys[1], (16, 3)), 5.0 * jax.random.normal(keys[2], (16, 2))
    with pytest.warns(RuntimeWarning, match=r"pcn.train: in \d+ of 4 learning steps .*step_size=1.2"):
        result = pcn.train(keys[0], net, optax.sgd(1e-3), x, y, batch_size=4, steps=20,
                           step_size=1.2, epochs=1)
    total = result.energies.sum(-1)
    assert total[0, -1] > total[0, 0]  # the epoch's mean energy ended above its start
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stable = pcn.train(keys[0], net, optax.sgd(1e-3), x, y, batch_size=4, steps=20,
                           step_size=0.1, epochs=1)
    assert stable.energies.sum(-1)[0, -1] < stable.energies.sum(-1)[0, 0]

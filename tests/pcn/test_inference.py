"""probinf.pcn.inference: energy descent, exact linear-Gaussian posteriors, bad input."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from probinf import pcn
from probinf.exact import linear_gaussian_posterior


def _data(key, batch, shape):
    return jax.random.normal(key, (batch, *shape))


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("init", ["forward", "random"])
def test_energy_decreases_monotonically_with_small_steps(method, init):
    keys = jax.random.split(jax.random.key(0), 4)
    net = pcn.mlp(keys[0], [4, 8, 8, 3], activation=jnp.tanh)
    x, y = _data(keys[1], 16, (4,)), 3.0 * _data(keys[2], 16, (3,))
    result = pcn.infer(net, x, y, steps=60, step_size=0.05, method=method, init=init, key=keys[3])
    total = np.asarray(result.total_energy, np.float64)
    assert total[-1] < 0.9 * total[0]  # it moved
    # Gradient descent on a smooth energy with a small step never goes up (float32 rounding aside).
    assert np.all(np.diff(total) <= 1e-6 * total[0])
    assert result.energies.shape == (61, 4) and result.error_norms.shape == (61, 4)


def test_energy_decreases_in_a_convolutional_network():
    keys = jax.random.split(jax.random.key(1), 5)
    layers = [
        pcn.Conv(1, 1, 3, 3, key=keys[0], activation=jnp.tanh),
        pcn.Dense(3 * 6, 4, key=keys[1]),
    ]
    net = pcn.PCN(layers, (1, 8), output="categorical")
    x, y = _data(keys[2], 8, (1, 8)), jnp.arange(8) % 4
    result = pcn.infer(net, x, y, steps=40, step_size=0.05, init="random", key=keys[3])
    total = np.asarray(result.total_energy, np.float64)
    assert total[-1] < total[0] and np.all(np.diff(total) <= 1e-6 * total[0])


def _linear_generative(key, latent, data, prior_variance, noise_variance):
    key_w, key_m = jax.random.split(key)
    layer = pcn.Dense(latent, data, key=key_w)
    prior_mean = jax.random.normal(key_m, (latent,))
    return pcn.PCN(
        [layer], (latent,), variances=[noise_variance], prior_variance=prior_variance,
        prior_mean=prior_mean,
    )


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_linear_gaussian_latent_is_the_exact_posterior_mean(method):
    with jax.enable_x64(True):
        net = _linear_generative(jax.random.key(2), 3, 5, prior_variance=2.0, noise_variance=0.5)
        y = 2.0 * _data(jax.random.key(3), 4, (5,))
        result = pcn.infer(net, None, y, steps=400, step_size=0.1, method=method)
        w, b = np.asarray(net.layers[0].linear.weight), np.asarray(net.layers[0].linear.bias)
        for row in range(y.shape[0]):
            mean, _, _ = linear_gaussian_posterior(
                np.asarray(net.prior_mean), 2.0 * np.eye(3), w, np.asarray(y[row]) - b, 0.5 * np.eye(5)
            )
            np.testing.assert_allclose(result.activities[0][row], mean, rtol=1e-8, atol=1e-8)
        # At the optimum the energy's gradient vanishes: prior error = sigma0^2 W^T eps / sigma^2.
        errors = result.errors
        np.testing.assert_allclose(errors[0] / 2.0, errors[1] @ w / 0.5, atol=1e-8)


def test_two_layer_linear_chain_matches_the_joint_posterior_mean():
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(4), 4)
        layers = [pcn.Dense(2, 3, key=keys[0]), pcn.Dense(3, 4, key=keys[1])]
        m0 = np.array([0.5, -1.0])
        net = pcn.PCN(layers, (2,), variances=[0.7, 0.3], prior_variance=1.5, prior_mean=m0)
        y = _data(keys[2], 3, (4,))
        result = pcn.infer(net, None, y, steps=800, step_size=0.1, method="heun")
        (w1, b1), (w2, b2) = [
            (np.asarray(layer.linear.weight), np.asarray(layer.linear.bias)) for layer in net.layers
        ]
        # Joint Gaussian prior of z = (x0, x1), observation y = [0 W2] z + b2 + noise.
        s0 = 1.5 * np.eye(2)
        prior_mean = np.concatenate([m0, w1 @ m0 + b1])
        prior_cov = np.block([[s0, s0 @ w1.T], [w1 @ s0, w1 @ s0 @ w1.T + 0.7 * np.eye(3)]])
        design = np.hstack([np.zeros((4, 2)), w2])
        for row in range(y.shape[0]):
            mean, _, _ = linear_gaussian_posterior(
                prior_mean, prior_cov, design, np.asarray(y[row]) - b2, 0.3 * np.eye(4)
            )
            inferred = np.concatenate([result.activities[0][row], result.activities[1][row]])
            np.testing.assert_allclose(inferred, mean, rtol=1e-7, atol=1e-8)


def test_predict_is_the_fixed_point_with_only_the_input_clamped():
    net = pcn.mlp(jax.random.key(5), [3, 6, 2])
    x = _data(jax.random.key(6), 5, (3,))
    result = pcn.infer(net, x, None, steps=3)
    np.testing.assert_allclose(result.activities[-1], pcn.predict(net, x), rtol=1e-6)
    np.testing.assert_allclose(result.total_energy, 0.0, atol=1e-10)


def test_infer_is_jittable_and_reports_the_nonfinite_step():
    net = pcn.mlp(jax.random.key(7), [3, 4, 2])
    x, y = jnp.ones((2, 3)), 5.0 * jnp.ones((2, 2))
    steps = jax.jit(lambda x, y: pcn.infer(net, x, y, steps=300, step_size=3.0).nonfinite_step)
    step = int(steps(x, y))
    assert 0 < step <= 300
    assert int(jax.jit(lambda x, y: pcn.infer(net, x, y, steps=5).nonfinite_step)(x, y)) == -1


def test_diverging_dynamics_raise_a_clear_error():
    net = pcn.mlp(jax.random.key(7), [3, 4, 2])
    x, y = jnp.ones((2, 3)), 5.0 * jnp.ones((2, 2))
    with pytest.raises(pcn.NonFiniteEnergyError, match=r"inference step \d+.*step_size"):
        pcn.infer(net, x, y, steps=300, step_size=3.0)
    broken = jax.tree_util.tree_map(lambda a: a * jnp.nan, net)
    with pytest.raises(pcn.NonFiniteEnergyError, match="initial activities"):
        pcn.infer(broken, x, y, steps=3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=2.5), ValueError, "steps"),
        (dict(step_size=-0.1), ValueError, "step_size"),
        (dict(step_size=float("nan")), ValueError, "step_size"),
        (dict(method="rk4"), ValueError, "method"),
        (dict(init="zeros"), ValueError, "init"),
        (dict(init="random"), ValueError, "key"),
        (dict(init="random", key=0), TypeError, "key"),
    ],
)
def test_bad_options(kwargs, error, match):
    net = pcn.mlp(jax.random.key(8), [3, 4, 2])
    with pytest.raises(error, match=match):
        pcn.infer(net, jnp.ones((2, 3)), jnp.ones((2, 2)), **kwargs)


def test_bad_data():
    net = pcn.mlp(jax.random.key(9), [3, 4, 2])
    classifier = pcn.mlp(jax.random.key(9), [3, 4, 2], output="categorical")
    x, y = jnp.ones((2, 3)), jnp.ones((2, 2))
    with pytest.raises(ValueError, match=r"`x` must have shape \(batch, 3\)"):
        pcn.infer(net, jnp.ones((2, 4)), y)
    with pytest.raises(ValueError, match=r"`x` must have shape"):
        pcn.infer(net, jnp.ones(3), y)
    with pytest.raises(ValueError, match=r"`y` must have shape \(batch, 2\)"):
        pcn.infer(net, x, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="same number of rows"):
        pcn.infer(net, x, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="no node is clamped"):
        pcn.infer(net)
    with pytest.raises(ValueError, match="non-finite"):
        pcn.infer(net, x.at[0, 0].set(jnp.nan), y)
    with pytest.raises(ValueError, match="must be clamped"):
        pcn.infer(classifier, x)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        pcn.infer(classifier, x, jnp.array([0, 2]))
    with pytest.raises(ValueError, match="y_mask"):
        pcn.infer(net, x, y, y_mask=jnp.ones((2, 3), bool))
    with pytest.raises(ValueError, match="y_mask"):
        pcn.infer(classifier, x, jnp.array([0, 1]), y_mask=jnp.ones((2, 2), bool))
    with pytest.raises(ValueError, match="y_mask"):
        pcn.infer(net, x, y, y_mask=2 * jnp.ones((2, 2)))


def test_plot_draws_both_panels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    net = pcn.mlp(jax.random.key(10), [3, 4, 2])
    result = pcn.infer(net, jnp.ones((2, 3)), jnp.zeros((2, 2)), steps=5)
    axes = result.plot()
    assert len(axes[0].lines) == 3  # nodes 1, 2 and the total (node 0 has no energy)
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(), result.error_norms[:, 1])
    plt.close("all")


def test_a_rising_energy_warns_and_a_falling_one_does_not():
    net = pcn.mlp(jax.random.key(7), [3, 4, 2])
    x, y = jnp.ones((2, 3)), 5.0 * jnp.ones((2, 2))
    with pytest.warns(RuntimeWarning, match=r"energy rose from .* step_size=2\.0"):
        unstable = pcn.infer(net, x, y, steps=20, step_size=2.0)
    total = np.asarray(unstable.total_energy)
    assert np.all(np.isfinite(total)) and total[-1] > total[0]  # the symptom, read directly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stable = pcn.infer(net, x, y, steps=20, step_size=0.5)
    assert stable.total_energy[-1] < stable.total_energy[0]

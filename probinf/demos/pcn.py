"""Demo step: predictive coding checked against exact answers and against backprop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probinf.demo import DemoStep


def two_moons(rng: np.random.Generator, n: int, noise: float = 0.15):
    """Two interleaved half circles in 2-d with Gaussian noise; labels 0 and 1 (NumPy)."""
    angle = rng.uniform(0.0, np.pi, n)
    label = rng.integers(0, 2, n)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    points = np.where(label[:, None] == 0, upper, lower) + noise * rng.normal(size=(n, 2))
    return ((points - np.array([0.5, 0.25])) / 0.8).astype(np.float32), label


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(a)) for a in jax.tree_util.tree_leaves(tree)])


def pcn_step(key, quick: bool, progress: bool | None = None) -> DemoStep:
    import equinox as eqx

    from probinf import pcn
    from probinf.exact import linear_gaussian_posterior

    keys = jax.random.split(key, 6)

    # 1. A linear-Gaussian generative PCN: inference finds the exact posterior mean.
    prior_var, noise_var = 1.0, 0.25
    generative = pcn.PCN(
        pcn.mlp(keys[0], [3, 6]).layers, (3,), variances=[noise_var], prior_variance=prior_var
    )
    data = np.asarray(jax.random.normal(keys[1], (4, 6)))
    inferred = pcn.infer(generative, None, data, steps=300, step_size=0.1)
    w = np.asarray(generative.layers[0].linear.weight, np.float64)
    b = np.asarray(generative.layers[0].linear.bias, np.float64)
    exact = np.stack([
        linear_gaussian_posterior(np.zeros(3), prior_var * np.eye(3), w, row - b,
                                  noise_var * np.eye(6))[0]
        for row in data
    ])
    latent_error = np.max(np.abs(np.asarray(inferred.activities[0]) - exact))

    # 2. A classifier trained by predictive coding next to backprop on the same MLP.
    n_train = 256 if quick else 1024
    epochs = 15 if quick else 40
    rng = np.random.default_rng(np.asarray(jax.random.key_data(keys[2])))
    x_all, y_all = two_moons(rng, n_train + 1000)
    x_train, y_train, x_test, y_test = x_all[:n_train], y_all[:n_train], x_all[n_train:], y_all[n_train:]
    classifier = pcn.mlp(keys[3], [2, 32, 32, 2], activation=jax.nn.gelu, output="categorical")
    optimizer = optax.adamw(1e-2)
    settings = dict(epochs=epochs, batch_size=32, steps=8, step_size=0.02, progress=progress)
    accuracy, trained = {}, {}
    for algorithm in ("pc", "backprop"):
        trained[algorithm] = pcn.train(keys[4], classifier, optimizer, x_train, y_train,
                                       algorithm=algorithm, **settings)
        predicted = np.asarray(pcn.predict(trained[algorithm].net, x_test).argmax(-1))
        accuracy[algorithm] = float(np.mean(predicted == y_test))

    # 3. At the initial weights, PC gradient / beta -> backprop gradient as the output weight beta -> 0.
    beta = 1e-3
    net = pcn.PCN(classifier.layers, (2,), output="categorical", variances=[1.0, 1.0, 1 / beta])
    x_batch, y_batch = x_test[:64], y_test[:64]
    relaxed = pcn.infer(net, x_batch, y_batch, steps=150, step_size=0.1, method="heun")
    pc_grad = _flat(pcn.parameter_gradients(net, relaxed.activities)) / beta
    params, static = eqx.partition(net, eqx.is_inexact_array)
    # The feed-forward loss carries the output weight beta too: divide it out.
    bp_grad = _flat(jax.jit(jax.grad(
        lambda p: jnp.mean(jax.vmap(eqx.combine(p, static).feedforward_loss)(x_batch, np.eye(2)[y_batch]))
    ))(params)) / beta
    grad_error = np.linalg.norm(pc_grad - bp_grad) / np.linalg.norm(bp_grad)

    lines = [
        "Linear-Gaussian generative PCN (3 latents, 6 observed, 4 data points): inferred latents",
        f"vs the exact posterior means: max |error| {latent_error:.1e} (first latent "
        f"{float(inferred.activities[0][0, 0]):.4f} vs exact {exact[0, 0]:.4f})",
        f"Two moons, MLP 2-32-32-2, {epochs} epochs, T=8: test accuracy, predictive coding "
        f"{accuracy['pc']:.3f} vs backprop {accuracy['backprop']:.3f} (same net, data and optimizer)",
        f"PC weight gradient / beta vs backprop's gradient (jax.grad) at beta={beta:g}: relative",
        f"difference {grad_error:.1e} (theory: O(beta), i.e. about {beta:.0e})",
    ]
    inference_energies = trained["pc"].energies[-1]  # (T + 1, nodes), last epoch's batch mean

    def draw_energy(ax):
        for node in range(1, inference_energies.shape[1]):
            ax.plot(np.maximum(inference_energies[:, node], 1e-12), marker="o", ms=3, label=f"node {node}")
        ax.set_yscale("log")
        ax.set_xlabel("inference step")
        ax.set_ylabel("energy (batch mean, last epoch)")
        ax.set_title("PCN: energy per layer during inference")
        ax.legend(frameon=False, fontsize=8)

    def draw_gradients(ax):
        ax.scatter(bp_grad, pc_grad, s=6)
        lim = np.max(np.abs(bp_grad))
        ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
        ax.set_xlabel("backprop gradient")
        ax.set_ylabel(f"PC gradient / beta (beta={beta:g})")
        ax.set_title("PCN: PC update = backprop in the limit")

    return DemoStep(lines, [draw_energy, draw_gradients])

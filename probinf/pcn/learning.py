"""Learning in a predictive-coding network: standard PC, incremental PC, and backprop.

Every algorithm minimises the same energy :math:`E(x, \\theta)` over the weights with any
optax optimizer, using the gradient of the batch-mean energy,

.. math:: \\Delta\\theta_l \\propto -\\frac{\\partial E}{\\partial \\theta_l}
          = \\frac{1}{\\sigma_l^2}\\Big(\\frac{\\partial \\mu_l}{\\partial \\theta_l}\\Big)^{\\!\\top} \\varepsilon_l,

which is local: layer :math:`l`'s update needs only its own prediction error and input.

- ``"pc"`` (standard PC; Whittington & Bogacz 2017): activities _relax for ``T`` steps with the
  weights fixed, then one weight step at the relaxed activities.
- ``"ipc"`` (incremental PC; Salvatori et al. 2024, "A stable, fast, and fully automatic
  learning algorithm for predictive coding networks", ICLR): activities and weights are
  updated together at every one of the ``T`` steps (``T`` weight steps per batch).
- ``"backprop"``: the same network trained by backpropagation of the feed-forward loss
  :meth:`PCN.feedforward_loss` (the reference PC approximates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from probinf._checks import check_positive_int
from probinf._progress import progress_bar
from probinf.pcn._checks import (
    INITS,
    METHODS,
    check_choice,
    check_key,
    check_node_data,
    check_step_size,
    check_steps,
    float_scalar,
)
from probinf.pcn.inference import (
    NonFiniteEnergyError,
    _activity_gradient,
    _batch_terms,
    _clamping,
    _initial_activities,
    _merge,
    _scan_relax,
)
from probinf.pcn.network import PCN

__all__ = ["ALGORITHMS", "TrainResult", "parameter_gradients", "train", "train_step"]

ALGORITHMS = ("pc", "ipc", "backprop")


def _mean_energy_fn(static, activities):
    def mean_energy(params):
        energies, norms, _ = _batch_terms(eqx.combine(params, static), activities)
        return energies.sum(1).mean(), energies.mean(0)

    return mean_energy


def parameter_gradients(net: PCN, activities) -> PCN:
    """The PC weight gradient :math:`\\partial \\bar E / \\partial \\theta` at fixed activities.

    :math:`\\bar E` is the total energy averaged over the batch. At relaxed activities
    (see :func:`probinf.pcn.infer`) this is the standard PC weight update (up to sign and
    learning rate).

    Args:
        net: the network.
        activities: node values, one ``(batch, *shape)`` array per node.

    Returns:
        A pytree like ``net`` holding the gradient in its inexact arrays (``None`` elsewhere).
    """
    return _parameter_gradients(net, tuple(activities))


@eqx.filter_jit
def _parameter_gradients(net, activities):
    params, static = eqx.partition(net, eqx.is_inexact_array)
    return jax.grad(lambda p: _mean_energy_fn(static, activities)(p)[0])(params)


def _pc_update(net, opt_state, optimizer, x, y, key, step_size, *, steps, method, init, batch):
    activities = _initial_activities(net, x, y, None, init=init, batch=batch, key=key)
    free, masks = _clamping(net, x, y, None)
    activities, energies, _ = _scan_relax(
        net, activities, free, masks, steps=steps, step_size=step_size, method=method
    )
    params, static = eqx.partition(net, eqx.is_inexact_array)
    (_, final), grads = jax.value_and_grad(_mean_energy_fn(static, activities), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    net = eqx.combine(eqx.apply_updates(params, updates), static)
    return net, opt_state, jnp.concatenate([energies, final[None]])


def _ipc_update(net, opt_state, optimizer, x, y, key, step_size, *, steps, method, init, batch):
    activities = _initial_activities(net, x, y, None, init=init, batch=batch, key=key)
    free, masks = _clamping(net, x, y, None)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def body(carry, _):
        activities, params, opt_state = carry
        free_values = tuple(a for a, f in zip(activities, free, strict=True) if f)

        def total(free_values, params):
            energies, _, _ = _batch_terms(eqx.combine(params, static), _merge(activities, free_values, free))
            return energies.sum(), energies.mean(0)

        (_, energies), (grad_x, grad_params) = jax.value_and_grad(
            total, argnums=(0, 1), has_aux=True
        )(free_values, params)
        # The summed energy moves each sample by its own gradient; the weights follow the mean.
        grad_params = jtu.tree_map(lambda g: g / batch, grad_params)
        euler = tuple(v - step_size * g for v, g in zip(free_values, grad_x, strict=True))
        if method == "heun":
            _, _, grad_end = _activity_gradient(
                eqx.combine(params, static), _merge(activities, euler, free), free, masks
            )
            euler = tuple(
                v - 0.5 * step_size * (g0 + g1)
                for v, g0, g1 in zip(free_values, grad_x, grad_end, strict=True)
            )
        updates, opt_state = optimizer.update(grad_params, opt_state, params)
        params = eqx.apply_updates(params, updates)
        return (_merge(activities, euler, free), params, opt_state), energies

    (activities, params, opt_state), energies = jax.lax.scan(
        body, (activities, params, opt_state), None, length=steps
    )
    final = _mean_energy_fn(static, activities)(params)[1]
    return eqx.combine(params, static), opt_state, jnp.concatenate([energies, final[None]])


def _backprop_update(net, opt_state, optimizer, x, y, key, step_size, *, steps, method, init, batch):
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def loss(params):
        return jnp.mean(jax.vmap(eqx.combine(params, static).feedforward_loss)(x, y))

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    net = eqx.combine(eqx.apply_updates(params, updates), static)
    energies = jnp.zeros((1, net.num_layers + 1), value.dtype).at[0, -1].set(value)
    return net, opt_state, energies


_UPDATES = {"pc": _pc_update, "ipc": _ipc_update, "backprop": _backprop_update}


@eqx.filter_jit
def _update(net, opt_state, optimizer, x, y, key, step_size, *, algorithm, **config):
    return _UPDATES[algorithm](net, opt_state, optimizer, x, y, key, step_size, **config)


def _select(keep_new, new, old):
    return jtu.tree_map(
        lambda a, b: jnp.where(keep_new, a, b) if eqx.is_array(a) else a, new, old
    )


@eqx.filter_jit
def _init_optimizer(optimizer, net):
    return optimizer.init(eqx.filter(net, eqx.is_inexact_array))


@eqx.filter_jit
def _run_epoch(net, opt_state, optimizer, x, y, key, epoch, step_size, *, algorithm, batch_size, **config):
    """One epoch: shuffle, then a ``lax.scan`` over the full batches (the remainder is dropped).

    Returns the state after the last batch whose energies were finite, the per-batch
    energies ``(batches, T + 1, L + 1)`` and the index of the first non-finite batch (or -1).
    """
    num_rows = y.shape[0]
    num_batches = num_rows // batch_size
    key_order, key = jax.random.split(jax.random.fold_in(key, epoch))
    order = jax.random.permutation(key_order, num_rows)
    rows = order[: num_batches * batch_size].reshape(num_batches, batch_size)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def body(carry, inputs):
        params, opt_state, bad_batch = carry
        index, batch_rows = inputs
        x_batch = None if x is None else x[batch_rows]
        new_net, new_opt_state, energies = _UPDATES[algorithm](
            eqx.combine(params, static), opt_state, optimizer, x_batch, y[batch_rows],
            jax.random.fold_in(key, index), step_size, batch=batch_size, **config,
        )
        new_params = eqx.filter(new_net, eqx.is_inexact_array)
        finite = jnp.all(jnp.isfinite(energies)) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(p)) for p in jtu.tree_leaves(new_params)])
        )
        ok = (bad_batch < 0) & finite
        bad_batch = jnp.where((bad_batch < 0) & ~finite, index, bad_batch)
        carry = (_select(ok, new_params, params), _select(ok, new_opt_state, opt_state), bad_batch)
        return carry, energies

    init = (params, opt_state, jnp.asarray(-1, jnp.int32))
    (params, opt_state, bad_batch), energies = jax.lax.scan(
        body, init, (jnp.arange(num_batches, dtype=jnp.int32), rows)
    )
    return eqx.combine(params, static), opt_state, energies, bad_batch


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        net: the trained network.
        opt_state: the optimizer state, to continue training.
        energies: ``(epochs, T + 1, L + 1)``: the energy of every node across the inference
            steps, averaged over the batches of each epoch (for ``"backprop"``, ``T + 1 = 1``
            and the last column is the feed-forward loss).
        algorithm: ``"pc"``, ``"ipc"`` or ``"backprop"``.
        num_epochs: the number of completed epochs.
    """

    net: PCN
    opt_state: Any
    energies: np.ndarray
    algorithm: str
    num_epochs: int

    @property
    def final_energies(self) -> np.ndarray:
        """``(epochs, L + 1)``: every node's energy at the end of inference, per epoch."""
        return self.energies[:, -1, :]

    def plot(self, ax=None):
        """Plot the per-node energy at the end of inference against the epoch (log scale)."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        final = self.final_energies
        epochs = np.arange(1, final.shape[0] + 1)
        for node in range(final.shape[1]):
            if np.any(final[:, node]):
                ax.plot(epochs, final[:, node], marker="o", ms=3, label=f"node {node}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("energy after inference")
        ax.set_title(f"training ({self.algorithm})")
        ax.legend(frameon=False, fontsize=7)
        return ax


def _check_optimizer(optimizer):
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation (e.g. optax.adam(1e-3)), "
            f"got {type(optimizer).__name__}"
        )


def _check_config(algorithm, steps, step_size, method, init):
    check_choice(algorithm, ALGORITHMS, "algorithm")
    return dict(
        steps=check_steps(steps),
        method=check_choice(method, METHODS, "method"),
        init=check_choice(init, INITS, "init"),
    ), check_step_size(step_size)


def _check_algorithm_data(net, algorithm, x):
    if algorithm == "backprop" and x is None:
        raise ValueError('algorithm="backprop" needs `x`: it trains the feed-forward map x -> y')


def train_step(
    key: PRNGKeyArray,
    net: PCN,
    opt_state,
    optimizer: optax.GradientTransformation,
    x: Float[Array, "batch ..."] | None,
    y: Float[Array, "batch ..."],
    *,
    algorithm: str = "pc",
    steps: int = 20,
    step_size: float = 0.1,
    method: str = "euler",
    init: str = "forward",
) -> tuple[PCN, Any, Float[Array, "steps_plus_one nodes"]]:
    """One learning step on one batch (for users who own the training loop).

    Args:
        key: PRNG key (used by ``init="random"``).
        net: the network.
        opt_state: ``optimizer.init(eqx.filter(net, eqx.is_inexact_array))`` or a later state.
        optimizer: any optax ``GradientTransformation``.
        x: values clamped at node 0, or ``None`` (generative learning: node 0 inferred).
        y: values clamped at the last node (labels for a categorical network).
        algorithm: ``"pc"``, ``"ipc"`` or ``"backprop"``.
        steps: inference steps ``T``.
        step_size: the activity step size :math:`\\eta`.
        method: ``"euler"`` or ``"heun"``.
        init: ``"forward"`` or ``"random"`` activity initialisation.

    Returns:
        ``(net, opt_state, energies)`` with the batch-mean energies ``(T + 1, L + 1)``.

    Raises:
        ValueError: as :func:`train`; NonFiniteEnergyError: a non-finite energy.
    """
    check_key(key)
    _check_optimizer(optimizer)
    config, step_size = _check_config(algorithm, steps, step_size, method, init)
    x, y, _, batch = check_node_data(net, x, y, need_y=True)
    _check_algorithm_data(net, algorithm, x)
    if algorithm == "backprop":
        config["steps"] = 0  # no inference: one feed-forward row of energies per batch
    net, opt_state, energies = _update(
        net, opt_state, optimizer, x, y, key, float_scalar(step_size),
        algorithm=algorithm, batch=batch, **config,
    )
    bad = ~np.isfinite(np.asarray(energies)).all(axis=1)
    if bad.any():
        step = int(np.argmax(bad))
        raise NonFiniteEnergyError(
            f"non-finite energy at inference step {step} of this batch: the dynamics diverged; "
            f"use a smaller `step_size` (got {step_size}) or learning rate"
        )
    return net, opt_state, energies


def train(
    key: PRNGKeyArray,
    net: PCN,
    optimizer: optax.GradientTransformation,
    x: Float[Array, "n ..."] | None = None,
    y: Float[Array, "n ..."] | None = None,
    *,
    algorithm: str = "pc",
    epochs: int = 1,
    batch_size: int = 32,
    steps: int = 20,
    step_size: float = 0.1,
    method: str = "euler",
    init: str = "forward",
    opt_state: Any = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``net`` on ``(x, y)`` with predictive coding (or backprop, for comparison).

    Each epoch shuffles the rows (key ``fold_in(key, epoch)``), drops the last incomplete
    batch, and runs every batch inside one compiled ``jax.lax.scan``. Supervised learning
    clamps ``x`` at node 0 and ``y`` at the last node; generative learning passes only ``y``
    (the data) and infers node 0 too.

    Args:
        key: PRNG key (shuffling and random initialisation).
        net: the network.
        optimizer: any optax ``GradientTransformation`` for the weights.
        x: ``(n, *node_shapes[0])`` or ``None``.
        y: ``(n, *node_shapes[-1])``; for a categorical network integer labels ``(n,)``.
        algorithm: ``"pc"``, ``"ipc"`` or ``"backprop"``.
        epochs: passes over the data.
        batch_size: rows per batch (at most ``n``).
        steps: inference steps ``T`` per batch (at least 1).
        step_size: the activity step size :math:`\\eta`.
        method: ``"euler"`` or ``"heun"``.
        init: ``"forward"`` or ``"random"`` activity initialisation.
        opt_state: optimizer state to resume from (``TrainResult.opt_state``).
        progress: show a progress bar over epochs (default: only on a terminal).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: shapes that do not match the network, ``steps < 1``, bad options or
            non-finite data. NonFiniteEnergyError: an energy or weight became non-finite; the
            error's ``result`` attribute holds the last finite state.
        TypeError: an optimizer that is not an optax transformation, or a bad key.
    """
    check_key(key)
    _check_optimizer(optimizer)
    config, step_size = _check_config(algorithm, steps, step_size, method, init)
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    x, y, _, num_rows = check_node_data(net, x, y, need_y=True)
    _check_algorithm_data(net, algorithm, x)
    if batch_size > num_rows:
        raise ValueError(f"`batch_size` ({batch_size}) exceeds the number of rows ({num_rows})")
    if algorithm == "backprop":
        config["steps"] = 0  # no inference: one feed-forward row of energies per batch
    if opt_state is None:
        opt_state = _init_optimizer(optimizer, net)
    step_size_array = float_scalar(step_size)

    history: list[np.ndarray] = []
    with progress_bar(total=epochs, enabled=progress, desc=f"train ({algorithm})") as bar:
        for epoch in range(epochs):
            net, opt_state, energies, bad_batch = _run_epoch(
                net, opt_state, optimizer, x, y, key, np.int32(epoch), step_size_array,
                algorithm=algorithm, batch_size=batch_size, **config,
            )
            energies = np.asarray(energies, dtype=np.float64)
            bad_batch = int(bad_batch)
            if bad_batch >= 0:
                if bad_batch:
                    history.append(energies[:bad_batch].mean(0))
                result = TrainResult(net, opt_state, _stack(history, config, net), algorithm, len(history))
                error = NonFiniteEnergyError(
                    f"training stopped: non-finite energy or weights in epoch {epoch}, batch "
                    f"{bad_batch}; lower `step_size` (got {step_size}) or the learning rate. "
                    "The state after the previous batch is in this error's `result`."
                )
                error.result = result
                raise error
            history.append(energies.mean(0))
            bar.update(1)
            bar.set_postfix(energy=f"{history[-1][-1].sum():.4g}")
    return TrainResult(net, opt_state, _stack(history, config, net), algorithm, len(history))


def _stack(history, config, net) -> np.ndarray:
    if history:
        return np.stack(history)
    return np.zeros((0, config["steps"] + 1, net.num_layers + 1))

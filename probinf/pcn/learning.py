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

import warnings
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from probinf import train as engine
from probinf._tree import all_finite
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
    _energy_rose,
    _initial_activities,
    _merge,
    _scan_relax,
)
from probinf.pcn.network import PCN
from probinf.validation import check_positive_int

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


@eqx.filter_jit
def _init_optimizer(optimizer, net):
    return optimizer.init(eqx.filter(net, eqx.is_inexact_array))


class _LearningStep(eqx.Module):
    """One learning step on one batch, as a `probinf.train` step.

    ``step_size`` is an array field, so runs that differ only in it share a compiled loop.
    The recorded loss is the total energy after inference (the feed-forward loss for
    ``"backprop"``); ``aux`` holds the batch-mean energies ``(T + 1, L + 1)``.
    """

    optimizer: optax.GradientTransformation = eqx.field(static=True)
    algorithm: str = eqx.field(static=True)
    config: tuple = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)
    step_size: Array

    def __call__(self, state, key, batch):
        x, y = batch
        net, opt_state, energies = _UPDATES[self.algorithm](
            state.params, state.opt_state, self.optimizer, x, y, key, self.step_size,
            batch=self.batch_size, **dict(self.config),
        )
        finite = jnp.all(jnp.isfinite(energies)) & all_finite(net)
        info = engine.StepInfo(jnp.sum(energies[-1]), finite, energies)
        return engine.TrainState(net, opt_state, state.step + 1), info


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
    sharding: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Train ``net`` on ``(x, y)`` with predictive coding (or backprop, for comparison).

    The loop is `probinf.train.run`: each epoch shuffles the rows, leaves out the
    ``n % batch_size`` rows that do not fill a batch (a different set each epoch), and the
    batches run in compiled chunks; batch ``t`` (counted over all epochs) uses the key
    ``fold_in(key, t)``. Supervised learning
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
        sharding: a `jax.sharding.Mesh` to train data-parallel on: every batch split over
            its first axis, the parameters replicated (`probinf.train.run`); ``None``: one
            device.

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
    step = _LearningStep(optimizer, algorithm, tuple(sorted(config.items())), batch_size,
                         jnp.asarray(float_scalar(step_size)))
    result = engine.run(
        step, engine.TrainState(net, opt_state, jnp.asarray(0, jnp.int32)), key, epochs=epochs,
        data=(x, y), batch_size=batch_size, progress=progress, warn=False, name=f"train ({algorithm})",
        sharding=sharding,
    )
    batches = num_rows // batch_size
    energies = np.zeros((0, config["steps"] + 1, net.num_layers + 1)) if result.aux is None else result.aux
    # Per epoch, the mean over its batches (the last epoch partial after a non-finite batch).
    per_epoch = [energies[i : i + batches].mean(0) for i in range(0, result.num_steps, batches)]
    history = _stack(per_epoch, config, net)
    state = result.state
    if result.stop_reason == "non_finite":
        epoch, bad_batch = divmod(result.nonfinite_step, batches)
        error = NonFiniteEnergyError(
            f"training stopped: non-finite energy or weights in epoch {epoch}, batch "
            f"{bad_batch}; lower `step_size` (got {step_size}) or the learning rate. "
            "The state after the previous batch is in this error's `result`."
        )
        error.result = TrainResult(state.params, state.opt_state, history, algorithm, len(per_epoch))
        raise error
    # Only PC holds the weights fixed during inference, where gradient descent on the energy
    # must lower it; iPC's concurrent optimizer steps (e.g. Adam's) carry no such guarantee.
    rose = _energy_rose(energies) if algorithm == "pc" else np.zeros(0, bool)
    if rose.any():
        first_epoch = int(np.argmax(rose)) // batches
        warnings.warn(
            f"pcn.train: in {int(rose.sum())} of {rose.size} learning steps (the first in epoch "
            f"{first_epoch}) the total energy ended inference higher than it started: the "
            f"activity dynamics are unstable at step_size={step_size} for those weights, so "
            "those updates did not use the energy's minimum; use a smaller `step_size`",
            RuntimeWarning,
            stacklevel=2,
        )
    return TrainResult(state.params, state.opt_state, history, algorithm, len(per_epoch))


def _stack(history, config, net) -> np.ndarray:
    if history:
        return np.stack(history)
    return np.zeros((0, config["steps"] + 1, net.num_layers + 1))

"""Inference in a predictive-coding network: gradient dynamics on the activities.

The free activities follow the gradient flow of the energy, :math:`\\dot x_l = -\\partial E / \\partial x_l`,
integrated for ``T`` steps of size :math:`\\eta` by Euler's method,

.. math:: x^{t+1} = x^t - \\eta\\, \\nabla_x E(x^t),

or Heun's (the explicit trapezoidal rule),

.. math:: \\tilde x = x^t - \\eta\\, \\nabla_x E(x^t),\\qquad
          x^{t+1} = x^t - \\tfrac{\\eta}{2}\\big(\\nabla_x E(x^t) + \\nabla_x E(\\tilde x)\\big),

inside one ``jax.lax.scan``. Clamped nodes (and the clamped entries of a partially
clamped last node) stay fixed. Each sample of a batch relaxes independently: the step
follows the gradient of that sample's own energy.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

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
from probinf.pcn.network import PCN
from probinf.validation import is_traced

__all__ = ["InferenceResult", "NonFiniteEnergyError", "infer", "predict"]


class NonFiniteEnergyError(FloatingPointError):
    """The energy became NaN or infinite during inference (the dynamics diverged)."""


class InferenceResult(eqx.Module):
    """What :func:`infer` returns.

    Attributes:
        activities: the node values after ``T`` steps, one ``(batch, *node_shape)`` array per node.
        errors: the prediction errors at the end (see :meth:`PCN.energies_and_errors`).
        energies: ``(T + 1, L + 1)``: the energy of every node, averaged over the batch,
            before each step and after the last.
        error_norms: ``(T + 1, L + 1)``: the Euclidean norm of every node's prediction error,
            averaged over the batch, at the same times.
        nonfinite_step: the first step at which an energy was not finite, or -1.
    """

    activities: tuple
    errors: tuple
    energies: Float[Array, "steps_plus_one nodes"]
    error_norms: Float[Array, "steps_plus_one nodes"]
    nonfinite_step: Int[Array, ""]

    @property
    def total_energy(self) -> Float[Array, " steps_plus_one"]:
        """The total energy (batch mean) before each step and after the last."""
        return self.energies.sum(axis=-1)

    def plot(self, axes=None):
        """Plot the energy and the prediction-error norm of every node across the steps.

        Args:
            axes: two matplotlib axes (default: a new figure with two panels).

        Returns:
            The two axes.
        """
        return _plot_inference(self.energies, self.error_norms, axes)


def _plot_inference(energies, error_norms, axes=None):
    """Two panels: per-node energy (log scale) and per-node error norm against the step."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    energies, error_norms = np.asarray(energies), np.asarray(error_norms)
    steps = np.arange(energies.shape[0])
    for node in range(energies.shape[1]):
        if not np.any(energies[:, node]) and not np.any(error_norms[:, node]):
            continue  # a node without energy (node 0 with no prior)
        axes[0].plot(steps, np.maximum(energies[:, node], 1e-12), label=f"node {node}")
        axes[1].plot(steps, error_norms[:, node], label=f"node {node}")
    axes[0].plot(steps, np.maximum(energies.sum(1), 1e-12), "k--", lw=1, label="total")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("energy (batch mean)")
    axes[1].set_ylabel("‖prediction error‖ (batch mean)")
    for ax in axes:
        ax.set_xlabel("inference step")
        ax.legend(frameon=False, fontsize=7)
    return axes


def _batch_terms(net: PCN, activities, fixed=None):
    """Per-sample energies ``(B, L+1)``, error norms ``(B, L+1)`` and errors."""

    def one(acts, fixed):
        energies, errors = net.energies_and_errors(acts, fixed)
        norms = jnp.stack([jnp.sqrt(jnp.sum(e**2)) for e in errors])
        return energies, norms, errors

    return jax.vmap(one)(activities, fixed)


def _fixed_predictions(net: PCN, activities, free, masks):
    """The predictions of layers whose input node is fully clamped: constant while the
    activities _relax under fixed weights, so computed once instead of at every step."""
    return tuple(
        None if free[i] or masks[i] is not None else jax.vmap(layer)(activities[i])
        for i, layer in enumerate(net.layers)
    )


def _merge(activities, free_values, free):
    values = iter(free_values)
    return tuple(next(values) if f else a for a, f in zip(activities, free, strict=True))


def _activity_gradient(net: PCN, activities, free, masks, fixed=None):
    """Energies and error norms (batch means) and the gradient for the free nodes.

    The gradient is that of the energy *summed* over the batch, so each sample moves along
    the gradient of its own energy. Clamped entries (``masks`` = 1) get zero gradient.
    """
    free_values = tuple(a for a, f in zip(activities, free, strict=True) if f)

    def total(free_values):
        energies, norms, _ = _batch_terms(net, _merge(activities, free_values, free), fixed)
        return energies.sum(), (energies.mean(0), norms.mean(0))

    (_, (energies, norms)), grads = jax.value_and_grad(total, has_aux=True)(free_values)
    free_masks = [m for m, f in zip(masks, free, strict=True) if f]
    grads = tuple(g if m is None else g * (1 - m) for g, m in zip(grads, free_masks, strict=True))
    return energies, norms, grads


def _relax_step(net: PCN, activities, free, masks, step_size, method: str, fixed=None):
    """One Euler or Heun step of the activity dynamics; returns the new activities and the
    energies and error norms before the step."""
    energies, norms, grads = _activity_gradient(net, activities, free, masks, fixed)
    free_values = [a for a, f in zip(activities, free, strict=True) if f]
    euler = tuple(x - step_size * g for x, g in zip(free_values, grads, strict=True))
    if method == "euler":
        return _merge(activities, euler, free), energies, norms
    _, _, grads_end = _activity_gradient(net, _merge(activities, euler, free), free, masks, fixed)
    heun = tuple(
        x - 0.5 * step_size * (g0 + g1)
        for x, g0, g1 in zip(free_values, grads, grads_end, strict=True)
    )
    return _merge(activities, heun, free), energies, norms


def _first_nonfinite(energies):
    bad = ~jnp.all(jnp.isfinite(energies), axis=-1)
    return jnp.where(jnp.any(bad), jnp.argmax(bad), -1).astype(jnp.int32)


def _scan_relax(net: PCN, activities, free, masks, *, steps: int, step_size, method: str):
    """The ``lax.scan`` of :func:`_relax`: final activities, and the energies and error norms
    ``(T, L + 1)`` before each step (the caller evaluates the end point)."""

    fixed = _fixed_predictions(net, activities, free, masks)

    def body(acts, _):
        acts, energies, norms = _relax_step(net, acts, free, masks, step_size, method, fixed)
        return acts, (energies, norms)

    activities, (energies, norms) = jax.lax.scan(body, tuple(activities), None, length=steps)
    return activities, energies, norms


def _relax(net: PCN, activities, free, masks, *, steps: int, step_size, method: str) -> InferenceResult:
    """Run ``steps`` steps of the activity dynamics (jit-able; no input checks).

    Args:
        net: the network (held fixed).
        activities: initial node values, one ``(batch, *shape)`` array per node.
        free: ``L + 1`` booleans, ``True`` for the nodes that move.
        masks: ``L + 1`` entries, ``None`` or an array like the node with 1 where clamped.
        steps: the number of steps ``T``.
        step_size: the step size :math:`\\eta`.
        method: ``"euler"`` or ``"heun"``.
    """

    activities, energies, norms = _scan_relax(
        net, activities, free, masks, steps=steps, step_size=step_size, method=method
    )
    final_energies, final_norms, errors = _batch_terms(net, activities)
    energies = jnp.concatenate([energies, final_energies.mean(0)[None]])
    norms = jnp.concatenate([norms, final_norms.mean(0)[None]])
    return InferenceResult(activities, errors, energies, norms, _first_nonfinite(energies))


def _initial_activities(
    net: PCN, x, y, y_mask, *, init: str, batch: int, key: PRNGKeyArray | None = None
) -> tuple:
    """Initial node values: the feed-forward pass, or standard-normal draws (jit-able).

    Node 0 starts at ``x`` when clamped; otherwise at the prior mean (``"forward"``) or a
    draw from the prior (``"random"``; a standard normal without a prior). The last node
    starts at ``y`` where clamped.
    """
    first = net.node_shapes[0]
    dtype = jnp.result_type(float)
    if init == "forward":
        if x is None:
            start = net.prior_mean if net.prior_mean is not None else jnp.zeros(first, dtype)
            x = jnp.broadcast_to(start, (batch, *first))
        activities = list(jax.vmap(net.forward)(x))
    else:
        keys = jax.random.split(key, net.num_layers + 1)
        activities = [
            jax.random.normal(k, (batch, *shape), dtype)
            for k, shape in zip(keys, net.node_shapes, strict=True)
        ]
        if x is not None:
            activities[0] = x
        elif net.prior_mean is not None:
            activities[0] = net.prior_mean + jnp.sqrt(net.prior_variance) * activities[0]
    if y is not None:
        activities[-1] = y if y_mask is None else jnp.where(y_mask > 0, y, activities[-1])
    return tuple(activities)


@eqx.filter_jit
def _infer(net, x, y, y_mask, key, step_size, *, steps, method, init, batch):
    activities = _initial_activities(net, x, y, y_mask, init=init, batch=batch, key=key)
    free, masks = _clamping(net, x, y, y_mask)
    return _relax(net, activities, free, masks, steps=steps, step_size=step_size, method=method)


def _clamping(net: PCN, x, y, y_mask):
    """Which nodes move (``free``) and the partial-_clamping masks, from what is given."""
    free = [True] * (net.num_layers + 1)
    masks = [None] * (net.num_layers + 1)
    if x is not None:
        free[0] = False
    if y is not None:
        if y_mask is None:
            free[-1] = False
        else:
            masks[-1] = y_mask
    return tuple(free), tuple(masks)


def _raise_if_nonfinite(result: InferenceResult, step_size: float, where: str = "") -> None:
    """Raise :class:`NonFiniteEnergyError` naming the step and the nodes (outside ``jit``)."""
    try:
        step = int(result.nonfinite_step)
    except jax.errors.ConcretizationTypeError:
        return  # traced: the caller reads `nonfinite_step` itself
    if step < 0:
        return
    row = np.asarray(result.energies[step])
    nodes = [int(i) for i in np.flatnonzero(~np.isfinite(row))]
    start = "at the initial activities (check the weights)" if step == 0 else f"at inference step {step}"
    raise NonFiniteEnergyError(
        f"non-finite energy {start}{where} in node(s) {nodes}: the activity dynamics "
        f"diverged; use a smaller `step_size` (got {step_size})"
    )


# Gradient descent on the energy never raises it at a stable step size (the descent lemma:
# a step below 2 / L, L the Lipschitz constant of the energy's gradient), so an energy that
# ends above where it started is the signature of unstable dynamics; the relative tolerance
# covers float32 rounding.
ENERGY_RISE_RTOL = 1e-3


def _energy_rose(energies) -> np.ndarray:
    """Whether the total energy ended above its start (beyond ``ENERGY_RISE_RTOL``).

    ``energies``: ``(..., T + 1, L + 1)`` per-node energies over the inference steps;
    returns a boolean array over the leading axes.
    """
    total = np.asarray(energies, np.float64).sum(axis=-1)
    start, end = total[..., 0], total[..., -1]
    return end > start + ENERGY_RISE_RTOL * np.abs(start) + np.finfo(np.float64).tiny


def _warn_if_energy_rose(result: InferenceResult, step_size: float) -> None:
    if is_traced(result.energies) or not _energy_rose(result.energies):
        return
    total = np.asarray(result.total_energy, np.float64)
    warnings.warn(
        f"pcn.infer: the total energy rose from {total[0]:.4g} to {total[-1]:.4g} over "
        f"{total.size - 1} steps; gradient descent on the energy lowers it at a stable step "
        f"size, so the dynamics are unstable at step_size={step_size} and the activities are "
        "not a minimum: use a smaller `step_size`",
        RuntimeWarning,
        stacklevel=3,
    )


def infer(
    net: PCN,
    x: Float[Array, "batch ..."] | None = None,
    y: Float[Array, "batch ..."] | None = None,
    *,
    steps: int = 20,
    step_size: float = 0.1,
    method: str = "euler",
    init: str = "forward",
    y_mask: Array | None = None,
    key: PRNGKeyArray | None = None,
) -> InferenceResult:
    """Relax the free activities of ``net`` with ``x`` and/or ``y`` clamped.

    The modes are set by what is clamped:

    - supervised: ``x`` and ``y`` (input and label clamped; hidden nodes inferred);
    - generative: ``y`` only (data clamped at the last node; latents and node 0 inferred);
    - associative recall: ``y`` with ``y_mask`` (the observed entries clamped, the rest of
      the last node completed);
    - ``x`` only relaxes to the feed-forward pass (use :func:`predict`).

    Args:
        net: the network.
        x: values of node 0, ``(batch, *node_shapes[0])``.
        y: values of the last node, ``(batch, *node_shapes[-1])``; for a categorical network
            integer labels ``(batch,)`` or label distributions ``(batch, classes)``.
        steps: number of inference steps ``T`` (at least 1).
        step_size: the step size :math:`\\eta`.
        method: ``"euler"`` or ``"heun"``.
        init: ``"forward"`` (feed-forward pass) or ``"random"`` (standard normal, or the
            prior for node 0); ``"random"`` needs ``key``.
        y_mask: boolean like ``y`` (or like one row of it), ``True`` where ``y`` is
            observed (partial _clamping).
        key: PRNG key for ``init="random"``.

    Returns:
        An :class:`InferenceResult`.

    Raises:
        ValueError: shapes that do not match the network, ``steps < 1``, a bad option,
            non-finite data, or a categorical last node left free.
        NonFiniteEnergyError: the energy became non-finite during inference.

    Warns:
        RuntimeWarning: the total energy ended higher than it started (unstable dynamics:
            the step size is too large for these weights).
    """
    steps = check_steps(steps)
    step_size = check_step_size(step_size)
    check_choice(method, METHODS, "method")
    check_choice(init, INITS, "init")
    x, y, y_mask, batch = check_node_data(net, x, y, y_mask)
    if net.output == "categorical" and y is None:
        raise ValueError(
            "a categorical network's last node must be clamped to a label: pass `y` "
            "(use probinf.pcn.predict for the feed-forward prediction)"
        )
    if init == "random":
        if key is None:
            raise ValueError('`key` is required for init="random"')
        check_key(key)
    result = _infer(
        net, x, y, y_mask, key, float_scalar(step_size),
        steps=steps, method=method, init=init, batch=batch,
    )
    _raise_if_nonfinite(result, step_size)
    _warn_if_energy_rose(result, step_size)
    return result


@eqx.filter_jit
def _predict(net, x):
    return jax.vmap(lambda x0: net.forward(x0)[-1])(x)


def predict(net: PCN, x: Float[Array, "batch ..."]) -> Float[Array, "batch ..."]:
    """The feed-forward prediction of the last node, ``(batch, *node_shapes[-1])``.

    With only node 0 clamped the energy's minimum is the feed-forward pass, so this is
    also what inference converges to. For a categorical network these are the logits.
    """
    x, _, _, _ = check_node_data(net, x, None)
    return _predict(net, x)

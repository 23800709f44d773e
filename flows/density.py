"""Density estimation: fit a flow to samples by maximum likelihood.

:func:`fit_to_data` minimises the average negative log likelihood
:math:`-\\frac1m \\sum_{i \\in \\text{batch}} \\log q_\\phi(x_i \\mid c_i)` over
shuffled minibatches, holds out a validation split, and stops early when the
validation loss has not improved for ``patience`` epochs, returning the flow with
the best validation loss. The loop is `probinf.train.run` (compiled chunks, one
non-finite policy). (Variational inference against an unnormalised target is
:func:`probinf.vi.fit` with any objective; flows plug in as families.)
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from flows._checks import check_key, check_positive_int
from flows.distribution import Flow
from probinf import train
from probinf.xla_workaround import warn_if_cpu_gradients_are_wrong

__all__ = ["fit_to_data", "DensityFitResult", "DEFAULT_OPTIMIZER"]

# Shared, so a second fit with the same shapes reuses the compiled loop.
DEFAULT_OPTIMIZER = optax.adam(1e-3)


@dataclass(frozen=True)
class DensityFitResult:
    """What :func:`fit_to_data` returns.

    Attributes:
        flow: the flow with the best validation loss (the last one without a split).
        train_losses: mean training loss (negative log likelihood per sample) per epoch.
        validation_losses: validation loss per epoch (empty without a split).
        best_epoch: index of the epoch whose parameters were kept.
        stop_reason: ``"max_epochs"``, ``"early_stopping"`` or a sentence naming the
            epoch and step at which a non-finite loss appeared (training stopped there and
            kept the last finite state).
    """

    flow: Flow
    train_losses: np.ndarray
    validation_losses: np.ndarray
    best_epoch: int
    stop_reason: str


def _check_array(value: object, name: str, width: int, rows: int | None = None) -> Array:
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[1] != width or arr.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty array of shape (n, {width}), got shape {arr.shape}")
    if rows is not None and arr.shape[0] != rows:
        raise ValueError(f"`{name}` must have {rows} rows (one per row of `data`), got {arr.shape[0]}")
    if not np.issubdtype(arr.dtype, np.number) or not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values (or is not numeric)")
    return jnp.asarray(arr, dtype=jnp.result_type(float))  # the default float (float64 under x64)


def _negative_log_likelihood(flow, key, batch):
    x, context = batch
    return -jnp.mean(flow.log_prob(x, context))


def _validation_loss(flow, batch):
    return _negative_log_likelihood(flow, None, batch)


def fit_to_data(
    key: PRNGKeyArray,
    flow: Flow,
    data: Array,
    *,
    context: Array | None = None,
    optimizer: optax.GradientTransformation | None = None,
    batch_size: int = 256,
    max_epochs: int = 100,
    validation_fraction: float = 0.1,
    patience: int = 5,
    progress: bool | None = None,
    sharding: jax.sharding.Mesh | None = None,
) -> DensityFitResult:
    """Fit ``flow`` to samples ``data`` by maximum likelihood with early stopping.

    Args:
        key: PRNG key (validation split and minibatch order).
        flow: the :class:`~flows.Flow` to train (all its inexact arrays are trained).
        data: samples, ``(n, dim)``.
        context: for a conditional flow, the context of each sample, ``(n, context_dim)``.
        optimizer: any optax transformation (default: the shared ``DEFAULT_OPTIMIZER``,
            ``optax.adam(1e-3)``; reusing one optimizer object reuses the compiled loop).
        batch_size: minibatch size (capped at the training-set size). Each epoch is a fresh
            permutation of the training rows cut into ``n_train // batch_size`` batches; the
            rows left over are not used in that epoch (see `probinf.train.run`).
        max_epochs: maximum number of passes over the training split.
        validation_fraction: share of rows held out for early stopping, in ``[0, 1)``;
            ``0`` trains on everything for ``max_epochs`` epochs.
        patience: epochs without validation improvement before stopping.
        progress: show a progress bar (default: only on a terminal).
        sharding: a `jax.sharding.Mesh` to train data-parallel on: every batch split over
            its first axis, the parameters replicated (`probinf.train.run`); ``None``: one
            device.

    Returns:
        A :class:`DensityFitResult`; losses are in nats per sample. A non-finite loss,
        gradient or parameter stops training with a ``RuntimeWarning`` naming the step; the
        last finite state is kept.

    Raises:
        ValueError: non-finite or wrongly shaped ``data``/``context``, or an invalid option.
        TypeError: ``flow`` is not a Flow, ``key`` not a PRNG key, ``optimizer`` not optax.
    """
    warn_if_cpu_gradients_are_wrong()
    check_key(key)
    if not isinstance(flow, Flow):
        raise TypeError(f"`flow` must be a flows.Flow, got {type(flow).__name__}")
    data = _check_array(data, "data", flow.dim)
    if flow.context_dim is None:
        if context is not None:
            raise ValueError("`context` was given but `flow` is unconditional")
    else:
        if context is None:
            raise ValueError(f"`context` is required: `flow` is conditional (context_dim={flow.context_dim})")
        context = _check_array(context, "context", flow.context_dim, rows=data.shape[0])
    if not (isinstance(validation_fraction, (int, float)) and 0 <= validation_fraction < 1):
        raise ValueError(f"`validation_fraction` must be in [0, 1), got {validation_fraction!r}")
    batch_size = check_positive_int(batch_size, "batch_size")
    max_epochs = check_positive_int(max_epochs, "max_epochs")
    patience = check_positive_int(patience, "patience")
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}")

    n = data.shape[0]
    num_validation = int(round(validation_fraction * n)) if validation_fraction > 0 else 0
    if validation_fraction > 0:
        num_validation = max(num_validation, 1)
    if n - num_validation < 1:
        raise ValueError(f"`data` has {n} rows: too few to hold out a validation split")
    key_split, key_epochs = jax.random.split(key)
    order = jax.random.permutation(key_split, n)
    train_idx, val_idx = order[num_validation:], order[:num_validation]
    train_set = (data[train_idx], None if context is None else context[train_idx])
    validation_set = (data[val_idx], None if context is None else context[val_idx])
    batch_size = min(batch_size, len(train_idx))
    steps_per_epoch = len(train_idx) // batch_size

    result = train.run(
        train.make_step(_negative_log_likelihood, optimizer), train.init(flow, optimizer), key_epochs,
        epochs=max_epochs, data=train_set, batch_size=batch_size,
        validate=_validation_loss if num_validation else None,
        validation_data=validation_set if num_validation else None,
        patience=patience if num_validation else None, progress=progress, name="fit_to_data",
        sharding=sharding,
    )
    done = result.num_steps
    # Mean training loss per epoch (the last one partial when a non-finite step stopped it).
    train_losses = [result.losses[i : i + steps_per_epoch].mean() for i in range(0, done, steps_per_epoch)]
    if result.stop_reason == "non_finite":
        stop_reason = (f"non-finite loss or gradient in epoch {result.nonfinite_step // steps_per_epoch} "
                       f"(step {result.nonfinite_step}); training stopped at the last finite state")
    else:
        stop_reason = {"completed": "max_epochs"}.get(result.stop_reason, result.stop_reason)
    if num_validation:
        best_epoch = (result.best_step // steps_per_epoch - 1) if result.best_step is not None else 0
    else:
        best_epoch = max(len(train_losses) - 1, 0)
    return DensityFitResult(
        flow=result.params,
        train_losses=np.asarray(train_losses, np.float64),
        validation_losses=result.validation_losses,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
    )

"""Density estimation: fit a flow to samples by maximum likelihood.

:func:`fit_to_data` minimises the average negative log likelihood
:math:`-\\frac1m \\sum_{i \\in \\text{batch}} \\log q_\\phi(x_i \\mid c_i)` over
shuffled minibatches, holds out a validation split, and stops early when the
validation loss has not improved for ``patience`` epochs, returning the flow with
the best validation loss. Each epoch is one compiled :func:`jax.lax.scan` over its
minibatches. (Variational inference against an unnormalised target is
:func:`probinf.vi.fit` with any objective; flows plug in as families.)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

from flows._checks import check_key, check_positive_int
from flows.distribution import Flow
from probinf._progress import progress_bar
from probinf._tree import all_finite
from probinf._xla_workaround import warn_if_cpu_gradients_are_wrong

__all__ = ["fit_to_data", "DensityFitResult"]


@dataclass(frozen=True)
class DensityFitResult:
    """What :func:`fit_to_data` returns.

    Attributes:
        flow: the flow with the best validation loss (the last one without a split).
        train_losses: mean training loss (negative log likelihood per sample) per epoch.
        validation_losses: validation loss per epoch (empty without a split).
        best_epoch: index of the epoch whose parameters were kept.
        stop_reason: ``"max_epochs"``, ``"early_stopping"`` or a sentence naming the
            epoch at which a non-finite loss appeared.
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


def _negative_log_likelihood(params, static, x, context):
    flow = eqx.combine(params, static)
    return -jnp.mean(flow.log_prob(x, context))


@eqx.filter_jit
def _run_epoch(params, static, opt_state, key, x, context, optimizer, batch_size):
    num_batches = x.shape[0] // batch_size
    order = jax.random.permutation(key, x.shape[0])[: num_batches * batch_size]
    batches_x = x[order].reshape(num_batches, batch_size, -1)
    batches_c = None if context is None else context[order].reshape(num_batches, batch_size, -1)

    def step(carry, batch):
        params, opt_state, all_ok = carry
        bx, bc = batch
        loss, grads = eqx.filter_value_and_grad(_negative_log_likelihood)(params, static, bx, bc)
        updates, new_state = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & all_finite(grads)
        keep = lambda new, old: jtu.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
        return (keep(new_params, params), keep(new_state, opt_state), all_ok & finite), loss

    (params, opt_state, all_ok), losses = jax.lax.scan(
        step, (params, opt_state, jnp.asarray(True)), (batches_x, batches_c)
    )
    return params, opt_state, jnp.mean(losses), all_ok


@eqx.filter_jit
def _evaluate(params, static, x, context):
    return _negative_log_likelihood(params, static, x, context)


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
) -> DensityFitResult:
    """Fit ``flow`` to samples ``data`` by maximum likelihood with early stopping.

    Args:
        key: PRNG key (validation split and minibatch order).
        flow: the :class:`~flows.Flow` to train (all its inexact arrays are trained).
        data: samples, ``(n, dim)``.
        context: for a conditional flow, the context of each sample, ``(n, context_dim)``.
        optimizer: any optax transformation (default ``optax.adam(1e-3)``).
        batch_size: minibatch size (capped at the training-set size).
        max_epochs: maximum number of passes over the training split.
        validation_fraction: share of rows held out for early stopping, in ``[0, 1)``;
            ``0`` trains on everything for ``max_epochs`` epochs.
        patience: epochs without validation improvement before stopping.
        progress: show a progress bar (default: only on a terminal).

    Returns:
        A :class:`DensityFitResult`; losses are in nats per sample.

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
    optimizer = optax.adam(1e-3) if optimizer is None else optimizer
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
    train_x, val_x = data[train_idx], data[val_idx]
    train_c = None if context is None else context[train_idx]
    val_c = None if context is None else context[val_idx]
    batch_size = min(batch_size, train_x.shape[0])

    params, static = eqx.partition(flow, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    best_params, best_loss, best_epoch, waited = params, math.inf, 0, 0
    train_losses: list[float] = []
    val_losses: list[float] = []
    stop_reason = "max_epochs"
    with progress_bar(total=max_epochs, enabled=progress, desc="fit_to_data") as bar:
        for epoch in range(max_epochs):
            params, opt_state, loss, finite = _run_epoch(
                params, static, opt_state, jax.random.fold_in(key_epochs, epoch), train_x, train_c,
                optimizer, batch_size,
            )
            train_losses.append(float(loss))
            if not bool(finite):
                stop_reason = (
                    f"non-finite loss or gradient in epoch {epoch}; those steps were skipped and "
                    "training stopped"
                )
                warnings.warn(f"fit_to_data stopped: {stop_reason}", RuntimeWarning, stacklevel=2)
                if num_validation == 0:
                    best_params, best_epoch = params, epoch
                break
            if num_validation == 0:
                best_params, best_epoch = params, epoch
                bar.update(1)
                bar.set_postfix(train=f"{loss:.4g}")
                continue
            val_loss = float(_evaluate(params, static, val_x, val_c))
            val_losses.append(val_loss)
            bar.update(1)
            bar.set_postfix(train=f"{loss:.4g}", validation=f"{val_loss:.4g}")
            if val_loss < best_loss:
                best_params, best_loss, best_epoch, waited = params, val_loss, epoch, 0
            else:
                waited += 1
                if waited >= patience:
                    stop_reason = "early_stopping"
                    break
    return DensityFitResult(
        flow=eqx.combine(best_params, static),
        train_losses=np.asarray(train_losses),
        validation_losses=np.asarray(val_losses),
        best_epoch=best_epoch,
        stop_reason=stop_reason,
    )

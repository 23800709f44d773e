"""Parameter learning: expectation-maximisation and gradient training.

**EM.** A smooth, decomposable circuit is a latent-variable model whose latent
states are its induced trees, so EM applies (Peharz et al., "Einsum Networks",
ICML 2020; Choi, Liu & Van den Broeck, "On the expressive efficiency of sum
product networks" style derivations). The E-step's expected counts come from one
backward pass: for a sum weight ``w_oj`` and a data point ``x``,

.. math:: n_{oj}(x) = \\frac{\\partial \\log p(x)}{\\partial \\log w_{oj}}
          = P(\\text{edge } o \\to j \\text{ in the induced tree} \\mid x),

and an input unit's responsibility is the derivative of ``log p(x)`` with
respect to its log-value. The M-step sets ``w_oj \\propto n_oj + \\alpha``
(pseudocount ``alpha``) and each input unit to its responsibility-weighted
maximum-likelihood fit. Full-batch EM never decreases the training
log-likelihood (with ``alpha = 0``; with ``alpha > 0`` it is MAP-EM under a
Dirichlet prior). Mini-batch (stochastic) EM blends the batch's M-step into the
current parameters with a step size ``lambda``:
``theta <- (1 - lambda) theta + lambda theta_batch`` (this blends parameters, not
statistics, so rarely used units are noisy with small batches; full-batch EM is
the better choice for data that fit in a few passes).

**Gradients.** :func:`fit_gradient` minimises the negative mean
log-likelihood with any optax optimizer over the unconstrained parameters
(softmax logits, input logits, Gaussian locations and log-scales).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from circuits.circuit import Circuit, root_value, upward

__all__ = ["TrainResult", "em", "fit_gradient", "average_log_likelihood"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`em` and :func:`fit_gradient` return.

    Attributes:
        circuit: the trained circuit (the best on ``valid`` when ``keep_best``).
        train_log_likelihood: mean train log-likelihood per sample, one entry per
            epoch, measured with the parameters the epoch started from (for
            full-batch EM this is exactly the E-step's log-likelihood).
        valid_log_likelihood: mean validation log-likelihood after each epoch
            (empty without ``valid``).
        final_train_log_likelihood: mean train log-likelihood of ``circuit``.
        num_epochs: epochs run.
        stop_reason: ``"completed"`` or a sentence naming the epoch at which the
            log-likelihood became non-finite (its update was discarded).
        seconds: wall-clock training time.
    """

    circuit: Circuit
    train_log_likelihood: np.ndarray
    valid_log_likelihood: np.ndarray
    final_train_log_likelihood: float
    num_epochs: int
    stop_reason: str
    seconds: float


# ----------------------------------------------------------------- helpers
def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def _prepare_data(circuit: Circuit, data, name: str) -> jax.Array:
    if data is None:
        return None
    x, observed, batch_shape = circuit._prepare(data, None, name)
    if len(batch_shape) != 1:
        raise ValueError(f"`{name}` must be (num_samples, {circuit.num_variables}), got shape "
                         f"{np.shape(data)}")
    return x


def _batches(x, batch_size):
    """Pad ``x`` to whole batches: ``(num_batches, batch, V)`` and a 0/1 row weight."""
    n = x.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    xp = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
    weight = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)])
    return (xp.reshape(num_batches, batch_size, -1), weight.reshape(num_batches, batch_size))


@eqx.filter_jit
def _batch_log_likelihood(circuit, xb, wb):
    ll = circuit._log_marginal(xb, jnp.ones_like(xb, bool))
    return jnp.sum(jnp.where(wb > 0, ll, 0.0))


def average_log_likelihood(circuit: Circuit, data, batch_size: int = 1024) -> float:
    """Mean log-likelihood per sample (nats) of complete ``data`` ``(N, V)``, in batches.

    Every batch has the same shape (the last one is padded), so datasets of any
    size share one compiled function.

    Raises:
        ValueError: naming the variable for invalid data (see :meth:`Circuit.log_prob`).
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    x = _prepare_data(circuit, data, "data")
    batches, weights = _batches(x, batch_size)
    total = sum(float(_batch_log_likelihood(circuit, xb, wb))
                for xb, wb in zip(batches, weights, strict=True))
    return total / x.shape[0]


# ---------------------------------------------------------------------- EM
def _expected_statistics(circuit: Circuit, x, weight):
    """Log-likelihood sum, expected sum-weight counts and input statistics of one batch."""
    log_w, log_mix = circuit.log_weights()
    observed = jnp.ones_like(x, bool)
    values = circuit._input_values(x, observed)

    def total(log_w, log_mix, values):
        groups = upward(circuit.structure, values, log_w, log_mix, "sum", circuit.backend)
        return jnp.sum(weight * root_value(circuit.structure, groups))

    ll, (counts, mix_counts, responsibility) = jax.value_and_grad(total, argnums=(0, 1, 2))(
        log_w, log_mix, values)
    xs = x.T[jnp.asarray(circuit.structure.slot_variable)]
    stats = circuit.input_layer.sufficient_statistics(responsibility, xs)
    return ll, (counts, mix_counts, stats)


def _normalised_update(old_log_w, counts, pseudocount, step_size, valid=None):
    counts = counts + pseudocount
    if valid is not None:
        counts = jnp.where(valid, counts, 0.0)
    total = jnp.sum(counts, axis=-1, keepdims=True)
    old = jnp.exp(old_log_w)
    new = jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), old)
    probs = (1.0 - step_size) * old + step_size * new
    log_probs = jnp.log(jnp.maximum(probs, 1e-30))
    return log_probs if valid is None else jnp.where(valid, log_probs, 0.0)


def _m_step(circuit: Circuit, statistics, pseudocount, step_size):
    counts, mix_counts, stats = statistics
    log_w, log_mix = circuit.log_weights()
    sum_logits = tuple(_normalised_update(lw, c, pseudocount, step_size)
                       for lw, c in zip(log_w, counts, strict=True))
    mix_logits = []
    for (_, mixing), lm, c in zip(circuit.structure.stages, log_mix, mix_counts, strict=True):
        if mixing is None:
            mix_logits.append(None)
        else:
            valid = jnp.asarray(mixing.valid)[:, None, :]
            mix_logits.append(_normalised_update(jnp.where(valid, lm, 0.0), c, pseudocount,
                                                 step_size, valid))
    input_params = circuit.input_layer.em_update(
        circuit.input_params, stats, pseudocount, None if step_size == 1.0 else step_size)
    return circuit.with_params(input_params, sum_logits, tuple(mix_logits))


@eqx.filter_jit
def _full_batch_epoch(circuit, batches, weights, pseudocount, step_size):
    def body(carry, batch):
        ll, acc = carry
        batch_ll, stats = _expected_statistics(circuit, *batch)
        return (ll + batch_ll, jax.tree_util.tree_map(jnp.add, acc, stats)), None

    zero_ll, first = _expected_statistics(circuit, batches[0], weights[0])
    (ll, stats), _ = jax.lax.scan(body, (zero_ll, first), (batches[1:], weights[1:]))
    return _m_step(circuit, stats, pseudocount, step_size), ll


@eqx.filter_jit
def _mini_batch_epoch(circuit, batches, weights, pseudocount, step_size):
    params, static = eqx.partition(circuit, eqx.is_array)

    def body(params, batch):
        current = eqx.combine(params, static)
        ll, stats = _expected_statistics(current, *batch)
        updated = _m_step(current, stats, pseudocount, step_size)
        return eqx.partition(updated, eqx.is_array)[0], ll

    params, lls = jax.lax.scan(body, params, (batches, weights))
    return eqx.combine(params, static), jnp.sum(lls)


def _finite(circuit) -> bool:
    leaves = jax.tree_util.tree_leaves(eqx.filter(circuit, eqx.is_inexact_array))
    return all(bool(jnp.all(jnp.isfinite(x) | (x == -jnp.inf))) for x in leaves)


def _train_loop(circuit, x, valid, num_epochs, run_epoch, keep_best, progress, desc):
    from probinf._progress import progress_bar

    n = x.shape[0]
    started = time.perf_counter()
    train_history, valid_history = [], []
    best, best_valid = circuit, -np.inf
    stop_reason = "completed"
    with progress_bar(total=num_epochs, enabled=progress, desc=desc) as bar:
        for epoch in range(num_epochs):
            updated, total_ll = run_epoch(epoch, circuit)
            mean_ll = float(total_ll) / n
            if not np.isfinite(mean_ll) or not _finite(updated):
                stop_reason = (f"stopped at epoch {epoch}: the log-likelihood or a parameter "
                               "became non-finite; that epoch's update was discarded")
                break
            train_history.append(mean_ll)
            circuit = updated
            if valid is not None:
                valid_ll = average_log_likelihood(circuit, valid)
                valid_history.append(valid_ll)
                if valid_ll > best_valid:
                    best, best_valid = circuit, valid_ll
                bar.set_postfix(train=f"{mean_ll:.3f}", valid=f"{valid_ll:.3f}")
            else:
                bar.set_postfix(train=f"{mean_ll:.3f}")
            bar.update(1)
    final = best if (keep_best and valid is not None and valid_history) else circuit
    seconds = time.perf_counter() - started
    return TrainResult(
        circuit=final,
        train_log_likelihood=np.asarray(train_history),
        valid_log_likelihood=np.asarray(valid_history),
        final_train_log_likelihood=average_log_likelihood(final, x),
        num_epochs=len(train_history),
        stop_reason=stop_reason,
        seconds=seconds,
    )


def em(
    circuit: Circuit,
    data,
    *,
    num_epochs: int = 10,
    batch_size: int | None = None,
    step_size: float = 1.0,
    pseudocount: float = 0.1,
    key=None,
    valid=None,
    keep_best: bool = True,
    progress: bool | None = None,
) -> TrainResult:
    """Fit a normalised circuit by EM (see the module docstring).

    Args:
        circuit: a circuit with ``normalized=True``.
        data: complete training data ``(N, V)``.
        num_epochs: passes over the data.
        batch_size: ``None`` for full-batch EM (statistics are still accumulated in
            chunks of 1024 rows); an integer for mini-batch EM with one update per batch.
        step_size: ``lambda`` in ``(0, 1]``; full-batch EM uses 1 unless told otherwise.
        pseudocount: ``alpha >= 0`` added to every expected count.
        key: PRNG key to shuffle the data each epoch (required for mini-batch EM).
        valid: optional validation data, evaluated after every epoch.
        keep_best: return the parameters with the best validation log-likelihood.
        progress: show a progress bar (default: when on a terminal).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: for an unnormalised circuit, bad hyper-parameters (naming the
            argument) or invalid data (naming the variable).
    """
    if not isinstance(circuit, Circuit):
        raise TypeError(f"`circuit` must be a Circuit, got {type(circuit).__name__}")
    if not circuit.normalized:
        raise ValueError("`circuit` is unnormalised (normalized=False); EM needs normalised "
                         "weights — use fit_gradient")
    num_epochs = _check_positive_int(num_epochs, "num_epochs")
    if not (isinstance(step_size, (int, float)) and 0.0 < step_size <= 1.0):
        raise ValueError(f"`step_size` must be in (0, 1], got {step_size!r}")
    if not (isinstance(pseudocount, (int, float)) and pseudocount >= 0.0):
        raise ValueError(f"`pseudocount` must be >= 0, got {pseudocount!r}")
    x = _prepare_data(circuit, data, "data")
    valid_x = None if valid is None else _prepare_data(circuit, valid, "valid")
    pseudocount = float(pseudocount)
    if batch_size is None:
        batches, weights = _batches(x, min(1024, x.shape[0]))

        def run_epoch(epoch, current):
            return _full_batch_epoch(current, batches, weights, pseudocount, float(step_size))
    else:
        batch_size = _check_positive_int(batch_size, "batch_size")
        if key is None:
            raise ValueError("`key` is required for mini-batch EM (the data are shuffled)")
        batch_size = min(batch_size, x.shape[0])

        def run_epoch(epoch, current):
            order = jax.random.permutation(jax.random.fold_in(key, epoch), x.shape[0])
            batches, weights = _batches(x[order], batch_size)
            return _mini_batch_epoch(current, batches, weights, pseudocount, float(step_size))

    desc = "EM" if batch_size is None else "mini-batch EM"
    return _train_loop(circuit, x, valid_x, num_epochs, run_epoch, keep_best, progress, desc)


# --------------------------------------------------------------- gradients
@eqx.filter_jit
def _gradient_epoch(model, opt_state, batches, weights, optimizer, materialize=None):
    """One epoch of optax steps on the mean log-likelihood. ``model`` is a circuit, or, with
    ``materialize=(rule, backend)``, an integral circuit turned into one at every step."""
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(params, xb, wb):
        current = eqx.combine(params, static)
        if materialize is not None:
            current = current.materialize(*materialize)
        ll = current._log_marginal(xb, jnp.ones_like(xb, bool))
        return -jnp.sum(wb * ll) / jnp.sum(wb)

    def body(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), -loss * jnp.sum(batch[1])

    (params, opt_state), lls = jax.lax.scan(body, (params, opt_state), (batches, weights))
    return eqx.combine(params, static), opt_state, jnp.sum(lls)


def fit_gradient(
    circuit: Circuit,
    data,
    optimizer: optax.GradientTransformation,
    *,
    key,
    num_epochs: int = 10,
    batch_size: int = 256,
    valid=None,
    keep_best: bool = True,
    progress: bool | None = None,
) -> TrainResult:
    """Fit a circuit by minimising the negative mean log-likelihood with any optax optimizer.

    Works for normalised and unnormalised circuits (the latter divide by ``Z``,
    which is differentiated through). Each epoch is one jit-compiled ``lax.scan``
    over shuffled mini-batches.

    Args:
        circuit: the circuit to train (all its inexact arrays are trained).
        data: complete training data ``(N, V)``.
        optimizer: e.g. ``optax.adam(1e-2)``.
        key: PRNG key to shuffle the data each epoch.
        num_epochs: passes over the data.
        batch_size: rows per gradient step.
        valid: optional validation data, evaluated after every epoch.
        keep_best: return the parameters with the best validation log-likelihood.
        progress: show a progress bar (default: when on a terminal).
    """
    if not isinstance(circuit, Circuit):
        raise TypeError(f"`circuit` must be a Circuit, got {type(circuit).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}")
    num_epochs = _check_positive_int(num_epochs, "num_epochs")
    batch_size = _check_positive_int(batch_size, "batch_size")
    x = _prepare_data(circuit, data, "data")
    valid_x = None if valid is None else _prepare_data(circuit, valid, "valid")
    batch_size = min(batch_size, x.shape[0])
    state = {"opt": optimizer.init(eqx.filter(circuit, eqx.is_inexact_array))}

    def run_epoch(epoch, current):
        order = jax.random.permutation(jax.random.fold_in(key, epoch), x.shape[0])
        batches, weights = _batches(x[order], batch_size)
        updated, opt_state, ll = _gradient_epoch(current, state["opt"], batches, weights,
                                                 optimizer)
        if np.isfinite(float(ll)):
            state["opt"] = opt_state
        return updated, ll

    return _train_loop(circuit, x, valid_x, num_epochs, run_epoch, keep_best, progress,
                       "gradient")

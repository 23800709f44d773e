"""Training a Distribution Transformer on simulated (prior, parameter, data) triples.

The objective (Whittle et al., 2025) is the expected negative log density of the true
parameter under the predicted posterior,

.. math::
    \\mathcal L(\\phi) = -\\,\\mathbb E_{\\pi \\sim \\Pi,\\; \\theta \\sim \\pi,\\; y \\sim p(\\cdot\\mid\\theta)}
    \\big[\\log q_\\phi(\\theta \\mid \\pi, y)\\big]
    = \\mathbb E\\big[\\mathrm{KL}\\big(p(\\theta\\mid\\pi, y)\\,\\|\\,q_\\phi(\\theta\\mid\\pi, y)\\big)\\big] + \\text{const},

whose minimiser over an expressive enough model is the exact posterior for every prior
:math:`\\pi` of the meta-prior :math:`\\Pi` and every dataset. Models with a learned
prior embedding add the same loss for their prior approximation,
:math:`-\\log q_\\phi(\\theta\\mid\\pi)`.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax

from amortized.tasks.base import SimulationBatch, Task
from amortized.transformer import DistributionTransformer
from probinf._progress import progress_bar
from probinf._tree import all_finite
from probinf.families import check_num_samples

__all__ = ["train", "TrainResult", "load_checkpoint", "negative_log_likelihood", "default_optimizer"]

_CHECKPOINT_FORMAT = "amortized-checkpoint-v1"


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model.
        losses: ``(num_steps,)`` mean posterior negative log density per step.
        prior_losses: the same for the prior approximation (parametric priors), else ``None``.
        num_steps: steps applied in total (including those before a resume).
        stop_reason: ``"completed"`` or a sentence naming a non-finite step.
        opt_state: optimizer state, to continue training.
        seconds: wall-clock time of this call.
    """

    model: DistributionTransformer
    losses: np.ndarray
    prior_losses: np.ndarray | None
    num_steps: int
    stop_reason: str
    opt_state: Any
    seconds: float

    def plot_losses(self, ax=None, *, smooth: int | None = 50):
        """Plot the loss history (with a running mean of ``smooth`` steps)."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        steps = np.arange(1, len(self.losses) + 1)
        ax.plot(steps, self.losses, lw=0.5, alpha=0.4, label="posterior NLL")
        if smooth and len(self.losses) >= smooth:
            window = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1 :], np.convolve(self.losses, window, "valid"), label=f"running mean ({smooth})")
        ax.set_xlabel("step")
        ax.set_ylabel(r"$-\log q(\theta \mid \mathrm{prior}, y)$")
        ax.legend(frameon=False)
        return ax


def negative_log_likelihood(model: DistributionTransformer, batch: SimulationBatch) -> tuple[jax.Array, jax.Array]:
    """Batch means of :math:`-\\log q(\\theta\\mid\\pi,y)` and of the prior term (0 for mixture priors)."""

    def one(prior, theta, observations, mask):
        prior_mixture, posterior = model.forward(prior, observations, mask)
        prior_nll = -prior_mixture.log_prob(theta) if model.parametric_prior else jnp.zeros(())
        return -posterior.log_prob(theta), prior_nll

    post, prior = jax.vmap(one)(batch.prior, batch.theta, batch.observations, batch.mask)
    return jnp.mean(post), jnp.mean(prior)


def default_optimizer(
    steps: int, learning_rate: float = 1e-3, final_fraction: float = 0.05
) -> optax.GradientTransformation:
    """Adam with gradient clipping (norm 1), linear warm-up and cosine decay.

    The learning rate rises linearly over the first ``min(200, steps // 10)`` steps to
    ``learning_rate``, then follows a cosine (Loshchilov and Hutter, 2017, *SGDR*) down to
    ``final_fraction * learning_rate``. Adam moves every weight by about the learning
    rate per step whatever the gradient's size, so the final rate bounds how precisely
    the weights settle: posteriors that need outputs resolved to :math:`10^{-3}` (SLCP's
    funnel) want a small ``final_fraction``.
    """
    steps = check_num_samples(steps, "steps")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not 0.0 < learning_rate < math.inf:
        raise ValueError(f"`learning_rate` must be a positive finite number, got {learning_rate!r}")
    if isinstance(final_fraction, bool) or not isinstance(final_fraction, (int, float)) or not 0.0 <= final_fraction <= 1.0:
        raise ValueError(f"`final_fraction` must be a number in [0, 1], got {final_fraction!r}")
    warmup = max(1, min(200, steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, max(steps, warmup + 1), end_value=final_fraction * learning_rate
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


@eqx.filter_jit
def _run_chunk(params, static, task, opt_state, key, start, total, optimizer, batch_size, chunk_len):
    def loss_fn(p, batch):
        model = eqx.combine(p, static)
        post, prior = negative_log_likelihood(model, batch)
        return post + prior, (post, prior)

    def body(carry, offset):
        params, opt_state, bad_step = carry
        step = start + offset
        batch = task.simulate(jax.random.fold_in(key, step), batch_size)
        (_, (post, prior)), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = eqx.apply_updates(params, updates)
        finite = jnp.isfinite(post) & jnp.isfinite(prior) & all_finite(grads)
        active = (step < total) & (bad_step < 0)
        accept = active & finite

        def choose(new, old):
            return jtu.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)

        bad_step = jnp.where(active & ~finite, step, bad_step)
        return (choose(new_params, params), choose(new_opt_state, opt_state), bad_step), (post, prior)

    init = (params, opt_state, jnp.asarray(-1, jnp.int32))
    (params, opt_state, bad_step), (post, prior) = jax.lax.scan(
        body, init, jnp.arange(chunk_len, dtype=jnp.int32)
    )
    return params, opt_state, bad_step, post, prior


def _save_checkpoint(path, model, opt_state, step, losses, prior_losses, key, steps, batch_size):
    from probinf.io import save

    save(path, {
        "format": _CHECKPOINT_FORMAT,
        "model": model,
        "opt_state": opt_state,
        "step": int(step),
        "losses": np.asarray(losses),
        "prior_losses": None if prior_losses is None else np.asarray(prior_losses),
        "key_data": np.asarray(jax.random.key_data(key)),
        "steps": int(steps),
        "batch_size": int(batch_size),
    })


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`train` (``model``, ``opt_state``, ``step``, ``losses``, ...)."""
    from probinf.io import load

    payload = load(path)
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"`path` {os.fspath(path)!r} is not a checkpoint written by amortized.train")
    return payload


def train(
    model: DistributionTransformer,
    task: Task,
    *,
    key: jax.Array,
    steps: int = 2000,
    batch_size: int = 256,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    chunk_size: int = 100,
    progress: bool | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` on fresh simulations from ``task`` (see the module docstring).

    Each step draws ``batch_size`` new triples with key ``fold_in(key, step)``, so the
    result does not depend on ``chunk_size`` and a resumed run reproduces an
    uninterrupted one exactly. The loop runs under ``jax.lax.scan`` in chunks of
    ``chunk_size`` steps; a progress bar advances per chunk.

    Args:
        model: the :class:`~amortized.DistributionTransformer` to train (its shapes must
            match ``task.model_options()``).
        task: a :class:`~amortized.tasks.Task`.
        key: PRNG key.
        steps: total number of optimisation steps (including steps done before a resume).
        batch_size: simulations per step.
        optimizer: an optax transformation (default :func:`default_optimizer`).
        learning_rate: peak learning rate of the default optimizer.
        chunk_size: steps per compiled chunk.
        progress: show a progress bar (default: only on a terminal).
        checkpoint_path: where to write checkpoints (model, optimizer state, step, losses).
        checkpoint_every: write a checkpoint every this many steps (rounded up to whole
            chunks) and at the end; needs ``checkpoint_path``.
        resume: continue from the checkpoint at ``checkpoint_path``.

    Returns:
        A :class:`TrainResult`. A non-finite loss or gradient stops training with a
        ``RuntimeWarning`` naming the step; the last finite state is kept.

    Raises:
        ValueError: a model whose shapes do not match the task, or invalid options.
        TypeError: a key that is not a PRNG key or an optimizer that is not optax.
    """
    if not isinstance(model, DistributionTransformer):
        raise TypeError(f"`model` must be a DistributionTransformer, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise TypeError(f"`task` must be an amortized.tasks.Task, got {type(task).__name__}")
    # Shapes must match; a model without the task's symmetric_axes is still a valid model.
    expected = {k: v for k, v in task.model_options().items() if k != "symmetric_axes"}
    actual = {
        "dim": model.dim, "obs_dim": model.obs_dim,
        **({"prior_param_dim": model.prior_param_dim, "num_components": model.num_components}
           if model.parametric_prior else {}),
    }
    if actual != expected:
        raise ValueError(f"`model` does not fit `task`: the task needs {expected}, the model has {actual}")
    if not (isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
        raise TypeError(f"`key` must be a typed JAX PRNG key (jax.random.key(0)), got {type(key).__name__}")
    steps = check_num_samples(steps, "steps")
    batch_size = check_num_samples(batch_size, "batch_size")
    chunk_size = min(check_num_samples(chunk_size, "chunk_size"), steps)
    optimizer = default_optimizer(steps, learning_rate) if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}")
    if checkpoint_every is not None:
        checkpoint_every = check_num_samples(checkpoint_every, "checkpoint_every")
        if checkpoint_path is None:
            raise ValueError("`checkpoint_every` needs `checkpoint_path`")
    if resume and checkpoint_path is None:
        raise ValueError("`resume=True` needs `checkpoint_path`")

    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    start_step, history, prior_history = 0, [], []
    if resume:
        state = load_checkpoint(checkpoint_path)
        saved_key = jax.random.wrap_key_data(jnp.asarray(state["key_data"]))
        if not bool(jnp.all(jax.random.key_data(saved_key) == jax.random.key_data(key))):
            raise ValueError("`key` differs from the key of the checkpoint being resumed")
        if state["batch_size"] != batch_size:
            raise ValueError(f"`batch_size` ({batch_size}) differs from the checkpoint's ({state['batch_size']})")
        params, static = eqx.partition(state["model"], eqx.is_inexact_array)
        opt_state = state["opt_state"]
        start_step = state["step"]
        history = [np.asarray(state["losses"])]
        if state["prior_losses"] is not None:
            prior_history = [np.asarray(state["prior_losses"])]
        if start_step % chunk_size:
            raise ValueError(
                f"the checkpoint is at step {start_step}, not a multiple of `chunk_size` ({chunk_size}); "
                "resume with the chunk size it was written with"
            )

    stop_reason = "completed"
    total = jnp.asarray(steps, jnp.int32)
    started = time.perf_counter()
    last_saved = start_step
    with progress_bar(total=steps, enabled=progress, desc="train", initial=start_step) as bar:
        for start in range(start_step, steps, chunk_size):
            params, opt_state, bad_step, post, prior = _run_chunk(
                params, static, task, opt_state, key, jnp.asarray(start, jnp.int32), total,
                optimizer, batch_size, chunk_size,
            )
            done = min(chunk_size, steps - start)
            post = np.asarray(post, np.float64)[:done]
            prior = np.asarray(prior, np.float64)[:done]
            bad_step = int(bad_step)
            if bad_step >= 0:
                kept = bad_step - start
                history.append(post[:kept])
                prior_history.append(prior[:kept])
                stop_reason = (
                    f"non-finite loss or gradient at step {bad_step}; kept the state after step {bad_step - 1}"
                )
                warnings.warn(f"train stopped: {stop_reason}", RuntimeWarning, stacklevel=2)
                bar.update(kept)
                break
            history.append(post)
            prior_history.append(prior)
            bar.update(done)
            bar.set_postfix(loss=f"{post.mean():.4g}")
            step_now = start + done
            if checkpoint_every is not None and step_now - last_saved >= checkpoint_every and step_now < steps:
                _save_checkpoint(checkpoint_path, eqx.combine(params, static), opt_state, step_now,
                                 np.concatenate(history), np.concatenate(prior_history) if model.parametric_prior else None,
                                 key, steps, batch_size)
                last_saved = step_now

    model = eqx.combine(params, static)
    losses = np.concatenate(history) if history else np.zeros(0)
    prior_losses = (np.concatenate(prior_history) if prior_history else np.zeros(0)) if model.parametric_prior else None
    if checkpoint_path is not None:
        _save_checkpoint(checkpoint_path, model, opt_state, len(losses), losses, prior_losses, key, steps, batch_size)
    return TrainResult(
        model=model,
        losses=losses,
        prior_losses=prior_losses,
        num_steps=len(losses),
        stop_reason=stop_reason,
        opt_state=opt_state,
        seconds=time.perf_counter() - started,
    )

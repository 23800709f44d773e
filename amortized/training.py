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

import functools
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from amortized.tasks.base import SimulationBatch, Task
from amortized.transformer import DistributionTransformer
from probinf import train as engine
from probinf.families import check_num_samples

__all__ = ["train", "TrainResult", "load_checkpoint", "negative_log_likelihood", "default_optimizer"]


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
    return _default_optimizer(steps, float(learning_rate), float(final_fraction))


@functools.lru_cache(maxsize=32)
def _default_optimizer(steps: int, learning_rate: float, final_fraction: float) -> optax.GradientTransformation:
    # One object per setting: train's compiled loop is cached on the optimizer object.
    warmup = max(1, min(200, steps // 10))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, warmup, max(steps, warmup + 1), end_value=final_fraction * learning_rate
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))


@dataclass(frozen=True)
class _SimulationLoss:
    """The loss of one step on ``batch_size`` fresh simulations (hashable: the compiled loop
    is reused). With ``batch_sharding`` the simulations are split over its mesh's first
    axis: each device scores its share, and the partitioner sums across devices."""

    batch_size: int
    batch_sharding: Any = None

    def __call__(self, model, key, task):
        batch = task.simulate(key, self.batch_size)
        if self.batch_sharding is not None:
            batch = jax.tree_util.tree_map(
                lambda leaf: jax.lax.with_sharding_constraint(leaf, self.batch_sharding), batch)
        post, prior = negative_log_likelihood(model, batch)
        return post + prior, (post, prior)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`train`: a dict with ``model``, ``opt_state``, ``step``,
    ``losses``, ``prior_losses`` (``None`` for mixture priors) and ``stop_reason``."""
    try:
        payload = engine.load_checkpoint(path)
    except ValueError:
        raise ValueError(f"`path` {os.fspath(path)!r} is not a checkpoint written by amortized.train "
                         "(nor by probinf.train.run)") from None
    post, prior = (None, None) if payload["aux"] is None else payload["aux"]
    parametric = getattr(payload["state"].params, "parametric_prior", False)
    return {
        "model": payload["state"].params,
        "opt_state": payload["state"].opt_state,
        "step": int(payload["step"]),
        "losses": np.zeros(0) if post is None else np.asarray(post),
        "prior_losses": (np.zeros(0) if prior is None else np.asarray(prior)) if parametric else None,
        "stop_reason": payload["stop_reason"],
    }


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
    sharding: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Train ``model`` on fresh simulations from ``task`` (see the module docstring).

    Each step draws ``batch_size`` new triples with key ``fold_in(key, step)``, so the
    result does not depend on ``chunk_size`` and a resumed run reproduces an
    uninterrupted one exactly. The loop is `probinf.train.run`: compiled chunks of
    ``chunk_size`` steps, a progress bar advancing per chunk, one non-finite policy. The
    default optimizer is cached per ``(steps, learning_rate)``, so a second call with the
    same settings and shapes reuses the compiled loop.

    Args:
        model: the :class:`~amortized.DistributionTransformer` to train (its shapes must
            match ``task.model_options()``).
        task: a :class:`~amortized.tasks.Task`.
        key: PRNG key (typed or raw).
        steps: total number of optimisation steps (including steps done before a resume).
        batch_size: simulations per step.
        optimizer: an optax transformation (default :func:`default_optimizer`).
        learning_rate: peak learning rate of the default optimizer.
        chunk_size: steps per compiled chunk.
        progress: show a progress bar (default: only on a terminal).
        checkpoint_path: where to write checkpoints (model, optimizer state, step, losses).
        checkpoint_every: write a checkpoint every this many steps and at the end (also
            on ``KeyboardInterrupt``); needs ``checkpoint_path``.
        resume: continue from the checkpoint at ``checkpoint_path`` (same ``key`` and
            ``batch_size``; any ``chunk_size``).
        sharding: a `jax.sharding.Mesh` to train data-parallel on: each step's
            simulations are split over the mesh's first axis (``batch_size`` a multiple of
            its size), the model, optimizer state and task replicated; the result equals
            the one-device run up to the order of floating-point sums.

    Returns:
        A :class:`TrainResult`. A non-finite loss, gradient or parameter stops training
        with a ``RuntimeWarning`` naming the step; the last finite state is kept.

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
    steps = check_num_samples(steps, "steps")
    batch_size = check_num_samples(batch_size, "batch_size")
    chunk_size = check_num_samples(chunk_size, "chunk_size")
    optimizer = default_optimizer(steps, learning_rate) if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got {type(optimizer).__name__}")
    if checkpoint_every is not None:
        checkpoint_every = check_num_samples(checkpoint_every, "checkpoint_every")
        if checkpoint_path is None:
            raise ValueError("`checkpoint_every` needs `checkpoint_path`")
    if resume and checkpoint_path is None:
        raise ValueError("`resume=True` needs `checkpoint_path`")

    batch_sharding = None if sharding is None else engine.split_sharding(sharding, batch_size)
    state, data = engine.init(model, optimizer), task
    if batch_sharding is not None:
        state, data = engine.replicate((state, data), sharding)

    started = time.perf_counter()
    result = engine.run(
        engine.make_step(_SimulationLoss(batch_size, batch_sharding), optimizer), state, key,
        steps=steps, data=data, chunk_size=chunk_size, progress=progress, name="train",
        checkpoint=checkpoint_path, checkpoint_every=checkpoint_every, resume=resume,
        checkpoint_meta={"batch_size": batch_size},
    )
    post, prior = (np.zeros(0), np.zeros(0)) if result.aux is None else result.aux
    stop_reason = result.stop_reason
    if stop_reason == "non_finite":
        step = result.nonfinite_step
        stop_reason = f"non-finite loss or gradient at step {step}; kept the state after step {step - 1}"
    return TrainResult(
        model=result.state.params,
        losses=np.asarray(post, np.float64),
        prior_losses=np.asarray(prior, np.float64) if model.parametric_prior else None,
        num_steps=result.num_steps,
        stop_reason=stop_reason,
        opt_state=result.state.opt_state,
        seconds=time.perf_counter() - started,
    )

"""Neural posterior estimation (the baseline) with conditional flows from ``flows``.

NPE (Papamakarios & Murray, 2016; Greenberg, Nonnenmacher & Macke, 2019) fits a
conditional density :math:`q_\\phi(\\theta \\mid x)` to simulated pairs
:math:`(\\theta_i, x_i) \\sim p(\\theta)p(x\\mid\\theta)` by maximum likelihood,

.. math:: \\max_\\phi \\sum_i \\log q_\\phi(\\theta_i \\mid x_i),

which for an expressive family recovers :math:`p(\\theta\\mid x)` for the prior used in
simulation. Here :math:`q_\\phi` is a conditional neural spline flow from
:func:`flows.spline_flow`; its context is the flattened data set (with its mask)
followed by the prior's coordinates (:func:`flatten_context`), so that on tasks whose
prior varies NPE is amortized over priors too — but, unlike a Distribution
Transformer, only over priors like those it was trained on, with no structure that
carries the prior through. Parameters and contexts are z-scored with the statistics
of the training simulations, as sbi does. Training uses a fixed simulation budget, minibatch Adam, a held-out
validation fraction and early stopping on the validation loss.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

# flows first: it sets XLA options that must precede JAX's CPU backend start.
import flows  # isort: skip  # noqa: I001

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from amortized.gmm import GaussianMixture, flip_averaged_log_prob, random_sign_flips, sign_patterns
from amortized.tasks.base import Task
from amortized.transformer import component_coordinates
from probinf import train
from probinf.families import check_num_samples

__all__ = ["NPEPosterior", "NPEResult", "train_npe", "flatten_context", "flatten_dataset"]


class NPEPosterior(eqx.Module):
    """A trained conditional flow :math:`q(\\theta \\mid \\pi, x)` as an amortized posterior.

    ``observation`` is a triple ``(prior, observations, mask)`` as in
    :class:`~amortized.tasks.SimulationBatch` (the prior is a mixture or a parameter vector).

    With ``symmetric_axes`` the density is the flow's averaged over the sign flips
    :math:`D` of those coordinates, :math:`\\bar q(\\theta\\mid x) = 2^{-m}\\sum_D q(D\\theta\\mid x)`
    (exactly invariant; see :func:`~amortized.gmm.sign_symmetrize`), and a draw is a flow
    draw with a uniformly random flip applied.
    """

    flow: eqx.Module
    theta_loc: Float[Array, " dim"]
    theta_scale: Float[Array, " dim"]
    context_loc: Float[Array, " c"]
    context_scale: Float[Array, " c"]
    symmetric_axes: tuple[int, ...] = eqx.field(static=True, default=())

    @property
    def dim(self) -> int:
        return self.theta_loc.shape[0]

    def _context(self, observation) -> Array:
        if not (isinstance(observation, tuple) and len(observation) == 3):
            raise TypeError("`observation` must be a triple (prior, observations, mask)")
        prior, observations, mask = observation
        context = flatten_context(prior, jnp.asarray(observations), jnp.asarray(mask))
        return (context - self.context_loc) / self.context_scale

    def log_prob(self, theta: Float[Array, "... dim"], observation) -> Float[Array, "..."]:
        """:math:`\\log q(\\theta \\mid x)` (with the Jacobian of the z-scoring)."""
        theta = jnp.asarray(theta)
        context = self._context(observation)

        def flow_log_prob(t):
            z = (t - self.theta_loc) / self.theta_scale
            return self.flow.log_prob(z, context) - jnp.sum(jnp.log(self.theta_scale))

        if not self.symmetric_axes:
            return flow_log_prob(theta)
        flips = jnp.asarray(sign_patterns(self.dim, self.symmetric_axes), theta.dtype)
        return flip_averaged_log_prob(flow_log_prob, theta, flips)

    def sample(self, key: PRNGKeyArray, observation, num_samples: int) -> Float[Array, "n dim"]:
        """``num_samples`` draws from :math:`q(\\theta \\mid x)`."""
        if self.symmetric_axes:
            key, key_flip = jax.random.split(key)
        z = self.flow.sample(key, num_samples, self._context(observation))
        theta = self.theta_loc + self.theta_scale * z
        return random_sign_flips(key_flip, theta, self.symmetric_axes) if self.symmetric_axes else theta


def flatten_dataset(observations: Float[Array, "n obs_dim"], mask: Bool[Array, " n"]) -> Float[Array, " c"]:
    """The context vector of a dataset: its rows (zeroed where masked) followed by the mask."""
    rows = jnp.where(mask[:, None], observations, 0.0).reshape(-1)
    return jnp.concatenate([rows, mask.astype(rows.dtype)])


def flatten_context(prior, observations: Float[Array, "n obs_dim"], mask: Bool[Array, " n"]) -> Float[Array, " c"]:
    """:func:`flatten_dataset` followed by the prior: a mixture's component coordinates and
    mask (see :func:`~amortized.transformer.component_coordinates`), or a parameter vector."""
    if isinstance(prior, GaussianMixture):
        mask_k = prior.component_mask
        coords = jnp.where(mask_k[:, None], component_coordinates(prior), 0.0)
        prior_part = jnp.concatenate([coords.reshape(-1), mask_k.astype(coords.dtype)])
    else:
        prior_part = jnp.asarray(prior).reshape(-1)
    return jnp.concatenate([flatten_dataset(observations, mask), prior_part])


@dataclass(frozen=True)
class _FlowLoss:
    """Mean :math:`-\\log \\bar q(z_\\theta \\mid c)` of a batch ``(z_theta, context)``, the flow's
    density averaged over the sign flips of ``symmetric_axes`` (hashable: compiled loops are reused)."""

    dim: int
    symmetric_axes: tuple[int, ...]

    def __call__(self, flow, key, batch):
        theta, context = batch
        flips = jnp.asarray(sign_patterns(self.dim, self.symmetric_axes), theta.dtype)
        return -jnp.mean(flip_averaged_log_prob(lambda z: flow.log_prob(z, context), theta, flips))


@dataclass(frozen=True)
class _ValidationLoss:
    """``loss`` on the validation split: ``validate(flow, batch)`` for `probinf.train.run`."""

    loss: _FlowLoss

    def __call__(self, flow, batch):
        return self.loss(flow, None, batch)


@functools.lru_cache(maxsize=16)
def _optimizer(learning_rate: float) -> optax.GradientTransformation:
    # One object per learning rate: the compiled training loop is cached on it.
    return optax.chain(optax.clip_by_global_norm(5.0), optax.adam(learning_rate))


@eqx.filter_jit
def _simulate(task, key, num_simulations):
    return task.simulate(key, num_simulations)


@dataclass(frozen=True)
class NPEResult:
    """What :func:`train_npe` returns.

    Attributes:
        posterior: the trained :class:`NPEPosterior` (the best validation state).
        train_losses, validation_losses: per-epoch mean negative log density (z-scored units).
        num_epochs: epochs run.
        num_simulations: the simulation budget.
        seconds: wall-clock time including simulation.
    """

    posterior: NPEPosterior
    train_losses: np.ndarray
    validation_losses: np.ndarray
    num_epochs: int
    num_simulations: int
    seconds: float


def train_npe(
    key: PRNGKeyArray,
    task: Task,
    *,
    num_simulations: int = 10_000,
    num_layers: int = 5,
    num_bins: int = 8,
    width: int = 64,
    batch_size: int = 200,
    learning_rate: float = 5e-4,
    max_epochs: int = 200,
    patience: int = 20,
    validation_fraction: float = 0.1,
    symmetric_axes: tuple[int, ...] | None = None,
    progress: bool | None = None,
) -> NPEResult:
    """Neural posterior estimation on ``num_simulations`` simulations of ``task``.

    The flow is a coupling neural spline flow (a masked autoregressive one for
    ``dim == 1``) conditioned on :func:`flatten_context`, trained by `probinf.train.run`
    (shuffled minibatches; the ``n_train % batch_size`` rows left over each epoch are
    not used in that epoch); training stops after ``patience`` epochs without a better
    validation loss and keeps the best state. A non-finite loss or gradient stops training
    with a ``RuntimeWarning`` (the best state so far is kept). The optimizer is cached per
    ``learning_rate``, so a second call with the same shapes compiles nothing.

    Args:
        key: PRNG key (typed or raw).
        task: a :class:`~amortized.tasks.Task` (its prior is what NPE learns under).
        num_simulations: the simulation budget.
        num_layers: flow layers (see :func:`flows.spline_flow`).
        num_bins: spline bins per layer.
        width: hidden width of the conditioner networks.
        batch_size: minibatch size.
        learning_rate: Adam step size.
        max_epochs: epoch limit.
        patience: epochs without a better validation loss before stopping.
        validation_fraction: share of simulations held out.
        symmetric_axes: coordinates whose sign the posterior cannot depend on; the flow's
            density is averaged over their flips (see :class:`NPEPosterior`). Default: the
            task's ``symmetric_axes``; ``()`` learns any symmetry from the data.
        progress: progress bar over epochs.
    """
    num_simulations = check_num_samples(num_simulations, "num_simulations")
    batch_size = check_num_samples(batch_size, "batch_size")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"`validation_fraction` must be in (0, 1), got {validation_fraction}")
    symmetric_axes = task.symmetric_axes if symmetric_axes is None else symmetric_axes
    flips = jnp.asarray(sign_patterns(task.dim, symmetric_axes, "symmetric_axes"))
    symmetric_axes = tuple(int(a) for a in symmetric_axes)
    num_validation = max(1, int(round(validation_fraction * num_simulations)))
    if num_simulations - num_validation < batch_size:
        raise ValueError(
            f"`num_simulations` ({num_simulations}) leaves fewer training simulations than `batch_size` ({batch_size})"
        )
    started = time.perf_counter()
    key_sim, key_flow, key_train = jax.random.split(key, 3)
    batch = _simulate(task, key_sim, num_simulations)
    theta = batch.theta
    context = jax.vmap(flatten_context)(batch.prior, batch.observations, batch.mask)
    theta_loc, theta_scale = theta.mean(0), theta.std(0) + 1e-6
    # Centred on the symmetric axes, so a flip of theta is the same flip of z.
    theta_loc = jnp.where(jnp.all(flips > 0, axis=0), theta_loc, 0.0)
    context_loc, context_scale = context.mean(0), context.std(0) + 1e-6
    z_theta = (theta - theta_loc) / theta_scale
    z_context = (context - context_loc) / context_scale

    dim = theta.shape[1]
    kind = "coupling" if dim >= 2 else "maf"
    flow = flows.spline_flow(key_flow, dim, kind=kind, num_layers=num_layers, num_bins=num_bins,
                             width=width, context_dim=context.shape[1])
    optimizer = _optimizer(float(learning_rate))
    loss = _FlowLoss(dim, symmetric_axes)
    result = train.run(
        train.make_step(loss, optimizer), train.init(flow, optimizer), key_train, epochs=max_epochs,
        data=(z_theta[num_validation:], z_context[num_validation:]), batch_size=batch_size,
        validate=_ValidationLoss(loss), validation_data=(z_theta[:num_validation], z_context[:num_validation]),
        patience=patience, progress=progress, name="npe",
    )
    steps_per_epoch = (num_simulations - num_validation) // batch_size
    train_losses = [result.losses[i : i + steps_per_epoch].mean()
                    for i in range(0, result.num_steps, steps_per_epoch)]
    posterior = NPEPosterior(result.params, theta_loc, theta_scale, context_loc, context_scale, symmetric_axes)
    return NPEResult(posterior, np.asarray(train_losses, np.float64), result.validation_losses, len(train_losses),
                     num_simulations, time.perf_counter() - started)

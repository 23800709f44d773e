r"""Conditional SMC and particle Gibbs (Andrieu, Doucet and Holenstein, 2010).

Conditional SMC runs a particle filter in which one particle is pinned to a reference
trajectory $x^*_{0:T-1}$; drawing one path from the final genealogy gives a
Markov kernel that leaves the smoothing distribution
$\mathbb Q_T(dx_{0:T-1})$ invariant for every number of particles. With
*ancestor sampling* (Lindsten, Jordan and Schön, 2014) the reference's parent is
redrawn at each step with probability $\propto W^i_{t-1} f_t(x^*_t \mid x^i_{t-1})$,
which breaks path degeneracy and mixes far better on long series.

Particle Gibbs alternates that kernel with a user-supplied update of model parameters
$\theta$ given the trajectory, $\theta \sim \pi(\theta \mid x_{0:T-1}, y)$
(or any kernel leaving it invariant), and so samples $p(\theta, x_{0:T-1} \mid y)$.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray

from probinf._progress import progress_bar
from probinf.smc import kernel
from probinf.smc.feynman_kac import (
    FeynmanKac,
    _check_fk_methods,
    _check_num_steps,
    check_model_shapes,
    trace_genealogy,
)
from probinf.validation import check_positive_int, is_traced

__all__ = ["CSMCResult", "ParticleGibbsResult", "conditional_smc", "particle_gibbs"]


class CSMCResult(eqx.Module):
    """What `conditional_smc` returns.

    Attributes:
        trajectory: the new path, in the model's particle representation (leaves ``(T, ...)``);
            pass it back as the next reference.
        failure: ``0``, or a key of `probinf.smc.FAILURES`.
        failed_at: first failing step, or ``-1``.
    """

    trajectory: Any
    failure: Int[Array, ""]
    failed_at: Int[Array, ""]

    def check(self) -> CSMCResult:
        """Raise a ``ValueError`` naming the failing step; returns ``self`` if sound."""
        kernel.raise_on_failure(self.failure, self.failed_at, "conditional SMC")
        return self


def _set_first(tree, value):
    return jax.tree.map(lambda leaf, v: leaf.at[0].set(v), tree, value)


def _at(tree, t):
    return jax.tree.map(lambda leaf: leaf[t], tree)


class _Pinned(FeynmanKac):
    """``model`` with particle 0 pinned to the reference trajectory at every step."""

    model: FeynmanKac
    reference: Any

    @property
    def num_steps(self) -> int:
        return self.model.num_steps

    def init(self, key, n):
        return _set_first(self.model.init(key, n), _at(self.reference, 0))

    def transition(self, key, t, particles):
        return _set_first(self.model.transition(key, t, particles), _at(self.reference, t))

    def log_potential(self, t, particles):
        return self.model.log_potential(t, particles)

    def states(self, particles):
        return self.model.states(particles)


class _ReferenceParent(eqx.Module):
    r"""The conditional-resampling hook: the pinned particle's parent.

    Without ancestor sampling the parent is the reference itself (index 0); with it
    (Lindsten, Jordan and Schön, 2014) it is drawn with probability
    $\propto W^i_{t-1} f_t(x^*_t \mid x^i_{t-1})$.
    """

    model: FeynmanKac
    reference: Any
    ancestor_sampling: bool = eqx.field(static=True)

    def __call__(self, key, t, state: kernel.FilterState, ancestors):
        if not self.ancestor_sampling:
            return ancestors.at[0].set(0)
        n = ancestors.shape[0]
        reference_state = self.model.states(_at(self.reference, t))
        repeated = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n, *leaf.shape)), reference_state)
        logits = state.log_weights + self.model.log_transition_density(
            t, self.model.states(state.particles), repeated
        )
        logits = jnp.where(jnp.isnan(logits), -jnp.inf, logits)
        return ancestors.at[0].set(jax.random.categorical(key, logits))


def _csmc(key, model, reference, n, conditional: bool, ancestor_sampling: bool):
    """One (conditional) SMC sweep: `probinf.smc.step` with multinomial resampling at every
    step and, when ``conditional``, particle 0 pinned to ``reference``."""
    num_steps = model.num_steps
    hook = None
    if conditional:
        hook = _ReferenceParent(model, reference, ancestor_sampling)
        model = _Pinned(model, reference)
    key_init, key_final, key_steps = jax.random.split(key, 3)
    state = kernel.init(key_init, model, n)

    def body(state, t):
        state, info = kernel.step(jax.random.fold_in(key_steps, t), state, t, model,
                                  resampling="multinomial", ess_threshold=1.0, conditional=hook)
        return state, (state.particles, info.ancestors)

    first = state.particles
    state, (rest, ancestors) = jax.lax.scan(body, state, jnp.arange(1, num_steps, dtype=jnp.int32))
    history = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), first, rest)
    ancestors = jnp.concatenate([jnp.arange(n, dtype=jnp.int32)[None], ancestors])
    chosen = jax.random.categorical(key_final, state.log_weights)
    path = trace_genealogy(history, ancestors, chosen[None])
    return jax.tree.map(lambda leaf: leaf[:, 0], path), state.failure, state.failed_at


def _check_ancestor_sampling(model, ancestor_sampling, name="model"):
    if not ancestor_sampling:
        return
    if not callable(getattr(model, "log_transition_density", None)):
        raise ValueError(
            f"`ancestor_sampling=True` needs `{name}.log_transition_density(t, previous_states, states)`"
        )
    if getattr(model, "potential_uses_parent", False):
        raise ValueError(
            f"`ancestor_sampling=True` needs potentials that depend on the current particle only; "
            f"{type(model).__name__} weights depend on the parent (use Bootstrap)"
        )


def _check_reference(reference, model, num_steps):
    probe = jax.eval_shape(lambda k: model.init(k, 1), jax.random.key(0))
    expected = jax.tree.map(lambda leaf: (num_steps, *leaf.shape[1:]), probe)
    try:
        got = jax.tree.map(lambda leaf: tuple(jnp.shape(leaf)), reference)
        same = jax.tree.structure(got, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(
            expected, is_leaf=lambda x: isinstance(x, tuple)
        ) and jax.tree.leaves(got, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.leaves(
            expected, is_leaf=lambda x: isinstance(x, tuple)
        )
    except (TypeError, ValueError):
        same = False
    if not same:
        raise ValueError(
            f"`reference` must be a trajectory shaped like the model's particles with a leading "
            f"axis of T = {num_steps} steps: expected {expected}, got "
            f"{jax.tree.map(lambda leaf: tuple(jnp.shape(leaf)), reference)}"
        )


@eqx.filter_jit
def _csmc_jit(key, model, reference, n, conditional, ancestor_sampling):
    return _csmc(key, model, reference, n, conditional, ancestor_sampling)


def conditional_smc(
    key: PRNGKeyArray,
    model: FeynmanKac,
    reference: Any,
    num_particles: int,
    *,
    ancestor_sampling: bool = False,
    raise_on_failure: bool = True,
) -> CSMCResult:
    r"""One conditional SMC sweep: a new trajectory given a reference trajectory.

    Particle 0 is pinned to ``reference`` at every step; the others are resampled
    multinomially, moved and weighted as in the particle filter. A path drawn from the
    final weights through the genealogy is returned. The map
    ``reference -> trajectory`` leaves the model's smoothing distribution invariant.

    Args:
        key: PRNG key.
        model: a `probinf.smc.feynman_kac.FeynmanKac` model.
        reference: a trajectory in the model's particle representation, leaves ``(T, ...)``
            (e.g. the ``trajectory`` of a previous sweep).
        num_particles: ``n >= 2``.
        ancestor_sampling: redraw the reference's ancestors (needs
            ``model.log_transition_density`` and potentials of the current particle only).
        raise_on_failure: when concrete, raise on NaN potentials or vanished weights.

    Returns:
        A `CSMCResult`.

    Raises:
        ValueError: for ``num_particles < 2``, a reference of the wrong shape, ancestor
            sampling on a model that cannot support it, or (with ``raise_on_failure``) a
            failed sweep.
    """
    n = check_positive_int(num_particles, "num_particles")
    if n < 2:
        raise ValueError(f"`num_particles` must be at least 2 for conditional SMC, got {n}")
    _check_fk_methods(model)
    num_steps = _check_num_steps(model)  # the pieces' shapes are checked when `_csmc_jit` traces
    _check_ancestor_sampling(model, ancestor_sampling)
    _check_reference(reference, model, num_steps)
    trajectory, failure, failed_at = _csmc_jit(key, model, reference, n, True, bool(ancestor_sampling))
    result = CSMCResult(trajectory, failure, failed_at)
    if raise_on_failure and not is_traced(failure):
        result.check()
    return result


class ParticleGibbsResult(eqx.Module):
    """What `particle_gibbs` returns.

    Attributes:
        parameters: the parameter pytree at every iteration, leaves ``(num_iterations, ...)``.
        trajectories: the model states of the trajectory at every iteration, leaves
            ``(num_iterations, T, ...)``.
        failure: per-iteration failure codes ``(num_iterations,)`` (``0`` when sound).
    """

    parameters: Any
    trajectories: Any
    failure: Int[Array, " iterations"]

    def to_inference_data(self, build_model: Callable[[Any], FeynmanKac] | None = None, *,
                          burn_in: int = 0, observed_data: dict | None = None):
        r"""The Gibbs draws as ArviZ ``InferenceData``; a batch of runs (``jax.vmap``) gives
        one chain per run.

        Iteration ``k`` stores the trajectory $x^{(k)}$ drawn by conditional SMC and
        the parameters $\theta^{(k+1)} \sim p(\theta \mid x^{(k)}, y)$ drawn from it:
        together one draw of $p(\theta, x_{0:T-1} \mid y)$ once the chain has mixed.

        Groups: ``posterior`` with the parameters (``theta`` for one array; ``theta_<key>``
        per leaf of a pytree) and the states ``x`` (``(chain, draw, time, *state)``);
        ``log_likelihood`` ``y`` $= \log g_t(y_t \mid x_t, \theta)$ per step (each time
        step is one observation, so `arviz.loo` works) when ``build_model`` is given and
        its models hold a `probinf.smc.StateSpaceModel`; ``observed_data`` when given
        (the model's observations may depend on $\theta$, so they are not guessed);
        ``sample_stats`` ``failure`` (the sweep's failure code, 0 when sound).

        Args:
            build_model: the ``theta -> FeynmanKac`` model of the run, to score the
                observations (``None``: no ``log_likelihood``).
            burn_in: leading iterations to drop.
            observed_data: ``{name: array}`` to export as ``observed_data``.

        Raises:
            ValueError: a failed sweep, a bad ``burn_in``, or a ``build_model`` without a
                state-space model.
        """
        from probinf.smc._inference_data import particle_gibbs_inference_data

        return particle_gibbs_inference_data(self, build_model, burn_in=burn_in,
                                             observed_data=observed_data)

    def check(self) -> ParticleGibbsResult:
        """Raise a ``ValueError`` naming the first failing iteration; returns ``self`` if sound."""
        failures = np.asarray(self.failure).reshape(-1, np.shape(self.failure)[-1])
        first_bad = np.argmax(failures != 0, axis=-1)
        codes = failures[np.arange(failures.shape[0]), first_bad]
        kernel.raise_on_failure(codes, first_bad, "particle Gibbs: a conditional SMC sweep",
                                unit="iteration")
        return self


@eqx.filter_jit
def _gibbs_chunk(carry, key, iterations, build_model, update_parameters, n, ancestor_sampling):
    def body(carry, iteration):
        parameters, reference = carry
        key_csmc, key_update = jax.random.split(jax.random.fold_in(key, iteration))
        model = build_model(parameters)
        trajectory, failure, _ = _csmc(key_csmc, model, reference, n, True, ancestor_sampling)
        states = model.states(trajectory)
        new_parameters = update_parameters(key_update, parameters, states)
        return (new_parameters, trajectory), (new_parameters, states, failure)

    return jax.lax.scan(body, carry, iterations)


def particle_gibbs(
    key: PRNGKeyArray,
    build_model: Callable[[Any], FeynmanKac],
    update_parameters: Callable[[PRNGKeyArray, Any, Any], Any],
    initial_parameters: Any,
    num_iterations: int,
    num_particles: int,
    *,
    ancestor_sampling: bool = True,
    chunk_size: int = 100,
    raise_on_failure: bool = True,
    progress: bool | None = None,
) -> ParticleGibbsResult:
    r"""Particle Gibbs: alternate conditional SMC on the states and an update of the parameters.

    Iteration ``k``: build the model at $\theta_k$, draw a trajectory with
    `conditional_smc` given the previous one, then
    $\theta_{k+1} \sim$ ``update_parameters(key, theta_k, states)``. The first
    reference comes from an unconditional SMC sweep at ``initial_parameters``. The
    loop runs under ``lax.scan`` in chunks of ``chunk_size`` iterations (one progress
    update each); iteration ``k`` uses ``fold_in(key, k)``.

    Args:
        key: PRNG key.
        build_model: ``theta -> FeynmanKac`` model (e.g. ``lambda th: Bootstrap(MySSM(th, y))``);
            its potentials must depend on the current particle only, and its particles
            must be the states (``Bootstrap``).
        update_parameters: ``(key, theta, states) -> theta``, a draw from (or a kernel
            leaving invariant) $p(\theta \mid x_{0:T-1}, y)$; ``states`` has leaves
            ``(T, ...)``.
        initial_parameters: $\theta_0$ (any pytree of arrays).
        num_iterations: number of Gibbs iterations.
        num_particles: particles per conditional SMC sweep (``>= 2``).
        ancestor_sampling: use conditional SMC with ancestor sampling.
        chunk_size: iterations per compiled chunk.
        raise_on_failure: when concrete, raise if any sweep failed.
        progress: show a progress bar (default: only on a terminal).

    Returns:
        A `ParticleGibbsResult`.

    Raises:
        ValueError: for bad sizes, a model whose potentials use the parent particle, or
            (with ``raise_on_failure``) a failed sweep.
        TypeError: if ``build_model`` or ``update_parameters`` is not callable.
    """
    for name, fn in (("build_model", build_model), ("update_parameters", update_parameters)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}")
    num_iterations = check_positive_int(num_iterations, "num_iterations")
    n = check_positive_int(num_particles, "num_particles")
    if n < 2:
        raise ValueError(f"`num_particles` must be at least 2 for particle Gibbs, got {n}")
    chunk_size = min(check_positive_int(chunk_size, "chunk_size"), num_iterations)
    model = build_model(initial_parameters)
    check_model_shapes(model, n, "build_model(initial_parameters)")
    if getattr(model, "potential_uses_parent", False):
        raise ValueError(
            "particle Gibbs needs potentials of the current particle only (a Bootstrap model); "
            f"`build_model` returned a {type(model).__name__}"
        )
    _check_ancestor_sampling(model, ancestor_sampling, "build_model(theta)")
    probe_states = jax.eval_shape(lambda: model.states(model.init(jax.random.key(0), model.num_steps)))
    new_parameters = jax.eval_shape(
        lambda k, states: update_parameters(k, initial_parameters, states), jax.random.key(0), probe_states
    )
    if jax.tree.structure(new_parameters) != jax.tree.structure(initial_parameters) or any(
        a.shape != jnp.shape(b)
        for a, b in zip(jax.tree.leaves(new_parameters), jax.tree.leaves(initial_parameters), strict=True)
    ):
        raise ValueError(
            "`update_parameters` must return parameters shaped like `initial_parameters`"
        )

    key_start, key_loop = jax.random.split(key)
    reference, failure, failed_at = _csmc_jit(key_start, model, None, n, False, False)
    if raise_on_failure and not is_traced(failure):
        kernel.raise_on_failure(failure, failed_at, "particle Gibbs: the initial SMC sweep")
    carry = (initial_parameters, reference)
    outputs = []
    with progress_bar(total=num_iterations, enabled=progress, desc="particle Gibbs") as bar:
        for start in range(0, num_iterations, chunk_size):
            iterations = jnp.arange(start, min(start + chunk_size, num_iterations), dtype=jnp.int32)
            carry, out = _gibbs_chunk(
                carry, key_loop, iterations, build_model, update_parameters, n, bool(ancestor_sampling)
            )
            outputs.append(out)
            bar.update(len(iterations))
    parameters, trajectories, failures = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outputs)
    result = ParticleGibbsResult(parameters, trajectories, failures)
    if raise_on_failure and not is_traced(failures):
        result.check()
    return result

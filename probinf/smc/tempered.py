r"""Tempered SMC for static targets: a path of distributions from a reference to the target.

For a `probinf.target.Target` with unnormalised density $\tilde p$ and a
normalised reference $q$ that can be sampled (default $\mathcal N(0, I)$),
the geometric path

$$
\gamma_\lambda(z) = q(z)^{1-\lambda}\, \tilde p(z)^{\lambda}
= q(z)\, \exp\{\lambda\, \ell(z)\},\qquad \ell = \log\tilde p - \log q,
$$

runs from $q$ ($\lambda = 0$) to the target ($\lambda = 1$). With
$q$ the prior and $\tilde p$ the unnormalised posterior, $\ell$ is the
log likelihood and this is the usual likelihood tempering. The draws from $q$ are
weighted by $G_0 = e^{\lambda_1 \ell}$; each stage is then one step of the
Feynman–Kac kernel `probinf.smc.kernel.step`: resample the cloud weighted for
$\gamma_\lambda$, move every particle with an MCMC kernel that leaves
$\gamma_\lambda$ invariant, choose $\lambda'$ and reweight by
$G = e^{(\lambda' - \lambda)\ell}$ (Neal, 2001; Chopin, 2002; Del Moral, Doucet and
Jasra, 2006). The last stage moves at $\lambda = 1$, so the particles are equally
weighted. The product of the mean weights estimates $Z = \int \tilde p$.

* **Adaptive tempering** (Jasra et al., 2011): $\lambda'$ is found by bisection so
  that the effective sample size of the new weights is ``target_ess * n``.
* **Moves** are blackjax kernels: random-walk Metropolis, MALA or HMC. With
  ``tune=True`` each stage works in coordinates whitened by the weighted mean and
  covariance (Cholesky factor) of the particle cloud, and the step size follows the previous
  stage's acceptance rate toward the kernel's usual optimum (in the spirit of
  Buchholz, Chopin and Jacob, 2021). A stage whose moves were almost all rejected (mean
  acceptance below a quarter of that optimum: the step size overshot the new
  temperature's geometry, and the resampled duplicates were left in place) moves again
  from the same points with the step size cut to a quarter, up to three times.
* **Waste-free SMC** (Dau and Chopin, 2022): resample only ``n / P`` particles, run
  chains of length ``P`` from them and keep every state of every chain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from probinf._progress import progress_bar
from probinf.diagnostics import effective_sample_size
from probinf.smc import kernel
from probinf.smc.resampling import check_scheme
from probinf.smc.sharding import check_divisible, constrain_leading_axis
from probinf.validation import check_positive_int, is_traced

__all__ = ["tempered_smc", "TemperedResult", "KERNELS"]

KERNELS = ("rwm", "mala", "hmc")
# Adaptive moves stop once a block adds less than this fraction to the mean squared jump.
_JUMP_TOLERANCE = 0.1
# Acceptance rates the step size is steered toward (Roberts and Rosenthal, 2001; Beskos et al., 2013).
_TARGET_ACCEPTANCE = {"rwm": 0.234, "mala": 0.574, "hmc": 0.65}
# A stage's moves are redone with a smaller step when the mean acceptance rate falls below
# this fraction of the target (with tune=True, resample-move only).
_RETRY_BELOW = 0.25
_RETRY_SHRINK = 0.25
_MAX_RETRIES = 3


def _default_step_size(kernel: str, dim: int) -> float:
    if kernel == "rwm":
        return 2.38 / math.sqrt(dim)
    if kernel == "mala":
        return 0.5 * dim ** (-1 / 3)
    return 0.5 * dim ** (-1 / 4)


class TemperedResult(eqx.Module):
    """What `tempered_smc` returns. Stage histories are padded to ``max_stages`` with NaN.

    Attributes:
        particles: ``(n, dim)`` equally weighted draws on the target's unconstrained space.
        log_evidence: $\\log \\hat Z$ (``nan`` or ``-inf`` after a failure).
        temperatures: ``(max_stages,)`` $\\lambda$ reached at each stage.
        log_evidence_increments: ``(max_stages,)`` log mean incremental weight per stage.
        ess: ``(max_stages,)`` effective sample size of the incremental weights.
        acceptance_rates: ``(max_stages,)`` mean MCMC acceptance rate per stage.
        step_sizes: ``(max_stages,)`` step size used at each stage.
        mcmc_steps: ``(max_stages,)`` MCMC moves per particle at each stage.
        num_stages: how many stages ran.
        failure: ``0``, or a key of `probinf.smc.FAILURES` (``1``: a log density, target or
            reference, was NaN or +inf at a particle, or a move left a non-finite particle;
            ``2``: the target density is 0 on the whole cloud; ``3``: out of stages).
        failed_at: the first failing stage, or ``-1``.

    The result holds arrays only, so `tempered_smc` can be ``jax.vmap``-ed over keys
    for independent runs; pass the target to `samples` / `to_inference_data`.
    """

    particles: Float[Array, "n dim"]
    log_evidence: Float[Array, ""]
    temperatures: Float[Array, " S"]
    log_evidence_increments: Float[Array, " S"]
    ess: Float[Array, " S"]
    acceptance_rates: Float[Array, " S"]
    step_sizes: Float[Array, " S"]
    mcmc_steps: Float[Array, " S"]
    num_stages: Int[Array, ""]
    failure: Int[Array, ""]
    failed_at: Int[Array, ""]

    @property
    def ok(self) -> Bool[Array, ""]:
        """``True`` when the run reached temperature 1 without failing."""
        return self.failure == 0

    def check(self) -> TemperedResult:
        """Raise a ``ValueError`` naming the failing stage and the reason; returns ``self`` if sound.

        For a batch of runs (``jax.vmap``) every run is checked.
        """
        kernel.raise_on_failure(self.failure, self.failed_at, "tempered SMC", unit="stage")
        return self

    def samples(self, target) -> dict[str, np.ndarray]:
        """The particles mapped to ``target``'s named, constrained sites (leading axes kept)."""
        return {name: np.asarray(v) for name, v in target.constrain(self.particles).items()}

    def to_inference_data(self, target):
        """ArviZ ``InferenceData`` of ``target``'s sites: one chain of ``n`` draws, or one
        chain per run for a batch of independent runs (``jax.vmap`` over keys).

        Groups: ``posterior``; ``log_likelihood`` and ``observed_data`` when ``target``
        came from `probinf.from_numpyro` (`arviz.loo` then works; the particles are
        equally weighted); ``sample_stats`` with per draw ``lp`` and per run
        ``log_evidence`` and ``num_stages`` (dims ``("chain",)``) and the stage
        histories ``temperature`` (the tempering schedule), ``ess``,
        ``acceptance_rate``, ``step_size``, ``mcmc_steps`` and
        ``log_evidence_increment`` (dims ``("chain", "stage")``, cut to the longest
        run and NaN after a run's last stage). See
        `probinf.diagnostics.target_inference_data`.

        Raises:
            ValueError: if a run failed (see `check`): its particles are no posterior draws.
        """
        from probinf.diagnostics import target_inference_data

        self.check()
        batched = np.ndim(self.particles) == 3
        per_run = self if batched else jax.tree.map(lambda leaf: leaf[None], self)
        stages = max(int(np.max(np.asarray(per_run.num_stages))), 1)
        history = {"temperature": per_run.temperatures, "ess": per_run.ess,
                   "acceptance_rate": per_run.acceptance_rates, "step_size": per_run.step_sizes,
                   "mcmc_steps": per_run.mcmc_steps,
                   "log_evidence_increment": per_run.log_evidence_increments}
        stats = {name: (("chain", "stage"), np.asarray(value)[:, :stages])
                 for name, value in history.items()}
        stats["log_evidence"] = (("chain",), np.asarray(per_run.log_evidence))
        stats["num_stages"] = (("chain",), np.asarray(per_run.num_stages))
        return target_inference_data(target, per_run.particles, sample_stats=stats)


class _Options(NamedTuple):
    """The static settings of a run (hashed by ``filter_jit``: one compilation per setting)."""

    num_particles: int
    kernel: str
    num_mcmc_steps: int
    max_blocks: int
    jump_tolerance: float
    num_integration_steps: int
    chain_length: int  # waste-free chain length, 0 for resample-move
    resampling: str
    target_ess: float
    tune: bool
    sharding: Any
    max_stages: int


class _Particles(NamedTuple):
    """One particle of the tempering Feynman-Kac model, with what its last move did."""

    position: Array  # z, on the target's unconstrained space
    log_ratio: Array  # ell(z) = log p(z) - log q(z)
    acceptance: Array  # mean acceptance rate of the chain that produced it
    moves: Array  # MCMC moves since its chain started
    step_size: Array  # the step size of those moves


class _State(NamedTuple):
    filter: kernel.FilterState  # particles are _Particles, weighted for `temperature`
    temperature: Array  # lambda of the filter's weights
    moved_at: Array  # lambda the last move targeted (0 before any: reference draws are exact)
    step_size: Array
    stage: Array
    history: tuple


class _Stage(NamedTuple):
    """The Feynman-Kac model of one stage, for `probinf.smc.kernel.init` / `step`."""

    log_potential: Any
    transition: Any = None
    init: Any = None


def _next_temperature_adaptive(log_ratio, temperature, target_ess, n):
    """Largest delta (up to 1 - lambda) whose weights keep ESS >= target_ess * n, by bisection."""
    ess_of = lambda delta: effective_sample_size(jnp.where(jnp.isneginf(log_ratio), -jnp.inf, delta * log_ratio))
    goal = target_ess * n
    max_delta = 1.0 - temperature

    def bisect(_, bounds):
        low, high = bounds
        middle = 0.5 * (low + high)
        good = ess_of(middle) >= goal
        return jnp.where(good, middle, low), jnp.where(good, high, middle)

    low, _ = jax.lax.fori_loop(0, 60, bisect, (jnp.zeros_like(max_delta), max_delta))
    delta = jnp.where(ess_of(max_delta) >= goal, max_delta, low)
    # Never stall on a zero step: a relative step of 1e-7 is still resolved in float32 (and float64).
    delta = jnp.maximum(delta, jnp.minimum(max_delta, 1e-7 * jnp.maximum(temperature, 1e-3)))
    return jnp.where(max_delta - delta < 1e-6, 1.0, temperature + delta)


def _build_kernel(kernel: str, num_integration_steps: int):
    import blackjax

    if kernel == "hmc":
        step = blackjax.mcmc.hmc.build_kernel()
        init = blackjax.mcmc.hmc.init

        def move(key, state, logdensity, step_size):
            dim = state.position.shape[-1]
            return step(key, state, logdensity, step_size, jnp.ones(dim), num_integration_steps)

    elif kernel == "mala":
        step = blackjax.mcmc.mala.build_kernel()
        init = blackjax.mcmc.mala.init

        def move(key, state, logdensity, step_size):
            return step(key, state, logdensity, step_size)

    else:
        step = blackjax.mcmc.random_walk.build_additive_step()
        init = blackjax.mcmc.random_walk.init

        def move(key, state, logdensity, step_size):
            random_step = lambda k, position: step_size * jax.random.normal(k, position.shape)
            return step(key, state, logdensity, random_step)

    return init, move


def _log_ratio_fn(target, reference):
    def log_ratio(z):
        return target.log_density(z) - reference.log_prob(z)

    return log_ratio


def _whitening(weights, particles):
    """Weighted mean $m$ and a factor $L$ of the cloud's spread: moves run on $u = L^{-1}(z - m)$.

    $L$ is the Cholesky factor of the weighted covariance when the cloud has at least
    two particles per dimension (correlated targets then look isotropic to the kernel)
    and the covariance is well conditioned; otherwise the diagonal of standard deviations.
    """
    center = weights @ particles
    centred = particles - center
    spread = jnp.sqrt(weights @ centred**2)
    diagonal = jnp.diag(jnp.where(spread > 0, spread, 1.0))
    n, dim = particles.shape
    if n < 2 * dim:
        return center, diagonal
    covariance = (centred * weights[:, None]).T @ centred
    eps = jnp.finfo(particles.dtype).eps
    covariance = covariance + jnp.diag(dim * eps * jnp.diag(covariance) + jnp.finfo(particles.dtype).tiny)
    tril = jnp.linalg.cholesky(covariance)
    usable = jnp.all(jnp.isfinite(tril)) & jnp.all(jnp.diag(tril) > 0)
    return center, jnp.where(usable, tril, diagonal)


def _move_until_decorrelated(key, starts, initial_states, logdensity, move, step_size, block,
                             max_blocks, tolerance, sharding):
    """MCMC moves of every particle in blocks of ``block``, until the cloud has left its start.

    After block $j$ the mean squared jump distance from the stage's starting points,
    $d_j = \\frac1n\\sum_i \\lVert u_i^{(j)} - u_i^{(0)}\\rVert^2$ (whitened
    coordinates), is compared with $d_{j-1}$: while the chains are still diffusing away
    from their starts $d$ keeps growing (linearly for a random walk); once they have
    forgotten them it levels off at twice the spread. Moving stops at the first block with
    $d_j < (1 + \\text{tolerance})\\, d_{j-1}$, or after ``max_blocks`` blocks (the
    adaptive rule of Chopin & Papaspiliopoulos, *An Introduction to Sequential Monte
    Carlo*, 2020, ch. 17, for SMC samplers). ``max_blocks = 1`` is a fixed number of moves.

    ``initial_states`` are the kernel's states at ``starts`` (computed once by the caller,
    so that retries with a smaller step do not evaluate the target at the starts again).

    Returns the final positions, each chain's mean acceptance rate and the number of moves made.
    """

    def run_block(states, key_block):
        def chain(key_chain, state):
            def one_move(mcmc_state, key_step):
                new_state, info = move(key_step, mcmc_state, logdensity, step_size)
                return new_state, info.acceptance_rate

            final, acceptance = jax.lax.scan(one_move, state, jax.random.split(key_chain, block))
            return final, jnp.mean(acceptance)

        return jax.vmap(chain)(jax.random.split(key_block, starts.shape[0]), states)

    def jump(states):
        return jnp.mean(jnp.sum((states.position - starts) ** 2, axis=-1))

    states, acceptance = run_block(initial_states, key)  # the first block uses `key` as a fixed run does
    if max_blocks == 1:
        return constrain_leading_axis(states.position, sharding), acceptance, jnp.asarray(block)

    def keep_moving(carry):
        blocks, _, _, _, grew = carry
        return (blocks < max_blocks) & grew

    def next_block(carry):
        blocks, states, acceptance_sum, distance, _ = carry
        states, acceptance = run_block(states, jax.random.fold_in(key, blocks))
        new_distance = jump(states)
        return blocks + 1, states, acceptance_sum + acceptance, new_distance, new_distance >= (
            1.0 + tolerance) * distance

    carry = (jnp.int32(1), states, acceptance, jump(states), jnp.asarray(True))
    blocks, states, acceptance_sum, _, _ = jax.lax.while_loop(keep_moving, next_block, carry)
    return (constrain_leading_axis(states.position, sharding), acceptance_sum / blocks,
            blocks * block)


def _next_temperature(log_ratio, temperature, stage, temperatures, target_ess):
    """lambda after ``temperature`` at stage ``stage``: adaptive, or the fixed schedule's next."""
    if temperatures is None:
        return _next_temperature_adaptive(log_ratio, temperature, target_ess, log_ratio.shape[0])
    return temperatures[jnp.minimum(stage, temperatures.shape[0] - 1)]


def _tempering_potential(particles: _Particles, temperature, new_temperature):
    r"""$\log G = (\lambda' - \lambda)\,\ell(z)$; NaN (a failure) at a non-finite particle."""
    increment = jnp.where(jnp.isneginf(particles.log_ratio), -jnp.inf,
                          (new_temperature - temperature) * particles.log_ratio)
    finite = jnp.all(jnp.isfinite(particles.position), axis=-1)
    return jnp.where(finite, increment, jnp.nan)


@eqx.filter_jit
def _run_stages(state: _State, key, target, reference, temperatures, stop_stage, options: _Options):
    r"""Stages of `probinf.smc.kernel.step` on the tempering Feynman-Kac model.

    In the order of Chopin and Papaspiliopoulos (2020, ch. 17): the filter's weights are
    for $\gamma_\lambda$; step $k$ resamples them, moves every particle with an MCMC
    kernel that leaves $\gamma_\lambda$ invariant, picks $\lambda'$ from the moved
    cloud and reweights by $G = e^{(\lambda' - \lambda)\ell}$. The run ends with the
    step that moves at $\lambda = 1$ (whose potential is 1), so the particles are
    equally weighted draws of the target.
    """
    n, chain_length, sharding = options.num_particles, options.chain_length, options.sharding
    init_kernel, move = _build_kernel(options.kernel, options.num_integration_steps)
    log_ratio_fn = _log_ratio_fn(target, reference)
    num_starts = n // chain_length if chain_length else n
    goal_acceptance = _TARGET_ACCEPTANCE[options.kernel]
    max_stages = options.max_stages

    def not_done(s: _State):
        return (s.moved_at < 1.0) & (s.stage < stop_stage) & (s.filter.failure == 0)

    def body(s: _State) -> _State:
        temperature = s.temperature
        cloud = s.filter.particles
        # Whitening from the weighted cloud, before resampling thins it.
        if options.tune:
            center, tril = _whitening(jnp.exp(s.filter.log_weights), cloud.position)
        else:
            center = jnp.zeros(cloud.position.shape[-1], cloud.position.dtype)
            tril = jnp.eye(cloud.position.shape[-1], dtype=cloud.position.dtype)

        def logdensity(u):
            z = center + tril @ u
            return reference.log_prob(z) + temperature * log_ratio_fn(z)

        def transition(key_move, t, parents: _Particles) -> _Particles:
            starts = jax.scipy.linalg.solve_triangular(tril, (parents.position - center).T, lower=True).T
            starts = constrain_leading_axis(starts, sharding)
            if chain_length:  # waste-free: every state of every chain is a particle
                def chain(key_chain, position):
                    def one_move(mcmc_state, key_step):
                        new_state, info = move(key_step, mcmc_state, logdensity, s.step_size)
                        return new_state, (new_state.position, info.acceptance_rate)

                    keys = jax.random.split(key_chain, chain_length - 1)
                    _, (positions, acceptance) = jax.lax.scan(one_move, init_kernel(position, logdensity), keys)
                    return jnp.concatenate([position[None], positions]), jnp.mean(acceptance)

                moved, acceptance = jax.vmap(chain)(jax.random.split(key_move, num_starts), starts)
                moved = moved.reshape(n, -1)
                acceptance = jnp.repeat(acceptance, chain_length)
                moves = jnp.full(n, chain_length - 1)
                step_used = s.step_size
            else:
                # Evaluated once: a retry starts from the same states. (Evaluated in the
                # retry loop too, the program hung on 2 cores: most likely XLA hoisted the
                # loop-invariant second batch of the target's linear algebra beside the
                # first, and two batched LAPACK calls on XLA:CPU's pool can deadlock, see
                # docs/smc.md "A note on XLA:CPU".)
                initial_states = jax.vmap(lambda u: init_kernel(u, logdensity))(starts)

                def moves_with(step_size, key_moves):
                    return _move_until_decorrelated(
                        key_moves, starts, initial_states, logdensity, move, step_size,
                        options.num_mcmc_steps, options.max_blocks, options.jump_tolerance, sharding)

                moved, acceptance, moves = moves_with(s.step_size, key_move)
                step_used = s.step_size
                if options.tune:
                    def rejected(carry):
                        tries, _, _, acceptance, _ = carry
                        return (tries < _MAX_RETRIES) & (
                            jnp.mean(acceptance) < _RETRY_BELOW * goal_acceptance)

                    def again(carry):
                        tries, step_size, _, _, _ = carry
                        step_size = step_size * _RETRY_SHRINK
                        retried = moves_with(step_size, jax.random.fold_in(key_move, tries + 1))
                        return (tries + 1, step_size, *retried)

                    carry = (jnp.int32(0), s.step_size, moved, acceptance, moves)
                    _, step_used, moved, acceptance, moves = jax.lax.while_loop(rejected, again, carry)
                moves = jnp.full(n, moves)
            position = constrain_leading_axis(center + moved @ tril.T, sharding)
            log_ratio = constrain_leading_axis(jax.vmap(log_ratio_fn)(position), sharding)
            # The carry keeps the dtypes `_initial_state` chose (a float32 target under x64
            # must not change the loop's types).
            new = _Particles(position, log_ratio, acceptance, moves, jnp.full(n, step_used))
            return jax.tree.map(lambda leaf, old: leaf.astype(old.dtype), new, parents)

        def next_temperature(particles: _Particles):
            return _next_temperature(particles.log_ratio, temperature, s.stage + 1, temperatures,
                                     options.target_ess)

        def log_potential(t, particles: _Particles):
            return _tempering_potential(particles, temperature, next_temperature(particles))

        new_filter, info = kernel.step(
            jax.random.fold_in(key, s.stage), s.filter, s.stage, _Stage(log_potential, transition),
            resampling=options.resampling, ess_threshold=1.0,
            num_ancestors=num_starts if chain_length else None, sharding=sharding)
        # The kernel returns only the weights, so lambda' is chosen again from the same moved
        # cloud (a deterministic bisection over n numbers: negligible next to the moves).
        new_temperature = next_temperature(new_filter.particles).astype(temperature.dtype)
        acceptance_rate = jnp.mean(new_filter.particles.acceptance)
        step_used = new_filter.particles.step_size[0]
        step_size = step_used
        if options.tune:
            factor = jnp.exp(2.0 * (acceptance_rate - goal_acceptance))
            step_size = jnp.where(jnp.isfinite(factor), step_size * factor, step_size)
        # Stage k moved at lambda_k; its reweighting to lambda_{k+1} belongs to stage k + 1
        # (none after the move at lambda = 1).
        moved = (acceptance_rate, step_used, new_filter.particles.moves[0])
        history = _record(s.history, 3, s.stage, moved, True)
        weighed = (new_temperature, info.log_evidence_increment, info.ess)
        history = _record(history, 0, s.stage + 1, weighed, (temperature < 1.0) & (s.stage + 1 < max_stages))
        return _State(new_filter, new_temperature, temperature, step_size.astype(s.step_size.dtype),
                      s.stage + 1, history)

    state = jax.lax.while_loop(not_done, body, state)
    out_of_stages = (state.moved_at < 1.0) & (state.stage >= max_stages) & (state.filter.failure == 0)
    return state._replace(filter=state.filter._replace(
        failure=jnp.where(out_of_stages, 3, state.filter.failure).astype(jnp.int32),
        failed_at=jnp.where(out_of_stages, state.stage, state.filter.failed_at).astype(jnp.int32),
    ))


def _record(history: tuple, first: int, stage, values: tuple, keep) -> tuple:
    """Write ``values`` into ``history[first:]`` at ``stage`` where ``keep``."""
    index = jnp.minimum(stage, history[0].shape[0] - 1)
    updated = [h.at[index].set(jnp.where(keep, v, h[index]).astype(h.dtype))
               for h, v in zip(history[first:first + len(values)], values, strict=True)]
    return (*history[:first], *updated, *history[first + len(values):])


@eqx.filter_jit
def _initial_state(key, target, reference, step_size, temperatures, options: _Options):
    """Draw the cloud from the reference and weight it for the first temperature (step 0)."""
    n = options.num_particles
    log_ratio_fn = _log_ratio_fn(target, reference)
    # One float dtype for the whole run: the widest of the draws and the log densities
    # (float64 under x64 with float64 inputs, float32 otherwise).
    draws = jax.eval_shape(lambda k: reference.sample(k, n), key)
    dtype = jnp.result_type(draws.dtype, jax.eval_shape(jax.vmap(log_ratio_fn), draws).dtype, float)
    zero = jnp.zeros((), dtype)

    def draw(key_draw, num):
        position = constrain_leading_axis(reference.sample(key_draw, num), options.sharding).astype(dtype)
        log_ratio = jax.vmap(log_ratio_fn)(position).astype(dtype)
        return _Particles(position, log_ratio, jnp.ones(num, dtype), jnp.zeros(num, jnp.int32),
                          jnp.full(num, step_size, dtype))

    def first_temperature(particles: _Particles):
        return _next_temperature(particles.log_ratio, zero, 0, temperatures, options.target_ess).astype(dtype)

    def log_potential(t, particles: _Particles):
        return _tempering_potential(particles, zero, first_temperature(particles))

    state = kernel.init(key, _Stage(log_potential, init=draw), n, sharding=options.sharding)
    state = state._replace(log_weights=state.log_weights.astype(dtype),
                           log_evidence=state.log_evidence.astype(dtype), ess=state.ess.astype(dtype))
    temperature = first_temperature(state.particles)
    history = tuple(jnp.full(options.max_stages, jnp.nan, dtype) for _ in range(6))
    history = _record(history, 0, 0, (temperature, state.log_evidence, state.ess), True)
    return _State(filter=state, temperature=temperature, moved_at=zero,
                  step_size=jnp.asarray(step_size, dtype), stage=jnp.int32(0), history=history)


def _check_temperatures(temperatures) -> Array:
    values = np.asarray(temperatures, dtype=np.float64)
    if values.ndim != 1 or values.size < 1:
        raise ValueError(f"`temperatures` must be a non-empty 1-d sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("`temperatures` must be finite")
    if np.any(np.diff(values) <= 0):
        raise ValueError(f"`temperatures` must be strictly increasing, got {values.tolist()}")
    if values[0] <= 0 or values[-1] != 1.0:
        raise ValueError(
            f"`temperatures` must lie in (0, 1] and end at 1 (0 is the reference), got "
            f"first {values[0]} and last {values[-1]}"
        )
    return jnp.asarray(values, jnp.result_type(float))  # the default float dtype (float64 under x64)


def tempered_smc(
    key: PRNGKeyArray,
    target,
    num_particles: int,
    *,
    reference=None,
    temperatures: Sequence[float] | Array | None = None,
    target_ess: float = 0.5,
    kernel: Literal["rwm", "mala", "hmc"] = "hmc",
    num_mcmc_steps: int = 10,
    max_mcmc_steps: int | None = None,
    num_integration_steps: int = 10,
    step_size: float | None = None,
    tune: bool = True,
    waste_free_chain_length: int | None = None,
    resampling: str = "systematic",
    max_stages: int = 200,
    sharding: jax.sharding.NamedSharding | None = None,
    raise_on_failure: bool = True,
    progress: bool | None = None,
) -> TemperedResult:
    r"""Sample a target and estimate its normalising constant with tempered SMC.

    Every stage reweights the cloud from $\gamma_\lambda$ to $\gamma_{\lambda'}$,
    adds $\log \frac1n \sum_i e^{(\lambda'-\lambda)\ell(z_i)}$ to the log evidence,
    resamples, and moves the particles with the MCMC ``kernel`` targeting
    $\gamma_{\lambda'}$. The stages run in a ``jax.lax.while_loop``; stage ``k``
    draws its randomness from ``fold_in(key, k)``.

    Args:
        key: PRNG key.
        target: a `probinf.target.Target` (e.g. from ``from_numpyro``).
        num_particles: ``n``.
        reference: a normalised distribution with ``sample(key, n)`` and ``log_prob(z)`` on
            the target's unconstrained space (any `probinf.families.Family`);
            default the standard normal. Pass the prior to temper the likelihood.
        temperatures: a fixed schedule $0 < \lambda_1 < \dots < \lambda_K = 1$;
            ``None`` chooses each next temperature adaptively.
        target_ess: adaptive tempering keeps the ESS of each stage's weights at
            ``target_ess * n``.
        kernel: ``"rwm"``, ``"mala"`` or ``"hmc"`` (blackjax kernels).
        num_mcmc_steps: MCMC moves per particle and stage (ignored by waste-free SMC); with
            ``max_mcmc_steps``, the size of each block of moves.
        max_mcmc_steps: move adaptively: each stage runs blocks of ``num_mcmc_steps``
            moves until the particles' mean squared jump distance from their starting
            points grows by less than 10 % over a block (they have forgotten where they
            started), or ``max_mcmc_steps`` moves were made. ``None``: exactly
            ``num_mcmc_steps`` moves. Use it when the reference is far from the target or
            the target is hard to move in (few, cheap stages then leave the cloud where
            resampling put it). Not with waste-free SMC.
        num_integration_steps: leapfrog steps per HMC move.
        step_size: initial (or, with ``tune=False``, fixed) step size in whitened
            coordinates; default by kernel and dimension.
        tune: whiten with the cloud's moments and adapt the step size to the acceptance rate.
        waste_free_chain_length: ``P`` for waste-free SMC (``n`` must be a multiple of ``P``);
            ``None`` for the standard resample-move.
        resampling: resampling scheme name.
        max_stages: length of the stage history (and the limit on adaptive stages).
        sharding: split the particles over devices (see `probinf.smc.sharding`).
        raise_on_failure: when concrete, raise if the run failed (else only the flag).
        progress: show a progress bar over the temperature (default: only on a terminal).

    Returns:
        A `TemperedResult`.

    Raises:
        ValueError: for a non-positive ``num_particles`` / ``num_mcmc_steps`` /
            ``max_stages``, a schedule that is not strictly increasing in (0, 1] ending
            at 1, an unknown ``kernel`` or ``resampling``, ``target_ess`` outside (0, 1),
            a reference of the wrong dimension, ``waste_free_chain_length`` not dividing
            ``num_particles``, and (with ``raise_on_failure``) a failed run.
        TypeError: if ``target`` is not a Target.
    """
    from probinf.families import MeanFieldGaussian
    from probinf.target import Target

    if not isinstance(target, Target):
        raise TypeError(f"`target` must be a probinf Target, got {type(target).__name__}")
    n = check_positive_int(num_particles, "num_particles")
    num_mcmc_steps = check_positive_int(num_mcmc_steps, "num_mcmc_steps")
    num_integration_steps = check_positive_int(num_integration_steps, "num_integration_steps")
    if max_mcmc_steps is None:
        max_blocks = 1
    else:
        max_mcmc_steps = check_positive_int(max_mcmc_steps, "max_mcmc_steps")
        if max_mcmc_steps < num_mcmc_steps:
            raise ValueError(f"`max_mcmc_steps` ({max_mcmc_steps}) must be >= `num_mcmc_steps` "
                             f"({num_mcmc_steps}), the size of one block of moves")
        if waste_free_chain_length is not None:
            raise ValueError("`max_mcmc_steps` (adaptive moves) does not apply to waste-free SMC, "
                             "whose chains have the fixed length `waste_free_chain_length`")
        max_blocks = max_mcmc_steps // num_mcmc_steps
    max_stages = check_positive_int(max_stages, "max_stages")
    scheme = check_scheme(resampling, "resampling")
    if kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}")
    if not isinstance(target_ess, (int, float)) or not 0.0 < target_ess < 1.0:
        raise ValueError(f"`target_ess` must be a number in (0, 1), got {target_ess!r}")
    if waste_free_chain_length is not None:
        chain_length = check_positive_int(waste_free_chain_length, "waste_free_chain_length")
        if chain_length < 2 or n % chain_length:
            raise ValueError(
                f"`waste_free_chain_length` must be >= 2 and divide `num_particles` = {n}, "
                f"got {waste_free_chain_length}"
            )
    else:
        chain_length = 0
    check_divisible(n, sharding, "num_particles")
    if chain_length:
        check_divisible(n // chain_length, sharding, "num_particles / waste_free_chain_length")
    schedule = None
    if temperatures is not None:
        schedule = _check_temperatures(temperatures)
        if schedule.shape[0] > max_stages:
            raise ValueError(
                f"`temperatures` has {schedule.shape[0]} stages, more than `max_stages` = {max_stages}"
            )
    dim = target.dim
    if reference is None:  # the standard normal (built directly: `init` validates eagerly)
        reference = MeanFieldGaussian(loc=jnp.zeros(dim), log_scale=jnp.zeros(dim))
    if not (callable(getattr(reference, "sample", None)) and callable(getattr(reference, "log_prob", None))):
        raise TypeError("`reference` must have sample(key, n) and log_prob(z) methods")
    probe = jax.eval_shape(lambda k: reference.sample(k, 2), jax.random.key(0))
    if probe.shape != (2, dim):
        raise ValueError(
            f"`reference` must sample points of dimension {dim} (the target's dim), got shape "
            f"{probe.shape[1:]}"
        )
    if step_size is None:
        step_size = _default_step_size(kernel, dim)
    elif not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"`step_size` must be a positive number, got {step_size!r}")

    options = _Options(
        num_particles=n, kernel=kernel, num_mcmc_steps=num_mcmc_steps, max_blocks=max_blocks,
        jump_tolerance=_JUMP_TOLERANCE, num_integration_steps=num_integration_steps,
        chain_length=chain_length, resampling=scheme, target_ess=float(target_ess), tune=bool(tune),
        sharding=sharding, max_stages=max_stages,
    )
    traced = is_traced(key, target, reference)
    progress = False if traced else progress
    key_init, key_stages = jax.random.split(key)
    state = _initial_state(key_init, target, reference, float(step_size), schedule, options)
    chunk = max(1, max_stages // 50) if progress else max_stages
    stop = 0
    with progress_bar(total=1000, enabled=progress, desc="tempered SMC") as bar:
        while True:
            stop = min(stop + chunk, max_stages)
            state = _run_stages(state, key_stages, target, reference, schedule, jnp.int32(stop), options)
            if is_traced(state.moved_at) or not progress:
                break
            bar.update(int(1000 * float(state.moved_at)) - bar.n)
            if float(state.moved_at) >= 1.0 or int(state.filter.failure) or stop >= max_stages:
                break

    temperatures_run, increments, ess, acceptance, step_sizes, moves = state.history
    final = state.filter
    log_evidence = jnp.where(
        final.failure == 2, -jnp.inf, jnp.where(final.failure != 0, jnp.nan, final.log_evidence)
    )
    result = TemperedResult(
        particles=final.particles.position,
        log_evidence=log_evidence,
        temperatures=temperatures_run,
        log_evidence_increments=increments,
        ess=ess,
        acceptance_rates=acceptance,
        step_sizes=step_sizes,
        mcmc_steps=moves,
        num_stages=state.stage,
        failure=final.failure,
        failed_at=final.failed_at,
    )
    if raise_on_failure and not is_traced(result.failure):
        result.check()
    return result

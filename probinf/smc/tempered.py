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
log likelihood and this is the usual likelihood tempering. Each stage
$\lambda \to \lambda'$ is one Feynman–Kac step: reweight by
$G = e^{(\lambda' - \lambda)\ell}$, resample, and move every particle with an MCMC
kernel that leaves $\gamma_{\lambda'}$ invariant (Neal, 2001; Chopin, 2002;
Del Moral, Doucet and Jasra, 2006). The product of the mean weights estimates
$Z = \int \tilde p$.

* **Adaptive tempering** (Jasra et al., 2011): $\lambda'$ is found by bisection so
  that the effective sample size of the new weights is ``target_ess * n``.
* **Moves** are blackjax kernels: random-walk Metropolis, MALA or HMC. With
  ``tune=True`` each stage works in coordinates whitened by the weighted mean and
  covariance (Cholesky factor) of the particle cloud, and the step size follows the previous
  stage's acceptance rate toward the kernel's usual optimum (in the spirit of
  Buchholz, Chopin and Jacob, 2021).
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
from probinf.smc.resampling import _UNCHECKED, check_scheme
from probinf.smc.sharding import check_divisible, constrain_leading_axis
from probinf.validation import check_positive_int

__all__ = ["tempered_smc", "TemperedResult", "KERNELS"]

KERNELS = ("rwm", "mala", "hmc")
# Adaptive moves stop once a block adds less than this fraction to the mean squared jump.
_JUMP_TOLERANCE = 0.1
# Acceptance rates the step size is steered toward (Roberts and Rosenthal, 2001; Beskos et al., 2013).
_TARGET_ACCEPTANCE = {"rwm": 0.234, "mala": 0.574, "hmc": 0.65}


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


class _State(NamedTuple):
    particles: Array
    log_ratio: Array  # ell(z) = log p(z) - log q(z) per particle
    temperature: Array
    log_evidence: Array
    step_size: Array
    stage: Array
    failure: Array
    failed_at: Array
    history: tuple


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


def _move_until_decorrelated(key, starts, logdensity, init_kernel, move, step_size, block,
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

    Returns the final positions, the mean acceptance rate and the number of moves made.
    """

    def run_block(states, key_block):
        def chain(key_chain, state):
            def one_move(mcmc_state, key_step):
                new_state, info = move(key_step, mcmc_state, logdensity, step_size)
                return new_state, info.acceptance_rate

            final, acceptance = jax.lax.scan(one_move, state, jax.random.split(key_chain, block))
            return final, jnp.mean(acceptance)

        states, acceptance = jax.vmap(chain)(jax.random.split(key_block, starts.shape[0]), states)
        return states, jnp.mean(acceptance)

    def jump(states):
        return jnp.mean(jnp.sum((states.position - starts) ** 2, axis=-1))

    states = jax.vmap(lambda u: init_kernel(u, logdensity))(starts)
    states, acceptance = run_block(states, key)  # the first block uses `key` as a fixed run does
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


@eqx.filter_jit
def _run_stages(state: _State, key, target, reference, temperatures, stop_stage, options: _Options):
    n, chain_length, sharding = options.num_particles, options.chain_length, options.sharding
    init_kernel, move = _build_kernel(options.kernel, options.num_integration_steps)
    log_ratio_fn = _log_ratio_fn(target, reference)
    num_starts = n // chain_length if chain_length else n
    goal_acceptance = _TARGET_ACCEPTANCE[options.kernel]

    def not_done(s: _State):
        return (s.temperature < 1.0) & (s.stage < stop_stage) & (s.failure == 0)

    def body(s: _State) -> _State:
        key_stage = jax.random.fold_in(key, s.stage)
        key_resample, key_move = jax.random.split(key_stage)
        if temperatures is None:
            new_temperature = _next_temperature_adaptive(s.log_ratio, s.temperature, options.target_ess, n)
        else:
            new_temperature = temperatures[jnp.minimum(s.stage, temperatures.shape[0] - 1)]
        delta = new_temperature - s.temperature
        # The Feynman-Kac potential of the stage: G = exp((lambda' - lambda) ell), from uniform
        # weights (the cloud is equally weighted after every move).
        incremental = jnp.where(jnp.isneginf(s.log_ratio), -jnp.inf, delta * s.log_ratio)
        uniform = jnp.full(n, -math.log(n), incremental.dtype)
        log_weights, increment, ess, weight_failure = kernel.reweight(uniform, incremental)

        # Whitening from the reweighted cloud, before resampling thins it.
        weights = jnp.exp(log_weights)  # uniform after a failed reweighting
        if options.tune:
            center, tril = _whitening(weights, s.particles)
        else:
            center = jnp.zeros(s.particles.shape[-1], s.particles.dtype)
            tril = jnp.eye(s.particles.shape[-1], dtype=s.particles.dtype)

        ancestors = _UNCHECKED[options.resampling](key_resample, log_weights, num_starts)
        starts = jax.scipy.linalg.solve_triangular(tril, (s.particles[ancestors] - center).T, lower=True).T
        starts = constrain_leading_axis(starts, sharding)

        def logdensity(u):
            z = center + tril @ u
            return reference.log_prob(z) + new_temperature * log_ratio_fn(z)

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
            acceptance_rate = jnp.mean(acceptance)
            num_moves = jnp.asarray(chain_length - 1)
        else:
            moved, acceptance_rate, num_moves = _move_until_decorrelated(
                key_move, starts, logdensity, init_kernel, move, s.step_size, options.num_mcmc_steps,
                options.max_blocks, options.jump_tolerance, sharding)
        particles = constrain_leading_axis(center + moved @ tril.T, sharding)
        log_ratio = constrain_leading_axis(jax.vmap(log_ratio_fn)(particles), sharding)

        bad = jnp.any(jnp.isnan(log_ratio) | (log_ratio == jnp.inf)) | jnp.any(~jnp.isfinite(particles))
        bad = bad | (weight_failure == 1)
        stage_failure = jnp.where(bad, 1, weight_failure).astype(jnp.int32)
        step_size = s.step_size
        if options.tune:
            factor = jnp.exp(2.0 * (acceptance_rate - goal_acceptance))
            step_size = jnp.where(jnp.isfinite(factor), step_size * factor, step_size)
        record = (new_temperature, increment, ess, acceptance_rate, s.step_size, num_moves)
        history = tuple(h.at[s.stage].set(v) for h, v in zip(s.history, record, strict=True))
        new_state = _State(
            particles=particles,
            log_ratio=log_ratio,
            temperature=new_temperature,
            log_evidence=s.log_evidence + increment,
            step_size=step_size,
            stage=s.stage + 1,
            failure=stage_failure,
            failed_at=jnp.where(stage_failure != 0, s.stage, s.failed_at),
            history=history,
        )
        # The carry keeps the dtypes `_initial_state` chose (a float32 target under x64, or a
        # float64 Python constant, must not change the loop's types).
        return jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, s)

    state = jax.lax.while_loop(not_done, body, state)
    out_of_stages = (state.temperature < 1.0) & (state.stage >= options.max_stages) & (state.failure == 0)
    return state._replace(
        failure=jnp.where(out_of_stages, 3, state.failure).astype(jnp.int32),
        failed_at=jnp.where(out_of_stages, state.stage, state.failed_at),
    )


@eqx.filter_jit
def _initial_state(key, target, reference, n, step_size, max_stages, sharding):
    particles = constrain_leading_axis(reference.sample(key, n), sharding)
    log_ratio = jax.vmap(_log_ratio_fn(target, reference))(particles)
    # One float dtype for the whole run: the widest of the particles and the log densities
    # (float64 under x64 with float64 inputs, float32 otherwise).
    dtype = jnp.result_type(particles, log_ratio, float)
    particles, log_ratio = particles.astype(dtype), log_ratio.astype(dtype)
    bad = jnp.any(jnp.isnan(log_ratio) | (log_ratio == jnp.inf))
    history = tuple(jnp.full(max_stages, jnp.nan, dtype) for _ in range(6))
    return _State(
        particles=particles,
        log_ratio=log_ratio,
        temperature=jnp.zeros((), dtype),
        log_evidence=jnp.zeros((), dtype),
        step_size=jnp.asarray(step_size, dtype),
        stage=jnp.int32(0),
        failure=jnp.where(bad, 1, 0).astype(jnp.int32),
        failed_at=jnp.where(bad, 0, -1).astype(jnp.int32),
        history=history,
    )


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
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((key, target, reference)))
    progress = False if traced else progress
    key_init, key_stages = jax.random.split(key)
    state = _initial_state(key_init, target, reference, n, float(step_size), max_stages, sharding)
    chunk = max(1, max_stages // 50) if progress else max_stages
    stop = 0
    with progress_bar(total=1000, enabled=progress, desc="tempered SMC") as bar:
        while True:
            stop = min(stop + chunk, max_stages)
            state = _run_stages(state, key_stages, target, reference, schedule, jnp.int32(stop), options)
            if isinstance(state.temperature, jax.core.Tracer) or not progress:
                break
            bar.update(int(1000 * float(state.temperature)) - bar.n)
            if float(state.temperature) >= 1.0 or int(state.failure) or stop >= max_stages:
                break

    temperatures_run, increments, ess, acceptance, step_sizes, moves = state.history
    log_evidence = jnp.where(
        state.failure == 2, -jnp.inf, jnp.where(state.failure != 0, jnp.nan, state.log_evidence)
    )
    result = TemperedResult(
        particles=state.particles,
        log_evidence=log_evidence,
        temperatures=temperatures_run,
        log_evidence_increments=increments,
        ess=ess,
        acceptance_rates=acceptance,
        step_sizes=step_sizes,
        mcmc_steps=moves,
        num_stages=state.stage,
        failure=state.failure,
        failed_at=state.failed_at,
    )
    if raise_on_failure and not isinstance(result.failure, jax.core.Tracer):
        result.check()
    return result

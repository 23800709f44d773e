r"""The Feynman–Kac kernel: one step of the particle recursion, as ``init`` / ``step``.

For a Feynman–Kac model (Del Moral, 2004; Chopin and Papaspiliopoulos, 2020, ch. 5, 10)
with initial law $M_0$, Markov kernels $M_t$ and potentials $G_t$, the particle
approximation of $\mathbb Q_t$ is a cloud $x^{1:n}_t$ with normalised weights
$W^{1:n}_t$. One step $t \ge 1$ is

1. **resample** (when the effective sample size $1 / \sum_i (W^i_{t-1})^2$ is below
   ``ess_threshold * n``): ancestors $a^i_t \sim W_{t-1}$, then $W_{t-1} = 1/n$;
   otherwise $a^i_t = i$;
2. **move**: $x^i_t \sim M_t(x^{a^i_t}_{t-1}, \cdot)$;
3. **reweight**: $W^i_t \propto W^{a^i_t}_{t-1} G_t(x^i_t)$, and
   $\log \hat Z_t = \log \hat Z_{t-1} + \log \sum_i W^{a^i_t}_{t-1} G_t(x^i_t)$,
   an unbiased estimate of $Z_t$ on the natural scale.

`init` draws $x_0 \sim M_0$ and reweights by $G_0$ from uniform weights. The
particle filter is ``lax.scan`` over `step`; conditional SMC (particle Gibbs) is `step`
with a *conditional-resampling hook* that rewrites the ancestors of the pinned particle;
tempered SMC is a ``lax.while_loop`` over `step` on a tempering model (waste-free SMC
draws fewer ancestors than particles, ``num_ancestors``).

Failures are not silent and do not poison the loop: a NaN or ``+inf`` log potential
(code 1) or a step where every weight vanished (code 2) sets the state's ``failure``
and ``failed_at`` (the first failure is kept); the weights are then reset to uniform
only so that later steps stay finite. `FAILURES` is the one table of codes for every
SMC result in `probinf.smc`, and `raise_on_failure` its one check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from probinf.smc.resampling import _UNCHECKED, check_scheme
from probinf.smc.sharding import constrain_leading_axis
from probinf.validation import check_positive_int

__all__ = [
    "FAILURES",
    "FilterState",
    "StepInfo",
    "init",
    "step",
    "reweight",
    "should_resample",
    "raise_on_failure",
]

Particles = Any

FAILURES = {
    1: "a log potential was NaN or +inf (tempered SMC: a target or reference log density at a "
       "particle, or a particle after the MCMC move)",
    2: "every particle had zero weight (all log potentials -inf)",
    3: "the temperature did not reach 1 within `max_stages` stages",
}


def raise_on_failure(failure, failed_at, what: str, unit: str = "step", consequence: str = "") -> None:
    """Raise a ``ValueError`` for the first failed run: ``"{what} failed at {unit} k: reason"``.

    ``failure`` and ``failed_at`` may hold a batch of runs (``jax.vmap``); the run index is
    then named. Codes are keys of `FAILURES`.
    """
    failures = np.atleast_1d(np.asarray(failure)).reshape(-1)
    places = np.atleast_1d(np.asarray(failed_at)).reshape(-1)
    for run, (code, place) in enumerate(zip(failures, places, strict=True)):
        if code:
            where = f"run {run}, " if failures.size > 1 else ""
            raise ValueError(f"{what} failed at {where}{unit} {int(place)}: {FAILURES[int(code)]}{consequence}")


class FilterState(NamedTuple):
    """The particle system after a step.

    Attributes:
        particles: the cloud, leaves ``(n, ...)``.
        log_weights: ``(n,)`` normalised log weights $\\log W_t$ (uniform after a failure).
        log_evidence: $\\log \\hat Z_t$ accumulated so far (frozen at the last sound step).
        ess: effective sample size $1 / \\sum_i (W^i_t)^2$ of ``log_weights``.
        failure: ``0``, or the first failure's code (a key of `FAILURES`).
        failed_at: the first failing step, or ``-1``.
    """

    particles: Particles
    log_weights: Float[Array, " n"]
    log_evidence: Float[Array, ""]
    ess: Float[Array, ""]
    failure: Int[Array, ""]
    failed_at: Int[Array, ""]


class StepInfo(NamedTuple):
    """What one `step` did.

    Attributes:
        ancestors: ``(n,)`` index at step ``t - 1`` of each particle's parent (the
            identity when the step did not resample); the genealogy. With
            ``num_ancestors = m``: the ``(m,)`` drawn parents of the ``m`` moves.
        resampled: whether the cloud was resampled before moving.
        log_evidence_increment: $\\log \\sum_i W^{a^i_t}_{t-1} G_t(x^i_t)$ (``0`` after a
            failure).
        ess: effective sample size after reweighting.
    """

    ancestors: Int[Array, " n"]
    resampled: Bool[Array, ""]
    log_evidence_increment: Float[Array, ""]
    ess: Float[Array, ""]


def reweight(log_weights: Float[Array, " n"], log_potential: Float[Array, " n"]):
    r"""Multiply normalised weights by potentials: $W^i \propto W^i_{\rm prev} G^i$.

    Args:
        log_weights: ``(n,)`` normalised log weights before the step.
        log_potential: ``(n,)`` $\log G$ per particle.

    Returns:
        ``(log_weights, increment, ess, failure)``: the new normalised log weights, the
        log evidence increment $\log \sum_i W^i_{\rm prev} G^i$, the ESS
        $1/\sum_i (W^i)^2$, and a failure code (``0``; ``1`` for a NaN or ``+inf`` log
        potential; ``2`` when every product is zero). On failure the weights are
        uniform and the increment is ``0``, so a loop stays finite.
    """
    n = log_weights.shape[0]
    bad_value = jnp.any(jnp.isnan(log_potential) | (log_potential == jnp.inf))
    log_potential = jnp.where(jnp.isnan(log_potential), -jnp.inf, log_potential)
    unnormalized = log_weights + log_potential
    increment = jax.scipy.special.logsumexp(unnormalized)
    failure = jnp.where(bad_value, 1, jnp.where(increment == -jnp.inf, 2, 0)).astype(jnp.int32)
    ok = failure == 0
    new_log_weights = jnp.where(ok, unnormalized - increment, -math.log(n))
    increment = jnp.where(ok, increment, 0.0)
    # The weights are normalised, so ESS = 1 / sum_i W_i^2: one reduction.
    ess = 1.0 / jnp.sum(jnp.exp(2.0 * new_log_weights))
    return new_log_weights, increment, ess, failure


def should_resample(ess, num_particles: int, ess_threshold: float):
    """The resampling rule: ``ESS < ess_threshold * n``; always for a threshold of 1, never for 0.

    The two ends are decided in Python (no conditional in a compiled loop); works on
    host (NumPy) and traced values alike.
    """
    if ess_threshold >= 1.0:
        return True
    if ess_threshold <= 0.0:
        return False
    return ess < ess_threshold * num_particles


def _check_cloud(particles, n: int, piece: str) -> None:
    leaves = jax.tree.leaves(particles)
    if not leaves:
        raise ValueError(f"`{piece}` returned no array")
    for leaf in leaves:
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
            raise ValueError(
                f"`{piece}` must return arrays with a leading axis of {n} particles, "
                f"got a leaf of shape {jnp.shape(leaf)}"
            )


def _check_potential(log_potential, n: int) -> None:
    if jnp.shape(log_potential) != (n,):
        raise ValueError(
            f"`model.log_potential` must return shape ({n},) (one value per particle), "
            f"got {jnp.shape(log_potential)}"
        )


def _record_failure(state: FilterState, failure, t) -> tuple[Array, Array]:
    new_failure = jnp.where(state.failure != 0, state.failure, failure).astype(jnp.int32)
    failed_at = jnp.where((state.failure == 0) & (new_failure != 0), t, state.failed_at)
    return new_failure, jnp.asarray(failed_at, jnp.int32)


def init(key: PRNGKeyArray, model, num_particles: int, *, sharding=None) -> FilterState:
    r"""Start the recursion: $x^i_0 \sim M_0$, $W^i_0 \propto G_0(x^i_0)$, $\log\hat Z_0 = \log \frac1n \sum_i G_0(x^i_0)$.

    Args:
        key: PRNG key of $M_0$.
        model: a `probinf.smc.FeynmanKac` model.
        num_particles: ``n``.
        sharding: keep the particles split over devices (`probinf.smc.sharding`).

    Returns:
        A `FilterState` at step 0.

    Raises:
        ValueError: if ``num_particles`` is not a positive int, or ``model.init`` /
            ``model.log_potential`` return the wrong shapes (checked when tracing).
    """
    n = check_positive_int(num_particles, "num_particles")
    particles = model.init(key, n)
    _check_cloud(particles, n, f"model.init(key, {n})")
    particles = constrain_leading_axis(particles, sharding)
    log_potential = model.log_potential(jnp.int32(0), particles)
    _check_potential(log_potential, n)
    uniform = jnp.full(n, -math.log(n))
    log_weights, increment, ess, failure = reweight(uniform, log_potential)
    return FilterState(
        particles=particles,
        log_weights=log_weights,
        log_evidence=jnp.zeros(()) + increment,
        ess=jnp.asarray(ess, jnp.result_type(float)),
        failure=failure,
        failed_at=jnp.where(failure != 0, 0, -1).astype(jnp.int32),
    )


ConditionalResampling = Callable[[PRNGKeyArray, Int[Array, ""], FilterState, Int[Array, " n"]], Int[Array, " n"]]


def step(
    key: PRNGKeyArray,
    state: FilterState,
    t: Int[Array, ""],
    model,
    *,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    conditional: ConditionalResampling | None = None,
    num_ancestors: int | None = None,
    sharding=None,
) -> tuple[FilterState, StepInfo]:
    r"""One Feynman–Kac step ``t >= 1``: resample if needed, move through $M_t$, reweight by $G_t$.

    With $W_{t-1}$ the normalised weights of ``state`` and $\mathrm{ESS}_{t-1} =
    1/\sum_i (W^i_{t-1})^2$:

    $$
    a^{1:n}_t \sim \begin{cases} \text{resampling}(W_{t-1}) & \mathrm{ESS}_{t-1} <
    \tau n \\ (1, \dots, n) & \text{otherwise}\end{cases},\qquad
    x^i_t \sim M_t(x^{a^i_t}_{t-1}, \cdot),
    $$

    $$
    W^i_t = \frac{\tilde W^{i}_{t-1} G_t(x^i_t)}{\sum_j \tilde W^{j}_{t-1} G_t(x^j_t)},\qquad
    \log \hat Z_t = \log \hat Z_{t-1} + \log \sum_j \tilde W^{j}_{t-1} G_t(x^j_t),
    $$

    where $\tilde W_{t-1}$ is $1/n$ after resampling and $W^{a^i_t}_{t-1}$ otherwise
    (Del Moral, 2004; Chopin and Papaspiliopoulos, 2020, Algorithm 10.1). A threshold
    $\tau = 1$ resamples at every step and $\tau = 0$ never (sequential importance
    sampling); both are decided when tracing.

    ``key`` is split into a resampling key and a move key (and, with ``conditional``, a
    third key for the hook, between the two).

    Args:
        key: PRNG key of this step.
        state: the `FilterState` after step ``t - 1``.
        t: the step index (an int32 scalar, traced or not).
        model: a `probinf.smc.FeynmanKac` model.
        resampling: a scheme name of `probinf.smc.resampling.SCHEMES`.
        ess_threshold: $\tau \in [0, 1]$.
        conditional: the conditional-resampling hook of conditional SMC,
            ``(key, t, state, ancestors) -> ancestors``: it receives the freshly drawn
            ancestors and the state before resampling and may rewrite them (e.g. set the
            pinned particle's parent; Andrieu, Doucet and Holenstein, 2010). Only called
            on steps that resample.
        num_ancestors: draw this many ancestors ``m`` instead of ``n``; the transition
            then maps ``m`` parents to ``n`` particles (waste-free SMC, Dau and Chopin,
            2022: ``m`` MCMC chains of length ``n / m``). Needs ``ess_threshold = 1``
            (resampling at every step) and no ``conditional``.
        sharding: keep the particles split over devices.

    Returns:
        ``(state, info)``: the new `FilterState` and a `StepInfo`.

    Raises:
        ValueError: for a bad ``resampling`` or ``ess_threshold``, or a model whose
            ``transition`` / ``log_potential`` return the wrong shapes (when tracing).
    """
    scheme = check_scheme(resampling, "resampling")
    if not isinstance(ess_threshold, (int, float)) or not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"`ess_threshold` must be a number in [0, 1], got {ess_threshold!r}")
    resample_fn = _UNCHECKED[scheme]
    n = state.log_weights.shape[0]
    if num_ancestors is None:
        m = n
    else:
        m = check_positive_int(num_ancestors, "num_ancestors")
        if ess_threshold != 1.0 or conditional is not None:
            raise ValueError("`num_ancestors` needs `ess_threshold=1` (resampling at every step) "
                             "and no `conditional` hook")
    if conditional is None:
        key_resample, key_move = jax.random.split(key)
    else:
        key_resample, key_hook, key_move = jax.random.split(key, 3)
    identity = jnp.arange(n, dtype=jnp.int32)

    def resample():
        ancestors = resample_fn(key_resample, state.log_weights, m)
        if conditional is not None:
            ancestors = conditional(key_hook, t, state, ancestors)
        parents = jax.tree.map(lambda leaf: leaf[ancestors], state.particles)
        return parents, jnp.full(n, -math.log(n), state.log_weights.dtype), ancestors.astype(jnp.int32)

    def keep():
        return state.particles, state.log_weights, identity

    decision = should_resample(state.ess, n, ess_threshold)
    if isinstance(decision, bool):
        resampled = jnp.bool_(decision)
        parents, log_prior_weights, ancestors = resample() if decision else keep()
    else:
        resampled = decision
        parents, log_prior_weights, ancestors = jax.lax.cond(decision, resample, keep)
    parents = constrain_leading_axis(parents, sharding)
    particles = model.transition(key_move, t, parents)
    expected = [(n, *jnp.shape(leaf)[1:]) for leaf in jax.tree.leaves(state.particles)]
    if jax.tree.structure(particles) != jax.tree.structure(parents) or [
        jnp.shape(leaf) for leaf in jax.tree.leaves(particles)
    ] != expected:
        raise ValueError(
            "`model.transition` must return particles shaped like `model.init`'s: "
            f"{expected}, got {[jnp.shape(leaf) for leaf in jax.tree.leaves(particles)]}"
        )
    particles = constrain_leading_axis(particles, sharding)
    log_potential = model.log_potential(t, particles)
    _check_potential(log_potential, n)
    log_weights, increment, ess, step_failure = reweight(log_prior_weights, log_potential)
    failure, failed_at = _record_failure(state, step_failure, t)
    # After a failure nothing is an estimate any more: the evidence stays where it was.
    sound = failure == 0
    increment = jnp.where(sound, increment, 0.0)
    log_weights = jnp.where(sound, log_weights, -math.log(n)).astype(state.log_weights.dtype)
    ess = jnp.where(sound, ess, float(n)).astype(state.ess.dtype)
    new_state = FilterState(
        particles=particles,
        log_weights=log_weights,
        log_evidence=(state.log_evidence + increment).astype(state.log_evidence.dtype),
        ess=ess,
        failure=failure,
        failed_at=failed_at,
    )
    return new_state, StepInfo(ancestors, resampled, increment, ess)

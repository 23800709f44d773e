r"""Feynman–Kac models and the particle filter that runs them.

A Feynman–Kac model (Del Moral, 2004; Chopin and Papaspiliopoulos, 2020, ch. 5) is a
Markov chain $M_0(dx_0)\,\prod_{t\ge1} M_t(x_{t-1}, dx_t)$ reweighted by
potentials $G_t$:

$$
\mathbb Q_T(dx_{0:T-1}) = \frac{1}{Z_T}\, M_0(dx_0)\, G_0(x_0)
\prod_{t=1}^{T-1} M_t(x_{t-1}, dx_t)\, G_t(x_t).
$$

The particle filter approximates every $\mathbb Q_t$ with ``n`` weighted
particles and estimates $Z_T$ without bias,

$$
\hat Z_T = \prod_{t=0}^{T-1} \sum_{i=1}^n W^i_{t-1}\, G_t(x^i_t),
$$

where $W_{t-1}$ are the normalised weights carried into step ``t`` (uniform after a
resampling). State-space filtering, tempered SMC and LLM decoding are instances: for a
state-space model with transition $f_t$, observation density $g_t$ and a
proposal $q_t$,

* the *bootstrap* filter takes $M_t = f_t$ and $G_t = g_t(y_t \mid x_t)$;
* the *guided* filter takes $M_t = q_t$ and
  $G_t = g_t(y_t \mid x_t)\, f_t(x_t \mid x_{t-1}) / q_t(x_t \mid x_{t-1})$;
* the *auxiliary* filter (Pitt and Shephard, 1999) multiplies $G_{t-1}$ by a
  look-ahead $\eta_t(x_{t-1}) \approx p(y_t \mid x_{t-1})$ and divides $G_t$ by
  it, so resampling favours particles that will explain the next observation;
  $Z_T$ is unchanged.

The protocol is three functions, `FeynmanKac.init`, `FeynmanKac.transition`
and `FeynmanKac.log_potential`, on a *particle cloud*: any pytree whose leaves
have a leading axis of length ``n``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from probinf._progress import progress_bar
from probinf.smc import kernel
from probinf.smc.resampling import check_scheme
from probinf.smc.sharding import check_divisible
from probinf.validation import check_positive_int, is_traced

__all__ = [
    "FeynmanKac",
    "StateSpaceModel",
    "Bootstrap",
    "Guided",
    "Auxiliary",
    "GuidedParticles",
    "AuxiliaryParticles",
    "FilterResult",
    "FilterHistory",
    "particle_filter",
    "backward_sampling",
    "check_model_shapes",
    "trace_genealogy",
]

Particles = Any


class FeynmanKac(eqx.Module):
    """A Feynman–Kac model: an initial distribution, Markov transitions and log potentials.

    Subclass it and implement `num_steps`, `init`, `transition` and
    `log_potential`. Particles are any pytree whose leaves have a leading axis of
    length ``n``; each method acts on the whole cloud at once (so a transition may
    depend on the cloud, e.g. to adapt a proposal).

    Two optional methods unlock backward smoothing (`backward_sampling`) and
    ancestor sampling in conditional SMC: ``states(particles)`` (the state-space part
    of the particles; default: the particles themselves) and
    ``log_transition_density(t, previous_states, states)``.

    Attributes:
        potential_uses_parent: class flag, ``True`` when $G_t$ depends on the
            parent particle as well (guided and auxiliary filters); conditional SMC
            refuses ancestor sampling for such models.
    """

    potential_uses_parent: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def num_steps(self) -> int:
        """Number of steps ``T`` (potentials $G_0, \\dots, G_{T-1}$)."""

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, n: int) -> Particles:
        """Draw ``n`` particles from $M_0$."""

    @abc.abstractmethod
    def transition(self, key: PRNGKeyArray, t: Int[Array, ""], particles: Particles) -> Particles:
        """Move every particle of step ``t - 1`` through $M_t$ (``t >= 1``)."""

    @abc.abstractmethod
    def log_potential(self, t: Int[Array, ""], particles: Particles) -> Float[Array, " n"]:
        """$\\log G_t$ of every particle of step ``t``."""

    def states(self, particles: Particles) -> Particles:
        """The state-space part of the particles (default: the particles)."""
        return particles


class StateSpaceModel(eqx.Module):
    r"""A state-space model $x_0 \sim p_0$, $x_t \sim f_t(\cdot \mid x_{t-1})$,
    $y_t \sim g_t(\cdot \mid x_t)$, with its observations built in.

    Subclasses implement `num_steps`, `sample_initial`,
    `sample_transition` and `log_observation`; the guided filter and
    backward smoothing also need `log_initial_density` and
    `log_transition_density`. States are arrays with a leading particle axis.
    """

    @property
    @abc.abstractmethod
    def num_steps(self) -> int:
        """Number of observations ``T``."""

    @abc.abstractmethod
    def sample_initial(self, key: PRNGKeyArray, n: int) -> Array:
        """``n`` draws of $x_0$."""

    @abc.abstractmethod
    def sample_transition(self, key: PRNGKeyArray, t, x_prev: Array) -> Array:
        """One draw of $x_t \\sim f_t(\\cdot \\mid x_{t-1})$ per particle."""

    @abc.abstractmethod
    def log_observation(self, t, x: Array) -> Float[Array, " n"]:
        """$\\log g_t(y_t \\mid x_t)$ per particle."""

    def log_initial_density(self, x: Array) -> Float[Array, " n"]:
        """$\\log p_0(x_0)$ per particle (needed by the guided filter)."""
        raise NotImplementedError(f"{type(self).__name__} does not define log_initial_density")

    def log_transition_density(self, t, x_prev: Array, x: Array) -> Float[Array, " n"]:
        """$\\log f_t(x_t \\mid x_{t-1})$ per particle pair (guided filter, smoothing)."""
        raise NotImplementedError(f"{type(self).__name__} does not define log_transition_density")


def _check_ssm(ssm, name="ssm"):
    needed = ("num_steps", "sample_initial", "sample_transition", "log_observation")
    missing = [m for m in needed if not hasattr(ssm, m)]
    if missing:
        raise TypeError(f"`{name}` must be a StateSpaceModel; it lacks {', '.join(missing)}")


class Bootstrap(FeynmanKac):
    """The bootstrap filter of a state-space model (Gordon, Salmond and Smith, 1993).

    $M_0 = p_0$, $M_t = f_t$ and $G_t(x_t) = g_t(y_t \\mid x_t)$.
    """

    ssm: StateSpaceModel

    def __init__(self, ssm: StateSpaceModel):
        _check_ssm(ssm)
        self.ssm = ssm

    @property
    def num_steps(self) -> int:
        return self.ssm.num_steps

    def init(self, key, n):
        return self.ssm.sample_initial(key, n)

    def transition(self, key, t, particles):
        return self.ssm.sample_transition(key, t, particles)

    def log_potential(self, t, particles):
        return self.ssm.log_observation(t, particles)

    def log_transition_density(self, t, previous_states, states):
        return self.ssm.log_transition_density(t, previous_states, states)


class GuidedParticles(NamedTuple):
    """Particles of the guided filter: the state and $\\log f_t - \\log q_t$ at it."""

    state: Array
    log_correction: Float[Array, " n"]


class Guided(FeynmanKac):
    r"""The guided filter: propose from $q_t$, correct the weights by $f_t / q_t$.

    The proposal needs ``sample_initial(key, n) -> (x0, log q0(x0))`` and
    ``sample(key, t, x_prev) -> (x, log q_t(x | x_prev))``. The state-space model
    must define `StateSpaceModel.log_initial_density` and
    `StateSpaceModel.log_transition_density`.
    """

    potential_uses_parent: ClassVar[bool] = True
    ssm: StateSpaceModel
    proposal: Any

    def __init__(self, ssm: StateSpaceModel, proposal: Any):
        _check_ssm(ssm)
        for method in ("sample_initial", "sample"):
            if not callable(getattr(proposal, method, None)):
                raise TypeError(f"`proposal` must have a `{method}` method")
        self.ssm = ssm
        self.proposal = proposal

    @property
    def num_steps(self) -> int:
        return self.ssm.num_steps

    def init(self, key, n):
        x, log_q = self.proposal.sample_initial(key, n)
        return GuidedParticles(x, self.ssm.log_initial_density(x) - log_q)

    def transition(self, key, t, particles):
        x, log_q = self.proposal.sample(key, t, particles.state)
        log_f = self.ssm.log_transition_density(t, particles.state, x)
        return GuidedParticles(x, log_f - log_q)

    def log_potential(self, t, particles):
        return self.ssm.log_observation(t, particles.state) + particles.log_correction

    def states(self, particles):
        return particles.state

    def log_transition_density(self, t, previous_states, states):
        return self.ssm.log_transition_density(t, previous_states, states)


class AuxiliaryParticles(NamedTuple):
    """Particles of the auxiliary filter: the inner particles and the look-ahead of their parent."""

    inner: Any
    parent_log_lookahead: Float[Array, " n"]


class Auxiliary(FeynmanKac):
    r"""The auxiliary particle filter (Pitt and Shephard, 1999) of any Feynman–Kac model.

    With a look-ahead $\log \eta_t(x_{t-1})$, the potentials become
    $\tilde G_t(x_{t-1}, x_t) = G_t(x_t)\, \eta_{t+1}(x_t) / \eta_t(x_{t-1})$
    (no $\eta_T$ at the last step), so resampling at ``t`` already favours the
    particles likely under $y_{t+1}$. The telescoping product leaves
    $Z_T$ unchanged. The filtering weights reported in the history have the
    look-ahead taken out again.

    Args:
        model: the Feynman–Kac model to steer (e.g. `Bootstrap`).
        log_lookahead: ``fn(t, states) -> (n,)``, $\log \eta_t$ evaluated at the
            states of step ``t - 1``, for ``1 <= t <= T - 1``.
    """

    potential_uses_parent: ClassVar[bool] = True
    model: FeynmanKac
    log_lookahead: Callable

    def __init__(self, model: FeynmanKac, log_lookahead: Callable):
        _check_fk_methods(model)
        if not callable(log_lookahead):
            raise TypeError(f"`log_lookahead` must be callable, got {type(log_lookahead).__name__}")
        self.model = model
        self.log_lookahead = log_lookahead

    @property
    def num_steps(self) -> int:
        return self.model.num_steps

    def _next_lookahead(self, t, inner):
        last = self.num_steps - 1
        value = self.log_lookahead(jnp.minimum(t + 1, last), self.model.states(inner))
        return jnp.where(t < last, value, 0.0)

    def init(self, key, n):
        inner = self.model.init(key, n)
        return AuxiliaryParticles(inner, jnp.zeros(n))

    def transition(self, key, t, particles):
        parent_lookahead = self.log_lookahead(t, self.model.states(particles.inner))
        return AuxiliaryParticles(self.model.transition(key, t, particles.inner), parent_lookahead)

    def log_potential(self, t, particles):
        return (
            self.model.log_potential(t, particles.inner)
            - particles.parent_log_lookahead
            + self._next_lookahead(t, particles.inner)
        )

    def log_weight_correction(self, t, particles):
        """Added to the log weights to recover the filtering weights of ``model``."""
        return -self._next_lookahead(t, particles.inner)

    def states(self, particles):
        return self.model.states(particles.inner)

    def log_transition_density(self, t, previous_states, states):
        return self.model.log_transition_density(t, previous_states, states)


# --- the particle filter ---------------------------------------------------------------------

class FilterHistory(eqx.Module):
    """Per-step record of a particle filter run (``store_history=True``).

    Attributes:
        particles: the particle cloud at every step, leaves ``(T, n, ...)``.
        log_weights: ``(T, n)`` normalised filtering log weights at every step.
        ancestors: ``(T, n)`` index at step ``t - 1`` of each particle's parent
            (``ancestors[0]`` is ``arange(n)``).
    """

    particles: Any
    log_weights: Float[Array, "T n"]
    ancestors: Int[Array, "T n"]


class FilterResult(eqx.Module):
    """What `particle_filter` returns.

    Attributes:
        log_evidence: $\\log \\hat Z_T$ (``nan`` after a NaN potential, ``-inf``
            when every weight vanished).
        log_evidence_increments: ``(T,)`` $\\log \\sum_i W^i_{t-1} G_t(x^i_t)$.
        ess: ``(T,)`` effective sample size after weighting at each step.
        resampled: ``(T,)`` whether the cloud was resampled before step ``t``.
        particles: the final cloud (leaves ``(n, ...)``).
        log_weights: ``(n,)`` normalised final filtering log weights.
        failure: ``0`` if the run was sound, otherwise a key of `probinf.smc.FAILURES`.
        failed_at: the first step that failed, or ``-1``.
        history: a `FilterHistory`, or ``None``.
    """

    log_evidence: Float[Array, ""]
    log_evidence_increments: Float[Array, " T"]
    ess: Float[Array, " T"]
    resampled: Bool[Array, " T"]
    particles: Any
    log_weights: Float[Array, " n"]
    failure: Int[Array, ""]
    failed_at: Int[Array, ""]
    history: FilterHistory | None = None

    @property
    def ok(self) -> Bool[Array, ""]:
        """``True`` when no step failed."""
        return self.failure == 0

    def check(self) -> FilterResult:
        """Raise a ``ValueError`` that says which step failed and why; returns ``self`` if sound."""
        kernel.raise_on_failure(
            self.failure, self.failed_at, "particle filter",
            consequence="; the log evidence and weights after that step are not estimates",
        )
        return self

    def to_inference_data(
        self,
        key: PRNGKeyArray,
        model: FeynmanKac,
        *,
        smoothing: bool = False,
        num_draws: int | None = None,
        observed_data: dict | None = None,
    ):
        r"""Filtering or smoothing draws as ArviZ ``InferenceData``.

        * Filtering (default): at every step ``t``, ``num_draws`` states resampled from the
          weighted cloud of $p(x_t \mid y_{0:t})$ (systematic resampling, then
          shuffled), so each is an equally weighted draw, as ArviZ assumes. The same draw
          index at two steps is *not* one trajectory. Needs ``store_history=True`` for every
          step; without the history, only the last step's cloud is exported (no ``time``
          axis). No ``log_likelihood``: filtering marginals are no joint posterior for
          `arviz.loo`. Their leave-future-out counterpart is in ``sample_stats``: the
          one-step-ahead predictive log densities $\log \hat p(y_t \mid y_{0:t-1})$
          (``log_evidence_increment``), which sum to the log evidence.
        * Smoothing (``smoothing=True``): ``num_draws`` trajectories by backward sampling
          (`backward_sampling`; needs the history and ``model.log_transition_density``),
          draws of $p(x_{0:T-1} \mid y_{0:T-1})$, with a pointwise ``log_likelihood``
          ``y`` $= \log g_t(y_t \mid x_t)$ per step when ``model`` holds a
          `StateSpaceModel` (``Bootstrap``, ``Guided``, ``Auxiliary`` of those), so
          `arviz.loo` works (each time step is one observation).

        Groups: ``posterior`` ``x`` (``(chain, draw, time, *state)``; a pytree of states
        gives ``x_<field>`` variables); ``sample_stats`` per run: ``log_evidence``
        (``chain``), ``log_evidence_increment``, ``ess``, ``resampled``
        (``chain, time``); ``observed_data`` ``y``: ``observed_data`` if given, else the
        state-space model's ``observations`` when it has them. A batch of independent
        runs (``jax.vmap`` of `particle_filter` over keys) gives one chain per run.

        Args:
            key: PRNG key of the resampling or backward sampling.
            model: the model that was filtered.
            smoothing: export smoothing trajectories instead of filtering draws.
            num_draws: draws per chain (default: the number of particles; backward
                sampling costs $O(T\, n\, \text{num\_draws})$).
            observed_data: ``{name: array}`` to export as ``observed_data``.

        Raises:
            ValueError: a failed run, ``smoothing`` without history, a bad ``num_draws``.
        """
        from probinf.smc._inference_data import filter_inference_data

        return filter_inference_data(self, key, model, smoothing=bool(smoothing),
                                     num_draws=num_draws, observed_data=observed_data)

    def genealogy(self) -> Particles:
        """Trace every final particle back through its ancestors: leaves ``(T, n, ...)``.

        Raises:
            ValueError: if the run did not store its history.
        """
        if self.history is None:
            raise ValueError("`genealogy` needs the history: run particle_filter(..., store_history=True)")
        return trace_genealogy(self.history.particles, self.history.ancestors)


def trace_genealogy(particles: Particles, ancestors: Int[Array, "T n"], final_index=None):
    """Paths through the ancestry: ``path[t] = particles[t][index_t]``, indices traced back.

    Args:
        particles: per-step particles, leaves ``(T, n, ...)``.
        ancestors: ``(T, n)`` parent indices.
        final_index: ``(m,)`` indices of the paths' ends at the last step (default all).

    Returns:
        Paths with leaves ``(T, m, ...)``.
    """
    n = ancestors.shape[1]
    final_index = jnp.arange(n) if final_index is None else final_index

    def back(index, t):
        parent = ancestors[t][index]
        return parent, index

    steps = ancestors.shape[0]
    _, indices = jax.lax.scan(back, final_index, jnp.arange(steps), reverse=True)
    return jax.tree.map(lambda leaf: jax.vmap(lambda x, i: x[i])(leaf, indices), particles)


def _check_fk_methods(model, name="model"):
    needed = ("num_steps", "init", "transition", "log_potential")
    missing = [m for m in needed if not hasattr(model, m)]
    if missing:
        raise TypeError(
            f"`{name}` must be a FeynmanKac model (init, transition, log_potential, num_steps); "
            f"it lacks {', '.join(missing)}"
        )


def _take(tree, index):
    return jax.tree.map(lambda leaf: leaf[index], tree)


def _check_num_steps(model, name: str = "model") -> int:
    num_steps = model.num_steps
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"`{name}.num_steps` must be a positive int, got {num_steps!r}")
    return int(num_steps)


def check_model_shapes(model, n: int, name: str = "model") -> int:
    """Trace the model's pieces abstractly and check they agree on shapes; returns ``T``.

    `init` and `step` make the same checks when they are traced; this is for callers that
    need the answer before tracing (and a message naming ``name``).

    Raises:
        TypeError: if ``model`` lacks a Feynman–Kac method.
        ValueError: naming the piece whose output shape does not match.
    """
    _check_fk_methods(model, name)
    num_steps = _check_num_steps(model, name)
    t = jnp.int32(min(1, num_steps - 1))
    try:
        state = jax.eval_shape(lambda k: kernel.init(k, model, n), jax.random.key(0))
        jax.eval_shape(lambda k, s: kernel.step(k, s, t, model), jax.random.key(0), state)
    except ValueError as error:
        raise ValueError(str(error).replace("`model.", f"`{name}.")) from None
    return num_steps


def _filtering_log_weights(model, t, particles, log_weights):
    correction = getattr(model, "log_weight_correction", None)
    if correction is None:
        return log_weights
    return jax.nn.log_softmax(log_weights + correction(t, particles))


class _FilterOptions(NamedTuple):
    resampling: str
    ess_threshold: float
    store_history: bool
    sharding: Any


def _record(model, t, state: kernel.FilterState, info: kernel.StepInfo, store_history: bool):
    record = (info.log_evidence_increment, info.ess, info.resampled)
    if store_history:
        filtering = _filtering_log_weights(model, t, state.particles, state.log_weights)
        record = (*record, state.particles, filtering, info.ancestors)
    return record


def _start(model, key, n, options: _FilterOptions):
    state = kernel.init(jax.random.fold_in(key, 0), model, n, sharding=options.sharding)
    info = kernel.StepInfo(jnp.arange(n, dtype=jnp.int32), jnp.bool_(False), state.log_evidence, state.ess)
    return state, _record(model, jnp.int32(0), state, info, True)


def _steps(model, state: kernel.FilterState, key, steps, options: _FilterOptions):
    def body(state, t):
        state, info = kernel.step(
            jax.random.fold_in(key, t), state, t, model, resampling=options.resampling,
            ess_threshold=options.ess_threshold, sharding=options.sharding,
        )
        return state, _record(model, t, state, info, options.store_history)

    return jax.lax.scan(body, state, steps)


def _assemble(model, state: kernel.FilterState, first, records, store_history, num_steps) -> FilterResult:
    def stack(index):
        head = jax.tree.map(lambda x: x[None], first[index])
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), head, *[r[index] for r in records])

    history = None
    if store_history:
        history = FilterHistory(particles=stack(3), log_weights=stack(4), ancestors=stack(5))
    log_evidence = jnp.where(
        state.failure == 1, jnp.nan, jnp.where(state.failure == 2, -jnp.inf, state.log_evidence)
    )
    return FilterResult(
        log_evidence=log_evidence,
        log_evidence_increments=stack(0),
        ess=stack(1),
        resampled=stack(2),
        particles=state.particles,
        log_weights=_filtering_log_weights(
            model, jnp.int32(num_steps - 1), state.particles, state.log_weights
        ),
        failure=state.failure,
        failed_at=state.failed_at,
        history=history,
    )


def _whole(model, key, n, options: _FilterOptions, num_steps) -> FilterResult:
    state, first = _start(model, key, n, options)
    records = []
    if num_steps > 1:
        state, record = _steps(model, state, key, jnp.arange(1, num_steps, dtype=jnp.int32), options)
        records.append(record)
    return _assemble(model, state, first, records, options.store_history, num_steps)


_filter_start = eqx.filter_jit(_start)
_filter_steps = eqx.filter_jit(_steps)
_filter_assemble = eqx.filter_jit(_assemble)
_filter_whole = eqx.filter_jit(_whole)


def particle_filter(
    key: PRNGKeyArray,
    model: FeynmanKac,
    num_particles: int,
    *,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
    store_history: bool = False,
    sharding: jax.sharding.NamedSharding | None = None,
    raise_on_failure: bool = True,
    progress: bool | None = None,
) -> FilterResult:
    r"""Run a particle filter on a Feynman–Kac model: ``jax.lax.scan`` over `probinf.smc.step`.

    Step 0 is `probinf.smc.init`; each step ``t >= 1`` is `probinf.smc.step`: the cloud
    is resampled when its effective sample size falls below ``ess_threshold *
    num_particles`` (a ``lax.cond`` inside the scan, not a Python branch), moved through
    $M_t$ and reweighted by $G_t$; the log evidence accumulates
    $\log\sum_i W^i_{t-1} G_t(x^i_t)$, an unbiased estimate of $Z_T$ on the natural
    scale.

    Step ``t`` draws its randomness from ``fold_in(key, t)``, so the answer does not
    depend on ``progress`` (which splits the scan into chunks) or on ``sharding``.

    Args:
        key: PRNG key.
        model: a `FeynmanKac` model (e.g. ``Bootstrap(ssm)``).
        num_particles: ``n``, the number of particles.
        resampling: a scheme name from `probinf.smc.resampling.SCHEMES`.
        ess_threshold: resample when ESS < ``ess_threshold * n``; ``1`` resamples at every
            step, ``0`` never (sequential importance sampling).
        store_history: keep every step's particles, weights and ancestors (memory
            $O(Tn)$); needed by `FilterResult.genealogy` and
            `backward_sampling`.
        sharding: split the particles over devices (see
            `probinf.smc.sharding.particle_sharding`); ``n`` must divide evenly.
        raise_on_failure: when the result is concrete (not inside an outer ``jit``),
            raise a ``ValueError`` if a step failed; otherwise only set the flag.
        progress: show a progress bar (default: only on a terminal).

    Returns:
        A `FilterResult`.

    Raises:
        ValueError: for a bad ``num_particles``, ``ess_threshold`` or ``resampling``; when
            the model's pieces disagree on shapes; and (with ``raise_on_failure``) when a
            log potential is NaN or every weight vanishes.
        TypeError: if ``model`` lacks a Feynman–Kac method.
    """
    n = check_positive_int(num_particles, "num_particles")
    scheme = check_scheme(resampling, "resampling")
    if not isinstance(ess_threshold, (int, float)) or not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"`ess_threshold` must be a number in [0, 1], got {ess_threshold!r}")
    check_divisible(n, sharding, "num_particles")
    _check_fk_methods(model)
    num_steps = _check_num_steps(model)  # the pieces' shapes are checked when tracing

    options = _FilterOptions(scheme, float(ess_threshold), bool(store_history), sharding)
    if not progress:
        result = _filter_whole(model, key, n, options, num_steps)
    else:
        state, first = _filter_start(model, key, n, options)
        records = []
        with progress_bar(total=num_steps, enabled=progress, desc="particle filter") as bar:
            bar.update(1)
            for steps in np.array_split(np.arange(1, num_steps), 10):
                if len(steps):
                    state, record = _filter_steps(model, state, key, jnp.asarray(steps, jnp.int32), options)
                    records.append(record)
                    bar.update(len(steps))
        result = _filter_assemble(model, state, first, records, bool(store_history), num_steps)
    if raise_on_failure and not is_traced(result.failure):
        result.check()
    return result


# --- backward smoothing ----------------------------------------------------------------------


def backward_sampling(
    key: PRNGKeyArray, model: FeynmanKac, result: FilterResult, num_trajectories: int
) -> Particles:
    r"""Forward-filtering backward-sampling (Godsill, Doucet and West, 2004).

    Draws whole trajectories from the particle approximation of the smoothing
    distribution $p(x_{0:T-1} \mid y_{0:T-1})$: $x_{T-1} \sim W_{T-1}$, then for
    $t = T-2, \dots, 0$, $x_t = x^i_t$ with probability
    $\propto W^i_t\, f_{t+1}(x_{t+1} \mid x^i_t)$. Cost $O(T\, n\, m)$, so it
    is meant for small problems.

    Args:
        key: PRNG key.
        model: the model that was filtered; it must define
            ``log_transition_density(t, previous_states, states)``.
        result: a `FilterResult` from ``particle_filter(..., store_history=True)``.
        num_trajectories: ``m``, how many trajectories to draw.

    Returns:
        Trajectories of the model's states, leaves ``(T, m, ...)``.

    Raises:
        ValueError: if the result has no history or ``num_trajectories`` is not positive.
        TypeError: if the model has no ``log_transition_density``.
    """
    m = check_positive_int(num_trajectories, "num_trajectories")
    if result.history is None:
        raise ValueError("`result` has no history: run particle_filter(..., store_history=True)")
    if not callable(getattr(model, "log_transition_density", None)):
        raise TypeError("`model` must define log_transition_density(t, previous_states, states)")
    if not is_traced(result.failure):
        result.check()
    return _backward_sampling(key, model, result.history, m)


@eqx.filter_jit
def _backward_sampling(key, model, history: FilterHistory, m):
    states = jax.vmap(model.states)(history.particles)
    num_steps, n = history.log_weights.shape
    key_last, key_steps = jax.random.split(key)
    last = jax.random.categorical(key_last, history.log_weights[-1], shape=(m,))
    chosen_last = _take(_take(states, num_steps - 1), last)

    def step(chosen_next, inputs):
        t, step_key = inputs
        states_t = _take(states, t)
        log_weights_t = history.log_weights[t]

        def one(next_state):
            repeated = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (n, *leaf.shape)), next_state)
            return log_weights_t + model.log_transition_density(t + 1, states_t, repeated)

        logits = jax.vmap(one)(chosen_next)
        index = jax.random.categorical(step_key, logits, axis=-1)
        chosen = _take(states_t, index)
        return chosen, chosen

    inputs = (jnp.arange(num_steps - 1), jax.random.split(key_steps, max(num_steps - 1, 1))[: num_steps - 1])
    _, earlier = jax.lax.scan(step, chosen_last, inputs, reverse=True)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), earlier, chosen_last)

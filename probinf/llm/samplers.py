r"""Reward-guided decoding samplers: particle filtering and its relatives, and the baselines.

**The state-space view** (Puri et al., 2025, *A Probabilistic Inference Approach to
Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods*). A solution is
a sequence of steps :math:`x_{1:T}` drawn from the language model,
:math:`p(x_t \mid x_{<t})`, and after each step we "observe" that the solution is still
correct, with likelihood given by a process reward :math:`\hat r(x_{\le t}) \in [0, 1]`.
The target is the posterior

.. math::
    \pi(x_{1:T}) \propto \prod_{t} p(x_t \mid x_{<t})\; \prod_t \phi\bigl(\hat r(x_{\le t})\bigr),

a Feynman–Kac model whose Markov kernel is the LM and whose potential is
:math:`G_t = \phi(\hat r_t)` (but see ``tilt`` below). The bootstrap particle filter
extends :math:`N` partial
solutions by one step, multiplies their weights by :math:`G_t`, and resamples (every
step, or when the effective sample size falls below a threshold) with any scheme of
:mod:`probinf.smc.resampling`. Two forms of :math:`\phi` are offered:

* ``weighting="logit"`` (the paper's): :math:`\log G_t = \operatorname{logit}(\hat r_t)/\tau`,
  so resampling probabilities are a softmax of logits at temperature :math:`\tau`;
* ``weighting="likelihood"``: :math:`\log G_t = \log(\hat r_t)/\tau` (the reward read
  as a plain likelihood; :math:`\tau = 1` is the textbook filter).

**What the weights target: the final reward (``tilt="final"``, default) or every
prefix's (``tilt="every_step"``).** Multiplying the weights by :math:`G_t = \phi(\hat r_t)`
at every step targets :math:`\prod_t \phi(\hat r_t)`, which compounds the reward of a
solution once per step it took: with logit weighting a long solution whose prefixes all
score well outweighs a short correct one by :math:`\phi^{T}`, and finished particles of
different lengths are compared on different scales. The default instead reads the
prefix reward as a *twist* (Zhao et al., 2024, *Probabilistic Inference in Language
Models via Twisted Sequential Monte Carlo*; Naesseth et al., 2019): the potential is the
ratio :math:`G_t = \phi(\hat r_t)/\phi(\hat r_{t-1})` (:math:`G_1 = \phi(\hat r_1)`),
so the product telescopes and the target is

.. math::
    \pi(x_{1:T}) \propto p(x_{1:T})\, \phi\bigl(\hat r(x_{1:T})\bigr),

the language model tilted by the reward of the finished solution, whatever its length,
while resampling still follows the prefix rewards. ``tilt="every_step"`` is the paper's
product form.

**Finished particles are frozen (absorbed).** A particle that finished (end-of-sequence,
a stop string, a stated answer, or the step cap) is kept with its weight fixed: it is
neither extended, nor resampled away, nor duplicated. In Feynman–Kac terms the state
carries a "finished" flag that is *absorbing*: the Markov kernel maps a finished state to
itself, and its potential is :math:`G_t \equiv 1` at every step after the one at which it
finished (that step's own potential, of its final score, is still applied). Resampling
then acts on the live particles alone: with live set :math:`L` (:math:`m = |L|`) and live
mass :math:`W_L = \sum_{j \in L} w_j`, the :math:`m` live slots get ancestors drawn from
:math:`L` with probabilities :math:`w_j / W_L` and each gets weight :math:`W_L / m`. This
is an unbiased resampling of the whole weighted population (a finished particle's
expected offspring weight is its own weight, a live particle's too), so the final
unnormalised weights satisfy
:math:`\mathbb E\bigl[\tfrac1N \sum_i w_i f(x_i)\bigr] = \sum_x p(x) \prod_t G_t(x) f(x)`
for every :math:`f`, and :math:`\tfrac1N\sum_i w_i` estimates the normalising constant
without bias. (Resampling finished particles together with live ones, as the paper and
its_hub do, duplicates finished solutions and keeps multiplying their weights by a
potential of a state that no longer changes, which double counts its score.)

Relatives: :func:`entropic_particle_filter` (Giannone et al., 2025, *Mitigating
Premature Exploitation in Particle-based Monte Carlo for Inference-Time Scaling*) and
:func:`particle_gibbs` (Puri et al., 2025, Sec. 3; Andrieu, Doucet and Holenstein,
2010). Baselines: :func:`greedy`, :func:`best_of_n`, :func:`majority_vote`
(self-consistency; Wang et al., 2023) and :func:`beam_search` (PRM-guided; Snell et al.,
2024).

Every sampler returns a :class:`DecodeResult` with all particles, their weights and
genealogy (``ancestors[t, i]`` is the index, among the particles before the resampling
at step ``t``, of particle ``i``'s parent), and a :class:`Budget`. Decoding settings
(sampling, step delimiter, caps, stop at a stated answer, :math:`N`) come from one
:class:`~probinf.llm.base.DecodeConfig`.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import jax
import jax.numpy as jnp
import numpy as np

from probinf._progress import progress_bar
from probinf.llm.base import (
    DEFAULT_CONFIG,
    DecodeConfig,
    LLMBackendError,
    StepResult,
    TokenText,
    as_reward,
    check_scores,
)
from probinf.llm.rewards import extract_answer
from probinf.smc.kernel import should_resample
from probinf.smc.resampling import check_scheme, resample

__all__ = [
    "Particle",
    "Budget",
    "DecodeResult",
    "particle_filter",
    "entropic_particle_filter",
    "particle_gibbs",
    "greedy",
    "sample_independent",
    "best_of_n",
    "majority_vote",
    "beam_search",
    "select",
    "METHODS",
    "generate",
]

SELECTIONS = ("argmax", "sample", "vote")
FINISH_REASONS = ("model", "answer", "max_steps")


# One compiled call per step keeps the sampler's own cost negligible next to the LM's.
@jax.jit
def _split4(key):
    keys = jax.random.split(key, 4)
    return keys[0], keys[1], keys[2], keys[3]


def _step_particles(run, key, particles: list, indices: list[int], last: bool = False) -> list:
    """Append one step to ``particles[i]`` for ``i in indices``; a particle that states an
    answer (when the run stops there) is finished. After the last step every particle is
    final (out of steps: whatever is unfinished is final, a documented fallback)."""
    particles = list(particles)
    for i, step in zip(indices, run.extend(key, particles, indices), strict=True):
        particle = particles[i].extended(step)
        if not particle.finished and run.stops(particle.text):
            particle = particle.finish("answer")
        particles[i] = particle
    if last:
        particles = [p.finish("max_steps") for p in particles]
    return particles


@functools.partial(jax.jit, static_argnames=("n",))
def _seeds(key, n: int):
    return jax.random.bits(key, (n,), dtype=jnp.uint32) & jnp.uint32(0x7FFFFFFF)


@functools.partial(jax.jit, static_argnames=("n", "scheme"))
def _ancestors(key, log_weights, n: int, scheme: str):
    """``n`` ancestors drawn from the (unnormalised) log weights."""
    return resample(key, log_weights, n, scheme=scheme)


def _draw_ancestors(key, log_weights: np.ndarray, count: int, total: int, scheme: str) -> np.ndarray:
    """``count`` ancestors (indices into ``log_weights``) for ``count`` live slots out of ``total``."""
    if scheme == "multinomial":
        # Multinomial draws are i.i.d., so the first `count` of `total` draws from the weights
        # padded to length `total` (zero weight: never drawn) are a multinomial sample of size
        # `count`; the fixed shapes compile once per N instead of once per number of live particles.
        padded = np.full(total, -np.inf)
        padded[: log_weights.size] = log_weights
        return np.asarray(_ancestors(key, jnp.asarray(padded), total, scheme))[:count]
    return np.asarray(_ancestors(key, jnp.asarray(log_weights), count, scheme))


def _log_sum(log_weights) -> float:
    log_weights = np.asarray(log_weights, dtype=np.float64)
    top = np.max(log_weights)
    return float(top + np.log(np.sum(np.exp(log_weights - top))))


def _ess(log_weights) -> float:
    """Kish's effective sample size of log weights (host-side: a handful of numbers)."""
    log_weights = np.asarray(log_weights, dtype=np.float64)
    return float(np.exp(2 * _log_sum(log_weights) - _log_sum(2 * log_weights)))


def _rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (for small host-side draws: ties, selection)."""
    return np.random.default_rng(int(np.asarray(_seeds(key, 2))[0]))


def _softmax(log_weights) -> np.ndarray:
    log_weights = np.asarray(log_weights, dtype=np.float64)
    shifted = np.exp(log_weights - np.max(log_weights))
    return shifted / shifted.sum()


@dataclass(frozen=True)
class Particle:
    """One partial or finished solution.

    Attributes:
        text: everything generated so far: the detokenisation of ``tokens``.
        steps: the steps, in order (their concatenation is ``text``).
        finished: no further step will be generated; the particle is frozen.
        num_tokens: tokens generated along this particle's own history.
        log_prob: the model's log-probability of ``text`` (``nan`` if a backend did not say).
        scores: the reward of each prefix ``steps[:t+1]`` (process rewards) or of the
            final text (outcome rewards).
        truncated_steps: how many steps hit the per-step token cap.
        tokens: the token ids the model emitted, in order (``None`` from a text-only
            backend: an OpenAI-compatible server, the toy model).
        finish_reason: why it finished: ``"model"`` (the backend ended it: the
            end-of-sequence token, a stop string, or a full context window),
            ``"answer"`` (it stated an answer, or ``is_final`` held), ``"max_steps"`` (the
            step cap); ``None`` while live.
        history: the :class:`~probinf.llm.base.StepResult` of every step.
    """

    text: str = ""
    steps: tuple[str, ...] = ()
    finished: bool = False
    num_tokens: int = 0
    log_prob: float = 0.0
    scores: tuple[float, ...] = ()
    truncated_steps: int = 0
    tokens: tuple[int, ...] | None = ()
    finish_reason: str | None = None
    history: tuple[StepResult, ...] = field(default=(), repr=False)

    @property
    def score(self) -> float:
        """The latest reward (``nan`` before any)."""
        return self.scores[-1] if self.scores else math.nan

    def as_prefix(self) -> TokenText:
        """What a backend continues: the emitted token ids and their text."""
        return TokenText(self.text, self.tokens)

    def extended(self, step: StepResult) -> Particle:
        """The particle with ``step`` appended (a finished particle cannot be extended)."""
        if self.finished:
            raise ValueError("a finished particle is frozen and cannot be extended")
        tokens = None if self.tokens is None or step.tokens is None else self.tokens + step.tokens
        return replace(
            self,
            text=self.text + step.text,
            steps=self.steps + (step.text,),
            finished=step.finished,
            finish_reason="model" if step.finished else None,
            num_tokens=self.num_tokens + step.num_tokens,
            log_prob=self.log_prob + step.log_prob,
            truncated_steps=self.truncated_steps + int(step.truncated),
            tokens=tokens,
            history=self.history + (step,),
        )

    def finish(self, reason: str) -> Particle:
        """The particle marked finished for ``reason`` (unchanged if it already is)."""
        if reason not in FINISH_REASONS:
            raise ValueError(f"`reason` must be one of {FINISH_REASONS}, got {reason!r}")
        return self if self.finished else replace(self, finished=True, finish_reason=reason)

    def prefix(self, depth: int) -> Particle:
        """The particle as it was after its first ``depth`` steps (live unless a step ended it)."""
        particle = Particle()
        for step in self.history[:depth]:
            particle = particle.extended(step)
        return replace(particle, scores=self.scores[:depth])


@dataclass
class Budget:
    """What a run cost.

    Attributes:
        tokens: tokens generated (including discarded look-ahead steps).
        lm_calls: particle-steps requested from the language model.
        reward_calls: solutions scored by the reward model.
        lm_seconds: wall time inside the language model.
        reward_seconds: wall time inside the reward model.
        total_seconds: wall time of the whole run.
    """

    tokens: int = 0
    lm_calls: int = 0
    reward_calls: int = 0
    lm_seconds: float = 0.0
    reward_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def overhead_seconds(self) -> float:
        """Sampler time: everything that is neither the LM nor the reward (resampling, bookkeeping)."""
        return max(self.total_seconds - self.lm_seconds - self.reward_seconds, 0.0)

    @property
    def overhead_fraction(self) -> float:
        return self.overhead_seconds / self.total_seconds if self.total_seconds > 0 else 0.0

    def __iadd__(self, other: Budget) -> Budget:
        for name in ("tokens", "lm_calls", "reward_calls", "lm_seconds", "reward_seconds", "total_seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def as_dict(self) -> dict:
        return {
            "tokens": self.tokens, "lm_calls": self.lm_calls, "reward_calls": self.reward_calls,
            "lm_seconds": self.lm_seconds, "reward_seconds": self.reward_seconds,
            "total_seconds": self.total_seconds, "overhead_seconds": self.overhead_seconds,
            "overhead_fraction": self.overhead_fraction,
        }


@dataclass
class DecodeResult:
    """The outcome of one decoding run.

    Attributes:
        answer: the selected final answer (``None`` if the selected solution states none).
        text: the selected solution.
        index: the selected particle.
        particles: every final particle.
        log_weights: ``(n,)`` final unnormalised log weights (for the particle methods
            :math:`\\tfrac1N \\sum_i e^{\\ell_i}` is an unbiased estimate of the Feynman–Kac
            normalising constant when resampling is unannealed and without look-ahead).
        ancestors: ``(steps, n)`` genealogy: ``ancestors[t, i]`` is the parent, among the
            particles before the resampling of step ``t``, of particle ``i`` after it
            (the identity where no resampling happened, and always for a finished
            particle: it is frozen).
        ess: ``(steps,)`` effective sample size of the live particles' weights before
            each resampling decision (of all particles once none is live).
        resampled: ``(steps,)`` whether step ``t`` resampled.
        budget: the cost of the run.
        method: the sampler's name.
        iterations: for particle Gibbs, the result of every sweep (else empty).
    """

    answer: str | None
    text: str
    index: int
    particles: list[Particle]
    log_weights: np.ndarray
    ancestors: np.ndarray
    ess: np.ndarray
    resampled: np.ndarray
    budget: Budget
    method: str
    iterations: list = field(default_factory=list)

    @property
    def tokens(self) -> tuple[int, ...] | None:
        """The selected solution's token ids, as the model emitted them (``None`` from a text-only backend)."""
        return self.particles[self.index].tokens

    @property
    def weights(self) -> np.ndarray:
        """Normalised final weights."""
        return _softmax(self.log_weights)

    def answer_distribution(self, answer_fn: Callable[[str], str | None] = extract_answer) -> dict:
        """Normalised weight of each distinct answer (``None`` for particles without one)."""
        totals: dict = defaultdict(float)
        for particle, weight in zip(self.particles, self.weights, strict=True):
            totals[answer_fn(particle.text)] += float(weight)
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def lineage(self, index: int | None = None) -> list[int]:
        """Particle ``index``'s ancestry: its slot before each resampling round, then its own.

        Entry ``t`` is the slot, among the particles entering round ``t``, of the ancestor
        (``t = 0 .. steps``); the last entry is ``index``.
        """
        index = self.index if index is None else index
        path = [index]
        for t in range(self.ancestors.shape[0] - 1, -1, -1):
            index = int(self.ancestors[t, index])
            path.append(index)
        return path[::-1]


# -- shared machinery ------------------------------------------------------------------------


class _Run:
    """Calls the LM and the reward for a sampler, with validation and budget accounting."""

    def __init__(self, lm, reward, question: str, prompt: TokenText, config: DecodeConfig, is_final=None):
        self.is_final = is_final
        self.lm = lm
        self.reward = reward
        self.question = question
        self.prompt = prompt
        self.config = config
        self.params = config.sampling
        self.budget = Budget()
        self.started = time.perf_counter()

    def stops(self, text: str) -> bool:
        """Whether a particle with this text is finished: it states an answer, or ``is_final``."""
        if self.config.stop_at_answer and extract_answer(text) is not None:
            return True
        return self.is_final is not None and bool(self.is_final(text))

    def extend(self, key, particles: list[Particle], indices: Sequence[int], params=None) -> list[StepResult]:
        """Extend ``particles[i]`` for ``i in indices`` in one backend call; particle ``i``
        uses seed ``i`` drawn from ``key``."""
        if not indices:
            return []
        params = params or self.params
        all_seeds = np.asarray(_seeds(key, len(particles)))
        seeds = [int(all_seeds[i]) for i in indices]
        start = time.perf_counter()
        steps = self.lm.extend(seeds, self.prompt, [particles[i].as_prefix() for i in indices], params)
        self.budget.lm_seconds += time.perf_counter() - start
        if not isinstance(steps, (list, tuple)) or len(steps) != len(indices):
            count = len(steps) if isinstance(steps, (list, tuple)) else type(steps).__name__
            raise LLMBackendError(f"the language model returned {count} steps for {len(indices)} prefixes")
        self.budget.lm_calls += len(indices)
        self.budget.tokens += sum(int(s.num_tokens) for s in steps)
        return list(steps)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        start = time.perf_counter()
        scores = self.reward.score(self.question, list(texts))
        self.budget.reward_seconds += time.perf_counter() - start
        self.budget.reward_calls += len(texts)
        return check_scores(scores, len(texts), name="reward")

    def finish(self) -> Budget:
        self.budget.total_seconds = time.perf_counter() - self.started
        return self.budget


def _log_potential(scores: np.ndarray, weighting: str, temperature: float) -> np.ndarray:
    if weighting == "logit":
        clipped = np.clip(scores, 1e-6, 1 - 1e-6)
        return (np.log(clipped) - np.log1p(-clipped)) / temperature
    return np.log(np.clip(scores, 1e-12, 1.0)) / temperature


def _check_common(question, config, n=None, name="n_particles") -> int:
    """Validate the common arguments; returns the budget ``n`` (``config.n_particles`` when ``None``)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"`prompt` must be a non-empty string, got {question!r}")
    if not isinstance(config, DecodeConfig):
        raise TypeError(f"`config` must be a DecodeConfig, got {type(config).__name__}")
    if n is None:
        return int(config.n_particles)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`{name}` must be a positive int, got {n!r}")
    return int(n)


def _random_argmax(key, values: np.ndarray) -> int:
    best = np.flatnonzero(values == np.max(values))
    if best.size == 1:
        return int(best[0])
    return int(best[_rng(key).integers(best.size)])


def select(
    key, particles: Sequence[Particle], log_weights: np.ndarray, how: str = "argmax",
    answer_fn: Callable[[str], str | None] = extract_answer,
) -> int:
    """Pick the particle whose answer is returned.

    Args:
        key: PRNG key (ties in ``argmax`` are broken at random; ``sample`` draws).
        particles: the final particles.
        log_weights: their unnormalised log weights.
        how: ``"argmax"`` (highest weight), ``"sample"`` (draw by weight) or ``"vote"``
            (weighted majority vote over extracted answers; returns the heaviest particle
            holding the winning answer; particles without an answer do not vote unless
            none has one).

    Raises:
        ValueError: for an unknown ``how``.
    """
    if how not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {SELECTIONS}, got {how!r}")
    log_weights = np.asarray(log_weights, dtype=np.float64)
    if how == "argmax":
        return _random_argmax(key, log_weights)
    weights = _softmax(log_weights)
    if how == "sample":
        return int(_rng(key).choice(len(particles), p=weights))
    answers = [answer_fn(p.text) for p in particles]
    totals: dict = defaultdict(float)
    for answer, weight in zip(answers, weights, strict=True):
        if answer is not None:
            totals[answer] += weight
    if not totals:
        return _random_argmax(key, log_weights)
    top = max(totals.values())
    winners = sorted(a for a, w in totals.items() if w >= top * (1 - 1e-12))
    winner = winners[0] if len(winners) == 1 else winners[_rng(key).integers(len(winners))]
    holders = np.array([a == winner for a in answers])
    return _random_argmax(key, np.where(holders, log_weights, -np.inf))


def _result(key, particles, log_weights, ancestors, ess, resampled, run, method, selection, answer_fn):
    index = select(key, particles, log_weights, selection, answer_fn)
    return DecodeResult(
        answer=answer_fn(particles[index].text),
        text=particles[index].text,
        index=index,
        particles=list(particles),
        log_weights=np.asarray(log_weights, dtype=np.float64),
        ancestors=np.asarray(ancestors, dtype=np.int64).reshape(-1, len(particles)),
        ess=np.asarray(ess, dtype=np.float64),
        resampled=np.asarray(resampled, dtype=bool),
        budget=run.finish(),
        method=method,
    )


# -- particle filtering ----------------------------------------------------------------------


def _smc(
    key, run: _Run, n: int, *, weighting: str, temperature: float,
    ess_threshold: float, scheme: str, progress, desc: str,
    anneal_threshold: float | None = None, lookahead: int = 0, lookahead_strength: float = 1.0,
    keep_residual_weights: bool = False, reference: Particle | None = None, tilt: str = "final",
):
    """The particle loop shared by PF, entropic PF and conditional PF (particle Gibbs).

    Finished particles are frozen: only particles live at the start of a step are
    extended and receive that step's potential; resampling redistributes the live
    particles' total weight among the live slots (see the module docstring). With a
    ``reference`` (particle Gibbs) the last slot replays it, step by step, and is never
    overwritten; the other live slots may resample onto it.
    """
    max_steps = run.config.max_steps
    particles = [Particle() for _ in range(n)]
    log_w = np.zeros(n)
    ref = n - 1 if reference is not None else None
    ancestors, ess_history, resampled = [], [], []
    with progress_bar(total=max_steps, enabled=progress, desc=desc) as bar:
        for t in range(max_steps):
            live = [i for i in range(n) if not particles[i].finished]
            if not live:
                break
            last = t == max_steps - 1
            key, key_step, key_resample, key_look = _split4(key)
            free = [i for i in live if i != ref]
            particles = _step_particles(run, key_step, particles, free, last)
            scores = run.score([particles[i].text for i in free])
            for i, s in zip(free, scores, strict=True):
                particles[i] = replace(particles[i], scores=particles[i].scores + (float(s),))
            if ref in live:
                depth = len(particles[ref].steps) + 1
                replayed = reference.prefix(depth)
                if depth >= len(reference.steps):
                    replayed = replace(replayed, finished=True, finish_reason=reference.finish_reason)
                particles[ref] = replayed.finish("max_steps") if last else replayed
            # Potentials of this step, for the particles that took it (frozen ones: G = 1).
            latest = np.array([particles[i].score for i in live])
            log_w[live] += _log_potential(latest, weighting, temperature)
            if tilt == "final":
                # Twisted: divide by the previous prefix's potential, so the product telescopes
                # to the final reward's (the first step's divisor is the same for all).
                previous = [i for i in live if len(particles[i].scores) > 1]
                if previous:
                    log_w[previous] -= _log_potential(
                        np.array([particles[i].scores[-2] for i in previous]), weighting, temperature)
            bar.update(1)
            alive = [i for i in live if not particles[i].finished]
            identity = np.arange(n)
            if not alive:
                ess_history.append(_ess(log_w))
                ancestors.append(identity)
                resampled.append(False)
                break
            m = len(alive)
            ess = _ess(log_w[alive])
            ess_history.append(ess)
            slots = [i for i in alive if i != ref]
            if m < 2 or not slots or not should_resample(ess, m, ess_threshold):
                ancestors.append(identity)
                resampled.append(False)
                continue
            beta = 1.0
            if anneal_threshold is not None and ess < anneal_threshold * m:
                beta = annealing_exponent(ess, m, t, max_steps)
            proposal = log_w[alive].copy()
            if lookahead > 0:
                proposal += lookahead_strength * _look_ahead(
                    key_look, run, particles, alive, lookahead, weighting, temperature
                )
            proposal *= beta
            drawn = _draw_ancestors(key_resample, proposal, len(slots), n, scheme)
            # Position (within `alive`) of each live slot's parent; the reference keeps itself.
            kept = [ref] if ref in alive else []
            new_slots = slots + kept
            parent_pos = np.concatenate([drawn, [alive.index(i) for i in kept]]).astype(np.int64)
            order = identity.copy()
            order[new_slots] = np.asarray(alive)[parent_pos]
            if keep_residual_weights:
                # Unbiased for any proposal q_j ∝ v_j: child weight w_j / (m q_j).
                new_log_w = log_w[alive][parent_pos] - proposal[parent_pos] + _log_sum(proposal) - math.log(m)
            else:
                # The live mass, shared equally (exactly the above when q_j ∝ w_j).
                new_log_w = np.full(m, _log_sum(log_w[alive]) - math.log(m))
            particles = [particles[a] for a in order]
            log_w[new_slots] = new_log_w
            ancestors.append(order)
            resampled.append(True)
    return particles, log_w, ancestors, ess_history, resampled


def annealing_exponent(ess: float, n: int, step: int, horizon: int) -> float:
    """Entropic annealing (Giannone et al., 2025): the exponent :math:`\\beta_t` of the resampling weights.

    :math:`\\beta_t^{-1} = \\max\\bigl(1, (N / \\mathrm{ESS}_t)\\,(1 - t/T)\\bigr)`: the lower the
    diversity (ESS) and the earlier the step, the flatter the resampling distribution
    :math:`\\propto w^{\\beta_t}`; at the horizon it is the plain one.
    """
    return 1.0 / max(1.0, (n / max(ess, 1e-12)) * (1.0 - step / horizon))


def _look_ahead(key, run: _Run, particles, indices: list[int], depth: int, weighting: str,
                temperature: float) -> np.ndarray:
    """Look-ahead modulation: the log potential of ``depth`` sampled future steps of
    ``particles[i]`` for ``i in indices``.

    A particle that finishes during the look-ahead is scored where it finished. The
    look-ahead text is discarded; its tokens and reward calls count in the budget.
    """
    ahead = list(particles)
    for _ in range(depth):
        key, sub, _, _ = _split4(key)
        active = [i for i in indices if not ahead[i].finished]
        ahead = _step_particles(run, sub, ahead, active)
    changed = [i for i in indices if len(ahead[i].steps) != len(particles[i].steps)]
    scores = {i: particles[i].score for i in indices}
    scores.update(zip(changed, run.score([ahead[i].text for i in changed]), strict=True))
    return _log_potential(np.array([scores[i] for i in indices]), weighting, temperature)


def _prepare(lm, question, reward, config, system, prompt, needs_process=True, is_final=None):
    from probinf.llm.backends import as_language_model

    lm = as_language_model(lm)
    reward = as_reward(reward)
    if needs_process and getattr(reward, "kind", "process") != "process":
        raise ValueError("`reward` must be a process reward (kind='process') for step-wise guidance")
    if is_final is not None and not callable(is_final):
        raise TypeError("`is_final` must be a callable text -> bool")
    formatted = prompt if prompt is not None else lm.format_prompt(question, system)
    # Tokenised once per run; every particle continues these ids.
    return _Run(lm, reward, question, lm.encode_prompt(formatted), config, is_final)


TILTS = ("final", "every_step")


def _check_pf(weighting, temperature, ess_threshold, scheme, selection, tilt="final"):
    if tilt not in TILTS:
        raise ValueError(f"`tilt` must be one of {TILTS}, got {tilt!r}")
    if weighting not in ("logit", "likelihood"):
        raise ValueError(f"`weighting` must be 'logit' or 'likelihood', got {weighting!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"`reward_temperature` must be a positive number, got {temperature!r}")
    if not (isinstance(ess_threshold, (int, float)) and 0 <= ess_threshold <= 1):
        raise ValueError(f"`ess_threshold` must be in [0, 1], got {ess_threshold!r}")
    check_scheme(scheme)
    if selection not in SELECTIONS:
        raise ValueError(f"`selection` must be one of {SELECTIONS}, got {selection!r}")


def particle_filter(
    key, lm, question: str, reward, *, config: DecodeConfig = DEFAULT_CONFIG, n_particles: int | None = None,
    weighting: str = "logit", reward_temperature: float = 1.0, ess_threshold: float = 1.0,
    tilt: str = "final", scheme: str = "multinomial", selection: str = "argmax", system: str | None = None,
    prompt: str | None = None, is_final: Callable[[str], bool] | None = None,
    answer_fn: Callable[[str], str | None] = extract_answer, progress: bool | None = None,
) -> DecodeResult:
    """Particle filtering over reasoning steps (Puri et al., 2025, Algorithm 1), with
    finished particles frozen (see the module docstring).

    Args:
        key: PRNG key (drives the LM seeds, resampling and selection).
        lm: a :class:`~probinf.llm.base.LanguageModel` (or anything
            :func:`~probinf.llm.backends.as_language_model` accepts).
        question: the user's question (scored by the reward; formatted with the model's
            chat template unless ``prompt`` is given).
        reward: a process :class:`~probinf.llm.base.RewardModel` or a callable
            ``(question, partial_solution) -> float in [0, 1]``.
        config: the decoding settings: sampling, step delimiter, token and step caps,
            stop at a stated answer, and :math:`N` (``config.n_particles``).
        n_particles: :math:`N`, overriding ``config.n_particles``.
        weighting: ``"logit"`` or ``"likelihood"`` (see the module docstring).
        reward_temperature: :math:`\\tau`.
        tilt: ``"final"`` (default: prefix rewards as twists, target tilted by the finished
            solution's reward) or ``"every_step"`` (the paper's product over prefixes); see
            the module docstring.
        ess_threshold: resample when the live particles' :math:`\\mathrm{ESS} <
            \\text{threshold}\\cdot m` (:math:`m` live particles); ``1.0`` resamples at
            every step (the paper's choice), ``0`` never.
        scheme: a resampling scheme of :mod:`probinf.smc.resampling`.
        selection: ``"argmax"``, ``"sample"`` or ``"vote"`` (weighted majority).
        system: system message for the chat template.
        prompt: an already formatted prompt (skips the chat template).
        is_final: ``text -> bool``; a particle whose text satisfies it is finished, in
            addition to ``config.stop_at_answer``.
        answer_fn: extracts the final answer from a solution.
        progress: show a progress bar per step (``None``: when on a terminal).

    Returns:
        A :class:`DecodeResult`.

    Raises:
        ValueError: on an empty question, ``n_particles < 1``, bad options, or a reward that
            returns NaN, values outside ``[0, 1]`` or the wrong number of scores.
        LLMBackendError: when the backend fails (server down, malformed reply, timeout).
    """
    n = _check_common(question, config, n_particles)
    _check_pf(weighting, reward_temperature, ess_threshold, scheme, selection, tilt)
    run = _prepare(lm, question, reward, config, system, prompt, is_final=is_final)
    key, key_select, _, _ = _split4(key)
    out = _smc(
        key, run, n, weighting=weighting, temperature=reward_temperature,
        ess_threshold=ess_threshold, scheme=scheme, progress=progress, desc="particle filter", tilt=tilt,
    )
    return _result(key_select, *out, run, "particle_filter", selection, answer_fn)


def entropic_particle_filter(
    key, lm, question: str, reward, *, config: DecodeConfig = DEFAULT_CONFIG, n_particles: int | None = None,
    weighting: str = "logit", reward_temperature: float = 1.0,
    ess_threshold: float = 1.0, anneal_threshold: float = 0.5, lookahead: int = 0,
    lookahead_strength: float = 1.0, keep_residual_weights: bool = False, tilt: str = "final",
    scheme: str = "multinomial", selection: str = "argmax", system: str | None = None,
    prompt: str | None = None, is_final: Callable[[str], bool] | None = None,
    answer_fn: Callable[[str], str | None] = extract_answer, progress: bool | None = None,
) -> DecodeResult:
    """Entropic particle filtering (Giannone et al., 2025).

    Particle filtering whose resampling distribution is annealed when diversity drops
    (*entropic annealing*): when the live particles' :math:`\\mathrm{ESS}_t <
    \\text{anneal\\_threshold}\\cdot m`, ancestors are drawn with probabilities
    :math:`\\propto w_i^{\\beta_t}` where
    :math:`\\beta_t^{-1} = \\max\\bigl(1, (m/\\mathrm{ESS}_t)(1 - t/T)\\bigr)`, flattening the
    distribution early and less so as the horizon :math:`T` (``config.max_steps``) nears.
    Optional *look-ahead modulation* (``lookahead > 0``) samples that many future steps
    per live particle, scores them, and adds ``lookahead_strength`` times their log
    potential to the resampling weights, so a state is judged by where it leads; the
    look-ahead text is discarded but its tokens are counted in the budget.

    Finished particles are frozen, as in :func:`particle_filter`: annealing and
    look-ahead act on the live particles only. With ``keep_residual_weights=True`` a
    child of live particle :math:`j` drawn with probability :math:`q_j` gets weight
    :math:`w_j / (m q_j)` (for :math:`q \\propto w^\\beta` that is
    :math:`w_j^{1-\\beta} \\sum_{k} w_k^\\beta / m`), which keeps the weighted particles an
    unbiased importance sample of the filter's target; the paper's variant (default)
    shares the live mass equally.

    Other arguments as in :func:`particle_filter`.
    """
    n = _check_common(question, config, n_particles)
    _check_pf(weighting, reward_temperature, ess_threshold, scheme, selection, tilt)
    if not (isinstance(anneal_threshold, (int, float)) and 0 <= anneal_threshold <= 1):
        raise ValueError(f"`anneal_threshold` must be in [0, 1], got {anneal_threshold!r}")
    if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
        raise ValueError(f"`lookahead` must be an int >= 0, got {lookahead!r}")
    run = _prepare(lm, question, reward, config, system, prompt, is_final=is_final)
    key, key_select, _, _ = _split4(key)
    out = _smc(
        key, run, n, weighting=weighting, temperature=reward_temperature,
        ess_threshold=ess_threshold, scheme=scheme, progress=progress, desc="entropic PF",
        anneal_threshold=anneal_threshold, lookahead=lookahead, lookahead_strength=lookahead_strength,
        keep_residual_weights=keep_residual_weights, tilt=tilt,
    )
    return _result(key_select, *out, run, "entropic_particle_filter", selection, answer_fn)


def particle_gibbs(
    key, lm, question: str, reward, *, config: DecodeConfig = DEFAULT_CONFIG, n_particles: int | None = None,
    iterations: int = 2, weighting: str = "logit", reward_temperature: float = 1.0, tilt: str = "final",
    scheme: str = "multinomial", selection: str = "argmax", system: str | None = None,
    prompt: str | None = None, is_final: Callable[[str], bool] | None = None,
    answer_fn: Callable[[str], str | None] = extract_answer, progress: bool | None = None,
) -> DecodeResult:
    """Particle Gibbs: iterated conditional particle filters (Andrieu, Doucet and Holenstein, 2010).

    The first sweep is a particle filter. Each later sweep keeps one *reference*
    trajectory — drawn from the previous sweep's final weights — in the last slot: it is
    never resampled away, its prefixes are re-weighted with their stored scores, and the
    other live particles may resample onto it and branch from its prefix (its token ids
    included). This is the particle-Gibbs extension of Puri et al. (2025, Sec. 3.2).
    Finished particles are frozen as in :func:`particle_filter`; the reference, once
    replayed to its end, is frozen like any other. The budget counts every sweep; the
    answer is selected from the last one (every sweep is in ``iterations``).

    Other arguments as in :func:`particle_filter`; resampling happens at every step.
    """
    n = _check_common(question, config, n_particles)
    _check_pf(weighting, reward_temperature, 1.0, scheme, selection, tilt)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"`iterations` must be a positive int, got {iterations!r}")
    if iterations > 1 and n < 2:
        raise ValueError("`n_particles` must be >= 2 for particle Gibbs with more than one iteration")
    run = _prepare(lm, question, reward, config, system, prompt, is_final=is_final)
    reference = None
    sweeps = []
    for sweep in range(iterations):
        key, key_sweep, key_ref, _ = _split4(key)
        out = _smc(
            key_sweep, run, n, weighting=weighting, temperature=reward_temperature,
            ess_threshold=1.0, scheme=scheme, progress=progress,
            desc=f"particle Gibbs {sweep + 1}/{iterations}", reference=reference, tilt=tilt,
        )
        sweeps.append(out)
        particles, log_w = out[0], out[1]
        reference = particles[int(_rng(key_ref).choice(len(particles), p=_softmax(log_w)))]
    key, key_select, _, _ = _split4(key)
    result = _result(key_select, *sweeps[-1], run, "particle_gibbs", selection, answer_fn)
    result.iterations = [
        {"particles": s[0], "log_weights": np.asarray(s[1]), "ancestors": np.asarray(s[2])} for s in sweeps
    ]
    return result


# -- baselines -------------------------------------------------------------------------------


def sample_independent(
    key, lm, question: str, *, n: int | None = None, config: DecodeConfig = DEFAULT_CONFIG,
    system: str | None = None, prompt: str | None = None, is_final: Callable[[str], bool] | None = None,
    progress: bool | None = None, _run: _Run | None = None,
) -> tuple[list[Particle], Budget]:
    """``n`` independent complete solutions (default ``config.n_particles``), generated step
    by step (no reward involved); all live particles are extended in one backend call.

    Returns:
        The particles and the budget (rewards are not scored here).
    """
    n = _check_common(question, config, n, name="n")
    run = _run or _prepare(lm, question, lambda q, s: 0.5, config, system, prompt, is_final=is_final)
    particles = [Particle() for _ in range(n)]
    max_steps = run.config.max_steps
    with progress_bar(total=max_steps, enabled=progress, desc="sampling") as bar:
        for t in range(max_steps):
            active = [i for i, p in enumerate(particles) if not p.finished]
            if not active:
                break
            key, sub, _, _ = _split4(key)
            particles = _step_particles(run, sub, particles, active, t == max_steps - 1)
            bar.update(1)
    return particles, (run.finish() if _run is None else run.budget)


def greedy(
    key, lm, question: str, reward=None, *, config: DecodeConfig = DEFAULT_CONFIG, system: str | None = None,
    prompt: str | None = None, is_final: Callable[[str], bool] | None = None,
    answer_fn: Callable[[str], str | None] = extract_answer, progress: bool | None = None, **_,
) -> DecodeResult:
    """Greedy decoding (``config`` at temperature 0), one step at a time; the reward is not
    used. With a token-level backend this is the model's own greedy output, token for
    token, whatever the step delimiter."""
    _check_common(question, config)
    config = config.replace(temperature=0.0)
    run = _prepare(lm, question, reward or (lambda q, s: 0.5), config, system, prompt, needs_process=False,
                   is_final=is_final)
    particles, _ = sample_independent(key, None, question, n=1, config=config, progress=progress, _run=run)
    return _result(key, particles, np.zeros(1), np.zeros((0, 1)), [1.0], [False], run, "greedy",
                   "argmax", answer_fn)


_AGGREGATES = ("last", "min", "product", "mean")


def _aggregate_scores(run: _Run, particles: list[Particle], aggregate: str) -> np.ndarray:
    if aggregate == "last" or getattr(run.reward, "kind", "process") == "outcome":
        return run.score([p.text for p in particles])
    prefixes = [("".join(p.steps[: k + 1])) for p in particles for k in range(len(p.steps))]
    flat = run.score(prefixes)
    out, offset = [], 0
    for p in particles:
        per_step = flat[offset: offset + len(p.steps)] if p.steps else np.array([0.5])
        offset += len(p.steps)
        out.append({"min": np.min, "product": np.prod, "mean": np.mean}[aggregate](per_step))
    return np.asarray(out)


def best_of_n(
    key, lm, question: str, reward, *, config: DecodeConfig = DEFAULT_CONFIG, n_particles: int | None = None,
    aggregate: str = "last", system: str | None = None, prompt: str | None = None,
    is_final: Callable[[str], bool] | None = None, answer_fn: Callable[[str], str | None] = extract_answer,
    progress: bool | None = None, samples: Sequence[Particle] | None = None,
) -> DecodeResult:
    """Best-of-N: draw ``n_particles`` independent solutions, return the highest-scoring one.

    Args:
        reward: an outcome reward (scores the finished solutions) or a process reward,
            aggregated over each solution's prefixes by ``aggregate``: ``"last"`` (the
            score of the whole solution), ``"min"``, ``"product"`` or ``"mean"``.
        samples: already generated solutions to select from (their generation cost is
            then not in the budget); the first ``n_particles`` are used.

    Other arguments as in :func:`particle_filter`. The log weights of the result are the
    log scores.
    """
    n = _check_common(question, config, n_particles)
    if aggregate not in _AGGREGATES:
        raise ValueError(f"`aggregate` must be one of {_AGGREGATES}, got {aggregate!r}")
    run = _prepare(lm, question, reward, config, system, prompt, needs_process=False, is_final=is_final)
    key, key_sample, key_select, _ = _split4(key)
    if samples is None:
        particles, _ = sample_independent(key_sample, None, question, n=n, config=config, progress=progress,
                                          _run=run)
    else:
        particles = list(samples)[:n]
    scores = _aggregate_scores(run, particles, aggregate)
    particles = [replace(p, scores=p.scores + (float(s),)) for p, s in zip(particles, scores, strict=True)]
    log_w = np.log(np.clip(scores, 1e-300, None))
    n = len(particles)
    return _result(key_select, particles, log_w, np.arange(n)[None], [float(n)], [False], run,
                   "best_of_n", "argmax", answer_fn)


def majority_vote(
    key, lm, question: str, reward=None, *, config: DecodeConfig = DEFAULT_CONFIG, n_particles: int | None = None,
    system: str | None = None, prompt: str | None = None, is_final: Callable[[str], bool] | None = None,
    answer_fn: Callable[[str], str | None] = extract_answer, progress: bool | None = None,
    samples: Sequence[Particle] | None = None,
) -> DecodeResult:
    """Self-consistency (Wang et al., 2023): the most frequent answer among ``n_particles`` samples.

    With a ``reward`` it is the *weighted* majority vote: each sample votes with its
    reward (an outcome reward, or a process reward on the whole solution).
    """
    n = _check_common(question, config, n_particles)
    run = _prepare(lm, question, reward or (lambda q, s: 1.0), config, system, prompt, needs_process=False,
                   is_final=is_final)
    key, key_sample, key_select, _ = _split4(key)
    if samples is None:
        particles, _ = sample_independent(key_sample, None, question, n=n, config=config, progress=progress,
                                          _run=run)
    else:
        particles = list(samples)[:n]
    if reward is None:
        log_w = np.zeros(len(particles))
    else:
        scores = run.score([p.text for p in particles])
        particles = [replace(p, scores=p.scores + (float(s),)) for p, s in zip(particles, scores, strict=True)]
        log_w = np.log(np.clip(scores, 1e-300, None))
    n = len(particles)
    return _result(key_select, particles, log_w, np.arange(n)[None], [float(n)], [False], run,
                   "majority_vote", "vote", answer_fn)


def beam_search(
    key, lm, question: str, reward, *, config: DecodeConfig = DEFAULT_CONFIG, n_particles: int | None = None,
    beam_width: int = 4, system: str | None = None, prompt: str | None = None,
    is_final: Callable[[str], bool] | None = None, answer_fn: Callable[[str], str | None] = extract_answer,
    progress: bool | None = None,
) -> DecodeResult:
    """PRM-guided step-level beam search (Snell et al., 2024).

    ``n_particles`` partial solutions are extended by one step; of the :math:`m` live
    ones, the best ``max(1, m // beam_width)`` by process reward survive (ties broken at
    random) and are copied ``beam_width`` times each into the :math:`m` live slots, to
    be extended again. A finished solution is set aside where it is — kept once, never
    copied nor dropped, as in Snell et al.'s search, where completed beams leave the
    active set. The answer is the highest-scoring solution.
    """
    n = _check_common(question, config, n_particles)
    if isinstance(beam_width, bool) or not isinstance(beam_width, int) or beam_width < 1:
        raise ValueError(f"`beam_width` must be a positive int, got {beam_width!r}")
    run = _prepare(lm, question, reward, config, system, prompt, is_final=is_final)
    max_steps = config.max_steps
    width = min(beam_width, n)
    particles = [Particle() for _ in range(n)]
    ancestors, resampled = [], []
    with progress_bar(total=max_steps, enabled=progress, desc="beam search") as bar:
        for t in range(max_steps):
            live = [i for i, p in enumerate(particles) if not p.finished]
            if not live:
                break
            key, key_step, key_tie, _ = _split4(key)
            particles = _step_particles(run, key_step, particles, live, t == max_steps - 1)
            scores = run.score([particles[i].text for i in live])
            for i, s in zip(live, scores, strict=True):
                particles[i] = replace(particles[i], scores=particles[i].scores + (float(s),))
            bar.update(1)
            alive = np.array([i for i in live if not particles[i].finished], dtype=np.int64)
            order = np.arange(n)
            if alive.size == 0:
                ancestors.append(order)
                resampled.append(False)
                break
            keep = max(1, alive.size // width)
            latest = np.array([particles[i].score for i in alive])
            jitter = _rng(key_tie).random(alive.size)
            best = alive[np.lexsort((jitter, -latest))[:keep]]
            order[alive] = np.resize(np.repeat(best, width), alive.size)
            particles = [particles[a] for a in order]
            ancestors.append(order)
            resampled.append(True)
    key, key_select, _, _ = _split4(key)
    log_w = np.log(np.clip([p.score for p in particles], 1e-300, None))
    return _result(key_select, particles, log_w, ancestors or [np.arange(n)], [float(n)] * max(len(ancestors), 1),
                   resampled or [False], run, "beam_search", "argmax", answer_fn)


METHODS: dict[str, Callable] = {
    "particle_filter": particle_filter,
    "entropic_particle_filter": entropic_particle_filter,
    "particle_gibbs": particle_gibbs,
    "greedy": greedy,
    "best_of_n": best_of_n,
    "majority_vote": majority_vote,
    "beam_search": beam_search,
}


# The methods that run without a reward: greedy ignores it, majority vote without one is
# the unweighted vote.
_REWARD_OPTIONAL = ("greedy", "majority_vote")
_ARITHMETIC_HINT = ("for arithmetic word problems, `from probinf.llm.rewards import arithmetic` gives "
                    "reward=arithmetic.ArithmeticVerifier() and answer_fn=arithmetic.extract_answer "
                    "(or arithmetic.lenient_answer, which falls back to the last number written)")


def generate(
    model_or_backend, prompt: str, reward=None, method: str = "particle_filter", n_particles: int | None = None,
    *, answer_fn: Callable[[str], str | None] | None = None, config: DecodeConfig | None = None, key=None,
    seed: int = 0, **options,
) -> DecodeResult:
    """Reward-guided decoding in one call.

    The task is the caller's: ``reward`` and ``answer_fn`` have no default (the library
    does not assume arithmetic). For arithmetic word problems pass the arithmetic ones::

        from probinf.llm.rewards import arithmetic

        generate(model, question, reward=arithmetic.ArithmeticVerifier(),
                 answer_fn=arithmetic.extract_answer)

    Args:
        model_or_backend: a :class:`~probinf.llm.base.LanguageModel`, ``"smollm2"`` (the
            embedded model), a ``.gguf`` path, an ``http(s)://`` server URL, a
            ``llama_cpp.Llama`` or a ``(model, tokenizer)`` pair from ``transformers``.
        prompt: the question (formatted with the model's chat template).
        reward: a :class:`~probinf.llm.base.RewardModel` or a callable
            ``(question, solution) -> float in [0, 1]``. Required, except for
            ``"greedy"`` (which does not use it) and ``"majority_vote"`` (without one, the
            unweighted vote).
        method: one of :data:`METHODS` (``"particle_filter"``, ``"entropic_particle_filter"``,
            ``"particle_gibbs"``, ``"greedy"``, ``"best_of_n"``, ``"majority_vote"``,
            ``"beam_search"``).
        n_particles: the number of particles / samples / beams (default:
            ``config.n_particles``).
        answer_fn: ``solution text -> answer string or None``: what ``result.answer``
            holds and what ``selection="vote"`` and majority vote count. Required.
        config: the decoding settings (default: :data:`~probinf.llm.base.DEFAULT_CONFIG`,
            the measured defaults: sampling, step delimiter, caps, stop at a stated answer).
            ``config.stop_at_answer`` finishes a particle once it states an answer in the
            formats of :func:`~probinf.llm.rewards.extract_answer` (``\\boxed{N}``, "the
            answer is N", ``#### N``), whatever ``answer_fn`` is; for answers of another
            form set it to ``False`` and pass ``is_final``.
        key: PRNG key (default: ``jax.random.key(seed)``).
        seed: used when ``key`` is not given.
        **options: passed to the method (``selection``, ``weighting``, ``system``,
            ``is_final``, ...).

    Returns:
        A :class:`DecodeResult`: ``answer``, ``text``, all ``particles`` with
        ``log_weights`` and genealogy (``ancestors``), and the ``budget``.

    Raises:
        TypeError: when ``reward`` (for a method that uses one) or ``answer_fn`` is missing,
            naming it and how to get the arithmetic ones; when ``answer_fn`` is not callable.
        ValueError: for an unknown ``method`` and every invalid input of the method.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {method!r}")
    for name in ("params", "max_steps"):
        if name in options:
            raise TypeError(f"`{name}` is now a field of `config`: pass config=DecodeConfig(...)")
    missing = []
    if reward is None and method not in _REWARD_OPTIONAL:
        missing.append(f"`reward` (a RewardModel or a callable (question, solution) -> float in [0, 1]; "
                       f"method {method!r} is guided by it)")
    if answer_fn is None:
        missing.append("`answer_fn` (a callable solution text -> answer str or None)")
    if missing:
        raise TypeError(f"generate() needs {' and '.join(missing)}: the library assumes no task; "
                        + _ARITHMETIC_HINT)
    if not callable(answer_fn):
        raise TypeError(f"`answer_fn` must be a callable text -> str | None, got {type(answer_fn).__name__}")
    config = DEFAULT_CONFIG if config is None else config
    if key is None:
        key = jax.random.key(seed)
    if method == "greedy":
        return greedy(key, model_or_backend, prompt, reward, config=config, answer_fn=answer_fn, **options)
    return METHODS[method](key, model_or_backend, prompt, reward, config=config, n_particles=n_particles,
                           answer_fn=answer_fn, **options)

r"""The two plug-in seams of reward-guided decoding: language models and reward models.

A reasoning trace is a sequence of *steps* :math:`x_1, x_2, \dots` (a step ends at a
delimiter such as a blank line, at a stop string, at the end-of-sequence token or at a
token cap). A :class:`LanguageModel` extends a batch of partial traces by one step each;
a :class:`RewardModel` scores partial traces (a *process* reward) or finished ones (an
*outcome* reward) with a number in :math:`[0, 1]`, read as the probability that the
trace is on a correct path. The samplers in :mod:`probinf.llm.samplers` only talk to
these two protocols, so any backend and any verifier plug in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "StepResult",
    "SamplingParams",
    "LanguageModel",
    "RewardModel",
    "CallableReward",
    "as_reward",
    "LLMBackendError",
    "check_scores",
    "seeds_from_key",
    "chatml",
]


class LLMBackendError(RuntimeError):
    """A backend failed: the server is down or timed out, or it answered malformed data."""


@dataclass(frozen=True)
class StepResult:
    """One step appended to one partial generation.

    Attributes:
        text: the new text, including the delimiter that ended it (if any).
        num_tokens: tokens generated for this step.
        log_prob: sum of the model's log-probabilities of those tokens (temperature 1,
            before any truncation); ``nan`` when the backend does not report them.
        finished: the generation is complete (end-of-sequence token, a stop string, or
            the total token budget is spent); no further step will be asked for.
        truncated: the step hit the per-step token cap without a delimiter.
    """

    text: str
    num_tokens: int
    log_prob: float = math.nan
    finished: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class SamplingParams:
    """How a backend draws tokens.

    Attributes:
        temperature: softmax temperature; ``0`` means greedy (argmax) decoding.
        top_k: keep the ``top_k`` most likely tokens (``0``: no limit).
        top_p: nucleus truncation (``1.0``: none).
        min_p: drop tokens whose probability is below ``min_p`` times the top one.
        max_step_tokens: token cap of one step.
        delimiter: text that ends a step (``None``: a step runs to a stop string, the
            end-of-sequence token or the cap).
        stop: strings that end the whole generation (kept out of the text).
    """

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    max_step_tokens: int = 64
    delimiter: str | None = "\n\n"
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"`temperature` must be a number >= 0, got {self.temperature!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"`top_k` must be an int >= 0, got {self.top_k!r}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"`top_p` must be in (0, 1], got {self.top_p!r}")
        if not (0 <= self.min_p < 1):
            raise ValueError(f"`min_p` must be in [0, 1), got {self.min_p!r}")
        if not (isinstance(self.max_step_tokens, int) and self.max_step_tokens >= 1):
            raise ValueError(
                f"`max_step_tokens` must be a positive int, got {self.max_step_tokens!r}"
            )
        if self.delimiter is not None and (not isinstance(self.delimiter, str) or not self.delimiter):
            raise ValueError(f"`delimiter` must be a non-empty string or None, got {self.delimiter!r}")
        if isinstance(self.stop, str) or any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"`stop` must be a tuple of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model that extends partial generations one step at a time.

    Implementations: :class:`probinf.llm.backends.LlamaCppModel` (llama.cpp),
    :class:`probinf.llm.backends.TransformersModel` (Hugging Face),
    :class:`probinf.llm.backends.OpenAICompletionsModel` (any OpenAI-compatible
    completions server) and :class:`probinf.llm.backends.ToyStepModel` (a model whose
    step distribution is known exactly, for tests).

    Attributes:
        supports_seeding: ``True`` when the same seeds give the same steps.
    """

    supports_seeding: bool

    def extend(
        self,
        seeds: Sequence[int],
        prompt: str,
        prefixes: Sequence[str],
        params: SamplingParams,
    ) -> list[StepResult]:
        """Append one step to each ``prompt + prefix``.

        Args:
            seeds: one integer seed per prefix (used by backends that support seeding).
            prompt: the formatted prompt shared by every particle.
            prefixes: the text generated so far by each particle (``""`` at the start).
            params: sampling parameters, including the step delimiter and token cap.

        Returns:
            One :class:`StepResult` per prefix, in order.
        """
        ...

    def next_token_logprobs(self, contexts: Sequence[str], top_k: int = 20) -> list[dict[str, float]]:
        """The ``top_k`` most likely next tokens after each context with their log-probabilities."""
        ...

    def format_prompt(self, question: str, system: str | None = None) -> str:
        """Wrap a user question in the model's chat template (ending where the answer starts)."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """Scores partial (process reward) or finished (outcome reward) solutions.

    Attributes:
        kind: ``"process"`` (meaningful on every prefix) or ``"outcome"`` (meaningful
            only on finished solutions).
    """

    kind: Literal["process", "outcome"]

    def score(self, question: str, solutions: Sequence[str]) -> Sequence[float]:
        """One score in ``[0, 1]`` per solution: the probability that it is (on the way to being) correct."""
        ...


@dataclass(frozen=True)
class CallableReward:
    """Any Python callable as a :class:`RewardModel`.

    Attributes:
        fn: ``fn(question, solution) -> float`` (or, with ``batched=True``,
            ``fn(question, solutions) -> sequence of floats``).
        kind: ``"process"`` or ``"outcome"``.
        batched: whether ``fn`` takes the whole list at once.
    """

    fn: Callable
    kind: Literal["process", "outcome"] = "process"
    batched: bool = False

    def __post_init__(self):
        if not callable(self.fn):
            raise TypeError(f"`fn` must be callable, got {type(self.fn).__name__}")
        if self.kind not in ("process", "outcome"):
            raise ValueError(f"`kind` must be 'process' or 'outcome', got {self.kind!r}")

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        if self.batched:
            return list(self.fn(question, list(solutions)))
        return [self.fn(question, s) for s in solutions]


def as_reward(reward, kind: Literal["process", "outcome"] = "process") -> RewardModel:
    """A :class:`RewardModel` from a reward model (returned as is) or a callable.

    Raises:
        TypeError: if ``reward`` is neither.
    """
    if isinstance(reward, RewardModel):
        return reward
    if callable(reward):
        return CallableReward(reward, kind=kind)
    raise TypeError(
        f"`reward` must be a RewardModel or a callable (question, solution) -> float, "
        f"got {type(reward).__name__}"
    )


def check_scores(scores, expected: int, name: str = "reward") -> np.ndarray:
    """Validate what a reward model returned: ``expected`` finite numbers in ``[0, 1]``.

    Raises:
        ValueError: naming ``name`` on a wrong count, a NaN/inf or a value outside ``[0, 1]``.
    """
    try:
        values = np.asarray([float(s) for s in scores], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must return numbers, got {scores!r}") from err
    if values.shape != (expected,):
        raise ValueError(
            f"`{name}` returned {values.size} scores for {expected} solutions; it must return "
            "exactly one score per solution"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` returned a NaN or infinite score: {values.tolist()}")
    if np.any(values < 0) or np.any(values > 1):
        raise ValueError(
            f"`{name}` must return scores in [0, 1] (probabilities of correctness), got "
            f"{values.tolist()}"
        )
    return values


def seeds_from_key(key, n: int) -> list[int]:
    """``n`` independent 31-bit integer seeds from a JAX PRNG key (for backends seeded by integers)."""
    import jax

    bits = jax.random.bits(key, (n,), dtype=np.uint32)
    return [int(b) & 0x7FFFFFFF for b in np.asarray(bits)]


def chatml(question: str, system: str | None = None) -> str:
    """A question in the ChatML template (SmolLM2's and many instruct models'), ending where the answer starts."""
    parts = []
    if system:
        parts.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    parts.append(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    return "".join(parts)

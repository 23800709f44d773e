r"""The two plug-in seams of reward-guided decoding: language models and reward models.

A reasoning trace is a sequence of *steps* :math:`x_1, x_2, \dots` (a step ends at a
delimiter such as a blank line, at a stop string, at the end-of-sequence token or at a
token cap). A :class:`LanguageModel` extends a batch of partial traces by one step each;
a :class:`RewardModel` scores partial traces (a *process* reward) or finished ones (an
*outcome* reward) with a number in :math:`[0, 1]`, read as the probability that the
trace is on a correct path. The samplers in :mod:`probinf.llm.samplers` only talk to
these two protocols, so any backend and any verifier plug in.

**Token faithfulness.** A partial trace is a :class:`TokenText`: the token ids the model
emitted, and their text. Backends that see token ids (llama.cpp, transformers) extend
the ids themselves, so every step is conditioned on exactly the sequence the model
produced; text is only ever derived from ids, never turned back into ids. (Turning text
back into ids is not the identity: SmolLM2 emits a blank line as two ``"\n"`` tokens,
but its tokenizer encodes ``"\n\n"`` as one token, a sequence the model itself never
produces.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from probinf.validation import check_positive_int

__all__ = [
    "TokenText",
    "as_token_text",
    "StepResult",
    "SamplingParams",
    "DecodeConfig",
    "DEFAULT_CONFIG",
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
class TokenText:
    """A token sequence and its text: a prompt, or what one particle generated so far.

    Attributes:
        text: the text. For generated tokens it is their detokenisation, decoded
            incrementally: a multi-byte UTF-8 character split across tokens appears once
            its last byte has been emitted (an incomplete character at the very end of a
            generation that goes on is not in ``text`` yet).
        tokens: the token ids, exactly as the model emitted them (for a prompt: as the
            backend's tokenizer encoded it, with the beginning-of-sequence token if the
            model uses one). ``None`` when they are unknown: text written by a user, or
            a backend that reports only text (OpenAI-compatible servers); a token-level
            backend then tokenises ``text``.
    """

    text: str = ""
    tokens: tuple[int, ...] | None = ()

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise TypeError(f"`text` must be a str, got {type(self.text).__name__}")
        if self.tokens is not None:
            tokens = tuple(self.tokens)
            if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0 for t in tokens):
                raise ValueError(f"`tokens` must be non-negative token ids or None, got {self.tokens!r}")
            object.__setattr__(self, "tokens", tuple(int(t) for t in tokens))


def as_token_text(value, name: str = "prefix") -> TokenText:
    """A :class:`TokenText` from one, or from anything with ``.text`` and ``.tokens`` (a
    particle), or from a plain string (user-written text: ``tokens=None``).

    Raises:
        TypeError: naming ``name`` for anything else.
    """
    if isinstance(value, TokenText):
        return value
    if isinstance(value, str):
        return TokenText(value, None)
    if hasattr(value, "text") and hasattr(value, "tokens"):
        return TokenText(value.text, value.tokens)
    raise TypeError(f"`{name}` must be a TokenText, a particle or a str, got {type(value).__name__}")


@dataclass(frozen=True)
class StepResult:
    """One step appended to one partial generation.

    Attributes:
        text: the step's text: the detokenisation of ``tokens`` (incremental, see
            :class:`TokenText`), including the delimiter or stop string that ended it and
            whatever else the last token holds after it (a step ends at a token, never
            inside one).
        num_tokens: tokens generated for this step (the end-of-sequence token is not
            counted, nor in ``tokens``).
        log_prob: sum of the model's log-probabilities of those tokens (temperature 1,
            before any truncation); ``nan`` when the backend does not report them.
        finished: the generation is complete (end-of-sequence token, a stop string, or
            the context window is full); no further step will be asked for.
        truncated: the step hit the per-step token cap without a delimiter.
        tokens: the step's token ids as emitted, or ``None`` from a backend that reports
            only text.
    """

    text: str
    num_tokens: int
    log_prob: float = math.nan
    finished: bool = False
    truncated: bool = False
    tokens: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
            if len(self.tokens) != self.num_tokens:
                raise ValueError(
                    f"`num_tokens` is {self.num_tokens} but the step has {len(self.tokens)} token ids"
                )


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
            end-of-sequence token or the cap). After each token the step's text so far is
            searched for it (it must follow some non-blank text of the step), and the step
            ends at the token that completes it.
        stop: strings that end the whole generation. They are searched for after each
            token in the text generated so far (so one may straddle a step boundary);
            the generation ends at the token that completes one, and that token is kept:
            the text *includes* the stop string (and anything after it inside the same
            token), because text is always the detokenisation of the emitted tokens.
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


@dataclass(frozen=True)
class DecodeConfig:
    """The decoding defaults, in one place: used by :func:`~probinf.llm.samplers.generate`
    and every sampler, the ``probinf decode`` command, the docs and the benchmark.

    The caps come from a measurement on the embedded SmolLM2-135M-Instruct
    (``benchmarks/llm_defaults.py``, figures in ``benchmarks/results/llm_defaults.json``
    and ``docs/llm.md``; 30 development problems that are not the benchmark's, greedy
    and sampled, two system prompts): with a newline delimiter a step took at most 51
    and 60 tokens at the 95th percentile, and a solution stated its answer (or ended)
    within 5 and 6.8 steps, so the caps are 64 tokens and 7 steps. A newline rather than
    a blank line delimits steps because a particle filter acts between steps: with a
    blank line the median solution was one or two steps long. A particle that hits a cap
    is flagged (``truncated`` steps, ``finish_reason="max_steps"``), never silently cut.

    Attributes:
        n_particles: the method's budget :math:`N` (particles, samples or beams).
        max_steps: the most steps per solution; what is unfinished then is final.
        max_step_tokens: token cap of one step.
        delimiter: text that ends a step (see :class:`SamplingParams`).
        stop_at_answer: a particle is finished as soon as it states an answer
            (:func:`probinf.llm.rewards.extract_answer` finds one), saving the tokens a
            model spends after it.
        temperature, top_k, top_p, min_p: token sampling (see :class:`SamplingParams`);
            llama.cpp's default truncation, which keeps a small model's samples coherent.
        stop: strings that end a generation (see :class:`SamplingParams`).
    """

    n_particles: int = 8
    max_steps: int = 7
    max_step_tokens: int = 64
    delimiter: str | None = "\n"
    stop_at_answer: bool = True
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        check_positive_int(self.n_particles, "n_particles")
        check_positive_int(self.max_steps, "max_steps")
        if not isinstance(self.stop_at_answer, bool):
            raise ValueError(f"`stop_at_answer` must be True or False, got {self.stop_at_answer!r}")
        if isinstance(self.stop, list):
            object.__setattr__(self, "stop", tuple(self.stop))
        _ = self.sampling  # validates the sampling fields, naming the one that is wrong

    @property
    def sampling(self) -> SamplingParams:
        """The :class:`SamplingParams` a backend receives."""
        return SamplingParams(
            temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
            max_step_tokens=self.max_step_tokens, delimiter=self.delimiter, stop=self.stop,
        )

    def replace(self, **changes) -> DecodeConfig:
        """A copy with some fields changed (validated again)."""
        import dataclasses

        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"DecodeConfig has no field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


DEFAULT_CONFIG = DecodeConfig()


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model that extends partial generations one step at a time.

    Implementations: :class:`probinf.llm.backends.LlamaCppModel` (llama.cpp),
    :class:`probinf.llm.backends.TransformersModel` (Hugging Face),
    :class:`probinf.llm.backends.OpenAICompletionsModel` (any OpenAI-compatible
    completions server) and :class:`probinf.llm.backends.ToyStepModel` (a model whose
    step distribution is known exactly, for tests).

    A sampler encodes the prompt once per run (:meth:`encode_prompt`) and then calls
    :meth:`extend` with *all* live particles at once, so a backend is free to batch them.

    Attributes:
        supports_seeding: ``True`` when the same seeds give the same steps.
    """

    supports_seeding: bool

    def format_prompt(self, question: str, system: str | None = None) -> str:
        """Wrap a user question in the model's chat template (ending where the answer starts)."""
        ...

    def encode_prompt(self, prompt: str) -> TokenText:
        """The prompt as the model sees it: its token ids (``None`` for a text-only backend)."""
        ...

    def extend(
        self,
        seeds: Sequence[int],
        prompt: TokenText | str,
        prefixes: Sequence[TokenText],
        params: SamplingParams,
    ) -> list[StepResult]:
        """Append one step to each ``prompt + prefix``.

        Args:
            seeds: one integer seed per prefix (used by backends that support seeding).
            prompt: the encoded prompt shared by every particle (a ``str`` is encoded).
            prefixes: what each particle generated so far (``TokenText()`` at the start).
                A token-level backend continues ``prompt.tokens + prefix.tokens`` as they
                are; only a prefix without ids (``tokens=None``: user-written text) is
                tokenised.
            params: sampling parameters, including the step delimiter and token cap.

        Returns:
            One :class:`StepResult` per prefix, in order.
        """
        ...

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20,
        prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        """The ``top_k`` most likely next tokens after each context, with their log-probabilities.

        ``contexts`` are prompts (encoded or text); with ``prefixes``, context ``i`` is
        continued by ``prefixes[i]`` exactly as in :meth:`extend`.
        """
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

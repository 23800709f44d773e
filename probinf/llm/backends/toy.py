"""A language model whose step distribution is known exactly (for tests and teaching)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from probinf.llm.base import SamplingParams, StepResult, TokenText, as_token_text

__all__ = ["ToyStepModel"]


class ToyStepModel:
    """Draws each step from an explicit categorical distribution over strings.

    ``transition(steps)`` receives the steps generated so far (a tuple of strings,
    delimiters stripped) and returns the next step's options as ``[(text, prob), ...]``;
    an empty list means the generation is finished. Words count as tokens, so the
    per-step token cap truncates long options exactly as a real backend would. It is
    text-only (steps report ``tokens=None``): its steps are strings, read back from the
    prefix text by splitting at the delimiter. Because every step probability is known,
    sampler output can be compared with exact distributions.

    Args:
        transition: ``steps -> [(text, probability), ...]``; probabilities must sum to 1.
        judge: optional ``context -> P(Yes)`` used by :meth:`next_token_logprobs` (so the
            toy model can also act as an LM judge).
    """

    supports_seeding = True

    def __init__(self, transition: Callable[[tuple[str, ...]], Sequence[tuple[str, float]]], judge=None):
        if not callable(transition):
            raise TypeError("`transition` must be callable: steps -> [(text, prob), ...]")
        self.transition = transition
        self.judge = judge

    def format_prompt(self, question: str, system: str | None = None) -> str:
        return f"{system + chr(10) if system else ''}Q: {question}\nA: "

    def encode_prompt(self, prompt: str) -> TokenText:
        return TokenText(prompt.text if isinstance(prompt, TokenText) else str(prompt), None)

    @staticmethod
    def steps_of(prefix: str, delimiter: str | None) -> tuple[str, ...]:
        if not prefix:
            return ()
        if delimiter is None:
            return (prefix,)
        return tuple(part for part in prefix.split(delimiter) if part)

    def extend(
        self, seeds: Sequence[int], prompt: TokenText | str, prefixes: Sequence[TokenText], params: SamplingParams,
    ) -> list[StepResult]:
        if len(seeds) != len(prefixes):
            raise ValueError(f"`seeds` has {len(seeds)} entries for {len(prefixes)} prefixes")
        results = []
        for seed, prefix in zip(seeds, [as_token_text(p, "prefixes").text for p in prefixes], strict=True):
            options = list(self.transition(self.steps_of(prefix, params.delimiter)))
            if not options:
                results.append(StepResult("", 0, 0.0, finished=True))
                continue
            probs = np.array([p for _, p in options], dtype=np.float64)
            if np.any(probs < 0) or not math.isclose(probs.sum(), 1.0, rel_tol=1e-9):
                raise ValueError(f"`transition` returned probabilities {probs.tolist()}, which do not sum to 1")
            index = int(np.argmax(probs)) if params.greedy else int(
                np.random.default_rng(int(seed)).choice(len(options), p=probs)
            )
            text, prob = options[index]
            words = text.split(" ")
            if len(words) > params.max_step_tokens:
                text = " ".join(words[: params.max_step_tokens])
                results.append(StepResult(text, params.max_step_tokens, math.log(prob), truncated=True))
                continue
            finished = not self.transition(self.steps_of(prefix, params.delimiter) + (text,))
            suffix = "" if finished or params.delimiter is None else params.delimiter
            results.append(StepResult(text + suffix, len(words), math.log(prob), finished=finished))
        return results

    def next_token_logprobs(
        self, contexts: Sequence[TokenText | str], top_k: int = 20, prefixes: Sequence[TokenText] | None = None,
    ) -> list[dict[str, float]]:
        if self.judge is None:
            raise NotImplementedError("this ToyStepModel has no `judge`; pass judge=context -> P(Yes)")
        out = []
        for i, context in enumerate(contexts):
            text = context.text if isinstance(context, TokenText) else context
            if prefixes is not None:
                text += as_token_text(prefixes[i], "prefixes").text
            p = float(self.judge(text))
            out.append({" Yes": math.log(max(p, 1e-300)), " No": math.log(max(1 - p, 1e-300))})
        return out

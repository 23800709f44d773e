"""An LM-as-judge process reward: the probability that a model answers "Yes"."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["LMJudgeReward"]

DEFAULT_TEMPLATE = (
    "Here is a math problem and the beginning of a solution.\n\n"
    "Problem: {question}\n\nSolution so far:\n{solution}\n\n"
    "Is every step of the solution so far correct? Answer Yes or No."
)


class LMJudgeReward:
    r"""Process reward :math:`r = P(\text{Yes}) / (P(\text{Yes}) + P(\text{No}))` from any backend.

    The judge model is asked ``template`` (with ``{question}`` and ``{solution}``) in its
    chat template, and the next-token log-probabilities of the answer words are read
    (every top token whose stripped, case-folded text is ``yes`` / ``no`` counts; the ratio is
    computed in log space, so extreme log-probabilities cannot overflow). When neither word
    is among the top tokens the score is 1/2: the judge gave no evidence.

    Args:
        model: any :class:`~probinf.llm.base.LanguageModel` (it may be the generator itself).
        template: the question put to the judge.
        top_k: how many next tokens to read.
    """

    kind = "process"

    def __init__(self, model, template: str = DEFAULT_TEMPLATE, top_k: int = 20):
        if not isinstance(template, str) or "{question}" not in template or "{solution}" not in template:
            raise ValueError(f"`template` must be a str containing {{question}} and {{solution}}, got {template!r}")
        try:  # any other field or a stray brace would fail on every call to `score`
            template.format(question="", solution="")
        except (IndexError, KeyError, ValueError) as err:
            raise ValueError(
                f"`template` may use only the fields {{question}} and {{solution}} (write a literal "
                f"brace as {{{{ or }}}}), got {template!r}"
            ) from err
        self.model = model
        self.template = template
        self.top_k = int(top_k)

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        contexts = [
            self.model.format_prompt(self.template.format(question=question, solution=s.strip() or "(empty)"))
            for s in solutions
        ]
        return [_yes_probability(top) for top in self.model.next_token_logprobs(contexts, top_k=self.top_k)]


def _log_sum_exp(values: list[float]) -> float:
    finite = [v for v in values if v == v and v != -math.inf]
    if not finite:
        return -math.inf
    peak = max(finite)
    if peak == math.inf:
        return math.inf
    return peak + math.log(sum(math.exp(v - peak) for v in finite))


def _yes_probability(top: dict) -> float:
    r""":math:`\sigma(\log P(\text{Yes}) - \log P(\text{No}))`, in log space; 1/2 without evidence.

    A token counts when its text, stripped of whitespace and case-folded, is ``yes`` / ``no``
    (one pass over the top tokens; NaN log-probabilities are ignored).
    """
    words = {"yes": [], "no": []}
    for token, logprob in top.items():
        word = str(token).strip().casefold()
        if word in words:
            words[word].append(float(logprob))
    log_yes, log_no = _log_sum_exp(words["yes"]), _log_sum_exp(words["no"])
    if log_yes == log_no:  # neither word (both -inf), or equal evidence
        return 0.5
    difference = log_yes - log_no
    if difference != difference:  # inf - inf
        return 0.5
    if difference >= 0:
        return 1.0 / (1.0 + math.exp(-difference))
    return math.exp(difference) / (1.0 + math.exp(difference))

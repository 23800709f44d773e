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
    (every top token whose stripped, lower-cased text is ``yes`` / ``no`` counts). When
    neither word is among the top tokens the score is 1/2: the judge gave no evidence.

    Args:
        model: any :class:`~probinf.llm.base.LanguageModel` (it may be the generator itself).
        template: the question put to the judge.
        top_k: how many next tokens to read.
    """

    kind = "process"

    def __init__(self, model, template: str = DEFAULT_TEMPLATE, top_k: int = 20):
        if "{question}" not in template or "{solution}" not in template:
            raise ValueError("`template` must contain {question} and {solution}")
        self.model = model
        self.template = template
        self.top_k = int(top_k)

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        contexts = [
            self.model.format_prompt(self.template.format(question=question, solution=s.strip() or "(empty)"))
            for s in solutions
        ]
        scores = []
        for top in self.model.next_token_logprobs(contexts, top_k=self.top_k):
            yes = sum(math.exp(v) for k, v in top.items() if k.strip().lower() == "yes")
            no = sum(math.exp(v) for k, v in top.items() if k.strip().lower() == "no")
            scores.append(yes / (yes + no) if yes + no > 0 else 0.5)
        return scores

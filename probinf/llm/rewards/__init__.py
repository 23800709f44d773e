"""Rewards shipped with the library: an exact arithmetic verifier, answer matching, an LM judge."""

from probinf.llm.rewards.arithmetic import (
    AnswerMatch,
    ArithmeticVerifier,
    check_claims,
    extract_answer,
    find_claims,
    lenient_answer,
    problem_numbers,
)
from probinf.llm.rewards.judge import LMJudgeReward

__all__ = [
    "ArithmeticVerifier",
    "AnswerMatch",
    "LMJudgeReward",
    "extract_answer",
    "check_claims",
    "find_claims",
    "lenient_answer",
    "problem_numbers",
]

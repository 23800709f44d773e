"""Rewards shipped with the library: an exact arithmetic verifier, answer matching, an LM judge."""

from probinf.llm.rewards.arithmetic import (
    MAX_UNWRITTEN_DIGITS,
    AnswerMatch,
    ArithmeticVerifier,
    canonical_answer,
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
    "MAX_UNWRITTEN_DIGITS",
    "canonical_answer",
    "extract_answer",
    "check_claims",
    "find_claims",
    "lenient_answer",
    "problem_numbers",
]

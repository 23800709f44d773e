"""The shipped rewards against hand-checked answers."""

import math
from fractions import Fraction

import pytest

from probinf.llm import (
    AnswerMatch,
    ArithmeticVerifier,
    CallableReward,
    LMJudgeReward,
    ToyStepModel,
    as_reward,
)
from probinf.llm.base import check_scores
from probinf.llm.rewards import extract_answer, find_claims, lenient_answer, problem_numbers

QUESTION = "Mia has 12 apples and gets 7 more. How many apples does Mia have now?"


@pytest.mark.parametrize("text, expected", [
    ("The answer is 19.", "19"),
    ("so the answer is: 1,200.0 dollars", "1200"),
    ("Answer: -3", "-3"),
    ("we get \\boxed{42} and the answer is 7", "42"),
    ("#### 36", "36"),
    ("12 + 7 = 19", None),
    ("The answer is 3. Actually the answer is 4.", "4"),
    ("", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_lenient_answer_falls_back_to_the_last_number():
    assert lenient_answer("So Mia has 19 apples now.") == "19"
    assert lenient_answer("no numbers here") is None
    assert lenient_answer("The answer is 5, not 6") == "5"


def test_problem_numbers_digits_and_words():
    assert problem_numbers("Tom has 3 boxes and a dozen eggs, twice as many") == {
        Fraction(3), Fraction(12), Fraction(2)}


def test_find_claims_checks_exactly():
    claims = find_claims("12 + 7 = 19, then 19 x 2 = 40 and (3 + 4) * 2 = 14; 1/3 + 1/6 = 0.5; 5 / 0 = 1")
    assert [(c[1], c[2]) for c in claims] == [
        (Fraction(19), Fraction(19)),
        (Fraction(38), Fraction(40)),
        (Fraction(14), Fraction(14)),
        (Fraction(1, 2), Fraction(1, 2)),
        (None, Fraction(1)),
    ]
    assert claims[1][0] == [Fraction(19), Fraction(2)]


def test_find_claims_on_a_long_sum_without_result():
    """A model wrote 18 terms and no '='; the old pattern backtracked ~4^17 times (a hung job)."""
    text = "Omar has 18 - 17 = 1 shell left.\nOmar has " + " + ".join(str(k) for k in range(1, 60))
    assert [(c[1], c[2]) for c in find_claims(text)] == [(Fraction(1), Fraction(1))]
    text += " = 1770"
    assert [(c[1], c[2]) for c in find_claims(text)][-1] == (Fraction(1770), Fraction(1770))


def test_pathological_model_output_is_scored_not_fatal():
    # Thousands of spaces after "answer" (the old answer pattern was cubic in them) and
    # numbers past Python's 4,300-digit int(str) limit.
    assert lenient_answer("The answer" + " " * 3000 + "is 12") == "12"
    big = "9" * 5000
    assert problem_numbers(f"Tom has {big} apples") == {Fraction(10**5000 - 1)}
    scores = ArithmeticVerifier().score("Tom has 3 apples and gets 4 more.",
                                        ["3 + 4 = 7", f"3 + {big} = {big}"])
    assert scores[0] > 0.5 > scores[1]


@pytest.mark.parametrize("solution, log_odds", [
    ("", 0.0),                                       # no claim yet: uninformative
    ("Let me think about it.", 0.0),
    ("12 + 7 = 19", 2.0),                            # correct and grounded
    ("12 + 7 = 20", -4.0),                           # wrong arithmetic
    ("5 + 5 = 10", -1.0),                            # right but not from the problem
    ("12 + 7 = 19\nThe answer is 19.", 4.0),         # + derived answer + full coverage
    ("The answer is 19.", -2.0),                     # answer derived nowhere
    ("12 + 7 = 19, 19 + 7 = 26. The answer is 26", 4.0),  # second claim grounded on the first; capped
    ("12 - 7 = 5. The answer is 5.", 4.0),           # grounded wrong operation: the verifier cannot know
])
def test_verifier_log_odds(solution, log_odds):
    verifier = ArithmeticVerifier()
    assert verifier.log_odds(QUESTION, solution) == log_odds
    assert verifier.score(QUESTION, [solution])[0] == pytest.approx(1 / (1 + math.exp(-log_odds)))


def test_answer_match_outcome_reward():
    reward = AnswerMatch("19")
    assert reward.kind == "outcome"
    assert reward.score(QUESTION, ["The answer is 19.", "The answer is 20.", "nothing"]) == [1.0, 0.0, 0.0]
    assert AnswerMatch({QUESTION: 19}).score(QUESTION, ["#### 19"]) == [1.0]
    with pytest.raises(ValueError, match="answers"):
        AnswerMatch({}).score(QUESTION, ["x"])


def test_lm_judge_reads_yes_probability():
    judge = LMJudgeReward(ToyStepModel(lambda steps: [], judge=lambda context: 0.8 if "19" in context else 0.1))
    assert judge.score(QUESTION, ["12 + 7 = 19", "12 + 7 = 20"]) == pytest.approx([0.8, 0.1])
    with pytest.raises(ValueError, match="template"):
        LMJudgeReward(ToyStepModel(lambda s: []), template="no placeholders")


def test_lm_judge_without_yes_or_no_is_uninformative():
    class Silent(ToyStepModel):
        def next_token_logprobs(self, contexts, top_k=20):
            return [{"Maybe": -0.1} for _ in contexts]

    assert LMJudgeReward(Silent(lambda s: [])).score(QUESTION, ["x"]) == [0.5]


def test_callable_rewards_and_validation():
    reward = as_reward(lambda q, s: 0.25)
    assert reward.kind == "process" and reward.score(QUESTION, ["a", "b"]) == [0.25, 0.25]
    batched = CallableReward(lambda q, ss: [len(s) / 10 for s in ss], kind="outcome", batched=True)
    assert batched.score(QUESTION, ["ab", "abcd"]) == [0.2, 0.4]
    assert as_reward(batched) is batched
    with pytest.raises(TypeError, match="reward"):
        as_reward("not callable")
    with pytest.raises(ValueError, match="kind"):
        CallableReward(lambda q, s: 0.5, kind="final")
    with pytest.raises(ValueError, match="exactly one score"):
        check_scores([0.5], 2)
    with pytest.raises(ValueError, match="NaN"):
        check_scores([float("nan")], 1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_scores([-0.1], 1)

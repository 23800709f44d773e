"""The shipped rewards against hand-checked answers, independent exact arithmetic, and adversarial input."""

import functools
import math
import random
import time
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probinf.llm import (
    AnswerMatch,
    ArithmeticVerifier,
    CallableReward,
    LMJudgeReward,
    ToyStepModel,
    as_reward,
)
from probinf.llm.base import check_scores
from probinf.llm.rewards import (
    MAX_UNWRITTEN_DIGITS,
    canonical_answer,
    check_claims,
    extract_answer,
    find_claims,
    lenient_answer,
    problem_numbers,
)

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


# -- numbers: decimals, fractions, scientific notation, canonical form -----------------------


@pytest.mark.parametrize("text, expected, value", [
    ("The answer is 1e5", "100000", Fraction(10**5)),
    ("The answer is 1/2", "0.5", Fraction(1, 2)),
    ("The answer is 5e-1", "0.5", Fraction(1, 2)),
    ("The answer is 0.50", "0.5", Fraction(1, 2)),
    ("The answer is .5", "0.5", Fraction(1, 2)),
    (r"\boxed{\frac{2}{4}}", "0.5", Fraction(1, 2)),
    ("The answer is 1/3", "1/3", Fraction(1, 3)),
    ("The answer is 4/12.", "1/3", Fraction(1, 3)),
    ("The answer is -6/4", "-1.5", Fraction(-3, 2)),
    ("The answer is 12/3", "4", Fraction(4)),
    ("The answer is 6.02E23", "602000000000000000000000", Fraction(602 * 10**21)),
    ("The answer is 1.5e-3", "0.0015", Fraction(15, 10**4)),
    ("The answer is 1,200.50", "1200.5", Fraction(2401, 2)),
    ("The answer is 25%", "25", Fraction(25)),
    ("The answer is 3eggs", "3", Fraction(3)),                # "e" + letter is no exponent
    ("The answer is 12/25/2023", "12", Fraction(12)),         # a date is not a fraction
    ("The answer is 1,2,3", "1", Fraction(1)),                # a comma list is not a thousands group
    ("The answer is -0", "0", Fraction(0)),
    ("The answer is 1/0", None, None),                        # no value
    ("The answer is 1e5000", "1e5000", Fraction(10**5000)),   # past the padding cap: scientific form
    ("The answer is 15e-2002", "15e-2002", Fraction(15, 10**2002)),
])
def test_extract_answer_reads_numbers_exactly(text, expected, value):
    answer = extract_answer(text)
    assert answer == expected
    if value is not None:  # Python's own parser reads the canonical string back to the value
        assert Fraction(answer) == value


def test_equal_numbers_give_equal_answers():
    forms = ["0.5", "1/2", "5e-1", "50e-2", "0.500", "2/4", r"\frac{1}{2}", r"\dfrac{3}{6}", ".5", "5E-1"]
    assert {extract_answer(f"The answer is {form}") for form in forms} == {"0.5"}
    assert {canonical_answer(x) for x in (Fraction(1, 2), 0.5, Decimal("0.50"), "1/2", " 5e-1 ")} == {"0.5"}
    assert canonical_answer(10**5000) == "1e5000" == extract_answer("#### 10e4999")
    assert canonical_answer(-7) == "-7" and canonical_answer(Fraction(-2, 6)) == "-1/3"


@pytest.mark.parametrize("bad", ["abc", "1/0", "1 2", "", float("nan"), float("inf"), Decimal("NaN")])
def test_canonical_answer_rejects_non_numbers(bad):
    with pytest.raises(ValueError, match="`value`"):
        canonical_answer(bad)
    with pytest.raises(TypeError, match="`value`"):
        canonical_answer([1])


def rational_strategy():
    return st.builds(Fraction, st.integers(-10**6, 10**6), st.integers(1, 10**4))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rational_strategy())
def test_answers_in_every_notation_round_trip(value):
    """Rendered by the decimal module and by hand, read back to the same value and string."""
    forms = [f"{'-' if value < 0 else ''}{abs(value.numerator)}/{value.denominator}",
             rf"{'-' if value < 0 else ''}\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"]
    denominator = value.denominator
    while denominator % 2 == 0:
        denominator //= 2
    while denominator % 5 == 0:
        denominator //= 5
    if denominator == 1:  # terminating: decimal and scientific notation are exact too
        exact = Decimal(value.numerator) / Decimal(value.denominator)
        forms += [format(exact, "f"), format(exact, "e"), format(exact, "E")]
    answers = {extract_answer(f"The answer is {form}.") for form in forms}
    assert len(answers) == 1
    (answer,) = answers
    assert Fraction(answer) == value
    assert canonical_answer(value) == answer


# -- unicode digits ------------------------------------------------------------------------

# The zero of several decimal-digit scripts (Unicode category Nd).
ZEROS = {"arabic-indic": 0x660, "extended arabic-indic": 0x6F0, "devanagari": 0x966, "bengali": 0x9E6,
         "thai": 0xE50, "full-width": 0xFF10, "mathematical bold": 0x1D7CE}


def in_script(text, zero):
    return text.translate({ord(str(d)): chr(zero + d) for d in range(10)})


@pytest.mark.parametrize("script", sorted(ZEROS))
def test_unicode_digits_are_read_as_digits(script):
    solution = "12 + 7 = 19, 19 * 2 = 38. The answer is 38."
    local = in_script(solution, ZEROS[script])
    assert local != solution
    assert [ok for _, ok in check_claims(local)] == [True, True]
    assert extract_answer(local) == lenient_answer(local) == "38"
    question = "Mia has 12 apples and gets 7 more, then doubles them."
    verifier = ArithmeticVerifier()
    assert verifier.log_odds(in_script(question, ZEROS[script]), local) == verifier.log_odds(question, solution)
    assert problem_numbers(in_script(question, ZEROS[script])) == {Fraction(12), Fraction(7)}


def test_full_width_operators_and_non_digits():
    assert check_claims("１２ ＋ ７ ＝ １９") == [("１２ ＋ ７ ＝ １９", True)]
    assert check_claims("3 − 5 = −2") == [("3 − 5 = −2", True)]  # U+2212 minus sign
    assert check_claims("2² = 4") == []  # a superscript is not a decimal digit: no "22"
    assert problem_numbers("١٢ apples, 1,2,3 and 1,000 pears") == {Fraction(n) for n in (12, 1, 2, 3, 1000)}


# -- big numbers ---------------------------------------------------------------------------


def test_claims_on_10000_digit_numbers_are_exact():
    # Identities that hold digit by digit, so the expected truth needs no big-integer code.
    ones, nines = "1" * 10_000, "9" * 10_000
    claims = (f"{nines} + 1 = 1{'0' * 10_000}. {ones} + {ones} = {'2' * 10_000}. {ones} * 9 = {nines}. "
              f"{nines} / 9 = {ones}. 0.{'3' * 10_000} * 3 = 0.{nines}. {ones} - 1 = {ones}")
    assert [ok for _, ok in check_claims(claims)] == [True, True, True, True, True, False]
    assert extract_answer("The answer is " + "9" * 400 + ".5") == "9" * 400 + ".5"  # was an OverflowError
    assert lenient_answer(f"so {ones}") == ones


def test_unwritten_digits_are_capped_not_wrong():
    assert MAX_UNWRITTEN_DIGITS == 1000
    assert check_claims("1e200 * 1e300 = 1e500") == [("1e200 * 1e300 = 1e500", True)]  # 1,000 exactly
    assert check_claims("2^1000 = 1e300") == [("2^1000 = 1e300", False)]
    assert check_claims("1e600 * 1e600 = 1e1200") == []     # 2,400 unwritten digits: unverifiable
    assert check_claims("2^2^2^2^2^2 = 4") == []            # 2^65536 is never computed
    assert problem_numbers("1e5000 apples and 3 pears") == {Fraction(3)}


# -- the claim grammar ---------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 5 + 2", [True]),                      # the whole right side equals the left
    ("12 + 7 = 19 + 5 = 24", [True, True]),         # run-on chain: each "=" is a claim
    ("12 + 7 = 20 + 5 = 25", [False, True]),
    ("(3 + 4 = 7)", [True]),                        # an unmatched "(" is not part of the claim
    ("2(3 + 4) = 14", [True]),                      # implicit multiplication
    ("(2)(3) = 6", [True]),
    ("2^10 = 1024", [True]),
    ("2 ** -1 = 0.5", [True]),
    ("-2^2 = -4", [True]),
    ("3 - 8 = -5", [True]),
    ("1/3 + 1/6 = 1/2", [True]),                    # a glued fraction on the right
    ("5 / (2 - 2) = 1", [False]),                   # no value: wrong
    ("1,000 + 2,000 = 3,000", [True]),
    ("$12 + $7 = $19", [True]),
    ("1,2,3 + 4 = 7", [True]),                      # "3 + 4 = 7"
    ("0.2 * 100 = 20%", []),                        # ambiguous unit: skipped
    ("4^0.5 = 2", []),                              # irrational in general: skipped
    ("10 / 3 ≈ 3.33", []),
    ("x + 1 = 3", []),                              # no number on both sides of an operator
    ("7 = 3 + 4", []),
    ("3 + 4 == 7", [True]),
])
def test_claim_grammar(text, expected):
    assert [ok for _, ok in check_claims(text)] == expected


def expressions():
    """Random expression trees with their exact values (Fraction arithmetic, independent)."""
    leaves = st.integers(0, 999).map(lambda n: (str(n), Fraction(n)))
    powers = st.tuples(st.integers(0, 99), st.integers(-2, 2)).map(
        lambda p: (f"{p[0]}^{p[1]}" if p[1] >= 0 else f"{p[0]}^({p[1]})",
                   None if p[0] == 0 and p[1] < 0 else Fraction(p[0]) ** p[1]))

    operations = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
                  "×": lambda a, b: a * b, "/": lambda a, b: a / b, "÷": lambda a, b: a / b}

    def combine(parts):
        (left, a), op, (right, b), space = parts
        text = f"({left}{space}{op}{space}{right})"
        if a is None or b is None or (op in "/÷" and b == 0):
            return text, None
        return text, operations[op](a, b)

    return st.recursive(
        leaves | powers,
        lambda children: st.tuples(children, st.sampled_from(sorted(operations)), children,
                                   st.sampled_from(["", " "])).map(combine),
        max_leaves=10,
    ).filter(lambda e: e[0].startswith("(") and not e[0].startswith("(-"))


def render(value):
    sign = "-" if value < 0 else ""
    return f"{sign}{abs(value.numerator)}" if value.denominator == 1 else \
        f"{sign}{abs(value.numerator)}/{value.denominator}"


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.filter_too_much])
@given(expressions(), st.sampled_from(sorted(ZEROS) + ["ascii"]), st.booleans())
def test_claims_agree_with_exact_fraction_arithmetic(expression, script, strip):
    text, value = expression
    text = text[1:-1] if strip else text
    if value is None:
        claims = [f"{text} = 1"]
        truths = [False]
    else:
        claims = [f"{text} = {render(value)}", f"{text} = {render(value + 1)}"]
        truths = [True, False]
    for claim, truth in zip(claims, truths, strict=True):
        written = claim if script == "ascii" else in_script(claim, ZEROS[script])
        assert check_claims(written) == [(written, truth)]
        (operands, computed, claimed), = find_claims(written)
        assert (computed == claimed) is truth
        if value is not None:
            assert computed == value


# -- totality: no string makes any function raise ------------------------------------------

ATOMS = ["0", "7", "12", "007", "1,000", "1,2", "3.5", ".5", "5.", "1e5", "2E-3", "1e", "e5", "1e999",
         "1e1001", "$", "\\$", "€3", "-", "+", "*", "/", "^", "**", "x", " x ", "×", "÷", "·", "(", ")",
         "=", "==", "%", " ", "\n", ".", ",", "The answer is ", "answer:", "is", "\\boxed{", "}",
         "\\frac{", "}{", "####", "٣", "۴", "३", "５", "²", "−", "＝", "/0", "9" * 60, "e" + "9" * 45,
         "e-" + "0" * 45 + "7", ".0000000000", "e+" + "0" * 44 + "12"]
ARITHMETIC_TEXT = st.lists(
    st.sampled_from(ATOMS) | st.text(st.characters(categories=("Nd", "Sm", "Po", "Zs")), max_size=3),
    max_size=30).map("".join)
JUDGE = LMJudgeReward(ToyStepModel(lambda steps: [], judge=lambda context: 0.25))


@settings(max_examples=250, deadline=None, derandomize=True)
@given(st.one_of(st.text(), ARITHMETIC_TEXT))
def test_every_function_is_total(text):
    verifier = ArithmeticVerifier()
    for answer in (extract_answer(text), lenient_answer(text)):
        assert answer is None or canonical_answer(answer) == answer
    assert all(isinstance(n, Fraction) and n >= 0 for n in problem_numbers(text))
    claims, checked = find_claims(text), check_claims(text)
    assert len(claims) == len(checked)
    for (_, value, claimed), (written, ok) in zip(claims, checked, strict=True):
        assert written in text and ok == (value is not None and value == claimed)
    for question, solution in ((text, text), (QUESTION, text), (text, "12 + 7 = 19")):
        assert math.isfinite(verifier.log_odds(question, solution))
        assert 0.0 <= verifier.score(question, [solution])[0] <= 1.0
    assert AnswerMatch("1/2").score(text, [text])[0] in (0.0, 1.0)
    assert JUDGE.score(text, [text]) == [pytest.approx(0.25)]
    try:
        assert isinstance(canonical_answer(text), str)
    except ValueError:  # documented: canonical_answer validates its argument
        pass


def test_overflow_regressions():
    """178 wrong claims made math.exp overflow in the score; now exact log-odds, tiny score."""
    solution = "1 + 1 = 3. " * 178
    verifier = ArithmeticVerifier()
    assert verifier.log_odds("1 and 1", solution) == -4.0 * 178
    (score,) = verifier.score("1 and 1", [solution])
    assert 0.0 <= score < 1e-300


def test_judge_is_computed_in_log_space():
    class Extreme(ToyStepModel):
        def next_token_logprobs(self, contexts, top_k=20):
            return [{" Yes": 800.0, "YES": 799.0, "No": 800.0},      # would overflow exp()
                    {"yes": -1e6, "Maybe": -0.1},                      # only one word: certain
                    {"Yes": float("nan"), "No": -1.0}] [:len(contexts)]

    judge = LMJudgeReward(Extreme(lambda s: []))
    expected = 1 / (1 + math.exp(-math.log1p(math.exp(-1.0))))  # sigma(log(e^800 + e^799) - 800)
    assert judge.score(QUESTION, ["a", "b", "c"]) == pytest.approx([expected, 1.0, 0.0])
    with pytest.raises(ValueError, match="template"):
        LMJudgeReward(Extreme(lambda s: []), template="{question} {solution} {other}")


def test_answer_match_compares_canonical_forms():
    reward = AnswerMatch(Fraction(1, 2))
    assert reward.score(QUESTION, ["The answer is 0.5", "The answer is 2/4", r"\boxed{\frac{1}{2}}",
                                   "The answer is 0.25"]) == [1.0, 1.0, 1.0, 0.0]
    assert AnswerMatch({QUESTION: "1,200"}).score(QUESTION, ["#### 1200.0"]) == [1.0]
    with pytest.raises(ValueError, match="answers"):
        AnswerMatch("nineteen")


# -- linear time on adversarial input --------------------------------------------------------

VERIFIER = ArithmeticVerifier()
PUBLIC = {
    "extract_answer": extract_answer,
    "lenient_answer": lenient_answer,
    "problem_numbers": problem_numbers,
    "find_claims": find_claims,
    "check_claims": check_claims,
    "verifier (solution)": lambda text: VERIFIER.score(QUESTION, [text]),
    "verifier (question)": lambda text: VERIFIER.log_odds(text, "12 + 7 = 19. The answer is 19."),
    "answer_match": lambda text: AnswerMatch(19).score(QUESTION, [text]),
    "judge": lambda text: JUDGE.score(QUESTION, [text]),
}


def repeat(unit, n):
    return (unit * (n // len(unit) + 1))[:n]


@functools.lru_cache(maxsize=3)
def adversarial(n):
    """Inputs of about ``n`` characters that made the old regex verifier super-linear or raise."""
    rng = random.Random(0)
    return {
        "sum of n/5 terms, no '='": " + ".join(str(10 + k % 90) for k in range(n // 5)),
        "the same sum = 1": " + ".join(str(10 + k % 90) for k in range(n // 5 - 1)) + " = 1",
        "nested parentheses": "(" * (n // 2 - 3) + "1" + ")" * (n // 2 - 3) + " = 1",
        "unclosed parentheses": "(" * (n - 9) + "1 + 1 = 2",
        "alternating nesting": "(" * (n // 6) + "1" + "*3+1)" * (n // 6) + " = 2",
        "digit run": "7" * n,
        "true claim on long numbers": f"{'9' * (n // 2 - 5)} + 1 = 1{'0' * (n // 2 - 5)}",
        "long decimal answer": "The answer is " + "9" * (n - 20) + ".5",
        "long random decimal": "0." + "".join(rng.choice("0123456789") for _ in range(n - 3)) + "7",
        "comma list": repeat("1,", n),
        "thousands groups": "1" + ",000" * (n // 4),
        "wrong claims": repeat("1 + 1 = 3. ", n),
        "arabic-indic claims": repeat("١٢ + ٧ = ١٩. ", n),
        "full-width claims": repeat("１２ ＋ ７ ＝ １９。", n),
        "product chain": repeat("9*", n) + "9 = 1",
        "division chain": "/".join(str(k) for k in range(1, n // 4))[:n] + " = 1",
        "harmonic sum": " + ".join(f"1/{k}" for k in range(2, n // 4))[:n] + " = 1",
        "power tower": repeat("2^", n) + "2 = 4",
        "scientific claims": "".join(f"{k}e{k % 997} * 1e{k % 3} = {k}e{k % 997 + k % 3}. "
                                     for k in range(n // 10))[:n],
        "answer words": repeat("the answer is ", n),
        "spaces after answer": "The answer" + " " * n + "is 12",
        "boxes": repeat("\\boxed{", n),
        "hashes": "#" * n,
        "minus run": "-" * n,
        "equals run": repeat("1 = ", n),
        "long exponent": "The answer is 1e" + "9" * n,
        "random arithmetic": "".join(rng.choice("0123456789+-*/^()=., e%x") for _ in range(n)),
        "random cjk": "".join(chr(0x4E00 + rng.randrange(20_000)) for _ in range(n)),
    }


def cpu_seconds(function, text, repeats=1):
    # CPU time of this process: what the function costs, not how busy the machine is.
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        function(text)
        best = min(best, time.process_time() - start)
    return best


@pytest.mark.parametrize("case", sorted(adversarial(100)))
def test_adversarial_input_of_100000_characters_takes_under_half_a_second(case):
    text = adversarial(100_000)[case]
    assert len(text) >= 90_000
    for name, function in PUBLIC.items():
        seconds = cpu_seconds(function, text)
        if seconds >= 0.5:  # a second try before failing: one slow run can be a hiccup
            seconds = cpu_seconds(function, text, repeats=2)
        assert seconds < 0.5, f"{name} took {seconds:.2f} s on {case!r}"


@pytest.mark.parametrize("case", ["the same sum = 1", "nested parentheses", "comma list", "wrong claims",
                                  "product chain", "harmonic sum", "long exponent", "random arithmetic"])
def test_time_grows_linearly(case):
    """4x the input costs about 4x the time (a quadratic function would take 16x)."""
    small, large = adversarial(25_000)[case], adversarial(100_000)[case]
    for name, function in PUBLIC.items():
        # Best of three: a garbage-collection pause or a busy neighbour can stretch one run.
        before = cpu_seconds(function, small, repeats=3)
        if before < 0.005:
            continue  # too fast to time reliably; the absolute bound above covers it
        after = cpu_seconds(function, large, repeats=3)
        if after >= 8 * before + 0.01:  # retry before failing: one slow run can be a hiccup
            before, after = cpu_seconds(function, small, repeats=5), cpu_seconds(function, large, repeats=5)
        assert after < 8 * before + 0.01, f"{name} on {case!r}: {before:.3f} s -> {after:.3f} s"

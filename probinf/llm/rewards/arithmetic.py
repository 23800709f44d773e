r"""An exact, rule-based process verifier for arithmetic reasoning, and answer extraction.

:class:`ArithmeticVerifier` reads every claim of the form ``a op b = c`` (chains such as
``3 + 4 * 2 = 11`` and parentheses included) in a partial solution and checks it exactly
with rational arithmetic. Checking alone is not enough to separate good solutions from
bad ones (measured with SmolLM2-135M: a third of samples make no claim at all, and a
claim can be right while using numbers that appear nowhere in the problem), so the
verifier also *grounds* every claim — each operand must be a number of the problem or
the result of an earlier correct claim — and treats "no claim yet" as uninformative.

The evidence is added up on the log-odds scale and mapped to a probability,

.. math::
    z = 2\,\min(n_{\text{ok}}, m) - n_{\text{ungrounded}} - 4\,n_{\text{wrong}}
        + z_{\text{answer}}, \qquad r = \sigma(z),

where :math:`n_{\text{ok}}` counts distinct correct grounded claims (capped at
:math:`m = \max(1, k - 1)` for a problem with :math:`k` numbers, the operations needed to
combine them, so padding a solution with trivial claims earns nothing), and the
final-answer term :math:`z_{\text{answer}}` is :math:`+1` when the stated answer is the
result of a grounded claim (plus :math:`+1` times the fraction of the problem's numbers
the claims used), :math:`-2` when it was derived nowhere, and :math:`0` before any answer
is stated. A solution with no claim and no answer scores exactly :math:`1/2`, so with the
logit weighting of the particle filter it neither gains nor loses weight.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from fractions import Fraction

__all__ = ["ArithmeticVerifier", "AnswerMatch", "extract_answer", "lenient_answer", "find_claims", "check_claims", "problem_numbers"]

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"
# Each run of spaces has one place to go: ambiguous `\s*` around operands made a failed
# match backtrack exponentially in the number of terms (a long "1 + 2 + ... + 17" hung).
_OPERAND = rf"(?:\(\s*)*{_NUMBER}(?:\s*\))*"
_OPERATOR = r"(?:[-+*/×÷]|(?<=\s)x(?=\s))"
_CLAIM = re.compile(
    rf"(?P<lhs>{_OPERAND}(?:\s*{_OPERATOR}\s*{_OPERAND})+)\s*=\s*(?P<rhs>{_NUMBER})"
)
_ANSWER_PATTERNS = [
    re.compile(r"\\boxed\{\s*(" + _NUMBER + r")\s*\}"),
    # Every `\s*` is followed by a required token (cf. _OPERAND): linear, not cubic, in
    # a run of spaces after "answer".
    re.compile(r"answer(?:\s*(?:is|:|=))*(?:\s*\*+)?\s*(" + _NUMBER + r")", re.IGNORECASE),
    re.compile(r"####\s*(" + _NUMBER + r")"),
]
_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12,
    "twice": 2, "double": 2, "triple": 3, "half": 2,
}


def _digits_to_int(digits: str) -> int:
    # Python refuses int(str) beyond 4,300 digits, and a model can write such a number.
    value = 0
    for start in range(0, len(digits), 4000):
        chunk = digits[start:start + 4000]
        value = value * 10 ** len(chunk) + int(chunk)
    return value


def _to_fraction(text: str) -> Fraction:
    """A number matched by ``_NUMBER`` (sign, ``$``, thousands commas, decimals), exactly."""
    text = text.replace("$", "").replace(",", "")
    sign = -1 if text.startswith("-") else 1
    whole, _, decimals = text.lstrip("-").partition(".")
    scale = 10 ** len(decimals)
    return Fraction(sign * (_digits_to_int(whole) * scale + _digits_to_int(decimals or "0")), scale)


def _normalise(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):g}"


def extract_answer(text: str, last_number_fallback: bool = False) -> str | None:
    r"""The final answer stated in a solution, normalised (``"1,200.0"`` -> ``"1200"``), or ``None``.

    Looks for ``\boxed{N}``, then "the answer is N" / "Answer: N", then ``#### N`` (the
    last match of the first pattern found wins). With ``last_number_fallback`` a solution
    that states no answer is read as answering the last number it wrote (the usual
    GSM8K-style grading); the verifier uses the strict form.
    """
    for pattern in _ANSWER_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            try:
                return _normalise(_to_fraction(matches[-1]))
            except (ValueError, ZeroDivisionError):
                return None
    if last_number_fallback:
        numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
        if numbers:
            try:
                return _normalise(_to_fraction(numbers[-1].rstrip(".")))
            except (ValueError, ZeroDivisionError):
                return None
    return None


def lenient_answer(text: str) -> str | None:
    """:func:`extract_answer` with the last-number fallback (for grading and voting)."""
    return extract_answer(text, last_number_fallback=True)


def problem_numbers(question: str) -> set[Fraction]:
    """Every number written in the question (digits, and number words up to twelve)."""
    found = {_to_fraction(m) for m in re.findall(r"\$?\d[\d,]*(?:\.\d+)?", question)}
    for word in re.findall(r"[a-z]+", question.lower()):
        if word in _WORDS:
            found.add(Fraction(_WORDS[word]))
    return found


def _evaluate(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, ast.Div):
            return left / right
    raise ValueError("not an arithmetic expression")


def find_claims(text: str) -> list[tuple[list[Fraction], Fraction | None, Fraction]]:
    """Every claim ``expression = value`` in ``text``: ``(operands, true value or None, claimed value)``.

    The true value is ``None`` when the expression cannot be evaluated (a division by zero
    or unbalanced parentheses): such a claim counts as wrong.
    """
    claims = []
    for match in _CLAIM.finditer(text):
        lhs = match.group("lhs")
        expression = lhs.replace("$", "").replace(",", "").replace("×", "*").replace("÷", "/")
        expression = re.sub(r"(?<=\s)x(?=\s)", "*", expression)
        operands = [_to_fraction(m) for m in re.findall(r"\d[\d,]*(?:\.\d+)?", lhs)]
        try:
            value = _evaluate(ast.parse(expression.strip(), mode="eval"))
        except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
            value = None
        claims.append((operands, value, _to_fraction(match.group("rhs"))))
    return claims


def check_claims(text: str) -> list[tuple[str, bool]]:
    """Each claim as written in ``text`` with whether its arithmetic is exactly right."""
    return [
        (match.group(0).strip(), value is not None and value == claimed)
        for match, (_, value, claimed) in zip(_CLAIM.finditer(text), find_claims(text), strict=True)
    ]


class ArithmeticVerifier:
    """Exact process reward for arithmetic word problems (see the module docstring for the score).

    Args:
        allow_constants: numbers always accepted as grounded besides the problem's own
            (default ``{1, 2, 100}``: "double", "half", percentages).
    """

    kind = "process"

    def __init__(self, allow_constants: Sequence[float] = (1, 2, 100)):
        self.allow_constants = {Fraction(str(c)) for c in allow_constants}

    def log_odds(self, question: str, solution: str) -> float:
        """The evidence :math:`z` for one solution (the score is :math:`\\sigma(z)`)."""
        given = problem_numbers(question)
        known = set(given) | self.allow_constants
        correct, ungrounded, wrong = set(), 0, 0
        results: set[Fraction] = set()
        used: set[Fraction] = set()
        for operands, value, claimed in find_claims(solution):
            if value is None or value != claimed:
                wrong += 1
                continue
            if all(o in known for o in operands):
                correct.add((tuple(operands), claimed))
                results.add(claimed)
                used.update(o for o in operands if o in given)
                known.add(claimed)
            else:
                ungrounded += 1
        cap = max(1, len(given) - 1)
        z = 2.0 * min(len(correct), cap) - 1.0 * ungrounded - 4.0 * wrong
        answer = extract_answer(solution)
        if answer is not None:
            value = Fraction(answer)
            if value in results:
                z += 1.0 + (len(used) / len(given) if given else 0.0)
            else:
                z -= 2.0
        return z

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        return [1.0 / (1.0 + math.exp(-self.log_odds(question, s))) for s in solutions]


class AnswerMatch:
    """Outcome reward: 1 when the extracted final answer equals the known answer, else 0.

    Args:
        answers: the correct answer, or a mapping question -> correct answer.
    """

    kind = "outcome"

    def __init__(self, answers):
        self.answers = answers

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        expected = self.answers.get(question) if isinstance(self.answers, dict) else self.answers
        if expected is None:
            raise ValueError("`answers` has no entry for this question")
        expected = _normalise(_to_fraction(str(expected)))
        return [1.0 if extract_answer(s) == expected else 0.0 for s in solutions]

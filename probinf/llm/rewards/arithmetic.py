r"""An exact, rule-based process verifier for arithmetic reasoning, and answer extraction.

:class:`ArithmeticVerifier` reads every claim of the form ``a op b = c`` (chains such as
``3 + 4 * 2 = 11``, parentheses and powers included) in a partial solution and checks it
exactly with rational arithmetic. Checking alone is not enough to separate good solutions
from bad ones (measured with SmolLM2-135M: a third of samples make no claim at all, and a
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

**What is read.** Text is first normalised: every Unicode decimal digit (Arabic-Indic,
Devanagari, full-width, ...) becomes its ASCII digit and full-width punctuation is folded
to ASCII (one character for one, so positions are kept). Then, with whitespace free
between tokens::

    number     := [currency] mantissa [("e" | "E") ["+" | "-"] digits]   (no letter after)
    mantissa   := digits ["." digits] | 1-3 digits ("," 3 digits)+ ["." digits] | "." digits
    claim      := expression "=" rhs
    expression := term (binop term)*      binop: + - * / ^  (also × ÷ · ** and a lone x),
    term       := ("-" | "+")* atom       and implicit multiplication "2(3 + 4)", "(2)(3)"
    atom       := number | "(" expression ")"
    rhs        := ["-"] number | ["-"] digits "/" digits (written without spaces)

Precedence, from tightest: ``^`` (right-associative, integer exponents), unary signs
(``-2^2 = -4``), ``* /``, ``+ -``. Commas are thousands separators only when each is
followed by exactly three digits (``1,2,3`` is three numbers). A claim's left side is the longest expression with a binary
operator that ends at its ``=`` (so "x + 1 = 3" is no claim and "(3 + 4 = 7)" reads
"3 + 4 = 7"); in a run-on chain "12 + 7 = 19 + 5 = 24" each ``=`` is a claim, and a
claim is also right when the whole right side equals the left ("3 + 4 = 5 + 2"). A
right side followed by ``%`` is ambiguous and skipped. A division by zero makes a claim
wrong.

**Answers.** A final answer is ``\boxed{N}``, then "the answer is N" / "Answer: N", then
``#### N`` (the last match of the first kind found wins), where ``N`` is a signed literal,
a fraction written without spaces (``3/4``) or ``\frac{3}{4}``. Answers are returned in
one canonical form, so that equal numbers give equal strings (``"0.5"``, ``"1/2"``,
``"5e-1"`` and ``"\frac{2}{4}"`` all give ``"0.5"``):

* an integer: its digits, ``"-"`` if negative (``"1200"``, ``"-3"``, ``"0"``);
* a terminating decimal: plain decimal notation without trailing zeros (``"0.05"``);
* any other rational: the reduced fraction ``"p/q"`` (``"1/3"``, ``"-2/7"``);
* a number whose plain form would pad more than :data:`MAX_UNWRITTEN_DIGITS` zeros:
  ``"<integer mantissa>e<exponent>"`` (``"1e5000"``, ``"15e-2001"``).

Every form is accepted by :class:`fractions.Fraction`. Units after the number are
ignored (``"25%"`` answers ``"25"``).

**Cost and totality.** Every public function runs in time linear in the length of its
input: the tokenizer is one pass of a regular expression with possessive quantifiers
only (nothing backtracks), claims are found in one pass over the tokens (only stretches
of text holding ``=`` are tokenized), and values are exact unreduced rationals whose
long sums and products are combined as balanced trees (no gcd per step). Numbers are
exact at any length (a true claim about a 10,000-digit number is true; Python's
4,300-digit ``int``/``str`` limit is worked around by divide and conquer, the global
setting is never changed). The one bound is on digits that are *not written* — the zeros
of ``1e5000``, the digits of ``2^10000``: at most :data:`MAX_UNWRITTEN_DIGITS` per
claim, beyond which a claim is unverifiable and skipped (neither right nor wrong) and
an answer keeps its scientific form. The one super-linear cost left is reducing a single
huge fraction or decimal to lowest terms (one gcd, quadratic in that number's digits:
about 0.15 s for a 100,000-digit decimal). No function raises on any string, except
:func:`canonical_answer`, which validates its argument.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from probinf.llm.rewards._evaluate import (
    MAX_UNWRITTEN_DIGITS,
    Budget,
    Pair,
    RawClaim,
    Unverifiable,
    find_raw_claims,
    literal_pair,
    number_pair,
    same,
)
from probinf.llm.rewards._lexer import (
    NUMBER,
    PLAIN_INT,
    Literal,
    canonical_decimal,
    int_from_digits,
    int_to_digits,
    literal,
    literal_of,
    normalise_text,
)

__all__ = [
    "ArithmeticVerifier",
    "AnswerMatch",
    "MAX_UNWRITTEN_DIGITS",
    "canonical_answer",
    "check_claims",
    "extract_answer",
    "find_claims",
    "lenient_answer",
    "problem_numbers",
]

_WORD = re.compile(r"[^\W\d_]++")
_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "dozen": 12,
    "twice": 2, "double": 2, "triple": 3, "half": 2,
}


def _require_text(text, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"`{name}` must be a str, got {type(text).__name__}")
    return text


# Answers --------------------------------------------------------------------------------


class _Answer(NamedTuple):
    negative: bool
    literal: Literal | None  # a decimal / scientific literal, or
    ratio: tuple[str, str] | None  # the digits of a fraction p/q


def _pair_fraction(pair: Pair) -> Fraction:
    return Fraction(*pair)


def _ratio_canonical(negative: bool, numerator: int, denominator: int) -> str | None:
    """The canonical string of ``±numerator / denominator`` (``None`` when ``denominator == 0``)."""
    if denominator == 0:
        return None
    if numerator == 0:
        return "0"
    divisor = math.gcd(numerator, denominator)
    numerator, denominator = numerator // divisor, denominator // divisor
    twos = (denominator & -denominator).bit_length() - 1
    rest, fives = denominator >> twos, 0
    if rest != 1 and rest % 5 == 0:
        guess = round(rest.bit_length() / math.log2(5))
        fives = next((b for b in (guess - 1, guess, guess + 1) if b > 0 and 5**b == rest), 0)
        rest = 1 if fives else rest
    if rest != 1:
        return f"{'-' if negative else ''}{int_to_digits(numerator)}/{int_to_digits(denominator)}"
    scale = max(twos, fives)  # numerator / (2^a 5^b) = numerator 2^(k-a) 5^(k-b) / 10^k
    digits = int_to_digits(numerator * 2 ** (scale - twos) * 5 ** (scale - fives))
    significant = digits.rstrip("0")
    return canonical_decimal(negative, significant, len(digits) - len(significant) - scale, MAX_UNWRITTEN_DIGITS)


def _canonical(answer: _Answer) -> str | None:
    if answer.ratio is not None:
        numerator, denominator = answer.ratio
        return _ratio_canonical(answer.negative, int_from_digits(numerator), int_from_digits(denominator))
    value = answer.literal
    return canonical_decimal(answer.negative, value.digits, value.exponent, MAX_UNWRITTEN_DIGITS, value.exponent_text)


def _answer_fraction(answer: _Answer) -> Fraction | None:
    """The exact value, or ``None`` when undefined (``1/0``) or beyond the unwritten-digit cap."""
    if answer.ratio is not None:
        numerator, denominator = map(int_from_digits, answer.ratio)
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
    else:
        try:
            value = _pair_fraction(literal_pair(answer.literal, Budget()))
        except Unverifiable:
            return None
    return -value if answer.negative else value


_SPACES = re.compile(r"\s*+")
_FRAC = re.compile(r"\\[dt]?frac\{\s*+([0-9]++)\s*+\}\s*+\{\s*+([0-9]++)\s*+\}")
_AFTER_ANSWER = re.compile(r"(?:\s|[:=*]|is)*+", re.IGNORECASE)
_ANSWER_WORD = re.compile(r"answer", re.IGNORECASE)
_HASHES = re.compile(r"#{4,}+\s*+")
_BOXED = "\\boxed{"


def _answer_at(text: str, position: int) -> tuple[_Answer, int] | None:
    """The answer number starting exactly at ``position`` and where it ends, or ``None``."""
    negative = text.startswith("-", position)
    position += negative
    frac = _FRAC.match(text, position)
    if frac is not None:
        return _Answer(negative, None, (frac.group(1), frac.group(2))), frac.end()
    number = NUMBER.match(text, position)
    if number is None:
        return None
    value = literal(number)
    if value.plain and text.startswith("/", number.end()):
        denominator = PLAIN_INT.match(text, number.end() + 1)
        if denominator is not None and not text.startswith("/", denominator.end()):  # not a date
            return _Answer(negative, None, (number.group("int"), denominator.group())), denominator.end()
    return _Answer(negative, value, None), number.end()


def _stated_answer(text: str) -> _Answer | None:
    """The answer a normalised text states (see the module docstring), or ``None``."""
    last = None
    position = text.find(_BOXED)
    while position != -1:
        start = _SPACES.match(text, position + len(_BOXED)).end()
        found = _answer_at(text, start)
        if found is not None:
            end = _SPACES.match(text, found[1]).end()
            if text.startswith("}", end):
                last = found[0]
        position = text.find(_BOXED, position + len(_BOXED))
    if last is not None:
        return last
    for pattern in (_ANSWER_WORD, _HASHES):
        for match in pattern.finditer(text):
            start = _AFTER_ANSWER.match(text, match.end()).end() if pattern is _ANSWER_WORD else match.end()
            found = _answer_at(text, start)
            if found is not None:
                last = found[0]
        if last is not None:
            return last
    return None


def _last_number(text: str) -> _Answer | None:
    """The last number written in normalised ``text`` (a glued fraction ``p/q`` included)."""
    last = before = None
    for match in NUMBER.finditer(text):
        before, last = last, match
    if last is None:
        return None
    first, value = last, literal(last)
    if (value.plain and before is not None and last.start() == before.end() + 1 and text[before.end()] == "/"
            and literal(before).plain and not (before.start() > 0 and text[before.start() - 1] == "/")):
        first = before
        answer = _Answer(False, None, (before.group("int"), last.group("int")))
    else:
        answer = _Answer(False, value, None)
    begin = first.start()
    if begin > 0 and text[begin - 1] == "-" and (
            begin == 1 or not (text[begin - 2].isalnum() or text[begin - 2] in ").")):
        answer = answer._replace(negative=True)
    return answer


def _extract(text: str, last_number_fallback: bool) -> _Answer | None:
    text = normalise_text(text)
    answer = _stated_answer(text)
    if answer is None and last_number_fallback:
        answer = _last_number(text)
    return answer


def extract_answer(text: str, last_number_fallback: bool = False) -> str | None:
    r"""The final answer stated in a solution, in canonical form (``"1,200.0"`` -> ``"1200"``), or ``None``.

    Looks for ``\boxed{N}``, then "the answer is N" / "Answer: N", then ``#### N`` (the
    last match of the first pattern found wins); ``N`` may be a decimal, scientific
    notation, a glued fraction ``p/q`` or ``\frac{p}{q}``, in any Unicode digits. With
    ``last_number_fallback`` a solution that states no answer is read as answering the
    last number it wrote (the usual GSM8K-style grading); the verifier uses the strict
    form. The canonical form (see the module docstring) makes equal numbers equal strings:
    ``"1/2"``, ``"0.5"`` and ``"5e-1"`` all give ``"0.5"``, ``"1e5"`` gives ``"100000"``.
    An answer with no value (``1/0``) gives ``None``. Linear time; never raises on a str.
    """
    answer = _extract(_require_text(text, "text"), last_number_fallback)
    return None if answer is None else _canonical(answer)


def lenient_answer(text: str) -> str | None:
    """:func:`extract_answer` with the last-number fallback (for grading and voting)."""
    return extract_answer(text, last_number_fallback=True)


def canonical_answer(value) -> str:
    """The canonical answer string of a number (the form :func:`extract_answer` returns).

    Args:
        value: an ``int``, :class:`~fractions.Fraction`, finite ``float`` or
            :class:`~decimal.Decimal`, or a string holding one number as
            :func:`extract_answer` reads it (``"1,200"``, ``"-3/4"``, ``"1e5"``).

    Raises:
        ValueError: when ``value`` is not a finite number (``"1/0"``, ``"abc"``, NaN).
        TypeError: for any other type.
    """
    if isinstance(value, int):
        return _ratio_canonical(value < 0, abs(value), 1)
    if isinstance(value, Fraction):
        return _ratio_canonical(value < 0, abs(value.numerator), value.denominator)
    if isinstance(value, (float, Decimal)):
        text = str(value)
    elif isinstance(value, str):
        text = normalise_text(value).strip()
    else:
        raise TypeError(f"`value` must be a number or a str, got {type(value).__name__}")
    found = _answer_at(text, 0)
    canonical = _canonical(found[0]) if found is not None and found[1] == len(text) else None
    if canonical is None:
        raise ValueError(f"`value` must be one finite number, got {value!r}")
    return canonical


# Claims ---------------------------------------------------------------------------------


def _raw_claims(text: str) -> list[RawClaim]:
    return list(find_raw_claims(normalise_text(text)))


def _number_fraction(text: str) -> Fraction:
    # Only called on numbers that were already checked against the budget.
    return _pair_fraction(number_pair(text, Budget()))


@functools.lru_cache(maxsize=4096)
def _short_fraction(text: str) -> Fraction:
    return _number_fraction(text)


def _fraction_of(text: str) -> Fraction:
    return _short_fraction(text) if len(text) <= 32 else _number_fraction(text)


def problem_numbers(question: str) -> set[Fraction]:
    """Every number written in the question (digits in any script, and number words up to twelve).

    Numbers are unsigned; a number implying more than :data:`MAX_UNWRITTEN_DIGITS`
    unwritten digits (``1e5000``) is left out.
    """
    text = normalise_text(_require_text(question, "question"))
    found = {_fraction_of(number) for number in {m.group() for m in NUMBER.finditer(text)}
             if literal_of(number).unwritten <= MAX_UNWRITTEN_DIGITS}
    for word in set(_WORD.findall(text)):
        value = _WORDS.get(word.lower())
        if value is not None:
            found.add(Fraction(value))
    return found


def find_claims(text: str) -> list[tuple[list[Fraction], Fraction | None, Fraction]]:
    """Every claim ``expression = value`` in ``text``: ``(operands, true value or None, claimed value)``.

    ``operands`` are the (unsigned) numbers of the left side. The true value is ``None``
    when the expression has no value (a division by zero): such a claim counts as wrong.
    Claims that cannot be checked within :data:`MAX_UNWRITTEN_DIGITS` are left out. The
    grammar is in the module docstring; linear time, and never raises on a str.
    """
    claims = []
    for claim in _raw_claims(_require_text(text, "text")):
        claimed = _pair_fraction(claim.claimed)
        if claim.value is None:
            value = None
        else:  # equal to the claim: skip the gcd of reducing the left side
            value = claimed if same(claim.value, claim.claimed) else _pair_fraction(claim.value)
        claims.append(([_fraction_of(o) for o in claim.operands], value, claimed))
    return claims


def check_claims(text: str) -> list[tuple[str, bool]]:
    """Each claim as written in ``text`` (the original characters) with whether its arithmetic is exactly right.

    The claims of :func:`find_claims`, in order; linear time, and never raises on a str.
    """
    text = _require_text(text, "text")
    return [(text[c.start:c.end].strip(), c.value is not None and same(c.value, c.claimed))
            for c in _raw_claims(text)]


# Rewards --------------------------------------------------------------------------------


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # no overflow for very negative z (a thousand wrong claims)
    return e / (1.0 + e)


class ArithmeticVerifier:
    """Exact process reward for arithmetic word problems (see the module docstring for the score).

    Args:
        allow_constants: numbers always accepted as grounded besides the problem's own
            (default ``{1, 2, 100}``: "double", "half", percentages).
    """

    kind = "process"

    def __init__(self, allow_constants: Sequence[float] = (1, 2, 100)):
        try:
            self.allow_constants = {Fraction(canonical_answer(c)) for c in allow_constants}
        except (TypeError, ValueError) as err:
            raise ValueError(f"`allow_constants` must be finite numbers, got {allow_constants!r}") from err

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
        answer = _extract(solution, last_number_fallback=False)
        canonical = None if answer is None else _canonical(answer)
        if canonical is not None:
            value = _answer_fraction(answer)
            if value is not None:
                derived = value in results
            else:  # beyond the unwritten-digit cap: compare canonical forms instead
                derived = any(canonical_answer(r) == canonical for r in results)
            z += (1.0 + (len(used) / len(given) if given else 0.0)) if derived else -2.0
        return z

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        return [_sigmoid(self.log_odds(question, s)) for s in solutions]


class AnswerMatch:
    """Outcome reward: 1 when the extracted final answer equals the known answer, else 0.

    Answers are compared in canonical form (:func:`canonical_answer`), so ``0.5``,
    ``"1/2"`` and ``Fraction(1, 2)`` all match a stated "1/2" or "0.5".

    Args:
        answers: the correct answer, or a mapping question -> correct answer.
    """

    kind = "outcome"

    def __init__(self, answers):
        def canonical(value):
            try:
                return canonical_answer(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"`answers` must hold numbers, got {value!r}") from err

        self.answers = answers
        if isinstance(answers, Mapping):
            self._expected = {q: canonical(a) for q, a in answers.items()}
        else:
            self._expected = canonical(answers)

    def score(self, question: str, solutions: Sequence[str]) -> list[float]:
        if isinstance(self._expected, dict):
            if question not in self._expected:
                raise ValueError(f"`answers` has no entry for this question: {question[:80]!r}")
            expected = self._expected[question]
        else:
            expected = self._expected
        return [1.0 if extract_answer(s) == expected else 0.0 for s in solutions]

r"""Claims ``expression = value`` found in tokens, and their exact evaluation at bounded cost.

Claim grammar, over the tokens of :mod:`._lexer` (whitespace is free between tokens)::

    segment    := a maximal run of number, operator, parenthesis and "=" tokens
    expression := term (binop term)*          binop: + - * / ^ (** is ^), and implicit
    term       := ("-" | "+")* atom           multiplication "2(3 + 4)", "(2)(3)"
    atom       := literal | "(" expression ")"

A segment ``P0 = P1 = ... = Pk`` holds one candidate claim per ``=``. Its left side is
the longest suffix of the part before the ``=`` that is an expression with at least one
binary operator (so "x + 1 = 3" has none, "(3 + 4 = 7)" reads "3 + 4", and in the run-on
"12 + 7 = 19 + 5 = 24" the second claim is "19 + 5 = 24"). Its claimed value is the
(signed) number right after the ``=``, a glued fraction ``1/2`` included; the claim also
counts as right when the whole next part evaluates to the left side ("3 + 4 = 5 + 2").
A claimed value followed by ``%`` is ambiguous (is "0.2 * 100 = 20%" right?) and the
claim is skipped.

Cost. Only the stretches of text that can hold arithmetic and contain an ``=`` are
tokenized; finding claims is then one pass over those tokens, plus at most two
evaluations of each part (as a right side, then as the next left side). Values are exact rationals kept as unreduced ``(numerator, denominator)`` pairs;
runs of ``+``/``-`` and of ``*``/``/`` are collected and combined as balanced trees (no
gcd per step, which would make a chain of divisions cubic), so the work is quasi-linear
in the digits involved; nesting is handled with explicit stacks, never recursion. Digits that are not written out — the zeros of ``1e500``, the digits of
``2^1000`` — are charged to a budget of :data:`MAX_UNWRITTEN_DIGITS` per claim; a claim
that would exceed it is *unverifiable* and skipped, never counted as wrong.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import NamedTuple

from probinf.llm.rewards._lexer import Literal, Tokens, int_from_digits, literal_of, pow10, tokenize

MAX_UNWRITTEN_DIGITS = 1000
"""Digits a claim may imply without writing them (scientific exponents, powers)."""

Pair = tuple[int, int]  # (numerator, denominator > 0), not reduced


class Undefined(Exception):
    """The expression has no value (division by zero, zero to a negative power)."""


class Unverifiable(Exception):
    """Checking would exceed the budget of unwritten digits (or leave the grammar)."""


class Budget:
    __slots__ = ("left",)

    def __init__(self, digits: int = MAX_UNWRITTEN_DIGITS):
        self.left = digits

    def charge(self, digits: int) -> None:
        self.left -= digits
        if self.left < 0:
            raise Unverifiable


def _expand(value: Literal) -> Pair:
    mantissa = int_from_digits(value.digits)
    if value.exponent >= 0:
        return mantissa * pow10(value.exponent), 1
    return mantissa, pow10(-value.exponent)


def literal_pair(value: Literal, budget: Budget) -> Pair:
    """The exact value of a literal, charging its unwritten digits to ``budget``."""
    budget.charge(value.unwritten)
    return _expand(value)


@functools.lru_cache(maxsize=4096)
def _short_pair(text: str) -> tuple[Pair | None, int]:
    value = literal_of(text)
    return (None if value.unwritten > MAX_UNWRITTEN_DIGITS else _expand(value)), value.unwritten


def number_pair(text: str, budget: Budget) -> Pair:
    """:func:`literal_pair` of a number token's text (short ones cached)."""
    if len(text) <= 18 and text.isdigit():
        return int(text), 1
    if len(text) > 32:
        return literal_pair(literal_of(text), budget)
    pair, unwritten = _short_pair(text)
    if unwritten:
        budget.charge(unwritten)
    return pair


def same(a: Pair, b: Pair) -> bool:
    return a[0] * b[1] == b[0] * a[1]


# Lazy n-ary nodes: a run of sums or products is combined once, as a balanced tree -------


class _Sum:
    __slots__ = ("terms",)

    def __init__(self, terms: list[Pair]):
        self.terms = terms


class _Product:
    __slots__ = ("numerators", "denominators")

    def __init__(self, numerators: list[int], denominators: list[int]):
        self.numerators = numerators
        self.denominators = denominators


def _balanced_product(values: list[int]) -> int:
    if len(values) <= 2:
        return values[0] * values[1] if len(values) == 2 else (values[0] if values else 1)
    while len(values) > 1:
        values = [values[i] * values[i + 1] if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0] if values else 1


def _add(a: Pair, b: Pair) -> Pair:
    if a[1] == b[1]:
        return a[0] + b[0], a[1]
    return a[0] * b[1] + b[0] * a[1], a[1] * b[1]


def materialise(node) -> Pair:
    if type(node) is _Product:
        if len(node.numerators) == 1:
            numerator, denominator = node.numerators[0], node.denominators[0]
            if denominator == 0:
                raise Undefined
            return (-numerator, -denominator) if denominator < 0 else (numerator, denominator)
        if 0 in node.denominators:
            raise Undefined
        numerator = _balanced_product(node.numerators)
        denominator = _balanced_product(node.denominators)
        return (-numerator, -denominator) if denominator < 0 else (numerator, denominator)
    if type(node) is _Sum:
        if len(node.terms) == 2:
            return _add(*node.terms)
        whole = sum(n for n, d in node.terms if d == 1)
        fractions = [t for t in node.terms if t[1] != 1]
        while len(fractions) > 1:
            fractions = [_add(fractions[i], fractions[i + 1]) if i + 1 < len(fractions) else fractions[i]
                         for i in range(0, len(fractions), 2)]
        if not fractions:
            return whole, 1
        numerator, denominator = fractions[0]
        return numerator + whole * denominator, denominator
    return node


def _merge(large: list, small: list) -> list:
    # Small into large: an element is copied O(log n) times however the parentheses nest.
    if len(large) < len(small):
        large, small = small, large
    large.extend(small)
    return large


def _apply(op: str, values: list, budget: Budget) -> None:
    if op == "neg" or op == "pos":
        if op == "neg":
            value = values[-1]
            if type(value) is _Product:
                value.numerators.append(-1)
            else:
                numerator, denominator = materialise(value)
                values[-1] = (-numerator, denominator)
        return
    right = values.pop()
    left = values[-1]
    if op == "+" or op == "-":
        if type(right) is _Sum and op == "+":
            terms = right.terms
        else:
            numerator, denominator = materialise(right)
            terms = [(-numerator if op == "-" else numerator, denominator)]
        if type(left) is _Sum:
            values[-1] = _Sum(_merge(left.terms, terms))
        else:
            values[-1] = _Sum(_merge([materialise(left)], terms))
    elif op == "*" or op == "/":
        if type(right) is _Product:
            numerators, denominators = right.numerators, right.denominators
        else:
            numerator, denominator = materialise(right)
            numerators, denominators = [numerator], [denominator]
        if op == "/":
            numerators, denominators = denominators, numerators
        if type(left) is not _Product:
            numerator, denominator = materialise(left)
            left = _Product([numerator], [denominator])
        values[-1] = _Product(_merge(left.numerators, numerators), _merge(left.denominators, denominators))
    else:
        values[-1] = _power(materialise(left), materialise(right), budget)


def _power(base: Pair, exponent: Pair, budget: Budget) -> Pair:
    if exponent[0] % exponent[1]:
        raise Unverifiable  # a non-integer power is irrational in general
    power = exponent[0] // exponent[1]
    numerator, denominator = base
    if numerator == 0:
        if power < 0:
            raise Undefined
        return (0 if power else 1), 1
    if abs(numerator) == denominator:
        return (-1 if numerator < 0 and power % 2 else 1), 1
    # log10(2) ~ 0.30103: the digits of the result, charged before computing it.
    bits = max(abs(numerator).bit_length(), denominator.bit_length())
    budget.charge(abs(power) * bits * 30103 // 100000)
    numerator, denominator = numerator ** abs(power), denominator ** abs(power)
    if power < 0:
        numerator, denominator = denominator, numerator
    return (-numerator, -denominator) if denominator < 0 else (numerator, denominator)


_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "pos": 3, "^": 4}


def _push(op: str, values: list, operators: list, budget: Budget) -> None:
    precedence = _PRECEDENCE[op]
    while operators:
        top = operators[-1]
        if top == "(":
            break
        top_precedence = _PRECEDENCE[top]
        if top_precedence > precedence or (top_precedence == precedence and op != "^"):
            operators.pop()
            _apply(top, values, budget)
        else:
            break
    operators.append(op)


def _evaluate_flat(kinds: list[str], texts: list[str], start: int, stop: int, budget: Budget):
    """``number (op number)*`` with ``+ - * /`` only (most claims): a sum of products, directly."""
    for index in range(start + 1, stop, 2):
        if kinds[index] != "op" or kinds[index + 1] != "num" or texts[index] == "^":
            return None
    numerator, denominator = number_pair(texts[start], budget)
    terms: list[Pair] = []
    numerators, denominators = [numerator], [denominator]
    for index in range(start + 1, stop, 2):
        op = texts[index]
        numerator, denominator = number_pair(texts[index + 1], budget)
        if op == "*":
            numerators.append(numerator)
            denominators.append(denominator)
        elif op == "/":
            numerators.append(denominator)
            denominators.append(numerator)
        else:
            terms.append(materialise(_Product(numerators, denominators)))
            numerators, denominators = [-numerator if op == "-" else numerator], [denominator]
    value = materialise(_Product(numerators, denominators))
    if terms:
        terms.append(value)
        value = materialise(_Sum(terms))
    return value, (stop - start) // 2


def evaluate(tokens: Tokens, start: int, stop: int, budget: Budget) -> tuple[Pair, int]:
    """The exact value of the expression ``tokens[start:stop]`` and its number of binary operators.

    Shunting-yard (iterative: no recursion limit on nesting). Raises :class:`Undefined`,
    or :class:`Unverifiable` over budget or on a range that is not an expression.
    """
    kinds, texts = tokens.kinds, tokens.texts
    if (stop - start) % 2 and kinds[start] == "num":
        flat = _evaluate_flat(kinds, texts, start, stop, budget)
        if flat is not None:
            return flat
    values: list = []
    operators: list[str] = []
    binary = 0
    expect_operand = True
    for index in range(start, stop):
        kind = kinds[index]
        if kind == "num" and expect_operand:
            values.append(number_pair(texts[index], budget))
            expect_operand = False
        elif kind == "op":
            op = texts[index]
            if not expect_operand:
                _push(op, values, operators, budget)
                binary += 1
                expect_operand = True
            elif op == "-" or op == "+":
                operators.append("neg" if op == "-" else "pos")
            else:
                raise Unverifiable
        elif kind == "lp":
            if not expect_operand:  # implicit multiplication: 2(3 + 4)
                _push("*", values, operators, budget)
                binary += 1
            operators.append("(")
            expect_operand = True
        elif kind == "rp" and not expect_operand:
            while operators and operators[-1] != "(":
                _apply(operators.pop(), values, budget)
            if not operators:
                raise Unverifiable
            operators.pop()
        else:
            raise Unverifiable
    if expect_operand:
        raise Unverifiable
    while operators:
        op = operators.pop()
        if op == "(":
            raise Unverifiable
        _apply(op, values, budget)
    if len(values) != 1:
        raise Unverifiable
    return materialise(values[0]), binary


# Finding claims ---------------------------------------------------------------------------

_ARITHMETIC = frozenset({"num", "op", "lp", "rp", "eq"})
# Every character a number, operator, parenthesis or "=" token can hold: a claim never
# crosses a character outside this class, so only stretches of it holding "=" are tokenized.
_REGION = re.compile(r"[0-9.,$€£¥₹\\()+\-*/×÷·⋅∗^=eEx\s]++")


def sign_glued(text: str, tokens: Tokens, index: int, stop: int) -> bool:
    """Whether the "-" at ``index`` is a sign written against its number ("-3", not "x-3")."""
    end = tokens.ends[index]
    if index + 1 >= stop or tokens.starts[index + 1] != end:
        return False
    begin = tokens.starts[index]
    return begin == 0 or not (text[begin - 1].isalnum() or text[begin - 1] in ").")


def expression_start(text: str, tokens: Tokens, start: int, stop: int, after_equals: bool) -> int | None:
    """The first index of the longest suffix of ``tokens[start:stop]`` that is an expression.

    ``None`` when no suffix is (the part ends with an operator or is empty). One pass with
    a stack of unmatched "(": an invalid token restarts the suffix after it, and unmatched
    "(" left at the end cut the suffix after the last of them. A leading "-" is a sign
    right after "=" or when written against its number.
    """
    kinds, texts = tokens.kinds, tokens.texts
    begin = start
    expect_operand = True
    opens: list[int] = []
    for index in range(start, stop):
        kind = kinds[index]
        if expect_operand:
            if kind == "num":
                expect_operand = False
            elif kind == "lp":
                opens.append(index)
            elif kind == "op" and index > begin and (texts[index] == "-" or texts[index] == "+"):
                pass  # unary, after an operator or "("
            elif kind == "op" and texts[index] == "-" and (
                    (after_equals and begin == start) or sign_glued(text, tokens, index, stop)):
                pass  # a leading sign
            else:
                begin, opens = index + 1, []
        elif kind == "op":
            expect_operand = True
        elif kind == "lp":
            opens.append(index)  # implicit multiplication
            expect_operand = True
        elif kind == "rp":
            if opens:
                opens.pop()
            else:
                begin, opens, expect_operand = index + 1, [], True
        else:  # a number right after an operand: a new expression starts here
            begin, opens = index, []
    if expect_operand:
        return None
    return opens[-1] + 1 if opens else begin


class RawClaim(NamedTuple):
    start: int  # character span of the claim in the text
    end: int
    operands: list[str]  # the number tokens of the left side
    value: Pair | None  # the left side's exact value; None when undefined
    claimed: Pair


def _first_number(tokens: Tokens, start: int, stop: int, budget: Budget):
    """The signed number (or glued fraction ``p/q``) opening ``tokens[start:stop]``.

    Returns ``(pair or None when p/0, end character, index after it)`` or ``None``.
    """
    kinds, starts, ends, texts = tokens
    index, negative = start, False
    if index < stop and kinds[index] == "op" and texts[index] == "-":
        index, negative = index + 1, True
    if index >= stop or kinds[index] != "num":
        return None
    pair: Pair | None
    if (index + 2 < stop and texts[index + 1] == "/" and kinds[index + 1] == "op" and kinds[index + 2] == "num"
            and starts[index + 1] == ends[index] and starts[index + 2] == ends[index + 1]
            and literal_of(texts[index]).plain and literal_of(texts[index + 2]).plain
            and not (index + 3 < len(kinds) and texts[index + 3] == "/" and starts[index + 3] == ends[index + 2])):
        denominator = int_from_digits(texts[index + 2])
        pair = (int_from_digits(texts[index]), denominator) if denominator else None
        index += 2
    else:
        pair = number_pair(texts[index], budget)
    if negative and pair is not None:
        pair = (-pair[0], pair[1])
    return pair, ends[index], index + 1


def _percent_at(tokens: Tokens, index: int) -> bool:
    return index < len(tokens.kinds) and tokens.texts[index] == "%"


def _claim(text: str, tokens: Tokens, left: int, at: int, right_stop: int, after_equals: bool):
    begin = expression_start(text, tokens, left, at, after_equals)
    if begin is None:
        return None
    budget = Budget()
    try:
        try:
            value, binary = evaluate(tokens, begin, at, budget)
        except Undefined:
            value, binary = None, 1
        if not binary:
            return None
        first = _first_number(tokens, at + 1, right_stop, budget)
        if first is not None and _percent_at(tokens, first[2]):
            return None  # "0.2 * 100 = 20%": is the % part of the claim? ambiguous
        if first is not None and first[0] is not None and value is not None and same(value, first[0]):
            claimed, end = first[0], first[1]
        else:
            whole = None
            # The whole right side, when it is more than that first number ("3 + 4 = 5 + 2").
            if (right_stop > (at + 1 if first is None else first[2]) and not _percent_at(tokens, right_stop)
                    and expression_start(text, tokens, at + 1, right_stop, True) == at + 1):
                try:
                    whole = evaluate(tokens, at + 1, right_stop, budget)[0]
                except (Undefined, Unverifiable):
                    pass
            if whole is not None and (value is None or not same(value, whole)) and first is not None \
                    and first[0] is not None:
                whole = None  # wrong either way: report the number right after "="
            if whole is not None:
                claimed, end = whole, tokens.ends[right_stop - 1]
            elif first is not None and first[0] is not None:
                claimed, end = first[0], first[1]
            else:
                return None
    except Unverifiable:
        return None
    kinds, texts = tokens.kinds, tokens.texts
    operands = [texts[k] for k in range(begin, at) if kinds[k] == "num"]
    return RawClaim(tokens.starts[begin], end, operands, value, claimed)


def _claims_in(text: str, tokens: Tokens) -> Iterator[RawClaim]:
    kinds = tokens.kinds
    index, count = 0, len(kinds)
    while index < count:
        if kinds[index] not in _ARITHMETIC:
            index += 1
            continue
        stop = index
        while stop < count and kinds[stop] in _ARITHMETIC:
            stop += 1
        equals = [k for k in range(index, stop) if kinds[k] == "eq"]
        bounds = [index - 1, *equals, stop]
        for part, at in enumerate(equals, start=1):
            claim = _claim(text, tokens, bounds[part - 1] + 1, at, bounds[part + 1], part > 1)
            if claim is not None:
                yield claim
        index = stop


def find_raw_claims(text: str) -> Iterator[RawClaim]:
    """Every checkable claim in normalised ``text`` (see the module docstring), in order."""
    if "=" not in text:
        return
    for region in _REGION.finditer(text):
        start, stop = region.span()
        if text.find("=", start, stop) != -1:
            yield from _claims_in(text, tokenize(text, start, stop))

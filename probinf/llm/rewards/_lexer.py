r"""Text normalisation, tokens and exact number literals for the arithmetic verifier.

Everything here runs in time linear in the length of the text: the tokenizer is one
left-to-right pass of a regular expression whose quantifiers are all possessive (no
backtracking, so each position is examined a bounded number of times), and big numbers
are converted between digits and integers by divide and conquer instead of Python's
quadratic (and, beyond 4,300 digits, refused) ``int(str)`` / ``str(int)``.

Number literal grammar (after :func:`normalise_text`)::

    literal  := [currency] mantissa [exponent]
    currency := ["\"] ("$" | "€" | "£" | "¥" | "₹")
    mantissa := grouped ["." digits] | digits ["." digits] | "." digits
    grouped  := 1-3 digits ("," 3 digits)+          each group not followed by a digit
    exponent := ("e" | "E") ["+" | "-"] digits       not followed by a letter ("3eggs" is 3)

A leading-dot literal (``.5``) needs a non-word, non-dot character before the dot. Signs
are not part of a literal: the claim parser reads them as unary minus.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import unicodedata
from typing import NamedTuple

# Text folding ---------------------------------------------------------------------------

# Full-width ASCII forms (U+FF01-FF5E) are folded to ASCII, so CJK-style "１２＋７＝１９"
# reads like "12+7=19"; plus the minus sign and the Arabic decimal / thousands separators.
_FOLD_EXTRA = {"\u2212": "-", "\u066b": ".", "\u066c": ","}
_FOLDABLE = re.compile(r"(?![0-9])\d|[\uff01-\uff5e\u2212\u066b\u066c]")


def normalise_text(text: str) -> str:
    """``text`` with every Unicode decimal digit (category Nd) replaced by its ASCII digit.

    Arabic-Indic ``٣``, extended Arabic-Indic ``۳``, Devanagari ``३``, full-width ``３``
    and every other Nd digit become ``3`` (:func:`unicodedata.decimal`; superscripts such
    as ``²`` are not decimal digits and stay). Full-width ASCII punctuation and letters,
    the minus sign U+2212 and the Arabic decimal / thousands separators are folded too.
    Every character maps to exactly one character, so positions are preserved.
    """
    if text.isascii():
        return text
    table = {}
    for char in set(_FOLDABLE.findall(text)):
        digit = unicodedata.decimal(char, None)
        if digit is not None:
            table[ord(char)] = str(digit)
        elif "\uff01" <= char <= "\uff5e":
            table[ord(char)] = chr(ord(char) - 0xFEE0)
        else:
            table[ord(char)] = _FOLD_EXTRA.get(char, char)
    return text.translate(table)


# Tokens ---------------------------------------------------------------------------------

_NUMBER_PATTERN = r"""
    (?P<currency>\\?[$€£¥₹])?+
    (?:
        (?P<int>[0-9]{1,3}+(?:,[0-9]{3}(?![0-9]))++|[0-9]++)(?:\.(?P<frac>[0-9]++))?+
      | (?<![\w.])\.(?P<lead>[0-9]++)
    )
    (?:[eE](?P<exp>[+-]?+[0-9]++)(?![^\W\d_]))?+
"""
NUMBER = re.compile(_NUMBER_PATTERN, re.VERBOSE)
PLAIN_INT = re.compile(r"[0-9]++")
_TOKEN = re.compile(
    rf"(?P<num>{_NUMBER_PATTERN})"
    r"""|(?P<op>\*\*|[-+*/×÷·⋅∗^])
        |(?P<lp>\()|(?P<rp>\))
        |(?P<eq>==?)
        |(?P<word>[^\W\d_]++)
        |(?P<other>\S)""",
    re.VERBOSE,
)
_OPERATOR = {"**": "^", "×": "*", "÷": "/", "·": "*", "⋅": "*", "∗": "*"}


class Tokens(NamedTuple):
    """Tokens as parallel lists (kind, start, end, text), cheap to build and to keep.

    ``kind`` is ``num``, ``op``, ``lp``, ``rp``, ``eq``, ``word`` or ``other``; ``text`` is
    the matched text, except for ``op`` where it is the operator symbol ``+ - * / ^``.
    """

    kinds: list[str]
    starts: list[int]
    ends: list[int]
    texts: list[str]


def tokenize(text: str, start: int = 0, stop: int | None = None) -> Tokens:
    """The tokens of normalised ``text`` that start in ``[start, stop)``, plus the next one.

    Whitespace separates tokens and is not one. A standalone ``x`` (whitespace on both
    sides) is the multiplication operator, as are ``× · ⋅ ∗``; ``÷`` is division and
    ``**`` is ``^``. Lookarounds see the whole text, so tokenizing a stretch that starts
    and ends at token boundaries gives exactly the tokens the whole text has there.
    """
    stop = len(text) if stop is None else stop
    kinds, starts, ends, texts = [], [], [], []
    add_kind, add_start, add_end, add_text = kinds.append, starts.append, ends.append, texts.append
    for match in _TOKEN.finditer(text, start):
        kind = match.lastgroup
        token = match.group()
        begin = match.start()
        add_end(begin + len(token))
        if kind == "op":
            token = _OPERATOR.get(token, token)
        elif kind == "word" and token == "x" and 0 < begin < len(text) - 1 \
                and text[begin - 1].isspace() and text[begin + 1].isspace():
            kind, token = "op", "*"
        add_kind(kind)
        add_start(begin)
        add_text(token)
        if begin >= stop:
            break
    return Tokens(kinds, starts, ends, texts)


# Exact integers from and to digit strings ------------------------------------------------


def _chunk() -> int:
    # Stay below the interpreter's int/str digit limit, whatever the user set it to.
    limit = sys.get_int_max_str_digits()
    return min(limit, 4000) if limit else 4000


@functools.lru_cache(maxsize=128)
def pow10(k: int) -> int:
    return 10**k


def int_from_digits(digits: str) -> int:
    """``int(digits)`` for an ASCII digit string of any length, by divide and conquer."""
    chunk = _chunk()
    if len(digits) <= chunk:
        return int(digits) if digits else 0
    half = len(digits) // 2
    return int_from_digits(digits[:-half]) * pow10(half) + int_from_digits(digits[-half:])


def int_to_digits(value: int) -> str:
    """``str(value)`` for a non-negative integer of any size, by divide and conquer."""
    chunk = _chunk()
    if value.bit_length() <= 3 * chunk:  # at most 0.91 * chunk decimal digits
        return str(value)
    half = int(value.bit_length() * math.log10(2)) // 2
    high, low = divmod(value, pow10(half))
    return int_to_digits(high) + int_to_digits(low).zfill(half)


def signed_int(text: str) -> int:
    sign = -1 if text.startswith("-") else 1
    return sign * int_from_digits(text.lstrip("+-"))


# Literals -------------------------------------------------------------------------------


class Literal(NamedTuple):
    """An unsigned number as written: ``int(digits) * 10**exponent``, exactly.

    ``digits`` has no leading or trailing zeros (``""`` is zero); ``unwritten`` counts the
    zeros implied by scientific notation, the digits a reader must supply (the cost of
    writing the value out).
    """

    digits: str
    exponent: int
    unwritten: int
    plain: bool  # only digits were written (no currency, grouping, decimals or exponent)
    exponent_text: str | None = None  # str(exponent), kept when the exponent was written very long


def _shift(written: str, delta: int) -> str:
    """``str(int(written) + delta)`` for a long signed digit string and a small ``delta``, in linear time.

    (``str(int)`` is quadratic in CPython 3.11; only the last 24 digits take the change,
    plus one carry or borrow that runs through trailing 9s or 0s.)
    """
    negative = written.startswith("-")
    digits = written.lstrip("+-").lstrip("0")
    if len(digits) <= 40:  # short after all ("1e+000...05"): plain integers
        return str((-1 if negative else 1) * int(digits or "0") + delta)
    step = -delta if negative else delta
    head, tail = digits[:-24], int(digits[-24:]) + step
    if tail >= 10**24:
        nines = len(head) - len(head.rstrip("9"))
        body = head[:len(head) - nines]
        head = (body[:-1] + str(int(body[-1]) + 1) if body else "1") + "0" * nines
        tail -= 10**24
    elif tail < 0:  # head > 0: the magnitude is far above 10**24 > |delta|
        zeros = len(head) - len(head.rstrip("0"))
        body = head[:len(head) - zeros]
        head = (body[:-1] + str(int(body[-1]) - 1)).lstrip("0") + "9" * zeros
        tail += 10**24
    return ("-" if negative else "") + (head + str(tail).zfill(24)).lstrip("0")


def literal(match: re.Match) -> Literal:
    """The exact value of a :data:`NUMBER` match."""
    whole = (match.group("int") or "").replace(",", "")
    fraction = match.group("frac") or match.group("lead") or ""
    written = match.group("exp")
    written_exponent = signed_int(written) if written else 0
    plain = match.group("currency") is None and whole == match.group("int") and not fraction and not written
    digits = (whole + fraction).lstrip("0")
    significant = digits.rstrip("0")
    if not significant:
        return Literal("", 0, 0, plain)
    shift = len(digits) - len(significant) - len(fraction)
    exponent_text = _shift(written, shift) if written and len(written) > 40 else None
    return Literal(significant, written_exponent + shift, abs(written_exponent), plain, exponent_text)


@functools.lru_cache(maxsize=4096)
def _short_literal(text: str) -> Literal:
    return literal(NUMBER.match(text))


def literal_of(text: str) -> Literal:
    """:func:`literal` of a number token's text (short ones are cached: texts repeat)."""
    if text.isdigit():  # the common case, without the regex: only ASCII digits reach here
        digits = text.lstrip("0")
        significant = digits.rstrip("0")
        return Literal(significant, len(digits) - len(significant), 0, True)
    return _short_literal(text) if len(text) <= 32 else literal(NUMBER.match(text))


def canonical_decimal(negative: bool, digits: str, exponent: int, max_padding: int,
                      exponent_text: str | None = None) -> str:
    """The canonical string of ``(-1)**negative * int(digits) * 10**exponent``.

    ``digits`` has no leading or trailing zeros. Plain decimal notation (``"1200"``,
    ``"0.05"``) unless that would pad more than ``max_padding`` zeros, then
    ``<digits>e<exponent>`` with an integer mantissa (``"15e2999"``); ``exponent_text``,
    when given, is ``str(exponent)`` computed already.
    """
    if not digits:
        return "0"
    sign = "-" if negative else ""
    if exponent >= 0:
        if exponent <= max_padding:
            return sign + digits + "0" * exponent
    elif -exponent < len(digits):
        point = len(digits) + exponent
        return sign + digits[:point] + "." + digits[point:]
    elif -exponent - len(digits) <= max_padding:
        return sign + "0." + "0" * (-exponent - len(digits)) + digits
    if exponent_text is None:
        exponent_text = ("-" if exponent < 0 else "") + int_to_digits(abs(exponent))
    return f"{sign}{digits}e{exponent_text}"

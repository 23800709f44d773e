"""A seeded generator of multi-step arithmetic word problems with known answers.

A problem starts a person with a quantity and applies ``difficulty`` operations to it
(buying, giving away, multiplying, sharing), then asks for the final quantity. Every
intermediate quantity is a non-negative integer, divisions are exact, and the answer is
computed exactly, so a solution can be graded without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probinf.llm.base import seeds_from_key

__all__ = ["ArithmeticProblem", "make_problems", "SOLVE_INSTRUCTIONS"]

SOLVE_INSTRUCTIONS = (
    "Solve the problem step by step. Write each calculation as an equation with its "
    "result, then finish with: The answer is <number>."
)

_NAMES = ["Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lily", "Ben", "Sara", "Ravi", "Emma", "Tom"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "coins", "shells", "cards", "toys"]
_ADD = ["{name} buys {b} more {item}.", "{name} finds {b} more {item}.", "A friend gives {name} {b} more {item}."]
_SUB = ["{name} gives {b} {item} to a friend.", "{name} loses {b} {item}.", "{name} sells {b} {item}."]
_MUL = ["Then the number of {item} {name} has becomes {b} times as large."]
_DIV = ["{name} shares the {item} equally among {b} bags and keeps one bag."]
_SINGLE = {
    "+": "{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?",
    "-": "{name} has {a} {item} and gives away {b}. How many {item} does {name} have left?",
    "*": "{name} has {a} boxes with {b} {item} in each box. How many {item} does {name} have in total?",
    "/": "{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?",
}


@dataclass(frozen=True)
class ArithmeticProblem:
    """One word problem.

    Attributes:
        question: the text shown to the model.
        answer: the exact answer (an integer).
        numbers: the numbers in the question, in order.
        operations: the operations applied, in order (``"+"``, ``"-"``, ``"*"``, ``"/"``).
    """

    question: str
    answer: int
    numbers: tuple[int, ...]
    operations: tuple[str, ...]


def _one(rng: np.random.Generator, difficulty: int, max_operand: int, operations) -> ArithmeticProblem:
    name = str(rng.choice(_NAMES))
    item = str(rng.choice(_ITEMS))
    if difficulty == 1:
        op = str(rng.choice(operations))
        if op == "/":
            b = int(rng.integers(2, min(max_operand, 10) + 1))
            answer = int(rng.integers(1, max(2, max_operand // 2) + 1))
            a = answer * b
        else:
            a = int(rng.integers(1, max_operand + 1))
            b = int(rng.integers(1, max_operand + 1))
            if op == "-" and b > a:
                a, b = b, a
            if op == "*":
                a = int(rng.integers(2, min(max_operand, 12) + 1))
                b = int(rng.integers(2, min(max_operand, 12) + 1))
            answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        question = _SINGLE[op].format(name=name, item=item, a=a, b=b)
        return ArithmeticProblem(question, answer, (a, b), (op,))

    value = int(rng.integers(2, max_operand + 1))
    sentences = [f"{name} has {value} {item}."]
    numbers, ops = [value], []
    for _ in range(difficulty):
        op = str(rng.choice(operations))
        if op == "-" and value <= 1:
            op = "+"
        if op == "/":
            divisors = [d for d in range(2, min(max_operand, 10) + 1) if value % d == 0]
            if not divisors:
                op = "+"
        if op == "+":
            b = int(rng.integers(1, max_operand + 1))
            value += b
            template = str(rng.choice(_ADD))
        elif op == "-":
            b = int(rng.integers(1, value))
            value -= b
            template = str(rng.choice(_SUB))
        elif op == "*":
            b = int(rng.integers(2, 4))
            value *= b
            template = str(rng.choice(_MUL))
        else:
            b = int(rng.choice(divisors))
            value //= b
            template = str(rng.choice(_DIV))
        sentences.append(template.format(name=name, item=item, b=b))
        numbers.append(b)
        ops.append(op)
    sentences.append(f"How many {item} does {name} have now?")
    return ArithmeticProblem(" ".join(sentences), value, tuple(numbers), tuple(ops))


def make_problems(
    key, n: int, difficulty: int = 1, *, max_operand: int = 20,
    operations: tuple[str, ...] = ("+", "-", "*"),
) -> list[ArithmeticProblem]:
    """``n`` seeded arithmetic word problems.

    Args:
        key: JAX PRNG key (the same key gives the same problems).
        n: how many problems.
        difficulty: the number of operations in each problem (the knob: SmolLM2-135M
            solves about a quarter of one-operation problems greedily and almost none
            with three).
        max_operand: the largest number added, subtracted or used as a start value.
        operations: which operations may appear, among ``"+"``, ``"-"``, ``"*"``, ``"/"``.

    Raises:
        ValueError: on ``n < 1``, ``difficulty < 1``, ``max_operand < 2`` or an unknown operation.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, np.integer)) or difficulty < 1:
        raise ValueError(f"`difficulty` must be a positive int (the number of operations), got {difficulty!r}")
    if not isinstance(max_operand, (int, np.integer)) or max_operand < 2:
        raise ValueError(f"`max_operand` must be an int >= 2, got {max_operand!r}")
    operations = tuple(operations)
    if not operations or any(op not in _SINGLE for op in operations):
        raise ValueError(f"`operations` must be a non-empty subset of ('+', '-', '*', '/'), got {operations!r}")
    seeds = seeds_from_key(key, int(n))
    return [_one(np.random.default_rng(s), int(difficulty), int(max_operand), operations) for s in seeds]

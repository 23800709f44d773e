"""The problem generator: answers recomputed independently from the recorded operations."""

import jax
import pytest

from probinf.llm import make_problems


def replay(problem):
    value = problem.numbers[0]
    for op, b in zip(problem.operations, problem.numbers[1:], strict=True):
        if op == "+":
            value += b
        elif op == "-":
            value -= b
        elif op == "*":
            value *= b
        else:
            assert value % b == 0, "divisions must be exact"
            value //= b
        assert value >= 0, "intermediate quantities must stay non-negative"
    return value


@pytest.mark.parametrize("difficulty", [1, 2, 3])
def test_answers_and_difficulty(difficulty):
    problems = make_problems(jax.random.key(0), 60, difficulty, operations=("+", "-", "*", "/"))
    for p in problems:
        assert len(p.operations) == difficulty
        assert replay(p) == p.answer
        for number in p.numbers:
            assert str(number) in p.question
    assert len({p.question for p in problems}) > 50


def test_seeded():
    a = make_problems(jax.random.key(3), 5)
    assert a == make_problems(jax.random.key(3), 5)
    assert a != make_problems(jax.random.key(4), 5)


def test_operations_restrict_what_appears():
    problems = make_problems(jax.random.key(1), 30, 2, operations=("+",))
    assert all(set(p.operations) == {"+"} for p in problems)


@pytest.mark.parametrize("kwargs, match", [
    ({"n": 0}, "n"),
    ({"n": 2, "difficulty": 0}, "difficulty"),
    ({"n": 2, "max_operand": 1}, "max_operand"),
    ({"n": 2, "operations": ("^",)}, "operations"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_problems(jax.random.key(0), **kwargs)

"""The one timer of the benchmarks: contenders alternated call by call.

Timing each contender in its own block lets a change in machine load (other jobs on a
shared machine, thermal state, a background compile) fall on one contender only; the
same script then reports 0.5x on one run and 1.6x on the next. :func:`compare` calls the
contenders round-robin instead, one call of each per round, rotating the order every
round so that no contender always runs first (or always right after another), and
excludes the warm-up calls (compilation, caches). Every round time is kept, with the
median, minimum, maximum and spread, and the load average at the start and the end, so a
reader can judge how noisy the figures are.

Standard library only (``jax`` is imported only to wait for asynchronous results), so
subprocess workers of other environments can import it too.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping

__all__ = ["MIN_ROUNDS", "compare", "ratio_key"]

MIN_ROUNDS = 7


def ratio_key(numerator: str, denominator: str) -> str:
    """The key of a ratio of medians in :func:`compare`'s ``ratios``: ``"a/b"``."""
    return f"{numerator}/{denominator}"


def _wait(result, block_until_ready: bool):
    if block_until_ready and result is not None:
        import jax

        jax.block_until_ready(result)
    return result


def _summary(seconds: list[float]) -> dict:
    median = statistics.median(seconds)
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    return {
        "median_s": median,
        "min_s": min(seconds),
        "max_s": max(seconds),
        "iqr_s": q3 - q1,
        "relative_iqr": (q3 - q1) / median if median > 0 else math.nan,
        "relative_range": (max(seconds) - min(seconds)) / median if median > 0 else math.nan,
        "times_s": list(seconds),
    }


def compare(contenders: Mapping[str, Callable[[], object]], *, rounds: int = MIN_ROUNDS,
            warmup: int = 1, block_until_ready: bool = True,
            ratios: Iterable[tuple[str, str]] | None = None) -> dict:
    """Time ``contenders`` round-robin, call by call; a JSON-serialisable summary.

    Round ``r`` (of ``warmup + rounds``) calls every contender once, in the order of
    ``contenders`` rotated by ``r`` places; the first ``warmup`` rounds are not timed
    into the figures. A contender is a callable of no argument (close over keys or
    count calls to vary inputs); with ``block_until_ready`` its result is waited for
    with ``jax.block_until_ready`` before the clock stops.

    Args:
        contenders: name -> callable; at least one.
        rounds: timed rounds, at least :data:`MIN_ROUNDS` (7): medians of fewer calls
            move too much with load.
        warmup: untimed rounds first (compilation, caches); at least 0.
        block_until_ready: wait for asynchronous JAX results before stopping the clock.
        ratios: ``(a, b)`` pairs whose ratio of medians ``median_a / median_b`` (and of
            minima) is reported under ``"a/b"``; default: every other contender over the
            first one.

    Returns:
        ``{"method", "rounds", "warmup", "order", "load_average_at_start",
        "load_average_at_end", "wall_s", "contenders": {name: {"median_s", "min_s",
        "max_s", "iqr_s", "relative_iqr", "relative_range", "times_s"}}, "ratios",
        "ratios_of_min"}``; ``order`` lists the call order of every timed round.

    Raises:
        ValueError: on no contenders, ``rounds`` below 7, a negative ``warmup``, a
            non-callable contender, or a ratio naming an unknown contender.
    """
    if not isinstance(contenders, Mapping) or not contenders:
        raise ValueError(f"contenders: expected a non-empty dict name -> callable, got {contenders!r}")
    for name, fn in contenders.items():
        if not isinstance(name, str) or not callable(fn):
            raise ValueError(f"contenders: expected str -> callable, got {name!r} -> {type(fn).__name__}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < MIN_ROUNDS:
        raise ValueError(f"rounds: expected an int >= {MIN_ROUNDS}, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
    names = list(contenders)
    pairs = ([(name, names[0]) for name in names[1:]] if ratios is None
             else [tuple(pair) for pair in ratios])
    for pair in pairs:
        if len(pair) != 2 or any(name not in contenders for name in pair):
            raise ValueError(f"ratios: expected pairs of contender names from {names}, got {pair!r}")

    load_start = list(os.getloadavg())
    started = time.perf_counter()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    orders = []
    for index in range(warmup + rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        for name in order:
            begin = time.perf_counter()
            _wait(contenders[name](), block_until_ready)
            elapsed = time.perf_counter() - begin
            if index >= warmup:
                seconds[name].append(elapsed)
        if index >= warmup:
            orders.append(order)
    wall = time.perf_counter() - started

    summaries = {name: _summary(seconds[name]) for name in names}
    return {
        "method": f"round-robin: {warmup} untimed warm-up round(s), then {rounds} rounds of one "
                  "call per contender, the order rotated each round; wall-clock seconds per call",
        "rounds": rounds,
        "warmup": warmup,
        "order": orders,
        "load_average_at_start": load_start,
        "load_average_at_end": list(os.getloadavg()),
        "wall_s": wall,
        "contenders": summaries,
        "ratios": {ratio_key(a, b): summaries[a]["median_s"] / summaries[b]["median_s"]
                   for a, b in pairs},
        "ratios_of_min": {ratio_key(a, b): summaries[a]["min_s"] / summaries[b]["min_s"]
                          for a, b in pairs},
    }

"""Measure what the decoding caps of `probinf.llm.DecodeConfig` must cover, on the embedded model.

SmolLM2-135M-Instruct (llama.cpp) writes complete solutions to development problems —
one-operation arithmetic word problems drawn with a key of their own, none of them a
problem of the benchmark (``make_problems(jax.random.key(0), ...)`` in
``benchmarks/llm_bench.py``) — greedily and by sampling with the library's token sampling
(temperature 0.8, top-k 40, top-p 0.95, min-p 0.05), up to the end-of-sequence token or
``MAX_TOKENS``. Each solution is generated once, as one token sequence; it is then cut
into steps offline by the library's own step rule (`probinf.llm.backends._decode`) for
each candidate delimiter. Token-faithful decoding makes that exact: where a run cuts
steps does not change the tokens the model emits. Measured, per delimiter and system
prompt:

* tokens per step (the per-step token cap must cover them);
* steps until the solution states an answer (`probinf.llm.rewards.extract_answer`), or
  until it ends when it never does (the step cap must cover them);
* tokens until then.

The caps of `DecodeConfig` are then the smallest round numbers that cover every 95th
percentile measured with the chosen delimiter, over both system prompts
(:func:`choose_caps`): the per-step token cap rounded up to a multiple of 8.

Run: ``python benchmarks/llm_defaults.py [--problems 30] [--samples 2]``; writes
``benchmarks/results/llm_defaults.json`` (a few minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import time

import jax
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "llm_defaults.json"
DEV_SEED = 20_250_518  # development problems; the benchmark's test problems use seed 0
BENCH_SEED = 0
MAX_TOKENS = 256
DELIMITERS = ("\n", "\n\n")
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


def development_problems(n: int):
    """``n`` one-operation problems from the development key, none equal to a test problem."""
    from probinf.llm.problems import make_problems

    test = {p.question for p in make_problems(jax.random.key(BENCH_SEED), 1000)}
    problems = [p for p in make_problems(jax.random.key(DEV_SEED), 3 * n) if p.question not in test]
    return problems[:n], len(test)


def segment(tokens: list[int], token_bytes, delimiter: str | None, vocab_size: int) -> list[tuple[int, str]]:
    """Cut an emitted token sequence into steps by the library's own rule (`decode_step`
    replaying the ids greedily); returns ``(number of tokens, text)`` per step."""
    from probinf.llm.backends._decode import ByteText, decode_step
    from probinf.llm.base import SamplingParams

    params = SamplingParams(temperature=0.0, max_step_tokens=len(tokens) + 1, delimiter=delimiter)
    end = vocab_size  # a stand-in id for "no more tokens"
    steps, start = [], 0
    while start < len(tokens):
        position = {"i": start}

        def next_logits(position=position):
            out = np.zeros(vocab_size + 1)
            out[tokens[position["i"]] if position["i"] < len(tokens) else end] = 1.0
            return out

        def append(_, position=position):
            position["i"] += 1

        step = decode_step(next_logits, append, ByteText(token_bytes, tokens[:start]), lambda t: t == end,
                           np.random.default_rng(0), params, room=10**9)
        steps.append((step.num_tokens, step.text))
        start += step.num_tokens
    return steps


def percentiles(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0}
    return {"count": int(values.size), "mean": float(values.mean()),
            **{f"p{q}": float(np.percentile(values, q)) for q in (50, 90, 95, 99)}, "max": float(values.max())}


def choose_caps(summary: dict, delimiter: str = "\n") -> dict:
    """Caps covering the 95th percentiles measured with ``delimiter`` (both system prompts)."""
    rows = [row for name, row in summary.items() if name.endswith(f"delimiter {delimiter!r}")]
    tokens = max(row["tokens_per_step"]["p95"] for row in rows)
    steps = max(row[key]["p95"] for row in rows for key in ("steps_until_answer", "steps_until_answer_or_end")
                if row[key].get("count"))
    medians = {name: row["steps_until_answer_or_end"].get("p50") for name, row in summary.items()}
    return {"delimiter": delimiter, "max_step_tokens": int(8 * math.ceil(tokens / 8)), "max_steps": int(math.ceil(steps)),
            "median_steps_until_answer_or_end": medians,
            "delimiter_reason": "a particle filter resamples between steps; with a blank-line delimiter the median "
                                "solution is one or two steps, with a newline two to three",
            "rule": "smallest integers covering every 95th percentile of tokens per step and of steps until "
                    "the answer (or the end) with this delimiter; the token cap rounded up to a multiple of 8"}


def measure(num_problems: int, samples: int) -> dict:
    from probinf.llm import LlamaCppModel, SamplingParams, TokenText
    from probinf.llm.problems import SOLVE_INSTRUCTIONS
    from probinf.llm.rewards import extract_answer

    model = LlamaCppModel.smollm2()
    problems, num_test = development_problems(num_problems)
    systems = {"model_default": None, "solve_instructions": SOLVE_INSTRUCTIONS}
    solutions = []
    started = time.perf_counter()
    for system_name, system in systems.items():
        for index, problem in enumerate(problems):
            prompt = model.encode_prompt(model.format_prompt(problem.question, system))
            for draw in range(1 + samples):
                params = SamplingParams(**{**SAMPLING, "temperature": 0.0 if draw == 0 else SAMPLING["temperature"]},
                                        max_step_tokens=MAX_TOKENS, delimiter=None)
                step = model.extend([1000 * index + draw], prompt, [TokenText()], params)[0]
                solutions.append({"system": system_name, "problem": index, "greedy": draw == 0,
                                  "tokens": list(step.tokens), "ended": step.finished and not step.truncated})
    seconds = time.perf_counter() - started

    summary = {}
    for system_name in systems:
        for delimiter in DELIMITERS:
            step_tokens, steps_to_answer, tokens_to_answer, steps_to_end, stated = [], [], [], [], 0
            ended = [s for s in solutions if s["system"] == system_name and s["ended"]]
            for s in (s for s in solutions if s["system"] == system_name):
                steps = segment(s["tokens"], model._piece, delimiter, model.llama.n_vocab())
                if not s["ended"]:
                    steps = steps[:-1]  # the last one was cut by MAX_TOKENS
                text, used, answered_at = "", 0, None
                for k, (num_tokens, step_text) in enumerate(steps, start=1):
                    step_tokens.append(num_tokens)
                    text, used = text + step_text, used + num_tokens
                    if answered_at is None and extract_answer(text) is not None:
                        answered_at = k
                        steps_to_answer.append(k)
                        tokens_to_answer.append(used)
                if answered_at is not None:
                    stated += 1
                if s["ended"]:
                    # What a run with stop-at-answer needs: steps until the answer, else the end.
                    steps_to_end.append(answered_at or len(steps))
            group = [s for s in solutions if s["system"] == system_name]
            summary[f"{system_name} | delimiter {delimiter!r}"] = {
                "solutions": len(group),
                "ended_within_max_tokens": len(ended),
                "stated_an_answer": stated,
                "tokens_per_step": percentiles(step_tokens),
                "steps_until_answer": percentiles(steps_to_answer),
                "tokens_until_answer": percentiles(tokens_to_answer),
                "steps_until_answer_or_end": percentiles(steps_to_end),
            }
    return {
        "description": __doc__.split("\n\n")[0],
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "load_average": list(os.getloadavg())},
        "config": {"problems": len(problems), "samples_per_problem": samples, "greedy_per_problem": 1,
                   "development_seed": DEV_SEED, "excluded_test_problems": f"first {num_test} of seed {BENCH_SEED}",
                   "difficulty": 1, "max_tokens": MAX_TOKENS, "sampling": SAMPLING,
                   "system_prompts": {k: v for k, v in systems.items()}},
        "generation_seconds": seconds,
        "tokens_generated": int(sum(len(s["tokens"]) for s in solutions)),
        "summary": summary,
        "chosen": choose_caps(summary),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=30)
    parser.add_argument("--samples", type=int, default=2, help="sampled solutions per problem (plus one greedy)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    result = measure(args.problems, args.samples)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("chosen:", result["chosen"])
    for name, row in result["summary"].items():
        print(f"{name}: stated {row['stated_an_answer']}/{row['solutions']}, "
              f"tokens/step p95 {row['tokens_per_step'].get('p95', math.nan):.0f}, "
              f"steps to answer-or-end p95 {row['steps_until_answer_or_end'].get('p95', math.nan):.0f}")
    return 0


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    raise SystemExit(main())

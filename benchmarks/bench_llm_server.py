"""`probinf serve` against a direct `generate` call, and 8 concurrent clients against one (issue 23).

The embedded SmolLM2-135M-Instruct (llama.cpp, ``n_threads=1``, batched with up to 64
sequences), the particle filter at ``N = 8`` with `DEFAULT_CONFIG` and the solving
instructions as system message, on development problems (a key of their own, not the
accuracy benchmark's). Every request goes through the official ``openai`` client to a
server on 127.0.0.1 in this process.

1. **Server overhead.** For each problem, one direct ``generate`` call and one request
   with the same seed, alternating which goes first; both must produce the same answer
   and token count (checked), so the time difference is what the server adds: HTTP,
   JSON, the worker thread and the scheduler's hand-offs. Reported per request as a
   fraction of the direct decoding time.
2. **Throughput.** The same ``M`` requests (same seeds) sent by one client, one after
   another, then by 8 concurrent clients; since merging runs' steps into shared batched
   calls does not change what a seed draws (checked: same answers and tokens), both do
   exactly the same work and the throughput ratio is the ratio of wall times. A third
   setting, 8 clients with merging off (``merge=False``: the runs take turns on the
   backend), shows what the merging itself brings.
3. **The ceiling.** Tokens/s of llama.cpp's batched forward pass alone at 1, 8, 32 and 64
   sequences per forward (no sampling): the most that batching can gain on this CPU.

The machine is shared: the load average is recorded at the start and the end.

Run: ``python benchmarks/bench_llm_server.py [--overhead 5] [--requests 8]``; writes
``benchmarks/results/llm_server.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "llm_server.json"
DEV_SEED = 20_251_206  # development problems, not the accuracy benchmark's (seed 0)
CLIENTS = 8


def _request(client, question: str, seed: int):
    start = time.perf_counter()
    response = client.chat.completions.create(
        model="probinf:pf:8", seed=seed, messages=[{"role": "user", "content": question}],
        extra_body={"probinf": {"return_particles": True}})
    return response, time.perf_counter() - start


def _throughput(client, questions: list[str], clients: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(lambda i: _request(client, questions[i], i), range(len(questions))))
    wall = time.perf_counter() - start
    tokens = sum(r.usage.completion_tokens for r, _ in outcomes)
    return {"clients": clients, "requests": len(questions), "wall_seconds": wall, "completion_tokens": tokens,
            "tokens_per_second": tokens / wall, "requests_per_second": len(questions) / wall,
            "latency_seconds_median": statistics.median(t for _, t in outcomes),
            "answers": [r.choices[0].message.content for r, _ in outcomes],
            "tokens": [r.usage.completion_tokens for r, _ in outcomes]}


def forward_ceiling(model, positions: int = 12, sizes=(1, 8, 32, 64)) -> dict:
    """Tokens/s of llama.cpp's batched forward alone (no sampling, no server): ``positions``
    token positions for ``n`` sequences, one forward each. The most that merging ``n``
    particles into one call can gain."""
    from probinf.llm.backends.llama_cpp import _plan_prefill, _prefill

    prompt = list(model.encode_prompt(model.format_prompt("What is 12 + 7?")).tokens)
    out = {}
    for n in sizes:
        store = model._store(n)
        store.clear()
        sequences, _ = _prefill(store, _plan_prefill(store.tokens, [prompt] * n))
        start = time.perf_counter()
        for k in range(positions):
            store.decode([(seq, (100 + k,)) for seq in sequences])
        out[str(n)] = round(n * positions / (time.perf_counter() - start), 1)
        store.clear()
    return out


def run(overhead_problems: int, requests: int) -> dict:
    import jax
    import openai

    from probinf.llm import DEFAULT_CONFIG, LlamaCppModel, generate
    from probinf.llm.problems import SOLVE_INSTRUCTIONS, make_problems
    from probinf.llm.rewards import arithmetic
    from probinf.llm.serve import Decoder, ServerSettings, running_server

    config = DEFAULT_CONFIG.replace(n_particles=8)
    model = LlamaCppModel.smollm2(n_ctx=1024, n_threads=1, max_sequences=64)
    problems = make_problems(jax.random.key(DEV_SEED), overhead_problems + requests)
    overhead_questions = [p.question for p in problems[:overhead_problems]]
    load_questions = [p.question for p in problems[overhead_problems:]]
    settings = ServerSettings(max_running=CLIENTS, max_queued=64, timeout=600)
    out: dict = {"config": {"n_particles": 8, "max_steps": config.max_steps,
                            "max_step_tokens": config.max_step_tokens, "delimiter": config.delimiter,
                            "n_ctx": 1024, "n_threads": 1, "max_sequences": 64}}

    with Decoder(model, config=config, system=SOLVE_INSTRUCTIONS) as decoder, \
            running_server(decoder, settings) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)
        _request(client, "Warm up: what is 1 + 1?", 999)  # compiles the sampler's JAX functions
        # What the decoder uses by default (its reward "arithmetic"), passed explicitly.
        task = dict(reward=arithmetic.ArithmeticVerifier(), answer_fn=arithmetic.extract_answer)
        generate(model, "Warm up: what is 1 + 2?", config=config, system=SOLVE_INSTRUCTIONS, seed=998, **task)

        rows = []
        for i, question in enumerate(overhead_questions):
            def direct(question=question, i=i):
                start = time.perf_counter()
                result = generate(model, question, method="particle_filter", config=config,
                                  system=SOLVE_INSTRUCTIONS, key=jax.random.key(i), **task)
                return result, time.perf_counter() - start

            if i % 2 == 0:
                result, direct_s = direct()
                response, server_s = _request(client, question, i)
            else:
                response, server_s = _request(client, question, i)
                result, direct_s = direct()
            # The run's own wall time inside the server (the sampler's Budget): what is left of
            # the request's time is HTTP, JSON, queueing and the hand-off to a worker thread.
            inside = response.probinf["budget"]["total_seconds"]
            rows.append({"direct_seconds": direct_s, "server_seconds": server_s,
                         "overhead_seconds": server_s - direct_s,
                         "overhead_fraction": (server_s - direct_s) / direct_s,
                         "run_seconds_in_server": inside,
                         "outside_run_seconds": server_s - inside,
                         "outside_run_fraction": (server_s - inside) / direct_s,
                         "tokens": result.budget.tokens,
                         "same_answer": response.choices[0].message.content == result.text
                         and response.usage.completion_tokens == result.budget.tokens})
            print(f"overhead {i}: direct {direct_s:.2f} s, server {server_s:.2f} s", flush=True)
        fractions = [r["overhead_fraction"] for r in rows]
        out["overhead"] = {"requests": rows, "median_fraction": statistics.median(fractions),
                           "outside_run_seconds_median": statistics.median(r["outside_run_seconds"] for r in rows),
                           "outside_run_fraction_median": statistics.median(r["outside_run_fraction"] for r in rows),
                           "mean_fraction": statistics.fmean(fractions),
                           "total_fraction": sum(r["overhead_seconds"] for r in rows)
                           / sum(r["direct_seconds"] for r in rows),
                           "all_same": all(r["same_answer"] for r in rows)}

        single = _throughput(client, load_questions, 1)
        print(f"1 client: {single['wall_seconds']:.1f} s, {single['tokens_per_second']:.1f} tokens/s", flush=True)
        stats_before = decoder.scheduler.stats.as_dict()
        concurrent = _throughput(client, load_questions, CLIENTS)
        stats_after = decoder.scheduler.stats.as_dict()
        concurrent["scheduler"] = {k: stats_after[k] - stats_before[k] for k in
                                   ("backend_calls", "extend_jobs", "merged_calls", "prefixes", "tokens")}
        concurrent["scheduler"]["largest_merge"] = stats_after["largest_merge"]
        print(f"{CLIENTS} clients: {concurrent['wall_seconds']:.1f} s, "
              f"{concurrent['tokens_per_second']:.1f} tokens/s", flush=True)

    with Decoder(model, config=config, system=SOLVE_INSTRUCTIONS, merge=False) as decoder, \
            running_server(decoder, settings) as server:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)
        unmerged = _throughput(client, load_questions, CLIENTS)
        print(f"{CLIENTS} clients, no merging: {unmerged['wall_seconds']:.1f} s", flush=True)

    same_work = (concurrent["answers"] == single["answers"] and concurrent["tokens"] == single["tokens"]
                 and unmerged["tokens"] == single["tokens"])
    for setting in (single, concurrent, unmerged):
        del setting["answers"]
    out["throughput"] = {"one_client": single, f"{CLIENTS}_clients": concurrent,
                         f"{CLIENTS}_clients_no_merging": unmerged, "same_work": same_work,
                         "ratio": concurrent["tokens_per_second"] / single["tokens_per_second"],
                         "ratio_no_merging": unmerged["tokens_per_second"] / single["tokens_per_second"]}
    out["batch_stats"] = model.batch_stats
    out["forward_only_tokens_per_second"] = forward_ceiling(model)
    print(f"forward only (tokens/s by sequences per forward): {out['forward_only_tokens_per_second']}", flush=True)
    out["goals"] = {
        "overhead_below_5_percent": out["overhead"]["median_fraction"] < 0.05,
        "throughput_8_clients_at_least_3x": out["throughput"]["ratio"] >= 3.0,
    }
    return out


def _percent(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:.{digits}f} %".replace("-", "−")


def overhead_table(report: dict) -> str:
    """docs/llm-server.md's server-overhead table, from ``llm_server.json``."""
    requests = report["overhead"]["requests"]
    fractions = [r["overhead_fraction"] for r in requests]
    outside = [r["outside_run_seconds"] for r in requests]
    outside_fraction = [r["outside_run_fraction"] for r in requests]
    overhead = report["overhead"]
    lines = [
        "| | median | range |", "|---|---|---|",
        f"| request time − direct `generate` time, over the decoding time "
        f"({len(requests)} requests) | {_percent(overhead['median_fraction'])} | "
        f"{_percent(min(fractions))} to {_percent(max(fractions))} |",
        "| request time outside the run (HTTP, JSON, queueing, the hand-off to a worker thread, "
        f"the client's parsing) | {1000 * overhead['outside_run_seconds_median']:.0f} ms, "
        f"**{_percent(overhead['outside_run_fraction_median'], 2)}** of the decoding time | "
        f"{1000 * min(outside):.0f} to {1000 * max(outside):.0f} ms, "
        f"{_percent(min(outside_fraction), 2)} to {_percent(max(outside_fraction), 2)} |",
    ]
    return "\n".join(lines) + "\n"


def throughput_table(report: dict) -> str:
    """docs/llm-server.md's concurrent-clients table, from ``llm_server.json``."""
    throughput = report["throughput"]
    one, merged, apart = (throughput[k] for k in ("one_client", "8_clients", "8_clients_no_merging"))
    calls = merged["scheduler"]
    ratio = lambda setting: one["wall_seconds"] / setting["wall_seconds"]
    lines = [
        "| | wall time | tokens/s | ratio to one client |", "|---|---|---|---|",
        f"| 1 client | {one['wall_seconds']:.1f} s | {one['tokens_per_second']:.1f} | 1 |",
        f"| {merged['clients']} clients, steps merged ({calls['extend_jobs']} session calls in "
        f"{calls['backend_calls']} backend calls, up to {calls['largest_merge']} runs per call) | "
        f"{merged['wall_seconds']:.1f} s | {merged['tokens_per_second']:.1f} | "
        f"**{ratio(merged):.2f}** |",
        f"| {apart['clients']} clients, merging off (runs take turns on the backend) | "
        f"{apart['wall_seconds']:.1f} s | {apart['tokens_per_second']:.1f} | {ratio(apart):.2f} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--overhead", type=int, default=10, help="problems for the overhead comparison")
    parser.add_argument("--requests", type=int, default=16, help="requests per throughput setting")
    parser.add_argument("--table", action="store_true", help="print the docs tables of the results and exit")
    args = parser.parse_args()
    if args.table:
        report = json.loads(RESULTS.read_text())
        print(overhead_table(report), throughput_table(report), sep="\n", end="")
        return
    import llama_cpp

    started = time.perf_counter()
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "llama_cpp_python": llama_cpp.__version__, "load_average_start": os.getloadavg()},
              "arguments": vars(args)}
    result.update(run(args.overhead, args.requests))
    result["machine"]["load_average_end"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({"overhead_median": result["overhead"]["median_fraction"],
                      "throughput_ratio": result["throughput"]["ratio"],
                      "ratio_no_merging": result["throughput"]["ratio_no_merging"],
                      "same_work": result["throughput"]["same_work"], "goals": result["goals"]}, indent=1))


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

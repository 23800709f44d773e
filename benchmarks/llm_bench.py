"""Accuracy against budget for every decoding method on generated arithmetic problems.

The engine of ``python benchmarks/bench_llm.py`` (tooling, not part of the installed
library: import it as ``benchmarks.llm_bench`` from the repository root). The task is
arithmetic, so the reward and the answer extractor are the arithmetic ones, passed to every
sampler explicitly: the exact :class:`~probinf.llm.rewards.ArithmeticVerifier` and
:func:`~probinf.llm.rewards.lenient_answer` (the stated answer, else the last number). The
work is split into *stages*, and results are checkpointed after every job, so a run
stopped by its time budget still leaves a complete, honest record of what finished:

1. ``baseline``: greedy decoding and 16 independent samples per problem. Best-of-N
   (the verifier as outcome reward), majority vote and weighted majority vote for every
   ``N <= 16`` are computed from the first ``N`` of these samples (valid: they are i.i.d.),
   and so is ``N = 1`` of every particle method (one particle never resamples, so it is
   one independent sample).
2. particle filtering at ``N = 2, 4, 8``, beam search and entropic particle filtering
   at ``N = 4``, and best-of-8 run on its own fresh samples so that its wall time is
   measured, not prorated (``"small"``) — stages 1 and 2 run problem by problem, so a run
   cut short by its time budget still compares every method on the same problems;
3. particle filtering at ``N = 16`` (``"large"``), then beam search and entropic particle
   filtering at the other small N (``"rest"``) and at ``N = 16`` (``"large"``).

Jobs are shared by worker processes, each with its own model (one thread each).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np

from probinf.llm.base import DEFAULT_CONFIG

__all__ = ["run_benchmark", "summarize", "plot_results", "results_markdown", "BENCH_CONFIG"]

# The library's single defaults (sampling, delimiter, caps, stop at a stated answer); the
# benchmark varies only N.
BENCH_CONFIG = DEFAULT_CONFIG
NUM_SHARED_SAMPLES = 16
PARTICLE_METHODS = ("particle_filter", "entropic_particle_filter", "beam_search")
# Best-of-N at this N also runs on its own (fresh samples), timed like the particle methods.
TIMED_BEST_OF_N = 8

_MODEL = None


def _init_worker(model_spec: str, budgets=()) -> None:
    global _MODEL
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from probinf.llm import ToyStepModel, samplers
    from probinf.llm.backends import as_language_model

    _MODEL = as_language_model(model_spec)
    # Compile the sampler's small JAX functions for every N before timing anything.
    toy = ToyStepModel(lambda steps: [("1 + 1 = 2", 0.5), ("1 + 1 = 3", 0.5)] if len(steps) < 2 else [])
    for n in budgets:
        for method in PARTICLE_METHODS:
            samplers.METHODS[method](_key(0, n), toy, "1 + 1?", lambda q, s: 0.5 + 0.1 * ("2" in s),
                                     n_particles=n, progress=False)


def _key(seed: int, *parts: int):
    import jax

    key = jax.random.key(seed)
    for part in parts:
        key = jax.random.fold_in(key, part)
    return key


def _job(stage: str, index: int, problem: dict, seed: int, budgets: list[int]) -> dict:
    """Run one stage on one problem in a worker; returns a JSON-serialisable record."""
    from probinf.llm import samplers
    from probinf.llm.rewards import ArithmeticVerifier, lenient_answer

    verifier = ArithmeticVerifier()
    common = dict(config=BENCH_CONFIG, progress=False, answer_fn=lenient_answer)
    question, answer = problem["question"], str(problem["answer"])
    record: dict = {"stage": stage, "problem": index}
    if stage == "baseline":
        greedy = samplers.greedy(_key(seed, index, 0), _MODEL, question, **common)
        record["greedy"] = {"answer": greedy.answer, "correct": greedy.answer == answer,
                            "budget": greedy.budget.as_dict(), "text": greedy.text}
        started = time.perf_counter()
        samples, budget = samplers.sample_independent(
            _key(seed, index, 1), _MODEL, question, n=NUM_SHARED_SAMPLES,
            **{k: v for k, v in common.items() if k != "answer_fn"},
        )
        scoring = time.perf_counter()
        log_odds = [verifier.log_odds(question, p.text) for p in samples]
        reward_seconds = time.perf_counter() - scoring
        record["samples"] = {
            "answers": [lenient_answer(p.text) for p in samples],
            "correct": [lenient_answer(p.text) == answer for p in samples],
            "log_odds": log_odds,
            "tokens": [p.num_tokens for p in samples],
            "lm_seconds": budget.lm_seconds,
            "reward_seconds": reward_seconds,
            "total_seconds": time.perf_counter() - started,
        }
        return record
    method, n = stage.split(":")
    n = int(n)
    if method == "best_of_n":
        # Timed on its own (fresh samples), for the wall-time comparison with particle filtering.
        result = samplers.best_of_n(_key(seed, index, 99, n), _MODEL, question, verifier, n_particles=n, **common)
        record.update(method="best_of_n_timed", n=n, answer=result.answer, correct=result.answer == answer,
                      any_correct=any(lenient_answer(p.text) == answer for p in result.particles),
                      budget=result.budget.as_dict())
        return record
    options = dict(common)
    if method == "beam_search":
        options["beam_width"] = min(4, n)
    result = samplers.METHODS[method](_key(seed, index, 2 + PARTICLE_METHODS.index(method), n),
                                      _MODEL, question, verifier, n_particles=n, **options)
    record.update(method=method, n=n, answer=result.answer, correct=result.answer == answer,
                  any_correct=any(lenient_answer(p.text) == answer for p in result.particles),
                  particle_answers=[lenient_answer(p.text) for p in result.particles],
                  log_weights=[float(w) for w in result.log_weights],
                  budget=result.budget.as_dict(), resampled_steps=int(result.resampled.sum()),
                  min_ess=float(np.min(result.ess)) if result.ess.size else None)
    return record


def _machine() -> dict:
    import jax

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "load_average_at_start": list(os.getloadavg()),
    }
    versions = {}
    for name in ("probinf", "jax", "numpy", "llama_cpp"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a missing package is recorded, not fatal
            versions[name] = None
    info["versions"] = versions
    return info


def _binomial_summary(correct: list[bool]) -> dict:
    n = len(correct)
    p = sum(correct) / n if n else math.nan
    return {"accuracy": p, "stderr": math.sqrt(p * (1 - p) / n) if n else math.nan, "problems": n}


def _best_of_n_index(log_odds: list[float], n: int, tie_seed: int) -> int:
    values = np.asarray(log_odds[:n])
    best = np.flatnonzero(values == values.max())
    return int(best[np.random.default_rng(tie_seed).integers(best.size)])


def _vote(answers: list, weights: list[float], tie_seed: int):
    totals: dict = {}
    for a, w in zip(answers, weights, strict=True):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + w
    if not totals:
        return None
    top = max(totals.values())
    winners = sorted(a for a, w in totals.items() if w >= top * (1 - 1e-12))
    return winners[np.random.default_rng(tie_seed).integers(len(winners))]


def summarize(records: list[dict], problems: list[dict], budgets: list[int]) -> dict:
    """Accuracy, tokens and wall time per problem for every method and budget that finished."""
    answers = {i: str(p["answer"]) for i, p in enumerate(problems)}
    baseline = {r["problem"]: r for r in records if r["stage"] == "baseline"}
    table: dict = {}
    if baseline:
        greedy = [r["greedy"]["correct"] for r in baseline.values()]
        table["greedy"] = {"1": {**_binomial_summary(greedy),
                                 "tokens_per_problem": float(np.mean([r["greedy"]["budget"]["tokens"] for r in baseline.values()])),
                                 "seconds_per_problem": float(np.mean([r["greedy"]["budget"]["total_seconds"] for r in baseline.values()]))}}
        for name in ("best_of_n", "majority_vote", "weighted_majority_vote", "single_sample"):
            table[name] = {}
        for n in budgets:
            if n > NUM_SHARED_SAMPLES:
                continue
            bon, maj, wmaj, tokens, seconds = [], [], [], [], []
            for i, r in baseline.items():
                s = r["samples"]
                bon.append(s["correct"][_best_of_n_index(s["log_odds"], n, 1000 * i + n)])
                maj.append(_vote(s["answers"][:n], [1.0] * n, 1000 * i + n) == answers[i])
                weights = [1 / (1 + math.exp(-z)) for z in s["log_odds"][:n]]
                wmaj.append(_vote(s["answers"][:n], weights, 1000 * i + n) == answers[i])
                share = sum(s["tokens"][:n]) / max(sum(s["tokens"]), 1)
                tokens.append(sum(s["tokens"][:n]))
                seconds.append(s["total_seconds"] * share)
            extra = {"tokens_per_problem": float(np.mean(tokens)), "seconds_per_problem": float(np.mean(seconds)),
                     "note": "computed from the first N of 16 shared i.i.d. samples; seconds prorated by tokens"}
            coverage = float(np.mean([answers[i] in r["samples"]["answers"][:n] for i, r in baseline.items()]))
            table["best_of_n"][str(n)] = {**_binomial_summary(bon), **extra, "coverage": coverage}
            table["majority_vote"][str(n)] = {**_binomial_summary(maj), **extra}
            table["weighted_majority_vote"][str(n)] = {**_binomial_summary(wmaj), **extra}
        single = [r["samples"]["correct"][0] for r in baseline.values()]
        table["single_sample"]["1"] = _binomial_summary(single)
    for method in (*PARTICLE_METHODS, "best_of_n_timed"):
        table[method] = {}
        if baseline and 1 in budgets and method in PARTICLE_METHODS:
            table[method]["1"] = {**table["single_sample"]["1"],
                                  "tokens_per_problem": table["best_of_n"]["1"]["tokens_per_problem"],
                                  "seconds_per_problem": table["best_of_n"]["1"]["seconds_per_problem"],
                                  "note": "N = 1 never resamples: one independent sample (shared samples)"}
        for n in budgets:
            rows = [r for r in records if r.get("method") == method and r.get("n") == n]
            if not rows or n == 1:
                continue
            total = sum(r["budget"]["total_seconds"] for r in rows)
            overhead = sum(r["budget"]["overhead_seconds"] for r in rows)
            table[method][str(n)] = {
                **_binomial_summary([r["correct"] for r in rows]),
                "tokens_per_problem": float(np.mean([r["budget"]["tokens"] for r in rows])),
                "seconds_per_problem": float(np.mean([r["budget"]["total_seconds"] for r in rows])),
                "lm_seconds_per_problem": float(np.mean([r["budget"]["lm_seconds"] for r in rows])),
                "reward_seconds_per_problem": float(np.mean([r["budget"]["reward_seconds"] for r in rows])),
                "sampler_overhead_fraction": overhead / total if total else None,
                "coverage": float(np.mean([r.get("any_correct", False) for r in rows])),
            }
    return table


def _paired(records, baseline, method, n):
    """PF-vs-best-of-N on the same problems: difference and exact McNemar (sign) p-value."""
    from scipy import stats

    rows = {r["problem"]: r for r in records if r.get("method") == method and r.get("n") == n}
    wins = losses = 0
    for i, r in rows.items():
        if i not in baseline:
            continue
        s = baseline[i]["samples"]
        bon = s["correct"][_best_of_n_index(s["log_odds"], n, 1000 * i + n)]
        wins += r["correct"] and not bon
        losses += bon and not r["correct"]
    # Exact McNemar: among discordant problems, is the method right more often than best-of-N?
    p = stats.binomtest(wins, wins + losses, alternative="greater").pvalue if wins + losses else 1.0
    return {"problems": len(rows), "method_only_correct": int(wins), "best_of_n_only_correct": int(losses),
            "mcnemar_p_one_sided": float(p)}


def reward_diagnostics(records) -> dict:
    """How well the reward separates right from wrong solutions (on the shared samples).

    ``auc`` is the probability that a correct solution has higher log-odds than an incorrect
    one (ties count half); ``correct_with_top_score`` the fraction of samples holding the
    highest score of their problem that are correct. A reward that cannot tell a wrong
    operation from a right one caps every reward-guided method.
    """
    right, wrong, top = [], [], []
    for r in records:
        if r["stage"] != "baseline":
            continue
        s = r["samples"]
        z = np.asarray(s["log_odds"])
        right += list(z[np.asarray(s["correct"], bool)])
        wrong += list(z[~np.asarray(s["correct"], bool)])
        top += [c for c, v in zip(s["correct"], z, strict=True) if v == z.max()]
    if not right or not wrong:
        return {"auc": None, "correct_with_top_score": float(np.mean(top)) if top else None}
    a, b = np.asarray(right)[:, None], np.asarray(wrong)[None, :]
    auc = float(np.mean((a > b) + 0.5 * (a == b)))
    return {"auc": auc, "correct_with_top_score": float(np.mean(top)),
            "mean_log_odds_correct": float(np.mean(right)), "mean_log_odds_wrong": float(np.mean(wrong)),
            "samples": len(right) + len(wrong)}


def _goals(table: dict, records, budgets) -> dict:
    baseline = {r["problem"]: r for r in records if r["stage"] == "baseline"}
    pf, bon = table.get("particle_filter", {}), table.get("best_of_n", {})
    comparisons = {}
    for n in budgets:
        if n >= 2 and str(n) in pf and str(n) in bon:
            comparisons[str(n)] = {"particle_filter": pf[str(n)]["accuracy"], "best_of_n": bon[str(n)]["accuracy"],
                                   **_paired(records, baseline, "particle_filter", n)}
    greedy = table.get("greedy", {}).get("1", {}).get("accuracy")
    overheads = [row.get("sampler_overhead_fraction") for m in PARTICLE_METHODS for row in table.get(m, {}).values()
                 if row.get("sampler_overhead_fraction") is not None]
    at_least_4 = {n: c for n, c in comparisons.items() if int(n) >= 4}
    at_least_8 = {n: c for n, c in comparisons.items() if int(n) >= 8}
    timed = table.get("best_of_n_timed", {}).get("8", {})
    wall_ratio = (pf["8"]["seconds_per_problem"] / timed["seconds_per_problem"]
                  if "8" in pf and timed.get("seconds_per_problem") else None)
    gain = (pf["8"]["accuracy"] - greedy) if "8" in pf and greedy is not None else None
    return {
        "particle_filter_vs_best_of_n": comparisons,
        "particle_filter_beats_best_of_n_at_every_N_ge_4": bool(at_least_4) and all(
            c["particle_filter"] > c["best_of_n"] for c in at_least_4.values()),
        "particle_filter_significantly_better_at_every_N_ge_8": bool(at_least_8) and all(
            c["particle_filter"] > c["best_of_n"] and c["mcnemar_p_one_sided"] < 0.05 for c in at_least_8.values()),
        "particle_filter_minus_greedy_at_8": gain,
        "particle_filter_at_8_at_least_15_points_above_greedy": gain is not None and gain >= 0.15,
        "particle_filter_8_over_best_of_8_wall_time": wall_ratio,
        "particle_filter_8_wall_time_within_1_5x_best_of_8": wall_ratio is not None and wall_ratio <= 1.5,
        "max_sampler_overhead_fraction": max(overheads) if overheads else None,
        "reward": reward_diagnostics(records),
    }


def run_benchmark(
    out: str = "benchmarks/results/llm.json", *, num_problems: int = 200, budgets=(1, 2, 4, 8, 16),
    seed: int = 0, model: str = "smollm2", difficulty: int = 1, workers: int = 2,
    time_budget_s: float = 7200.0, stages=("baseline", "small", "large", "rest"), progress: bool = True,
    plot: str | None = "docs/img/llm_accuracy.png", resume: bool = False,
) -> dict:
    """Run the benchmark, checkpointing ``out`` after every finished job; returns the result dict.

    Args:
        out: JSON file (rewritten after each job; a JSONL of raw records sits beside it).
        num_problems: how many generated problems.
        budgets: the values of N.
        seed: seeds the problems and every sampler.
        model: what :func:`~probinf.llm.backends.as_language_model` accepts.
        difficulty: operations per problem.
        workers: processes (each loads its own model, single-threaded).
        time_budget_s: no new job starts after this many seconds.
        stages: which stages to run (see the module docstring).
        progress: print one line per finished job.
        plot: PNG path of the accuracy-against-budget plot (``None``: no plot).
        resume: keep the records of an earlier run with the same configuration (the JSONL
            beside ``out``) and run only the jobs it did not finish.
    """
    import jax

    from probinf.llm.problems import make_problems

    budgets = sorted(set(int(b) for b in budgets))
    problems = [
        {"question": p.question, "answer": p.answer, "operations": list(p.operations)}
        for p in make_problems(jax.random.key(seed), num_problems, difficulty)
    ]
    small = [n for n in budgets if 1 < n < 16]
    large = [n for n in budgets if n >= 16]
    middle = [small[len(small) // 2]] if small else []
    # Problem by problem first, so that a run cut short by its time budget still compares
    # every method on the same problems: baseline, particle filtering at the small N,
    # beam search and entropic PF at a middle N. Then the rest, N = 16 last.
    per_problem = (["baseline"] if "baseline" in stages else []) + (
        [f"particle_filter:{n}" for n in small]
        + [f"{m}:{n}" for m in ("beam_search", "entropic_particle_filter") for n in middle]
        + [f"best_of_n:{n}" for n in budgets if n == TIMED_BEST_OF_N]
        if "small" in stages else [])
    jobs = [(stage, i) for i in range(num_problems) for stage in per_problem]
    rest = [n for n in small if n not in middle]
    later = []
    if "large" in stages:
        later += [("particle_filter", large)]
    if "rest" in stages:
        later += [(m, rest) for m in ("beam_search", "entropic_particle_filter")]
    if "large" in stages:
        later += [(m, large) for m in ("beam_search", "entropic_particle_filter")]
    for method, sizes in later:
        jobs += [(f"{method}:{n}", i) for n in sizes for i in range(num_problems)]
    raw_path = os.path.splitext(out)[0] + ".records.jsonl"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    records: list[dict] = []
    if resume and os.path.exists(raw_path):
        with open(raw_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        finished_jobs = {(r["stage"], r["problem"]) for r in records}
        jobs = [job for job in jobs if job not in finished_jobs]
    previous_runs = []
    if resume and os.path.exists(out):
        with open(out) as f:
            earlier = json.load(f)
        previous_runs = earlier.get("runs", []) or [{"elapsed_seconds": earlier.get("elapsed_seconds"),
                                                      "jobs_done": earlier.get("jobs_done"),
                                                      "load_average_at_start": earlier["machine"].get("load_average_at_start")}]
    planned = len(records) + len(jobs)
    started = time.perf_counter()
    result = {
        "description": "Accuracy against budget N on generated one-operation arithmetic word problems, "
                       "SmolLM2-135M-Instruct (Q4_1 GGUF, llama.cpp), exact arithmetic verifier as process "
                       "and outcome reward.",
        "machine": _machine(),
        "config": {
            "num_problems": num_problems, "difficulty": difficulty, "budgets": budgets, "seed": seed,
            "model": model, "workers": workers, "time_budget_s": time_budget_s, "stages": list(stages),
            "decode_config": {k: v for k, v in dataclasses.asdict(BENCH_CONFIG).items() if k != "n_particles"},
            "shared_samples": NUM_SHARED_SAMPLES,
            "system_prompt": "the model's default (SmolLM2 chat template)",
            "finish": "a particle finishes once it states an answer ('The answer is N', '#### N', boxed)",
            "grading": "lenient: the stated answer, else the last number written",
            "particle_filter": "logit weighting, reward temperature 1, tilt 'final' (prefix rewards as "
                               "twists), multinomial resampling every step, argmax selection",
            "entropic_particle_filter": "as particle_filter plus entropic annealing below ESS = N/2 "
                                        "(no look-ahead)",
            "beam_search": "beam width min(4, N)",
            "best_of_n_timed": f"best-of-{TIMED_BEST_OF_N} run on its own fresh samples, for wall time",
        },
    }

    def write(final=False):
        elapsed = time.perf_counter() - started
        # Only problems on which every per-problem stage finished enter the tables, so
        # all methods are compared on the same problems.
        done_stages: dict = {}
        for r in records:
            done_stages.setdefault(r["problem"], set()).add(r["stage"])
        complete = {i for i, s in done_stages.items() if set(per_problem) <= s}
        used = [r for r in records if r["problem"] in complete or r["stage"] not in per_problem]
        table = summarize(used, problems, budgets)
        result["problems_with_every_per_problem_stage"] = len(complete)
        done = sorted({r["stage"] for r in records})
        result.update({
            "elapsed_seconds": elapsed + sum(r.get("elapsed_seconds") or 0 for r in previous_runs),
            "finished": final and len(records) == planned, "jobs_done": len(records), "jobs_planned": planned,
            "runs": previous_runs + [{"elapsed_seconds": elapsed, "jobs_done": len(records),
                                      "load_average_at_start": result["machine"]["load_average_at_start"]}],
            "stages_with_results": done, "results": table, "goals": _goals(table, used, budgets),
        })
        result["machine"]["load_average_now"] = list(os.getloadavg())
        with open(out, "w") as f:
            json.dump(result, f, indent=1)

    import multiprocessing

    # Spawned (not forked) workers: JAX is multithreaded and does not survive a fork.
    with open(raw_path, "a" if resume else "w") as raw, ProcessPoolExecutor(
        max_workers=workers, initializer=_init_worker, initargs=(model, budgets),
        mp_context=multiprocessing.get_context("spawn"),
    ) as pool:
        pending = {}
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < 2 * workers and time.perf_counter() - started < time_budget_s:
                stage, i = queue.pop(0)
                pending[pool.submit(_job, stage, i, problems[i], seed, budgets)] = (stage, i)
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                stage, i = pending.pop(future)
                record = future.result()
                records.append(record)
                raw.write(json.dumps(record) + "\n")
                raw.flush()
                if progress:
                    print(f"[{time.perf_counter() - started:7.0f} s] {stage} problem {i}: "
                          f"{len(records)}/{planned} jobs", flush=True)
            write()
    write(final=True)
    if plot:
        plot_results(result, plot)
    return result


def plot_results(result: dict | str, png: str | None = None, ax=None):
    """Accuracy against N for every method, with ±1 standard error bars."""
    import matplotlib

    if ax is None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(result, str):
        with open(result) as f:
            result = json.load(f)
    table = result["results"]
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"particle_filter": ("o-", "C0"), "entropic_particle_filter": ("s-", "C1"),
              "beam_search": ("^-", "C2"), "best_of_n": ("v--", "C3"), "majority_vote": ("D:", "C4"),
              "weighted_majority_vote": ("x:", "C5")}
    for name, (style, color) in styles.items():
        rows = table.get(name, {})
        ns = sorted(int(n) for n in rows)
        if not ns:
            continue
        acc = [rows[str(n)]["accuracy"] for n in ns]
        err = [rows[str(n)]["stderr"] for n in ns]
        ax.errorbar(ns, acc, yerr=err, fmt=style, color=color, capsize=2, label=name.replace("_", " "))
    if "greedy" in table:
        ax.axhline(table["greedy"]["1"]["accuracy"], color="k", lw=1, ls="--", label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("budget N (particles / samples / beams)")
    ax.set_ylabel("accuracy")
    problems = table.get("greedy", {}).get("1", {}).get("problems")
    ax.set_title(f"SmolLM2-135M, arithmetic ({problems} problems)")
    ax.legend(fontsize=7, frameon=False)
    if own:
        fig.tight_layout()
        if png:
            os.makedirs(os.path.dirname(png) or ".", exist_ok=True)
            fig.savefig(png, dpi=120)
        plt.close(fig)
    return ax


_TABLE_ROWS = (("greedy", "greedy"), ("best_of_n", "best-of-N (verifier as outcome reward)"),
               ("majority_vote", "majority vote"), ("weighted_majority_vote", "weighted majority vote"),
               ("beam_search", "beam search"), ("particle_filter", "particle filtering"),
               ("entropic_particle_filter", "entropic particle filtering"),
               ("best_of_n_timed", "best-of-N run on its own (timed)"))


def results_markdown(result: dict | str) -> str:
    """The accuracy, coverage, token and wall-time tables of a result, as Markdown.

    docs/llm.md quotes this text verbatim (a test checks it against the committed JSON).
    """
    if isinstance(result, str):
        with open(result) as f:
            result = json.load(f)
    table, budgets = result["results"], result["config"]["budgets"]
    header = "| method | " + " | ".join(f"N = {n}" for n in budgets) + " |\n|---|" + "---:|" * len(budgets)

    def block(title, cell):
        lines = [title, "", header]
        for name, label in _TABLE_ROWS:
            rows = table.get(name, {})
            cells = [cell(rows[str(n)]) if str(n) in rows else "—" for n in budgets]
            if any(c != "—" for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def accuracy(row):
        return f"{100 * row['accuracy']:.0f} ± {100 * row['stderr']:.0f} ({row['problems']})"

    parts = [
        block("Accuracy in percent ± one standard error (problems):", accuracy),
        block("Coverage: percent of problems on which some final particle (sample) is right:",
              lambda row: f"{100 * row['coverage']:.0f}" if "coverage" in row else "—"),
        block("Tokens generated per problem:",
              lambda row: f"{row['tokens_per_problem']:.0f}" if "tokens_per_problem" in row else "—"),
        block("Wall time per problem in seconds:",
              lambda row: f"{row['seconds_per_problem']:.1f}" if "seconds_per_problem" in row else "—"),
    ]
    return "\n\n".join(parts) + "\n"

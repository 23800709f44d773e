"""Benchmark: accuracy against budget N of reward-guided decoding with SmolLM2-135M-Instruct.

Runs greedy, best-of-N, (weighted) majority vote, beam search, particle filtering and
entropic particle filtering on generated arithmetic problems (the same problems, model
and exact verifier for all), checkpointing ``benchmarks/results/llm.json`` as it goes,
then compares with its_hub's particle filtering (the authors' library) on a subset,
against a real llama-cpp-python server, when its_hub is installed in the venv given by
``--its-hub-python``. See `llm_bench` (beside this file) for the stages. Needs the `llm` extra.

    python benchmarks/bench_llm.py                      # the full run (hours on 2 cores)
    python benchmarks/bench_llm.py --problems 4 --budgets 1,2 --time-budget 300   # a smoke run
"""

import argparse
import json
import sys

try:
    from benchmarks.llm_bench import plot_results, run_benchmark
    from benchmarks.peers import missing_peer_message, peer_python
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from llm_bench import plot_results, run_benchmark
    from peers import missing_peer_message, peer_python


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--budgets", default="1,2,4,8,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--time-budget", type=float, default=6600.0,
                        help="seconds after which no new job starts")
    parser.add_argument("--stages", default="baseline,small,large,rest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/llm.json")
    parser.add_argument("--plot", default="docs/img/llm_accuracy.png")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished jobs of an earlier run (same options) and run the rest")
    parser.add_argument("--its-hub-python", default=peer_python("its_hub"),
                        help="python of a virtualenv where its_hub is installed (peer comparison; "
                             "default: $ITS_HUB_PYTHON, else `python benchmarks/peers.py --only "
                             "its_hub`'s)")
    parser.add_argument("--its-hub-problems", type=int, default=20)
    parser.add_argument("--its-hub-n", type=int, default=4)
    args = parser.parse_args(argv)
    budgets = [int(b) for b in args.budgets.split(",")]
    result = run_benchmark(args.out, num_problems=args.problems, budgets=budgets, seed=args.seed,
                           workers=args.workers, time_budget_s=args.time_budget,
                           stages=tuple(args.stages.split(",")), plot=args.plot, resume=args.resume)
    if args.its_hub_python:
        try:
            from benchmarks.llm_peer import compare_with_its_hub
        except ModuleNotFoundError:  # run as a script
            from llm_peer import compare_with_its_hub

        result["its_hub"] = compare_with_its_hub(args.its_hub_python, num_problems=args.its_hub_problems,
                                                 n=args.its_hub_n, seed=args.seed)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        plot_results(result, args.plot)
    else:
        print(f"its_hub comparison skipped: {missing_peer_message('its_hub')}")
    print(json.dumps(result["goals"], indent=1))
    return 0


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    sys.exit(main())

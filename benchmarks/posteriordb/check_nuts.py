"""Check the numpyro translations of the posteriordb suite against the reference draws with NUTS.

For each posterior, numpyro's NUTS (default settings: diagonal mass matrix adapted
in warm-up, target acceptance 0.8, tree depth <= 10) runs 4 chains one after the
other, 1,000 warm-up and 1,000 kept draws each, and the 4,000 draws are scored
against posteriordb's reference (see `suite.score`). A correct translation should
score <= 0.1 on both figures: the Monte Carlo error of a 4,000-draw NUTS mean is
about 0.02-0.04 reference sd.

Run from the repository root (one posterior at a time, all by default):

    python benchmarks/posteriordb/check_nuts.py [NAME ...] [--float32] [--seed 0]

Results are merged into ``benchmarks/results/posteriordb_nuts.json`` (one entry per
posterior, so a partial run updates only its own entries).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

GOAL = 0.1
NUM_CHAINS = 4
NUM_WARMUP = 1_000
NUM_SAMPLES = 1_000
MAX_TREE_DEPTH = 10
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "posteriordb_nuts.json"


def machine() -> dict:
    import jax
    import jaxlib
    import numpy as np
    import numpyro

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax_backend": jax.default_backend(),
        "load_average": os.getloadavg(),  # other work on the machine inflates wall_s
        "versions": {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "numpyro": numpyro.__version__, "numpy": np.__version__},
    }


def check(name: str, seed: int) -> dict:
    import jax
    import numpy as np
    from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
    from numpyro.infer import MCMC, NUTS

    from benchmarks.posteriordb import load, parameter_errors, to_posteriordb_names

    posterior = load(name)
    kernel = NUTS(posterior.model, max_tree_depth=MAX_TREE_DEPTH)
    mcmc = MCMC(kernel, num_warmup=NUM_WARMUP, num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS,
                chain_method="sequential", progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), *posterior.args, extra_fields=("diverging", "num_steps", "accept_prob"),
             **posterior.kwargs)
    by_chain = {site: np.asarray(mcmc.get_samples(group_by_chain=True)[site])
                for site in posterior.reference_sites}
    wall_s = time.perf_counter() - start
    extra = {field: np.asarray(value) for field, value in mcmc.get_extra_fields(group_by_chain=True).items()}
    samples = {site: value.reshape(-1, *value.shape[2:]) for site, value in by_chain.items()}
    errors = parameter_errors(posterior, samples)
    # (chain, draw, parameter) draws: split R-hat and ESS say when the chains disagree or stick
    parameters = np.stack([np.stack(list(to_posteriordb_names(chain_draws).values()), axis=-1)
                           for chain_draws in ({site: value[chain] for site, value in by_chain.items()}
                                               for chain in range(NUM_CHAINS))])
    r_hat = split_gelman_rubin(parameters)
    ess = effective_sample_size(parameters)
    worst_mean = max(errors, key=lambda parameter: errors[parameter][0])
    worst_sd = max(errors, key=lambda parameter: errors[parameter][1])
    max_mean_error, max_log_sd_ratio = errors[worst_mean][0], errors[worst_sd][1]
    return {
        "max_mean_error_in_ref_sd": max_mean_error,
        "worst_mean_parameter": worst_mean,
        "max_abs_log_sd_ratio": max_log_sd_ratio,
        "worst_sd_parameter": worst_sd,
        "meets_goal": bool(max_mean_error <= GOAL and max_log_sd_ratio <= GOAL),
        "wall_s": wall_s,
        "num_divergences": int(np.sum(extra["diverging"])),
        "max_split_r_hat": float(np.max(r_hat)),
        "min_ess": float(np.min(ess)),
        "mean_accept_prob_per_chain": [float(value) for value in extra["accept_prob"].mean(axis=1)],
        "num_max_tree_depth": int(np.sum(np.asarray(extra["num_steps"]) >= 2**MAX_TREE_DEPTH - 1)),
        "dtype": "float64" if jax.config.jax_enable_x64 else "float32",
        "seed": seed,
        "settings": {"num_chains": NUM_CHAINS, "num_warmup": NUM_WARMUP, "num_samples": NUM_SAMPLES,
                     "chain_method": "sequential", "max_tree_depth": MAX_TREE_DEPTH,
                     "target_accept_prob": 0.8, "dense_mass": False},
        "per_parameter": {parameter: {"mean_error_in_ref_sd": mean_error, "abs_log_sd_ratio": log_ratio}
                          for parameter, (mean_error, log_ratio) in errors.items()},
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="posteriors to check (default: all)")
    parser.add_argument("--float32", action="store_true", help="run in float32 (default: float64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", not args.float32)
    from benchmarks.posteriordb import POSTERIORS

    unknown = [name for name in args.names if name not in POSTERIORS]
    if unknown:
        parser.error(f"unknown posteriors {unknown}; choose from {POSTERIORS}")
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("posteriors", {})
    results["goal"] = (f"max |mean - ref mean| / ref sd <= {GOAL} and max |log(sd / ref sd)| <= {GOAL} "
                       "over each posterior's reference parameters")
    for name in args.names or POSTERIORS:
        entry = check(name, args.seed)
        key = name + (" (float32)" if args.float32 else "") + (f" (seed {args.seed})" if args.seed else "")
        results["posteriors"][key] = entry
        print(f"{key}: mean error {entry['max_mean_error_in_ref_sd']:.3f} ({entry['worst_mean_parameter']}), "
              f"|log sd ratio| {entry['max_abs_log_sd_ratio']:.3f} ({entry['worst_sd_parameter']}), "
              f"{entry['num_divergences']} divergences, R-hat {entry['max_split_r_hat']:.3f}, "
              f"min ESS {entry['min_ess']:.0f}, {entry['wall_s']:.1f} s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    # Run as a script, the repository root is not on the path; `python -m` needs no help.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())

"""Why IWAE(16, DReG) on a full-rank Gaussian looked worse than the ELBO on real posteriors.

For a few posteriordb posteriors, a full-rank Gaussian is trained from two starts
(Pathfinder, and numpyro's random ``init_to_uniform`` point with scale 0.1: the start
the first user report used) with ``ELBO(8, STL())`` and ``IWAE(16, DReG())``, fixed
3,000 Adam(1e-2) steps each. Each fit is scored against the reference draws twice:
the family's own draws (what the report measured) and the same family's draws after
PSIS importance resampling (what IWAE's bound is about), plus k-hat and the spread of
the family relative to the reference.

Run: python benchmarks/iwae_dreg.py  ->  benchmarks/results/iwae_dreg.json
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import probinf  # noqa: E402
from benchmarks.posteriordb import load, score, to_posteriordb_names  # noqa: E402
from benchmarks.results_io import add_posteriordb_argument, posteriordb_directory, write_results  # noqa: E402
from probinf import vi  # noqa: E402
from probinf.diagnostics import psis  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "iwae_dreg.json"
POSTERIORS = ("kidiq-kidscore_momhsiq", "sblri-blr", "eight_schools-eight_schools_noncentered",
              "arma-arma11")
NUM_DRAWS = 4000


def scored(posterior, target, z):
    named = to_posteriordb_names({k: np.asarray(v) for k, v in target.constrain(z).items()})
    mean_error, log_sd = score(posterior, named)
    return float(mean_error), float(log_sd)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    add_posteriordb_argument(parser)
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    try:  # before anything runs
        folder = posteriordb_directory(args.data)
    except FileNotFoundError as err:
        parser.error(str(err))
    from numpyro.infer import init_to_uniform

    rows = {}
    for name in POSTERIORS:
        posterior = load(name, folder)
        target = probinf.from_numpyro(posterior.model, *posterior.args, **posterior.kwargs)
        starts = {"pathfinder": vi.initialize(jax.random.key(1), target)}
        try:
            random_start = probinf.from_numpyro(posterior.model, *posterior.args,
                                                init_strategy=init_to_uniform, **posterior.kwargs)
            starts["random"] = probinf.FullRankGaussian.init(
                target.dim, loc=random_start.init_position, scale=0.1)
        except ValueError as err:  # the random point itself is invalid for this model
            rows[f"{name} | random"] = {"error": str(err)[:300]}
        for start_name, family in starts.items():
            for label, objective in (("ELBO(8,STL)", vi.ELBO(8, vi.STL())),
                                     ("IWAE(16,DReG)", vi.IWAE(16, vi.DReG()))):
                began = time.perf_counter()
                result = probinf.fit(objective, family, target, key=jax.random.key(2),
                                     steps=3000, diagnose=False)
                wall = time.perf_counter() - began
                fitted = result.family
                z, log_q = fitted.sample_and_log_prob(jax.random.key(3), NUM_DRAWS)
                log_w = np.asarray(target.log_density(z) - log_q, dtype=np.float64)
                smoothed, khat = psis(log_w)
                w = np.exp(smoothed - smoothed.max())
                index = np.asarray(probinf.smc.resampling.systematic(
                    jax.random.key(4), jnp.asarray(smoothed), NUM_DRAWS))
                own = scored(posterior, target, z)
                corrected = scored(posterior, target, z[index])
                rows[f"{name} | {start_name} | {label}"] = {
                    "own_max_mean_error_sd": own[0], "own_max_abs_log_sd_ratio": own[1],
                    "resampled_max_mean_error_sd": corrected[0],
                    "resampled_max_abs_log_sd_ratio": corrected[1],
                    "khat": float(khat), "ess": float(w.sum() ** 2 / (w**2).sum()),
                    "elbo": float(log_w.mean()),
                    "iw_log_evidence": float(np.logaddexp.reduce(log_w) - np.log(NUM_DRAWS)),
                    "wall_s": wall, "steps": result.num_steps,
                    "stop_reason": result.stop_reason,
                }
                print(name, start_name, label, rows[f"{name} | {start_name} | {label}"], flush=True)
                # after each fit: a crash keeps the rows done
                write_results(args.out, {"description": __doc__, "rows": rows, "complete": False})
    write_results(args.out, {"description": __doc__, "rows": rows, "complete": True})


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

"""How reliable is the SLCP NUTS reference? C2ST of NUTS against NUTS, per benchmark data set.

Runs after ``bench_amortized.py --only slcp`` with the same keys: for each of the first
``--datasets`` test data sets it draws the reference exactly as the benchmark does
(key ``fold_in(k_ref, i)``) and a second, independent NUTS run (key
``fold_in(k_ref, 10000 + i)``, same settings), and scores the pair with the same C2ST.
A value well above 0.5 means two NUTS runs disagree, so a model's C2ST against the
reference cannot be read below that level on that data set. Merges the result into
``benchmarks/results/amortized.json`` under ``tasks.slcp.reference_check``.

Usage: ``python benchmarks/slcp_reference_check.py [--datasets 10]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_amortized as bench  # noqa: E402

from amortized import c2st  # noqa: E402
from amortized.tasks import SLCP  # noqa: E402

SLCP_INDEX = 5  # position of slcp in bench_amortized's task list (its key)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--out", default=str(bench.ROOT / "benchmarks" / "results" / "amortized.json"))
    args = parser.parse_args(argv)
    task = SLCP(num_components=10)
    key = jax.random.fold_in(jax.random.key(2025), SLCP_INDEX)
    _, _, _, k_test, _, k_ref, k_c2st = jax.random.split(key, 7)
    test = task.simulate(k_test, 100)
    mcmc = bench.nuts_runner(task, 1000, bench.NUM_REFERENCE // 4, 4)

    def draws(k, obs):
        return np.asarray(SLCP.symmetrize(jax.random.fold_in(k, 1), jnp.asarray(bench.run_nuts(mcmc, k, *obs))))

    scores = []
    for i in range(args.datasets):
        obs = (bench.take(test.prior, i), test.observations[i], test.mask[i])
        reference = draws(jax.random.fold_in(k_ref, i), obs)
        second = draws(jax.random.fold_in(k_ref, 10_000 + i), obs)
        scores.append(float(c2st(jax.random.fold_in(k_c2st, i), reference, second)))
        print(f"data set {i}: C2ST(NUTS, NUTS) = {scores[-1]:.3f}", flush=True)
    path = pathlib.Path(args.out)
    results = json.loads(path.read_text())
    results["tasks"]["slcp"]["reference_check"] = {
        "what": "C2ST of the NUTS reference against a second NUTS run (another seed, same settings), per data set",
        "c2st": scores,
        "c2st_mean": float(np.mean(scores)),
        "script": "benchmarks/slcp_reference_check.py",
    }
    path.write_text(json.dumps(results, indent=2))
    print(f"mean {np.mean(scores):.3f}; merged into {path}")


if __name__ == "__main__":
    sys.exit(main())

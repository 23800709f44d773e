"""The "noisy cone" objective table (Becker et al., PLDI 2024, Table 4) with probinf.

Model (z = 5 observed):

    x ~ N(0, 10),  y ~ N(0, 10),  z ~ N(x^2 + y^2, 0.1 + (x^2 + y^2) / 100).

Two guides over (x, y):

* naive: a mean-field Gaussian, trained with the ELBO and with IWELBO (K = 5);
* expressive: u ~ U(0, 1), theta = 2 pi u, x ~ N(sqrt(z) cos theta, sigma_1),
  y ~ N(sqrt(z) sin theta, sigma_2), a :class:`probinf.HierarchicalFamily`
  whose marginal density is estimated with the auxiliary sample and ``num_inner``
  fresh draws of u from its prior (``reverse=None``), trained with HVI
  (num_inner = 0), IWHVI (m = 5 auxiliary samples: the generating one and 4
  fresh ones) and DIWHVI (IWAE with n = 5 outer samples, each with the m = 5
  inner estimate).

The training budget follows the authors' artifact
(probcomp/programmable-vi-pldi-2024 at commit ff2bc65,
``experiments/table_4_objective_values``): 5,000 plain gradient-ascent steps with
learning rate 1e-3 for every objective; naive ELBO: 64 samples per step, start
(mu, log sigma) = (0, 0, 1, 1); IWELBO: one K = 5 estimate per step, start
(3, 0, 1, 1); HVI / IWHVI / DIWHVI: 64 estimates per step, start
log sigma = (0, 0). The final value of each objective is the mean (and standard
deviation) of 5,000 independent one-batch estimates, as in the artifact. We train
from ``SEEDS`` independent seeds and report every seed and their mean. The exact
log evidence is computed by quadrature (with s = x^2 + y^2, s / 100 is
chi-square with 2 degrees of freedom).

``--authors-code DIR`` also runs the authors' own scripts (``genjax_cone.py`` and
``genjax_cone_marginal.py`` in DIR) with ``--authors-python`` (an environment with
their vendored genjax; they need jax 0.4.20) and records what they print;
``--authors-output FILE...`` reads the saved output of such a run instead.

Run: ``python benchmarks/vi_cone.py [--quick] [--out benchmarks/results/vi_cone.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray

import probinf
from probinf import vi

try:
    from benchmarks.peers import missing_peer_message, peer_python
    from benchmarks.results_io import update_results
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from peers import missing_peer_message, peer_python
    from results_io import update_results

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "vi_cone.json"
Z_OBSERVED = 5.0
LEARNING_RATE = 1e-3
EVAL_ESTIMATES = 5000
STEPS = 5000
SEEDS = 5
AUTHORS_LABELS = {
    "ELBO:": "elbo",
    "IWAE(K = 5):": "iwelbo",
    "HVI-ELBO(N = 1):": "hvi",
    "IWHVI(N = 5, K = 1):": "iwhvi",
    "IWHVI(N = 5, K = 5) (also called DIWHVI):": "diwhvi",
}

# Table 4 of the paper as the authors' artifact shows it (table_4.png in
# probcomp/programmable-vi-pldi-2024, commit ff2bc65); means only.
PAPER_TABLE_4 = {
    "source": "probcomp/programmable-vi-pldi-2024, file table_4.png (Table 4 of Becker et al., "
              "PLDI 2024), commit ff2bc65",
    "genjax.vi": {"elbo": -8.08, "iwelbo": -7.79, "hvi": -9.75, "iwhvi": -8.18, "diwhvi": -7.33},
    "numpyro": {"elbo": -8.08, "iwelbo": -7.77},
    "pyro": {"elbo": -8.08, "iwelbo": -7.75},
}


def cone_log_density(point: Array) -> Array:
    """log p(x, y, z = 5) for one point (x, y)."""
    x, y = point[0], point[1]
    radius_sq = x**2 + y**2
    return (
        jax.scipy.stats.norm.logpdf(x, 0.0, 10.0)
        + jax.scipy.stats.norm.logpdf(y, 0.0, 10.0)
        + jax.scipy.stats.norm.logpdf(Z_OBSERVED, radius_sq, 0.1 + radius_sq / 100.0)
    )


def exact_log_evidence() -> float:
    """log p(z = 5) = log int Exp(s; rate 1/200) N(5; s, 0.1 + s/100) ds, by the trapezoid rule."""
    s = np.linspace(0.0, 60.0, 2_000_001)
    sd = 0.1 + s / 100.0
    integrand = np.exp(-s / 200.0) / 200.0 * np.exp(-0.5 * ((Z_OBSERVED - s) / sd) ** 2) / (
        sd * math.sqrt(2 * math.pi)
    )
    return float(np.log(np.trapezoid(integrand, s)))


class UnitUniform(probinf.Family):
    """U(0, 1)^dim with no parameters (the auxiliary variable's fixed prior)."""

    size: int = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return self.size

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        return jax.random.uniform(key, (n, self.size)), jnp.zeros(n)

    def log_prob(self, z: Array) -> Array:
        inside = jnp.all((z >= 0.0) & (z <= 1.0), axis=-1)
        return jnp.where(inside, 0.0, -jnp.inf)


class RingConditional(eqx.Module):
    """u -> N((sqrt(z) cos 2 pi u, sqrt(z) sin 2 pi u), diag(exp(log_scale))^2)."""

    log_scale: Array
    radius: float = eqx.field(static=True)

    def __call__(self, u: Array) -> probinf.MeanFieldGaussian:
        angle = 2.0 * jnp.pi * u[0]
        loc = self.radius * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
        return probinf.MeanFieldGaussian(loc, self.log_scale)


def expressive_guide(num_inner: int) -> probinf.HierarchicalFamily:
    conditional = RingConditional(jnp.zeros(2), radius=math.sqrt(Z_OBSERVED))
    return probinf.HierarchicalFamily(UnitUniform(1), conditional, None, num_inner=num_inner)


def naive_guide(loc: tuple[float, float]) -> probinf.MeanFieldGaussian:
    return probinf.MeanFieldGaussian(jnp.asarray(loc, jnp.float32), jnp.ones(2))


def experiments() -> dict:
    """name -> (initial family, training objective, one-batch evaluation objective)."""
    return {
        "elbo": (naive_guide((0.0, 0.0)), vi.ELBO(64), vi.ELBO(1)),
        "iwelbo": (naive_guide((3.0, 0.0)), vi.IWAE(5), vi.IWAE(5)),
        "hvi": (expressive_guide(0), vi.ELBO(64), vi.ELBO(1)),
        "iwhvi": (expressive_guide(4), vi.ELBO(64), vi.ELBO(1)),
        "diwhvi": (expressive_guide(4), vi.IWAE(5, num_batches=64), vi.IWAE(5)),
    }


def parse_authors_output(text: str) -> dict:
    """The (mean, variance) pairs the authors' scripts print after each label line."""
    import re

    found = {}
    lines = text.splitlines()
    for label, line in zip(lines, lines[1:], strict=False):
        if label.strip() in AUTHORS_LABELS:
            mean, variance = (float(v) for v in re.findall(r"Array\(([-0-9.e]+)", line))
            found[AUTHORS_LABELS[label.strip()]] = {"mean": mean, "variance": variance,
                                                     "sd": math.sqrt(variance)}
    return found


def run_authors_code(directory: Path, python: Path) -> dict:
    """Run the authors' table-4 scripts in their own environment and parse what they print."""
    import subprocess

    from probinf.xla_workaround import environ_without_workaround

    found: dict = {"directory": str(directory), "python": str(python)}
    for script in ("genjax_cone.py", "genjax_cone_marginal.py"):
        start = time.perf_counter()
        proc = subprocess.run([str(python), script], cwd=directory, capture_output=True,
                              text=True, timeout=3000,
                              env={**environ_without_workaround(), "JAX_PLATFORMS": "cpu",
                                   "MPLBACKEND": "Agg"})
        found[f"{script}_seconds"] = time.perf_counter() - start
        if proc.returncode != 0:
            found[f"{script}_error"] = proc.stderr.strip()[-1500:]
            continue
        found.update(parse_authors_output(proc.stdout))
    return found


def guide_parameters(family) -> dict:
    if isinstance(family, probinf.MeanFieldGaussian):
        return {"loc": np.asarray(family.loc).tolist(), "scale": np.asarray(family.scale).tolist()}
    return {"sigma": np.exp(np.asarray(family.conditional.log_scale)).tolist(),
            "num_inner": family.num_inner}


def train_and_evaluate(name: str, family, objective, evaluation, target, steps: int,
                       seed: int) -> dict:
    """Fit from one seed, then evaluate the objective with EVAL_ESTIMATES one-batch estimates."""
    start = time.perf_counter()
    fitted = probinf.fit(objective, family, target, key=jax.random.key(seed),
                         optimizer=optax.sgd(LEARNING_RATE), steps=steps,
                         chunk_size=min(1000, steps), progress=False)
    train_s = time.perf_counter() - start
    keys = jax.random.split(jax.random.key(10_000 + seed), EVAL_ESTIMATES)
    values = np.asarray(
        jax.jit(jax.vmap(lambda k: -evaluation(k, fitted.family, target)))(keys), np.float64
    )
    return {
        "seed": seed,
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)),
        "standard_error": float(values.std(ddof=1) / math.sqrt(EVAL_ESTIMATES)),
        "stop_reason": fitted.stop_reason,
        "train_seconds": train_s,
        "final_guide": guide_parameters(fitted.family),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5%% of the steps, one seed")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--authors-code", type=Path, default=None,
                        help="folder with the authors' genjax_cone*.py scripts to run as well")
    parser.add_argument("--authors-python", type=Path, default=peer_python("genjax-pldi"))
    parser.add_argument("--authors-output", type=Path, nargs="+", default=None,
                        help="saved standard output of an earlier run of the authors' scripts")
    args = parser.parse_args(argv)
    if args.authors_code is not None and args.authors_python is None:
        parser.error(f"--authors-python: {missing_peer_message('genjax-pldi')}")
    steps = STEPS // 20 if args.quick else STEPS
    seeds = 1 if args.quick else SEEDS

    target = probinf.from_logdensity(cone_log_density, 2)
    log_evidence = exact_log_evidence()
    results = {}
    update_results(args.out, [], {"benchmark": "noisy cone objective values (Becker et al., PLDI "
                                  "2024, Table 4) with probinf", "complete": False,
                                  "exact_log_evidence": log_evidence, "results": {}}, fresh=True)
    for index, (name, (family, objective, evaluation)) in enumerate(experiments().items()):
        runs = [train_and_evaluate(name, family, objective, evaluation, target, steps,
                                   seed=1000 * index + seed) for seed in range(seeds)]
        means = np.array([r["mean"] for r in runs])
        results[name] = {
            "mean_over_seeds": float(means.mean()),
            "sd_over_seeds": float(means.std(ddof=1)) if seeds > 1 else None,
            "sd_of_one_estimate": float(np.mean([r["sd"] for r in runs])),
            "paper_genjax_vi": PAPER_TABLE_4["genjax.vi"][name],
            "steps": steps,
            "runs": runs,
        }
        print(f"{name:7s} {means.mean():8.3f} over {seeds} seeds "
              f"({', '.join(f'{m:.2f}' for m in means)}); estimate sd "
              f"{results[name]['sd_of_one_estimate']:.3f}; paper "
              f"{PAPER_TABLE_4['genjax.vi'][name]}", flush=True)
        update_results(args.out, ["results", name], results[name])  # a crash keeps it

    authors = None
    if args.authors_code is not None:
        print("running the authors' scripts ...", flush=True)
        authors = run_authors_code(args.authors_code, args.authors_python)
        print(json.dumps(authors, indent=1), flush=True)
    elif args.authors_output is not None:
        authors = {"saved_output": [str(p) for p in args.authors_output]}
        for path in args.authors_output:
            authors.update(parse_authors_output(path.read_text()))
    if authors is not None:
        authors["environment"] = ("the authors' scripts, unchanged, run here with their vendored "
                                  "genjax and adevjax in an own virtualenv (Python 3.10, jax and "
                                  "jaxlib 0.4.20, the versions of their poetry.lock)")

    import importlib.metadata as md

    report = {
        "benchmark": "noisy cone objective values (Becker et al., PLDI 2024, Table 4) with probinf",
        "settings": {
            "model": "x ~ N(0, 10), y ~ N(0, 10), z ~ N(x^2 + y^2, 0.1 + (x^2 + y^2)/100), z = 5",
            "optimizer": f"optax.sgd({LEARNING_RATE}) (plain gradient steps, as the artifact)",
            "steps": steps,
            "seeds": seeds,
            "evaluation": f"{EVAL_ESTIMATES} independent one-batch estimates of each objective "
                          "(mean and sd), per seed",
            "objectives": {
                "elbo": "naive mean-field Gaussian, ELBO, 64 samples per step, init (0, 0, 1, 1)",
                "iwelbo": "naive mean-field Gaussian, IWAE K=5, one estimate per step, "
                          "init (3, 0, 1, 1)",
                "hvi": "expressive guide, HierarchicalFamily(num_inner=0), ELBO with 64 samples",
                "iwhvi": "expressive guide, HierarchicalFamily(num_inner=4) (m = 5 auxiliary "
                         "samples), ELBO with 64 samples",
                "diwhvi": "expressive guide, HierarchicalFamily(num_inner=4), IWAE K=5 (n = 5), "
                          "64 batches per step",
            },
        },
        "exact_log_evidence": log_evidence,
        "results": results,
        "paper": PAPER_TABLE_4,
        "authors_code_run_here": authors,
        "versions": {name: md.version(name)
                     for name in ("jax", "jaxlib", "optax", "equinox", "probinf")},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "python": platform.python_version()},
    }
    report["complete"] = True
    update_results(args.out, [], report)
    print(f"exact log evidence {log_evidence:.4f}; wrote {args.out}")


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

"""Benchmark: stochastic VI with data subsampling as the data grow.

Bayesian logistic regression with ``N`` = 10^4, 10^5, 10^6 synthetic rows (fixed seed) and
20 weights, the rows in ``numpyro.plate("data", N, subsample_size=1000)``.

* **Time per step** (`benchmarks/timing.py`: contenders alternated call by call, each call
  ``STEPS_PER_CALL`` steps in one compiled ``lax.scan``, the same loop form for all):
  probinf's step on a batch of 1,000 rows (plain, and with the Taylor control variate),
  probinf's step on all ``N`` rows, and numpyro's ``SVI`` step with
  ``AutoMultivariateNormal`` on the same model and subsample size, and the same step written
  by hand in JAX (the floor: what the gather from ``N`` rows costs). Every contender uses one
  reparameterised draw per step (numpyro draws a separate subsample for each particle, so
  one draw is the like-for-like setting) and ``optax.adam(1e-2)``.
* **Data-parallel VI**: the default recipe (``vi.initialize``, then ``vi.fit(vi.ELBO(8),
  steps=2000, sharding=mesh)``) on 10^5 rows, each step's batch split over 1, 2 and 4 forced
  host devices, each count in its own process: the fitted means must agree (up to the
  order of float sums); the seconds per step are recorded.
* **Data-parallel EM**: mini-batch EM of an HCLT circuit (`circuits.em`, ``sharding=``) on
  the largest DEBD set of ``--data`` (or the larger shipped one with ``--shipped-debd``),
  each run in its own process with 1, 2 and 4 forced host devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count``): the test log-likelihood must be
  the same; the seconds per epoch are recorded (the forced devices share this machine's
  cores, so no speed-up is expected).
* **Accuracy**: the documented recipe (``vi.initialize`` on the full-data density, then
  ``vi.fit(vi.ELBO(8), ...)`` with its defaults: batches of 1,000 rows, the control
  variate, iterate averaging) against the exact posterior mean (importance sampling from
  the Laplace approximation at the exact mode, `posterior_mean_reference`) and the
  Laplace sds. Also the fit without the control variate, and a full-data fit.

Run from the repository root::

    python benchmarks/bench_scale.py            # N up to 10^6 (a few minutes)
    python benchmarks/bench_scale.py --quick    # N = 10^4, 10^5
    python benchmarks/bench_scale.py --only-em [--data DIR | --shipped-debd]
    python benchmarks/bench_scale.py --only-sharded [--no-em]   # VI (and EM) on forced devices

Writes ``benchmarks/results/scale.json`` as it goes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

import probinf
from probinf import train as engine
from probinf import vi

# vi.fit's own loss and split, to scan its step exactly as fit runs it (`probinf.vi.fit`
# the attribute is the function, so the module is imported by name).
fit_module = importlib.import_module("probinf.vi.fit")

try:
    from benchmarks.results_io import (
        add_debd_arguments,
        debd_directory,
        milliseconds,
        update_results,
    )
    from benchmarks.timing import compare
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from results_io import add_debd_arguments, debd_directory, milliseconds, update_results
    from timing import compare

OUT = pathlib.Path(__file__).resolve().parent / "results" / "scale.json"
SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
DIM = 20
SUBSAMPLE = 1000
# Steps per timed call. vi.fit runs compiled chunks of up to 1,024 steps; a call also pays
# a cost that grows with the model's constant data (measured: about 0.5 ms per call at
# 10^6 rows, on a pure 1,000-row gather), which 20 steps per call charged ten times over.
STEPS_PER_CALL = 200
LEARNING_RATE = 1e-2


def make_data(num_rows: int, seed: int = 0) -> tuple[jax.Array, jax.Array, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=DIM) / np.sqrt(DIM) * 2.0
    x = rng.normal(size=(num_rows, DIM)).astype(np.float32)
    y = (rng.random(num_rows) < 1.0 / (1.0 + np.exp(-(x @ weights)))).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y), weights


def model(x, y, subsample_size=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([DIM]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as rows:
        numpyro.sample("y", dist.Bernoulli(logits=x[rows] @ w), obs=y[rows])


def laplace_reference(x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mode, covariance and marginal sds of the exact posterior's Laplace approximation
    (Newton's method in float64 on all rows)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w = np.zeros(DIM)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (y - p) - w
        hessian = -(x.T * (p * (1 - p))) @ x - np.eye(DIM)
        step = np.linalg.solve(hessian, gradient)
        w = w - step
        if np.max(np.abs(step)) < 1e-12:
            break
    covariance = np.linalg.inv(-hessian)
    return w, covariance, np.sqrt(np.diag(covariance))


# Draws for the posterior-mean reference: 20,000, fewer on more rows (each costs N
# logistic terms), never under 2,000.
REFERENCE_DRAWS = 20_000
REFERENCE_ROW_TERMS = 2 * 10**9
MIN_REFERENCE_DRAWS = 2_000


def posterior_mean_reference(x, y, mode, covariance, *, seed: int = 0) -> dict:
    """The exact posterior mean by Pareto-smoothed importance sampling from the Laplace
    approximation (float64, all rows; the proposal is the posterior up to O(1/sqrt(N)),
    so the weights are nearly flat: their k-hat and ESS are recorded with it). The
    proposal's mean is known (the mode), so it is used as a control variate:
    $\\hat\\mu = m + \\sum_s (\\bar w_s - 1/S)(z_s - m)$ with $\\bar w$ the normalised
    smoothed weights, whose error shrinks with the spread of the weights, not only with
    $S$. The mode is not the mean: on 10^4 rows the two differ by 0.08 posterior sd in
    some weight, so a fit is scored against this mean."""
    from probinf.diagnostics import psis

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rng = np.random.default_rng(seed)
    num_draws = int(np.clip(REFERENCE_ROW_TERMS // len(x), MIN_REFERENCE_DRAWS, REFERENCE_DRAWS))
    factor = np.linalg.cholesky(covariance)
    noise = rng.standard_normal((num_draws, DIM))
    draws = mode + noise @ factor.T
    log_q = -0.5 * np.sum(noise**2, axis=1)
    log_p = np.empty(num_draws)
    for start in range(0, num_draws, 500):  # 500 draws x N rows of logits at a time
        w = draws[start:start + 500]
        logits = x @ w.T
        log_likelihood = y @ logits - np.logaddexp(0.0, logits).sum(axis=0)
        log_p[start:start + 500] = log_likelihood - 0.5 * np.sum(w**2, axis=1)
    log_weights, khat = psis(log_p - log_q)
    weights = np.exp(log_weights)
    mean = mode + (weights - 1.0 / num_draws) @ (draws - mode)
    sd = np.sqrt(np.diag(covariance))
    return {"mean": mean, "khat": float(khat), "ess": float(1.0 / np.sum(weights**2)),
            "draws": num_draws,
            "max_abs_mean_minus_mode_in_sd": float(np.max(np.abs(mean - mode) / sd))}


def scanned(step_fn):
    """``STEPS_PER_CALL`` steps of ``step_fn(state, key) -> state`` in one compiled scan."""

    @jax.jit
    def run(state, key):
        def body(carry, t):
            return step_fn(carry, jax.random.fold_in(key, t)), None

        return jax.lax.scan(body, state, jnp.arange(STEPS_PER_CALL))[0]

    return run


def probinf_contender(target, optimizer):
    family = probinf.FullRankGaussian.init(DIM, loc=jnp.zeros(DIM), scale=0.1)
    trainable, frozen = partition(family, target)
    step = engine.make_step(fit_module._engine_loss, optimizer, step_index=True)
    opt_state = optimizer.init(eqx.filter(trainable, eqx.is_inexact_array))
    state = engine.TrainState(trainable, opt_state, jnp.asarray(0, jnp.int32))
    run = scanned(lambda s, k: step(s, k, (frozen, None))[0])
    keys = iter(range(10**6))
    return lambda: run(state, jax.random.key(next(keys)))


def hand_written_contender(x, y, optimizer):
    """The floor: the same step written directly in JAX, with no `Target` or objective.

    One reparameterised draw from a full-rank Gaussian (log-diagonal Cholesky factor),
    ``SUBSAMPLE`` rows drawn with replacement and their log-likelihood scaled by
    ``N / SUBSAMPLE``, the prior, the entropy and Adam; the data are closure constants, as
    in a numpyro model. Its growth with ``N`` is what the random gather itself costs.
    """
    num_rows = x.shape[0]

    def loss(params, key):
        loc, raw = params
        scale_tril = jnp.tril(raw, -1) + jnp.diag(jnp.exp(jnp.diag(raw)))
        draw_key, rows_key = jax.random.split(key)
        w = loc + scale_tril @ jax.random.normal(draw_key, (DIM,))
        rows = jax.random.randint(rows_key, (SUBSAMPLE,), 0, num_rows)
        logits = x[rows] @ w
        log_likelihood = jnp.sum(y[rows] * logits - jnp.logaddexp(0.0, logits))
        log_joint = log_likelihood * (num_rows / SUBSAMPLE) - 0.5 * jnp.sum(w**2)
        return -(log_joint + jnp.sum(jnp.diag(raw)))

    def step(state, key):
        params, opt_state = state
        updates, opt_state = optimizer.update(jax.grad(loss)(params, key), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params = (jnp.zeros(DIM), jnp.diag(jnp.full(DIM, jnp.log(0.1))))
    run = scanned(step)
    state = (params, optimizer.init(params))
    keys = iter(range(10**6))
    return lambda: run(state, jax.random.key(next(keys)))


def partition(family, target):
    """``vi.fit``'s split of (family, target, objective) into trained and frozen parts."""
    objective = vi.ELBO(1)
    spec = fit_module._trainable_spec(family, target, objective, False)
    return eqx.partition((family, target, objective), spec)


def numpyro_contender(x, y, optimizer):
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoMultivariateNormal

    svi = SVI(model, AutoMultivariateNormal(model), optimizer, Trace_ELBO(num_particles=1))
    state = svi.init(jax.random.key(0), x, y, subsample_size=SUBSAMPLE)
    run = scanned(lambda s, _: svi.update(s, x, y, subsample_size=SUBSAMPLE)[0])
    keys = iter(range(10**6))

    def call():
        # numpyro's SVI state carries its own key; a fresh one per call, as for ours.
        return run(state._replace(rng_key=jax.random.key(next(keys))), jax.random.key(0))

    return call


def accuracy(target, reference_mean, mode, sd, *, control_variate: bool, seed: int) -> dict:
    key = jax.random.key(seed)
    began = time.perf_counter()
    family = vi.initialize(key, target)
    start = np.asarray(jnp.mean(family.sample(jax.random.fold_in(key, 1), 4000), 0))
    result = vi.fit(vi.ELBO(8), family, target, key=jax.random.fold_in(key, 2),
                    control_variate=control_variate)
    draws = np.asarray(result.family.sample(jax.random.fold_in(key, 3), 20_000), np.float64)
    seconds = time.perf_counter() - began
    return {
        "max_abs_mean_error_in_sd": float(np.max(np.abs(draws.mean(0) - reference_mean) / sd)),
        "max_abs_mean_minus_mode_in_sd": float(np.max(np.abs(draws.mean(0) - mode) / sd)),
        "max_abs_log_sd_ratio": float(np.max(np.abs(np.log(draws.std(0) / sd)))),
        "start_max_abs_mean_error_in_sd": float(np.max(np.abs(start - reference_mean) / sd)),
        "steps": result.num_steps,
        "stop_reason": result.stop_reason,
        "khat": None if result.diagnostics is None else result.diagnostics.khat,
        "averaged": result.averaged,
        "wall_s_including_compile": seconds,
    }


def markdown_table(report: dict) -> str:
    """The time-per-step table of docs/scaling.md, from ``scale.json``."""
    lines = ["| rows $N$ | subsampled step | with control variate | full-data step | "
             "numpyro SVI, subsampled | hand-written JAX step, subsampled |",
             "|---|---|---|---|---|---|"]
    for num_rows, entry in sorted(report["sizes"].items(), key=lambda item: int(item[0])):
        per_step = entry["median_s_per_step"]
        cells = [f"{int(num_rows):,}"] + [f"{milliseconds(per_step[name])} ms" for name in (
            "probinf_subsampled", "probinf_control_variate", "probinf_full_data",
            "numpyro_subsampled", "hand_written_subsampled")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


EM_DEVICES = (1, 2, 4)
EM_SETTINGS = dict(latent=16, batch_size=512, epochs=3, step_size=0.5, seed=0)


def em_worker(directory: str | None, name: str) -> None:
    """One process of the data-parallel EM check: prints ``EM {json}``."""
    from jax.sharding import Mesh

    import circuits

    split = circuits.load_debd(name, directory)
    _, key_init, key_em = jax.random.split(jax.random.key(EM_SETTINGS["seed"]), 3)  # the recorded runs drew hclt trees with the first
    graph = circuits.hclt(split["train"])
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), EM_SETTINGS["latent"], "cp",
                                       key=key_init, data=split["train"])
    mesh = Mesh(np.array(jax.devices()), ("data",))
    timings = []
    for _ in range(2):  # the second run reuses the compiled loop: its time is the step time
        began = time.perf_counter()
        result = circuits.em(circuit, split["train"], num_epochs=EM_SETTINGS["epochs"],
                             batch_size=EM_SETTINGS["batch_size"],
                             step_size=EM_SETTINGS["step_size"], key=key_em, progress=False,
                             sharding=mesh)
        timings.append(time.perf_counter() - began)
    print("EM " + json.dumps({
        "devices": jax.device_count(),
        "test_log_likelihood": circuits.average_log_likelihood(result.circuit, split["test"]),
        "train_log_likelihood": result.train_log_likelihood.tolist(),
        "seconds_first_run_with_compile": timings[0],
        "seconds_per_epoch": timings[1] / EM_SETTINGS["epochs"],
    }), flush=True)


def forced_device_runs(out: str, section: str, report: dict, worker: list[str]) -> dict:
    """Run ``worker`` (this script's hidden worker arguments) once per device count of
    ``EM_DEVICES``, each in its own process with that many forced host devices; the JSON
    line each prints goes to ``report["runs"]``, saved under ``section`` as it goes."""
    tag = worker[0].removeprefix("--").split("-")[0].upper()
    report["runs"] = {}
    for devices in EM_DEVICES:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        run = subprocess.run([sys.executable, __file__, *worker], env=env, capture_output=True,
                             text=True, timeout=3600)
        if run.returncode:
            raise RuntimeError(f"the {tag} worker with {devices} devices failed:\n"
                               f"{run.stderr[-3000:]}")
        line = next(line for line in run.stdout.splitlines() if line.startswith(tag + " "))
        report["runs"][str(devices)] = json.loads(line[len(tag) + 1:])
        update_results(out, section, report)
        print(f"{section}, {devices} device(s): {report['runs'][str(devices)]}", flush=True)
    return report


def sharded_em(out: str, directory, name: str) -> None:
    worker = ["--em-worker", name] + ([] if directory is None else ["--em-directory",
                                                                     str(directory)])
    report = forced_device_runs(out, "sharded_em", {"dataset": name, "settings": EM_SETTINGS},
                                worker)
    lls = [run["test_log_likelihood"] for run in report["runs"].values()]
    report["max_test_log_likelihood_difference"] = max(lls) - min(lls)
    update_results(out, "sharded_em", report)


VI_SHARDED_ROWS = 100_000
VI_SHARDED_STEPS = 2000


def vi_worker() -> None:
    """One process of the data-parallel VI check: the default recipe with a fixed number of
    steps, each batch split over every device; prints ``VI {json}``."""
    from jax.sharding import Mesh

    x, y, _ = make_data(VI_SHARDED_ROWS)
    target = probinf.from_numpyro(model, x, y, subsample_size=SUBSAMPLE)
    key = jax.random.key(0)
    start = vi.initialize(key, target)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    timings = []
    for _ in range(2):  # the second run reuses the compiled loop
        began = time.perf_counter()
        result = vi.fit(vi.ELBO(8), start, target, key=jax.random.fold_in(key, 2),
                        steps=VI_SHARDED_STEPS, progress=False, diagnose=False, sharding=mesh)
        jax.block_until_ready(result.family)
        timings.append(time.perf_counter() - began)
    print("VI " + json.dumps({
        "devices": jax.device_count(),
        "mean": np.asarray(result.family.mean, np.float64).tolist(),
        "sd": np.sqrt(np.diag(np.asarray(result.family.covariance, np.float64))).tolist(),
        "mean_loss_last_100_steps": float(np.mean(result.losses[-100:])),
        "averaged": result.averaged,
        "seconds_first_fit_with_compile": timings[0],
        "seconds_per_step": timings[1] / VI_SHARDED_STEPS,
    }), flush=True)


def sharded_vi(out: str) -> None:
    report = forced_device_runs(out, "sharded_vi", {
        "rows": VI_SHARDED_ROWS, "subsample_size": SUBSAMPLE, "steps": VI_SHARDED_STEPS,
        "recipe": "vi.initialize, then vi.fit(vi.ELBO(8), steps=...) with its defaults "
                  "(control variate, iterate averaging); seconds per step include building "
                  "the control variate"}, ["--vi-worker"])
    runs = list(report["runs"].values())
    sd = np.asarray(runs[0]["sd"])
    report["max_mean_difference_in_sd"] = max(
        float(np.max(np.abs(np.asarray(run["mean"]) - np.asarray(runs[0]["mean"])) / sd))
        for run in runs)
    update_results(out, "sharded_vi", report)


def largest_debd(directory) -> str:
    import circuits

    def entries(name):
        train = circuits.load_debd(name, directory)["train"]
        return train.shape[0] * train.shape[1]

    return max(circuits.list_debd(directory), key=entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 10^4 and 10^5 only")
    parser.add_argument("--only-em", action="store_true", help="only the data-parallel EM part")
    parser.add_argument("--no-em", action="store_true", help="skip the data-parallel EM part")
    parser.add_argument("--out", default=str(OUT), help="results file (default: %(default)s)")
    parser.add_argument("--em-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--em-directory", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vi-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--only-sharded", action="store_true",
                        help="only the data-parallel parts (VI and EM on forced devices)")
    add_debd_arguments(parser)
    args = parser.parse_args()
    if args.em_worker:
        return em_worker(args.em_directory, args.em_worker)
    if args.vi_worker:
        return vi_worker()
    directory = None if args.no_em else debd_directory(args.data, args.shipped_debd)
    if args.only_em:
        return sharded_em(args.out, directory, largest_debd(directory))
    if args.only_sharded:
        sharded_vi(args.out)
        return None if args.no_em else sharded_em(args.out, directory, largest_debd(directory))
    sizes = QUICK_SIZES if args.quick else SIZES
    update_results(args.out, [], {
        "complete": False,
        "problem": f"Bayesian logistic regression, {DIM} weights, N(0, 1) prior, synthetic "
                   "rows (seed 0)",
        "subsample_size": SUBSAMPLE,
        "steps_per_call": STEPS_PER_CALL,
        "optimizer": f"optax.adam({LEARNING_RATE})",
        "draws_per_step_in_timing": 1,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "jax_devices": [str(d) for d in jax.devices()]},
        "versions": {name: importlib.metadata.version(name)
                     for name in ("jax", "numpyro", "optax", "probinf")},
        "sizes": {},
    }, fresh=True)
    optimizer = optax.adam(LEARNING_RATE)
    for num_rows in sizes:
        x, y, _ = make_data(num_rows)
        subsampled = probinf.from_numpyro(model, x, y, subsample_size=SUBSAMPLE)
        full = probinf.from_numpyro(model, x, y)
        mode, covariance, sd = laplace_reference(x, y)
        reference = posterior_mean_reference(x, y, mode, covariance)
        with_variate = subsampled.with_control_variate(jnp.asarray(mode, jnp.float32))
        contenders = {
            "probinf_subsampled": probinf_contender(subsampled, optimizer),
            "numpyro_subsampled": numpyro_contender(x, y, optimizer),
            "probinf_control_variate": probinf_contender(with_variate, optimizer),
            "probinf_full_data": probinf_contender(full, optimizer),
            "hand_written_subsampled": hand_written_contender(x, y, optimizer),
        }
        timing = compare(contenders, rounds=7, warmup=1, ratios=[
            ("probinf_subsampled", "numpyro_subsampled"),
            ("probinf_control_variate", "numpyro_subsampled"),
            ("probinf_full_data", "probinf_subsampled"),
            ("probinf_subsampled", "hand_written_subsampled")])
        per_step = {name: summary["median_s"] / STEPS_PER_CALL
                    for name, summary in timing["contenders"].items()}
        entry = {"timing": timing, "median_s_per_step": per_step,
                 "laplace_reference": {"mode": mode, "sd": sd},
                 "posterior_mean_reference": reference}
        update_results(args.out, ["sizes", str(num_rows)], entry)
        print(f"N={num_rows}: s/step " + ", ".join(f"{k} {v * 1e3:.3f} ms"
                                                    for k, v in per_step.items()), flush=True)
        for label, target, control_variate in (("default_fit", subsampled, True),
                                               ("plain_fit", subsampled, False),
                                               ("full_data_fit", full, False)):
            entry[label] = accuracy(target, reference["mean"], mode, sd,
                                    control_variate=control_variate, seed=0)
            update_results(args.out, ["sizes", str(num_rows)], entry)
            print(f"  {label}: {entry[label]}", flush=True)
    report = update_results(args.out, "complete", True)
    steps = {n: report["sizes"][str(n)]["median_s_per_step"] for n in sizes}
    first, last = str(sizes[0]), str(sizes[-1])
    summary = {
        "subsampled_step_growth": steps[sizes[-1]]["probinf_subsampled"]
        / steps[sizes[0]]["probinf_subsampled"],
        "control_variate_step_growth": steps[sizes[-1]]["probinf_control_variate"]
        / steps[sizes[0]]["probinf_control_variate"],
        "full_data_step_growth": steps[sizes[-1]]["probinf_full_data"]
        / steps[sizes[0]]["probinf_full_data"],
        "hand_written_step_growth": steps[sizes[-1]]["hand_written_subsampled"]
        / steps[sizes[0]]["hand_written_subsampled"],
        "size_ratio": sizes[-1] / sizes[0],
        "from_to": [first, last],
        "probinf_over_numpyro_per_step": {
            str(n): steps[n]["probinf_subsampled"] / steps[n]["numpyro_subsampled"]
            for n in sizes},
    }
    update_results(args.out, "summary", summary)
    print(summary)
    sharded_vi(args.out)
    if not args.no_em:
        sharded_em(args.out, directory, largest_debd(directory))


if __name__ == "__main__":
    probinf.xla_cpu_workaround()
    sys.exit(main())

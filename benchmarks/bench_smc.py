"""Benchmark probinf.smc against blackjax on the same problems, in the same process.

1. Adaptive tempered SMC on a Bayesian logistic regression (1,000 particles, HMC moves
   with the same step size, integration steps and number of moves, systematic
   resampling, target ESS 0.5) against ``blackjax.adaptive_tempered_smc``: wall time,
   the spread of log Z over repeats, and the error against an independent reference
   log Z (importance sampling from a Laplace approximation, 400,000 draws).
2. Bootstrap particle-filter throughput (particle-steps per second) over N and T, ours
   against the same filter written directly with blackjax's systematic resampling.
3. Kalman filter + RTS smoother: parallel (``lax.associative_scan``) against sequential
   (``lax.scan``) as T grows to 1e5.

Timing: :func:`benchmarks.timing.compare` (contenders alternated call by call, the order
rotated each round, one untimed warm-up round, >= 7 timed rounds; every round time, the
spread and the load averages are in the JSON); ``first_call_s`` is one separate call before
that (compilation + run). Both libraries run in this process, so both run under the XLA
flags of ``machine.xla_flags`` (probinf's XLA:CPU workaround unless ``--no-xla-workaround``).
The results file is rewritten after each completed unit (the tempered comparison, each
filter row, each Kalman row), so a crash keeps what was measured.

Run: ``python benchmarks/bench_smc.py [--quick] [--rounds N] [--no-xla-workaround]``;
writes ``benchmarks/results/smc.json``; ``--table`` prints docs/smc.md's tables from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import probinf
from probinf import smc

try:
    from benchmarks.results_io import milliseconds, update_results
    from benchmarks.timing import compare
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from results_io import milliseconds, update_results
    from timing import compare

RESULTS = pathlib.Path(__file__).resolve().parent / "results" / "smc.json"
WARMUP = 1  # untimed round-robin rounds after each contender's first call


def first_call_seconds(fn):
    """Seconds of one call of ``fn`` (compilation + run when it is the first)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def round_robin(variants, rounds):
    """Each variant's first call (timed alone), then :func:`compare` of all of them."""
    first = {name: first_call_seconds(fn) for name, fn in variants.items()}
    timing = compare(variants, rounds=rounds, warmup=WARMUP)
    return first, timing


def counting(fn, keys):
    """``fn(keys[i])`` on the i-th call: every call gets fresh keys (index 0 is the first call)."""
    counter = itertools.count()
    return lambda: fn(keys[next(counter)])


# --- 1. tempered SMC on Bayesian logistic regression -----------------------------------------

def logistic_regression_problem(num_obs=250, dim=10, prior_scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.ones((num_obs, 1)), rng.normal(size=(num_obs, dim - 1))], axis=1)
    true_beta = rng.normal(size=dim) * 0.8
    y = (rng.uniform(size=num_obs) < 1 / (1 + np.exp(-x @ true_beta))).astype(np.float32)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)

    def log_prior(beta):
        return jnp.sum(jax.scipy.stats.norm.logpdf(beta, 0.0, prior_scale))

    def log_likelihood(beta):
        logits = x @ beta
        return jnp.sum(y * logits - jnp.logaddexp(0.0, logits))

    return x, y, log_prior, log_likelihood, dim, prior_scale


def laplace_importance_log_z(log_prior, log_likelihood, dim, num_draws=400_000, seed=1):
    """Independent reference: importance sampling from a widened Laplace approximation."""
    log_post = lambda b: log_prior(b) + log_likelihood(b)
    beta = jnp.zeros(dim)
    grad, hess = jax.grad(log_post), jax.hessian(log_post)
    for _ in range(50):  # Newton's method on a strictly concave log posterior
        beta = beta - jnp.linalg.solve(hess(beta), grad(beta))
    cov = 1.5 * jnp.linalg.inv(-hess(beta))  # widened so the weights have light tails
    chol = jnp.linalg.cholesky(cov)
    draws = beta + jax.random.normal(jax.random.key(seed), (num_draws, dim)) @ chol.T
    log_q = jax.scipy.stats.multivariate_normal.logpdf(draws, beta, cov)
    log_w = np.asarray(jax.lax.map(log_post, draws, batch_size=4096) - log_q, np.float64)
    peak = log_w.max()
    w = np.exp(log_w - peak)
    log_z = float(peak + np.log(w.mean()))
    standard_error = float(w.std() / w.mean() / np.sqrt(num_draws))  # of log Z, delta method
    return log_z, standard_error


def bench_tempered(rounds, num_particles=1000, num_mcmc_steps=10, num_integration_steps=10,
                   step_size=0.05):
    import blackjax

    x, y, log_prior, log_likelihood, dim, prior_scale = logistic_regression_problem()
    log_z_ref, log_z_ref_se = laplace_importance_log_z(log_prior, log_likelihood, dim)
    prior = probinf.MeanFieldGaussian.init(dim, scale=prior_scale)
    target = probinf.from_logdensity(lambda b: log_prior(b) + log_likelihood(b), dim)
    calls_before_timed = 1 + WARMUP  # the first call and the warm-up round
    keys = jax.random.split(jax.random.key(42), calls_before_timed + rounds)

    # blackjax: the whole adaptive loop compiled as one lax.while_loop (its fastest form).
    algorithm = blackjax.adaptive_tempered_smc(
        log_prior, log_likelihood, blackjax.hmc.build_kernel(), blackjax.hmc.init,
        # A leading axis of 1 marks a parameter shared by all particles (blackjax convention).
        {"step_size": jnp.array([step_size]), "inverse_mass_matrix": jnp.ones((1, dim)),
         "num_integration_steps": jnp.array([num_integration_steps])},
        blackjax.smc.resampling.systematic, 0.5, num_mcmc_steps=num_mcmc_steps,
    )

    @jax.jit
    def blackjax_run(key):
        key_init, key_loop = jax.random.split(key)
        particles = prior.sample(key_init, num_particles)
        state = algorithm.init(particles)

        def cond(carry):
            return carry[0].tempering_param < 1.0

        def body(carry):
            state, log_z, stages, k = carry
            k, sub = jax.random.split(k)
            state, info = algorithm.step(sub, state)
            return state, log_z + info.log_likelihood_increment, stages + 1, k

        state, log_z, stages, _ = jax.lax.while_loop(cond, body, (state, 0.0, 0, key_loop))
        # blackjax ends on weighted particles (it reweights after moving).
        return state.weights @ state.particles, log_z, stages, None

    def ours(tune):
        def run(key):
            result = smc.tempered_smc(
                key, target, num_particles, reference=prior, kernel="hmc",
                num_mcmc_steps=num_mcmc_steps, num_integration_steps=num_integration_steps,
                step_size=step_size, tune=tune, resampling="systematic", target_ess=0.5,
            )
            return (result.particles.mean(0), result.log_evidence, result.num_stages,
                    result.acceptance_rates)
        return run

    runs = {"blackjax": blackjax_run, "probinf": ours(False), "probinf_tuned": ours(True)}
    outputs = {name: [] for name in runs}

    def recorded(run, store):
        def call(key):
            out = run(key)
            store.append(out)
            return out[1]
        return call

    variants = {name: counting(recorded(run, outputs[name]), keys) for name, run in runs.items()}
    first, timing = round_robin(variants, rounds)
    rows = {}
    for name in runs:
        timed_outputs = outputs[name][calls_before_timed:]  # the timed rounds' fresh keys
        log_z = np.array([float(o[1]) for o in timed_outputs])
        means = np.stack([np.asarray(o[0]) for o in timed_outputs])
        stages = [int(o[2]) for o in timed_outputs]
        per_call = timing["contenders"][name]
        rows[name] = {
            "first_call_s": first[name],
            "median_s": per_call["median_s"],
            "min_s": per_call["min_s"],
            "times_s": per_call["times_s"],
            "log_z_mean": float(log_z.mean()),
            "log_z_sd": float(log_z.std(ddof=1)),
            "log_z_error_vs_reference": float(log_z.mean() - log_z_ref),
            "log_z_rmse_vs_reference": float(np.sqrt(np.mean((log_z - log_z_ref) ** 2))),
            "num_stages": stages,
            "median_s_per_stage": per_call["median_s"] / float(np.mean(stages)),
            "posterior_mean_sd_over_repeats_max": float(means.std(0, ddof=1).max()),
        }
        if name.startswith("probinf"):
            acc = np.concatenate([np.asarray(o[3]) for o in timed_outputs])
            rows[name]["mean_acceptance_rate"] = float(np.nanmean(acc))
        print(name, {k: v for k, v in rows[name].items() if k != "times_s"}, flush=True)
    return {
        "problem": f"Bayesian logistic regression, {x.shape[0]} observations, dim {dim}, "
                   f"N(0, {prior_scale}^2) prior",
        "settings": {"num_particles": num_particles, "kernel": "HMC", "num_mcmc_steps": num_mcmc_steps,
                     "num_integration_steps": num_integration_steps, "step_size": step_size,
                     "inverse_mass_matrix": "identity", "resampling": "systematic",
                     "target_ess": 0.5, "rounds": rounds},
        "timing": timing,
        "reference_log_z": log_z_ref,
        "reference_log_z_standard_error": log_z_ref_se,
        "reference_method": "importance sampling from the Laplace approximation (covariance x1.5), 400k draws",
        "results": rows,
        "time_ratio_probinf_over_blackjax": rows["probinf"]["median_s"] / rows["blackjax"]["median_s"],
        "time_ratio_probinf_tuned_over_blackjax": rows["probinf_tuned"]["median_s"] / rows["blackjax"]["median_s"],
        "time_ratio_per_stage_probinf_over_blackjax": (rows["probinf"]["median_s_per_stage"]
                                                       / rows["blackjax"]["median_s_per_stage"]),
        "per_stage_note": "median_s_per_stage = median_s / the mean number of stages over the "
                          "timed rounds: the two libraries choose different numbers of stages",
        "stage_order": "probinf: choose the next temperature on the current cloud, reweight, resample, "
                       "move (the textbook order); blackjax: resample, move at the current temperature, "
                       "then reweight with an increment chosen on the cloud before that move, so the "
                       "two choose different schedules (different numbers of stages) from the same ESS rule",
        "note": "'probinf' runs the identical kernel (tune=False: fixed step size, identity mass); "
                "'probinf_tuned' is the default (cloud-whitened coordinates, step size adapted).",
    }


# --- 2. particle-filter throughput -----------------------------------------------------------

def pf_model(num_steps):
    model = smc.LinearGaussianSSM(jnp.zeros(1), jnp.eye(1), 0.9 * jnp.eye(1), 0.5 * jnp.eye(1),
                                  jnp.eye(1), 0.3 * jnp.eye(1), jnp.zeros((num_steps, 1)))
    _, y = model.simulate(jax.random.key(0), num_steps)
    return model.with_observations(y)


def blackjax_bootstrap_filter(model, num_particles):
    """The same bootstrap filter, on the same model functions, written directly as a
    ``lax.scan`` around blackjax's systematic resampling (resampling at every step)."""
    from blackjax.smc.resampling import systematic

    @jax.jit
    def run(key):
        key_init, key_loop = jax.random.split(key)
        x = model.sample_initial(key_init, num_particles)
        log_w = model.log_observation(0, x)
        log_z = jax.scipy.special.logsumexp(log_w) - math.log(num_particles)

        def step(carry, t):
            x, log_w, log_z = carry
            k1, k2 = jax.random.split(jax.random.fold_in(key_loop, t))
            x = x[systematic(k1, jax.nn.softmax(log_w), num_particles)]
            x = model.sample_transition(k2, t, x)
            log_w = model.log_observation(t, x)
            log_z = log_z + jax.scipy.special.logsumexp(log_w) - math.log(num_particles)
            return (x, log_w, log_z), None

        (_, _, log_z), _ = jax.lax.scan(step, (x, log_w, log_z), jnp.arange(1, model.num_steps))
        return log_z

    return run


def bench_filter(sizes, rounds, out=None):
    rows = []
    for num_particles, num_steps in sizes:
        model = pf_model(num_steps)
        fk = smc.Bootstrap(model)
        keys = jax.random.split(jax.random.key(7), 1 + WARMUP + rounds)
        peer = blackjax_bootstrap_filter(model, num_particles)

        def ours(threshold, fk=fk, num_particles=num_particles):
            return lambda key: smc.particle_filter(
                key, fk, num_particles, ess_threshold=threshold).log_evidence

        def ours_in_jit(threshold, fk=fk, num_particles=num_particles):
            # As the peer runs: one jitted function of the key, the model closed over.
            return jax.jit(lambda key: smc.particle_filter(
                key, fk, num_particles, ess_threshold=threshold).log_evidence)

        variants = {name: counting(fn, keys) for name, fn in {
            "probinf_always_resample": ours(1.0),
            "probinf_ess_0.5": ours(0.5),
            "probinf_always_resample_in_jit": ours_in_jit(1.0),
            "probinf_ess_0.5_in_jit": ours_in_jit(0.5),
            "blackjax_resampling_scan": peer,
        }.items()}
        first, timing = round_robin(variants, rounds)
        row = {"num_particles": num_particles, "num_steps": num_steps, "timing": timing}
        for name in variants:
            median = timing["contenders"][name]["median_s"]
            row[name] = {"first_call_s": first[name], "median_s": median,
                         "min_s": timing["contenders"][name]["min_s"],
                         "particle_steps_per_s": num_particles * num_steps / median}
        peer_s = row["blackjax_resampling_scan"]["median_s"]
        row["time_ratio_probinf_always_over_blackjax"] = row["probinf_always_resample"]["median_s"] / peer_s
        row["time_ratio_probinf_always_in_jit_over_blackjax"] = (
            row["probinf_always_resample_in_jit"]["median_s"] / peer_s)
        print({k: v for k, v in row.items() if k != "timing"}, flush=True)
        rows.append(row)
        if out is not None:
            update_results(out, ["particle_filter_throughput", "rows"], rows)
    return {
        "model": "bootstrap filter, 1-d linear-Gaussian state-space model, systematic resampling",
        "peer": "the same filter written as a lax.scan on blackjax.smc.resampling.systematic "
                "(blackjax has no particle-filter API); it resamples at every step",
        "variants": "probinf_*: smc.particle_filter called directly (input checks, equinox "
                    "dispatch of the model pytree, failure check on the result); *_in_jit: "
                    "the same call inside jax.jit of a function of the key, as the peer runs",
        "rows": rows,
    }


# --- 3. Kalman: parallel vs sequential --------------------------------------------------------

def kalman_model(num_steps, seed=0):
    dx = 4
    f = 0.95 * jnp.eye(dx) + 0.05 * jnp.eye(dx, k=1)
    model = smc.LinearGaussianSSM(jnp.zeros(dx), jnp.eye(dx), f, 0.1 * jnp.eye(dx),
                                  jnp.eye(2, dx), 0.5 * jnp.eye(2), jnp.zeros((num_steps, 2)))
    _, y = model.simulate(jax.random.key(seed), num_steps)
    return model.with_observations(y)


def bench_kalman(lengths, rounds, out=None):
    rows = []
    for num_steps in lengths:
        model = kalman_model(num_steps)
        row = {"num_steps": num_steps}
        outputs = {}

        def smoother(method, model=model, outputs=outputs):
            def fn():
                result = smc.rts_smoother(model, method)
                outputs[method] = result
                return result.smoothed_means
            return fn

        first, timing = round_robin({m: smoother(m) for m in ("sequential", "parallel")}, rounds)
        row["timing"] = timing
        for method in ("sequential", "parallel"):
            row[method] = {"first_call_s": first[method],
                           "median_s": timing["contenders"][method]["median_s"],
                           "min_s": timing["contenders"][method]["min_s"]}
        row["max_abs_difference_smoothed_means"] = float(
            jnp.max(jnp.abs(outputs["parallel"].smoothed_means - outputs["sequential"].smoothed_means)))
        row["log_evidence_relative_difference"] = float(
            abs(outputs["parallel"].log_evidence - outputs["sequential"].log_evidence)
            / abs(outputs["sequential"].log_evidence))
        row["time_ratio_parallel_over_sequential"] = row["parallel"]["median_s"] / row["sequential"]["median_s"]
        print({k: v for k, v in row.items() if k != "timing"}, flush=True)
        rows.append(row)
        if out is not None:
            update_results(out, ["kalman_parallel_vs_sequential", "rows"], rows)
    return {"model": "4-d state, 2-d observations; filter + RTS smoother", "rows": rows}


def machine():
    import blackjax

    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "load_average_at_start": os.getloadavg(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__, "blackjax": blackjax.__version__,
                     "probinf": probinf.__version__, "numpy": np.__version__},
    }


def _spread(timing: dict) -> str:
    """The largest relative interquartile range over a comparison's contenders, in percent."""
    return f"{100 * max(c['relative_iqr'] for c in timing['contenders'].values()):.0f} %"


def markdown_table(report: dict) -> str:
    """The three result tables of docs/smc.md (tempered SMC, particle filter, Kalman), from ``smc.json``."""
    tempered = report["tempered_smc_vs_blackjax"]
    rows = tempered["results"]
    peer = rows["blackjax"]
    lines = ["| tempered SMC | median time | stages (mean) | per stage | time / blackjax | "
             "per stage / blackjax | log Z error, mean | RMSE | sd over repeats |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("probinf", "probinf_tuned", "blackjax"):
        row = rows[name]
        lines.append("| " + " | ".join([
            f"`{name}`", f"{milliseconds(row['median_s'])} ms", f"{np.mean(row['num_stages']):.1f}",
            f"{milliseconds(row['median_s_per_stage'])} ms", f"{row['median_s'] / peer['median_s']:.2f}",
            f"{row['median_s_per_stage'] / peer['median_s_per_stage']:.2f}",
            f"{row['log_z_error_vs_reference']:+.3f}", f"{row['log_z_rmse_vs_reference']:.3f}",
            f"{row['log_z_sd']:.3f}"]) + " |")
    lines += ["", "| N | T | probinf, direct (ms) | probinf in `jax.jit` (ms) | blackjax-resampling "
              "scan (ms) | direct / peer | in jit / peer | ESS 0.5, direct (ms) | ESS 0.5, in jit (ms) "
              "| spread (IQR) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["particle_filter_throughput"]["rows"]:
        peer_s = row["blackjax_resampling_scan"]["median_s"]
        lines.append("| " + " | ".join([
            f"{row['num_particles']:,}", f"{row['num_steps']:,}",
            milliseconds(row["probinf_always_resample"]["median_s"]),
            milliseconds(row["probinf_always_resample_in_jit"]["median_s"]), milliseconds(peer_s),
            f"{row['probinf_always_resample']['median_s'] / peer_s:.2f}",
            f"{row['probinf_always_resample_in_jit']['median_s'] / peer_s:.2f}",
            milliseconds(row["probinf_ess_0.5"]["median_s"]), milliseconds(row["probinf_ess_0.5_in_jit"]["median_s"]),
            _spread(row["timing"])]) + " |")
    lines += ["", "| T (Kalman) | sequential (ms) | parallel (ms) | parallel / sequential | "
              "max difference of smoothed means | spread (IQR) |", "|---:|---:|---:|---:|---:|---:|"]
    for row in report["kalman_parallel_vs_sequential"]["rows"]:
        lines.append("| " + " | ".join([
            f"{row['num_steps']:,}", milliseconds(row["sequential"]["median_s"]), milliseconds(row["parallel"]["median_s"]),
            f"{row['time_ratio_parallel_over_sequential']:.2f}",
            f"{row['max_abs_difference_smoothed_means']:.1e}", _spread(row["timing"])]) + " |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--table", action="store_true", help="print the docs tables of --out and exit")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--rounds", type=int, default=7, help="timed round-robin rounds (>= 7)")
    parser.add_argument("--no-xla-workaround", action="store_true",
                        help="do not call probinf.xla_cpu_workaround() (both libraries then run "
                             "without its XLA flag)")
    args = parser.parse_args()
    if args.rounds < 7:
        parser.error(f"--rounds: expected >= 7, got {args.rounds}")
    out = pathlib.Path(args.out)
    if args.table:
        print(markdown_table(json.loads(out.read_text())), end="")
        return
    info = machine()
    report = {
        "machine": info,
        "gpu": "no GPU was available to this run; CPU figures only",
        "notes": "Timings: benchmarks/timing.compare, round-robin over the contenders of each "
                 "comparison (one untimed warm-up round, then `rounds` timed rounds; all round "
                 "times under `timing`); first_call_s (compilation + run) is a separate call "
                 "before that. Ours and the peer ran in one process, under machine.xla_flags. "
                 "See the load averages for how busy the 2 cores were.",
        "complete": False,
    }
    update_results(out, [], report, fresh=True)
    if args.quick:
        tempered = bench_tempered(rounds=args.rounds, num_particles=100)
        update_results(out, "tempered_smc_vs_blackjax", tempered)
        filters = bench_filter([(100, 100), (1000, 100)], args.rounds, out)
        update_results(out, "particle_filter_throughput", filters)
        kalman = bench_kalman([100, 1000], args.rounds, out)
    else:
        tempered = bench_tempered(rounds=max(args.rounds, 8))
        update_results(out, "tempered_smc_vs_blackjax", tempered)
        sizes = [(100, 100), (1_000, 100), (10_000, 100), (100_000, 100), (1_000_000, 100),
                 (1_000, 1_000), (1_000, 10_000), (10_000, 10_000)]
        filters = bench_filter(sizes, args.rounds, out)
        update_results(out, "particle_filter_throughput", filters)
        kalman = bench_kalman([100, 1_000, 10_000, 100_000], args.rounds, out)
    info["load_average_at_end"] = os.getloadavg()
    report.update({"machine": info, "tempered_smc_vs_blackjax": tempered,
                   "particle_filter_throughput": filters, "kalman_parallel_vs_sequential": kalman,
                   "complete": True})
    update_results(out, [], report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    if "--no-xla-workaround" not in sys.argv[1:]:
        from probinf import xla_cpu_workaround

        xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

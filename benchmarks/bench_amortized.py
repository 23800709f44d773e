"""Amortized inference benchmark: Distribution Transformer vs NPE (flows) vs NUTS (numpyro), and sbi.

Per task: accuracy (mean KL(exact || q) where the posterior is known; C2ST against
reference draws otherwise — exact draws for two_moons, grid draws for SLCP (see
``SLCP.reference_posterior_samples``), NUTS draws for logistic regression) and time per posterior for the DT, our NPE and NUTS, all in this
process on the same simulated data sets. Where the ``sbi`` peer venv exists
(``python benchmarks/peers.py --only sbi``: torch CPU + sbi, or ``SBI_PYTHON``), sbi's NPE
runs on the same simulations
(same budget) in a subprocess and is scored by the same C2ST.

Usage: ``python benchmarks/bench_amortized.py [--quick] [--out PATH]``.
Writes ``benchmarks/results/amortized.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from amortized import DistributionTransformer, c2st, default_optimizer, train, train_npe
from amortized.tasks import (
    SLCP,
    ConjugateGaussian,
    GaussianLinear,
    InverseGammaVariance,
    LogisticRegression,
    TwoMoons,
)

try:
    from benchmarks.peers import missing_peer_message, peer_python
    from benchmarks.results_io import write_results
    from benchmarks.timing import compare
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from peers import missing_peer_message, peer_python
    from results_io import write_results
    from timing import compare

ROOT = pathlib.Path(__file__).resolve().parents[1]
SBI_PYTHON = peer_python("sbi")
SBI_MAX_EPOCHS: int | None = None
NUM_REFERENCE = 2000
TIMING_ROUNDS = 15


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("jax", "jaxlib", "equinox", "optax", "numpyro", "probinf"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def take(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)


def kl_to_exact(task, exact_fn, log_q_fn, batch, key, num_samples=2000):
    """Mean over the batch of KL(exact || q), with q given by its log density."""

    @eqx.filter_jit
    def run(batch, key):
        def one(prior, y, m, k):
            exact = exact_fn(prior, y, m)
            z = exact.sample(k, num_samples)
            return jnp.mean(exact.log_prob(z) - log_q_fn(z, prior, y, m))

        return jax.vmap(one)(batch.prior, batch.observations, batch.mask,
                             jax.random.split(key, batch.theta.shape[0]))

    values = np.asarray(run(batch, key), np.float64)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "standard_error": float(values.std() / np.sqrt(values.size))}


def nuts_runner(task, num_warmup, num_samples, num_chains):
    """A numpyro MCMC object reused across data sets (compiled once per shape)."""
    from numpyro.infer import MCMC, NUTS

    return MCMC(NUTS(task.numpyro_model), num_warmup=num_warmup, num_samples=num_samples,
                num_chains=num_chains, chain_method="sequential", progress_bar=False, jit_model_args=True)


def run_nuts(mcmc, key, prior, observations, mask):
    mcmc.run(key, prior, observations, mask)
    return np.asarray(mcmc.get_samples()["theta"])


def run_sbi(name, train_theta, train_x, test_x, num_samples, workdir):
    """sbi's NPE (default MAF) on the same simulations, in the peer venv."""
    if SBI_PYTHON is None:
        return None
    data = pathlib.Path(workdir) / f"{name}_sbi_in.npz"
    out = pathlib.Path(workdir) / f"{name}_sbi_out.npz"
    np.savez(data, theta=train_theta, x=train_x, x_test=test_x, num_samples=num_samples)
    code = (
        "import sys, time, numpy as np, torch, sbi\n"
        "from sbi.inference import NPE\n"
        "torch.manual_seed(0)\n"
        "d = np.load(sys.argv[1])\n"
        "theta = torch.tensor(d['theta'], dtype=torch.float32); x = torch.tensor(d['x'], dtype=torch.float32)\n"
        "start = time.perf_counter()\n"
        "inference = NPE()\n"
        "max_epochs = int(sys.argv[3])\n"
        "kwargs = {'max_num_epochs': max_epochs} if max_epochs > 0 else {}\n"
        "inference.append_simulations(theta, x).train(show_train_summary=False, **kwargs)\n"
        "train_seconds = time.perf_counter() - start\n"
        "posterior = inference.build_posterior()\n"
        "samples, times = [], []\n"
        "for xo in d['x_test']:\n"
        "    t = time.perf_counter()\n"
        "    s = posterior.sample((int(d['num_samples']),), x=torch.tensor(xo, dtype=torch.float32), show_progress_bars=False)\n"
        "    times.append(time.perf_counter() - t); samples.append(s.numpy())\n"
        "np.savez(sys.argv[2], samples=np.stack(samples), train_seconds=train_seconds, sample_seconds=np.median(times),\n"
        "         version=sbi.__version__, torch_version=torch.__version__)\n"
    )
    proc = subprocess.run([str(SBI_PYTHON), "-c", code, str(data), str(out), str(SBI_MAX_EPOCHS or 0)],
                          capture_output=True, text=True,
                          timeout=3600, env={**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())})
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    result = np.load(out)
    return {"samples": result["samples"], "train_seconds": float(result["train_seconds"]),
            "sample_seconds": float(result["sample_seconds"]), "version": str(result["version"]),
            "torch_version": str(result["torch_version"])}


def benchmark_task(name, task, *, key, dt_options, dt_steps, npe_sims, num_test, reference, quick, workdir,
                   num_c2st=3, final_fraction=0.05):
    print(f"\n=== {name}", flush=True)
    k_model, k_train, k_npe, k_test, k_eval, k_ref, k_c2st = jax.random.split(key, 7)
    out = {"task": name, "dim": task.dim, "obs_dim": task.obs_dim, "max_observations": task.max_observations}

    model = DistributionTransformer(key=k_model, **dt_options, **task.model_options())
    optimizer = default_optimizer(dt_steps, 2e-3, final_fraction)
    trained = train(model, task, key=k_train, steps=dt_steps, batch_size=128, optimizer=optimizer, progress=False)
    dt = trained.model
    print(f"DT trained in {trained.seconds:.1f} s, final NLL {trained.losses[-100:].mean():.3f}", flush=True)
    out["dt"] = {"options": dt_options, "steps": dt_steps, "batch_size": 128,
                 "optimizer": f"default_optimizer: peak learning rate 2e-3, final fraction {final_fraction}",
                 "simulations_seen": dt_steps * 128, "train_seconds": trained.seconds,
                 "final_nll": float(trained.losses[-100:].mean())}

    npe_options = dict(num_simulations=npe_sims, max_epochs=30 if quick else 100, patience=10, progress=False)
    npe = train_npe(k_npe, task, **npe_options)
    print(f"NPE trained in {npe.seconds:.1f} s ({npe.num_epochs} epochs)", flush=True)
    out["npe"] = {"simulations": npe_sims, "train_seconds": npe.seconds, "epochs": npe.num_epochs,
                  "flow": "coupling neural spline flow (flows.spline_flow)"}
    # With known sign symmetries (SLCP), the same models without them: they must learn the modes.
    learned = {}
    if task.symmetric_axes:
        out["symmetric_axes"] = list(task.symmetric_axes)
        plain_options = {k: v for k, v in task.model_options().items() if k != "symmetric_axes"}
        plain = train(DistributionTransformer(key=k_model, **dt_options, **plain_options), task, key=k_train,
                      steps=dt_steps, batch_size=128, optimizer=optimizer, progress=False)
        learned["dt_without_symmetry"] = (plain.model, {"train_seconds": plain.seconds,
                                                        "final_nll": float(plain.losses[-100:].mean())})
        plain_npe = train_npe(k_npe, task, symmetric_axes=(), **npe_options)
        learned["npe_without_symmetry"] = (plain_npe.posterior, {"train_seconds": plain_npe.seconds,
                                                                 "epochs": plain_npe.num_epochs})
        print(f"without symmetry: DT {plain.seconds:.1f} s, NPE {plain_npe.seconds:.1f} s", flush=True)

    test = task.simulate(k_test, num_test)
    first = (take(test.prior, 0), test.observations[0], test.mask[0])
    sample_dt = eqx.filter_jit(lambda m, k, o: m.update(*o).sample(k, NUM_REFERENCE))
    sample_npe = eqx.filter_jit(lambda p, k, o: p.sample(k, o, NUM_REFERENCE))
    batch_dt = eqx.filter_jit(lambda m, b: jax.vmap(m.update)(b.prior, b.observations, b.mask).means)
    # Our amortized contenders, alternated call by call (benchmarks/timing.py).
    timing = compare({
        "dt_update": lambda: dt(first[0], first[1], first[2]).means,
        "dt_update_and_2000_draws": lambda: sample_dt(dt, k_eval, first),
        "npe_2000_draws": lambda: sample_npe(npe.posterior, k_eval, first),
        f"dt_update_batch_of_{num_test}": lambda: batch_dt(dt, test),
    }, rounds=TIMING_ROUNDS)
    seconds = {name: entry["median_s"] for name, entry in timing["contenders"].items()}
    out["timing"] = timing
    out["dt"]["seconds_per_posterior"] = seconds["dt_update"]
    out["dt"]["seconds_per_posterior_with_2000_draws"] = seconds["dt_update_and_2000_draws"]
    out["npe"]["seconds_per_posterior_with_2000_draws"] = seconds["npe_2000_draws"]
    out["dt"]["seconds_per_posterior_batched"] = seconds[f"dt_update_batch_of_{num_test}"] / num_test

    if reference == "exact":
        exact_fn = task.exact_posterior
        out["dt"]["kl_exact_to_model"] = kl_to_exact(task, exact_fn, lambda z, p, y, m: dt.update(p, y, m).log_prob(z), test, k_eval)
        out["npe"]["kl_exact_to_model"] = kl_to_exact(task, exact_fn, lambda z, p, y, m: npe.posterior.log_prob(z, (p, y, m)), test, k_eval)
        if hasattr(task, "prior_distribution"):
            prior_q = lambda z, p, y, m: task.prior_distribution(p).log_prob(z)  # noqa: E731
        else:
            prior_q = lambda z, p, y, m: p.log_prob(z)  # noqa: E731
        out["prior_kl_exact_to_prior"] = kl_to_exact(task, exact_fn, prior_q, test, k_eval)
        out["kl_num_datasets"] = num_test
        print(f"KL(exact||DT) {out['dt']['kl_exact_to_model']['mean']:.4f}  KL(exact||NPE) "
              f"{out['npe']['kl_exact_to_model']['mean']:.4f}  KL(exact||prior) {out['prior_kl_exact_to_prior']['mean']:.4f}", flush=True)

    # C2ST on a few data sets against reference draws (exact, or NUTS).
    num_c2st = 2 if quick else num_c2st
    chains = 4 if name == "slcp" else 1
    mcmc = nuts_runner(task, 300 if quick else 1000, NUM_REFERENCE // chains, chains)
    c2st_dt, c2st_npe, c2st_nuts, nuts_times = [], [], [], []
    references = []
    for i in range(num_c2st):
        obs = (take(test.prior, i), test.observations[i], test.mask[i])
        k_i = jax.random.fold_in(k_ref, i)
        start = time.perf_counter()
        nuts_draws = run_nuts(mcmc, k_i, *obs)
        nuts_times.append(time.perf_counter() - start)
        if name == "slcp":
            nuts_draws = np.asarray(SLCP.symmetrize(jax.random.fold_in(k_i, 1), jnp.asarray(nuts_draws)))
        if reference == "exact":
            ref = np.asarray(task.exact_posterior(*obs).sample(k_i, NUM_REFERENCE))
        elif reference == "exact_sampler":
            ref = np.asarray(task.reference_posterior_samples(k_i, obs[1], NUM_REFERENCE))
        else:
            ref = nuts_draws
        references.append(ref)
        k_c = jax.random.fold_in(k_c2st, i)
        c2st_dt.append(c2st(k_c, ref, np.asarray(sample_dt(dt, jax.random.fold_in(k_eval, i), obs))))
        c2st_npe.append(c2st(k_c, ref, np.asarray(sample_npe(npe.posterior, jax.random.fold_in(k_eval, i), obs))))
        for variant, (fitted, record) in learned.items():
            sampler = sample_dt if variant.startswith("dt") else sample_npe
            draws = np.asarray(sampler(fitted, jax.random.fold_in(k_eval, i), obs))
            record.setdefault("c2st", []).append(c2st(k_c, ref, draws))
        if reference != "nuts":
            c2st_nuts.append(c2st(k_c, ref, nuts_draws))
    out["c2st"] = {"num_datasets": num_c2st, "reference": reference, "num_draws": NUM_REFERENCE,
                   "dt": c2st_dt, "npe": c2st_npe, "dt_mean": float(np.mean(c2st_dt)), "npe_mean": float(np.mean(c2st_npe))}
    for variant, (_, record) in learned.items():
        record["c2st_mean"] = float(np.mean(record["c2st"]))
        out[variant] = record
    if c2st_nuts:
        out["c2st"]["nuts"] = c2st_nuts
        out["c2st"]["nuts_mean"] = float(np.mean(c2st_nuts))
    if nuts_times:
        # The first run compiles; time the others.
        warm = nuts_times[1:] if len(nuts_times) > 1 else nuts_times
        out["nuts"] = {"seconds_per_posterior": float(np.median(warm)), "first_run_seconds": nuts_times[0],
                       "num_warmup": mcmc.num_warmup, "num_samples": mcmc.num_samples, "num_chains": mcmc.num_chains}
        out["speedup_dt_vs_nuts"] = out["nuts"]["seconds_per_posterior"] / out["dt"]["seconds_per_posterior"]
        out["speedup_dt_with_draws_vs_nuts"] = out["nuts"]["seconds_per_posterior"] / out["dt"]["seconds_per_posterior_with_2000_draws"]
        out["speedup_npe_vs_nuts"] = out["nuts"]["seconds_per_posterior"] / out["npe"]["seconds_per_posterior_with_2000_draws"]
    print(f"C2ST DT {np.mean(c2st_dt):.3f}  NPE {np.mean(c2st_npe):.3f}"
          + (f"  NUTS {np.mean(c2st_nuts):.3f}" if c2st_nuts else "")
          + "".join(f"  {variant} {record['c2st_mean']:.3f}" for variant, (_, record) in learned.items())
          + (f"  | NUTS {out['nuts']['seconds_per_posterior']:.2f} s/posterior, DT {out['dt']['seconds_per_posterior'] * 1e3:.2f} ms" if nuts_times else ""),
          flush=True)

    if name in ("two_moons", "gaussian_linear", "slcp") and SBI_PYTHON is None:
        out["sbi"] = {"skipped": missing_peer_message("sbi")}
        print(f"sbi NPE skipped: {out['sbi']['skipped']}", flush=True)
    elif name in ("two_moons", "gaussian_linear", "slcp"):
        sims = task.simulate(k_npe, npe_sims)  # the same budget (and the same draws as our NPE)
        train_x = np.asarray(sims.observations.reshape(npe_sims, -1))
        test_x = np.asarray(test.observations[:num_c2st].reshape(num_c2st, -1))
        sbi_out = run_sbi(name, np.asarray(sims.theta), train_x, test_x, NUM_REFERENCE, workdir)
        if sbi_out is None or "error" in sbi_out:
            out["sbi"] = sbi_out
        else:
            scores = [c2st(jax.random.fold_in(k_c2st, i), references[i], sbi_out["samples"][i]) for i in range(num_c2st)]
            out["sbi"] = {"version": sbi_out["version"], "torch": sbi_out["torch_version"], "simulations": npe_sims,
                          "max_num_epochs": SBI_MAX_EPOCHS,
                          "density_estimator": "maf (sbi default)", "train_seconds": sbi_out["train_seconds"],
                          "seconds_per_posterior_with_2000_draws": sbi_out["sample_seconds"],
                          "c2st": scores, "c2st_mean": float(np.mean(scores)),
                          "train_time_ratio_sbi_over_ours_npe": sbi_out["train_seconds"] / npe.seconds}
            print(f"sbi NPE: C2ST {np.mean(scores):.3f}, train {sbi_out['train_seconds']:.1f} s", flush=True)
    return out


# The C2ST reference draws, named as docs/amortized.md's task table names them.
_REFERENCE_NAMES = {"exact": "exact draws", "nuts": "NUTS draws", "exact_sampler": "exact draws"}
_GRID_REFERENCE_TASKS = {"slcp"}  # its "exact sampler" is the grid sampler of docs/amortized.md


def markdown_table(report: dict) -> str:
    """The summary table of docs/amortized.md, from ``amortized.json``."""
    lines = ["| task | accuracy metric | DT | NPE (ours) | NUTS | sbi NPE | DT time / posterior | "
             "NUTS time / posterior | NUTS / DT |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in report["tasks"].items():
        c2st = entry["c2st"]
        sbi = f"{entry['sbi']['c2st_mean']:.3f}" if "c2st_mean" in entry.get("sbi", {}) else "—"
        if "kl_exact_to_model" in entry["dt"]:
            # Runs before `kl_num_datasets` was recorded scored 100 data sets (the notes say so).
            count = entry.get("kl_num_datasets", 100)
            lines.append(
                f"| {name} | KL(exact ‖ q), mean of {count} (prior: "
                f"{entry['prior_kl_exact_to_prior']['mean']:.2f}) | "
                f"{entry['dt']['kl_exact_to_model']['mean']:.3f} | "
                f"{entry['npe']['kl_exact_to_model']['mean']:.3f} | — | — | | | |")
        reference = ("grid reference draws" if name in _GRID_REFERENCE_TASKS
                     else _REFERENCE_NAMES[c2st["reference"]])
        metric = f"C2ST vs {reference}, mean of {c2st['num_datasets']}"
        nuts = f"{c2st['nuts_mean']:.3f}" if "nuts_mean" in c2st else "(reference)"
        lines.append(
            f"| {name} | {metric} | {c2st['dt_mean']:.3f} | {c2st['npe_mean']:.3f} | {nuts} | {sbi} | "
            f"{1e3 * entry['dt']['seconds_per_posterior']:.2f} ms | "
            f"{entry['nuts']['seconds_per_posterior']:.2f} s | {entry['speedup_dt_vs_nuts']:,.0f}x |")
        if "dt_without_symmetry" in entry:
            lines.append(
                f"| {name}, symmetry not given | {metric} | {entry['dt_without_symmetry']['c2st_mean']:.3f} | "
                f"{entry['npe_without_symmetry']['c2st_mean']:.3f} | {nuts} | {sbi} | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "amortized.json"))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--merge", action="store_true", help="update the tasks of an existing JSON")
    parser.add_argument("--sbi-max-epochs", type=int, default=None, help="cap sbi's training epochs")
    parser.add_argument("--c2st-datasets", type=int, default=3,
                        help="data sets scored by C2ST per task (sbibm uses 10)")
    parser.add_argument("--table", action="store_true", help="print the docs table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(pathlib.Path(args.out).read_text())), end="")
        return
    quick = args.quick
    small = dict(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2)
    large = dict(d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=3)
    steps = (lambda n: 100) if quick else (lambda n: n)
    sims = 2000 if quick else 10_000
    # (name, task, DT options, DT steps, reference, final learning-rate fraction)
    specs = [
        ("conjugate_gaussian", ConjugateGaussian(2, max_components=2, num_observations=(1, 10)), small, steps(2000), "exact", 0.05),
        ("inverse_gamma_variance", InverseGammaVariance(), small, steps(2000), "exact", 0.05),
        ("gaussian_linear", GaussianLinear(), small, steps(2000), "exact", 0.05),
        ("logistic_regression", LogisticRegression(2), small, steps(2000), "nuts", 0.05),
        ("two_moons", TwoMoons(num_components=10), large, steps(3000), "exact_sampler", 0.05),
        # SLCP's funnel needs component means and scales resolved to 1e-3: raw-observation
        # read-out, and a learning rate that decays nearly to zero (docs/amortized.md).
        ("slcp", SLCP(num_components=10), {**large, "observation_readout": True}, steps(25000), "exact_sampler", 0.002),
    ]
    results = {"benchmark": "amortized", "quick": quick, "machine": machine(), "versions": versions(), "tasks": {}}
    if args.merge and pathlib.Path(args.out).exists():
        previous = json.loads(pathlib.Path(args.out).read_text())
        results["tasks"] = previous.get("tasks", {})
        results["earlier_runs"] = previous.get("earlier_runs", []) + [
            {"machine": previous.get("machine"), "tasks": sorted(previous.get("tasks", {}))}]
    global SBI_MAX_EPOCHS
    SBI_MAX_EPOCHS = args.sbi_max_epochs
    started = time.perf_counter()
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for index, (name, task, options, n_steps, reference, final_fraction) in enumerate(specs):
            if args.only and name not in args.only:
                continue
            try:
                results["tasks"][name] = benchmark_task(
                    name, task, key=jax.random.fold_in(jax.random.key(2025), index), dt_options=options,
                    dt_steps=n_steps, npe_sims=sims, num_test=100 if not quick else 20, reference=reference,
                    quick=quick, workdir=workdir, num_c2st=args.c2st_datasets, final_fraction=final_fraction,
                )
            except Exception as error:  # record and go on: one failing task must not lose the others
                import traceback

                traceback.print_exc()
                results["tasks"][name] = {"error": f"{type(error).__name__}: {error}"}
            _write(path, results)
    results["total_seconds"] = time.perf_counter() - started
    results["notes"] = [
        "DT trains online on fresh simulations (steps x batch); NPE (ours and sbi) uses a fixed simulation budget.",
        "KL(exact || q) is a Monte Carlo estimate with 2000 exact draws per data set (mean over 100 data sets).",
        "C2ST: sbibm's recipe (z-scored, MLP 2x10*dim ReLU, 5-fold CV), our JAX implementation, 2000 vs 2000 draws.",
        "NUTS time per posterior is a warm run (compilation excluded) of the stated warm-up and draws.",
        "SLCP NUTS draws are spread over the four sign-symmetric modes (theta3, theta4 -> -theta3, -theta4).",
        "SLCP reference draws: SLCP.reference_posterior_samples (means integrated out exactly, grid over "
        "theta3..theta5; no MCMC); NUTS is scored against them like every method.",
        "SLCP: 'dt' and 'npe' use the task's known sign symmetries (symmetric_axes); 'dt_without_symmetry' and "
        "'npe_without_symmetry' are the same models left to learn them; sbi's NPE does not use them.",
        "two_moons reference draws are exact (sbibm's construction, infeasible draws rejected).",
        "Times per posterior: benchmarks/timing.py's round-robin timer over our four amortized calls "
        "(each task's 'timing' keeps every round and the load average at its start and end); NUTS's "
        "time per posterior is the median of its warm runs on the C2ST data sets.",
    ]
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    _write(path, results)
    print(f"\nwrote {path} in {results['total_seconds']:.0f} s")


def _write(path: pathlib.Path, results: dict) -> None:
    """After each task: atomically, so a crash keeps the tasks done (benchmarks/results_io.py)."""
    write_results(path, results)


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    sys.exit(main())

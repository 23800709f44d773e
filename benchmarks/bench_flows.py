"""Benchmark: flows (probinf) against flowjax and numpyro's autoguides.

1. RQ-spline coupling flow, the SAME architecture in both libraries (layers, conditioner
   width/depth, bins, interval, permutations, standard-normal base), the same optax
   optimizer object, samples per step and estimator, on U1 (Rezende & Mohamed) and Neal's
   funnel: time per training step and compile time of one compiled lax.scan of the update
   (identical harness for both), the libraries' own training loops, and the final ELBO gap
   log Z - ELBO (log Z exact: quadrature for U1, 0 for the funnel).
2. Eight schools (posteriordb, non-centred): our spline-flow FlowGuide against numpyro's
   AutoIAFNormal and AutoBNAFNormal — time per step, final ELBO, and posterior moments
   against the NUTS reference draws.

Timing: every speed figure comes from :func:`benchmarks.timing.compare` (contenders
alternated call by call, the order rotated each round, warm-up excluded, >= 7 rounds; all
round times, the spread and the load averages are in the JSON). flowjax runs in a worker
subprocess of the same interpreter started without probinf's XLA:CPU workaround flag (see
``xla_cpu_workaround`` in the JSON and benchmarks/README.md): our flows need the flag on
an affected jaxlib, flowjax's users would not set it. Each flowjax timed call is a request
to the worker; the round trip of an empty request is recorded (``ipc_round_trip_s``).

The results file is rewritten after each part (U1, funnel, eight schools), so a crash keeps
what was measured. Eight schools' data ship with the package (``probinf.datasets``); its
NUTS reference draws are posteriordb's, read from ``--data DIR`` (default
``$PROBINF_SHARED_DATA`` or ``../shared/data``), checked before anything runs.

Run: python benchmarks/bench_flows.py [--quick] [--data DIR] [--rounds N]  ->  benchmarks/results/flows.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import flows
import probinf
from probinf import vi
from probinf.xla_workaround import XLA_CPU_FLAG, environ_without_workaround

try:
    from benchmarks.results_io import data_file, update_results
    from benchmarks.timing import compare
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from results_io import data_file, update_results
    from timing import compare

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "flows.json"
EIGHT_SCHOOLS_REFERENCE = ("posteriordb", "eight_schools-eight_schools_noncentered.reference_draws.json.gz")


# --------------------------------------------------------------------------- harness
def make_scan_trainer(loss_fn, optimizer, steps_per_call):
    """A compiled lax.scan of `steps_per_call` updates of `loss_fn(params, static, key)`."""

    def run(params, static, opt_state, key):
        def body(carry, step_key):
            params, opt_state = carry
            loss, grads = eqx.filter_value_and_grad(loss_fn)(params, static, step_key)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (eqx.apply_updates(params, updates), opt_state), loss

        keys = jax.random.split(key, steps_per_call)
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), keys)
        return params, opt_state, losses

    return eqx.filter_jit(run)


def prepare_trainer(model, loss_fn, optimizer, steps_per_call):
    """Compile the scanned trainer once: ``(compile seconds, call)``, ``call()`` runs it."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    trainer = make_scan_trainer(loss_fn, optimizer, steps_per_call)
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = trainer.lower(params, static, opt_state, key).compile()
    compile_s = time.perf_counter() - start
    return compile_s, lambda: compiled(params, static, opt_state, key)[2]


def train_with_trainer(model, loss_fn, optimizer, steps, chunk, key):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    trainer = make_scan_trainer(loss_fn, optimizer, chunk)
    losses = []
    for index in range(steps // chunk):
        params, opt_state, chunk_losses = trainer(params, static, opt_state, jax.random.fold_in(key, index))
        losses.append(np.asarray(chunk_losses))
    return eqx.combine(params, static), np.concatenate(losses)


def elbo_gap(sample_and_log_prob, log_density, log_z, key, n=200_000):
    z, log_q = sample_and_log_prob(key, n)
    log_w = np.asarray(jax.vmap(log_density)(z), np.float64) - np.asarray(log_q, np.float64)
    log_w = log_w[np.isfinite(log_w)] if np.isfinite(log_w).mean() > 0.999 else log_w
    return {"elbo": float(log_w.mean()), "gap": float(log_z - log_w.mean()),
            "gap_standard_error": float(log_w.std() / math.sqrt(log_w.size))}


# --------------------------------------------------------------------------- part 1
def spline_problem(problem, cfg):
    """``(target, log_z, spline interval)`` of U1 or the funnel."""
    if problem == "U1":
        target, log_z = flows.potentials.rezende_mohamed("U1")
        return target, log_z, cfg["bound_u1"]
    target, log_z = flows.potentials.neal_funnel(2)
    return target, log_z, cfg["bound_funnel"]


def spline_optimizer(cfg):
    return optax.adam(optax.cosine_decay_schedule(cfg["learning_rate"], cfg["steps"]))


def flowjax_side(problem, cfg):
    """flowjax's flow and loss for ``problem``, the same architecture as ours (worker side)."""
    import flowjax.bijections as fjb
    import flowjax.distributions as fjd
    from flowjax.flows import coupling_flow as fj_coupling_flow
    from flowjax.train.losses import ElboLoss

    target, log_z, bound = spline_problem(problem, cfg)
    log_density = lambda z: target.log_density(z)
    flow = fj_coupling_flow(
        jax.random.key(1), base_dist=fjd.StandardNormal((2,)),
        transformer=fjb.RationalQuadraticSpline(knots=cfg["bins"] - 1, interval=bound),  # knots = bins - 1
        flow_layers=cfg["layers"], nn_width=cfg["width"], nn_depth=cfg["depth"], invert=False,
    )
    loss = ElboLoss(log_density, num_samples=cfg["samples"], stick_the_landing=True)
    return flow, loss, log_density, log_z


def flowjax_worker():
    """Serve the flowjax side: one JSON request per stdin line, one JSON reply per line.

    Started by :class:`FlowjaxWorker` with the environment minus probinf's XLA flag.
    """
    replies = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # stray prints must not corrupt the replies
    state = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "quit":
                break
            if op == "ping":
                reply = {}
            elif op == "setup":
                import flowjax

                cfg = request["cfg"]
                flow, loss, log_density, log_z = flowjax_side(request["problem"], cfg)
                state.update(cfg=cfg, flow=flow, loss=loss, log_density=log_density, log_z=log_z,
                             optimizer=spline_optimizer(cfg))
                size = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(flow, eqx.is_inexact_array)))
                reply = {"trainable_parameters": int(size), "xla_flags": os.environ.get("XLA_FLAGS", ""),
                         "flowjax_version": getattr(flowjax, "__version__", None) or _version("flowjax"),
                         "versions": {n: _version(n) for n in ("flowjax", "jax", "jaxlib", "equinox", "optax")}}
            elif op == "compile":
                reply = {"compile_s": None}
                reply["compile_s"], state["call"] = prepare_trainer(
                    state["flow"], state["loss"], state["optimizer"], state["cfg"]["timing_steps"])
            elif op == "call":
                jax.block_until_ready(state["call"]())
                reply = {}
            elif op == "native":
                from flowjax.train import fit_to_key_based_loss

                start = time.perf_counter()
                fit_to_key_based_loss(jax.random.key(2), state["flow"], loss_fn=state["loss"],
                                      steps=request["steps"], optimizer=state["optimizer"],
                                      show_progress=False)
                reply = {"native_fit_s_incl_compile": time.perf_counter() - start}
            elif op == "train_eval":
                cfg = state["cfg"]
                trained, losses = train_with_trainer(state["flow"], state["loss"], state["optimizer"],
                                                     cfg["steps"], cfg["chunk"], jax.random.key(3))
                reply = {"final_training_loss": float(np.mean(losses[-100:])),
                         **elbo_gap(lambda k, n, flow=trained: flow.sample_and_log_prob(k, (n,)), state["log_density"],
                                    state["log_z"], jax.random.key(4), request["n_eval"])}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as err:  # the parent records it and skips flowjax's figures
            reply = {"error": f"{type(err).__name__}: {err}"[:2000]}
        replies.write(json.dumps(reply, default=float) + "\n")
        replies.flush()


class FlowjaxWorker:
    """The flowjax side in a subprocess: this file with ``--flowjax-worker``, the same
    interpreter, ``XLA_FLAGS`` without probinf's workaround flag."""

    def __init__(self):
        self.stderr = tempfile.TemporaryFile("w+")
        self.env = environ_without_workaround()
        self.process = subprocess.Popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "--flowjax-worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=self.env)

    def request(self, op, **fields):
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise RuntimeError(f"flowjax worker exited ({self.process.wait()}): {self.stderr.read()[-2000:]}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"flowjax worker, {op}: {reply['error']}")
        return reply

    def round_trip_s(self, n=50):
        seconds = []
        for _ in range(n):
            start = time.perf_counter()
            self.request("ping")
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        self.stderr.close()


def spline_comparison(problem, cfg, rounds, quick, worker):
    target, log_z, bound = spline_problem(problem, cfg)
    log_density = lambda z: target.log_density(z)
    optimizer = spline_optimizer(cfg)  # the same optimizer (and schedule) in both libraries
    ours = flows.spline_flow(jax.random.key(1), 2, num_layers=cfg["layers"], width=cfg["width"],
                             depth=cfg["depth"], num_bins=cfg["bins"], bound=bound)
    objective = vi.ELBO(cfg["samples"], vi.STL())

    def our_loss(params, static, key):
        return objective(key, eqx.combine(params, static), target)

    n_ours = sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(ours, eqx.is_inexact_array)))
    out = {"problem": problem, "log_z": log_z, "spline_interval": bound,
           "trainable_parameters": {"ours": int(n_ours)}, "ours": {}, "flowjax": {}}
    flowjax_error = None
    try:
        if worker is None:
            raise RuntimeError("the flowjax worker could not start")
        setup = worker.request("setup", problem=problem, cfg=cfg)
        out["trainable_parameters"]["flowjax"] = setup["trainable_parameters"]
        out["flowjax_version"] = setup["flowjax_version"]
        out["flowjax"]["process"] = {"xla_flags": setup["xla_flags"], "versions": setup["versions"]}
    except RuntimeError as err:
        flowjax_error = str(err)
        out["flowjax"]["error"] = flowjax_error

    # Compile times: each library's scanned trainer compiled twice (once with --quick),
    # alternately; the minimum.
    compile_s = {"ours": [], "flowjax": []}
    for _ in range(1 if quick else 2):
        seconds, our_call = prepare_trainer(ours, our_loss, optimizer, cfg["timing_steps"])
        compile_s["ours"].append(seconds)
        if flowjax_error is None:
            compile_s["flowjax"].append(worker.request("compile")["compile_s"])
    contenders = {"ours": our_call}
    if flowjax_error is None:
        def flowjax_call():
            worker.request("call")  # returns when the worker has waited for the result

        contenders["flowjax"] = flowjax_call
    timing = compare(contenders, rounds=rounds, warmup=1)
    out["timing"] = timing
    for name in contenders:
        per_call = timing["contenders"][name]
        out[name].update({
            "per_step_ms": 1e3 * per_call["median_s"] / cfg["timing_steps"],
            "per_step_ms_min": 1e3 * per_call["min_s"] / cfg["timing_steps"],
            "per_step_ms_all_rounds": [1e3 * t / cfg["timing_steps"] for t in per_call["times_s"]],
            "compile_s": min(compile_s[name]), "compile_s_all": compile_s[name],
        })
    if flowjax_error is None:
        out["speedup_per_step"] = timing["ratios"]["flowjax/ours"]
        out["speedup_per_step_from_min"] = timing["ratios_of_min"]["flowjax/ours"]
        out["compile_ratio_flowjax_over_ours"] = out["flowjax"]["compile_s"] / out["ours"]["compile_s"]
        out["ipc_round_trip_s"] = worker.round_trip_s()
    else:
        out["speedup_per_step"] = None

    # Native loops: probinf.fit (chunked lax.scan) and flowjax's fit_to_key_based_loss, once
    # each including compilation.
    native_steps = cfg["native_steps"]
    start = time.perf_counter()
    probinf.fit(objective, ours, target, key=jax.random.key(2), steps=native_steps,
                optimizer=optimizer, chunk_size=min(500, native_steps), progress=False)
    out["ours"]["native_fit_s_incl_compile"] = time.perf_counter() - start
    if flowjax_error is None:
        out["flowjax"].update(worker.request("native", steps=native_steps))
    out["native_steps"] = native_steps

    # Accuracy: train both with the same harness, evaluate the ELBO with 200k draws.
    trained_ours, losses_ours = train_with_trainer(ours, our_loss, optimizer, cfg["steps"], cfg["chunk"],
                                                   jax.random.key(3))
    # The training loss estimates -ELBO >= -log Z; a final loss below -log Z exposes an
    # estimator the optimiser has exploited (see docs/flows.md).
    out["ours"]["final_training_loss"] = float(np.mean(losses_ours[-100:]))
    n_eval = 20_000 if quick else 200_000
    out["ours"].update(elbo_gap(lambda k, n: trained_ours.sample_and_log_prob(k, n), log_density, log_z,
                                jax.random.key(4), n_eval))
    if flowjax_error is None:
        out["flowjax"].update(worker.request("train_eval", n_eval=n_eval))
    return out


# --------------------------------------------------------------------------- part 2
def eight_schools_model(sigma, y=None):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("school", sigma.shape[0]):
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0))
        theta = numpyro.deterministic("theta", mu + tau * theta_trans)
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def eight_schools(cfg, rounds, reference_path):
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoBNAFNormal, AutoIAFNormal

    data = probinf.datasets.load_eight_schools()  # the same y and sigma as posteriordb's
    chains = json.loads(gzip.open(reference_path).read())
    reference = {k: np.concatenate([np.asarray(c[k]) for c in chains]) for k in chains[0]}
    names = ["mu", "tau"] + [f"theta[{j + 1}]" for j in range(8)]
    ref = np.column_stack([reference[n] for n in names])
    sigma, y = jnp.asarray(data["sigma"], jnp.float32), jnp.asarray(data["y"], jnp.float32)
    steps, samples = cfg["es_steps"], cfg["es_samples"]
    optimizer = optax.adam(optax.cosine_decay_schedule(cfg["es_learning_rate"], steps))

    def moments(draws):
        ours = np.column_stack([draws["mu"], draws["tau"], draws["theta"]])
        z = (ours.mean(0) - ref.mean(0)) / ref.std(0)
        ratio = ours.std(0) / ref.std(0)
        return {"max_abs_mean_z": float(np.abs(z).max()), "sd_ratio_min": float(ratio.min()),
                "sd_ratio_max": float(ratio.max())}

    results = {}
    # ours: FlowGuide + probinf.fit (its own chunked-scan loop) and the compiled-scan harness,
    # with the default spline flow and with an affine IAF of AutoIAFNormal's size (like for like).
    guide = flows.FlowGuide(eight_schools_model, sigma, model_kwargs={"y": y}, key=jax.random.key(0),
                            num_layers=cfg["es_layers"], width=cfg["es_width"], init_scale=1.0)
    iaf = flows.inverse_autoregressive_flow(
        jax.random.key(0), guide.dim, num_layers=cfg["es_layers"], width=cfg["es_width"], depth=2,
        loc=guide.target.init_position, scale=1.0)
    objective = vi.ELBO(samples)

    def our_loss(params, static, key):
        return objective(key, eqx.combine(params, static), guide.target)

    timing_calls = {}  # timed together, round-robin, after every contender is compiled
    for label, flow in [("ours_spline_flow_guide", guide.flow), ("ours_affine_iaf_guide", iaf)]:
        compile_s, timing_calls[label] = prepare_trainer(flow, our_loss, optimizer, cfg["timing_steps"])
        start = time.perf_counter()
        fitted = probinf.fit(objective, flow, guide.target, key=jax.random.key(1), steps=steps,
                             optimizer=optimizer, chunk_size=min(1000, steps), progress=False)
        wall = time.perf_counter() - start
        # probinf.fit again from several seeds, compiled: its per-step time as users see it
        # after the first call, and the seed-to-seed spread of the final ELBO.
        fit_seconds, elbos = [], []
        for seed in range(cfg["es_seeds"]):
            start = time.perf_counter()
            refit = probinf.fit(objective, flow, guide.target, key=jax.random.key(1 + seed),
                                steps=steps, optimizer=optimizer, progress=False)
            jax.block_until_ready(refit.family)
            fit_seconds.append(time.perf_counter() - start)
            elbos.append(float(-vi.ELBO(100_000)(jax.random.key(2), refit.family, guide.target)))
        results[label] = {
            "compile_s": compile_s, "fit_s_incl_compile": wall,
            "fit_per_step_ms": 1e3 * statistics.median(fit_seconds) / steps,
            "elbo": elbos[0], "elbo_per_seed": elbos, "elbo_mean": float(np.mean(elbos)),
            "elbo_sd_over_seeds": float(np.std(elbos, ddof=1)) if len(elbos) > 1 else 0.0,
            **moments(guide.sample_posterior(jax.random.key(3), 20_000, fitted.family)),
        }

    # numpyro autoguides: jitted lax.scan over svi.update (svi.run re-traces per call).
    numpyro_opt = numpyro.optim.optax_to_numpyro(optimizer)
    for label, make in [("numpyro_AutoIAFNormal", lambda: AutoIAFNormal(
                             eight_schools_model, num_flows=cfg["es_layers"],
                             hidden_dims=[cfg["es_width"], cfg["es_width"]])),
                        ("numpyro_AutoBNAFNormal", lambda: AutoBNAFNormal(
                             eight_schools_model, num_flows=1, hidden_factors=[8, 8]))]:
        autoguide = make()
        svi = SVI(eight_schools_model, autoguide, numpyro_opt, Trace_ELBO(num_particles=samples))
        state = svi.init(jax.random.key(0), sigma, y=y)

        def run(state, n, svi=svi):
            return jax.lax.scan(lambda s, _: svi.update(s, sigma, y=y), state, None, length=n)

        run_timing = jax.jit(run, static_argnums=1)
        start = time.perf_counter()
        compiled = run_timing.lower(state, cfg["timing_steps"]).compile()
        compile_s = time.perf_counter() - start
        timing_calls[label] = lambda c=compiled, s=state: c(s)[1]
        start = time.perf_counter()
        run_full = jax.jit(run, static_argnums=1)
        final_state, _ = run_full(state, steps)
        jax.block_until_ready(final_state)
        wall = time.perf_counter() - start
        params = svi.get_params(final_state)
        elbos = []
        for seed in range(cfg["es_seeds"]):
            seed_state = state if seed == 0 else svi.init(jax.random.key(seed), sigma, y=y)
            seed_params = params if seed == 0 else svi.get_params(run_full(seed_state, steps)[0])
            elbos.append(-float(Trace_ELBO(num_particles=20_000).loss(
                jax.random.key(2), seed_params, eight_schools_model, autoguide, sigma, y=y)))
        elbo = elbos[0]
        draws = autoguide.sample_posterior(jax.random.key(3), params, sample_shape=(20_000,))
        from numpyro.infer.util import Predictive
        det = Predictive(eight_schools_model, posterior_samples=draws, return_sites=["theta"])(
            jax.random.key(4), sigma)
        draws = {k: np.asarray(v) for k, v in {**draws, **det}.items()}
        results[label] = {
            "compile_s": compile_s, "fit_s_incl_compile": wall, "elbo": elbo, "elbo_per_seed": elbos,
            "elbo_mean": float(np.mean(elbos)),
            "elbo_sd_over_seeds": float(np.std(elbos, ddof=1)) if len(elbos) > 1 else 0.0,
            **moments(draws),
        }
    timing = compare(timing_calls, rounds=rounds, warmup=1)
    results["timing"] = timing
    for label, per_call in timing["contenders"].items():
        results[label].update({
            "per_step_ms": 1e3 * per_call["median_s"] / cfg["timing_steps"],
            "per_step_ms_min": 1e3 * per_call["min_s"] / cfg["timing_steps"],
            "per_step_ms_all_rounds": [1e3 * t / cfg["timing_steps"] for t in per_call["times_s"]]})
    for ours_label in ("ours_spline_flow_guide", "ours_affine_iaf_guide"):
        for label in ("numpyro_AutoIAFNormal", "numpyro_AutoBNAFNormal"):
            results[f"speedup_per_step_{ours_label}_vs_{label}"] = (
                results[label]["per_step_ms"] / results[ours_label]["per_step_ms"])
            results[f"speedup_per_step_fit_{ours_label}_vs_{label}"] = (
                results[label]["per_step_ms"] / results[ours_label]["fit_per_step_ms"])
            results[f"elbo_difference_{ours_label}_minus_{label}"] = (
                results[ours_label]["elbo_mean"] - results[label]["elbo_mean"])
    results["settings"] = {"steps": steps, "samples_per_step": samples, "note":
                           "ELBO is on the model's own log density (numpyro's convention for both; "
                           "higher is better); elbo_difference_* compares the means over "
                           f"{cfg['es_seeds']} seeds. Moments (first seed) vs posteriordb NUTS "
                           "reference draws."}
    return results


def _version(name):
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return None


def markdown_table(report: dict) -> str:
    """The two tables of docs/flows.md's benchmark section, from ``flows.json``."""
    lines = ["| problem | per step, ours | per step, flowjax | speed-up | compile, ours / flowjax | "
             "ELBO gap (nats), ours | flowjax |", "|---|---|---|---|---|---|---|"]
    for problem in ("U1", "funnel"):
        row = report[problem]
        ours, peer = row["ours"], row["flowjax"]
        lines.append(
            f"| {problem} (log Z = {row['log_z']:.4f}) | {ours['per_step_ms']:.2f} ms | "
            f"{peer['per_step_ms']:.2f} ms | {row['speedup_per_step']:.2f}x | "
            f"{ours['compile_s']:.1f} s / {peer['compile_s']:.1f} s | {ours['gap']:.4f} | {peer['gap']:.4f} |")
    guides = report["eight_schools"]
    names = {"ours_spline_flow_guide": "ours: FlowGuide (spline, 4 layers x 32)",
             "ours_affine_iaf_guide": "ours: affine IAF (AutoIAFNormal's size)",
             "numpyro_AutoIAFNormal": "numpyro AutoIAFNormal (4 flows, [32, 32])",
             "numpyro_AutoBNAFNormal": "numpyro AutoBNAFNormal"}
    settings = guides["settings"]
    lines += ["", f"Eight schools (non-centred), {settings['steps']:,} Adam steps, "
              f"{settings['samples_per_step']} samples per step; moments against posteriordb's NUTS draws:",
              "", "| guide | per step (compiled scan) | per step (`probinf.fit`) | ELBO, mean ± sd over "
              f"{len(guides['ours_spline_flow_guide']['elbo_per_seed'])} seeds | max abs mean z-score | "
              "sd ratio range |", "|---|---|---|---|---|---|"]
    for key, name in names.items():
        row = guides[key]
        fit = f"{row['fit_per_step_ms']:.3f} ms" if "fit_per_step_ms" in row else "—"
        lines.append(
            f"| {name} | {row['per_step_ms']:.3f} ms | {fit} | {row['elbo_mean']:.3f} ± "
            f"{row['elbo_sd_over_seeds']:.3f} | {row['max_abs_mean_z']:.3f} | "
            f"{row['sd_ratio_min']:.2f}–{row['sd_ratio_max']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--data", default=None,
                        help="folder of the reference data (posteriordb/...); default "
                             "$PROBINF_SHARED_DATA, else ../shared/data beside the checkout")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed round-robin rounds (>= 7; default 7 with --quick, else 15)")
    parser.add_argument("--no-flowjax", action="store_true", help="skip flowjax (no worker)")
    parser.add_argument("--table", action="store_true", help="print the docs tables of --out and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(pathlib.Path(args.out).read_text())), end="")
        return
    quick = args.quick
    try:  # before anything runs
        reference_path = data_file(args.data, *EIGHT_SCHOOLS_REFERENCE,
                                   needed_for="eight schools' NUTS reference draws")
    except FileNotFoundError as err:
        parser.error(str(err))
    rounds = args.rounds if args.rounds is not None else (7 if quick else 15)
    cfg = {
        "layers": 8, "width": 64, "depth": 2, "bins": 8, "bound_u1": 5.0, "bound_funnel": 15.0,
        "samples": 64, "learning_rate": 2e-3,
        "steps": 400 if quick else 4000, "chunk": 200 if quick else 500,
        "timing_steps": 20 if quick else 100, "native_steps": 50 if quick else 500,
        "es_steps": 300 if quick else 3000, "es_samples": 16, "es_learning_rate": 5e-3,
        "es_seeds": 2 if quick else 5,
        "es_layers": 4, "es_width": 32, "rounds": rounds,
    }
    out = pathlib.Path(args.out)
    started = time.perf_counter()
    flags = os.environ.get("XLA_FLAGS", "")
    report = {
        "benchmark": "flows vs flowjax (same RQ-spline coupling architecture) and numpyro autoguides",
        "settings": cfg,
        "machine": {
            "platform": platform.platform(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
            "load_average_at_start": os.getloadavg(),
            "xla_flags": flags,
        },
        "xla_cpu_workaround": {
            "flag": XLA_CPU_FLAG, "in_this_process": XLA_CPU_FLAG in flags,
            "flowjax_process": "a subprocess with XLA_FLAGS minus the flag (see flowjax.process "
                               "in each problem); numpyro's autoguides (eight schools) run in "
                               "this process, under the flag when it is set",
        },
        "versions": {name: _version(name) for name in
                     ("probinf", "jax", "jaxlib", "equinox", "optax", "numpyro", "flowjax")},
        "estimator": "ELBO with the sticking-the-landing gradient (probinf STL / flowjax "
                     "stick_the_landing=True) on U1 and the funnel; plain reparameterisation on eight schools",
        "complete": False,
    }
    update_results(out, [], report, fresh=True)
    worker = None if args.no_flowjax else FlowjaxWorker()
    try:
        for key, problem in (("U1", "U1"), ("funnel", "funnel")):
            report[key] = spline_comparison(problem, cfg, rounds, quick, worker)
            update_results(out, key, report[key])
            print(key, json.dumps({"speedup_per_step": report[key]["speedup_per_step"]}), flush=True)
    finally:
        if worker is not None:
            worker.close()
    report["eight_schools"] = eight_schools(cfg, rounds, reference_path)
    update_results(out, "eight_schools", report["eight_schools"])
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["wall_time_s"] = time.perf_counter() - started
    speedups = [report[k]["speedup_per_step"] for k in ("U1", "funnel")]
    summary = {
        "U1_per_step_ms": {"ours": report["U1"]["ours"]["per_step_ms"],
                           "flowjax": report["U1"]["flowjax"].get("per_step_ms")},
        "U1_speedup": speedups[0],
        "U1_gap": {"ours": report["U1"]["ours"]["gap"], "flowjax": report["U1"]["flowjax"].get("gap")},
        "funnel_speedup": speedups[1],
        "funnel_gap": {"ours": report["funnel"]["ours"]["gap"], "flowjax": report["funnel"]["flowjax"].get("gap")},
        "goal_faster_than_flowjax": (None if None in speedups else bool(min(speedups) > 1)),
        "goal_U1_gap_below_0.02": bool(report["U1"]["ours"]["gap"] <= 0.02),
    }
    report["summary"] = summary
    report["complete"] = True
    update_results(out, [], report)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    if sys.argv[1:] == ["--flowjax-worker"]:
        flowjax_worker()  # no workaround: flowjax as its users run it
    else:
        from probinf import xla_cpu_workaround

        xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
        main()

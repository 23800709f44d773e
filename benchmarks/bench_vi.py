"""Time per gradient step: probinf VI vs numpyro SVI vs genjax.

Same model, same objective, same number of samples, same optimizer (Adam 1e-2),
same guide (a mean-field Gaussian on the model's unconstrained space, with
``scale = exp(log_scale)`` and the same initial values) in every library:

* problems: (a) Bayesian logistic regression, 10 weights, 500 synthetic rows
  (fixed seed); (b) eight schools, non-centred (posteriordb data);
* objectives: ELBO with 1 and 8 samples, IWAE with K = 8 samples
  (numpyro: ``Trace_ELBO(num_particles)`` and ``RenyiELBO(alpha=0, num_particles=8)``
  with an ``AutoDiagonalNormal`` guide; genjax: ADEV gradient estimates, see
  ``settings.names`` in the JSON).

Timings are of compiled code: every library runs ``steps`` optimisation steps
inside one jitted ``jax.lax.scan`` (numpyro's ``svi.run`` re-traces, so its
``svi.update`` is scanned instead), after an ahead-of-time compile that is timed
separately. ``probinf.fit`` itself (chunked compiled loops driven from Python, with its
non-finite checks) is timed as users call it. The in-process contenders are timed with
:func:`benchmarks.timing.compare`: alternated call by call, the order rotated each round,
one untimed warm-up round, ``repeats`` (>= 7) timed rounds; each figure is the median
(and the minimum) of those, with every round time, the spread and the load averages under
``timing`` in the JSON. They share this process and its XLA flags (``machine.xla_flags``:
probinf's XLA:CPU workaround unless ``--no-xla-workaround``).
genjax cannot share jax with probinf (0.10.x needs jax < 0.6; 1.x needs
Python >= 3.12 and a newer jax), so each genjax version runs from its own
virtualenv in a subprocess (this same file, ``--genjax-worker``), with its
versions recorded.

Accuracy: every repeat starts from the same initial guide with fresh keys; each
fitted guide is evaluated with the same large-sample ELBO estimator (probinf's
target density, ``eval_samples`` draws), and libraries are compared by the mean
and spread of that value over the repeats.

The results file is rewritten after each (problem, objective) cell, so a crash keeps what
was measured. Eight schools' data ship with the package (``probinf.datasets``); the
logistic regression data are synthetic: no data folder is read.

Run: ``python benchmarks/bench_vi.py [--quick] [--out benchmarks/results/vi.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from benchmarks.peers import missing_peer_message, peer_python
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from peers import missing_peer_message, peer_python

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "vi.json"
# The peers' own virtualenvs (they cannot share jax with probinf): benchmarks/peers.py.
GENJAX_PYTHONS = {peer: peer_python(peer) for peer in ("genjax", "genjax1")}

LEARNING_RATE = 1e-2
INIT_SCALE = 0.1
CONFIGS = (("elbo", 1), ("elbo", 8), ("iwae", 8))
LOGREG_ROWS, LOGREG_DIM, LOGREG_SEED = 500, 10, 20240615


# --------------------------------------------------------------------------- data


def logistic_regression_data() -> dict[str, np.ndarray]:
    """Synthetic data: x ~ N(0, I), w* ~ N(0, I), y ~ Bernoulli(sigmoid(x @ w*))."""
    rng = np.random.default_rng(LOGREG_SEED)
    x = rng.normal(size=(LOGREG_ROWS, LOGREG_DIM)).astype(np.float32)
    w_true = rng.normal(size=LOGREG_DIM)
    y = (rng.random(LOGREG_ROWS) < 1.0 / (1.0 + np.exp(-(x @ w_true)))).astype(np.float32)
    return {"x": x, "y": y}


def eight_schools_data() -> dict[str, np.ndarray]:
    """The data shipped with probinf (the same y and sigma as posteriordb's eight_schools)."""
    from probinf.datasets import load_eight_schools

    raw = load_eight_schools()
    return {"y": np.asarray(raw["y"], np.float32), "sigma": np.asarray(raw["sigma"], np.float32)}


def timing_summary(seconds: list[float], steps: int) -> dict:
    per_step = [s / steps * 1e6 for s in seconds]
    return {
        "us_per_step_median": statistics.median(per_step),
        "us_per_step_min": min(per_step),
        "us_per_step_all": per_step,
    }


# ---------------------------------------------------------------- genjax workers
#
# Each worker builds, for every configuration, ``grad_fn(key, (loc, log_scale))``
# returning the gradient of the loss (the negative bound); the shared driver scans
# it with the same optax optimizer and times it.


def _genjax010_grad_fns(problem: str, data: dict, dim: int, configs) -> dict:
    """genjax 0.10.x (the ``genjax.vi`` of the PLDI 2024 paper, on jax < 0.6).

    The model is a genjax generative function (its density comes from
    ``model.assess``); each bound is an ADEV expectation whose only random choice is
    one draw of all ``K x dim`` guide coordinates with ADEV's
    ``mv_normal_diag_reparam``. Two genjax 0.10.3 defects rule out the more
    idiomatic forms (see docs/vi-benchmarks.md): ``vi.ELBO``/``vi.IWELBO`` with a
    ``genjax.marginal()`` guide drop log q (``Marginal.random_weighted`` returns
    weight 0.0), and every reparameterised draw inside one expectation reuses the
    same noise (so per-site guides and unrolled particles are correlated); the
    guide's ADEV primitive also has no batching rule, so particles cannot be vmapped.
    """
    import genjax
    import jax
    import jax.numpy as jnp
    from genjax import ChoiceMapBuilder as C
    from genjax.adev import expectation, mv_normal_diag_reparam

    if problem == "logistic_regression":
        x, y = data["x"], data["y"].astype(bool)

        @genjax.gen
        def model():
            w = genjax.normal(jnp.zeros(dim), jnp.ones(dim)) @ "w"
            _ = genjax.bernoulli(x @ w) @ "y"

        def latent_choices(z):
            return C["w"].set(z)
    else:
        y, sigma = data["y"], data["sigma"]

        # The model on tau's unconstrained coordinate l = log(tau), with the
        # log-Jacobian, exactly as numpyro's transform gives the other libraries.
        def log_half_cauchy_logpdf(l, scale):
            return jnp.log(2.0 / (jnp.pi * scale)) - jnp.log1p((jnp.exp(l) / scale) ** 2) + l

        def log_half_cauchy_sample(key, scale):
            return jnp.log(jnp.abs(scale * jax.random.cauchy(key)))

        log_half_cauchy = genjax.exact_density(
            log_half_cauchy_sample, log_half_cauchy_logpdf, "log_half_cauchy"
        )

        @genjax.gen
        def model():
            mu = genjax.normal(0.0, 5.0) @ "mu"
            log_tau = log_half_cauchy(5.0) @ "log_tau"
            theta_trans = genjax.normal(jnp.zeros(8), jnp.ones(8)) @ "theta_trans"
            _ = genjax.normal(mu + jnp.exp(log_tau) * theta_trans, sigma) @ "y"

        # probinf's flat order: (mu, log_tau, theta_trans).
        def latent_choices(z):
            return C["mu"].set(z[0]).merge(C["log_tau"].set(z[1])).merge(
                C["theta_trans"].set(z[2:]))

    observed = C["y"].set(y)

    def log_joint(z):
        log_p, _ = model.assess(observed.merge(latent_choices(z)), ())
        return log_p

    grad_fns = {}
    for objective, num_samples in configs:
        def reduce(log_w, objective=objective):
            if objective == "elbo":
                return jnp.mean(log_w)
            return jax.nn.logsumexp(log_w) - jnp.log(log_w.shape[0])

        def grad_fn(key, params, num_samples=num_samples, reduce=reduce):
            @expectation
            def negative_bound(loc, log_scale):
                scale = jnp.exp(log_scale)
                shape = (num_samples, dim)
                z = mv_normal_diag_reparam(jnp.broadcast_to(loc, shape),
                                           jnp.broadcast_to(scale, shape))
                log_q = jnp.sum(jax.scipy.stats.norm.logpdf(z, loc, scale), axis=-1)
                return -reduce(jax.vmap(log_joint)(z) - log_q)

            return negative_bound.grad_estimate(key, params)

        grad_fns[f"{objective}_{num_samples}"] = grad_fn
    return grad_fns


def _genjax1_grad_fns(problem: str, data: dict, dim: int, configs) -> dict:
    """genjax 1.x (Python >= 3.12, its own jax): ADEV expectations with implicit keys."""
    import jax
    import jax.numpy as jnp
    from genjax import (
        bernoulli,
        expectation,
        gen,
        modular_vmap,
        multivariate_normal_diag_reparam,
        normal,
        normal_reparam,
        seed,
        tfp_distribution,
    )
    from tensorflow_probability.substrates import jax as tfp

    if problem == "logistic_regression":
        x, y = data["x"], data["y"].astype(bool)

        @gen
        def model():
            w = normal.vmap(in_axes=(0, 0))(jnp.zeros(dim), jnp.ones(dim)) @ "w"
            _ = bernoulli.vmap(in_axes=(0,))(x @ w) @ "y"

        @gen
        def guide(constraint, loc, log_scale):
            _ = multivariate_normal_diag_reparam(loc, jnp.exp(log_scale)) @ "w"
    else:
        y, sigma = data["y"], data["sigma"]
        # tau's unconstrained coordinate log(tau), with its log-Jacobian.
        log_half_cauchy = tfp_distribution(
            lambda scale: tfp.distributions.TransformedDistribution(
                tfp.distributions.HalfCauchy(0.0, scale), tfp.bijectors.Log()
            ),
            name="LogHalfCauchy",
        )

        @gen
        def model():
            mu = normal(0.0, 5.0) @ "mu"
            log_tau = log_half_cauchy(5.0) @ "log_tau"
            theta_trans = normal.vmap(in_axes=(0, 0))(jnp.zeros(8), jnp.ones(8)) @ "theta_trans"
            _ = normal.vmap(in_axes=(0, 0))(mu + jnp.exp(log_tau) * theta_trans, sigma) @ "y"

        @gen
        def guide(constraint, loc, log_scale):
            scale = jnp.exp(log_scale)
            _ = normal_reparam(loc[0], scale[0]) @ "mu"
            _ = normal_reparam(loc[1], scale[1]) @ "log_tau"
            _ = multivariate_normal_diag_reparam(loc[2:], scale[2:]) @ "theta_trans"

    observed = {"y": y}

    def log_weight(loc, log_scale):
        trace = guide.simulate(observed, loc, log_scale)
        merged, _ = model.merge(observed, trace.get_choices())
        log_p, _ = model.assess(merged)
        return log_p + trace.get_score()  # the trace score is -log q

    grad_fns = {}
    for objective, num_samples in configs:
        reduce = (lambda lw: jnp.mean(lw)) if objective == "elbo" else (
            lambda lw: jax.nn.logsumexp(lw) - jnp.log(lw.shape[0]))

        def bound(loc, log_scale, num_samples=num_samples, reduce=reduce):
            if num_samples == 1:
                return log_weight(loc, log_scale)
            log_w = modular_vmap(lambda _: log_weight(loc, log_scale))(jnp.arange(num_samples))
            return reduce(log_w)

        estimator = expectation(bound)
        seeded = seed(lambda params, estimator=estimator: estimator.grad_estimate(*params))

        def grad_fn(key, params, seeded=seeded):
            return jax.tree_util.tree_map(lambda g: -g, seeded(key, params))

        grad_fns[f"{objective}_{num_samples}"] = grad_fn
    return grad_fns


def genjax_worker(request_path: str) -> None:
    """Run one genjax side in its own environment; print one JSON line."""
    import importlib.metadata as md

    import jax
    import jax.numpy as jnp
    import optax

    request = json.loads(Path(request_path).read_text())
    steps, repeats, dim = request["steps"], request["repeats"], request["dim"]
    data = {k: jnp.asarray(v, jnp.float32) for k, v in request["data"].items()}
    major = int(md.version("genjax").split(".")[0])
    builder = _genjax1_grad_fns if major >= 1 else _genjax010_grad_fns
    grad_fns = builder(request["problem"], data, dim, request["configs"])
    optimizer = optax.adam(LEARNING_RATE)

    results = {}
    for label, grad_fn in grad_fns.items():
        def run(params, keys, grad_fn=grad_fn):
            def body(carry, key):
                params, opt_state = carry
                grads = grad_fn(key, params)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), None

            (params, _), _ = jax.lax.scan(body, (params, optimizer.init(params)), keys)
            return params

        try:
            init = (jnp.zeros(dim), jnp.full(dim, jnp.log(INIT_SCALE)))
            all_keys = jax.random.split(jax.random.key(request["seed"]), repeats + 1)
            keys = [jax.random.split(k, steps) for k in all_keys]
            start = time.perf_counter()
            compiled = jax.jit(run).lower(init, keys[0]).compile()
            compile_s = time.perf_counter() - start
            jax.block_until_ready(compiled(init, keys[0]))
            seconds, fitted = [], []
            for r in range(repeats):
                start = time.perf_counter()
                out = jax.block_until_ready(compiled(init, keys[r + 1]))
                seconds.append(time.perf_counter() - start)
                fitted.append([np.asarray(out[0]).tolist(), np.asarray(out[1]).tolist()])
            results[label] = {"compile_s": compile_s, **timing_summary(seconds, steps),
                              "fitted": fitted}
        except Exception as err:  # record why this configuration could not run
            results[label] = {"error": f"{type(err).__name__}: {err}"[:1500]}
    versions = {name: md.version(name) for name in ("genjax", "jax", "jaxlib", "optax")}
    print(json.dumps({"versions": versions, "python": platform.python_version(),
                      "results": results}))


def run_genjax(python: Path, problem: str, data: dict, dim: int, steps: int,
               repeats: int) -> dict:
    """Run the genjax worker with ``python``; a dict with ``error`` when it cannot run."""
    if not python.exists():
        return {"error": f"no genjax environment at {python}"}
    from probinf.xla_workaround import environ_without_workaround

    request = {
        "problem": problem, "dim": dim, "steps": steps, "repeats": repeats, "seed": 2,
        "configs": [list(c) for c in CONFIGS],
        "data": {k: np.asarray(v).tolist() for k, v in data.items()},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
        path = fh.name
    try:
        proc = subprocess.run(
            [str(python), __file__, "--genjax-worker", path],
            capture_output=True, text=True, timeout=1800,
            env={**environ_without_workaround(), "JAX_PLATFORMS": "cpu"},
        )
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        return {"error": "genjax worker failed: " + proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------- in-process side


_TABLE_PROBLEMS = {"logistic_regression": "(a) Logistic regression (10 weights, 500 rows)",
                   "eight_schools": "(b) Eight schools, non-centred"}
_TABLE_CONFIGS = {"elbo_1": "ELBO, 1 sample", "elbo_8": "ELBO, 8 samples", "iwae_8": "IWAE, K = 8"}


def markdown_table(report: dict) -> str:
    """Section 1's per-problem tables of docs/vi-benchmarks.md (time, ratios, final ELBO), from ``vi.json``."""
    blocks = []
    for problem, heading in _TABLE_PROBLEMS.items():
        entry = report["results"][problem]
        configs = entry["configs"]
        versions = {name: env["versions"]["genjax"] for name, env in entry["genjax_environments"].items()}
        labels = {"probinf_step": "probinf step", "probinf_step_handwritten": "probinf step (hand-written target)",
                  "probinf_fit": "probinf fit", "probinf_fit_chunk100": "probinf fit, `chunk_size=100`",
                  "numpyro_update": "numpyro update", "numpyro_stable_update": "numpyro stable update",
                  **{name: f"genjax {version}" for name, version in versions.items()}}
        present = [name for name in labels if all(name in configs[c] for c in _TABLE_CONFIGS)]
        runs = len(configs["elbo_1"]["probinf_step"]["us_per_step_all"])
        header = "| | " + " | ".join(_TABLE_CONFIGS.values())
        lines = [f"### {heading}", "",
                 f"Time per step in µs, median over {runs} runs (fastest run in brackets); compile time "
                 "in seconds.", "", header + " | compile (s) |", "|---|---:|---:|---:|---:|"]
        for name in present:
            cells = [f"{configs[c][name]['us_per_step_median']:.1f} ({configs[c][name]['us_per_step_min']:.1f})"
                     for c in _TABLE_CONFIGS]
            compile_s = " / ".join(f"{configs[c][name]['compile_s']:.1f}" for c in _TABLE_CONFIGS)
            lines.append(f"| {labels[name]} | " + " | ".join(cells) + f" | {compile_s} |")
        lines += ["", "Ratios (probinf / peer; below 1 means probinf is faster), from medians (from "
                  "fastest runs):", "", header + " |", "|---|---:|---:|---:|"]
        for ours, peer in [("probinf_step", "numpyro_update"), ("probinf_fit", "numpyro_stable_update"),
                           *[(o, g) for g in versions for o in ("probinf_step", "probinf_fit")]]:
            key = f"{ours}/{peer}"
            if all(key in configs[c]["ratios"] for c in _TABLE_CONFIGS):
                cells = [f"{configs[c]['ratios'][key]:.2f} ({configs[c]['ratios_from_min'][key]:.2f})"
                         for c in _TABLE_CONFIGS]
                lines.append(f"| {labels[ours]} / {labels[peer]} | " + " | ".join(cells) + " |")
        repeats = len(configs["elbo_1"]["probinf_step"]["final_elbo"]["per_repeat"])
        lines += ["", f"Final ELBO of the fitted guides ({report['settings']['eval_samples']:,}-draw estimate "
                  f"with probinf's target density; mean ± sd over the {repeats} repeats, each from fresh "
                  "keys; both `fit` rows train identically, so they coincide):", "", header + " |",
                  "|---|---:|---:|---:|"]
        for name in present:
            if name == "probinf_step_handwritten":
                continue
            cells = [f"{configs[c][name]['final_elbo']['mean']:.2f} ± "
                     f"{configs[c][name]['final_elbo']['sd_over_repeats']:.2f}" for c in _TABLE_CONFIGS]
            lines.append(f"| {labels[name]} | " + " | ".join(cells) + " |")
        largest = max(abs(v["z"]) for c in _TABLE_CONFIGS
                      for v in configs[c]["final_elbo_vs_probinf_step"].values() if v["z"] is not None)
        lines += ["", f"Largest |difference| / standard error against probinf step: {largest:.1f}."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps, for a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-genjax", action="store_true")
    parser.add_argument("--rounds", type=int, default=7,
                        help="timed round-robin rounds of the in-process contenders (>= 7)")
    parser.add_argument("--no-xla-workaround", action="store_true",
                        help="do not call probinf.xla_cpu_workaround() (the in-process "
                             "libraries then run without its XLA flag)")
    parser.add_argument("--table", action="store_true", help="print the docs tables of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())), end="")
        return
    if args.rounds < 7:
        parser.error(f"--rounds: expected >= 7, got {args.rounds}")
    try:
        from benchmarks.results_io import update_results
        from benchmarks.timing import compare
    except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
        from results_io import update_results
        from timing import compare

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    import optax
    from numpyro.distributions import constraints
    from numpyro.infer import SVI, RenyiELBO, Trace_ELBO
    from numpyro.infer.autoguide import AutoDiagonalNormal
    from numpyro.infer.initialization import init_to_value

    import probinf
    from probinf import vi

    steps, repeats = (200 if args.quick else 2000), args.rounds
    eval_samples = 20_000 if args.quick else 100_000

    class ExpScaleAutoDiagonalNormal(AutoDiagonalNormal):
        """numpyro's diagonal guide with scale = exp(parameter), as probinf's MeanFieldGaussian."""

        scale_constraint = constraints.positive

    def logistic_regression_model(x, y):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
        with numpyro.plate("rows", x.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=x @ w), obs=y)

    def eight_schools_model(y, sigma):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        theta_trans = numpyro.sample("theta_trans", dist.Normal(0.0, 1.0).expand([8]).to_event(1))
        numpyro.sample("y", dist.Normal(mu + tau * theta_trans, sigma).to_event(1), obs=y)

    def logistic_regression_logdensity(x, y):
        def log_density(w):
            logits = x @ w
            return (jnp.sum(jax.scipy.stats.norm.logpdf(w))
                    + jnp.sum(y * logits - jnp.logaddexp(0.0, logits)))
        return log_density

    def eight_schools_logdensity(y, sigma):
        def log_density(z):
            mu, log_tau, theta_trans = z[0], z[1], z[2:]
            tau = jnp.exp(log_tau)
            return (jax.scipy.stats.norm.logpdf(mu, 0.0, 5.0)
                    + jnp.log(2.0 / (jnp.pi * 5.0)) - jnp.log1p((tau / 5.0) ** 2) + log_tau
                    + jnp.sum(jax.scipy.stats.norm.logpdf(theta_trans))
                    + jnp.sum(jax.scipy.stats.norm.logpdf(y, mu + tau * theta_trans, sigma)))
        return log_density

    lr_data, es_data = logistic_regression_data(), eight_schools_data()
    problems = {
        "logistic_regression": {
            "model": logistic_regression_model,
            "model_args": (jnp.asarray(lr_data["x"]), jnp.asarray(lr_data["y"])),
            "init_values": {"w": jnp.zeros(LOGREG_DIM)},
            "logdensity": logistic_regression_logdensity(jnp.asarray(lr_data["x"]),
                                                         jnp.asarray(lr_data["y"])),
            "data": lr_data,
            "description": f"Bayesian logistic regression, {LOGREG_DIM} weights with N(0,1) "
                           f"priors, {LOGREG_ROWS} synthetic rows (numpy seed {LOGREG_SEED})",
        },
        "eight_schools": {
            "model": eight_schools_model,
            "model_args": (jnp.asarray(es_data["y"]), jnp.asarray(es_data["sigma"])),
            "init_values": {"mu": jnp.zeros(()), "tau": jnp.ones(()), "theta_trans": jnp.zeros(8)},
            "logdensity": eight_schools_logdensity(jnp.asarray(es_data["y"]),
                                                   jnp.asarray(es_data["sigma"])),
            "data": es_data,
            "description": "eight schools, non-centred (posteriordb eight_schools_noncentered), "
                           "10 unconstrained dims (mu, log tau, theta_trans[8])",
        },
    }

    optimizer = optax.adam(LEARNING_RATE)

    def probinf_objective(objective: str, num_samples: int):
        return vi.ELBO(num_samples) if objective == "elbo" else vi.IWAE(num_samples)

    def numpyro_loss(objective: str, num_samples: int):
        if objective == "elbo":
            return Trace_ELBO(num_particles=num_samples)
        return RenyiELBO(alpha=0.0, num_particles=num_samples)

    def probinf_scan(objective, target):
        """The bare step: filter_value_and_grad of the objective + optax, scanned."""

        def run(family, keys):
            def body(carry, key):
                family, opt_state = carry
                loss, grads = eqx.filter_value_and_grad(lambda f: objective(key, f, target))(family)
                updates, opt_state = optimizer.update(grads, opt_state, family)
                return (eqx.apply_updates(family, updates), opt_state), loss

            (family, _), losses = jax.lax.scan(body, (family, optimizer.init(family)), keys)
            return family, losses

        return run

    def numpyro_scan(svi, model_args, stable: bool):
        update = svi.stable_update if stable else svi.update

        def run(state, keys):
            state = state._replace(rng_key=keys[0])

            def body(state, _):
                state, loss = update(state, *model_args)
                return state, loss

            return jax.lax.scan(body, state, None, length=steps)

        return run

    def evaluate_elbo(target, loc, log_scale, key) -> tuple[float, float]:
        """ELBO of the guide N(loc, exp(log_scale)^2) with eval_samples draws: (mean, s.e.)."""
        family = probinf.MeanFieldGaussian(jnp.asarray(loc, jnp.float32),
                                           jnp.asarray(log_scale, jnp.float32))
        batches = 10
        z, log_q = family.sample_and_log_prob(key, eval_samples)
        log_w = jax.lax.map(lambda zb: target.log_density(zb),
                            z.reshape(batches, -1, family.dim)).reshape(-1) - log_q
        log_w = np.asarray(log_w, np.float64)
        return float(log_w.mean()), float(log_w.std(ddof=1) / np.sqrt(eval_samples))

    load_before = os.getloadavg()
    results: dict = {}
    update_results(args.out, [], {
        "benchmark": "per-step time of VI: probinf vs numpyro SVI vs genjax", "complete": False,
        "machine": {"load_average_1_5_15min_before": load_before,
                    "xla_flags": os.environ.get("XLA_FLAGS", "")}}, fresh=True)
    for problem_name, problem in problems.items():
        print(f"== {problem_name}", flush=True)
        model, model_args = problem["model"], problem["model_args"]
        target = probinf.from_numpyro(model, *model_args)
        handwritten = probinf.from_logdensity(problem["logdensity"], target.dim)
        dim = target.dim
        init_family = probinf.MeanFieldGaussian.init(dim, loc=0.0, scale=INIT_SCALE)
        guide = ExpScaleAutoDiagonalNormal(
            model, init_loc_fn=init_to_value(values=problem["init_values"]), init_scale=INIT_SCALE
        )
        # The flat orders agree: probinf and numpyro both ravel the sites in name order.
        check_params = {"auto_loc": jnp.arange(dim, dtype=jnp.float32) / dim,
                        "auto_scale": jnp.ones(dim)}
        numpyro_median = None
        problem_result = {"description": problem["description"], "dim": dim, "configs": {}}

        genjax_outs = {}
        if not args.no_genjax:
            problem_result["genjax_environments"] = {}
            for peer, python in GENJAX_PYTHONS.items():
                print(f"   {peer} worker ...", flush=True)
                out = (run_genjax(python, problem_name, problem["data"], dim, steps, repeats)
                       if python is not None else {"error": missing_peer_message(peer)})
                genjax_outs[peer] = out
                problem_result["genjax_environments"][peer] = {
                    k: out[k] for k in ("versions", "python", "error") if k in out
                }

        for objective_name, num_samples in CONFIGS:
            label = f"{objective_name}_{num_samples}"
            print(f"   {label}", flush=True)
            objective = probinf_objective(objective_name, num_samples)
            keys = [jax.random.split(k, steps)
                    for k in jax.random.split(jax.random.key(1), repeats + 1)]
            runners = {}

            # probinf, bare scanned step (numpyro-built target and hand-written target).
            for name, tgt in (("probinf_step", target), ("probinf_step_handwritten", handwritten)):
                start = time.perf_counter()
                compiled = jax.jit(probinf_scan(objective, tgt)).lower(init_family, keys[0]).compile()
                compile_s = time.perf_counter() - start
                runners[name] = (compile_s,
                                 lambda k, c=compiled, f=init_family: c(f, k),
                                 lambda out: (out[0].loc, out[0].log_scale))

            # numpyro SVI, scanned svi.update (and stable_update, which checks for NaN like fit).
            svi = SVI(model, guide, optimizer, loss=numpyro_loss(objective_name, num_samples))
            state0 = svi.init(jax.random.key(0), *model_args)
            if numpyro_median is None:
                numpyro_median = guide.median(check_params)
            for name, stable in (("numpyro_update", False), ("numpyro_stable_update", True)):
                start = time.perf_counter()
                compiled = jax.jit(numpyro_scan(svi, model_args, stable)).lower(state0, keys[0]).compile()
                compile_s = time.perf_counter() - start

                def extract(out, svi=svi):
                    params = svi.get_params(out[0])
                    return params["auto_loc"], jnp.log(params["auto_scale"])

                runners[name] = (compile_s, lambda k, c=compiled, s=state0: c(s, k), extract)

            # probinf.fit as users call it (default adaptive chunks, and fixed chunks of 100).
            def fit_runner(key, chunk_size, objective=objective, family=init_family,
                           target=target):
                # diagnose=False: the training loop is timed against numpyro SVI, which
                # runs no PSIS diagnostics after training.
                return probinf.fit(objective, family, target, key=key,
                                   optimizer=optimizer, steps=steps,
                                   chunk_size=chunk_size, progress=False, diagnose=False)

            for name, chunk in (("probinf_fit", None), ("probinf_fit_chunk100", 100)):
                start = time.perf_counter()
                fit_runner(jax.random.key(99), chunk)
                first_call_s = time.perf_counter() - start
                runners[name] = (first_call_s,
                                 lambda k, chunk=chunk: fit_runner(k[0], chunk),
                                 lambda out: (out.family.loc, out.family.log_scale))

            # Round-robin: the warm-up round uses keys[0], timed round r keys[r + 1]; the
            # guides each timed call fitted are kept for the accuracy comparison.
            fitted = {name: [] for name in runners}

            def contender(name, call, extract, fitted=fitted, keys=keys):
                calls = iter(range(len(keys)))

                def run():
                    index = next(calls)
                    out = jax.block_until_ready(call(keys[index]))
                    if index > 0:
                        fitted[name].append(tuple(np.asarray(a) for a in extract(out)))
                    return out
                return run

            timing_all = compare({name: contender(name, call, extract)
                                  for name, (_, call, extract) in runners.items()},
                                 rounds=repeats, warmup=1, block_until_ready=False)
            seconds = {name: t["times_s"] for name, t in timing_all["contenders"].items()}

            entry = {"timing": timing_all}
            for name, (setup_s, _, _) in runners.items():
                timing = timing_summary(seconds[name], steps)
                if name.startswith("probinf_fit"):
                    # First call = compile + one run; report compile as the difference.
                    timing["compile_s"] = setup_s - statistics.median(seconds[name])
                else:
                    timing["compile_s"] = setup_s
                entry[name] = timing
            for peer, out in genjax_outs.items():
                if "results" not in out:
                    continue
                g = out["results"][label]
                entry[peer] = {k: v for k, v in g.items() if k != "fitted"}
                if "fitted" in g:
                    fitted[peer] = [(np.asarray(a), np.asarray(b)) for a, b in g["fitted"]]

            # Accuracy: the same large-sample ELBO for every fitted guide.
            eval_key = jax.random.key(7)
            for name, guides in fitted.items():
                values = [evaluate_elbo(target, loc, log_scale, jax.random.fold_in(eval_key, i))
                          for i, (loc, log_scale) in enumerate(guides)]
                means = np.array([v[0] for v in values])
                entry.setdefault(name, {})["final_elbo"] = {
                    "per_repeat": means.tolist(),
                    "mean": float(means.mean()),
                    "sd_over_repeats": float(means.std(ddof=1)) if len(means) > 1 else None,
                    "eval_standard_error": float(np.mean([v[1] for v in values])),
                }

            base = entry["probinf_step"]["us_per_step_median"]
            fit_time = entry["probinf_fit"]["us_per_step_median"]
            ratios = {
                "probinf_step/numpyro_update": base / entry["numpyro_update"]["us_per_step_median"],
                "probinf_fit/numpyro_stable_update":
                    fit_time / entry["numpyro_stable_update"]["us_per_step_median"],
                "probinf_fit/numpyro_update": fit_time / entry["numpyro_update"]["us_per_step_median"],
            }
            for peer in GENJAX_PYTHONS:
                if peer in entry and "us_per_step_median" in entry[peer]:
                    ratios[f"probinf_step/{peer}"] = base / entry[peer]["us_per_step_median"]
                    ratios[f"probinf_fit/{peer}"] = fit_time / entry[peer]["us_per_step_median"]
            # The same ratios from the fastest repeat (less sensitive to a busy machine).
            ratios_min = {}
            for key in list(ratios):
                ours, theirs = key.split("/")
                ratios_min[key] = (entry[ours]["us_per_step_min"]
                                   / entry[theirs]["us_per_step_min"])
            entry["ratios_from_min"] = ratios_min
            entry["ratios"] = ratios
            ref = entry["probinf_step"]["final_elbo"]
            agreement = {}
            for name in entry:
                if name == "probinf_step" or not isinstance(entry[name], dict) or "final_elbo" not in entry[name]:
                    continue
                other = entry[name]["final_elbo"]
                diff = other["mean"] - ref["mean"]
                se = np.sqrt((ref["sd_over_repeats"] ** 2 + other["sd_over_repeats"] ** 2) / repeats)
                agreement[name] = {"difference": float(diff), "standard_error": float(se),
                                   "z": float(diff / se) if se > 0 else None}
            entry["final_elbo_vs_probinf_step"] = agreement
            problem_result["configs"][label] = entry
            update_results(args.out, ["results", problem_name], problem_result)
            print("      " + ", ".join(f"{k}={v:.3g}" for k, v in ratios.items()), flush=True)

        # Sanity check of the flat-order claim above.
        check_loc = check_params["auto_loc"]
        ours = target.constrain(check_loc)
        problem_result["flat_order_matches_numpyro"] = bool(all(
            np.allclose(np.asarray(ours[k]), np.asarray(numpyro_median[k]), atol=1e-5)
            for k in numpyro_median
        ))
        results[problem_name] = problem_result

    import importlib.metadata as md

    report = {
        "benchmark": "per-step time of VI: probinf vs numpyro SVI vs genjax",
        "settings": {
            "steps_per_timed_run": steps, "repeats": repeats, "optimizer": f"optax.adam({LEARNING_RATE})",
            "guide": "mean-field Gaussian on the unconstrained space, scale = exp(param), "
                     f"initial loc 0 and scale {INIT_SCALE}",
            "eval_samples": eval_samples,
            "objectives": {"elbo_1": "ELBO, 1 sample", "elbo_8": "ELBO, 8 samples",
                           "iwae_8": "IWAE / RenyiELBO(alpha=0), K = 8"},
            "timing": "benchmarks/timing.compare: the in-process contenders alternated call by "
                      "call (order rotated each round, one untimed warm-up round), median over "
                      "`repeats` rounds of the wall time of a compiled lax.scan of all steps "
                      "(probinf_fit*: wall time of probinf.fit), divided by steps; genjax "
                      "times its repeats in its own subprocess, not interleaved",
            "names": {
                "probinf_step": "jitted lax.scan of eqx.filter_value_and_grad(objective) + optax, "
                                "target = probinf.from_numpyro(same numpyro model)",
                "probinf_step_handwritten": "same, target = probinf.from_logdensity(hand-written "
                                            "JAX log density)",
                "probinf_fit": "probinf.fit(..., progress=False) with its default adaptive chunks",
                "probinf_fit_chunk100": "probinf.fit(..., chunk_size=100, progress=False)",
                "numpyro_update": "jitted lax.scan over SVI.update (AutoDiagonalNormal with exp scale)",
                "numpyro_stable_update": "same over SVI.stable_update (skips non-finite steps, as fit does)",
                "genjax": "genjax 0.10.x (the released genjax.vi of the PLDI 2024 paper): jitted "
                          "lax.scan over the ADEV gradient estimate (genjax.adev.expectation) of "
                          "the bound, whose one random choice is a K x dim mv_normal_diag_reparam "
                          "draw and whose density is model.assess, + optax; own virtualenv and "
                          "jax, see genjax_environments",
                "genjax1": "genjax 1.x: jitted lax.scan over the ADEV gradient estimate of an "
                           "expectation of the mean (ELBO) or logmeanexp (IWAE) of modular_vmap-ed "
                           "log weights (K=1: the same as genjax.inference.vi.elbo_factory) + optax; "
                           "own virtualenv (Python 3.12) and jax",
            },
        },
        "results": results,
        "versions": {name: md.version(name)
                     for name in ("jax", "jaxlib", "numpyro", "optax", "equinox", "probinf")},
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "python": platform.python_version(),
            "load_average_1_5_15min_before": load_before,
            "load_average_1_5_15min_after": os.getloadavg(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        },
    }
    report["complete"] = True
    update_results(args.out, [], report)
    print(f"wrote {args.out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--genjax-worker":
        genjax_worker(sys.argv[2])
    else:
        if "--no-xla-workaround" not in sys.argv[1:]:
            from probinf import xla_cpu_workaround

            xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
        main()

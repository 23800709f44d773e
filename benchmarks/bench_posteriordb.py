"""Benchmark: every inference entry point with its defaults on the twelve posteriordb posteriors.

Methods side by side, in one process, on the same numpyro translation of each posterior
(``benchmarks/posteriordb``), each scored against posteriordb's reference draws:

* ``probinf_fullrank_vi``: the README's VI quick start — ``vi.initialize`` (Pathfinder),
  then ``probinf.fit(vi.ELBO(8, vi.STL()), family, target)`` with default steps;
* ``probinf_flow_vi``: ``flows.FlowGuide(model, ...)`` defaults, fitted with
  ``probinf.fit(vi.ELBO(16), guide.flow, guide.target)``;
* ``probinf_tempered_smc``: ``smc.tempered_smc(key, target, 2000)`` defaults;
* ``probinf_infer``: ``probinf.infer(model, ...)``;
* ``numpyro_amvn`` / ``numpyro_iaf``: numpyro ``AutoMultivariateNormal`` /
  ``AutoIAFNormal``, ``Trace_ELBO(8)``, Adam(1e-2), 3,000 steps (``svi.run``);
* ``numpyro_nuts``: NUTS, 4 chains x 1,000 draws after 1,000 warm-up (sequential chains).

Per posterior and method: max |mean error| in reference sd, max |log sd ratio|, PSIS
k-hat where the method has a density to score (VI families), wall time (compilation
included: what a user waits for), and the ELBO or log Z estimate. No per-model settings.

Run: python benchmarks/bench_posteriordb.py [NAME ...] [--methods m1,m2]
  -> benchmarks/results/posteriordb.json (results are merged per posterior and method)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time
import warnings

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import probinf  # noqa: E402
from benchmarks.posteriordb import POSTERIORS, load, score, to_posteriordb_names  # noqa: E402
from benchmarks.results_io import add_posteriordb_argument, posteriordb_directory, write_results  # noqa: E402
from probinf import vi  # noqa: E402
from probinf.diagnostics import psis  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "posteriordb.json"
NUM_DRAWS = 4000
METHODS = ("probinf_fullrank_vi", "probinf_flow_vi", "probinf_tempered_smc", "probinf_infer",
           "numpyro_amvn", "numpyro_iaf", "numpyro_nuts")


def _scores(posterior, samples):
    """samples: site -> (num_draws, *shape) in the constrained space."""
    names = to_posteriordb_names({k: np.asarray(v) for k, v in samples.items()})
    mean_error, log_sd_ratio = score(posterior, names)
    return {"max_mean_error_sd": float(mean_error), "max_abs_log_sd_ratio": float(log_sd_ratio)}


def _khat_of(log_p, log_q):
    log_w = np.where(np.isfinite(log_p), np.asarray(log_p) - np.asarray(log_q), -np.inf)
    _, khat = psis(log_w)
    return float(khat)


def run_fullrank_vi(posterior, key):
    target = probinf.from_numpyro(posterior.model, *posterior.args, **posterior.kwargs)
    k_init, k_fit, k_draw = jax.random.split(key, 3)
    family = vi.initialize(k_init, target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probinf.fit(vi.ELBO(8, vi.STL()), family, target, key=k_fit)
    samples = result.sample_posterior(k_draw, NUM_DRAWS)
    d = result.diagnostics
    return samples, {"khat": d.khat, "elbo": d.elbo, "log_evidence": d.log_evidence,
                     "steps": result.num_steps, "stop_reason": result.stop_reason,
                     "warned": [str(w.message)[:200] for w in caught]}


def run_flow_vi(posterior, key):
    import flows

    k_guide, k_fit, k_draw = jax.random.split(key, 3)
    guide = flows.FlowGuide(posterior.model, *posterior.args, key=k_guide,
                            model_kwargs=posterior.kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = probinf.fit(vi.ELBO(16), guide.flow, guide.target, key=k_fit)
    samples = guide.sample_posterior(k_draw, NUM_DRAWS, result.family)
    d = result.diagnostics
    return samples, {"khat": d.khat, "elbo": d.elbo, "log_evidence": d.log_evidence,
                     "steps": result.num_steps, "stop_reason": result.stop_reason,
                     "warned": [str(w.message)[:200] for w in caught]}


def run_tempered_smc(posterior, key):
    from probinf import smc

    target = probinf.from_numpyro(posterior.model, *posterior.args, **posterior.kwargs)
    result = smc.tempered_smc(key, target, 2000)
    return result.samples(target), {"log_evidence": float(result.log_evidence),
                                    "stages": int(result.num_stages)}


def run_infer(posterior, key):
    idata = probinf.infer(posterior.model, *posterior.args, key=key, **posterior.kwargs)
    samples = {name: np.asarray(idata.posterior[name].values[0]) for name in idata.posterior.data_vars}
    attrs = dict(idata.posterior.attrs)
    keep = {k: (v if isinstance(v, (str, int)) else float(v)) for k, v in attrs.items()
            if k.endswith(("khat", "ess", "elbo", "log_evidence", "_s", "path", "steps", "reason"))}
    return samples, keep


def _numpyro_autoguide(posterior, key, guide_class):
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO

    guide = guide_class(posterior.model)
    svi = SVI(posterior.model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO(8))
    k_run, k_draw, k_khat = jax.random.split(key, 3)
    run = svi.run(k_run, 3000, *posterior.args, progress_bar=False, **posterior.kwargs)
    samples = guide.sample_posterior(k_draw, run.params, sample_shape=(NUM_DRAWS,))
    latent = {name: v for name, v in samples.items()}
    info = {"final_loss_mean_last_200": float(np.mean(np.asarray(run.losses)[-200:]))}
    try:  # PSIS k-hat on the guide's unconstrained posterior against our target
        target = probinf.from_numpyro(posterior.model, *posterior.args, **posterior.kwargs)
        q = guide.get_posterior(run.params)
        z, intermediates = q.sample_with_intermediates(k_khat, (NUM_DRAWS,))
        log_q = q.log_prob(z, intermediates) if intermediates else q.log_prob(z)
        info["khat"] = _khat_of(target.log_density(z), log_q)
    except Exception as err:  # noqa: BLE001 - reported, not hidden
        info["khat_error"] = f"{type(err).__name__}: {err}"[:200]
    return latent, info


def run_amvn(posterior, key):
    from numpyro.infer.autoguide import AutoMultivariateNormal

    return _numpyro_autoguide(posterior, key, AutoMultivariateNormal)


def run_iaf(posterior, key):
    from numpyro.infer.autoguide import AutoIAFNormal

    return _numpyro_autoguide(posterior, key, AutoIAFNormal)


def run_nuts(posterior, key):
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(posterior.model), num_warmup=1000, num_samples=1000, num_chains=4,
                chain_method="sequential", progress_bar=False)
    mcmc.run(key, *posterior.args, **posterior.kwargs)
    samples = mcmc.get_samples()
    divergences = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))
    return samples, {"divergences": divergences}


RUNNERS = {
    "probinf_fullrank_vi": run_fullrank_vi,
    "probinf_flow_vi": run_flow_vi,
    "probinf_tempered_smc": run_tempered_smc,
    "probinf_infer": run_infer,
    "numpyro_amvn": run_amvn,
    "numpyro_iaf": run_iaf,
    "numpyro_nuts": run_nuts,
}


def _machine():
    import numpyro

    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__, "numpyro": numpyro.__version__,
            "probinf": probinf.__version__, "x64": bool(jax.config.jax_enable_x64)}


def markdown_table(results) -> str:
    """The docs table: per posterior and method, errors / wall time (x NUTS's speed)."""
    methods = [m for m in METHODS if any(m in row for row in results["posteriors"].values())]
    lines = ["| posterior | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for name, row in results["posteriors"].items():
        cells = []
        for method in methods:
            entry = row.get(method)
            if entry is None:
                cells.append("—")
            elif "error" in entry:
                cells.append("error")
            else:
                cell = f"{entry['max_mean_error_sd']:.2f} / {entry['max_abs_log_sd_ratio']:.2f}"
                if "khat" in entry:
                    cell += f", k̂ {entry['khat']:.2f}"
                cell += f", {entry['wall_time_s']:.0f} s"
                cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("posteriors", nargs="*", default=list(POSTERIORS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="print the docs table and exit")
    add_posteriordb_argument(parser)
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(RESULTS.read_text())))
        return
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    try:  # before anything runs
        folder = posteriordb_directory(args.data)
    except FileNotFoundError as err:
        parser.error(str(err))
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.setdefault("posteriors", {})
    results["machine"] = _machine()
    results["description"] = __doc__
    for name in args.posteriors:
        posterior = load(name, folder)
        row = results["posteriors"].setdefault(name, {})
        for method in methods:
            key = jax.random.key(args.seed)
            began = time.perf_counter()
            try:
                samples, info = RUNNERS[method](posterior, key)
                samples = jax.tree.map(np.asarray, samples)
                wall = time.perf_counter() - began
                entry = {"wall_time_s": wall, **_scores(posterior, samples), **info}
            except Exception as err:  # noqa: BLE001 - a crash is a result, reported as such
                entry = {"error": f"{type(err).__name__}: {err}"[:500],
                         "wall_time_s": time.perf_counter() - began}
            entry["load_average_1m"] = os.getloadavg()[0]
            # Free compiled programs: each holds memory mappings, and one process compiling
            # every method on every posterior otherwise reaches Linux's cap and crashes.
            jax.clear_caches()
            row[method] = entry
            print(f"{name:45s} {method:22s} " + ", ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in entry.items() if k in ("max_mean_error_sd", "max_abs_log_sd_ratio",
                                                    "khat", "wall_time_s", "error")), flush=True)
            write_results(RESULTS, results)  # after each (posterior, method): a crash keeps it
        nuts = row.get("numpyro_nuts", {}).get("wall_time_s")
        for entry in row.values():
            if nuts and "wall_time_s" in entry:
                entry["speedup_vs_nuts"] = nuts / entry["wall_time_s"]
        write_results(RESULTS, results)


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

"""Benchmark of probabilistic integral circuits: QPCs against PCs of the same size.

Run from the repository root::

    python benchmarks/bench_pic.py            # full run (about 20 minutes on 2 shared cores)
    python benchmarks/bench_pic.py --quick    # a smoke run

Writes ``benchmarks/results/pic.json``.

The central claim of Gala et al. (AISTATS 2024; NeurIPS 2024) side by side, in
one run: a PIC whose functions are small neural nets, trained by gradient ascent
through its materialised quadrature circuit (QPC, ``K`` quadrature points per
latent), against ordinary PCs with the SAME structure and ``K`` units per region,
learned by the DEBD recipe's regularised EM (``circuits.train_debd``) and by Adam on
the log-likelihood.

* **DEBD** (every dataset in ``--data DIR``/debd, default ``$PROBINF_SHARED_DATA`` or
  ``../shared/data``; ``--shipped-debd``: the two shipped with ``circuits``): hidden Chow–Liu tree region
  graph (Liu & Van den Broeck 2021), CP merges / CP layers, Bernoulli inputs.
* **8x8 digits** (scikit-learn's ``load_digits``, 1797 images with 17 grey levels,
  a fixed 70/10/20 split): a binary quad-tree region graph, Tucker merges / Tucker
  layers, categorical inputs; reported in bits per dimension,
  ``-LL / (64 ln 2)``.

PIC variants: functional sharing ``none`` (every integral and input unit has its
own MLP), ``composite`` (per stage one shared trunk with per-unit heads; inputs the
same) and ``full`` (one function per stage for the integral units; composite
inputs). Each model keeps the parameters with the best validation log-likelihood.

Cost: trainable parameters, seconds per epoch (median of 3 timed epochs after
compilation, the compiled epoch function called directly), and the peak memory of
one compiled training step at batch 256 as estimated by XLA
(``compiled.memory_analysis()``: temporaries + arguments + outputs).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import pathlib
import platform
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import circuits
from circuits import learning
from circuits.integral import fit_integral, integral_circuit
from circuits.quadrature import quadrature_rule
from probinf import train as engine

REPO = pathlib.Path(__file__).resolve().parents[1]
try:
    from benchmarks.results_io import add_debd_arguments, debd_directory, update_results
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from results_io import add_debd_arguments, debd_directory, update_results
OUT = REPO / "benchmarks" / "results" / "pic.json"

# Published figures quoted only where the number itself was read in its source.
#: ``circuits.train_debd``'s defaults (the recipe), read from its signature.
RECIPE = {name: p.default for name, p in inspect.signature(circuits.train_debd).parameters.items()
          if p.default is not inspect.Parameter.empty}

PUBLISHED = {
    "note": (
        "No published DEBD test log-likelihood of a tractable circuit (PIC, HCLT, EiNet, "
        "RAT-SPN, Strudel, LearnSPN, ID-SPN) could be read with the search tools available "
        "when this benchmark was written: the papers' results tables were not reachable, and "
        "the public repositories searched (gengala/pic, gengala/ten-pics, "
        "cambridge-mlg/EinsumNetworks, deeprob-org/deeprob-kit, arranger1044/DEBD, "
        "gengala/Random-Probabilistic-Circuits, SPFlow/SPFlow) hold no results files. The only "
        "figures read are below, from an aggregator page, for a non-circuit model."),
    "figures": {
        "EoNADE (Uria, Murray & Larochelle, A Deep and Tractable Density Estimator, ICML 2014)": {
            "source": "https://www.wizwand.com/paper/68fa61301e209131ce9f31ec (benchmark list "
                      "of the paper page; not checked against the paper's own table)",
            "test_log_likelihood_nats": {"dna": -82.31, "mushrooms": -9.68},
        },
    },
    "where_to_find_circuit_figures": [
        "Gala et al., Probabilistic Integral Circuits, AISTATS 2024 (PIC vs PCs; results tables)",
        "Liu & Van den Broeck, Tractable Regularization of Probabilistic Circuits, NeurIPS 2021 "
        "(HCLT on the 20 DEBD datasets)",
        "Peharz et al., Einsum Networks, ICML 2020 (EiNet and RAT-SPN on the 20 DEBD datasets)",
    ],
}


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "load_average_at_start": list(os.getloadavg()),
    }


def versions() -> dict:
    import sklearn

    return {"jax": jax.__version__, "equinox": eqx.__version__, "optax": optax.__version__,
            "scikit-learn": sklearn.__version__, "probinf_circuits": "this checkout"}


# ---------------------------------------------------------------- costs
def step_memory(fn, *args) -> dict:
    """XLA's memory estimate of one compiled call of ``fn(*args)`` (bytes)."""
    dynamic, static = eqx.partition(args, eqx.is_array)

    def call(dynamic):
        return eqx.filter(fn(*eqx.combine(dynamic, static)), eqx.is_array)

    stats = jax.jit(call).lower(dynamic).compile().memory_analysis()
    out = {"temp_bytes": int(stats.temp_size_in_bytes),
           "argument_bytes": int(stats.argument_size_in_bytes),
           "output_bytes": int(stats.output_size_in_bytes)}
    out["total_bytes"] = out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"]
    return out


def median_seconds(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn())  # compiled already by training; this is a warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batches_of(x, batch_size):
    return learning._batches(jnp.asarray(x, jnp.float32), min(batch_size, x.shape[0]))


def param_count(tree) -> int:
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return int(sum(np.prod(a.shape) for a in leaves))


# ---------------------------------------------------------------- models
def train_pc_em(pc, data, epochs, batch, key):
    """``circuits.train_debd`` (the DEBD recipe's regularised EM) on the PC; its cost
    figures are those of the recipe's full-batch epoch and of one mini-batch EM update."""
    phases = {} if epochs is None else {"minibatch_epochs": epochs, "fullbatch_epochs": epochs}
    result = circuits.train_debd(pc, data["train"], data["valid"], key=key, progress=False,
                                 **phases)
    alpha, rule = RECIPE["pseudocount"], RECIPE["pseudocount_per"]
    soft = circuits.soft_evidence(pc, data["train"], RECIPE["softening"], "marginal")
    batches, weights = learning._batches(soft, min(1024, soft.shape[0]))
    epoch = median_seconds(lambda: learning._full_batch_epoch(
        pc, batches, weights, alpha, 1.0, softened=True, entropy_reg=RECIPE["entropy_reg"],
        pseudocount_per=rule)[1])
    xb, wb = learning._batches(soft[:batch], min(batch, soft.shape[0]))

    def em_step(circuit, xb, wb):
        _, stats = learning._expected_statistics(circuit, xb, wb, softened=True)
        return learning._m_step(circuit, stats, alpha, 0.5, RECIPE["entropy_reg"], xb.shape[0],
                                rule)

    memory = step_memory(em_step, pc, xb[0], wb[0])
    return result.circuit, result, epoch, memory, pc.num_parameters


def gradient_epoch_cost(loss, params, optimizer, x, batch) -> tuple[float, dict]:
    """Median seconds of one training epoch on the engine (warm) and one step's memory."""
    step = engine.make_step(loss, optimizer)
    state = engine.init(params, optimizer)
    x = jnp.asarray(x, jnp.float32)
    batch = min(batch, x.shape[0])
    epoch = median_seconds(lambda: engine.run(step, state, key=jax.random.key(0), epochs=1,
                                              data=x, batch_size=batch, progress=False).losses)
    memory = step_memory(lambda s, xb: step(s, jax.random.key(0), xb), state, x[:batch])
    return epoch, memory


def train_pc_adam(pc, data, epochs, batch, lr, key):
    optimizer = optax.adam(lr)
    result = circuits.fit_gradient(pc, data["train"], optimizer, key=key, num_epochs=epochs,
                                   batch_size=batch, valid=data["valid"], progress=False)
    epoch, memory = gradient_epoch_cost(learning._NegativeLogLikelihood(), pc, optimizer,
                                        data["train"], batch)
    return result.circuit, result, epoch, memory, pc.num_parameters


def train_pic(pic, data, epochs, batch, lr, rule, key):
    optimizer = optax.adam(lr)
    result = fit_integral(pic, data["train"], optimizer, rule, key=key, num_epochs=epochs,
                          batch_size=batch, valid=data["valid"], progress=False)
    epoch, memory = gradient_epoch_cost(learning._NegativeLogLikelihood(rule, "auto"), pic,
                                        optimizer, data["train"], batch)
    return result.circuit, result, epoch, memory, pic.num_parameters


def record(circuit, result, epoch, memory, num_params, data, extra=None) -> dict:
    out = {
        "test_log_likelihood": circuits.average_log_likelihood(circuit, data["test"]),
        "best_valid_log_likelihood": float(np.max(result.valid_log_likelihood)),
        "final_train_log_likelihood": float(result.final_train_log_likelihood),
        "trainable_parameters": int(num_params),
        "circuit_parameters": int(circuit.num_parameters),
        "epochs": int(result.num_epochs),
        "train_seconds": float(result.seconds),
        "seconds_per_epoch": epoch,
        "train_step_memory_batch256": memory,
        "stop_reason": result.stop_reason,
        "valid_history": [float(v) for v in result.valid_log_likelihood],
    }
    if extra:
        out.update(extra)
    return out


def compare(name, data, graph, input_layer, merge, k, cfg, key, log) -> dict:
    """Every model on one dataset; returns the per-model records."""
    keys = jax.random.split(key, 8)
    rule = quadrature_rule("trapezoidal", k)
    models = {}
    pc = circuits.compile_circuit(graph, input_layer, k, merge, key=keys[0], data=data["train"])
    started = time.perf_counter()
    models["pc_em"] = record(*train_pc_em(pc, data, cfg["em_epochs"], cfg["batch"], keys[7]),
                             data)
    log(f"  {name} pc_em       test {models['pc_em']['test_log_likelihood']:.3f} "
        f"({time.perf_counter() - started:.0f} s)")
    started = time.perf_counter()
    models["pc_adam"] = record(*train_pc_adam(pc, data, cfg["epochs"], cfg["batch"],
                                              cfg["pc_lr"], keys[1]), data)
    log(f"  {name} pc_adam     test {models['pc_adam']['test_log_likelihood']:.3f} "
        f"({time.perf_counter() - started:.0f} s)")
    variants = {"pic_composite": ("composite", "composite"), "pic_full": ("full", "composite"),
                "pic_none": ("none", "none")}
    for index, (label, (inner, inputs)) in enumerate(variants.items()):
        if label not in cfg["variants"]:
            continue
        started = time.perf_counter()
        pic = integral_circuit(graph, input_layer, merge, key=keys[2 + index], inner_sharing=inner,
                               input_sharing=inputs, data=data["train"])
        circuit, result, epoch, memory, n = train_pic(pic, data, cfg["epochs"], cfg["batch"],
                                                      cfg["pic_lr"], rule, keys[6])
        finer = quadrature_rule("trapezoidal", 2 * k - 1)
        extra = {
            "inner_sharing": inner, "input_sharing": inputs,
            "quadrature": {"rule": "trapezoidal", "num_points": k, "interval": [-1.0, 1.0]},
            "test_log_likelihood_rematerialized_2K-1": circuits.average_log_likelihood(
                result.pic.materialize(finer), data["test"]),
        }
        models[label] = record(circuit, result, epoch, memory, n, data, extra)
        log(f"  {name} {label:<13} test {models[label]['test_log_likelihood']:.3f} "
            f"({time.perf_counter() - started:.0f} s, {n} parameters)")
    return models


def load_digits_split(seed: int = 0) -> dict:
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.int32)  # (1797, 64), values 0..16
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order]
    n_train, n_valid = int(0.7 * len(x)), int(0.1 * len(x))
    return {"train": x[:n_train], "valid": x[n_train:n_train + n_valid],
            "test": x[n_train + n_valid:]}


def summarize(models: dict, bits_per_dim: int | None = None) -> dict:
    best_pc = max(models["pc_em"]["test_log_likelihood"], models["pc_adam"]["test_log_likelihood"])
    pics = {k: v["test_log_likelihood"] for k, v in models.items() if k.startswith("pic")}
    best_pic_name = max(pics, key=pics.get)
    out = {
        "test_log_likelihood": {k: v["test_log_likelihood"] for k, v in models.items()},
        "best_pic": best_pic_name,
        "best_pic_minus_best_pc_nats": pics[best_pic_name] - best_pc,
        "pic_beats_both_pcs": bool(pics[best_pic_name] > best_pc),
    }
    if bits_per_dim:
        out["bits_per_dimension"] = {k: -v["test_log_likelihood"] / (bits_per_dim * math.log(2))
                                     for k, v in models.items()}
    return out


TABLE_COLUMNS = {"pc_em": "PC, EM", "pc_adam": "PC, Adam", "pic_composite": "QPC, composite",
                 "pic_full": "QPC, full", "pic_none": "QPC, none"}


def markdown_table(report: dict) -> str:
    """The test log-likelihood table of docs/pic.md, from ``pic.json`` (best of a row in bold)."""
    lines = ["| dataset | " + " | ".join(TABLE_COLUMNS.values()) + " |",
             "|---|" + "---|" * len(TABLE_COLUMNS)]
    rows = [(name, entry["models"], 1.0) for name, entry in report["debd"].items()]
    digits = report["digits"]
    # Digits in bits per dimension (lower is better): -LL / (D ln 2).
    rows.append(("digits (bpd)", digits["models"], -1.0 / (digits["num_variables"] * math.log(2))))
    for name, models, scale in rows:
        values = {key: scale * models[key]["test_log_likelihood"] for key in TABLE_COLUMNS if key in models}
        best = max(values, key=values.get) if scale > 0 else min(values, key=values.get)
        cells = [(f"**{values[key]:#.4g}**" if key == best else f"{values[key]:#.4g}") if key in values else ""
                 for key in TABLE_COLUMNS]
        lines.append("|" + "".join(f" {cell} |" if cell else " |" for cell in [name, *cells]))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--datasets", nargs="*", default=None, help="DEBD subset")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--table", action="store_true", help="print the docs table of --out and exit")
    parser.add_argument("--resume", action="store_true",
                        help="keep the datasets an unfinished --out already holds and run the rest")
    add_debd_arguments(parser)
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(pathlib.Path(args.out).read_text())), end="")
        return
    try:  # before anything runs
        debd = debd_directory(args.data, args.shipped_debd)
    except FileNotFoundError as err:
        parser.error(str(err))
    started = time.perf_counter()
    log = lambda message: print(message, flush=True)  # noqa: E731
    if args.quick:
        debd_cfg = dict(k=8, epochs=2, em_epochs=3, batch=256, pc_lr=0.05, pic_lr=0.01,
                        variants=("pic_composite", "pic_full", "pic_none"))
        digits_cfg = dict(k=4, epochs=2, em_epochs=3, batch=128, pc_lr=0.05, pic_lr=0.01,
                          variants=("pic_composite", "pic_full", "pic_none"))
        none_on = None
    else:
        debd_cfg = dict(k=16, epochs=30, em_epochs=None, batch=256, pc_lr=0.1, pic_lr=0.01,
                        variants=("pic_composite", "pic_full", "pic_none"))
        digits_cfg = dict(k=12, epochs=40, em_epochs=None, batch=128, pc_lr=0.1, pic_lr=0.01,
                          variants=("pic_composite", "pic_full", "pic_none"))
        # The sharing ablation (full, none) runs on three datasets to fit the time budget.
        none_on = ("nltcs", "plants", "mushrooms")
    names = args.datasets or circuits.list_debd(debd)
    results = {"machine": machine_info(), "versions": versions(), "published": PUBLISHED,
               "debd_source": "the datasets shipped with the package" if debd is None else str(debd),
               "complete": False}
    results["setup"] = {
        "debd": {**{k: v for k, v in debd_cfg.items() if k != "variants"},
                 "region_graph": "hidden Chow-Liu tree (chow_liu_tree of the training data)",
                 "merge_and_layer": "cp", "inputs": "Bernoulli",
                 "pic_variants_on": {"pic_composite": "all",
                                     "pic_full": list(none_on) if none_on else "all",
                                     "pic_none": list(none_on) if none_on else "all"}},
        "digits": {**{k: v for k, v in digits_cfg.items() if k != "variants"},
                   "region_graph": "quad_tree(8, 8, num_patch_splits=2) (binary splits)",
                   "merge_and_layer": "tucker", "inputs": "Categorical(17)",
                   "split": "load_digits shuffled with seed 0: 70% train, 10% valid, 20% test"},
        "training": {
            "pc_em": "circuits.train_debd (the DEBD recipe's training: mini-batch EM with the "
                     "step size linear from 0.9 to 0.1, then full-batch EM; softening 0.002, "
                     "entropy penalty 0.001, pseudocount 0.1 per node) at its defaults (em_epochs "
                     "None) or em_epochs epochs per phase, its validation stopping and "
                     "selection",
            "pc_adam": "circuits.fit_gradient, Adam, lr pc_lr, mini-batches of `batch`",
            "pic": "circuits.integral.fit_integral: trapezoidal rule with K points on [-1, 1], "
                   "Adam lr pic_lr, mini-batches of `batch`; MLPs: 32 Fourier features "
                   "(sigma 1), 2 tanh layers of width 32; units normalisation",
            "selection": "parameters with the best validation log-likelihood",
            "learning_rates": "chosen from {0.02, 0.05, 0.1} (PC) and {0.003, 0.01, 0.03} (PIC) "
                              "by validation log-likelihood after 10 epochs on plants, K=16",
        },
    }
    results["debd"] = {}
    earlier = json.loads(pathlib.Path(args.out).read_text()) if args.resume else {}
    if earlier.get("complete"):
        parser.error(f"--resume: {args.out} holds a finished run; nothing to resume")
    if earlier:
        if earlier.get("setup") != json.loads(json.dumps(results["setup"])):
            parser.error(f"--resume: {args.out} was written with another setup")
        results["debd"] = earlier.get("debd", {})
        results["resumed"] = earlier.get("resumed", []) + [
            {"machine": results["machine"], "after": list(results["debd"]),
             "note": "total_seconds counts this process only"}]
        results["machine"] = earlier["machine"]
        if "digits" in earlier:
            results["digits"] = earlier["digits"]
    update_results(args.out, [], results, fresh=True)
    key = jax.random.key(0)
    for index, name in enumerate(names):
        if name in results["debd"]:
            continue  # measured by the run --resume continues
        data = circuits.load_debd(name, debd)
        graph = circuits.chow_liu_tree(data["train"])
        cfg = dict(debd_cfg)
        if none_on is not None and name not in none_on:
            cfg["variants"] = ("pic_composite",)
        log(f"{name}: {data['train'].shape[1]} variables, {len(data['train'])} training rows")
        models = compare(name, data, graph, circuits.Bernoulli(), "cp", cfg["k"], cfg,
                         jax.random.fold_in(key, index), log)
        results["debd"][name] = {"num_variables": int(data["train"].shape[1]),
                                 "num_train": int(len(data["train"])), "models": models,
                                 "summary": summarize(models)}
        update_results(args.out, ["debd", name], results["debd"][name])
    if "digits" not in results:
        digits = load_digits_split()
        log(f"digits: 64 variables, {len(digits['train'])} training rows")
        graph = circuits.quad_tree(8, 8, num_patch_splits=2)
        models = compare("digits", digits, graph, circuits.Categorical(17), "tucker",
                         digits_cfg["k"], digits_cfg, jax.random.fold_in(key, 1000), log)
        results["digits"] = {"num_variables": 64, "num_train": len(digits["train"]),
                             "models": models, "summary": summarize(models, bits_per_dim=64)}
    wins = [n for n, r in results["debd"].items() if r["summary"]["pic_beats_both_pcs"]]
    results["overall"] = {
        "pic_beats_both_pcs_on": wins + (["digits"] if results["digits"]["summary"][
            "pic_beats_both_pcs"] else []),
        "datasets": list(results["debd"]) + ["digits"],
    }
    results["load_average_at_end"] = list(os.getloadavg())
    results["total_seconds"] = time.perf_counter() - started
    results["complete"] = True
    update_results(args.out, [], results)
    log(f"wrote {args.out} in {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

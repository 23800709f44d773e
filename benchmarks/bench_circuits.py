"""Benchmark of ``circuits``: DEBD density estimation and throughput against cirkit.

Run from the repository root::

    python benchmarks/bench_circuits.py            # full run (up to 15 minutes per DEBD set)
    python benchmarks/bench_circuits.py --quick    # a smoke run (small budgets)
    python benchmarks/bench_circuits.py --merge-published  # only refresh the published figures
    python benchmarks/bench_circuits.py --compile-scaling  # only compile times at D = 100..1,500
    python benchmarks/bench_circuits.py --throughput       # only the cirkit throughput comparison

Writes ``benchmarks/results/circuits.json`` (``--out``), rewritten after each DEBD dataset
so a crash keeps what was measured. DEBD is read from ``--data DIR``/debd (default
``$PROBINF_SHARED_DATA`` or ``../shared/data``, checked before anything runs), or with
``--shipped-debd`` from the two datasets shipped with ``circuits`` (nltcs, mushrooms).

1. **Density estimation** on every dataset in the DEBD folder with the project's one
   recipe, ``circuits.fit_debd`` at its defaults (a mixture of hidden Chow–Liu trees,
   regularised mini-batch then full-batch EM: the published recipe of Liu & Van den
   Broeck 2021) under a wall-clock budget per dataset (recorded in the JSON), the
   parameters with the best validation log-likelihood kept. Reported, with the time,
   latent size and parameter count: test log-likelihood in nats per sample, next to
   an exact plain Chow–Liu tree (MLE with Laplace smoothing, numpy) trained here,
   and the published HCLT figures with the gap, recomputed from the authors' logs
   (``results/published_debd.json``, made by ``published_debd.py``).
2. **Throughput** (samples per second) of the forward pass and of forward +
   backward (gradient of the mean log-likelihood with respect to all
   parameters), ours against cirkit (``libcirkit``, torch CPU) on the SAME
   architecture: the same quad-tree region graph over 28x28 binary pixels
   (exported to cirkit's region-graph classes), CP layers (Hadamard then sum,
   cirkit's ``"cp-t"``), 64 units, categorical inputs with 2 categories, batch
   512. cirkit runs in its own virtualenv (it pins an older numpy) through a
   subprocess, in the same run, after ours. cirkit's log-space clamp
   ``LOG_CLAMP_MIN`` is set to -1e30 so it computes the same function.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import circuits

try:
    from benchmarks.peers import missing_peer_message, peer_python
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from peers import missing_peer_message, peer_python
try:
    from benchmarks.published_debd import load_published, merge_published, update_circuits_json
    from benchmarks.results_io import add_debd_arguments, debd_directory, update_results
except ModuleNotFoundError:
    from published_debd import load_published, merge_published, update_circuits_json
    from results_io import add_debd_arguments, debd_directory, update_results

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "circuits.json"
CIRKIT_PYTHON = peer_python("cirkit")

# Published figures come from results/published_debd.json (recomputed from the HCLT
# authors' released logs by published_debd.py, with source, commit and citation);
# merge_published puts them beside ours in circuits.json.


# --------------------------------------------------------------- baseline
def chow_liu_baseline(train, test, alpha=1.0):
    """Exact maximum-likelihood Chow–Liu tree (Laplace smoothing), test LL in nats."""
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree

    n, v = train.shape
    x = train.astype(np.float64)
    n11 = x.T @ x
    n1 = x.sum(0)
    counts = np.empty((v, v, 2, 2))
    counts[:, :, 1, 1] = n11
    counts[:, :, 1, 0] = n1[:, None] - n11
    counts[:, :, 0, 1] = n1[None, :] - n11
    counts[:, :, 0, 0] = n - n1[:, None] - n1[None, :] + n11
    joint = (counts + alpha / 4) / (n + alpha)
    marginal = (np.stack([n - n1, n1], 1) + alpha / 2) / (n + alpha)
    mi = np.einsum("ijab,ijab->ij", joint,
                   np.log(joint / (marginal[:, None, :, None] * marginal[None, :, None, :])))
    np.fill_diagonal(mi, 0.0)
    weights = mi.max() + 1.0 - mi  # positive: the MST of these is the max-MI spanning tree
    np.fill_diagonal(weights, 0.0)
    tree = minimum_spanning_tree(weights).toarray()
    tree = (tree + tree.T) > 0
    order, parents = breadth_first_order(tree, 0, directed=False)
    t = test.astype(int)
    ll = np.log(marginal[0, t[:, 0]])
    for child in order[1:]:
        parent = parents[child]
        conditional = joint[parent, child] / joint[parent, child].sum(1, keepdims=True)
        ll = ll + np.log(conditional[t[:, parent], t[:, child]])
    return float(ll.mean())


# ---------------------------------------------------------- DEBD training
def density_estimation(recipe, debd=None, on_dataset=None):
    """`circuits.fit_debd` on every dataset of ``debd`` (None: the shipped ones).

    ``recipe`` holds the keyword arguments of ``fit_debd`` (its defaults are the
    published recipe; the benchmark adds only the time budget ``max_seconds``).
    ``on_dataset(name, row)`` is called after each dataset.
    """
    results = {}
    for name in circuits.list_debd(debd):
        data = circuits.load_debd(name, debd)
        started = time.perf_counter()
        cpu_started = time.process_time()
        circuit, result = circuits.fit_debd(data["train"], data["valid"], key=jax.random.key(0),
                                            progress=False, **recipe)
        seconds_used = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        test = circuits.average_log_likelihood(circuit, data["test"])
        baseline = chow_liu_baseline(data["train"], data["test"])
        results[name] = {
            "num_variables": int(data["train"].shape[1]),
            "num_train": int(data["train"].shape[0]),
            "test_log_likelihood": test,
            "valid_log_likelihood": float(np.max(result.valid_log_likelihood)),
            "epochs": int(result.num_epochs),
            "stop_reason": result.stop_reason,
            "seconds": seconds_used,
            "cpu_seconds": cpu_seconds,
            "latent": circuit.structure.num_units,
            "num_parameters": circuit.num_parameters,
            "stages": len(circuit.structure.stages),
            "valid_history": [float(v) for v in result.valid_log_likelihood],
            "chow_liu_tree_test_log_likelihood": baseline,
            "published": None,  # filled by merge_published from published_debd.json
        }
        if on_dataset is not None:
            on_dataset(name, results[name])
        results[name]["map_completion"] = map_completion(circuit, data["test"])
        if on_dataset is not None:
            on_dataset(name, results[name])
        print(f"{name:10s} test LL {test:9.3f}  (Chow-Liu tree {baseline:9.3f})  "
              f"{result.num_epochs} epochs in {seconds_used:.0f} s ({result.stop_reason})", flush=True)
    return results


def map_completion(circuit, test, num_rows=500, seed=0):
    """MAP completions of test rows from a random half of their variables.

    For the first ``num_rows`` test rows, each variable is observed with probability
    1/2 (numpy seed ``seed``) and ``circuit.map`` completes the rest, by max-product
    alone (``refine=None``) and with the default ICM refinement. Reported per method:
    the fraction of rows whose completion is at least as likely as the true row
    (``log p(completed) >= log p(true)``; the true row is one completion, so a MAP
    solver scores 1), the mean and median of ``log p(completed) - log p(true)``, and
    the seconds taken (compilation included).
    """
    rows = test[:num_rows]
    evidence = np.random.default_rng(seed).random(rows.shape) < 0.5
    log_p_true = np.asarray(circuit.log_prob(rows), np.float64)
    report = {"num_rows": int(len(rows)), "evidence": "each variable observed with "
              f"probability 1/2 (numpy seed {seed})"}
    for label, refine in (("max_product", None), ("icm", "icm")):
        started = time.perf_counter()
        completed = np.asarray(circuit.map(rows, evidence, refine=refine)[0])
        seconds = time.perf_counter() - started
        gap = np.asarray(circuit.log_prob(completed), np.float64) - log_p_true
        report[label] = {"fraction_at_least_as_likely_as_true_row": float(np.mean(gap >= -1e-5)),
                         "mean_log_likelihood_gap": float(gap.mean()),
                         "median_log_likelihood_gap": float(np.median(gap)),
                         "seconds": seconds}
    print(f"  MAP, 50% evidence: completion >= true row on "
          f"{report['max_product']['fraction_at_least_as_likely_as_true_row']:.1%} "
          f"(max-product), {report['icm']['fraction_at_least_as_likely_as_true_row']:.1%} "
          "(ICM)", flush=True)
    return report


def map_table_markdown(report: dict) -> str:
    """docs/circuits.md's MAP table from ``circuits.json`` (a test checks the page quotes it)."""
    lines = ["| dataset | variables | max-product | ICM (default) |", "|---|---:|---:|---:|"]
    cell = lambda m: (f"{100 * m['fraction_at_least_as_likely_as_true_row']:.1f} %, "
                      f"{m['mean_log_likelihood_gap']:+.2f}".replace("-", "−"))
    for name, row in report["density_estimation"].items():
        m = row["map_completion"]
        lines.append(f"| {name} | {row['num_variables']} | {cell(m['max_product'])} | "
                     f"{cell(m['icm'])} |")
    first = next(iter(report["density_estimation"].values()))["map_completion"]
    lines += ["", f"The first {first['num_rows']} test rows of each dataset, {first['evidence']}: "
              "the fraction of rows whose completion is at least as likely as the true row, "
              "and the mean log p(completion) − log p(true row) in nats; the models are the "
              "density-estimation table's."]
    return "\n".join(lines) + "\n"


def throughput_table_markdown(report: dict) -> str:
    """docs/circuits.md's throughput table from ``circuits.json`` (a test checks the page)."""
    t = report["throughput"]
    setup = report["setup"]["throughput"]
    if "load_average" in t:  # measured alone (--throughput)
        load_start, load_end = t["load_average"]["at_start"][0], t["load_average"]["at_end"][0]
    else:
        load_start = report["machine"]["load_average_at_start"][0]
        load_end = report["load_average_at_end"][0]
    lines = ["| samples per second | ours | cirkit, 1 thread | cirkit, 2 threads | ours / best cirkit |",
             "|---|---:|---:|---:|---:|"]
    for name, label in (("forward", "forward"), ("forward_backward", "forward + backward")):
        peers = [t["cirkit"][f"{n}_thread"].get(name, {}).get("samples_per_s") for n in (1, 2)]
        cells = " | ".join("—" if v is None else f"{v:,.0f}" for v in peers)
        best = t["ratio_over_best_cirkit_setting"][name]
        lines.append(f"| {label} | {t['ours'][name]['samples_per_s']:,.0f} | {cells} | "
                     f"{'—' if best is None else f'{best:.2f}x'} |")
    lines += ["", f"Same architecture in both: {setup['region_graph']}, {setup['layer']}, "
              f"{setup['num_units']} units, {setup['inputs']}, batch {setup['batch']}; median of "
              f"{setup['repeats']} calls after warm-up. Ours: {t['ours']['threads']}. Load average "
              f"{load_start:.1f} at the start of the run and {load_end:.1f} at its end."]
    return "\n".join(lines) + "\n"


def compile_table_markdown(report: dict) -> str:
    """docs/circuits.md's compile-scaling table from ``circuits.json`` (a test checks the page)."""
    c = report["compile_scaling"]
    lines = ["| variables | stages | pass | structure (s) | first EM epoch (s) | later epoch (s) "
             "| first / later | first `sample` (s) | later (s) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]

    def line(row, times, label, structure):
        return (f"| {row['num_variables']:,} | {row['stages']} | {label} | {structure} | "
                f"{times['first_em_epoch_seconds']:.1f} | {times['later_em_epoch_seconds']:.2f} | "
                f"{times['first_over_later_epoch']:.1f} | {times['first_sample_seconds']:.1f} | "
                f"{times['later_sample_seconds']:.3f} |")

    for row in c["widths"].values():
        lines.append(line(row, row, row.get("pass", "unrolled"), f"{row['structure_seconds']:.1f}"))
        if "unrolled" in row:
            lines.append(line(row, row["unrolled"], "unrolled", ""))
    load = c["machine"]
    lines += ["", f"{c['model']}; data: {c['data']}. Load average "
              f"{load['load_average_at_start'][0]:.1f} at the start, {load['load_average_at_end'][0]:.1f} "
              f"at the end. Goal: {c['goal']}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------ compile scaling
def synthetic_tree_data(num_variables, num_rows, seed=0, window=20, flip=0.1):
    """Binary rows from a tree Bayesian network: variable ``i`` copies a parent drawn among
    the ``window`` variables before it, flipped with probability ``flip``. The learned
    Chow–Liu tree is then deep (depth grows with the number of variables), as on real data
    where a hub-and-chain tree is common."""
    rng = np.random.default_rng(seed)
    data = np.zeros((num_rows, num_variables), np.int8)
    data[:, 0] = rng.random(num_rows) < 0.5
    for i in range(1, num_variables):
        parent = rng.integers(max(0, i - window), i)
        data[:, i] = data[:, parent] ^ (rng.random(num_rows) < flip)
    return data


def _compile_and_run_times(circuit, data):
    """Seconds of the first and a later full-batch EM epoch and ``sample`` call."""
    epochs = []
    for _ in range(2):
        result = circuits.em(circuit, data, num_epochs=1, progress=False)
        epochs.append(result.seconds)
    samples = []
    for seed in (1, 2):
        started = time.perf_counter()
        jax.block_until_ready(circuit.sample(jax.random.key(seed), 100))
        samples.append(time.perf_counter() - started)
    return {"first_em_epoch_seconds": epochs[0], "later_em_epoch_seconds": epochs[1],
            "first_over_later_epoch": epochs[0] / epochs[1],
            "first_sample_seconds": samples[0], "later_sample_seconds": samples[1]}


def compile_scaling(widths, num_rows=2000, latent=12):
    """Compile and run times of a hidden Chow–Liu tree circuit as the number of variables grows.

    Per width: structure compilation (``compile_circuit``), the first full-batch EM epoch
    (XLA compilation included) against a second one (the compiled loop reused), and the first
    ``sample`` call against a second one; with the number of folded stages (depth) and
    the widest partition, the quantities the compiled program's size follows. Circuits deep
    enough for the scanned upward pass (``SCAN_MIN_STAGES``) are also timed with the unrolled
    pass (``unrolled``, caches cleared between the two), the default below that depth.
    """
    from circuits import circuit as circuit_module

    rows = {}
    default_threshold = circuit_module.SCAN_MIN_STAGES
    for width in widths:
        data = synthetic_tree_data(width, num_rows)
        started = time.perf_counter()
        graph = circuits.chow_liu_tree(data)
        circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), latent, "cp",
                                           key=jax.random.key(0), data=data)
        structure_seconds = time.perf_counter() - started
        stages = circuit.structure.stages
        jax.clear_caches()
        row = {"num_variables": width, "num_rows": num_rows, "latent": latent,
               "stages": len(stages), "widest_partition": max(s.index.shape[1] for s, _ in stages),
               "num_parameters": circuit.num_parameters, "structure_seconds": structure_seconds,
               "pass": "scanned" if len(stages) >= default_threshold else "unrolled",
               **_compile_and_run_times(circuit, data)}
        if row["pass"] == "scanned":
            try:
                circuit_module.SCAN_MIN_STAGES = 10**9
                jax.clear_caches()
                row["unrolled"] = _compile_and_run_times(circuit, data)
            finally:
                circuit_module.SCAN_MIN_STAGES = default_threshold
                jax.clear_caches()
        rows[str(width)] = row
        print(f"D={width:5d}  stages {len(stages):4d}  structure {structure_seconds:6.1f} s  EM epoch "
              f"first {row['first_em_epoch_seconds']:6.1f} s / later "
              f"{row['later_em_epoch_seconds']:6.2f} s  sample first "
              f"{row['first_sample_seconds']:6.1f} s / later {row['later_sample_seconds']:6.3f} s"
              + (f"  (unrolled: {row['unrolled']['first_em_epoch_seconds']:.1f} / "
                 f"{row['unrolled']['later_em_epoch_seconds']:.2f} s, sample "
                 f"{row['unrolled']['first_sample_seconds']:.1f} s)" if "unrolled" in row else ""),
              flush=True)
    return rows


# --------------------------------------------------------------- throughput
def _time(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def ours_throughput(graph, units, batch, repeats):
    circuit = circuits.compile_circuit(graph, circuits.Categorical(2), units, "cp",
                                       key=jax.random.key(0), backend="einsum")
    x = jax.random.bernoulli(jax.random.key(1), 0.5, (batch, graph.num_variables))
    x = x.astype(jnp.float32)
    observed = jnp.ones(x.shape, bool)

    @eqx.filter_jit
    def forward(c, x):
        return c.log_marginal_prepared(x, observed)

    @eqx.filter_jit
    def forward_backward(c, x):
        return eqx.filter_value_and_grad(lambda c: -c.log_marginal_prepared(x, observed).mean())(c)

    out = {}
    for name, fn in [("forward", forward), ("forward_backward", forward_backward)]:
        median = _time(fn, circuit, x, repeats=repeats)
        out[name] = {"median_s": median, "samples_per_s": batch / median}
    out["num_parameters"] = circuit.num_parameters
    return out


_CIRKIT_RUNNER = r'''
import json, sys, time
import numpy as np, torch
import cirkit.backend.torch.semiring as semiring_module
semiring_module.LOG_CLAMP_MIN = -1e30  # compute the same function as ours (see notes)
from cirkit.pipeline import PipelineContext
from cirkit.symbolic.layers import CategoricalLayer
from cirkit.templates.region_graph import PartitionNode, RegionGraph, RegionNode
from cirkit.utils.scope import Scope
import cirkit

spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
regions = [RegionNode(r) for r in spec["regions"]]
nodes, in_nodes = list(regions), {}
for parent, children in spec["partitions"]:
    partition = PartitionNode(Scope.union(*(regions[c].scope for c in children)))
    nodes.append(partition)
    in_nodes[partition] = [regions[c] for c in children]
    in_nodes.setdefault(regions[parent], []).append(partition)
graph = RegionGraph(nodes, in_nodes, outputs=[regions[spec["root"]]])
symbolic = graph.build_circuit(
    input_factory=lambda scope, n: CategoricalLayer(scope, n, num_categories=2),
    sum_product="cp-t", num_input_units=spec["units"], num_sum_units=spec["units"])
ctx = PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True)
with ctx:
    compiled = ctx.compile(symbolic)
x = torch.randint(0, 2, (spec["batch"], spec["num_variables"]),
                  generator=torch.Generator().manual_seed(0))

def forward():
    with torch.no_grad():
        return compiled(x)

def forward_backward():
    compiled.zero_grad()
    out = compiled(x)
    (-out.mean()).backward()
    return out

result = {"threads": spec["threads"], "torch": torch.__version__,
          "libcirkit": getattr(cirkit, "__version__", "0.3.1"),
          "num_parameters": sum(p.numel() for p in compiled.parameters())}
for name, fn in [("forward", forward), ("forward_backward", forward_backward)]:
    fn(); fn()
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    median = float(np.median(times))
    result[name] = {"median_s": median, "samples_per_s": spec["batch"] / median}
print("RESULT " + json.dumps(result))
'''


def cirkit_throughput(graph, units, batch, repeats, threads):
    if CIRKIT_PYTHON is None:
        return {"skipped": missing_peer_message("cirkit")}
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, runner = pathlib.Path(tmp) / "spec.json", pathlib.Path(tmp) / "run.py"
        runner.write_text(_CIRKIT_RUNNER)
        spec_path.write_text(json.dumps({
            "regions": [list(r) for r in graph.regions],
            "partitions": [[p.region, list(p.children)] for p in graph.partitions],
            "root": graph.root, "num_variables": graph.num_variables, "units": units,
            "batch": batch, "threads": threads, "repeats": repeats,
        }))
        done = subprocess.run([CIRKIT_PYTHON, str(runner), str(spec_path)], capture_output=True,
                              text=True, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"failed": (done.stdout + done.stderr)[-2000:]}
    return json.loads(lines[-1][len("RESULT "):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke run)")
    add_debd_arguments(parser)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--compile-scaling", action="store_true",
                        help="only measure compile and epoch times at D = 100, 500, 1000, 1500 "
                             "(synthetic data) and write them to the results file's "
                             "'compile_scaling' entry, leaving the rest of it as it is")
    parser.add_argument("--throughput", action="store_true",
                        help="only re-measure the throughput against cirkit and replace the "
                             "results file's 'throughput' entry, leaving the rest as it is")
    parser.add_argument("--merge-published", action="store_true",
                        help="only merge results/published_debd.json into the existing "
                             "circuits.json (no training)")
    args = parser.parse_args()
    if args.merge_published:
        update_circuits_json(args.out)
        print(f"merged the published figures into {args.out}")
        return
    if args.compile_scaling:
        widths = (50, 100) if args.quick else (100, 500, 1000, 1500)
        machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                   "jax": jax.__version__, "load_average_at_start": list(os.getloadavg())}
        rows = compile_scaling(widths)
        machine["load_average_at_end"] = list(os.getloadavg())
        update_results(args.out, ["compile_scaling"], {
            "machine": machine, "data": "synthetic_tree_data (window 20, flip 0.1), 2,000 rows",
            "model": "Chow-Liu tree, CP layers, latent 12, Bernoulli inputs, full-batch EM",
            "goal": "at D = 1,000: structure under 30 s, first EM epoch under 2x a later one, "
                    "sample compiled in under 30 s", "widths": rows})
        print(f"wrote compile_scaling to {args.out}")
        return
    if args.throughput:
        existing = json.loads(args.out.read_text())
        update_results(args.out, ["throughput"], throughput(existing["setup"]["throughput"]))
        print(f"wrote throughput to {args.out}")
        return
    try:  # before anything runs
        debd = debd_directory(args.data, args.shipped_debd)
    except FileNotFoundError as err:
        parser.error(str(err))
    quick = args.quick
    setup = {
        "debd": {"model": "mixture of hidden Chow-Liu trees, CP layers, Bernoulli inputs",
                 "recipe": "circuits.fit_debd with its defaults (the published hyper-parameters "
                           "of Liu & Van den Broeck 2021) and a wall-clock budget per dataset",
                 "fit_debd": ({"latent": 4, "num_trees": 2, "minibatch_epochs": 2,
                               "fullbatch_epochs": 2, "max_seconds": 60} if quick else
                              {"max_seconds": 900}),
                 "key": "jax.random.key(0)",
                 "selection": "fit_debd's: the full-batch phase's best validation log-likelihood"},
        "throughput": {"region_graph": "quad-tree 28x28 (4-way splits)", "layer": "CP "
                       "(Hadamard then sum; cirkit 'cp-t')", "num_units": 64,
                       "batch": 512, "inputs": "categorical, 2 categories",
                       "repeats": 3 if quick else 7},
    }
    started = time.perf_counter()
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
                    "load_average_at_start": list(os.getloadavg())},
        "versions": {"jax": jax.__version__, "equinox": eqx.__version__,
                     "probinf_circuits": "this checkout"},
        "setup": setup,
        "debd_source": "the datasets shipped with the package" if debd is None else str(debd),
        "published_figures": None,  # filled by merge_published
        "complete": False,
    }
    update_results(args.out, [], report, fresh=True)
    report["density_estimation"] = density_estimation(
        setup["debd"]["fit_debd"], debd,
        on_dataset=lambda name, row: update_results(args.out, ["density_estimation", name], row))

    report["throughput"] = throughput(setup["throughput"])
    report["load_average_at_end"] = list(os.getloadavg())
    report["total_seconds"] = time.perf_counter() - started
    merge_published(report, load_published())
    report["complete"] = True
    update_results(args.out, [], report)
    print(json.dumps(report["throughput"]["ratio_ours_over_cirkit"], indent=2))
    print(f"wrote {args.out} in {report['total_seconds']:.0f} s")


def throughput(t):
    """Ours against cirkit (1 and 2 threads) on the quad-tree architecture of ``t``."""
    load_at_start = list(os.getloadavg())
    graph = circuits.quad_tree(28, 28)
    ours = ours_throughput(graph, t["num_units"], t["batch"], t["repeats"])
    ours["threads"] = "XLA CPU default (both cores)"
    peers = {f"{n}_thread": cirkit_throughput(graph, t["num_units"], t["batch"], t["repeats"], n)
             for n in (1, 2)}
    ratios = {}
    for label, peer in peers.items():
        if "forward" in peer:
            ratios[label] = {k: ours[k]["samples_per_s"] / peer[k]["samples_per_s"]
                             for k in ("forward", "forward_backward")}
    best_peer = {k: max((p[k]["samples_per_s"] for p in peers.values() if k in p), default=None)
                 for k in ("forward", "forward_backward")}
    return {
        "ours": ours, "cirkit": peers, "ratio_ours_over_cirkit": ratios,
        "ratio_over_best_cirkit_setting": {
            k: (ours[k]["samples_per_s"] / v if v else None) for k, v in best_peer.items()},
        "goal": "at least 2x cirkit on CPU",
        "gpu": "no GPU in this run: the Pallas kernel and PyJuice were not timed",
        "load_average": {"at_start": load_at_start, "at_end": list(os.getloadavg())},
    }


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    main()

"""Benchmark: predictive-coding classifiers on scikit-learn's digits and MNIST-1D.

Test accuracy of standard PC and incremental PC (``probinf.pcn``) next to backprop on the
same MLP, and time per epoch next to PCX ("Benchmarking Predictive Coding Networks -- Made
Simple", ICLR 2025) with the same architecture, T, batch size, activity step size and
weight optimizer. Run with::

    /work/venv/bin/python benchmarks/bench_pcn.py

Needs scikit-learn and mnist1d in this environment (benchmark-only; not runtime
dependencies) and PCX in its own virtualenv, because PCX needs jax < 0.5 (Python 3.11,
pcx 0.6.3, jax 0.4.38; the pins are in ``benchmarks/peers.py``)::

    python benchmarks/peers.py --only pcx

Set ``PCX_PYTHON`` to use another interpreter. JPC is not installable from the package
index here, so it is not compared. Writes ``benchmarks/results/pcn.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from probinf import pcn
from probinf.xla_workaround import environ_without_workaround

try:
    from benchmarks.peers import missing_peer_message, peer_python
    from benchmarks.results_io import update_results
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from peers import missing_peer_message, peer_python
    from results_io import update_results

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "pcn.json"
PCX_PYTHON = peer_python("pcx")

SEEDS = 3
COMMON = dict(activation="gelu", batch_size=32, T=8, step_size=0.005, lr=1e-3)
DATASETS = {
    "digits": dict(hidden=128, epochs=20),
    "mnist1d": dict(hidden=256, epochs=30),
}
TIMING_REPEATS = 10


def load_digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    mean, scale = x_train.mean(0), x_train.std(0) + 0.1  # some pixels are always blank
    return (x_train - mean) / scale, y_train, (x_test - mean) / scale, y_test


def load_mnist1d_split():
    # Generated locally from the MNIST-1D recipe (Greydanus & Kobak 2024); nothing is downloaded.
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x_train, x_test = data["x"].astype(np.float32), data["x_test"].astype(np.float32)
    mean, scale = x_train.mean(), x_train.std()
    return (x_train - mean) / scale, data["y"], (x_test - mean) / scale, data["y_test"]


def accuracy(net, x, y) -> float:
    return float(np.mean(np.asarray(pcn.predict(net, x).argmax(-1)) == y))


def run_ours(x_train, y_train, x_test, y_test, sizes, epochs, algorithm):
    accuracies, epoch_seconds, epoch_cpu_seconds = [], [], []
    optimizer = optax.adamw(COMMON["lr"])
    kwargs = dict(
        algorithm=algorithm, batch_size=COMMON["batch_size"], steps=COMMON["T"],
        step_size=COMMON["step_size"], progress=False,
    )
    for seed in range(SEEDS):
        net = pcn.mlp(jax.random.key(seed), sizes, activation=jax.nn.gelu, output="categorical")
        result = pcn.train(jax.random.key(100 + seed), net, optimizer, x_train, y_train, epochs=epochs, **kwargs)
        accuracies.append(accuracy(result.net, x_test, y_test))
        if seed == 0:
            # Time single epochs of the compiled loop (the first call above compiled it).
            state = result
            for repeat in range(TIMING_REPEATS):
                start, cpu_start = time.perf_counter(), time.process_time()
                state = pcn.train(
                    jax.random.key(1000 + repeat), state.net, optimizer, x_train, y_train,
                    epochs=1, opt_state=state.opt_state, **kwargs,
                )
                jax.block_until_ready(jax.tree_util.tree_leaves(state.net))
                epoch_seconds.append(time.perf_counter() - start)
                epoch_cpu_seconds.append(time.process_time() - cpu_start)
    return accuracies, epoch_seconds, epoch_cpu_seconds


PCX_RUNNER = r"""
# PCX side of the benchmark: same MLP, T, batch size and optimizers; runs in its own venv.
import json
import sys
import time

import numpy as np

config = json.loads(sys.argv[1])
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
import pcx as px  # noqa: E402
import pcx.functional as pxf  # noqa: E402
import pcx.nn as pxnn  # noqa: E402
import pcx.predictive_coding as pxc  # noqa: E402
import pcx.utils as pxu  # noqa: E402

ACTIVATIONS = {"gelu": jax.nn.gelu, "tanh": jnp.tanh, "leaky_relu": jax.nn.leaky_relu}


class Model(pxc.EnergyModule):
    def __init__(self, sizes, act_fn):
        super().__init__()
        self.act_fn = px.static(act_fn)
        self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.vodes = [pxc.Vode() for _ in sizes[1:-1]] + [pxc.Vode(pxc.ce_energy)]
        self.vodes[-1].h.frozen = True

    def __call__(self, x, y):
        for vode, layer in zip(self.vodes[:-1], self.layers[:-1]):
            x = vode(self.act_fn(layer(x)))
        x = self.vodes[-1](self.layers[-1](x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


@pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model):
    return model(x, y)


@pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model):
    out = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), out


@pxf.jit(static_argnums=0)
def train_on_batch(T, x, y, *, model, optim_w, optim_h):
    model.train()
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)
    optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
    for _ in range(T):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]), has_aux=True)(energy)(x, model=model)
        optim_h.step(model, g["model"])
    optim_h.clear()
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(x, model=model)
    optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])


@pxf.jit()
def predict_batch(x, *, model):
    model.eval()
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        return forward(x, None, model=model).argmax(axis=-1)


def main():
    data = np.load(config["data"])
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = data["x_test"], data["y_test"]
    num_classes = int(config["sizes"][-1])
    batch, T = config["batch_size"], config["T"]
    results = {"accuracy": [], "epoch_seconds": [], "epoch_cpu_seconds": []}
    for seed in range(config["seeds"]):
        px.RKG.seed(seed)
        model = Model(config["sizes"], ACTIVATIONS[config["activation"]])
        optim_w = pxu.Optim(lambda: optax.adamw(config["lr"]), pxu.M(pxnn.LayerParam)(model))
        optim_h = pxu.Optim(lambda: optax.sgd(config["step_size"]))
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(jnp.zeros((batch, x_train.shape[1])), None, model=model)
        rng = np.random.default_rng(seed)
        num_batches = x_train.shape[0] // batch
        times, cpu_times = [], []
        for epoch in range(config["epochs"]):
            order = rng.permutation(x_train.shape[0])[: num_batches * batch].reshape(num_batches, batch)
            start, cpu_start = time.perf_counter(), time.process_time()
            for rows in order:
                train_on_batch(T, jnp.asarray(x_train[rows]), jax.nn.one_hot(y_train[rows], num_classes), model=model, optim_w=optim_w, optim_h=optim_h)
            jax.block_until_ready(jax.tree_util.tree_leaves(model))
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        model.clear_params(pxc.VodeParam)
        predictions = np.asarray(predict_batch(jnp.asarray(x_test), model=model))
        results["accuracy"].append(float((predictions == y_test).mean()))
        results["epoch_seconds"].append(times)
        results["epoch_cpu_seconds"].append(cpu_times)
    results["versions"] = {"pcx": __import__("importlib.metadata").metadata.version("pcx"), "jax": jax.__version__}
    print("RESULT " + json.dumps(results))


main()
"""


def run_pcx(data_path, sizes, epochs):
    if PCX_PYTHON is None:
        return {"error": missing_peer_message("pcx")}
    config = dict(COMMON, data=str(data_path), sizes=sizes, epochs=epochs, seeds=SEEDS)
    with tempfile.NamedTemporaryFile("w", suffix="_pcx_runner.py", delete=False) as f:
        f.write(PCX_RUNNER)
        script = f.name
    try:
        out = subprocess.run(
            [PCX_PYTHON, script, json.dumps(config)], capture_output=True, text=True, timeout=1800,
            env={**environ_without_workaround(), "JAX_PLATFORMS": "cpu"},
        )
    finally:
        os.unlink(script)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return {"error": (out.stderr or out.stdout)[-2000:]}
    return json.loads(lines[-1][len("RESULT "):])


def summary(values):
    values = np.asarray(values, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
            "per_seed": [float(v) for v in values]}


def markdown_table(report: dict) -> str:
    """The accuracy and epoch-time table of docs/pcn.md, from ``pcn.json``."""
    results = report["results"]
    names = list(results)
    headers = {"digits": "digits", "mnist1d": "MNIST-1D"}
    lines = ["| | " + " | ".join(
        f"{headers.get(name, name)} ({'–'.join(str(s) for s in results[name]['sizes'])}, "
        f"{results[name]['epochs']} epochs)" for name in names) + " |",
        "|---|" + "---|" * len(names)]
    rows = [("backprop", "probinf_backprop"), ("PC (`probinf.pcn`)", "probinf_pc"),
            ("iPC (`probinf.pcn`)", "probinf_ipc")]
    pcx = next((results[name]["pcx_pc"] for name in names if "versions" in results[name]["pcx_pc"]), None)
    if pcx is not None:
        rows.append((f"PC (PCX {pcx['versions']['pcx']})", "pcx_pc"))
    for label, key in rows:
        cells = []
        for name in names:
            accuracy = results[name][key].get("test_accuracy")
            cells.append(f"{100 * accuracy['mean']:.2f} ± {100 * accuracy['std']:.2f} %" if accuracy else "error")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if pcx is not None:
        cells = [(f"{results[name]['speedup_pc_epoch_vs_pcx']:.1f}×, "
                  f"{results[name]['speedup_pc_epoch_vs_pcx_min_wall']:.1f}×, "
                  f"{results[name]['speedup_pc_epoch_vs_pcx_cpu']:.1f}×")
                 if "speedup_pc_epoch_vs_pcx" in results[name] else "—" for name in names]
        lines.append("| epoch time, PCX / ours (median wall, fastest wall, CPU) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Predictive-coding classifiers (probinf.pcn) "
                                     "against backprop and PCX; the results file is rewritten "
                                     "after each dataset")
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the docs table of --out and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads(args.out.read_text())), end="")
        return 0
    loads = [os.getloadavg()[0]]
    report = {
        "description": (
            "MLP classifiers trained by predictive coding (probinf.pcn: standard PC and iPC) and by "
            "backprop on the same architecture, and PCX's standard PC on the same architecture, T, "
            "batch size, activity step size (plain SGD on the activities = Euler) and AdamW weight "
            "optimizer. Accuracy: mean over seeds on the held-out test split. Time per epoch: median "
            "wall time of one epoch after compilation (ours: one call of pcn.train(epochs=1), "
            "including input checks; PCX: its documented per-batch jitted train_on_batch loop, "
            "first epoch excluded). The machine is shared with other jobs, so wall times are noisy; the "
            "process CPU time per epoch (all threads) and the fastest epoch are reported too, and "
            "speedup = PCX time / probinf time for each."
        ),
        "config": dict(COMMON, seeds=SEEDS, timing_repeats=TIMING_REPEATS, datasets=DATASETS,
                       output_energy="cross-entropy", hidden_energy="squared error, unit variance",
                       init="feed-forward"),
        "machine": {
            "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "jax_backend": jax.default_backend(),
        },
        "versions": {name: importlib.metadata.version(name) for name in
                     ("probinf", "jax", "equinox", "optax", "scikit-learn", "mnist1d")},
        "jpc": "not compared: jpc is not available from the package index on this machine",
        "results": {},
        "complete": False,
    }
    update_results(args.out, [], report, fresh=True)
    loaders = {"digits": load_digits_split, "mnist1d": load_mnist1d_split}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in DATASETS.items():
            x_train, y_train, x_test, y_test = loaders[name]()
            sizes = [x_train.shape[1], spec["hidden"], spec["hidden"], 10]
            print(f"== {name}: train {x_train.shape}, test {x_test.shape}, MLP {sizes}", flush=True)
            entry = {"train_rows": int(x_train.shape[0]), "test_rows": int(x_test.shape[0]),
                     "sizes": sizes, "epochs": spec["epochs"],
                     "batches_per_epoch": int(x_train.shape[0] // COMMON["batch_size"])}
            xj, yj, xt = jnp.asarray(x_train), jnp.asarray(y_train), jnp.asarray(x_test)
            for algorithm in ("backprop", "pc", "ipc"):
                accs, seconds, cpu_seconds = run_ours(xj, yj, xt, y_test, sizes, spec["epochs"], algorithm)
                entry[f"probinf_{algorithm}"] = {
                    "test_accuracy": summary(accs),
                    "epoch_seconds_median": float(np.median(seconds)),
                    "epoch_seconds_min": float(np.min(seconds)),
                    "epoch_cpu_seconds_median": float(np.median(cpu_seconds)),
                    "epoch_seconds": [float(s) for s in seconds],
                }
                print(f"   probinf {algorithm:8s} acc {np.mean(accs):.4f}  epoch {np.median(seconds) * 1e3:.1f} ms", flush=True)
            data_path = pathlib.Path(tmp) / f"{name}.npz"
            np.savez(data_path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
            peer = run_pcx(data_path, sizes, spec["epochs"])
            if "error" in peer:
                entry["pcx_pc"] = peer
                print(f"   pcx failed: {peer['error'][-300:]}", flush=True)
            else:
                seconds = [s for run in peer["epoch_seconds"] for s in run[1:]]
                cpu_seconds = [s for run in peer["epoch_cpu_seconds"] for s in run[1:]]
                entry["pcx_pc"] = {
                    "test_accuracy": summary(peer["accuracy"]),
                    "epoch_seconds_median": float(np.median(seconds)),
                    "epoch_seconds_min": float(np.min(seconds)),
                    "epoch_cpu_seconds_median": float(np.median(cpu_seconds)),
                    "first_epoch_seconds_with_compile": [run[0] for run in peer["epoch_seconds"]],
                    "versions": peer["versions"],
                    "environment": f"separate virtualenv ({PCX_PYTHON}), run as a subprocess",
                }
                ours = entry["probinf_pc"]
                entry["speedup_pc_epoch_vs_pcx"] = float(np.median(seconds) / ours["epoch_seconds_median"])
                entry["speedup_pc_epoch_vs_pcx_min_wall"] = float(np.min(seconds) / ours["epoch_seconds_min"])
                entry["speedup_pc_epoch_vs_pcx_cpu"] = float(
                    np.median(cpu_seconds) / ours["epoch_cpu_seconds_median"]
                )
                print(f"   pcx      pc       acc {np.mean(peer['accuracy']):.4f}  epoch {np.median(seconds) * 1e3:.1f} ms", flush=True)
            gap = 100 * (entry["probinf_backprop"]["test_accuracy"]["mean"] - entry["probinf_pc"]["test_accuracy"]["mean"])
            entry["pc_accuracy_gap_to_backprop_points"] = float(gap)
            entry["goal_pc_within_1_point_of_backprop"] = bool(gap <= 1.0)
            if "speedup_pc_epoch_vs_pcx" in entry:
                entry["goal_faster_per_epoch_than_pcx"] = bool(entry["speedup_pc_epoch_vs_pcx"] > 1.0)
            report["results"][name] = entry
            loads.append(os.getloadavg()[0])
            report["machine"]["load_average_1min_during_run"] = loads
            update_results(args.out, [], report)
    report["complete"] = True
    update_results(args.out, [], report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from probinf import xla_cpu_workaround

    xla_cpu_workaround()  # before JAX's first computation (see docs/flows.md)
    sys.exit(main())

"""Device check: the GPU paths of probinf at growing sizes, in one command.

For a person with an NVIDIA GPU (``pip install -e ".[cuda,test]"``)::

    python benchmarks/bench_gpu.py

It times, with `benchmarks/timing.py` (contenders alternated call by call, warm-up
excluded, 7 rounds):

* the circuits' sum layer: the fused Pallas kernel (`circuits.kernels.fused_log_matmul_exp`)
  against the einsum path (`circuits.layers.log_matmul_exp`), forward and forward+backward,
  at growing batch and layer widths;
* the bootstrap particle filter (`probinf.smc.particle_filter`) on a linear-Gaussian model,
  10^3 to 10^6 particles;
* the Kalman filter as a sequential ``lax.scan`` against the parallel-in-time
  ``lax.associative_scan`` (`probinf.smc.kalman_filter`), 10^2 to 10^5 steps,

and writes ``benchmarks/results/gpu.json`` as it goes, with the device, the versions and
every round time. Without a GPU it stops and says so; ``--allow-cpu`` runs it on the CPU at
small sizes (Pallas in interpret mode) to check the script, writing to ``--out`` (default
``benchmarks/results/gpu_cpu_smoke.json``), never to ``gpu.json``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp

try:
    from benchmarks.results_io import update_results
    from benchmarks.timing import compare
except ModuleNotFoundError:  # run as a script: benchmarks/ itself is on sys.path
    from results_io import update_results
    from timing import compare

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# (folds, batch, width) of a sum layer: width inputs and width outputs per fold.
KERNEL_SIZES = [(8, 1024, 32), (8, 4096, 64), (8, 16384, 128), (32, 16384, 128)]
PARTICLES = [1_000, 10_000, 100_000, 1_000_000]
FILTER_STEPS = 100
KALMAN_STEPS = [100, 1_000, 10_000, 100_000]
# --allow-cpu: small enough for Pallas' interpret mode.
SMOKE = {"kernel": [(2, 64, 16)], "particles": [1_000], "kalman": [100]}


def kernel_contenders(folds: int, batch: int, width: int) -> dict:
    from circuits.kernels import fused_log_matmul_exp
    from circuits.layers import log_matmul_exp

    keys = jax.random.split(jax.random.key(0), 2)
    h = jax.random.normal(keys[0], (folds, batch, width))
    log_w = jax.nn.log_softmax(jax.random.normal(keys[1], (folds, width, width)), axis=-1)
    contenders = {}
    for name, kernel in (("pallas", fused_log_matmul_exp), ("einsum", log_matmul_exp)):
        forward = jax.jit(kernel)
        backward = jax.jit(jax.grad(lambda a, b, k=kernel: jnp.sum(k(a, b)), argnums=(0, 1)))
        contenders[f"{name}_forward"] = lambda f=forward: f(h, log_w)
        contenders[f"{name}_forward_backward"] = lambda f=backward: f(h, log_w)
    return contenders


def linear_gaussian(steps: int):
    from probinf import smc

    eye = jnp.eye(2)
    model = smc.LinearGaussianSSM(jnp.zeros(2), eye, 0.9 * eye, 0.1 * eye, eye, 0.5 * eye,
                                  jnp.zeros((steps, 2)))
    _, observations = model.simulate(jax.random.key(1), steps)
    return smc.LinearGaussianSSM(jnp.zeros(2), eye, 0.9 * eye, 0.1 * eye, eye, 0.5 * eye,
                                 observations)


def particle_filter_contender(model, count: int):
    """A call of the bootstrap filter with ``count`` particles, a fresh key each call."""
    from probinf import smc

    run = jax.jit(lambda key: smc.particle_filter(key, smc.Bootstrap(model), count).log_evidence)
    keys = iter(range(10**6))
    return lambda: run(jax.random.key(next(keys)))


def kalman_contender(ssm, method: str):
    from probinf import smc

    run = jax.jit(lambda model: smc.kalman_filter(model, method=method).log_evidence)
    return lambda: run(ssm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--allow-cpu", action="store_true",
                        help="run without a GPU at small sizes, to check the script")
    parser.add_argument("--out", default=None, help="results file")
    args = parser.parse_args()
    on_gpu = jax.default_backend() == "gpu"
    if not on_gpu and not args.allow_cpu:
        sys.exit(f"no GPU: JAX's default backend is {jax.default_backend()!r}. Install the "
                 "`cuda` extra on a machine with an NVIDIA GPU (pip install -e '.[cuda]'), or "
                 "pass --allow-cpu to check the script at small sizes.")
    out = pathlib.Path(args.out) if args.out else RESULTS / (
        "gpu.json" if on_gpu else "gpu_cpu_smoke.json")
    kernel_sizes = KERNEL_SIZES if on_gpu else SMOKE["kernel"]
    particles = PARTICLES if on_gpu else SMOKE["particles"]
    kalman_steps = KALMAN_STEPS if on_gpu else SMOKE["kalman"]
    update_results(out, [], {
        "complete": False,
        "device": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "platform": platform.platform(),
        "versions": {name: importlib.metadata.version(name)
                     for name in ("jax", "jaxlib", "probinf")},
        "kernel": {}, "particle_filter": {}, "kalman": {},
    }, fresh=True)

    for folds, batch, width in kernel_sizes:
        timing = compare(kernel_contenders(folds, batch, width), ratios=[
            ("pallas_forward", "einsum_forward"),
            ("pallas_forward_backward", "einsum_forward_backward")])
        update_results(out, ["kernel", f"F{folds}_B{batch}_J{width}"], timing)
        print(f"kernel F={folds} B={batch} J={width}: pallas/einsum forward "
              f"{timing['ratios']['pallas_forward/einsum_forward']:.3f}",
              flush=True)

    model = linear_gaussian(FILTER_STEPS)
    for count in particles:
        timing = compare({"particle_filter": particle_filter_contender(model, count)})
        update_results(out, ["particle_filter", str(count)], timing)
        print(f"particle filter N={count}: "
              f"{timing['contenders']['particle_filter']['median_s']:.4f} s", flush=True)

    for steps in kalman_steps:
        ssm = linear_gaussian(steps)
        contenders = {method: kalman_contender(ssm, method) for method in ("sequential", "parallel")}
        timing = compare(contenders, ratios=[("parallel", "sequential")])
        update_results(out, ["kalman", str(steps)], timing)
        print(f"Kalman T={steps}: parallel/sequential "
              f"{timing['ratios']['parallel/sequential']:.3f}", flush=True)
    update_results(out, "complete", True)


if __name__ == "__main__":
    main()

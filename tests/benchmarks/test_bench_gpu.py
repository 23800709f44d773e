"""benchmarks/bench_gpu.py runs (at its CPU smoke sizes) and writes what it measured."""

import json
import pathlib
import subprocess
import sys

import jax

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_device_check_refuses_a_cpu_and_runs_its_smoke_sizes(tmp_path):
    script = str(REPO_ROOT / "benchmarks" / "bench_gpu.py")
    if jax.default_backend() != "gpu":
        refused = subprocess.run([sys.executable, script], capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode != 0 and "no GPU" in refused.stderr
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, script, "--allow-cpu", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["complete"] and report["backend"] == jax.default_backend()
    kernel = next(iter(report["kernel"].values()))
    assert set(kernel["contenders"]) == {"pallas_forward", "einsum_forward",
                                         "pallas_forward_backward", "einsum_forward_backward"}
    assert report["particle_filter"] and report["kalman"]
    ratio = next(iter(report["kalman"].values()))["ratios"]["parallel/sequential"]
    assert ratio > 0

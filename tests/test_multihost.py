"""Runs across processes (`jax.distributed` on 127.0.0.1, CPU, gloo collectives) give the
single-process answer: the training engine with ``sharding=mesh``, ``flows.fit_to_data`` on
it, and the sharded particle filter, on a mesh of one device per process."""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("_multihost_worker.py")
PROCESSES = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={devices}").strip()
    return env


def _result(out: str) -> dict:
    line = next(line for line in out.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    port = str(_free_port())
    directory = str(tmp_path_factory.mktemp("multihost"))
    workers = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(PROCESSES), port,
                                 directory],
                                env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(PROCESSES)]
    outputs = []
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=300)
        finally:
            worker.kill()
        assert worker.returncode == 0, err[-3000:]
        outputs.append(_result(out))
    local = subprocess.run([sys.executable, str(WORKER), "local"], env=_env(PROCESSES),
                           capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    single = subprocess.run([sys.executable, str(WORKER), "single"], env=_env(1),
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    return outputs, _result(local.stdout), _result(single.stdout)


def test_every_process_sees_the_global_mesh_and_the_same_result(runs):
    outputs, local, _ = runs
    assert [o["devices"] for o in outputs] == [PROCESSES] * PROCESSES == [local["devices"]] * 2
    assert outputs[0] == {**outputs[1], "devices": outputs[0]["devices"]}


def test_two_processes_equal_one_process_on_the_same_mesh(runs):
    outputs, local, _ = runs
    np.testing.assert_allclose(outputs[0]["params"], local["params"], rtol=1e-6)
    np.testing.assert_allclose(outputs[0]["losses"], local["losses"], rtol=1e-6)
    np.testing.assert_allclose(outputs[0]["log_evidence"], local["log_evidence"], rtol=1e-6)
    np.testing.assert_allclose(outputs[0]["flow_losses"], local["flow_losses"], rtol=1e-6)


def test_sharded_training_equals_the_unsharded_run(runs):
    outputs, _, single = runs
    np.testing.assert_allclose(outputs[0]["params"], single["params"], rtol=1e-5)
    np.testing.assert_allclose(outputs[0]["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(outputs[0]["flow_losses"], single["flow_losses"], rtol=1e-5)


def test_a_checkpointed_run_resumes_across_processes_to_the_uninterrupted_result(runs):
    """A run over two processes, checkpointed (by process 0: the state is replicated) and
    resumed by both, reaches the uninterrupted run's parameters and losses exactly."""
    outputs, _, _ = runs
    for output in outputs:
        assert output["checkpointed"]["params"] == output["params"]
        assert output["checkpointed"]["losses"] == output["losses"]

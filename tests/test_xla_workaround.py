"""`import probinf` turns off the XLA:CPU YNNPACK reduce fusion that miscompiles gradients
of scanned layers on large batches in jaxlib 0.10.2 (see probinf/_xla_workaround.py)."""

import os
import subprocess
import sys

# d/dx of sum(scan of x -> x + 1e-3 * sum(softmax(W x[:5]) * k)) with W = 0 is exactly 1.
PROGRAM = """
import probinf  # first, before JAX starts its CPU backend
import jax, jax.numpy as jnp
W = jnp.zeros((40, 5))
def layer(x, w):
    p = (w @ x[:5]).reshape(5, 8)
    return jnp.concatenate([x[:5], x[5:] + 1e-3 * jnp.sum(jax.nn.softmax(p) * jnp.arange(8.0), -1)])
def f(x):
    return jnp.sum(jax.lax.scan(lambda c, w: (layer(c, w), None), x, jnp.stack([W, W]))[0])
xs = jax.random.normal(jax.random.key(0), (4096, 10))
print(float(jnp.max(jnp.abs(jax.jit(jax.vmap(jax.grad(f)))(xs) - 1.0))))
"""


def test_scanned_softmax_gradient_is_exact_on_a_large_batch():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip().splitlines()[-1]) < 1e-6


def test_environ_without_workaround_drops_only_our_flag(monkeypatch):
    from probinf._xla_workaround import XLA_CPU_FLAG, environ_without_workaround

    monkeypatch.setenv("XLA_FLAGS", f"--xla_dump_to=/tmp/x {XLA_CPU_FLAG}  --xla_foo=1")
    monkeypatch.setenv("PROBINF_TEST_VAR", "kept")
    env = environ_without_workaround()
    assert env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x --xla_foo=1"
    assert env["PROBINF_TEST_VAR"] == "kept"
    assert os.environ["XLA_FLAGS"].count(XLA_CPU_FLAG) == 1  # the parent is untouched
    monkeypatch.setenv("XLA_FLAGS", XLA_CPU_FLAG)
    assert "XLA_FLAGS" not in environ_without_workaround()

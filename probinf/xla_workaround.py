"""An explicit workaround for an XLA:CPU miscompilation in jaxlib 0.10.2, and a check for it.

XLA's experimental YNNPACK *reduce* fusion, on by default for CPU in jaxlib 0.10.2,
returns garbage (huge or NaN values) for reverse-mode gradients of reductions inside
``jax.lax.scan`` once the batch reaches about 1000 rows — e.g. the gradient of a softmax
inside a scanned layer, vmapped over 4096 points. Spline flows stacked with ``lax.scan``
hit it in every training step with enough samples. Measured on jaxlib 0.10.2 (the newest
release, December 2026) with the program of :func:`cpu_scan_gradients_are_exact`: the
largest gradient error is 9.2e10 without the flag and 0.0 with it.

Turning that fusion off (``--xla_cpu_experimental_ynn_fusion_type=-reduce``) fixes it, but
the flag only takes effect if it is in ``XLA_FLAGS`` before JAX starts its CPU backend
(JAX's first computation), and an XLA that does not know the flag aborts. So nothing
happens on import: :func:`xla_cpu_workaround` is an explicit call (the ``probinf`` CLI,
the test suite's conftest and the benchmarks make it), and the flow training entry
points (:func:`flows.fit_to_data`, and :func:`probinf.vi.fit` on a ``flows`` family)
measure, once per process, whether the gradients are exact and warn with the fix when
they are not.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import warnings

__all__ = ["xla_cpu_workaround", "cpu_scan_gradients_are_exact", "warn_if_cpu_gradients_are_wrong",
           "environ_without_workaround", "XLA_CPU_FLAG"]

XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
# jaxlib releases known to have both the bug and the flag (an unknown flag aborts XLA).
_AFFECTED_JAXLIB = ((0, 10, 2), (0, 11, 0))


def _jaxlib_version() -> tuple[int, ...] | None:
    try:
        release = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in release.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def xla_cpu_workaround() -> bool:
    """Turn off XLA:CPU's YNNPACK reduce fusion for this process and its children.

    Call it before JAX's first computation (importing ``jax`` is fine; creating an
    array is not). It adds :data:`XLA_CPU_FLAG` to ``XLA_FLAGS`` on the jaxlib releases
    known to need it, and leaves an explicit user setting of the flag alone.

    Returns:
        True when the flag is (now) in ``XLA_FLAGS``; False when this jaxlib is not one
        known to need (and accept) it.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return XLA_CPU_FLAG in flags
    version = _jaxlib_version()
    if version is None or not (_AFFECTED_JAXLIB[0] <= version < _AFFECTED_JAXLIB[1]):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAG}".strip()
    return True


@functools.cache
def cpu_scan_gradients_are_exact() -> bool:
    """Measure, on the running CPU backend, whether scanned-softmax gradients are exact.

    With :math:`W = 0` the layer adds :math:`10^{-3}\\sum_k k\\,\\mathrm{softmax}(Wx)_k`, a
    constant, so :math:`\\partial/\\partial x \\sum f(x) = 1` exactly; the gradient is taken
    for 4096 points at once (the batch size at which the miscompilation shows). Cached:
    runs once per process (about a second).
    """
    import jax
    import jax.numpy as jnp

    weights = jnp.zeros((2, 40, 5), jnp.float32)

    def layer(x, w):
        logits = (w @ x[:5]).reshape(5, 8)
        shift = 1e-3 * jnp.sum(jax.nn.softmax(logits) * jnp.arange(8.0, dtype=x.dtype), -1)
        return jnp.concatenate([x[:5], x[5:] + shift]), None

    def total(x):
        return jnp.sum(jax.lax.scan(layer, x, weights)[0])

    points = jnp.ones((4096, 10), jnp.float32) * jnp.linspace(-1.0, 1.0, 10, dtype=jnp.float32)
    cpu = jax.local_devices(backend="cpu")[0]  # devices() lists other processes' too
    with jax.default_device(cpu):
        error = jnp.max(jnp.abs(jax.jit(jax.vmap(jax.grad(total)))(points) - 1.0))
    return bool(error < 1e-4)


def warn_if_cpu_gradients_are_wrong(stacklevel: int = 3) -> None:
    """Warn (once per process) when JAX runs on CPU and scanned gradients are miscompiled."""
    import jax

    if XLA_CPU_FLAG in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu":
        return
    if not cpu_scan_gradients_are_exact() and not _warned:
        _warned.append(True)
        warnings.warn(
            "this jaxlib's XLA:CPU miscompiles gradients of reductions inside lax.scan on large "
            "batches (YNNPACK reduce fusion), so training scanned flows can silently go wrong; call "
            "probinf.xla_cpu_workaround() before JAX's first computation, or set "
            f"XLA_FLAGS='{XLA_CPU_FLAG}' before starting Python",
            RuntimeWarning,
            stacklevel=stacklevel,
        )


_warned: list[bool] = []


def environ_without_workaround() -> dict[str, str]:
    """``os.environ`` minus :data:`XLA_CPU_FLAG`, for child processes that run another jaxlib.

    The flag is exported with ``XLA_FLAGS``, so child processes inherit it; an older
    XLA (e.g. jaxlib 0.5.3, which genjax 0.10 needs) aborts on a flag it does not know.
    """
    env = dict(os.environ)
    flags = " ".join(env.get("XLA_FLAGS", "").replace(XLA_CPU_FLAG, "").split())
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env

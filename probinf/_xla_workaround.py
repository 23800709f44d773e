"""Work around an XLA:CPU miscompilation in jaxlib 0.10.2.

XLA's experimental YNNPACK *reduce* fusion, on by default for CPU in jaxlib 0.10.2,
returns garbage (huge or NaN values) for reverse-mode gradients of reductions
inside ``jax.lax.scan`` once the batch reaches about 1000 rows — e.g. the
gradient of a softmax inside a scanned layer, vmapped over 4096 points. Spline
flows stacked with ``lax.scan`` hit it in every training step with enough
samples. Turning that fusion off (``--xla_cpu_experimental_ynn_fusion_type=-reduce``)
fixes it; the flag must be in ``XLA_FLAGS`` before JAX creates its CPU backend,
so ``import probinf`` (which ``flows``, ``circuits`` and ``amortized`` import too)
adds it when the backend does not exist yet, and warns when it is too late.
``tests/test_xla_workaround.py`` checks the fix.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["apply_xla_cpu_workaround", "environ_without_workaround", "XLA_CPU_FLAG"]

XLA_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"


def _backend_initialised() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # a jax without this private module: assume it is too late
        return True
    return bool(getattr(xla_bridge, "_backends", {"unknown": None}))


def apply_xla_cpu_workaround() -> bool:
    """Add :data:`XLA_CPU_FLAG` to ``XLA_FLAGS`` if it can still take effect.

    Returns True when the flag is (now) in effect. Leaves an explicit user setting
    of ``xla_cpu_experimental_ynn_fusion_type`` alone.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return XLA_CPU_FLAG in flags
    if _backend_initialised():
        import jax

        if jax.default_backend() == "cpu":
            warnings.warn(
                "probinf was imported after JAX started its CPU backend, so it could not turn off "
                "XLA's YNNPACK reduce fusion, which miscompiles gradients of scanned flows on "
                f"large batches in jaxlib 0.10.2; set XLA_FLAGS='{XLA_CPU_FLAG}' before "
                "importing jax (or import probinf first)",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {XLA_CPU_FLAG}".strip()
    return True


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


apply_xla_cpu_workaround()

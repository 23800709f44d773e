"""A fused sum-layer kernel written with Pallas.

The kernel computes the same quantity as :func:`circuits.layers.log_matmul_exp`,

.. math:: \\mathrm{out}_{f,b,o} = \\log \\sum_j \\exp(h_{f,b,j} + \\log w_{f,o,j}),

but fuses the max-shift, the exponentials, the matrix product and the logarithm
into one kernel, so the shifted exponentials never travel through main memory
(the idea behind PyJuice's fused kernels, Liu, Liu & Van den Broeck, ICML 2024).
The grid runs over folds and blocks of the batch; each program loads one
``(block, J)`` tile of ``h`` and the fold's ``(O, J)`` weights.

On a GPU the kernel is compiled by Pallas' Triton backend and computes in float32
(float64 inputs are rounded to float32 inside the kernel, with a warning; the
``"auto"`` backend of a circuit therefore uses the einsum for float64 circuits);
elsewhere it runs in Pallas' interpret mode in the inputs' dtype (slow, for
testing against the einsum reference). The output has the inputs' dtype. Its
gradient is the einsum reference's, computed from the kernel's output
(:func:`circuits.layers.log_matmul_exp_vjp`, a custom VJP).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from circuits.layers import log_matmul_exp_vjp

__all__ = ["fused_log_matmul_exp", "default_backend", "BACKENDS"]

#: Names accepted by ``backend=`` (``"auto"``: Pallas on GPU, einsum elsewhere).
BACKENDS = ("auto", "einsum", "pallas")


def default_backend() -> str:
    """The backend ``"auto"`` resolves to on this machine."""
    return "pallas" if jax.default_backend() == "gpu" else "einsum"


def _next_power_of_two(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (int(n) - 1).bit_length())


def _kernel(h_ref, w_ref, out_ref, compute_dtype):
    h = h_ref[0]  # (block, J)
    log_w = w_ref[0]  # (O, J)
    shift_h = jnp.max(h, axis=1, keepdims=True)
    shift_h = jnp.where(jnp.isfinite(shift_h), shift_h, 0.0)
    shift_w = jnp.max(log_w, axis=1, keepdims=True)
    shift_w = jnp.where(jnp.isfinite(shift_w), shift_w, 0.0)
    s = jax.lax.dot_general(
        jnp.exp(h - shift_h), jnp.exp(log_w - shift_w),
        dimension_numbers=(((1,), (1,)), ((), ())),
        preferred_element_type=compute_dtype,
    )  # (block, O)
    positive = s > 0
    out = jnp.where(positive, jnp.log(jnp.where(positive, s, 1.0)), -jnp.inf)
    out_ref[0] = out + shift_h + jnp.transpose(shift_w)


@functools.partial(jax.jit, static_argnames=("interpret", "block_batch"))
def _fused_forward(h, log_w, interpret: bool, block_batch: int):
    dtype = jnp.result_type(h, log_w)
    # Triton tiles are float32; interpret mode runs in the inputs' own dtype.
    compute_dtype = dtype if interpret else jnp.float32
    folds, batch, width = h.shape
    outputs = log_w.shape[1]
    # Triton needs power-of-two tiles of at least 16: pad with -inf (exp(-inf) = 0).
    width_p = _next_power_of_two(width)
    outputs_p = _next_power_of_two(outputs)
    block = min(block_batch, _next_power_of_two(batch))
    batch_p = -(-batch // block) * block
    h_p = jnp.pad(h, ((0, 0), (0, batch_p - batch), (0, width_p - width)),
                  constant_values=-jnp.inf)
    w_p = jnp.pad(log_w, ((0, 0), (0, outputs_p - outputs), (0, width_p - width)),
                  constant_values=-jnp.inf)
    out = pl.pallas_call(
        functools.partial(_kernel, compute_dtype=compute_dtype),
        out_shape=jax.ShapeDtypeStruct((folds, batch_p, outputs_p), compute_dtype),
        grid=(folds, batch_p // block),
        in_specs=[
            pl.BlockSpec((1, block, width_p), lambda f, b: (f, b, 0)),
            pl.BlockSpec((1, outputs_p, width_p), lambda f, b: (f, 0, 0)),
        ],
        out_specs=pl.BlockSpec((1, block, outputs_p), lambda f, b: (f, b, 0)),
        interpret=interpret,
    )(h_p.astype(compute_dtype), w_p.astype(compute_dtype))
    return out[:, :batch, :outputs].astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _fused(h, log_w, interpret, block_batch):
    return _fused_forward(h, log_w, interpret, block_batch)


def _fused_fwd(h, log_w, interpret, block_batch):
    out = _fused_forward(h, log_w, interpret, block_batch)
    return out, (h, log_w, out)


def _fused_bwd(interpret, block_batch, residuals, cotangent):
    return log_matmul_exp_vjp(*residuals, cotangent)  # from the output: no forward recompute


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_log_matmul_exp(h, log_w, *, interpret: bool | None = None, block_batch: int = 128):
    """The fused Pallas sum-layer kernel; same contract as :func:`circuits.layers.log_matmul_exp`.

    Args:
        h: ``(F, B, J)`` input log-values.
        log_w: ``(F, O, J)`` log-weights.
        interpret: run Pallas in interpret mode (default: when not on a GPU).
        block_batch: batch rows per program (a power of two).

    Returns:
        ``(F, B, O)`` in the inputs' dtype (computed in float32 on a GPU).
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    if not interpret and jnp.result_type(h, log_w) == jnp.float64:
        warnings.warn(
            "fused_log_matmul_exp computes in float32 on a GPU: the float64 inputs lose "
            "precision; use the circuit backend 'einsum' (or 'auto') for float64",
            UserWarning, stacklevel=2,
        )
    return _fused(h, log_w, bool(interpret), int(block_batch))

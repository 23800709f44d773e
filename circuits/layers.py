"""Folded layer kernels: one batched operation per layer kind and depth, in log space.

Every array here has a leading *fold* axis ``F`` (the partitions or regions
computed together), a batch axis ``B`` and a unit axis. A sum layer with
normalised weights ``w`` (log-weights ``log w``) over input log-values ``h`` is

.. math:: \\mathrm{out}_{f,b,o} = \\log \\sum_j \\exp(\\log w_{f,o,j} + h_{f,b,j}),

computed without leaving float range by max-shifting both operands
(``m = max_j h``, ``m_w = max_j log w``) and one batched matrix product of the
shifted exponentials (the "einsum" trick of EinsumNetworks, Peharz et al. 2020).
The max-product semiring replaces the sum by a max (used by MAP).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "log_matmul_exp",
    "log_matmul_exp_vjp",
    "max_plus_matmul",
    "cp_layer",
    "tucker_layer",
    "mixing_layer",
]

# Folds are processed in chunks by the max-product kernels so the (chunk, B, O, J)
# intermediate stays below this many elements.
_MAX_PLUS_ELEMENTS = 1 << 25


def _finite_or_zero(x):
    return jnp.where(jnp.isfinite(x), x, 0.0)


def _safe_log(s):
    positive = s > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, s, 1.0)), -jnp.inf)


def log_matmul_exp(h, log_w):
    """``out[f,b,o] = logsumexp_j(h[f,b,j] + log_w[f,o,j])`` with max-shifting.

    Args:
        h: ``(F, B, J)`` input log-values.
        log_w: ``(F, O, J)`` log-weights (need not be normalised).

    Returns:
        ``(F, B, O)``.
    """
    shift_h = jax.lax.stop_gradient(_finite_or_zero(jnp.max(h, axis=-1, keepdims=True)))
    shift_w = jax.lax.stop_gradient(_finite_or_zero(jnp.max(log_w, axis=-1, keepdims=True)))
    s = jnp.einsum("fbj,foj->fbo", jnp.exp(h - shift_h), jnp.exp(log_w - shift_w))
    return _safe_log(s) + shift_h + jnp.swapaxes(shift_w, 1, 2)


def log_matmul_exp_vjp(h, log_w, out, cotangent):
    """The VJP of :func:`log_matmul_exp` at its known output ``out``, without the forward einsum.

    With $\\mathrm{out}_{fbo} = \\log \\sum_j \\exp(h_{fbj} + \\log w_{foj})$, the derivative
    $\\partial \\mathrm{out}_{fbo} / \\partial h_{fbj} = \\exp(h_{fbj} + \\log w_{foj} -
    \\mathrm{out}_{fbo})$ is also the one with respect to $\\log w_{foj}$, so with the
    max-shifted exponentials $e^h$, $e^w$ and $g_{fbo} = \\bar{o}_{fbo}
    \\exp(s^h_{fb} + s^w_{fo} - \\mathrm{out}_{fbo})$ both cotangents are one einsum each:
    $\\bar h = e^h \\odot (g\\, e^w)$ and $\\overline{\\log w} = e^w \\odot (g^\\top e^h)$.
    An output of $-\\infty$ (no mass) passes no cotangent, as in :func:`log_matmul_exp`.

    Args:
        h: ``(F, B, J)`` the input log-values.
        log_w: ``(F, O, J)`` the log-weights.
        out: ``(F, B, O)`` ``log_matmul_exp(h, log_w)``.
        cotangent: ``(F, B, O)`` the output's cotangent.

    Returns:
        ``(h cotangent, log_w cotangent)``.
    """
    shift_h = _finite_or_zero(jnp.max(h, axis=-1, keepdims=True))
    shift_w = _finite_or_zero(jnp.max(log_w, axis=-1, keepdims=True))
    exp_h = jnp.exp(h - shift_h)
    exp_w = jnp.exp(log_w - shift_w)
    finite = jnp.isfinite(out)
    scaled = jnp.where(finite, cotangent * jnp.exp(
        shift_h + jnp.swapaxes(shift_w, 1, 2) - jnp.where(finite, out, 0.0)), 0.0)
    return (exp_h * jnp.einsum("fbo,foj->fbj", scaled, exp_w),
            exp_w * jnp.einsum("fbo,fbj->foj", scaled, exp_h))


def max_plus_matmul(h, log_w):
    """``out[f,b,o] = max_j(h[f,b,j] + log_w[f,o,j])`` (the max-product semiring)."""
    folds, batch, width = h.shape
    outputs = log_w.shape[1]
    chunk = max(1, min(folds, _MAX_PLUS_ELEMENTS // max(1, batch * outputs * width)))

    def one(args):
        hf, wf = args
        return jnp.max(hf[:, None, :] + wf[None, :, :], axis=-1)

    return jax.lax.map(one, (h, log_w), batch_size=chunk)


def cp_layer(children, log_w, semiring: str = "sum", sum_kernel=log_matmul_exp):
    """CP layer: Hadamard product of the children's units, then a sum layer.

    ``out[f,b,o] = log sum_j w[f,o,j] prod_a exp(children[a][f,b,j])``.

    Args:
        children: a list of ``A`` arrays ``(F, B, K)``, the children's log-values
            (padding children hold zeros, the log of the product's identity).
        log_w: ``(F, O, K)`` log-weights.
        semiring: ``"sum"`` (probabilities) or ``"max"`` (max-product).
        sum_kernel: the sum-semiring kernel (einsum reference or a fused kernel).

    Returns:
        ``(F, B, O)``.
    """
    h = children[0]
    for child in children[1:]:
        h = h + child
    if semiring == "max":
        return max_plus_matmul(h, log_w)
    return sum_kernel(h, log_w)


def kronecker(left, right):
    """Log-space Kronecker product of two ``(F, B, K)`` unit vectors: ``(F, B, K*K)``."""
    folds, batch, k = left.shape
    return (left[..., :, None] + right[..., None, :]).reshape(folds, batch, k * k)


def tucker_layer(left, right, log_w, semiring: str = "sum", sum_kernel=None):
    """Tucker layer: Kronecker product of two children's units, then a sum layer.

    ``out[f,b,o] = log sum_{i,j} w[f,o,(i,j)] exp(left[f,b,i] + right[f,b,j])``,
    computed by EinsumNetworks' three-operand einsum so the ``K^2`` product units
    are never materialised in the sum semiring.

    Args:
        left: ``(F, B, K)`` first child's log-values.
        right: ``(F, B, K)`` second child's log-values.
        log_w: ``(F, O, K*K)``.
        semiring: ``"sum"`` or ``"max"``.
        sum_kernel: when given, a sum-semiring kernel applied to the materialised
            Kronecker product (used by the fused backend).
    """
    if semiring == "max":
        return max_plus_matmul(kronecker(left, right), log_w)
    if sum_kernel is not None:
        return sum_kernel(kronecker(left, right), log_w)
    folds, outputs, _ = log_w.shape
    k = left.shape[-1]
    shift_l = jax.lax.stop_gradient(_finite_or_zero(jnp.max(left, axis=-1, keepdims=True)))
    shift_r = jax.lax.stop_gradient(_finite_or_zero(jnp.max(right, axis=-1, keepdims=True)))
    shift_w = jax.lax.stop_gradient(_finite_or_zero(jnp.max(log_w, axis=-1, keepdims=True)))
    w = jnp.exp(log_w - shift_w).reshape(folds, outputs, k, k)
    s = jnp.einsum("fbi,fbj,foij->fbo", jnp.exp(left - shift_l), jnp.exp(right - shift_r), w)
    return _safe_log(s) + shift_l + shift_r + jnp.swapaxes(shift_w, 1, 2)


def mixing_layer(inputs, log_w, semiring: str = "sum"):
    """Mixing layer: a per-unit sum over the partitions of a region.

    ``out[m,b,k] = log sum_p w[m,k,p] exp(inputs[p][m,b,k])`` (EinsumNetworks'
    mixing layer; padded partitions carry ``log w = -inf``).

    Args:
        inputs: a list of ``P`` arrays ``(M, B, K)``.
        log_w: ``(M, K, P)``.
        semiring: ``"sum"`` or ``"max"``.

    Returns:
        ``(M, B, K)``.
    """
    terms = jnp.stack(inputs, axis=-1) + log_w[:, None, :, :]  # (M, B, K, P)
    if semiring == "max":
        return jnp.max(terms, axis=-1)
    shift = jax.lax.stop_gradient(_finite_or_zero(jnp.max(terms, axis=-1, keepdims=True)))
    return _safe_log(jnp.sum(jnp.exp(terms - shift), axis=-1)) + shift[..., 0]

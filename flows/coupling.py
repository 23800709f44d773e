"""Coupling layers (Dinh, Krueger & Bengio, 2015, "NICE"; Dinh, Sohl-Dickstein &
Bengio, 2017, "Density estimation using Real NVP"; Durkan et al., 2019, "Neural
Spline Flows").

A coupling layer leaves one part of the vector unchanged and transforms the rest
elementwise with parameters computed from the unchanged part (and the context):

.. math::
    y_A = x_A, \\qquad y_B = \\tau\\big(x_B;\\ \\mathrm{NN}(x_A, c)\\big),
    \\qquad \\log|\\det J| = \\sum_{i \\in B} \\log \\tau'(x_i).

The Jacobian is triangular, and both directions cost one network evaluation.
:class:`Coupling` splits by position (``A`` = the first ``split`` coordinates);
:class:`MaskedCoupling` by a boolean mask (RealNVP's checkerboard masks).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, PRNGKeyArray

from flows._checks import check_optional_context_dim, check_positive_int
from flows._nn import activation_function, zero_output_mlp
from flows.bijection import Bijection
from flows.spline import Transformer, make_transformer

__all__ = ["Coupling", "MaskedCoupling"]


def _check_coupling_dim(dim: object) -> int:
    dim = check_positive_int(dim, "dim")
    if dim < 2:
        raise ValueError(
            f"`dim` must be at least 2 for a coupling layer (it conditions one part of the "
            f"vector on the other), got dim={dim}; use an autoregressive or elementwise "
            "bijection for 1-d variables"
        )
    return dim


def _with_context(x: Array, context: Array | None, context_dim: int | None) -> Array:
    if context_dim is None:
        return x
    return jnp.concatenate([x, jnp.asarray(context, x.dtype)])


class Coupling(Bijection):
    """Split coupling layer: the first ``split`` coordinates condition the rest.

    Args:
        key: PRNG key for the conditioner's initial weights.
        dim: length of the vector (at least 2).
        transformer: ``"affine"`` (RealNVP), ``"spline"`` (rational-quadratic, Neural
            Spline Flows) or a :class:`~flows.spline.Transformer`.
        split: number of conditioning coordinates (default ``dim // 2``).
        width: hidden units per layer of the conditioner MLP.
        depth: number of hidden layers of the conditioner MLP.
        activation: the conditioner's activation function (default ``jax.nn.relu``).
        context_dim: length of the context vector for a conditional layer.
        num_bins: spline bins (ignored for the affine transformer).
        bound: spline interval ``[-bound, bound]`` (ignored for the affine transformer).

    The conditioner's last layer starts at zero, so the layer starts as the identity.
    """

    conditioner: eqx.nn.MLP
    transformer: Transformer
    dim: int = eqx.field(static=True)
    split: int = eqx.field(static=True)
    context_dim: int | None = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, dim: int, *, transformer: object = "affine",
                 split: int | None = None, width: int = 64, depth: int = 2,
                 activation: Callable = jax.nn.relu, context_dim: int | None = None,
                 num_bins: int = 8, bound: float = 5.0):
        self.dim = _check_coupling_dim(dim)
        split = self.dim // 2 if split is None else split
        if isinstance(split, bool) or not isinstance(split, (int, np.integer)) or not 1 <= split < self.dim:
            raise ValueError(f"`split` must be an integer in [1, {self.dim - 1}], got {split!r}")
        self.split = int(split)
        self.context_dim = check_optional_context_dim(context_dim)
        self.transformer = make_transformer(transformer, num_bins, bound)
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth", minimum=0)
        n_in = self.split + (self.context_dim or 0)
        n_out = (self.dim - self.split) * self.transformer.num_params
        self.conditioner = zero_output_mlp(key, n_in, n_out, width, depth, activation_function(activation))

    def _params(self, x_fixed, context):
        out = self.conditioner(_with_context(x_fixed, context, self.context_dim))
        return out.reshape(self.dim - self.split, self.transformer.num_params)

    def forward_and_log_det(self, x, context=None):
        x_fixed, x_moved = x[: self.split], x[self.split :]
        y_moved, log_d = self.transformer.forward(x_moved, self._params(x_fixed, context))
        return jnp.concatenate([x_fixed, y_moved]), jnp.sum(log_d)

    def inverse_and_log_det(self, y, context=None):
        y_fixed, y_moved = y[: self.split], y[self.split :]
        x_moved, log_d = self.transformer.inverse(y_moved, self._params(y_fixed, context))
        return jnp.concatenate([y_fixed, x_moved]), jnp.sum(log_d)


class MaskedCoupling(Bijection):
    """Masked coupling layer: coordinates where ``mask`` is True condition the others.

    .. math:: y = m \\odot x + (1 - m) \\odot \\tau\\big(x;\\ \\mathrm{NN}(m \\odot x, c)\\big)

    Args:
        key: PRNG key for the conditioner's initial weights.
        mask: boolean ``(dim,)`` array with at least one True and one False entry
            (default: the checkerboard ``i % 2 == 0``).
        dim: length of the vector (at least 2).
        transformer: ``"affine"``, ``"spline"`` or a :class:`~flows.spline.Transformer`.
        width: hidden units per layer of the conditioner MLP.
        depth: number of hidden layers of the conditioner MLP.
        activation: the conditioner's activation function (default ``jax.nn.relu``).
        context_dim: length of the context vector for a conditional layer.
        num_bins: spline bins (ignored for the affine transformer).
        bound: spline interval ``[-bound, bound]`` (ignored for the affine transformer).
    """

    conditioner: eqx.nn.MLP
    transformer: Transformer
    mask: Bool[Array, " dim"]
    dim: int = eqx.field(static=True)
    context_dim: int | None = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, dim: int, *, mask: object = None,
                 transformer: object = "affine", width: int = 64, depth: int = 2,
                 activation: Callable = jax.nn.relu, context_dim: int | None = None,
                 num_bins: int = 8, bound: float = 5.0):
        self.dim = _check_coupling_dim(dim)
        if mask is None:
            mask = np.arange(self.dim) % 2 == 0
        mask = np.asarray(mask)
        if mask.shape != (self.dim,) or mask.dtype != np.bool_:
            raise ValueError(
                f"`mask` must be a boolean array of shape ({self.dim},), got dtype {mask.dtype} "
                f"and shape {mask.shape}"
            )
        if mask.all() or not mask.any():
            raise ValueError("`mask` must hold at least one True and one False entry")
        self.mask = jnp.asarray(mask)
        self.context_dim = check_optional_context_dim(context_dim)
        self.transformer = make_transformer(transformer, num_bins, bound)
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth", minimum=0)
        n_in = self.dim + (self.context_dim or 0)
        self.conditioner = zero_output_mlp(key, n_in, self.dim * self.transformer.num_params, width,
                                           depth, activation_function(activation))

    def _params(self, x, context):
        masked = jnp.where(self.mask, x, 0.0)
        out = self.conditioner(_with_context(masked, context, self.context_dim))
        return out.reshape(self.dim, self.transformer.num_params)

    def forward_and_log_det(self, x, context=None):
        y, log_d = self.transformer.forward(x, self._params(x, context))
        return jnp.where(self.mask, x, y), jnp.sum(jnp.where(self.mask, 0.0, log_d))

    def inverse_and_log_det(self, y, context=None):
        x, log_d = self.transformer.inverse(y, self._params(y, context))
        return jnp.where(self.mask, y, x), jnp.sum(jnp.where(self.mask, 0.0, log_d))

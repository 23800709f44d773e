"""Masked autoregressive layers (MAF and IAF) with affine or spline transformers.

:class:`MaskedAutoregressive` computes, with one MADE network (Germain et al., 2015),

.. math:: y_i = \\tau\\big(x_i;\\ \\theta_i(x_{<i}, c)\\big),
    \\qquad \\log|\\det J| = \\sum_i \\log \\tau'(x_i;\\ \\theta_i).

Its forward direction costs one network pass; its inverse is sequential
(``dim`` passes, since :math:`x_i` needs :math:`x_{<i}` first).

Which direction is cheap decides the use:

* **IAF** (inverse autoregressive flow; Kingma et al., 2016, "Improved
  Variational Inference with Inverse Autoregressive Flow"): use the layer as is in
  the sampling direction (base -> data). Sampling and the density of one's own
  samples are one pass each — the right choice for variational inference.
* **MAF** (masked autoregressive flow; Papamakarios, Pavlakou & Murray, 2017):
  use :class:`~flows.bijection.Invert` of the layer, so that the density direction
  (data -> base) is the cheap one — the right choice for density estimation.

With a spline transformer this is the autoregressive neural spline flow
(Durkan et al., 2019).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from flows._checks import check_optional_context_dim, check_positive_int
from flows._nn import MaskedMLP, activation_function
from flows.bijection import Bijection
from flows.spline import Transformer, make_transformer

__all__ = ["MaskedAutoregressive"]


class MaskedAutoregressive(Bijection):
    """Autoregressive layer ``y_i = tau(x_i; theta_i(x_{<i}, context))`` (see module docstring).

    Args:
        key: PRNG key for the MADE network's initial weights.
        dim: length of the vector.
        transformer: ``"affine"``, ``"spline"`` or a :class:`~flows.spline.Transformer`.
        width: hidden units per layer of the MADE network.
        depth: number of hidden layers of the MADE network.
        activation: the network's activation function (default ``jax.nn.relu``).
        context_dim: length of the context vector for a conditional layer.
        num_bins: spline bins (ignored for the affine transformer).
        bound: spline interval ``[-bound, bound]`` (ignored for the affine transformer).

    The network's output layer starts at zero, so the layer starts as the identity.
    """

    made: MaskedMLP
    transformer: Transformer
    dim: int = eqx.field(static=True)
    context_dim: int | None = eqx.field(static=True)

    def __init__(self, key: PRNGKeyArray, dim: int, *, transformer: object = "affine",
                 width: int = 64, depth: int = 2, activation: Callable = jax.nn.relu,
                 context_dim: int | None = None, num_bins: int = 8, bound: float = 5.0):
        self.dim = check_positive_int(dim, "dim")
        self.context_dim = check_optional_context_dim(context_dim)
        self.transformer = make_transformer(transformer, num_bins, bound)
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth")
        self.made = MaskedMLP(key, self.dim, self.context_dim or 0, self.transformer.num_params,
                              width, depth, activation_function(activation))

    def _params(self, x, context):
        if self.context_dim is not None:
            x = jnp.concatenate([jnp.asarray(context, x.dtype), x])
        return self.made(x)

    def forward_and_log_det(self, x, context=None):
        y, log_d = self.transformer.forward(x, self._params(x, context))
        return y, jnp.sum(log_d)

    def inverse_and_log_det(self, y, context=None):
        # After pass t the first t coordinates of x are exact (each needs only x_{<i}).
        def one_pass(_, state):
            x, _ = state
            return self.transformer.inverse(y, self._params(x, context))

        init = (jnp.zeros_like(y), jnp.zeros_like(y))
        x, log_d = jax.lax.fori_loop(0, self.dim, one_pass, init)
        return x, jnp.sum(log_d)

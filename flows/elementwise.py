"""Elementwise bijections: affine (scale and shift), a learnable spline, and the
constraint maps exp, softplus, sigmoid and tanh.

Each acts coordinate by coordinate, so :math:`\\log|\\det J| = \\sum_i \\log|f'(x_i)|`.
The constraint maps have no parameters; their log-derivatives are written in forms
that stay finite in float32 far into the tails:

==========  ======================  ==================================================
map         :math:`f(x)`            :math:`\\log f'(x)`
==========  ======================  ==================================================
Exp         :math:`e^x`             :math:`x`
Softplus    :math:`\\log(1+e^x)`     :math:`\\log\\sigma(x)`
Sigmoid     :math:`\\sigma(x)`       :math:`\\log\\sigma(x) + \\log\\sigma(-x)`
Tanh        :math:`\\tanh x`         :math:`2(\\log 2 - x - \\operatorname{softplus}(-2x))`
==========  ======================  ==================================================

The inverses of Sigmoid and Tanh need outputs strictly inside ``(0, 1)`` and
``(-1, 1)``: in float32, round trips are accurate for ``|x| <~ 8`` (sigmoid) and
``|x| <~ 4`` (tanh), where the output still resolves from its bound.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from flows._checks import check_positive_float, check_positive_int
from flows.bijection import Bijection
from flows.spline import SplineTransformer
from probinf.families import _as_vector

__all__ = ["Affine", "Exp", "Softplus", "Sigmoid", "Tanh", "Spline"]


class Affine(Bijection):
    """Scale and shift :math:`y = \\mu + e^{\\lambda} \\odot x`, :math:`\\log|\\det J| = \\sum_i \\lambda_i`.

    Fields ``loc`` (:math:`\\mu`) and ``log_scale`` (:math:`\\lambda`) are trained.
    """

    loc: Float[Array, " dim"]
    log_scale: Float[Array, " dim"]

    @classmethod
    def init(cls, dim: int, *, loc: object = 0.0, scale: object = 1.0) -> Affine:
        """An affine map on ``R^dim`` with the given shift and positive scale."""
        dim = check_positive_int(dim, "dim")
        scale = _as_vector(scale, dim, "scale")
        if not bool(jnp.all(scale > 0)):
            raise ValueError("`scale` must be positive")
        return cls(_as_vector(loc, dim, "loc"), jnp.log(scale))

    @property
    def dim(self) -> int:
        return self.loc.shape[-1]

    @property
    def context_dim(self) -> None:
        return None

    def forward_and_log_det(self, x, context=None):
        return self.loc + jnp.exp(self.log_scale) * x, jnp.sum(self.log_scale)

    def inverse_and_log_det(self, y, context=None):
        return (y - self.loc) * jnp.exp(-self.log_scale), -jnp.sum(self.log_scale)


class _Constraint(Bijection):
    """A parameter-free elementwise map on ``R^dim``."""

    dim: int = eqx.field(static=True)

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")

    @property
    def context_dim(self) -> None:
        return None

    def _forward(self, x):  # (value, elementwise log-derivative)
        raise NotImplementedError

    def _inverse(self, y):
        raise NotImplementedError

    def forward_and_log_det(self, x, context=None):
        y, log_d = self._forward(x)
        return y, jnp.sum(log_d)

    def inverse_and_log_det(self, y, context=None):
        x, log_d = self._inverse(y)
        return x, jnp.sum(log_d)


class Exp(_Constraint):
    """:math:`y = e^x`, mapping the real line to :math:`(0, \\infty)`."""

    def _forward(self, x):
        return jnp.exp(x), x

    def _inverse(self, y):
        x = jnp.log(y)
        return x, -x


class Softplus(_Constraint):
    """:math:`y = \\log(1 + e^x)`, mapping the real line to :math:`(0, \\infty)`."""

    def _forward(self, x):
        return jax.nn.softplus(x), jax.nn.log_sigmoid(x)

    def _inverse(self, y):
        # log(expm1(y)) written so that it neither overflows nor cancels.
        x = y + jnp.log(-jnp.expm1(-y))
        return x, -jax.nn.log_sigmoid(x)


class Sigmoid(_Constraint):
    """:math:`y = 1/(1+e^{-x})`, mapping the real line to :math:`(0, 1)`."""

    def _forward(self, x):
        return jax.nn.sigmoid(x), jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x)

    def _inverse(self, y):
        x = jnp.log(y) - jnp.log1p(-y)
        return x, -(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))


class Tanh(_Constraint):
    """:math:`y = \\tanh x`, mapping the real line to :math:`(-1, 1)`."""

    def _forward(self, x):
        return jnp.tanh(x), 2.0 * (np.log(2.0) - x - jax.nn.softplus(-2.0 * x))

    def _inverse(self, y):
        x = jnp.arctanh(y)
        return x, -2.0 * (np.log(2.0) - x - jax.nn.softplus(-2.0 * x))


class Spline(Bijection):
    """A learnable rational-quadratic spline applied to every coordinate
    (see :mod:`flows.spline`); identity outside ``[-bound, bound]``.

    ``params`` has shape ``(dim, 3 * num_bins - 1)``; zeros give the identity.
    """

    params: Float[Array, "dim p"]
    transformer: SplineTransformer

    def __init__(self, dim: int, *, num_bins: int = 8, bound: float = 5.0, params: Array | None = None):
        dim = check_positive_int(dim, "dim")
        self.transformer = SplineTransformer(num_bins, check_positive_float(bound, "bound"))
        shape = (dim, self.transformer.num_params)
        if params is None:
            params = jnp.zeros(shape)
        params = jnp.asarray(params)
        params = params.astype(jnp.result_type(params, float))  # a float dtype; integers -> default
        if params.shape != shape:
            raise ValueError(f"`params` must have shape {shape}, got {params.shape}")
        self.params = params

    @property
    def dim(self) -> int:
        return self.params.shape[-2]

    @property
    def context_dim(self) -> None:
        return None

    def forward_and_log_det(self, x, context=None):
        y, log_d = self.transformer.forward(x, self.params)
        return y, jnp.sum(log_d)

    def inverse_and_log_det(self, y, context=None):
        x, log_d = self.transformer.inverse(y, self.params)
        return x, jnp.sum(log_d)

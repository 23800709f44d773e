"""Monotone rational-quadratic splines and the elementwise *transformers* of the flows.

A transformer is an elementwise bijection :math:`\\tau(\\cdot; \\theta)` whose
parameters :math:`\\theta` come from a conditioner network (coupling or
autoregressive). Two are provided:

* :class:`AffineTransformer` — :math:`\\tau(x) = \\mu + \\sigma x` with
  :math:`\\sigma = \\operatorname{softplus}(\\tilde\\sigma + \\log(e-1))`, which is 1
  at :math:`\\tilde\\sigma = 0` (RealNVP, Dinh, Sohl-Dickstein & Bengio, 2017; MAF,
  Papamakarios, Pavlakou & Murray, 2017).
* :class:`SplineTransformer` — a monotone rational-quadratic spline on
  :math:`[-B, B]` with ``num_bins`` bins and identity tails outside (Durkan,
  Bekasov, Murray & Papamakarios, 2019, "Neural Spline Flows").

Rational-quadratic spline. With knots :math:`(x_k, y_k)_{k=0}^K`, derivatives
:math:`\\delta_k > 0` at the knots (:math:`\\delta_0 = \\delta_K = 1` so the map
joins the identity tails with a continuous slope), and, in bin :math:`k`,
:math:`w = x_{k+1}-x_k`, :math:`h = y_{k+1}-y_k`, :math:`s = h/w`,
:math:`\\xi = (x - x_k)/w`:

.. math::
    g(x) = y_k + \\frac{h\\,[s\\xi^2 + \\delta_k \\xi(1-\\xi)]}
                     {s + (\\delta_{k+1} + \\delta_k - 2s)\\,\\xi(1-\\xi)},
    \\qquad
    g'(x) = \\frac{s^2\\,[\\delta_{k+1}\\xi^2 + 2s\\xi(1-\\xi) + \\delta_k(1-\\xi)^2]}
                 {[s + (\\delta_{k+1} + \\delta_k - 2s)\\,\\xi(1-\\xi)]^2}.

The inverse solves the quadratic :math:`a\\xi^2 + b\\xi + c = 0` for the root in
:math:`[0, 1]` in whichever of its two algebraic forms avoids cancellation (by the sign
of :math:`b`), then takes one Newton step on the forward map.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from flows._checks import check_positive_float, check_positive_int

__all__ = [
    "AffineTransformer",
    "SplineTransformer",
    "Transformer",
    "spline_knots",
    "rational_quadratic_forward",
    "rational_quadratic_inverse",
    "make_transformer",
]

def _positive(raw: Array, minimum: float) -> Array:
    """A positive value, equal to 1 at ``raw = 0`` and never below ``minimum``."""
    return minimum + jax.nn.softplus(raw + math.log(math.expm1(1.0 - minimum)))


def spline_knots(
    raw: Float[Array, "... p"], num_bins: int, bound: float,
    min_bin_size: float = 1e-3, min_derivative: float = 1e-3,
) -> tuple[Array, Array, Array]:
    """Knots ``(x_k)``, ``(y_k)`` and derivatives ``(delta_k)`` from ``3K-1`` raw numbers.

    ``raw[..., :K]`` gives the bin widths (softmax), ``raw[..., K:2K]`` the heights,
    ``raw[..., 2K:]`` the ``K-1`` interior derivatives. All zeros give the identity.
    Returns three arrays of shape ``(..., K+1)``.
    """
    k = num_bins

    def cumulative(logits):
        sizes = min_bin_size + (1.0 - min_bin_size * k) * jax.nn.softmax(logits, axis=-1)
        edges = jnp.cumsum(sizes, axis=-1)
        edges = jnp.concatenate([jnp.zeros_like(edges[..., :1]), edges], axis=-1)
        # Pin both ends exactly so the spline meets the tails without a gap.
        edges = edges.at[..., -1].set(1.0)
        return bound * (2.0 * edges - 1.0)

    x_knots = cumulative(raw[..., :k])
    y_knots = cumulative(raw[..., k : 2 * k])
    interior = _positive(raw[..., 2 * k :], min_derivative)
    ones = jnp.ones_like(interior[..., :1])
    derivatives = jnp.concatenate([ones, interior, ones], axis=-1)
    return x_knots, y_knots, derivatives


def _bin(value, knots_in, x_knots, y_knots, derivatives):
    """Left edge, width, height and end derivatives of the bin holding ``value``.

    The bin is selected with a one-hot mask built from comparisons (no integer
    gather), which vectorises well and keeps every intermediate a float or bool.
    """
    above_left = value[..., None] >= knots_in[..., :-1]
    below_right = value[..., None] < knots_in[..., 1:]
    # The first and last bins are open towards the tails (the value is clipped anyway).
    above_left = above_left.at[..., 0].set(True)
    below_right = below_right.at[..., -1].set(True)
    in_bin = above_left & below_right

    def pick(array):
        return jnp.sum(jnp.where(in_bin, array, 0.0), axis=-1)

    x0, x1 = pick(x_knots[..., :-1]), pick(x_knots[..., 1:])
    y0, y1 = pick(y_knots[..., :-1]), pick(y_knots[..., 1:])
    d0, d1 = pick(derivatives[..., :-1]), pick(derivatives[..., 1:])
    return x0, x1 - x0, y0, y1 - y0, d0, d1


def _log_slope(xi, s, d0, d1):
    one_minus = 1.0 - xi
    numerator = d1 * xi**2 + 2.0 * s * xi * one_minus + d0 * one_minus**2
    denominator = s + (d1 + d0 - 2.0 * s) * xi * one_minus
    return 2.0 * jnp.log(s) + jnp.log(numerator) - 2.0 * jnp.log(denominator)


def rational_quadratic_forward(
    x: Float[Array, " m"], x_knots: Array, y_knots: Array, derivatives: Array
) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
    """Spline values and elementwise ``log g'(x)``; identity outside ``[x_0, x_K]``."""
    lower, upper = x_knots[..., 0], x_knots[..., -1]
    inside = (x > lower) & (x < upper)
    x_in = jnp.clip(x, lower, upper)
    x0, w, y0, h, d0, d1 = _bin(x_in, x_knots, x_knots, y_knots, derivatives)
    s = h / w
    # No clip on xi: jnp.clip's gradient is halved at the bounds, i.e. at every knot.
    xi = (x_in - x0) / w
    xi_term = xi * (1.0 - xi)
    y = y0 + h * (s * xi**2 + d0 * xi_term) / (s + (d1 + d0 - 2.0 * s) * xi_term)
    log_det = _log_slope(xi, s, d0, d1)
    return jnp.where(inside, y, x), jnp.where(inside, log_det, 0.0)


def rational_quadratic_inverse(
    y: Float[Array, " m"], x_knots: Array, y_knots: Array, derivatives: Array
) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
    """Inverse spline values and elementwise ``log (g^{-1})'(y)``; identity in the tails.

    The root of :math:`a\\xi^2 + b\\xi + c = 0` in :math:`[0, 1]` is
    :math:`\\xi = 2c / (-b - \\sqrt{b^2 - 4ac}) = (-b + \\sqrt{b^2 - 4ac}) / (2a)`; the first
    form is evaluated when :math:`b \\ge 0` and the second when :math:`b < 0`, so neither
    subtracts nearly equal numbers (``b < 0`` happens near the right end of a bin whose
    right derivative exceeds twice its slope, where the first form alone lost up to half
    of float32's digits). One Newton step on the forward map then removes the rounding
    left by the square root, so the inverse is accurate to the conditioning of ``g``.
    """
    lower, upper = y_knots[..., 0], y_knots[..., -1]
    inside = (y > lower) & (y < upper)
    y_in = jnp.clip(y, lower, upper)
    x0, w, y0, h, d0, d1 = _bin(y_in, y_knots, x_knots, y_knots, derivatives)
    s = h / w
    offset = y_in - y0
    curvature = d1 + d0 - 2.0 * s
    a = h * (s - d0) + offset * curvature
    b = h * d0 - offset * curvature
    c = -s * offset
    root = jnp.sqrt(jnp.maximum(b**2 - 4.0 * a * c, 0.0))
    positive_b = b >= 0
    # Each branch's denominator is nonzero where it is selected (b >= 0 and c <= 0 make
    # -b - root < 0 unless offset = 0, where c = 0 too; b < 0 forces a > 0).
    denominator = jnp.where(positive_b, -b - root, 2.0 * a)
    denominator = jnp.where(denominator == 0.0, 1.0, denominator)
    xi = jnp.where(positive_b, 2.0 * c, -b + root) / denominator
    xi = jnp.where(xi < 0.0, 0.0, jnp.where(xi > 1.0, 1.0, xi))
    # Newton step on y(xi) = offset, with dy/dxi = w g'(x) = h s N / D^2. It is kept only
    # inside the bin: where y sits on a near-flat stretch (g' ~ 0, e.g. a y rounded past a
    # knot), every xi there maps to y within rounding and a full step would leave the bin.
    xi_term = xi * (1.0 - xi)
    forward_denominator = s + curvature * xi_term
    residual = h * (s * xi**2 + d0 * xi_term) / forward_denominator - offset
    slope = h * s * (d1 * xi**2 + 2.0 * s * xi_term + d0 * (1.0 - xi) ** 2) / forward_denominator**2
    refined = xi - residual / jnp.where(slope > 0.0, slope, 1.0)
    keep = (slope > 0.0) & (refined >= 0.0) & (refined <= 1.0)
    xi = jnp.where(keep, refined, xi)
    x = x0 + xi * w
    log_det = -_log_slope(xi, s, d0, d1)
    return jnp.where(inside, x, y), jnp.where(inside, log_det, 0.0)


class Transformer(eqx.Module):
    """An elementwise bijection ``tau(x; theta)`` with ``num_params`` numbers per element.

    ``forward(x, params)`` and ``inverse(y, params)`` take ``x`` of shape ``(m,)``
    and ``params`` of shape ``(m, num_params)`` and return the values and the
    elementwise log-derivatives, both ``(m,)``. All-zero params give the identity.
    """

    num_params: ClassVar[int]

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        raise NotImplementedError

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        raise NotImplementedError


class AffineTransformer(Transformer):
    """``tau(x) = shift + scale * x`` with ``scale = softplus(raw + log(e - 1))`` (1 at raw 0)."""

    num_params: ClassVar[int] = 2
    min_scale: float = eqx.field(static=True, default=1e-4)

    def _shift_scale(self, params):
        return params[..., 0], _positive(params[..., 1], self.min_scale)

    def forward(self, x, params):
        shift, scale = self._shift_scale(params)
        return shift + scale * x, jnp.log(scale)

    def inverse(self, y, params):
        shift, scale = self._shift_scale(params)
        return (y - shift) / scale, -jnp.log(scale)


class SplineTransformer(Transformer):
    """Rational-quadratic spline on ``[-bound, bound]`` with ``num_bins`` bins, identity tails."""

    num_bins: int = eqx.field(static=True)
    bound: float = eqx.field(static=True)

    def __init__(self, num_bins: int = 8, bound: float = 5.0):
        self.num_bins = check_positive_int(num_bins, "num_bins", minimum=2)
        self.bound = check_positive_float(bound, "bound")

    @property
    def num_params(self) -> int:  # type: ignore[override]
        return 3 * self.num_bins - 1

    def forward(self, x, params):
        return rational_quadratic_forward(x, *spline_knots(params, self.num_bins, self.bound))

    def inverse(self, y, params):
        return rational_quadratic_inverse(y, *spline_knots(params, self.num_bins, self.bound))


def make_transformer(transformer: object, num_bins: int, bound: float) -> Transformer:
    """``"affine"`` or ``"spline"`` (or a :class:`Transformer` instance) as a transformer."""
    if isinstance(transformer, Transformer):
        return transformer
    if transformer == "affine":
        return AffineTransformer()
    if transformer == "spline":
        return SplineTransformer(num_bins, bound)
    raise ValueError(
        f"`transformer` must be 'affine', 'spline' or a Transformer, got {transformer!r}"
    )

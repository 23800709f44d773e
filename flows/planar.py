"""Planar and radial flows (Rezende & Mohamed, 2015, "Variational Inference with
Normalizing Flows").

Both are cheap in the sampling direction and have a log-determinant in closed
form, which makes them natural variational families. Their inverses have no
closed form in general: the planar inverse reduces to a monotone scalar equation
solved by bisection, the radial inverse to a quadratic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from flows._checks import check_positive_int
from flows.bijection import Bijection

__all__ = ["Planar", "Radial"]

_BISECTION_STEPS = 60
_MARGIN = 1e-3  # keeps w.u_hat >= -1 + 1e-3 after float32 rounding


class Planar(Bijection):
    """Planar flow :math:`f(x) = x + \\hat u \\tanh(w^\\top x + b)`.

    Invertibility needs :math:`w^\\top \\hat u > -1`; it is enforced by
    :math:`\\hat u = u + (m(w^\\top u) - w^\\top u)\\, w / \\|w\\|^2` with
    :math:`m(a) = -1 + 10^{-3} + \\operatorname{softplus}(a)`. With :math:`a = w^\\top x + b`,

    .. math:: \\log|\\det J_f(x)| = \\log\\big|1 + (1 - \\tanh^2 a)\\, w^\\top \\hat u\\big|.

    The inverse solves :math:`a + (w^\\top \\hat u) \\tanh a = w^\\top y + b` for
    :math:`a` by bisection (the left side is increasing) and takes
    :math:`x = y - \\hat u \\tanh a`; a final Newton step written in JAX gives
    exact implicit-function gradients through the solve.
    """

    u: Float[Array, " dim"]
    w: Float[Array, " dim"]
    b: Float[Array, ""]

    def __init__(self, key: PRNGKeyArray, dim: int, *, init_scale: float = 0.1):
        dim = check_positive_int(dim, "dim")
        key_u, key_w = jax.random.split(key)
        self.u = init_scale * jax.random.normal(key_u, (dim,))
        self.w = init_scale * jax.random.normal(key_w, (dim,))
        self.b = jnp.zeros(())

    @property
    def dim(self) -> int:
        return self.u.shape[-1]

    @property
    def context_dim(self) -> None:
        return None

    def _u_hat(self):
        wu = jnp.dot(self.w, self.u)
        correction = (_MARGIN - 1.0 + jax.nn.softplus(wu) - wu) * self.w / (jnp.sum(self.w**2) + 1e-12)
        return self.u + correction

    def forward_and_log_det(self, x, context=None):
        u_hat = self._u_hat()
        activation = jnp.tanh(jnp.dot(self.w, x) + self.b)
        log_det = jnp.log(jnp.abs(1.0 + (1.0 - activation**2) * jnp.dot(self.w, u_hat)))
        return x + u_hat * activation, log_det

    def inverse_and_log_det(self, y, context=None):
        u_hat = self._u_hat()
        slope = jnp.dot(self.w, u_hat)  # > -1
        target = jnp.dot(self.w, y) + self.b

        def residual(a):
            return a + slope * jnp.tanh(a) - target

        # |slope * tanh(a)| <= |slope| brackets the root.
        fixed_slope, fixed_target = jax.lax.stop_gradient((slope, target))
        width = jnp.abs(fixed_slope) + 1.0

        def bisect(_, bracket):
            low, high = bracket
            mid = 0.5 * (low + high)
            above = mid + fixed_slope * jnp.tanh(mid) - fixed_target > 0
            return jnp.where(above, low, mid), jnp.where(above, mid, high)

        low, high = jax.lax.fori_loop(
            0, _BISECTION_STEPS, bisect, (fixed_target - width, fixed_target + width)
        )
        a0 = jax.lax.stop_gradient(0.5 * (low + high))
        a = a0 - residual(a0) / (1.0 + slope * (1.0 - jnp.tanh(a0) ** 2))
        activation = jnp.tanh(a)
        log_det = -jnp.log(jnp.abs(1.0 + (1.0 - activation**2) * slope))
        return y - u_hat * activation, log_det


class Radial(Bijection):
    """Radial flow :math:`f(x) = x + \\beta\\, h(r)\\,(x - x_0)`, :math:`r = \\|x - x_0\\|`,
    :math:`h(r) = 1/(\\alpha + r)`.

    :math:`\\alpha = \\operatorname{softplus}(\\tilde\\alpha) > 0` and
    :math:`\\beta = -\\alpha + \\operatorname{softplus}(\\tilde\\beta) > -\\alpha`
    keep it invertible, and

    .. math:: \\log|\\det J_f(x)| = (d - 1)\\log(1 + \\beta h) + \\log(1 + \\beta h + \\beta h'(r)\\, r).

    Inverse: :math:`\\rho = \\|y - x_0\\| = r (1 + \\beta/(\\alpha + r))` is the quadratic
    :math:`r^2 + (\\alpha + \\beta - \\rho) r - \\rho\\alpha = 0`, whose positive root
    gives :math:`r` and then :math:`x = x_0 + (y - x_0) / (1 + \\beta h(r))`.
    Starts at the identity (:math:`\\beta = 0`).
    """

    center: Float[Array, " dim"]
    raw_alpha: Float[Array, ""]
    raw_beta: Float[Array, ""]

    def __init__(self, key: PRNGKeyArray, dim: int):
        dim = check_positive_int(dim, "dim")
        self.center = jax.random.normal(key, (dim,))
        self.raw_alpha = jnp.zeros(())
        self.raw_beta = jnp.zeros(())  # softplus(0) - softplus(0): beta = 0

    @property
    def dim(self) -> int:
        return self.center.shape[-1]

    @property
    def context_dim(self) -> None:
        return None

    def _alpha_beta(self):
        alpha = jax.nn.softplus(self.raw_alpha)
        return alpha, -alpha + jax.nn.softplus(self.raw_beta)

    def _log_det(self, r, alpha, beta):
        h = 1.0 / (alpha + r)
        one_plus = 1.0 + beta * h
        return (self.dim - 1) * jnp.log(one_plus) + jnp.log(one_plus - beta * r * h**2)

    def forward_and_log_det(self, x, context=None):
        alpha, beta = self._alpha_beta()
        offset = x - self.center
        r = jnp.sqrt(jnp.sum(offset**2))
        return x + beta / (alpha + r) * offset, self._log_det(r, alpha, beta)

    def inverse_and_log_det(self, y, context=None):
        alpha, beta = self._alpha_beta()
        offset = y - self.center
        rho = jnp.sqrt(jnp.sum(offset**2))
        linear = alpha + beta - rho
        root = jnp.sqrt(linear**2 + 4.0 * rho * alpha)
        # The positive root, in the form that does not cancel for either sign of `linear`.
        positive = linear > 0
        safe_linear = jnp.where(positive, linear, 1.0)
        r = jnp.where(positive, 2.0 * rho * alpha / (safe_linear + root), 0.5 * (root - linear))
        x = self.center + offset / (1.0 + beta / (alpha + r))
        return x, -self._log_det(r, alpha, beta)

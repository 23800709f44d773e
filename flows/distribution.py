"""Flows as distributions: a base density pushed through a bijection.

A :class:`Flow` with base :math:`p_u` and bijection :math:`f` (base -> data) is the
density of :math:`x = f(u)`, :math:`u \\sim p_u`:

.. math:: \\log q(x \\mid c) = \\log p_u\\big(f^{-1}(x; c)\\big)
    + \\log\\big|\\det J_{f^{-1}}(x; c)\\big|
    = \\log p_u(u) - \\log\\big|\\det J_f(u; c)\\big| .

Sampling with :meth:`Flow.sample_and_log_prob` uses only the forward direction;
:meth:`Flow.log_prob` of given points uses only the inverse. A :class:`Flow` is a
:class:`probinf.families.Family`, so :func:`probinf.vi.fit` trains it with any
objective of :mod:`probinf.vi`.

Which pass reports :math:`\\log q` of a draw. In exact arithmetic the two passes agree.
In floating point the forward pass is exact for the draw it produced, while the
inverse must reconstruct :math:`u` from the rounded :math:`x`; where the flow squeezes
a region of the base into fewer representable numbers than it had (a near-flat spline
bin, a saturated ``Sigmoid``/``Tanh``), that reconstruction is lost and the inverse
:math:`\\log q` can be off by many nats, and an optimiser that scores its own draws
through the inverse learns to go there. Everything in this package that scores the
flow's own draws therefore uses the forward value: :meth:`Flow.sample_and_log_prob`,
:meth:`Flow.sample_and_frozen_log_prob` (the path-derivative estimators STL and DReG of
:mod:`probinf.vi`), and :class:`flows.FlowDistribution` under numpyro (it caches the
forward value as the sample's intermediates, as numpyro's own transformed
distributions do). :meth:`Flow.log_prob` is for points that did not come from the flow.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from flows._checks import check_context, check_points, check_positive_int
from flows.bijection import Bijection
from probinf.families import Family, check_num_samples, stop_gradient_params

__all__ = ["StandardNormal", "Flow", "ConditionedFlow"]

_LOG_2PI = math.log(2.0 * math.pi)


class StandardNormal(Family):
    """The parameter-free base density :math:`\\mathcal N(0, I_{\\mathrm{dim}})`."""

    dim: int = eqx.field(static=True)

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        u = jax.random.normal(key, (n, self.dim))
        return u, self.log_prob(u)

    def log_prob(self, z: Array) -> Array:
        return -0.5 * jnp.sum(z**2 + _LOG_2PI, axis=-1)


def _vectorise(fn, depth: int):
    for _ in range(depth):
        fn = jax.vmap(fn)
    return fn


class Flow(Family):
    """A normalizing flow: ``base`` pushed forward through ``bijection``.

    Args:
        bijection: the map from base space to data space.
        base: a reparameterised family over ``R^dim`` (default :class:`StandardNormal`);
            its own parameters, if any, are trained too.

    For a conditional bijection (``context_dim`` set), every method takes a
    ``context`` array; leading axes of ``x`` and ``context`` broadcast.

    Raises:
        TypeError: if ``bijection`` is not a Bijection or ``base`` is not a Family.
        ValueError: if ``base`` is discrete, not reparameterised, or of another dim.
    """

    bijection: Bijection
    base: Family
    reparameterized: ClassVar[bool] = True
    discrete: ClassVar[bool] = False

    def __init__(self, bijection: Bijection, base: Family | None = None):
        if not isinstance(bijection, Bijection):
            raise TypeError(f"`bijection` must be a flows Bijection, got {type(bijection).__name__}")
        base = StandardNormal(bijection.dim) if base is None else base
        if not isinstance(base, Family):
            raise TypeError(f"`base` must be a probinf Family, got {type(base).__name__}")
        if base.discrete or not base.reparameterized:
            raise ValueError(f"`base` must be a continuous reparameterised family, got {type(base).__name__}")
        if base.dim != bijection.dim:
            raise ValueError(f"`base` has dim {base.dim} but `bijection` has dim {bijection.dim}")
        self.bijection = bijection
        self.base = base

    @property
    def dim(self) -> int:
        return self.bijection.dim

    @property
    def context_dim(self) -> int | None:
        return self.bijection.context_dim

    def sample_and_log_prob(
        self, key: PRNGKeyArray, n: int, context: Float[Array, "... c"] | None = None
    ) -> tuple[Float[Array, "n ... dim"], Float[Array, "n ..."]]:
        """``n`` draws and their log densities, using the forward direction only.

        With a context of shape ``(*batch, context_dim)`` the draws have shape
        ``(n, *batch, dim)`` (``n`` per context) and the log densities ``(n, *batch)``.
        """
        n = check_num_samples(n)
        context = check_context(context, self.context_dim)
        batch = () if context is None else tuple(context.shape[:-1])
        count = n * int(np.prod(batch, dtype=np.int64))
        u, log_base = self.base.sample_and_log_prob(key, count)
        u = u.reshape((n, *batch, self.dim))
        log_base = log_base.reshape((n, *batch))
        if context is None:
            x, log_det = jax.vmap(self.bijection.forward_and_log_det)(u)
        else:
            ctx = jnp.broadcast_to(context, (n, *context.shape))
            fn = _vectorise(self.bijection.forward_and_log_det, 1 + len(batch))
            x, log_det = fn(u, ctx)
        return x, log_base - log_det

    def sample_and_frozen_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        """``n`` draws and their log density with the parameters held fixed inside it.

        What the path-derivative estimators (STL, DReG of :mod:`probinf.vi`) need:
        :math:`\\log q_{\\bar\\phi}(x)` at :math:`x = f_\\phi(u)`, differentiated through
        :math:`x` only. Its *value* is the forward-pass log density of each draw (exact
        for it, see the module docstring); its *gradient* is that of the inverse pass
        with stopped parameters, :math:`\\nabla_x \\log q(x)\\, \\partial x/\\partial\\phi`,
        which needs the inverse's Jacobian and is equal to it in exact arithmetic.
        """
        x, log_q = self.sample_and_log_prob(key, n)
        frozen = stop_gradient_params(self).log_prob(x)
        return x, jax.lax.stop_gradient(log_q) + (frozen - jax.lax.stop_gradient(frozen))

    def sample(self, key: PRNGKeyArray, n: int,
               context: Float[Array, "... c"] | None = None) -> Float[Array, "n ... dim"]:
        """``n`` draws (shape as in :meth:`sample_and_log_prob`)."""
        return self.sample_and_log_prob(key, n, context)[0]

    def log_prob(self, x: Float[Array, "... dim"],
                 context: Float[Array, "... c"] | None = None) -> Float[Array, "..."]:
        """Log density of ``x``, using the inverse direction only; leading axes broadcast."""
        x = check_points(x, self.dim)
        context = check_context(context, self.context_dim)

        def one(point, ctx):
            u, log_det = self.bijection.inverse_and_log_det(point, ctx)
            return self.base.log_prob(u) + log_det

        if context is None:
            batch = x.shape[:-1]
            flat = x.reshape(-1, self.dim)
            return jax.vmap(lambda p: one(p, None))(flat).reshape(batch)
        batch = jnp.broadcast_shapes(x.shape[:-1], context.shape[:-1])
        flat_x = jnp.broadcast_to(x, (*batch, self.dim)).reshape(-1, self.dim)
        flat_c = jnp.broadcast_to(context, (*batch, context.shape[-1])).reshape(-1, context.shape[-1])
        return jax.vmap(one)(flat_x, flat_c).reshape(batch)

    def condition(self, context: Float[Array, " c"]) -> ConditionedFlow:
        """This conditional flow at one fixed ``context``, as an ordinary family."""
        context = check_context(context, self.context_dim)
        if context.ndim != 1:
            raise ValueError(
                f"`context` must be one vector of shape ({self.context_dim},), got {tuple(context.shape)}"
            )
        return ConditionedFlow(self, context)


class ConditionedFlow(Family):
    """A conditional :class:`Flow` at a fixed context (gradients never reach the context).

    A family over ``R^dim`` like any other: any objective of :mod:`probinf.vi` trains
    the flow's parameters for that context.
    """

    flow: Flow
    context: Float[Array, " c"]

    @property
    def dim(self) -> int:
        return self.flow.dim

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        return self.flow.sample_and_log_prob(key, n, jax.lax.stop_gradient(self.context))

    def sample_and_frozen_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        """As :meth:`Flow.sample_and_frozen_log_prob`, at this context."""
        context = jax.lax.stop_gradient(self.context)
        x, log_q = self.flow.sample_and_log_prob(key, n, context)
        frozen = stop_gradient_params(self.flow).log_prob(x, context)
        return x, jax.lax.stop_gradient(log_q) + (frozen - jax.lax.stop_gradient(frozen))

    def log_prob(self, z: Array) -> Array:
        return self.flow.log_prob(z, jax.lax.stop_gradient(self.context))

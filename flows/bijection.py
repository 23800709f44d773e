"""The bijection protocol and the ways to compose bijections.

A bijection :math:`f: \\mathbb R^d \\to \\mathbb R^d` is a small
:class:`equinox.Module` acting on ONE unbatched vector of shape ``(dim,)``
(vectorisation happens once, in :class:`flows.Flow`). It provides

* ``forward_and_log_det(x, context=None) -> (y, log|det J_f(x)|)``
* ``inverse_and_log_det(y, context=None) -> (x, log|det J_{f^{-1}}(y)|)``

with ``forward``/``inverse`` returning the value alone. ``dim`` is the length of
the vector and ``context_dim`` the length of the conditioning vector
(``None`` for an unconditional bijection, which ignores ``context``).

Composition: :class:`Chain` applies bijections in order (log-determinants add),
:class:`Invert` swaps the two directions, and :class:`Scan` applies ``L`` copies of
one layer type whose parameters are stacked along a leading axis, through
:func:`jax.lax.scan` — so the compiled program does not grow with depth.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from flows._checks import check_positive_int

__all__ = ["Bijection", "Chain", "Invert", "Scan", "Identity"]


class Bijection(eqx.Module):
    """Base class of every bijection (see the module docstring).

    Subclasses implement :meth:`forward_and_log_det` and :meth:`inverse_and_log_det`
    on an unbatched ``(dim,)`` vector and expose ``dim`` and ``context_dim``.
    """

    @abc.abstractmethod
    def forward_and_log_det(
        self, x: Float[Array, " dim"], context: Float[Array, " c"] | None = None
    ) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
        """``(f(x), log|det J_f(x)|)``."""

    @abc.abstractmethod
    def inverse_and_log_det(
        self, y: Float[Array, " dim"], context: Float[Array, " c"] | None = None
    ) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
        """``(f^{-1}(y), log|det J_{f^{-1}}(y)|)``."""

    def forward(self, x: Float[Array, " dim"], context: Float[Array, " c"] | None = None) -> Array:
        """``f(x)``."""
        return self.forward_and_log_det(x, context)[0]

    def inverse(self, y: Float[Array, " dim"], context: Float[Array, " c"] | None = None) -> Array:
        """``f^{-1}(y)``."""
        return self.inverse_and_log_det(y, context)[0]


class Identity(Bijection):
    """The identity map on ``R^dim`` (log-determinant 0)."""

    dim: int = eqx.field(static=True)
    context_dim: int | None = eqx.field(static=True, default=None)

    def __init__(self, dim: int):
        self.dim = check_positive_int(dim, "dim")
        self.context_dim = None

    def forward_and_log_det(self, x, context=None):
        return x, jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, context=None):
        return y, jnp.zeros((), y.dtype)


def _shared_context_dim(bijections: Sequence[Bijection]) -> int | None:
    dims = {b.context_dim for b in bijections} - {None}
    if len(dims) > 1:
        raise ValueError(f"the bijections disagree on `context_dim`: {sorted(dims)}")
    return dims.pop() if dims else None


class Chain(Bijection):
    """Composition ``f = f_n o ... o f_1`` of ``bijections = [f_1, ..., f_n]``.

    .. math:: \\log|\\det J_f(x)| = \\sum_{i=1}^n \\log|\\det J_{f_i}(x_{i-1})|,
        \\qquad x_0 = x,\\; x_i = f_i(x_{i-1}).

    Conditional members receive the context; unconditional ones ignore it.
    """

    bijections: tuple[Bijection, ...]

    def __init__(self, bijections: Sequence[Bijection]):
        bijections = tuple(bijections)
        if not bijections:
            raise ValueError("`bijections` must hold at least one bijection")
        for index, b in enumerate(bijections):
            if not isinstance(b, Bijection):
                raise TypeError(f"`bijections[{index}]` must be a Bijection, got {type(b).__name__}")
        dims = {b.dim for b in bijections}
        if len(dims) != 1:
            raise ValueError(f"all `bijections` must share one dim, got dims {sorted(dims)}")
        _shared_context_dim(bijections)
        self.bijections = bijections

    @property
    def dim(self) -> int:
        return self.bijections[0].dim

    @property
    def context_dim(self) -> int | None:
        return _shared_context_dim(self.bijections)

    def forward_and_log_det(self, x, context=None):
        total = jnp.zeros((), x.dtype)
        for b in self.bijections:
            x, log_det = b.forward_and_log_det(x, context)
            total = total + log_det
        return x, total

    def inverse_and_log_det(self, y, context=None):
        total = jnp.zeros((), y.dtype)
        for b in reversed(self.bijections):
            y, log_det = b.inverse_and_log_det(y, context)
            total = total + log_det
        return y, total


class Invert(Bijection):
    """The inverse bijection: ``Invert(f).forward = f.inverse`` and vice versa."""

    bijection: Bijection

    def __init__(self, bijection: Bijection):
        if not isinstance(bijection, Bijection):
            raise TypeError(f"`bijection` must be a Bijection, got {type(bijection).__name__}")
        self.bijection = bijection

    @property
    def dim(self) -> int:
        return self.bijection.dim

    @property
    def context_dim(self) -> int | None:
        return self.bijection.context_dim

    def forward_and_log_det(self, x, context=None):
        return self.bijection.inverse_and_log_det(x, context)

    def inverse_and_log_det(self, y, context=None):
        return self.bijection.forward_and_log_det(y, context)


class Scan(Bijection):
    """``num_layers`` layers of one type applied in sequence with :func:`jax.lax.scan`.

    The layers' arrays carry a leading axis of length ``num_layers`` (build them
    with :meth:`Scan.build`); the layer's code is traced once, so compile time
    and program size do not grow with depth.

    ``unroll`` is passed to :func:`jax.lax.scan`: ``1`` (the default) keeps one loop
    body, so compile time stays flat in depth; ``True`` lets XLA fuse across layers,
    which ran small spline flows about 1.6 times faster per step on CPU in our
    benchmark, at the price of compile time growing with depth.
    """

    layers: Bijection
    num_layers: int = eqx.field(static=True)
    unroll: int | bool = eqx.field(static=True, default=1)

    def __init__(self, layers: Bijection, num_layers: int, *, unroll: int | bool = 1):
        if not isinstance(layers, Bijection):
            raise TypeError(f"`layers` must be a stacked Bijection, got {type(layers).__name__}")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        for leaf in jax.tree_util.tree_leaves(eqx.filter(layers, eqx.is_array)):
            if leaf.ndim == 0 or leaf.shape[0] != self.num_layers:
                raise ValueError(
                    f"every array of `layers` needs a leading axis of length num_layers="
                    f"{self.num_layers}, got shape {tuple(leaf.shape)}"
                )
        if not isinstance(unroll, (bool, int, np.integer)) or (
            not isinstance(unroll, bool) and unroll < 1
        ):
            raise ValueError(f"`unroll` must be True, False or a positive integer, got {unroll!r}")
        self.unroll = unroll if isinstance(unroll, bool) else int(unroll)
        self.layers = layers

    @classmethod
    def build(cls, make_layer: Callable[[PRNGKeyArray], Bijection], key: PRNGKeyArray,
              num_layers: int, *, unroll: int | bool = 1) -> Scan:
        """``Scan`` of ``num_layers`` layers, layer ``l`` being ``make_layer(keys[l])``."""
        num_layers = check_positive_int(num_layers, "num_layers")
        keys = jax.random.split(key, num_layers)
        return cls(eqx.filter_vmap(make_layer)(keys), num_layers, unroll=unroll)

    @property
    def dim(self) -> int:
        return self.layers.dim

    @property
    def context_dim(self) -> int | None:
        return self.layers.context_dim

    def layer(self, index: int) -> Bijection:
        """The ``index``-th layer as an ordinary (unstacked) bijection."""
        params, static = eqx.partition(self.layers, eqx.is_array)
        return eqx.combine(jax.tree_util.tree_map(lambda a: a[index], params), static)

    def _run(self, value, context, inverse: bool):
        params, static = eqx.partition(self.layers, eqx.is_array)

        def body(carry, layer_params):
            value, total = carry
            layer = eqx.combine(layer_params, static)
            if inverse:
                value, log_det = layer.inverse_and_log_det(value, context)
            else:
                value, log_det = layer.forward_and_log_det(value, context)
            return (value, total + log_det), None

        # The carry takes the widest float of the input, the context and the layers' arrays
        # (e.g. a float32 point through a float64 flow under x64), as an unrolled Chain would.
        inexact = [leaf for leaf in jax.tree_util.tree_leaves((value, context, params))
                   if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
        dtype = jnp.result_type(*inexact, float)
        init = (value.astype(dtype), jnp.zeros((), dtype))
        (value, total), _ = jax.lax.scan(body, init, params, reverse=inverse, unroll=self.unroll)
        return value, total

    def forward_and_log_det(self, x, context=None):
        return self._run(x, context, inverse=False)

    def inverse_and_log_det(self, y, context=None):
        return self._run(y, context, inverse=True)

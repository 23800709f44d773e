"""Flow builders with good defaults.

Every builder returns a :class:`~flows.distribution.Flow` (a standard-normal base
pushed through the layers). Repeated layers are stacked into one
:class:`~flows.bijection.Scan`, so compile time does not grow with ``num_layers``.
Each builder takes ``context_dim`` (except the planar/radial ones) to make the flow
conditional: the context then enters every conditioner network, and
``log_prob(x, context)`` / ``sample(key, n, context)`` take it.

Every layer starts at the identity (zero-initialised output layers), so a new
flow is its base distribution; ``loc``/``scale`` append a trainable
:class:`~flows.elementwise.Affine` layer that starts the flow at
:math:`\\mathcal N(\\mathrm{loc}, \\mathrm{diag}(\\mathrm{scale}^2))`, and ``gaussian``
(a Gaussian, e.g. from :func:`probinf.vi.initialize`) appends a trainable full-rank affine
map started at the identity and the Gaussian's fixed frame, so the flow starts at that
Gaussian and trains in its units (:class:`~flows.linear.TriangularAffine`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jaxtyping import PRNGKeyArray

from flows._checks import check_key, check_optional_context_dim, check_positive_int
from flows._nn import activation_function
from flows.autoregressive import MaskedAutoregressive
from flows.bijection import Bijection, Chain, Invert, Scan
from flows.coupling import Coupling
from flows.distribution import Flow
from flows.elementwise import Affine
from flows.linear import Permutation, TriangularAffine
from flows.planar import Planar, Radial

__all__ = [
    "coupling_flow",
    "masked_autoregressive_flow",
    "inverse_autoregressive_flow",
    "spline_flow",
    "planar_flow",
]


def _permutation(key: PRNGKeyArray, dim: int, how: str) -> Permutation:
    if how == "reverse" or dim == 2:  # a random permutation of 2 may be the identity
        return Permutation.reverse(dim)
    return Permutation.random(key, dim)


def _check_permutation(permutation: object) -> str:
    if permutation not in ("random", "reverse"):
        raise ValueError(f"`permutation` must be 'random' or 'reverse', got {permutation!r}")
    return str(permutation)


def _finish(bijection: Bijection, dim: int, loc: object, scale: object,
            gaussian: object = None) -> Flow:
    if gaussian is not None:
        if loc is not None or scale is not None:
            raise ValueError("give either `gaussian` or `loc`/`scale`, not both")
        frame = TriangularAffine.from_gaussian(gaussian, trainable=False)
        if frame.dim != dim:
            raise ValueError(f"`gaussian` has dim {frame.dim} but the flow has dim {dim}")
        return Flow(Chain([bijection, TriangularAffine.identity(dim), frame]))
    if loc is None and scale is None:
        return Flow(bijection)
    affine = Affine.init(dim, loc=0.0 if loc is None else loc, scale=1.0 if scale is None else scale)
    return Flow(Chain([bijection, affine]))


def _stack(key: PRNGKeyArray, num_layers: int, make_layer: Callable[[PRNGKeyArray], Bijection],
           unroll: int | bool) -> Scan:
    return Scan.build(make_layer, key, num_layers, unroll=unroll)


def _common(key, dim, num_layers, context_dim):
    check_key(key)
    dim = check_positive_int(dim, "dim")
    num_layers = check_positive_int(num_layers, "num_layers")
    return dim, num_layers, check_optional_context_dim(context_dim)


def coupling_flow(
    key: PRNGKeyArray, dim: int, *, num_layers: int = 8, transformer: str = "affine",
    width: int = 64, depth: int = 2, activation: Callable = jax.nn.relu, context_dim: int | None = None,
    num_bins: int = 8, bound: float = 5.0, permutation: str = "random",
    loc: object = None, scale: object = None, gaussian: object = None,
    unroll: int | bool = 1,
) -> Flow:
    """Coupling flow: ``num_layers`` x (split coupling, then a permutation).

    ``transformer="affine"`` gives RealNVP (Dinh et al., 2017); ``"spline"`` the
    coupling neural spline flow (Durkan et al., 2019), as does :func:`spline_flow`.

    Args:
        key: PRNG key for the initial weights and permutations.
        dim: dimension of the variable (at least 2 for a coupling).
        num_layers: number of coupling layers.
        transformer: ``"affine"`` or ``"spline"``.
        width: hidden units per layer of each conditioner MLP.
        depth: number of hidden layers of each conditioner MLP.
        activation: the conditioners' activation function (``jax.nn.relu``, ``jnp.tanh``, ...).
        context_dim: length of the context vector for a conditional flow.
        num_bins: spline bins (spline transformer only).
        bound: the spline acts on ``[-bound, bound]`` and is the identity outside.
        permutation: ``"random"`` (a fixed random permutation per layer) or
            ``"reverse"``; for ``dim == 2`` the two coordinates are always swapped.
        loc: if given (or ``scale``), append a trainable affine layer with this shift.
        scale: if given (or ``loc``), append a trainable affine layer with this scale.
        gaussian: a :class:`probinf.FullRankGaussian`, :class:`probinf.MeanFieldGaussian` or
            standardised Gaussian (:func:`probinf.vi.initialize`'s result): start the flow at
            this Gaussian and train it in the Gaussian's frame (instead of ``loc``/``scale``):
            the layers are followed by a trainable full-rank affine map started at the
            identity and the Gaussian's fixed frame (:class:`~flows.linear.TriangularAffine`).
        unroll: passed to :class:`~flows.bijection.Scan`; ``True`` trades compile time
            (then growing with depth) for faster steps on small problems.

    Raises:
        ValueError: ``dim < 2``, or any other invalid setting (the argument is named).
    """
    dim, num_layers, context_dim = _common(key, dim, num_layers, context_dim)
    how = _check_permutation(permutation)
    activation = activation_function(activation)
    if dim < 2:
        raise ValueError(
            f"`dim` must be at least 2 for a coupling flow, got dim={dim}; use "
            "inverse_autoregressive_flow or masked_autoregressive_flow for 1-d variables"
        )

    def make_layer(k):
        k_coupling, k_perm = jax.random.split(k)
        coupling = Coupling(k_coupling, dim, transformer=transformer, width=width, depth=depth,
                            activation=activation, context_dim=context_dim, num_bins=num_bins,
                            bound=bound)
        return Chain([coupling, _permutation(k_perm, dim, how)])

    _probe(make_layer, key)
    return _finish(_stack(key, num_layers, make_layer, unroll), dim, loc, scale, gaussian)


def _probe(make_layer, key) -> None:
    """Build one layer eagerly so that invalid options raise before vmapped tracing."""
    make_layer(key)


def _autoregressive(key, dim, num_layers, transformer, width, depth, activation, context_dim,
                    num_bins, bound, permutation, loc, scale, gaussian, unroll, invert: bool) -> Flow:
    dim, num_layers, context_dim = _common(key, dim, num_layers, context_dim)
    how = _check_permutation(permutation)
    activation = activation_function(activation)

    def make_layer(k):
        k_made, k_perm = jax.random.split(k)
        layer = MaskedAutoregressive(k_made, dim, transformer=transformer, width=width,
                                     depth=depth, activation=activation, context_dim=context_dim,
                                     num_bins=num_bins, bound=bound)
        layer = Invert(layer) if invert else layer
        if dim == 1:
            return layer
        return Chain([layer, _permutation(k_perm, dim, how)])

    _probe(make_layer, key)
    return _finish(_stack(key, num_layers, make_layer, unroll), dim, loc, scale, gaussian)


def masked_autoregressive_flow(
    key: PRNGKeyArray, dim: int, *, num_layers: int = 5, transformer: str = "affine",
    width: int = 64, depth: int = 2, activation: Callable = jax.nn.relu, context_dim: int | None = None,
    num_bins: int = 8, bound: float = 5.0, permutation: str = "reverse",
    loc: object = None, scale: object = None, gaussian: object = None,
    unroll: int | bool = 1,
) -> Flow:
    """Masked autoregressive flow (MAF; Papamakarios et al., 2017).

    Each layer is :class:`~flows.bijection.Invert` of a
    :class:`~flows.autoregressive.MaskedAutoregressive` layer, so ``log_prob`` is
    one network pass per layer (density estimation) and sampling is sequential.
    Arguments as in :func:`coupling_flow`; ``permutation`` defaults to reversing
    the order between layers.
    """
    return _autoregressive(key, dim, num_layers, transformer, width, depth, activation,
                           context_dim, num_bins, bound, permutation, loc, scale, gaussian, unroll, invert=True)


def inverse_autoregressive_flow(
    key: PRNGKeyArray, dim: int, *, num_layers: int = 5, transformer: str = "affine",
    width: int = 64, depth: int = 2, activation: Callable = jax.nn.relu, context_dim: int | None = None,
    num_bins: int = 8, bound: float = 5.0, permutation: str = "reverse",
    loc: object = None, scale: object = None, gaussian: object = None,
    unroll: int | bool = 1,
) -> Flow:
    """Inverse autoregressive flow (IAF; Kingma et al., 2016).

    Each layer is a :class:`~flows.autoregressive.MaskedAutoregressive` layer in
    the sampling direction: ``sample_and_log_prob`` is one network pass per layer
    (variational inference); ``log_prob`` of arbitrary points is sequential.
    Arguments as in :func:`coupling_flow`.
    """
    return _autoregressive(key, dim, num_layers, transformer, width, depth, activation,
                           context_dim, num_bins, bound, permutation, loc, scale, gaussian, unroll, invert=False)


def spline_flow(
    key: PRNGKeyArray, dim: int, *, kind: str = "coupling", num_layers: int = 8,
    num_bins: int = 8, bound: float = 5.0, width: int = 64, depth: int = 2,
    activation: Callable = jax.nn.relu, context_dim: int | None = None, permutation: str | None = None,
    loc: object = None, scale: object = None, gaussian: object = None,
    unroll: int | bool = 1,
) -> Flow:
    """Neural spline flow with rational-quadratic spline transformers (Durkan et al., 2019).

    Args:
        key: PRNG key.
        dim: dimension of the variable.
        kind: ``"coupling"`` (both directions one pass; needs ``dim >= 2``),
            ``"iaf"`` (autoregressive, cheap sampling: for VI) or ``"maf"``
            (autoregressive, cheap density: for density estimation).
        num_layers: number of spline layers.
        num_bins: bins per spline.
        bound: the splines act on ``[-bound, bound]`` and are the identity outside.
        width: hidden units per layer of each conditioner network.
        depth: number of hidden layers of each conditioner network.
        activation: the conditioners' activation (see :func:`coupling_flow`).
        context_dim: length of the context vector for a conditional flow.
        loc: if given (or ``scale``), append a trainable affine layer with this shift.
        scale: if given (or ``loc``), append a trainable affine layer with this scale.
        gaussian: start the flow at this Gaussian (see :func:`coupling_flow`).
        permutation: ``"random"`` or ``"reverse"`` (default: random for coupling,
            reverse for the autoregressive kinds).
        unroll: passed to :class:`~flows.bijection.Scan` (see :func:`coupling_flow`).

    A conditional spline flow for neural posterior estimation:
    ``spline_flow(key, dim, context_dim=c)`` then ``flow.log_prob(theta, context=x)``
    and ``flow.sample(key, n, context=x_obs)``.
    """
    if kind == "coupling":
        return coupling_flow(key, dim, num_layers=num_layers, transformer="spline", width=width,
                             depth=depth, activation=activation, context_dim=context_dim,
                             num_bins=num_bins, bound=bound, permutation=permutation or "random",
                             loc=loc, scale=scale, gaussian=gaussian, unroll=unroll)
    if kind in ("maf", "iaf"):
        builder = masked_autoregressive_flow if kind == "maf" else inverse_autoregressive_flow
        return builder(key, dim, num_layers=num_layers, transformer="spline", width=width,
                       depth=depth, activation=activation, context_dim=context_dim,
                       num_bins=num_bins, bound=bound, permutation=permutation or "reverse",
                       loc=loc, scale=scale, gaussian=gaussian, unroll=unroll)
    raise ValueError(f"`kind` must be 'coupling', 'maf' or 'iaf', got {kind!r}")


def planar_flow(
    key: PRNGKeyArray, dim: int, *, num_layers: int = 16, kind: str = "planar",
    loc: object = None, scale: object = None, gaussian: object = None,
    unroll: int | bool = 1,
) -> Flow:
    """Stack of planar (or radial, ``kind="radial"``) layers (Rezende & Mohamed, 2015).

    Args:
        key: PRNG key.
        dim: dimension of the variable.
        num_layers: number of layers.
        kind: ``"planar"`` or ``"radial"``.
        loc: if given (or ``scale``), append a trainable affine layer with this shift.
        scale: if given (or ``loc``), append a trainable affine layer with this scale.
        gaussian: a :class:`probinf.FullRankGaussian`, :class:`probinf.MeanFieldGaussian` or
            standardised Gaussian (:func:`probinf.vi.initialize`'s result): start the flow at
            this Gaussian and train it in the Gaussian's frame (instead of ``loc``/``scale``):
            the layers are followed by a trainable full-rank affine map started at the
            identity and the Gaussian's fixed frame (:class:`~flows.linear.TriangularAffine`).
        unroll: passed to :class:`~flows.bijection.Scan` (see :func:`coupling_flow`).
    """
    dim, num_layers, _ = _common(key, dim, num_layers, None)
    if kind == "planar":
        make_layer = lambda k: Planar(k, dim)
    elif kind == "radial":
        make_layer = lambda k: Radial(k, dim)
    else:
        raise ValueError(f"`kind` must be 'planar' or 'radial', got {kind!r}")
    return _finish(_stack(key, num_layers, make_layer, unroll), dim, loc, scale, gaussian)

"""Variational families.

Every family is an `equinox.Module` that satisfies one protocol:

* ``dim`` — the length of a sample;
* ``sample_and_log_prob(key, n)`` — ``n`` samples of shape ``(n, dim)`` and their
  log densities ``(n,)``;
* ``log_prob(z)`` — the log density of ``z`` with shape ``(..., dim)``;
* ``sample(key, n)`` — samples only.

Two class-level flags tell estimators what a family supports: ``reparameterized``
(samples are a differentiable function of the parameters and of parameter-free
noise) and ``discrete`` (samples live on a finite grid and ``support()`` lists it).

Flows (``flows/``) implement the same protocol, so any objective trains any family.
All inexact arrays of a family are trained by `probinf.vi.fit`; the parameters of the
families here must therefore be floating point (an integer array would never move),
which their constructors check. Their ``init`` constructors (and `Mixture`) also reject
NaN and infinite values, naming the argument.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from probinf.linalg import solve_triangular
from probinf.validation import check_finite, is_traced

__all__ = [
    "Family",
    "MeanFieldGaussian",
    "FullRankGaussian",
    "Mixture",
    "Bernoulli",
    "Categorical",
    "HierarchicalFamily",
    "AffineGaussianConditional",
    "Standardized",
    "stop_gradient_params",
    "check_num_samples",
]

_LOG_2PI = math.log(2.0 * math.pi)
_MAX_SUPPORT = 2**16


def check_num_samples(n: object, name: str = "n") -> int:
    """Return ``n`` as an int, or raise a ValueError naming the argument."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {n!r}")
    return int(n)


def stop_gradient_params(module: eqx.Module) -> eqx.Module:
    """The same module with gradients stopped through every inexact array.

    Used by the path-derivative estimators (STL, DReG): the density of a sample is
    evaluated with the parameters held fixed while the sample itself stays live.
    """
    return jax.tree_util.tree_map(
        lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, module
    )


def _check_floating_parameters(module: eqx.Module, names: Sequence[str]) -> None:
    """A TypeError naming the field if a trained parameter holds integers (or booleans)."""
    for name in names:
        dtype = getattr(getattr(module, name), "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.inexact):
            cls = type(module).__name__
            raise TypeError(
                f"`{name}` of {cls} must be a floating-point array, got dtype {dtype}: "
                "probinf.vi.fit trains floating-point arrays only, so this parameter would "
                f"never be trained. Pass floats (e.g. jnp.asarray({name}, dtype=float))"
                + (f" or build it with {cls}.init(...)" if hasattr(type(module), "init") else "")
            )


class Family(eqx.Module):
    """Base class of the variational-family protocol (see the module docstring).

    A subclass lists its trained array fields in ``parameter_names``; they are checked
    to be floating point when the family is built.
    """

    reparameterized: ClassVar[bool] = True
    discrete: ClassVar[bool] = False
    parameter_names: ClassVar[tuple[str, ...]] = ()

    def __check_init__(self):
        _check_floating_parameters(self, self.parameter_names)

    @abc.abstractmethod
    def sample_and_log_prob(
        self, key: PRNGKeyArray, n: int
    ) -> tuple[Float[Array, "n dim"], Float[Array, " n"]]:
        """Draw ``n`` samples and return them with their log densities."""

    @abc.abstractmethod
    def log_prob(self, z: Float[Array, "... dim"]) -> Float[Array, "..."]:
        """Log density of ``z``; leading axes are batch axes."""

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n dim"]:
        """Draw ``n`` samples."""
        return self.sample_and_log_prob(key, n)[0]


def _check_point(z: Array, dim: int) -> Array:
    z = jnp.asarray(z)
    if z.ndim == 0 or z.shape[-1] != dim:
        raise ValueError(f"`z` must have last axis of length {dim}, got shape {tuple(z.shape)}")
    return z


def _as_vector(x: object, dim: int, name: str) -> Array:
    arr = jnp.asarray(x, dtype=jnp.result_type(float))  # the default float (float64 under x64)
    arr = jnp.broadcast_to(arr, (dim,)) if arr.ndim == 0 else arr
    if arr.shape != (dim,):
        raise ValueError(f"`{name}` must be a scalar or have shape ({dim},), got {arr.shape}")
    return check_finite(arr, name)


class MeanFieldGaussian(Family):
    """Diagonal Gaussian $q(z) = \\prod_i \\mathcal N(z_i; \\mu_i, \\sigma_i^2)$.

    Sampling is reparameterised: $z = \\mu + \\sigma \\odot \\varepsilon$,
    $\\varepsilon \\sim \\mathcal N(0, I)$. Parameters: ``loc`` ($\\mu$)
    and ``log_scale`` ($\\log \\sigma$).
    """

    loc: Float[Array, " dim"]
    log_scale: Float[Array, " dim"]
    parameter_names: ClassVar[tuple[str, ...]] = ("loc", "log_scale")

    @classmethod
    def init(cls, dim: int, *, loc: object = 0.0, scale: object = 1.0) -> MeanFieldGaussian:
        """A ``dim``-dimensional family with the given mean and standard deviation."""
        dim = check_num_samples(dim, "dim")
        scale = _as_vector(scale, dim, "scale")
        if not bool(jnp.all(scale > 0)):
            raise ValueError("`scale` must be positive")
        return cls(loc=_as_vector(loc, dim, "loc"), log_scale=jnp.log(scale))

    @property
    def dim(self) -> int:
        return self.loc.shape[-1]

    @property
    def scale(self) -> Array:
        return jnp.exp(self.log_scale)

    @property
    def mean(self) -> Array:
        return self.loc

    @property
    def covariance(self) -> Array:
        return jnp.diag(self.scale**2)

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        eps = jax.random.normal(key, (n, self.dim))
        z = self.loc + self.scale * eps
        log_q = -0.5 * jnp.sum(eps**2 + _LOG_2PI, axis=-1) - jnp.sum(self.log_scale)
        return z, log_q

    def log_prob(self, z: Array) -> Array:
        z = _check_point(z, self.dim)
        eps = (z - self.loc) / self.scale
        return -0.5 * jnp.sum(eps**2 + _LOG_2PI, axis=-1) - jnp.sum(self.log_scale)


class FullRankGaussian(Family):
    """Gaussian with a dense covariance $\\Sigma = L L^\\top$.

    $L$ is lower triangular with a positive diagonal, parameterised as
    ``tril(off_diagonal, -1) + diag(exp(log_diagonal))``; sampling is
    $z = \\mu + L \\varepsilon$.
    """

    loc: Float[Array, " dim"]
    log_diagonal: Float[Array, " dim"]
    off_diagonal: Float[Array, "dim dim"]
    parameter_names: ClassVar[tuple[str, ...]] = ("loc", "log_diagonal", "off_diagonal")

    @classmethod
    def init(
        cls, dim: int, *, loc: object = 0.0, scale: object = 1.0, scale_tril: object = None
    ) -> FullRankGaussian:
        """A family with mean ``loc`` and either diagonal ``scale`` or a Cholesky factor."""
        dim = check_num_samples(dim, "dim")
        loc = _as_vector(loc, dim, "loc")
        if scale_tril is None:
            scale = _as_vector(scale, dim, "scale")
            if not bool(jnp.all(scale > 0)):
                raise ValueError("`scale` must be positive")
            return cls(loc, jnp.log(scale), jnp.zeros((dim, dim)))
        tril = jnp.asarray(scale_tril, dtype=jnp.result_type(float))
        if tril.shape != (dim, dim):
            raise ValueError(f"`scale_tril` must have shape ({dim}, {dim}), got {tril.shape}")
        check_finite(jnp.tril(tril), "scale_tril")  # the upper triangle is ignored
        diag = jnp.diag(tril)
        if not bool(jnp.all(diag > 0)):
            raise ValueError("`scale_tril` must have a positive diagonal")
        return cls(loc, jnp.log(diag), jnp.tril(tril, -1))

    @property
    def dim(self) -> int:
        return self.loc.shape[-1]

    @property
    def scale_tril(self) -> Array:
        return jnp.tril(self.off_diagonal, -1) + jnp.diag(jnp.exp(self.log_diagonal))

    @property
    def mean(self) -> Array:
        return self.loc

    @property
    def covariance(self) -> Array:
        tril = self.scale_tril
        return tril @ tril.T

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        eps = jax.random.normal(key, (n, self.dim))
        z = self.loc + eps @ self.scale_tril.T
        log_q = -0.5 * jnp.sum(eps**2 + _LOG_2PI, axis=-1) - jnp.sum(self.log_diagonal)
        return z, log_q

    def log_prob(self, z: Array) -> Array:
        z = _check_point(z, self.dim)
        centred = (z - self.loc).reshape(-1, self.dim)
        eps = solve_triangular(self.scale_tril, centred.T).T
        log_q = -0.5 * jnp.sum(eps**2 + _LOG_2PI, axis=-1) - jnp.sum(self.log_diagonal)
        return log_q.reshape(z.shape[:-1])


class Standardized(Family):
    """A family in the standardised coordinates of a fixed Gaussian *frame*.

    $$
    z = m + L u,\\quad u \\sim q_\\text{base},\\qquad
    \\log q(z) = \\log q_\\text{base}\\big(L^{-1}(z - m)\\big) - \\sum_i \\log |L_{ii}| .
    $$

    The frame $(m, L)$ is held fixed (its gradients are stopped), so an optimiser
    trains only ``base``, in units of the frame. Why: Adam moves every parameter by
    about its learning rate per step whatever the gradient's scale, so on a posterior
    whose standard deviations are $10^{-3}$ (a regression on unstandardised
    covariates) a step of $10^{-2}$ in the mean is ten posterior sds, and a fit started
    at the right answer walks away from it. In frame units a step is a fixed fraction
    of the start's own scale, in every direction, whatever the model's units: the
    frame preconditions the optimisation. `probinf.vi.initialize` returns a standard
    Gaussian ``base`` in the frame of its Pathfinder/Laplace approximation; flows
    started there use a flow as ``base``.

    Args:
        base: the family over $u$ (anything satisfying the family protocol).
        frame_loc: $m$, shape ``(dim,)``.
        frame_scale_tril: $L$, lower triangular ``(dim, dim)`` with a positive diagonal.
    """

    base: Family
    frame_loc: Float[Array, " dim"]
    frame_scale_tril: Float[Array, "dim dim"]

    def __init__(self, base: Family, frame_loc: object, frame_scale_tril: object):
        dim = base.dim
        loc = jnp.asarray(frame_loc)
        tril = jnp.asarray(frame_scale_tril)
        if loc.shape != (dim,):
            raise ValueError(f"`frame_loc` must have shape ({dim},) (the base's dim), got {loc.shape}")
        if tril.shape != (dim, dim):
            raise ValueError(f"`frame_scale_tril` must have shape ({dim}, {dim}), got {tril.shape}")
        if not is_traced(loc) and not (
            bool(jnp.all(jnp.isfinite(loc))) and bool(jnp.all(jnp.isfinite(tril)))
            and bool(jnp.all(jnp.diag(tril) > 0))
        ):
            raise ValueError("the frame must be finite and `frame_scale_tril` must have a "
                             "positive diagonal")
        self.base = base
        self.frame_loc = loc
        self.frame_scale_tril = jnp.tril(tril)

    @classmethod
    def around(cls, gaussian: FullRankGaussian | MeanFieldGaussian,
               base: Family | None = None) -> Standardized:
        """``base`` (default: the standard normal of ``gaussian``'s kind) in the frame of ``gaussian``.

        The result starts equal to ``gaussian`` when ``base`` starts at the standard normal.
        """
        if isinstance(gaussian, MeanFieldGaussian):
            tril = jnp.diag(gaussian.scale)
            default = MeanFieldGaussian(jnp.zeros_like(gaussian.loc), jnp.zeros_like(gaussian.loc))
        elif isinstance(gaussian, FullRankGaussian):
            tril = gaussian.scale_tril
            default = FullRankGaussian(jnp.zeros_like(gaussian.loc), jnp.zeros_like(gaussian.loc),
                                       jnp.zeros_like(gaussian.off_diagonal))
        else:
            raise TypeError("`gaussian` must be a FullRankGaussian or MeanFieldGaussian, got "
                            f"{type(gaussian).__name__}")
        return cls(default if base is None else base, gaussian.loc, tril)

    @property
    def reparameterized(self) -> bool:  # type: ignore[override]
        return self.base.reparameterized

    @property
    def discrete(self) -> bool:  # type: ignore[override]
        return False

    @property
    def dim(self) -> int:
        return self.frame_loc.shape[-1]

    def _frame(self) -> tuple[Array, Array]:
        return jax.lax.stop_gradient(self.frame_loc), jax.lax.stop_gradient(self.frame_scale_tril)

    def _log_det(self, tril: Array) -> Array:
        return jnp.sum(jnp.log(jnp.abs(jnp.diag(tril))))

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        loc, tril = self._frame()
        u, log_q = self.base.sample_and_log_prob(key, n)
        return loc + u @ tril.T, log_q - self._log_det(tril)

    def log_prob(self, z: Array) -> Array:
        z = _check_point(z, self.dim)
        loc, tril = self._frame()
        centred = (z - loc).reshape(-1, self.dim)
        u = solve_triangular(tril, centred.T).T.reshape(z.shape)
        return self.base.log_prob(u) - self._log_det(tril)

    @property
    def mean(self) -> Array:
        """$m + L\\,\\mathbb E[u]$ (needs ``base.mean``)."""
        loc, tril = self._frame()
        return loc + tril @ self.base.mean

    @property
    def covariance(self) -> Array:
        """$L\\,\\mathrm{Cov}[u]\\,L^\\top$ (needs ``base.covariance``)."""
        _, tril = self._frame()
        return tril @ self.base.covariance @ tril.T


class Mixture(Family):
    """Finite mixture $q(z) = \\sum_k \\pi_k q_k(z)$ of any families.

    The component index is discrete, so plain reparameterised sampling does not
    carry gradients to the weights: ``reparameterized`` is ``False``. Use the
    `probinf.vi.Enumerate` estimator (sums over components exactly and
    reparameterises inside each one) or a score-function estimator.
    """

    components: tuple[Family, ...]
    logits: Float[Array, " k"]
    reparameterized: ClassVar[bool] = False
    parameter_names: ClassVar[tuple[str, ...]] = ("logits",)

    def __init__(self, components: Sequence[Family], logits: object = None):
        components = tuple(components)
        if len(components) < 1:
            raise ValueError("`components` must hold at least one family")
        dims = {c.dim for c in components}
        if len(dims) != 1:
            raise ValueError(f"all `components` must share one dim, got dims {sorted(dims)}")
        self.components = components
        k = len(components)
        logits = jnp.zeros(k) if logits is None else jnp.asarray(logits, dtype=jnp.result_type(float))
        if logits.shape != (k,):
            raise ValueError(f"`logits` must have shape ({k},), got {logits.shape}")
        self.logits = check_finite(logits, "logits")

    @property
    def dim(self) -> int:
        return self.components[0].dim

    @property
    def log_weights(self) -> Array:
        return jax.nn.log_softmax(self.logits)

    def component_sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        """``n`` samples from every component, ``(k, n, dim)``, with the mixture log density."""
        keys = jax.random.split(key, len(self.components))
        z = jnp.stack([c.sample(k, n) for c, k in zip(self.components, keys, strict=True)])
        return z, self.log_prob(z)

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        key_index, key_components = jax.random.split(key)
        z_all, _ = self.component_sample_and_log_prob(key_components, n)
        index = jax.random.categorical(key_index, self.logits, shape=(n,))
        z = z_all[index, jnp.arange(n)]
        return z, self.log_prob(z)

    def log_prob(self, z: Array) -> Array:
        z = _check_point(z, self.dim)
        per_component = jnp.stack([c.log_prob(z) for c in self.components], axis=-1)
        return jax.nn.logsumexp(per_component + self.log_weights, axis=-1)


def _support_size(values_per_dim: int, dim: int) -> int:
    size = values_per_dim**dim
    if size > _MAX_SUPPORT:
        raise ValueError(
            f"the support has {values_per_dim}^{dim} = {size} points, more than the "
            f"{_MAX_SUPPORT} that exact enumeration allows; use a score-function estimator"
        )
    return size


class Bernoulli(Family):
    """Independent Bernoulli variables $q(z) = \\prod_i \\sigma(\\ell_i)^{z_i}(1-\\sigma(\\ell_i))^{1-z_i}$.

    Samples are float arrays of zeros and ones. Not reparameterisable: train with
    `probinf.vi.Score` or `probinf.vi.Enumerate`.
    """

    logits: Float[Array, " dim"]
    reparameterized: ClassVar[bool] = False
    discrete: ClassVar[bool] = True
    parameter_names: ClassVar[tuple[str, ...]] = ("logits",)

    @classmethod
    def init(cls, dim: int, *, probs: object = 0.5) -> Bernoulli:
        dim = check_num_samples(dim, "dim")
        probs = _as_vector(probs, dim, "probs")
        if not bool(jnp.all((probs > 0) & (probs < 1))):
            raise ValueError("`probs` must lie strictly between 0 and 1")
        return cls(logits=jnp.log(probs) - jnp.log1p(-probs))

    @property
    def dim(self) -> int:
        return self.logits.shape[-1]

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        z = jax.random.bernoulli(key, jax.nn.sigmoid(self.logits), (n, self.dim))
        z = z.astype(self.logits.dtype)
        return z, self.log_prob(z)

    def log_prob(self, z: Array) -> Array:
        z = _check_point(z, self.dim)
        return jnp.sum(
            z * jax.nn.log_sigmoid(self.logits) + (1 - z) * jax.nn.log_sigmoid(-self.logits),
            axis=-1,
        )

    def support(self) -> Float[Array, "m dim"]:
        """Every point of the support, ``(2**dim, dim)``."""
        _support_size(2, self.dim)
        return jnp.asarray(list(itertools.product((0.0, 1.0), repeat=self.dim)), self.logits.dtype)


class Categorical(Family):
    """Independent categorical variables, ``logits`` of shape ``(dim, num_categories)``.

    Samples are float arrays holding category indices ``0..num_categories-1``.
    """

    logits: Float[Array, "dim c"]
    reparameterized: ClassVar[bool] = False
    discrete: ClassVar[bool] = True
    parameter_names: ClassVar[tuple[str, ...]] = ("logits",)

    @classmethod
    def init(cls, dim: int, num_categories: int) -> Categorical:
        dim = check_num_samples(dim, "dim")
        num_categories = check_num_samples(num_categories, "num_categories")
        return cls(logits=jnp.zeros((dim, num_categories)))

    @property
    def dim(self) -> int:
        return self.logits.shape[0]

    @property
    def num_categories(self) -> int:
        return self.logits.shape[1]

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        z = jax.random.categorical(key, self.logits, axis=-1, shape=(n, self.dim))
        z = z.astype(self.logits.dtype)
        return z, self.log_prob(z)

    def log_prob(self, z: Array) -> Array:
        z = _check_point(z, self.dim)
        log_p = jax.nn.log_softmax(self.logits, axis=-1)
        index = z.astype(jnp.int32)[..., None]
        picked = jnp.take_along_axis(jnp.broadcast_to(log_p, z.shape + log_p.shape[-1:]), index, -1)
        return jnp.sum(picked[..., 0], axis=-1)

    def support(self) -> Float[Array, "m dim"]:
        """Every point of the support, ``(num_categories**dim, dim)``."""
        _support_size(self.num_categories, self.dim)
        grid = itertools.product(range(self.num_categories), repeat=self.dim)
        return jnp.asarray(list(grid), self.logits.dtype)


class AffineGaussianConditional(eqx.Module):
    """A conditional family ``context -> MeanFieldGaussian(W @ context + b, exp(log_scale))``.

    The simplest learnable conditional for `HierarchicalFamily`; any
    callable module returning a `Family` works in its place.
    """

    weight: Float[Array, "out context"]
    bias: Float[Array, " out"]
    log_scale: Float[Array, " out"]

    def __check_init__(self):
        _check_floating_parameters(self, ("weight", "bias", "log_scale"))

    @classmethod
    def init(cls, context_dim: int, out_dim: int, *, scale: float = 1.0):
        context_dim = check_num_samples(context_dim, "context_dim")
        out_dim = check_num_samples(out_dim, "out_dim")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"`scale` must be a positive finite number, got {scale!r}")
        return cls(
            weight=jnp.zeros((out_dim, context_dim)),
            bias=jnp.zeros(out_dim),
            log_scale=jnp.full(out_dim, math.log(scale)),
        )

    def __call__(self, context: Array) -> MeanFieldGaussian:
        return MeanFieldGaussian(self.weight @ context + self.bias, self.log_scale)


class HierarchicalFamily(Family):
    """Hierarchical family $q(z) = \\int q(z \\mid u)\\, q(u)\\, du$ with an auxiliary ``u``.

    The marginal density is intractable; ``sample_and_log_prob`` returns an
    estimate $\\log \\hat q(z)$ built from the auxiliary sample $u_0$
    that generated $z$ and ``num_inner`` extra draws
    $u_{1:K} \\sim r(u \\mid z)$ from a reverse model:

    $$
    \\log \\hat q(z) = \\log \\frac{1}{K+1} \\sum_{k=0}^{K}
    \\frac{q(z \\mid u_k)\\, q(u_k)}{r(u_k \\mid z)} .
    $$

    Its expectation is an upper bound on $\\log q(z)$, so using it in place
    of $\\log q$ keeps the ELBO a lower bound. ``num_inner=0`` gives HVI
    (Ranganath, Tran & Blei, 2016, "Hierarchical Variational Models"); ``K>0`` gives
    IWHVI (Sobolev & Vetrov, 2019, "Importance Weighted Hierarchical Variational
    Inference"), and using it inside `probinf.vi.IWAE` gives the doubly
    importance-weighted DIWHVI bound (Becker et al., PLDI 2024).

    Args:
        mixing: the family of the auxiliary variable, $q(u)$.
        conditional: a callable module ``u -> Family`` over ``z``.
        reverse: a callable module ``z -> Family`` over ``u``, or ``None`` to use
            ``mixing`` itself as the proposal (then the weights are $q(z\\mid u_k)$).
        num_inner: number of extra auxiliary draws ``K >= 0``.
    """

    mixing: Family
    conditional: Callable[[Array], Family]
    reverse: Callable[[Array], Family] | None
    num_inner: int = eqx.field(static=True)
    dim_z: int = eqx.field(static=True)

    def __init__(self, mixing, conditional, reverse=None, *, num_inner: int = 0):
        if isinstance(num_inner, bool) or not isinstance(num_inner, (int, np.integer)):
            raise ValueError(f"`num_inner` must be a non-negative integer, got {num_inner!r}")
        if num_inner < 0:
            raise ValueError(f"`num_inner` must be a non-negative integer, got {num_inner!r}")
        if not mixing.reparameterized:
            raise ValueError("`mixing` must be a reparameterised family")
        self.mixing = mixing
        self.conditional = conditional
        self.reverse = reverse
        self.num_inner = int(num_inner)
        u_probe = jax.ShapeDtypeStruct((mixing.dim,), jnp.result_type(float))
        self.dim_z = jax.eval_shape(lambda u: conditional(u).sample(jax.random.PRNGKey(0), 1), u_probe).shape[-1]

    @property
    def dim(self) -> int:
        return self.dim_z

    def _log_joint_over_proposal(self, z: Array, u: Array) -> Array:
        """$\\log q(z\\mid u) + \\log q(u) - \\log r(u\\mid z)$ for one ``z`` and ``u``."""
        log_cond = self.conditional(u).log_prob(z)
        if self.reverse is None:
            return log_cond
        return log_cond + self.mixing.log_prob(u) - self.reverse(z).log_prob(u)

    def _proposal_sample(self, key: PRNGKeyArray, z: Array, m: int) -> Array:
        if self.reverse is None:
            return self.mixing.sample(key, m)
        return self.reverse(z).sample(key, m)

    def _estimate_one(self, key: PRNGKeyArray, z: Array, u0: Array) -> Array:
        terms = self._log_joint_over_proposal(z, u0)[None]
        if self.num_inner > 0:
            extra = self._proposal_sample(key, z, self.num_inner)
            more = jax.vmap(lambda u: self._log_joint_over_proposal(z, u))(extra)
            terms = jnp.concatenate([terms, more])
        return jax.nn.logsumexp(terms) - jnp.log(terms.shape[0])

    def sample_and_log_prob(self, key: PRNGKeyArray, n: int) -> tuple[Array, Array]:
        n = check_num_samples(n)
        key_u, key_z, key_inner = jax.random.split(key, 3)
        u0 = self.mixing.sample(key_u, n)
        z = jax.vmap(lambda k, u: self.conditional(u).sample(k, 1)[0])(
            jax.random.split(key_z, n), u0
        )
        log_q = jax.vmap(self._estimate_one)(jax.random.split(key_inner, n), z, u0)
        return z, log_q

    def estimate_log_prob(self, key: PRNGKeyArray, z: Array, num_samples: int = 64) -> Array:
        """Importance-sampling estimate of $\\log q(z)$ for given points (a lower bound in expectation)."""
        z = _check_point(z, self.dim)
        num_samples = check_num_samples(num_samples, "num_samples")
        flat = z.reshape(-1, self.dim)

        def one(k, point):
            u = self._proposal_sample(k, point, num_samples)
            terms = jax.vmap(lambda ui: self._log_joint_over_proposal(point, ui))(u)
            return jax.nn.logsumexp(terms) - jnp.log(num_samples)

        out = jax.vmap(one)(jax.random.split(key, flat.shape[0]), flat)
        return out.reshape(z.shape[:-1])

    def log_prob(self, z: Array) -> Array:
        raise NotImplementedError(
            "HierarchicalFamily has no tractable log_prob; use sample_and_log_prob "
            "(for objectives) or estimate_log_prob(key, z) (for evaluation)"
        )

"""Targets: log densities on an unconstrained flat vector.

A `Target` is the seam between models and inference algorithms. Every
VI objective, sampler and particle method consumes one. It holds

* ``log_density(z)``: the (unnormalised) log density
  $\\log \\tilde p(z)$ of an unconstrained point $z \\in \\mathbb{R}^d$,
  including the log-Jacobian of the map to the model's constrained space;
* ``constrain(z)``: the model's named sites at that point.

Two constructors cover the common cases: `from_numpyro` for a numpyro model
and `from_logdensity` for a plain JAX function.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from probinf.validation import check_finite, check_key, is_traced

__all__ = ["Target", "NumpyroModel", "SubsamplePlate", "from_numpyro", "from_logdensity"]


class SubsamplePlate(NamedTuple):
    """A numpyro plate that subsamples its data: ``plate(name, size, subsample_size=...)``."""

    name: str
    size: int
    subsample_size: int


def _identity_constrain(z: Array) -> dict[str, Array]:
    return {"z": z}


@dataclasses.dataclass(frozen=True, eq=False)
class NumpyroModel:
    """The numpyro model behind a `Target` made by `from_numpyro`.

    What ArviZ export needs besides the density: the model to score observations with
    (`probinf.diagnostics.pointwise_log_likelihood` runs numpyro's own
    ``numpyro.infer.util.log_likelihood`` on it) and the observed data. A plain object,
    not a pytree: JAX sees it as one static leaf, so the arrays it holds are never traced.

    Attributes:
        model: the model as the target's density uses it (``param`` sites held at their
            initial values, a fixed key for ``numpyro.prng_key()``).
        args: its positional arguments.
        kwargs: its keyword arguments.
        observed_data: ``{site: value}`` of every observed sample site that is a
            likelihood term (``numpyro.factor`` sites are not: they have no data), or
            ``None`` when the values were traced (``from_numpyro`` under ``jit``).
        likelihood_sites: names of those sites, in model order.
        row_log_likelihood: for a model with one subsampled plate,
            ``fn(z, indices) -> (B,)``: the unscaled log-likelihood of each of those
            rows at the unconstrained point ``z`` (used by
            `Target.with_control_variate`); ``None`` otherwise.
    """

    model: Callable
    args: tuple
    kwargs: Mapping[str, Any]
    observed_data: Mapping[str, np.ndarray] | None
    likelihood_sites: tuple[str, ...]
    row_log_likelihood: Callable[[Array, Array], Array] | None = None


class Target(eqx.Module):
    """An unnormalised log density on an unconstrained ``(dim,)`` vector.

    Attributes:
        log_density_fn: ``fn(z)`` (or ``fn(z, params)`` when ``params`` is set)
            returning a scalar log density for one unbatched point.
        dim: length of the unconstrained vector.
        params: optional pytree of model parameters passed to ``log_density_fn``;
            objectives such as reweighted wake-sleep (wake-p) can learn them.
        constrain_fn: maps one unconstrained point to a dict of named sites.
        init_position: a sensible starting point, or ``None``. For numpyro models it is
            the unconstrained point of ``from_numpyro``'s ``init_strategy`` (by default
            numpyro's ``init_to_median``: each site's prior median), checked to have a
            finite log density and gradient.
        site_shape_items: ``(name, shape)`` of every named site returned by
            ``constrain`` (hashable, as a static field must be); see `site_shapes`.
        numpyro_model: the `NumpyroModel` of a target made by `from_numpyro` (its
            model, data and likelihood sites, for pointwise log likelihoods and ArviZ's
            ``observed_data``); ``None`` for `from_logdensity` targets, whose density
            does not say which part is likelihood.
        subsample_plates: the model's subsampled plates (see *Data subsampling*); empty
            for a target without them.
        batch: ``{plate name: indices}`` that the log density uses for those plates, or
            ``None`` for the full data.
        control_variate: the Taylor control variate set by `with_control_variate`, or
            ``None``.

    **Data subsampling.** A numpyro model with ``numpyro.plate(name, N,
    subsample_size=B)`` gives a target with ``subsample_plates``. With ``batch=None``
    (as built) its log density is the exact full-data density, so every sampler and
    diagnostic gets the right posterior. `probinf.vi.fit` draws a fresh batch at every
    step (`draw_batch`, `with_batch`): the plate's rows are then ``B`` indices drawn
    uniformly *with* replacement and their log-likelihood terms are scaled by ``N / B``,
    as numpyro scales a subsampled plate. The estimate is unbiased,

    $$
    \\mathbb{E}_{I}\\Big[\\frac{N}{B} \\sum_{k=1}^{B} \\ell_{I_k}(z)\\Big] = \\sum_{i=1}^{N} \\ell_i(z),
    $$

    and so is its gradient; drawing with replacement costs $O(B)$ per step whatever
    $N$ (numpyro draws without replacement, which needs $O(N)$ work per step; for
    $B \\ll N$ the two differ in variance by the factor $(N - B)/(N - 1)$ only).
    Objectives that are linear in $\\log \\tilde p$ (`probinf.vi.ELBO` with any
    estimator) keep an unbiased gradient; those that are not (IWAE, VIMCO, Rényi,
    $\\chi$) optimise a subsampled surrogate whose gradient is biased, as in any
    subsampled importance-weighted bound.
    """

    log_density_fn: Callable[..., Array]
    dim: int = eqx.field(static=True)
    params: Any = None
    constrain_fn: Callable[[Array], dict[str, Array]] = _identity_constrain
    init_position: Array | None = None
    site_shape_items: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True, default=())
    numpyro_model: NumpyroModel | None = None
    subsample_plates: tuple[SubsamplePlate, ...] = eqx.field(static=True, default=())
    batch: Mapping[str, Array] | None = None
    control_variate: Any = None

    @property
    def site_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every named site returned by `constrain`."""
        return dict(self.site_shape_items)

    def _check_last_axis(self, z: Array, name: str = "z") -> None:
        if z.ndim == 0 or z.shape[-1] != self.dim:
            raise ValueError(
                f"`{name}` must have last axis of length {self.dim} (the target's dim); "
                f"got shape {tuple(z.shape)}"
            )

    def _log_density_one(self, z: Array) -> Array:
        if self.subsample_plates:
            if self.control_variate is not None and self.batch is not None:
                return self.control_variate.log_density(self, z)
            return self.log_density_fn(z, self.batch)
        if self.params is None:
            return self.log_density_fn(z)
        return self.log_density_fn(z, self.params)

    def draw_batch(self, key: Array) -> dict[str, Array]:
        """Fresh indices for every subsampled plate: ``subsample_size`` rows drawn
        uniformly with replacement from its ``size`` (see *Data subsampling*)."""
        check_key(key)
        if not self.subsample_plates:
            raise ValueError("this target has no subsampled plate (numpyro.plate(..., "
                             "subsample_size=B)); there is no batch to draw")
        keys = jax.random.split(key, len(self.subsample_plates))
        return {plate.name: jax.random.randint(k, (plate.subsample_size,), 0, plate.size)
                for plate, k in zip(self.subsample_plates, keys, strict=True)}

    def with_batch(self, batch: Mapping[str, Array] | None) -> Target:
        """This target with its subsampled plates at ``batch`` (``{plate: indices}``),
        or at the full data for ``None``."""
        if not self.subsample_plates:
            raise ValueError("this target has no subsampled plate; `batch` applies only to "
                             "models with numpyro.plate(..., subsample_size=B)")
        if batch is not None:
            if not isinstance(batch, Mapping):
                raise TypeError("`batch` must be a dict of plate name to indices, "
                                f"got {type(batch).__name__}")
            names = [plate.name for plate in self.subsample_plates]
            if sorted(batch) != sorted(names):
                raise ValueError(f"`batch` must give indices for the subsampled plates {names}, "
                                 f"got {sorted(batch)}")
            checked = {}
            for plate in self.subsample_plates:
                indices = jnp.asarray(batch[plate.name])
                if indices.ndim != 1 or indices.shape[0] < 1 or not jnp.issubdtype(
                        indices.dtype, jnp.integer):
                    raise ValueError(
                        f"`batch['{plate.name}']` must be a non-empty 1-d integer array of row "
                        f"indices, got dtype {indices.dtype} and shape {tuple(indices.shape)}")
                if not is_traced(indices) and (
                        int(indices.min()) < 0 or int(indices.max()) >= plate.size):
                    raise ValueError(f"`batch['{plate.name}']` has indices outside "
                                     f"[0, {plate.size}), the plate's size")
                checked[plate.name] = indices
            batch = checked
        return eqx.tree_at(lambda t: t.batch, self, batch, is_leaf=lambda x: x is None)

    def with_control_variate(self, reference: Array) -> Target:
        """This target with the Taylor control variate around ``reference`` for its
        subsampled log-likelihood (the difference estimator of Bardenet, Doucet & Holmes,
        JMLR 2017; the proxy of numpyro's HMCECS, Dang et al. 2019).

        With $\\ell_i$ the log-likelihood of row $i$ and $\\hat\\ell_i$ its second-order
        Taylor expansion at the reference point $z^\\star$, a batch $I$ of $B$ rows gives

        $$
        \\sum_{i=1}^N \\hat\\ell_i(z) + \\frac{N}{B} \\sum_{k=1}^{B}
            \\big(\\ell_{I_k}(z) - \\hat\\ell_{I_k}(z)\\big),
        $$

        unbiased like the plain estimate, with a variance that vanishes as $z \\to z^\\star$
        (the residual is third order in $z - z^\\star$). The full-data sum
        $\\sum_i \\hat\\ell_i(z)$ is a quadratic in $z$ whose value, gradient and Hessian
        at $z^\\star$ are computed once here (over all $N$ rows, in chunks: about
        ``dim + 2`` passes' work); each batch costs three forward passes over its $B$ rows.
        Choose ``reference`` near the posterior mode (e.g. the mean of a short fit, or a
        MAP estimate): far from it the expansion is poor and the variance can exceed the
        plain estimate's.

        Only for targets from `from_numpyro` with exactly one subsampled plate.
        """
        from probinf._subsample import TaylorControlVariate

        if not self.subsample_plates or self.numpyro_model is None:
            raise ValueError("`with_control_variate` needs a target from from_numpyro with a "
                             "subsampled plate (numpyro.plate(..., subsample_size=B))")
        reference = jnp.asarray(reference, jnp.result_type(float))
        if reference.shape != (self.dim,):
            raise ValueError(f"`reference` must have shape ({self.dim},), got "
                             f"{tuple(reference.shape)}")
        check_finite(reference, "reference")
        full = eqx.tree_at(lambda t: t.control_variate, self.with_batch(None), None,
                           is_leaf=lambda x: x is None)
        variate = TaylorControlVariate.build(full, reference)
        return eqx.tree_at(lambda t: t.control_variate, full, variate,
                           is_leaf=lambda x: x is None)

    def log_density(self, z: Float[Array, "... dim"]) -> Float[Array, "..."]:
        """Log density at ``z``; leading axes are batch axes."""
        z = jnp.asarray(z)
        self._check_last_axis(z)
        fn = self._log_density_one
        for _ in range(z.ndim - 1):
            fn = jax.vmap(fn)
        return fn(z)

    def __call__(self, z: Float[Array, "... dim"]) -> Float[Array, "..."]:
        return self.log_density(z)

    def constrain(self, z: Float[Array, "... dim"]) -> dict[str, Array]:
        """Named sites in the model's constrained space; leading axes are kept."""
        z = jnp.asarray(z)
        self._check_last_axis(z)
        fn = self.constrain_fn
        for _ in range(z.ndim - 1):
            fn = jax.vmap(fn)
        return fn(z)


def from_logdensity(
    fn: Callable[..., Array],
    dim: int,
    *,
    params: Any = None,
    constrain: Callable[[Array], dict[str, Array]] | None = None,
    init_position: Array | None = None,
) -> Target:
    """Wrap a JAX log-density function of one ``(dim,)`` vector as a `Target`.

    Args:
        fn: ``fn(z) -> scalar`` (or ``fn(z, params) -> scalar`` when ``params`` is given).
        dim: length of ``z``.
        params: optional pytree of parameters passed as the second argument.
        constrain: optional map from ``z`` to named sites; default ``{"z": z}``.
        init_position: optional starting point.

    Raises:
        ValueError: if ``dim`` is not a positive integer, ``fn`` does not return a scalar,
            or ``init_position`` has the wrong shape or a NaN or infinite entry.
        TypeError: if ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"`dim` must be a positive integer, got {dim!r}")
    dim = int(dim)
    probe = jax.ShapeDtypeStruct((dim,), jnp.result_type(float))
    try:
        out = jax.eval_shape(fn, probe) if params is None else jax.eval_shape(fn, probe, params)
    except Exception as err:  # the user's function failed on a (dim,) input
        raise ValueError(f"`fn` could not be evaluated on a vector of shape ({dim},): {err}") from err
    if not hasattr(out, "shape") or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`fn` must return a scalar log density, got shape {shape}")
    constrain_fn = constrain if constrain is not None else _identity_constrain
    site_shapes = {
        name: tuple(s.shape) for name, s in jax.eval_shape(constrain_fn, probe).items()
    }
    if init_position is not None:
        init_position = jnp.asarray(init_position, dtype=jnp.result_type(float))
        if init_position.shape != (dim,):
            raise ValueError(
                f"`init_position` must have shape ({dim},), got {tuple(init_position.shape)}"
            )
        check_finite(init_position, "init_position")
    return Target(
        log_density_fn=fn,
        dim=dim,
        params=params,
        constrain_fn=constrain_fn,
        init_position=init_position,
        site_shape_items=tuple(site_shapes.items()),
    )


_INIT_STRATEGY_NAMES = (
    "init_to_median",
    "init_to_uniform",
    "init_to_value",
    "init_to_feasible",
    "init_to_sample",
    "init_to_mean",
)


def from_numpyro(
    model: Callable,
    *args: Any,
    key: Array | None = None,
    init_strategy: Any = None,
    **kwargs: Any,
) -> Target:
    """Turn a numpyro model into a `Target` on its unconstrained space.

    Every continuous latent site $x_i$ is mapped to the real line by numpyro's own
    ``biject_to(site.support)`` transform $T_i$ (for a support that depends on other
    latents, such as ``Uniform(0, 1 - a)``, at their current values), and the
    log-Jacobian of that transform is added, as in ADVI (Kucukelbir, Tran, Ranganath,
    Gelman & Blei, JMLR 2017):

    $$
    \\log \\tilde p(z) = \\log p\\big(T(z), y\\big) + \\log |\\det J_T(z)|
                      = -\\mathrm{potential\\_energy}(z).
    $$

    The density is numpyro's own ``potential_energy``, so everything numpyro's HMC
    accepts is accepted here: improper priors (``ImproperUniform`` on any support, with
    log density 0), ``numpyro.factor``, ``deterministic`` sites (returned by
    ``constrain``), masks (``handlers.mask`` and ``.mask()``; masked-out observed
    entries may be NaN), ``obs_mask``, ``scale`` and plates. ``numpyro.param`` sites
    are held at their initial values, as numpyro's MCMC does.

    A plate with ``subsample_size`` (``numpyro.plate("data", N, subsample_size=B)``,
    its indices selecting the rows) makes a target with ``subsample_plates``: its
    ``log_density`` is still the exact full-data density (every sampler gets the right
    posterior; the initial point is checked on the full data), and `probinf.vi.fit`
    draws ``B`` rows per step with the ``N / B`` scaling numpyro applies (see `Target`,
    *Data subsampling*). Every latent site must then lie outside the subsampled plate.

    The starting point ``init_position`` is chosen by a numpyro initialisation
    strategy, in numpyro's meaning: the default ``init_to_median()`` (numpyro's
    autoguide default) takes, per site, the median of ``num_samples=15`` prior draws
    in the unconstrained space; sites without a sampler (improper priors) fall back to
    ``init_to_uniform``. ``init_to_uniform(radius=2)`` draws each unconstrained
    coordinate uniformly in $(-r, r)$, ``init_to_feasible()`` is its $r = 0$ case,
    ``init_to_sample()`` one prior draw, ``init_to_mean()`` the prior mean and
    ``init_to_value(values={name: value})`` the given constrained values (other sites
    by ``init_to_uniform``). The dtype of the target (of ``init_position``, and the
    dtype every ``z`` is cast to) is the dtype of that initial point: float64 under
    ``jax_enable_x64`` for the usual Python-float priors, float32 otherwise.

    Args:
        model: a numpyro model function.
        *args: positional arguments for the model (e.g. data).
        key: PRNG key of the initialisation strategy (default ``PRNGKey(0)``).
        init_strategy: one of ``numpyro.infer.init_to_median``, ``init_to_uniform``,
            ``init_to_value``, ``init_to_feasible``, ``init_to_sample``,
            ``init_to_mean``, plain or called with its options (e.g.
            ``init_to_value(values={"sigma": 1.0})``). Default ``init_to_median()``.
        **kwargs: keyword arguments for the model.

    Returns:
        A `Target` whose ``init_position`` is the chosen initial point, unconstrained
        and flattened (sites in sorted name order, as ``jax.flatten_util.ravel_pytree``
        of numpyro's ``{site: unconstrained value}`` dict).

    Raises:
        TypeError: ``model`` is not callable, ``key`` is not a PRNG key, or
            ``init_strategy`` is not callable.
        ValueError: each naming the site, its distribution and the reason: an unknown
            ``init_strategy``; a site that cannot be traced at its initial value; a
            latent site inside a subsampled plate, or a model that indexes NumPy data
            with its plate's indices; an observed site with NaN or
            infinite values (outside its mask); a discrete or ``Delta`` latent site; a
            model with no latent site; ``init_to_value`` values naming no latent site,
            of the wrong shape or outside the support; a log density or gradient that
            is not finite at the initial point.
    """
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer.initialization import init_to_value
    from numpyro.infer.util import constrain_fn, potential_energy, transform_fn

    if not callable(model):
        raise TypeError(f"`model` must be a callable numpyro model, got {type(model).__name__}")
    key = jax.random.PRNGKey(0) if key is None else check_key(key)
    strategy, strategy_name = _resolve_init_strategy(init_strategy)

    user_values = strategy.keywords["values"] if strategy.func is init_to_value else {}
    try:
        trace = _trace_at_init(model, args, kwargs, key, strategy, strategy_name)
    except Exception:
        if user_values:  # the model may have failed on a bad given value: name it if so
            _recheck_init_values(model, args, kwargs, key, user_values)
        raise
    plates = _subsample_plates(trace)
    _check_observations(trace)
    latent = _latent_sites(trace)
    _check_no_local_latents(latent, plates)
    if user_values:
        _check_init_values(user_values, latent)

    constrained, transforms = {}, {}
    for name, site in latent.items():
        constrained[name] = _as_float_array(site["value"])
        expected = tuple(site["kwargs"].get("sample_shape") or ()) + tuple(site["fn"].shape())
        if constrained[name].shape != expected:
            raise ValueError(
                f"the initial value of site '{name}' ({_describe_distribution(site['fn'])}) "
                f"from {strategy_name} has shape {constrained[name].shape}, but the site's "
                f"shape is {expected}"
            )
        transforms[name] = biject_to(site["fn"].support)  # _latent_sites checked it exists
    unconstrained = transform_fn(transforms, constrained, invert=True)
    flat_init, unravel = ravel_pytree(unconstrained)
    dtype = flat_init.dtype
    concrete = not is_traced(flat_init)
    if concrete:
        _check_finite_unconstrained(unconstrained, latent, strategy_name)

    prepared = _prepared_model(model, trace, key)
    if plates:
        from probinf._subsample import plate_rows

        subsampled = prepared
        # The full data unless a batch is given: every plate at all its rows (scale 1).
        prepared = plate_rows(subsampled, _full_plates(plates))

        def log_density_fn(z: Array, batch: Mapping[str, Array] | None = None) -> Array:
            model_at = prepared if batch is None else plate_rows(subsampled, batch)
            return -potential_energy(model_at, args, kwargs, unravel(jnp.asarray(z, dtype)))
    else:
        def log_density_fn(z: Array) -> Array:
            return -potential_energy(prepared, args, kwargs, unravel(jnp.asarray(z, dtype)))

    def constrain(z: Array) -> dict[str, Array]:
        return constrain_fn(prepared, args, kwargs, unravel(jnp.asarray(z, dtype)),
                            return_deterministic=True)

    if concrete:
        # numpyro's find_valid_initial_params checks the same (value and gradient), but
        # would silently retry up to 100 random points; a bad start is reported instead.
        try:
            value, grad = jax.jit(jax.value_and_grad(log_density_fn))(flat_init)
        except Exception as err:
            err.add_note(f"(raised while probinf.from_numpyro evaluated the model's log density "
                         f"and its gradient at the initial point from {strategy_name})")
            raise
        if not np.isfinite(np.asarray(value)):
            _raise_nonfinite_init(prepared, args, kwargs, constrained, unconstrained, transforms,
                                  value, strategy, strategy_name)
        bad_grad = [name for name, g in unravel(grad).items()
                    if not np.all(np.isfinite(np.asarray(g)))]
        if bad_grad:
            sites = ", ".join(f"'{n}' ({_describe_distribution(latent[n]['fn'])})"
                              for n in bad_grad)
            raise ValueError(
                f"the gradient of the log density is not finite at the initial point chosen by "
                f"{strategy_name}, at site(s) {sites}; {_other_strategies(strategy)}"
            )

    probe = jax.ShapeDtypeStruct((int(flat_init.shape[0]),), dtype)
    if plates:
        _check_traced_rows(log_density_fn, probe, plates)
    site_shapes = {name: tuple(s.shape) for name, s in jax.eval_shape(constrain, probe).items()}
    return Target(
        log_density_fn=log_density_fn,
        dim=int(flat_init.shape[0]),
        constrain_fn=constrain,
        init_position=flat_init,
        site_shape_items=tuple(site_shapes.items()),
        numpyro_model=_numpyro_model(prepared, args, kwargs, trace, plates, unravel, dtype),
        subsample_plates=plates,
    )


def _numpyro_model(prepared: Callable, args: tuple, kwargs: dict, trace: dict[str, Any],
                   plates: tuple[SubsamplePlate, ...], unravel: Callable,
                   dtype: Any) -> NumpyroModel:
    """The model, its arguments and its likelihood sites (observed, not ``factor``)."""
    from numpyro.distributions import Unit

    sites = tuple(name for name, site in trace.items()
                  if site["type"] == "sample" and site["is_observed"]
                  and not isinstance(_unwrap_distribution(site["fn"])[0], Unit))
    values = [trace[name]["value"] for name in sites]
    observed = (None if is_traced(*values)
                else {name: np.asarray(v) for name, v in zip(sites, values, strict=True)})
    rows = None
    if len(plates) == 1:
        from probinf._subsample import numpyro_row_log_likelihood

        rows = numpyro_row_log_likelihood(prepared, args, kwargs, plates[0], unravel, dtype)
    return NumpyroModel(prepared, tuple(args), dict(kwargs), observed, sites, rows)


def _as_float_array(value: Any) -> Array:
    """An array, in the default float dtype when the value is integer or boolean."""
    array = jnp.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.inexact):
        array = array.astype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return array


def _resolve_init_strategy(init_strategy: Any) -> tuple[functools.partial, str]:
    """numpyro's own ``partial`` form of ``init_strategy``, and its name for messages."""
    from numpyro.infer import initialization

    if init_strategy is None:
        return initialization.init_to_median(), "init_to_median(num_samples=15) (the default)"
    known = {getattr(initialization, name): name for name in _INIT_STRATEGY_NAMES}
    is_partial = isinstance(init_strategy, functools.partial)
    func = init_strategy.func if is_partial else init_strategy
    if not callable(init_strategy) or func not in known or (is_partial and init_strategy.args):
        error = TypeError if not callable(init_strategy) else ValueError
        raise error(
            "`init_strategy` must be one of numpyro's initialisation strategies "
            f"(numpyro.infer.{', '.join(_INIT_STRATEGY_NAMES)}), plain or called with its "
            "options, e.g. init_to_median(num_samples=15) or init_to_value(values={...}); "
            f"got {init_strategy!r}"
        )
    options = dict(init_strategy.keywords) if is_partial else {}
    shown = ", ".join(
        f"values={{{', '.join(repr(k) for k in v)}}}" if k == "values" and isinstance(v, Mapping)
        else f"{k}={v!r}"
        for k, v in options.items()
    )
    name = f"{known[func]}({shown})"
    try:
        strategy = init_strategy()  # site=None: numpyro returns its canonical partial
    except TypeError as err:
        raise ValueError(
            f"`init_strategy` {name} has options numpyro does not accept: {err}"
        ) from err
    options = strategy.keywords
    if "num_samples" in options:
        n = options["num_samples"]
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(
                f"`init_strategy` {name}: `num_samples` must be a positive integer, got {n!r}"
            )
    if "radius" in options:
        r = options["radius"]
        if isinstance(r, bool) or not isinstance(r, (int, float, np.number)) or not 0 <= r < np.inf:
            raise ValueError(
                f"`init_strategy` {name}: `radius` must be a finite number >= 0, got {r!r}"
            )
    if strategy.func is initialization.init_to_value:
        values = options.get("values", {})
        if not isinstance(values, Mapping):
            raise TypeError(
                f"`init_strategy` init_to_value: `values` must be a dict of site name to value, "
                f"got {type(values).__name__}"
            )
        floats = {}
        for site_name, value in values.items():
            if not isinstance(site_name, str):
                raise TypeError(
                    f"`init_strategy` init_to_value: `values` must be keyed by site name "
                    f"(str), got key {site_name!r}"
                )
            try:
                floats[site_name] = _as_float_array(value)
            except TypeError as err:
                raise TypeError(
                    f"`init_strategy` init_to_value: the value for site '{site_name}' is not "
                    f"an array: {err}"
                ) from err
        strategy = functools.partial(initialization.init_to_value, values=floats)
    return strategy, name


def _unwrap_distribution(fn: Any) -> tuple[Any, list[str]]:
    """The distribution under numpyro's mask / to_event / expand wrappers, and those wrappers."""
    from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution

    wrappers = []
    while True:
        if isinstance(fn, MaskedDistribution):
            wrappers.append("masked")
        elif isinstance(fn, Independent):
            wrappers.append(f"to_event({fn.reinterpreted_batch_ndims})")
        elif not isinstance(fn, ExpandedDistribution):
            return fn, wrappers
        fn = fn.base_dist


def _describe_distribution(fn: Any) -> str:
    """``Normal``, ``Normal (masked, to_event(1))``: what a site's distribution is."""
    base, wrappers = _unwrap_distribution(fn)
    name = type(base).__name__
    return f"{name} ({', '.join(wrappers)})" if wrappers else name


def _describe_support(fn: Any) -> str:
    try:
        return repr(fn.support)
    except Exception:  # a distribution without a support attribute
        return "unknown support"


def _trace_at_init(model: Callable, args: tuple, kwargs: dict, key: Array,
                   strategy: functools.partial, strategy_name: str) -> dict[str, Any]:
    """One run of the model with every latent site at its initial value.

    As in numpyro's ``initialize_model``, the strategy substitutes each latent value,
    so nothing is drawn from a distribution without a sampler (``ImproperUniform``).
    A failure is reported with the site the model was processing.
    """
    from numpyro import handlers
    from numpyro.distributions.transforms import biject_to
    from numpyro.primitives import Messenger

    class _SiteTracker(Messenger):
        def __init__(self, fn: Callable):
            super().__init__(fn)
            self.current: dict | None = None
            self.last_name: str | None = None

        def process_message(self, msg: dict) -> None:
            self.current = msg

        def postprocess_message(self, msg: dict) -> None:
            self.current = None
            self.last_name = msg.get("name")

    class _FullPlates(Messenger):
        """Subsampled plates at all their rows (the initial point sees the full data);
        each is recorded in the site's ``infer`` as ``subsample_size``."""

        def process_message(self, msg: dict) -> None:
            if msg["type"] == "plate" and msg["value"] is None:
                size, subsample_size = msg["args"]
                if subsample_size is not None and subsample_size != size:
                    msg["value"] = jnp.arange(size)
                    msg["args"] = (size, size)
                    msg["infer"] = {"subsample_size": subsample_size}

    tracker = _SiteTracker(_FullPlates(model))
    seeded = handlers.seed(tracker, key)
    traced = handlers.trace(handlers.substitute(seeded, substitute_fn=strategy))
    try:
        return traced.get_trace(*args, **kwargs)
    except Exception as err:
        site = tracker.current
        if site is None or site.get("type") != "sample":
            where = (f"after site '{tracker.last_name}'" if tracker.last_name
                     else "before its first site")
            err.add_note(
                f"(raised while probinf.from_numpyro ran the model once at its initial point, "
                f"init_strategy={strategy_name}, {where})"
            )
            raise
        name, fn = site["name"], site["fn"]
        reason = f"{type(err).__name__}: {err}" if str(err) else f"{type(err).__name__}"
        hint = ""
        if isinstance(err, NotImplementedError):
            try:
                biject_to(fn.support)
                hint = (" numpyro cannot draw from this distribution; give the site a starting "
                        f"value with init_strategy=init_to_value(values={{'{name}': ...}}).")
            except Exception:
                hint = (" Its support has no bijection to the real line (numpyro's biject_to), "
                        "so it cannot be a continuous latent site; reparameterise it.")
        raise ValueError(
            f"numpyro site '{name}' ({_describe_distribution(fn)}, support "
            f"{_describe_support(fn)}) could not be initialised with {strategy_name}: "
            f"{reason.rstrip('.')}.{hint}"
        ) from err


def _subsample_plates(trace: dict[str, Any]) -> tuple[SubsamplePlate, ...]:
    """The plates declared with ``subsample_size`` below their size (traced at full size)."""
    plates = []
    for name, site in trace.items():
        if site["type"] != "plate":
            continue
        subsample_size = (site.get("infer") or {}).get("subsample_size")
        if subsample_size is not None:
            plates.append(SubsamplePlate(name, int(site["args"][0]), int(subsample_size)))
    return tuple(plates)


def _check_traced_rows(log_density_fn: Callable, probe: Any,
                       plates: tuple[SubsamplePlate, ...]) -> None:
    """The model must take its rows as traced indices, as `vi.fit`'s compiled steps give
    them; a model that indexes NumPy data with them would fail only there, inside JAX."""
    rows = {plate.name: jax.ShapeDtypeStruct((plate.subsample_size,), jnp.int32)
            for plate in plates}
    try:
        jax.eval_shape(log_density_fn, probe, rows)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError,
            jax.errors.TracerIntegerConversionError) as err:
        names = [plate.name for plate in plates]
        raise ValueError(
            f"the model cannot take traced row indices for its subsampled plate(s) {names} "
            f"({type(err).__name__}): data indexed by a plate's indices must be JAX arrays, "
            "e.g. pass jnp.asarray(x) or write jnp.asarray(x)[rows]"
        ) from err


def _full_plates(plates: tuple[SubsamplePlate, ...]) -> dict[str, Array]:
    return {plate.name: jnp.arange(plate.size) for plate in plates}


def _check_no_local_latents(latent: dict[str, dict], plates: tuple[SubsamplePlate, ...]) -> None:
    """A latent site inside a subsampled plate would change length with the batch."""
    names = {plate.name for plate in plates}
    for name, site in latent.items():
        inside = [frame.name for frame in site["cond_indep_stack"] if frame.name in names]
        if inside:
            raise ValueError(
                f"latent site '{name}' ({_describe_distribution(site['fn'])}) sits inside the "
                f"subsampled plate '{inside[0]}'; with data subsampling every latent must be "
                "global (outside the subsampled plate). Marginalise the local latent in the "
                "model, or drop subsample_size to infer it on the full data."
            )


def _observed_mask(fn: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    """Entries of an observed value that count in the log density (False where masked out);
    ``None`` when a mask is a tracer."""
    from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution

    counted = np.ones(shape, dtype=bool)
    while isinstance(fn, (MaskedDistribution, Independent, ExpandedDistribution)):
        if isinstance(fn, MaskedDistribution):
            mask = fn._mask
            if mask is False:
                return np.zeros(shape, dtype=bool)
            if is_traced(mask):
                return None
            if mask is not True:
                mask = np.asarray(mask)
                mask = mask.reshape(mask.shape + (1,) * fn.event_dim)
                try:
                    counted = counted & np.broadcast_to(mask, shape)
                except ValueError:  # an unusual layout: count every entry
                    pass
        fn = fn.base_dist
    return counted


def _check_observations(trace: dict[str, Any]) -> None:
    """NaN or infinite data (outside any mask) fail at once, naming the site."""
    for name, site in trace.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = site["value"]
        if is_traced(value):
            continue
        try:
            value = np.asarray(value)
            nonfinite = ~np.isfinite(value)
        except TypeError:  # a non-numeric observation: the distribution will say
            continue
        if not nonfinite.any():
            continue
        fn = site["fn"]
        counted = _observed_mask(fn, value.shape)
        if counted is None:  # a mask only known under tracing
            continue
        nonfinite &= counted
        count = int(nonfinite.sum())
        if count:
            kinds = []
            if np.isnan(value[nonfinite]).any():
                kinds.append("NaN")
            if np.isinf(value[nonfinite]).any():
                kinds.append("infinite")
            raise ValueError(
                f"observed site '{name}' ({_describe_distribution(fn)}) has {count} non-finite "
                f"value(s) ({' and '.join(kinds)}) among its {value.size} entries; the log density "
                "needs finite data. Drop those entries, or mask them out (numpyro's "
                "`.mask(...)`, `handlers.mask` or `obs_mask=`): masked-out entries may be NaN."
            )


def _latent_sites(trace: dict[str, Any]) -> dict[str, dict]:
    from numpyro.distributions import Delta
    from numpyro.distributions.transforms import biject_to

    latent = {}
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        fn = site["fn"]
        described = _describe_distribution(fn)
        if fn.support.is_discrete:
            raise ValueError(
                f"numpyro site '{name}' is a discrete latent variable ({described}, support "
                f"{_describe_support(fn)}); from_numpyro needs continuous latents (marginalise "
                "it in the model, or write a discrete target with from_logdensity)"
            )
        if isinstance(_unwrap_distribution(fn)[0], Delta):
            raise ValueError(
                f"numpyro site '{name}' is a latent site with a Delta distribution ({described}); "
                "its log density is -inf off one point. Use numpyro.deterministic for a value "
                "computed from other sites."
            )
        try:
            biject_to(fn.support)
        except NotImplementedError:
            raise ValueError(
                f"numpyro site '{name}' ({described}) has support {_describe_support(fn)}, which "
                "has no bijection to the real line (numpyro's biject_to), so it cannot be a "
                "continuous latent site; reparameterise it"
            ) from None
        latent[name] = site
    if not latent:
        observed = [n for n, s in trace.items() if s["type"] == "sample"]
        raise ValueError(
            "the numpyro model has no latent sample site to infer"
            + (f" (its sample sites {observed} are all observed or factors)" if observed else "")
        )
    return latent


def _check_init_values(values: Mapping[str, Array], latent: dict[str, dict]) -> None:
    """init_to_value's values name latent sites, with their shapes, inside their supports."""
    unknown = sorted(set(values) - set(latent))
    if unknown:
        raise ValueError(
            f"`init_strategy` init_to_value(values=...) names {unknown}, which are not latent "
            f"sample sites of the model; its latent sites are {sorted(latent)}"
        )
    for name, value in values.items():
        fn = latent[name]["fn"]
        expected = tuple(latent[name]["kwargs"].get("sample_shape") or ()) + tuple(fn.shape())
        if tuple(value.shape) != expected:
            raise ValueError(
                f"`init_strategy` init_to_value gives site '{name}' ({_describe_distribution(fn)}) "
                f"a value of shape {tuple(value.shape)}; the site's shape is {expected}"
            )
        inside = fn.support(value)
        if is_traced(inside):
            continue
        if not np.all(np.asarray(inside)):
            raise ValueError(
                f"`init_strategy` init_to_value gives site '{name}' ({_describe_distribution(fn)}) "
                f"a value outside its support {_describe_support(fn)} (or not finite): {value}"
            )


def _recheck_init_values(model: Callable, args: tuple, kwargs: dict, key: Array,
                         values: Mapping[str, Array]) -> None:
    """After the model failed at init_to_value's values: check them against the sites
    (traced without them) and raise the specific error, if there is one."""
    from numpyro.infer import initialization

    try:
        trace = _trace_at_init(model, args, kwargs, key, initialization.init_to_median(), "")
        latent = _latent_sites(trace)
    except Exception:  # the model fails without the values too: the first error stands
        return
    _check_init_values(values, latent)


def _check_finite_unconstrained(unconstrained: dict[str, Array], latent: dict[str, dict],
                                strategy_name: str) -> None:
    for name, value in unconstrained.items():
        if not np.all(np.isfinite(np.asarray(value))):
            fn = latent[name]["fn"]
            raise ValueError(
                f"the initial value of site '{name}' ({_describe_distribution(fn)}) from "
                f"{strategy_name} is on the boundary of its support {_describe_support(fn)} (or "
                "not finite), so its unconstrained value is not finite; choose a value inside "
                "the support with init_to_value(values={...}) or use another init_strategy"
            )


def _prepared_model(model: Callable, trace: dict[str, Any], key: Array) -> Callable:
    """The model as numpyro's ``initialize_model`` prepares it for ``potential_energy``:
    ``param``/``mutable`` sites held at their traced values, a fixed key for any
    ``numpyro.prng_key()`` call, and observations as JAX arrays."""
    from numpyro import handlers
    from numpyro.primitives import Messenger

    class _ForPotential(Messenger):
        def process_message(self, msg: dict) -> None:
            if msg["type"] == "prng_key" and msg["value"] is None:
                msg["value"] = key
            elif msg["type"] == "sample" and msg["is_observed"] and not isinstance(
                    msg["value"], jax.Array):
                # numpyro checks a NumPy / Python observation against a support with
                # NumPy, which fails once the support's bounds are traced latents.
                msg["value"] = jnp.asarray(msg["value"])

    prepared = _ForPotential(model)
    fixed = {n: s["value"] for n, s in trace.items() if s["type"] in ("param", "mutable")}
    return handlers.substitute(prepared, data=fixed) if fixed else prepared


def _other_strategies(strategy: functools.partial) -> str:
    options = ["init_to_value(values={...}) at a point where the model is finite",
               "init_to_median()", "init_to_feasible()", "init_to_uniform() (try another key too)"]
    used = strategy.func.__name__
    if used == "init_to_uniform" and strategy.keywords.get("radius") == 0:
        used = "init_to_feasible"
    options = [o for o in options if not o.startswith(used + "(")]
    return "try another init_strategy: " + ", ".join(options)


def _raise_nonfinite_init(prepared: Callable, args: tuple, kwargs: dict,
                          constrained: dict[str, Array], unconstrained: dict[str, Array],
                          transforms: dict[str, Any], value: Array,
                          strategy: functools.partial, strategy_name: str) -> None:
    """Say which sites make the log density non-finite at the initial point."""
    from numpyro.distributions import Unit
    from numpyro.infer.util import compute_log_probs

    culprits = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpyro's out-of-support warnings: reported below
        try:
            log_probs, trace = compute_log_probs(prepared, args, kwargs, constrained)
        except Exception:  # the diagnosis is best effort; the error below stands
            log_probs, trace = {}, {}
        for name, log_prob in log_probs.items():
            if not np.isfinite(np.asarray(log_prob)):
                fn = trace[name]["fn"]
                if isinstance(_unwrap_distribution(fn)[0], Unit):
                    culprits.append(f"factor '{name}': {float(log_prob)}")
                    continue
                role = "observed" if trace[name]["is_observed"] else "latent"
                culprits.append(f"{role} site '{name}' ({_describe_distribution(fn)}): "
                                f"log density {float(log_prob)}")
        for name, transform in transforms.items():
            log_det = transform.log_abs_det_jacobian(unconstrained[name], constrained[name])
            if not np.all(np.isfinite(np.asarray(log_det))):
                culprits.append(f"site '{name}': the log-Jacobian of its map to the support")
    found = "; ".join(culprits) if culprits else "no single site (check the model's arithmetic)"
    raise ValueError(
        f"the log density is {float(value)} at the initial point chosen by {strategy_name}: "
        f"{found}. Check the data against the model's supports, or "
        f"{_other_strategies(strategy)}"
    )

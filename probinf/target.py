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

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

__all__ = ["Target", "from_numpyro", "from_logdensity"]


def _identity_constrain(z: Array) -> dict[str, Array]:
    return {"z": z}


class Target(eqx.Module):
    """An unnormalised log density on an unconstrained ``(dim,)`` vector.

    Attributes:
        log_density_fn: ``fn(z)`` (or ``fn(z, params)`` when ``params`` is set)
            returning a scalar log density for one unbatched point.
        dim: length of the unconstrained vector.
        params: optional pytree of model parameters passed to ``log_density_fn``;
            objectives such as reweighted wake-sleep (wake-p) can learn them.
        constrain_fn: maps one unconstrained point to a dict of named sites.
        init_position: a sensible starting point (for numpyro models, a valid
            initial value found by numpyro), or ``None``.
        site_shape_items: ``(name, shape)`` of every named site returned by
            ``constrain`` (hashable, as a static field must be); see `site_shapes`.
    """

    log_density_fn: Callable[..., Array]
    dim: int = eqx.field(static=True)
    params: Any = None
    constrain_fn: Callable[[Array], dict[str, Array]] = _identity_constrain
    init_position: Array | None = None
    site_shape_items: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True, default=())

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
        if self.params is None:
            return self.log_density_fn(z)
        return self.log_density_fn(z, self.params)

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
        ValueError: if ``dim`` is not a positive integer or ``fn`` does not return a scalar.
        TypeError: if ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"`dim` must be a positive integer, got {dim!r}")
    dim = int(dim)
    probe = jax.ShapeDtypeStruct((dim,), jnp.float32)
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
        init_position = jnp.asarray(init_position, dtype=jnp.float32)
        if init_position.shape != (dim,):
            raise ValueError(
                f"`init_position` must have shape ({dim},), got {tuple(init_position.shape)}"
            )
    return Target(
        log_density_fn=fn,
        dim=dim,
        params=params,
        constrain_fn=constrain_fn,
        init_position=init_position,
        site_shape_items=tuple(site_shapes.items()),
    )


def from_numpyro(model: Callable, *args: Any, key: Array | None = None, **kwargs: Any) -> Target:
    """Turn a numpyro model into a `Target` on its unconstrained space.

    Every latent site is mapped to the real line by numpyro's own
    ``biject_to(site.support)`` transform, and the log-Jacobian of that transform
    is added, so

    $$
    \\log \\tilde p(z) = \\log p\\big(T(z), y\\big) + \\log |\\det J_T(z)|.
    $$

    Args:
        model: a numpyro model function.
        *args: positional arguments for the model (e.g. data).
        key: PRNG key used only to find a valid initial point (default ``PRNGKey(0)``).
        **kwargs: keyword arguments for the model.

    Raises:
        ValueError: if the model has a discrete latent site (name given) or no latent site.
    """
    from numpyro import handlers
    from numpyro.infer.util import initialize_model

    if not callable(model):
        raise TypeError(f"`model` must be a callable numpyro model, got {type(model).__name__}")
    key = jax.random.PRNGKey(0) if key is None else key
    trace = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    latent = []
    for name, site in trace.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"numpyro site '{name}' is a discrete latent variable; from_numpyro needs "
                "continuous latents (marginalise it in the model, or write a discrete "
                "target with from_logdensity)"
            )
        latent.append(name)
    if not latent:
        raise ValueError("the numpyro model has no latent sample site to infer")

    info = initialize_model(key, model, model_args=args, model_kwargs=kwargs, dynamic_args=False)
    init_params = info.param_info.z
    flat_init, unravel = ravel_pytree(init_params)
    potential_fn = info.potential_fn
    postprocess_fn = info.postprocess_fn

    def log_density_fn(z: Array) -> Array:
        return -potential_fn(unravel(z))

    def constrain_fn(z: Array) -> dict[str, Array]:
        return postprocess_fn(unravel(z))

    dim = int(flat_init.shape[0])
    probe = jax.ShapeDtypeStruct((dim,), flat_init.dtype)
    site_shapes = {name: tuple(s.shape) for name, s in jax.eval_shape(constrain_fn, probe).items()}
    return Target(
        log_density_fn=log_density_fn,
        dim=dim,
        constrain_fn=constrain_fn,
        init_position=flat_init,
        site_shape_items=tuple(site_shapes.items()),
    )

"""The numpyro bridge: a flow guide for any numpyro model, and a flow as a numpyro
``Distribution``.

:class:`FlowGuide` puts a flow :math:`q_\\phi(z)` on the model's unconstrained
latent space (the flat vector of :func:`probinf.from_numpyro`). Each latent site
is mapped to its support by numpyro's own ``biject_to(site.support)`` transform
:math:`T`, so the guide's density on the constrained values :math:`x = T(z)` is

.. math:: \\log q(x) = \\log q_\\phi(z) - \\log|\\det J_T(z)| .

The same guide trains two ways:

* probinf: ``probinf.fit(objective, guide.flow, guide.target, key=...)`` with any
  objective of :mod:`probinf.vi` (the target already carries the log-Jacobian);
* numpyro: ``SVI(model, guide, optimizer, Trace_ELBO())`` — calling the guide
  registers the flow's parameters as one numpyro ``param`` site.

Either way, :meth:`FlowGuide.sample_posterior` returns draws in the model's
constrained space, named by site (deterministic sites included), and
:meth:`FlowGuide.to_inference_data` exports them to ArviZ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PRNGKeyArray
from numpyro.distributions import constraints

from flows._checks import check_context, check_key, check_positive_float
from flows.builders import inverse_autoregressive_flow, spline_flow
from flows.distribution import Flow
from probinf.families import check_num_samples
from probinf.target import Target, from_numpyro

__all__ = ["FlowGuide", "FlowDistribution"]


class FlowDistribution(dist.Distribution):
    """A :class:`flows.Flow` as a numpyro ``Distribution`` over ``R^dim`` (event shape ``(dim,)``).

    Usable as a prior inside a model (``numpyro.sample("z", FlowDistribution(flow))``),
    as a learned likelihood, or wrapped in ``TransformedDistribution`` for a
    constrained support. Sampling is reparameterised.

    Args:
        flow: the flow.
        context: for a conditional flow, a context of shape ``(*batch, context_dim)``;
            its leading axes become the distribution's batch shape.
        validate_args: passed to numpyro.

    Raises:
        TypeError: ``flow`` is not a Flow. ValueError: a missing or mis-shaped ``context``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    pytree_data_fields = ("flow", "context")

    def __init__(self, flow: Flow, context: Array | None = None, *, validate_args=None):
        if not isinstance(flow, Flow):
            raise TypeError(f"`flow` must be a flows.Flow, got {type(flow).__name__}")
        context = check_context(context, flow.context_dim)
        self.flow = flow
        self.context = context
        batch_shape = () if context is None else tuple(context.shape[:-1])
        super().__init__(batch_shape=batch_shape, event_shape=(flow.dim,),
                         validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return True

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)

    def sample(self, key, sample_shape=()):
        count = int(math.prod(sample_shape)) if sample_shape else 1
        draws = self.flow.sample(key, count, self.context)
        return draws.reshape(tuple(sample_shape) + self.batch_shape + self.event_shape)

    def log_prob(self, value):
        return self.flow.log_prob(value, self.context)


def _latent_sites(model, args, kwargs, key) -> dict[str, dict]:
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(model, key)).get_trace(*args, **kwargs)
    latent = {}
    for name, site in trace.items():
        if site["type"] == "plate":
            size, subsample = site["args"][0], site["args"][1]
            if subsample is not None and subsample != size:
                raise ValueError(
                    f"numpyro plate '{name}' subsamples ({subsample} of {size}); FlowGuide needs "
                    "the full data (no subsample_size)"
                )
        if site["type"] != "sample" or site["is_observed"]:
            continue
        if site["fn"].support.is_discrete:
            raise ValueError(
                f"numpyro site '{name}' is a discrete latent variable; a flow guide covers "
                "continuous latents only (marginalise it out of the model, e.g. with "
                "numpyro's enumeration, or use a discrete family from probinf.families)"
            )
        latent[name] = site
    if not latent:
        raise ValueError("the numpyro model has no latent sample site to infer")
    return latent


class FlowGuide:
    """A normalizing-flow guide for any numpyro model with continuous latents.

    Args:
        model: a numpyro model function.
        *args: the model's positional arguments (e.g. data), used to trace it.
        key: PRNG key for the flow's initial weights and numpyro's initial point.
        flow: a :class:`~flows.Flow` over the unconstrained latent space of
            dimension ``guide.dim``; default: a coupling spline flow
            (:func:`~flows.spline_flow`; an IAF spline flow when ``dim == 1``)
            whose last layer is an affine map starting at numpyro's initial point
            with scale ``init_scale``.
        init_scale: initial standard deviation of the default flow.
        prefix: name prefix of the numpyro ``param`` and auxiliary sample sites.
        model_kwargs: the model's keyword arguments.
        **flow_kwargs: options of :func:`~flows.spline_flow` for the default flow
            (``num_layers``, ``num_bins``, ``width``, ...).

    Attributes:
        target: the model as a :class:`probinf.Target` (unconstrained, log-Jacobian included).
        flow: the initial flow (pass it to :func:`probinf.vi.fit` with ``target``).
        dim: length of the unconstrained latent vector.
        site_shapes: shapes of the latent sites, in the flat vector's order.

    Raises:
        ValueError: a discrete latent site, no latent site, a subsampled plate, or a
            ``flow`` of the wrong dimension or conditional.
    """

    def __init__(self, model: Callable, *args: Any, key: PRNGKeyArray, flow: Flow | None = None,
                 init_scale: float = 0.1, prefix: str = "flow",
                 model_kwargs: Mapping[str, Any] | None = None, **flow_kwargs: Any):
        from numpyro.infer.util import initialize_model

        if not callable(model):
            raise TypeError(f"`model` must be a numpyro model function, got {type(model).__name__}")
        check_key(key)
        init_scale = check_positive_float(init_scale, "init_scale")
        model_kwargs = dict(model_kwargs or {})
        key_model, key_flow = jax.random.split(key)
        self.model = model
        self.prefix = str(prefix)
        self._sites = _latent_sites(model, args, model_kwargs, key_model)
        self.target: Target = from_numpyro(model, *args, key=key_model, **model_kwargs)
        info = initialize_model(key_model, model, model_args=args, model_kwargs=model_kwargs,
                                dynamic_args=False)
        flat_init, self._unravel = ravel_pytree(info.param_info.z)
        self.site_shapes = {name: tuple(np.shape(v)) for name, v in info.param_info.z.items()}
        self.dim = int(flat_init.shape[0])
        if flow is None:
            if self.dim >= 2:
                flow = spline_flow(key_flow, self.dim, loc=flat_init, scale=init_scale, **flow_kwargs)
            else:
                flow = inverse_autoregressive_flow(key_flow, 1, transformer="spline",
                                                   loc=flat_init, scale=init_scale, **flow_kwargs)
        elif flow_kwargs:
            raise ValueError(f"options {sorted(flow_kwargs)} apply to the default flow only; "
                             "build `flow` with them instead")
        if not isinstance(flow, Flow):
            raise TypeError(f"`flow` must be a flows.Flow, got {type(flow).__name__}")
        if flow.dim != self.dim:
            raise ValueError(f"`flow` has dim {flow.dim} but the model's unconstrained latent "
                             f"space has dim {self.dim}")
        if flow.context_dim is not None:
            raise ValueError("`flow` must be unconditional (it was built with context_dim)")
        self.flow = flow
        self._params, self._static = eqx.partition(flow, eqx.is_inexact_array)

    @property
    def param_name(self) -> str:
        """Name of the numpyro ``param`` site holding the flow's parameters."""
        return f"{self.prefix}$params"

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Array]:
        """The numpyro guide: one flow draw, mapped to every latent site's support."""
        import numpyro
        from numpyro.distributions.transforms import biject_to

        params = numpyro.param(self.param_name, self._params)
        flow = eqx.combine(params, self._static)
        z = numpyro.sample(f"_{self.prefix}_latent", FlowDistribution(flow),
                           infer={"is_auxiliary": True})
        values = {}
        for name, unconstrained in self._unravel(z).items():
            site = self._sites[name]
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            log_det = transform.log_abs_det_jacobian(unconstrained, value)
            event_dim = site["fn"].event_dim
            keep = jnp.ndim(value) - event_dim
            log_det = jnp.sum(log_det.reshape(jnp.shape(log_det)[:keep] + (-1,)), axis=-1) \
                if jnp.ndim(log_det) > keep else log_det
            values[name] = numpyro.sample(
                name, dist.Delta(value, log_density=-log_det, event_dim=event_dim)
            )
        return values

    def flow_from_params(self, params: Mapping[str, Any]) -> Flow:
        """The trained flow from numpyro's ``svi_result.params`` (or ``svi.get_params(state)``)."""
        if self.param_name not in params:
            raise ValueError(f"`params` has no entry '{self.param_name}'; pass the params of an "
                             "SVI run that used this guide")
        return eqx.combine(params[self.param_name], self._static)

    def _resolve(self, flow) -> Flow:
        if flow is None:
            return self.flow
        if isinstance(flow, Flow):
            return flow
        if isinstance(flow, Mapping):
            return self.flow_from_params(flow)
        raise TypeError(f"`flow` must be a Flow, numpyro params or None, got {type(flow).__name__}")

    def sample_posterior(self, key: PRNGKeyArray, num_samples: int = 1000,
                         flow: Flow | Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Draws in the model's constrained space, ``site -> (num_samples, *site_shape)``.

        Args:
            key: PRNG key.
            num_samples: number of draws.
            flow: the trained flow (from :func:`probinf.vi.fit`), numpyro SVI params,
                or ``None`` for the guide's current flow.
        """
        check_key(key)
        num_samples = check_num_samples(num_samples, "num_samples")
        z = self._resolve(flow).sample(key, num_samples)
        return {name: np.asarray(v) for name, v in self.target.constrain(z).items()}

    def to_inference_data(self, key: PRNGKeyArray, num_samples: int = 1000,
                          flow: Flow | Mapping[str, Any] | None = None, **kwargs: Any):
        """Draws as an ArviZ ``InferenceData`` (one chain); ``kwargs`` go to ``arviz.from_dict``."""
        from probinf.diagnostics import to_inference_data

        samples = self.sample_posterior(key, num_samples, flow)
        return to_inference_data({k: v[None] for k, v in samples.items()}, **kwargs)

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

The default flow starts at a Gaussian approximation of the posterior
(:func:`probinf.vi.initialize`: Pathfinder, Zhang et al., 2022, with Laplace as fallback)
and trains in that Gaussian's frame: its spline layers start at the identity, then come a
trainable full-rank affine map started at the identity and the Gaussian's fixed frame
(see :func:`flows.spline_flow`'s ``gaussian``), so the splines only learn how the
posterior departs from the Gaussian and Adam's steps are in units of its scale.

Under numpyro, :class:`FlowDistribution` reports the log density of each of its draws from
the forward pass that produced it (numpyro's ``intermediates``), never by re-scoring the
draw through the inverse pass (see :mod:`flows.distribution`). It used to re-score, and
single-draw SVI then drove the flow to where the inverse under-reports :math:`\\log q`
(spline layers squeezing a coordinate onto a knot): reported ELBOs up to about 30 nats
above :math:`\\log Z`, forward and inverse :math:`\\log q` tens of nats apart, and draw sds
from 13 times too small (our reproduction on a conjugate model) to 0.000, without a
warning. :meth:`FlowGuide.sample_posterior` and :meth:`FlowGuide.diagnose` now check for
collapse (see :class:`FlowGuide`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
from flows.linear import as_gaussian
from probinf.families import check_num_samples
from probinf.target import Target, from_numpyro

__all__ = ["FlowGuide", "FlowDistribution", "GuideDiagnostics"]


def _scaled(gaussian, factor: float):
    """``gaussian`` with its scale multiplied by ``factor``."""
    from probinf.families import FullRankGaussian

    if isinstance(gaussian, FullRankGaussian):
        return FullRankGaussian(gaussian.loc, gaussian.log_diagonal + math.log(factor),
                                gaussian.off_diagonal * factor)
    return type(gaussian)(gaussian.loc, gaussian.log_scale + math.log(factor))


class FlowDistribution(dist.Distribution):
    """A :class:`flows.Flow` as a numpyro ``Distribution`` over ``R^dim`` (event shape ``(dim,)``).

    Usable as a prior inside a model (``numpyro.sample("z", FlowDistribution(flow))``),
    as a learned likelihood, or wrapped in ``TransformedDistribution`` for a
    constrained support. Sampling is reparameterised.

    Draws taken through numpyro's ``sample`` carry their forward-pass log density as
    ``intermediates``, and :meth:`log_prob` returns it when given them (as numpyro's ELBOs
    and ``log_density`` do), so a guide's :math:`\\log q` is always that of the density its
    draws came from; without intermediates (an observed or substituted value) it is the
    inverse pass :meth:`flows.Flow.log_prob`. numpyro's ``TransformedDistribution`` does not
    pass its base's intermediates on, so a wrapped flow is re-scored by the inverse pass.

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

    def sample_with_intermediates(self, key, sample_shape=()):
        """Draws and ``[log q of each draw]`` from the forward pass."""
        count = int(math.prod(sample_shape)) if sample_shape else 1
        draws, log_q = self.flow.sample_and_log_prob(key, count, self.context)
        shape = tuple(sample_shape) + self.batch_shape
        return draws.reshape(shape + self.event_shape), [log_q.reshape(shape)]

    def sample(self, key, sample_shape=()):
        return self.sample_with_intermediates(key, sample_shape)[0]

    def log_prob(self, value, intermediates=None):
        """``log q(value)``: the cached forward value for a draw's ``intermediates``, else
        the inverse pass."""
        if intermediates:
            return intermediates[0]
        return self.flow.log_prob(value, self.context)


def _latent_sites(model, args, kwargs, key) -> dict[str, dict]:
    from numpyro import handlers
    from numpyro.infer.initialization import init_to_uniform

    # Continuous latents take numpyro's uniform initial values, as numpyro's own
    # initialisation does, so improper priors (which cannot be sampled) trace too.
    seeded = handlers.seed(model, key)
    trace = handlers.trace(handlers.substitute(seeded, substitute_fn=init_to_uniform)).get_trace(*args, **kwargs)
    latent = {}
    for name, site in trace.items():
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


INIT_METHODS = ("pathfinder", "laplace", "prior_median")
# A draw sd this many times below the initial Gaussian's marks a collapsed guide.
COLLAPSE_FACTOR = 100.0
# Fewer draws than this give too noisy an sd to judge collapse by.
MIN_DRAWS_FOR_SPREAD = 30


@dataclass(frozen=True)
class GuideDiagnostics:
    """How a trained :class:`FlowGuide` compares with its target and its start.

    Attributes:
        vi: :class:`probinf.vi.VIDiagnostics` of the flow against the model (Pareto
            :math:`\\hat k`, ELBO, log evidence, ESS) from the flow's own draws.
        sd_ratio: per unconstrained coordinate, the draws' sd over the initial flow's sd.
        collapsed: names (``site`` or ``site[i]``) of the coordinates whose ``sd_ratio``
            is below ``1 / COLLAPSE_FACTOR``.
    """

    vi: Any
    sd_ratio: np.ndarray
    collapsed: tuple[str, ...]

    @property
    def reliable(self) -> bool:
        """No collapsed coordinate and :math:`\\hat k` below its threshold."""
        return not self.collapsed and bool(self.vi.reliable)


class FlowGuide:
    """A normalizing-flow guide for any numpyro model with continuous latents.

    Args:
        model: a numpyro model function.
        *args: the model's positional arguments (e.g. data), used to trace it.
        key: PRNG key for the initial Gaussian, the flow's initial weights and numpyro's
            initial point.
        flow: a :class:`~flows.Flow` over the unconstrained latent space of dimension
            ``guide.dim``; default: a coupling spline flow (:func:`~flows.spline_flow`; an
            IAF spline flow when ``dim == 1``) whose last layer is a
            trainable full-rank affine map and the fixed frame of ``init``'s Gaussian
            (:class:`~flows.TriangularAffine`), so the flow starts as that Gaussian and
            trains in its units.
        init: the initial Gaussian of the default flow: ``"pathfinder"`` (default;
            :func:`probinf.vi.initialize`, which falls back to Laplace and then to a unit
            Gaussian with a warning), ``"laplace"``, ``"prior_median"`` (unit scale at
            numpyro's initial point), or a :class:`probinf.FullRankGaussian`,
            :class:`probinf.MeanFieldGaussian` or standardised Gaussian on the
            unconstrained space.
        init_scale: multiplies the initial Gaussian's scale (default 1).
        prefix: name prefix of the numpyro ``param`` and auxiliary sample sites.
        model_kwargs: the model's keyword arguments.
        **flow_kwargs: options of :func:`~flows.spline_flow` for the default flow
            (``num_layers``, ``num_bins``, ``width``, ...).

    Attributes:
        target: the model as a :class:`probinf.Target` (unconstrained, log-Jacobian included).
        flow: the initial flow (pass it to :func:`probinf.vi.fit` with ``target``).
        initial_gaussian: the Gaussian the default flow starts at (``None`` for a given ``flow``).
        dim: length of the unconstrained latent vector.
        site_shapes: shapes of the latent sites, in the flat vector's order.

    Collapse check. :meth:`sample_posterior`, :meth:`to_inference_data` and
    :meth:`diagnose` compare the sd of the draws in every unconstrained coordinate with
    the initial flow's (for the default flow, the initial Gaussian's marginal sd) and
    warn when it is more than ``COLLAPSE_FACTOR`` (100) times smaller. The initial
    Gaussian already has the posterior's scale (Pathfinder or Laplace), so a
    legitimately narrow posterior does not trip it; a guide that shrank a hundredfold
    from there has collapsed. With ``init="prior_median"`` the reference is the unit
    scale, so a posterior narrower than 0.01 in some unconstrained coordinate trips it too.

    Raises:
        ValueError: a discrete latent site, no latent site, a latent site inside a
            subsampled plate, a
            ``flow`` of the wrong dimension or conditional, or an unknown ``init``.
    """

    def __init__(self, model: Callable, *args: Any, key: PRNGKeyArray, flow: Flow | None = None,
                 init: object = None, init_scale: float = 1.0, prefix: str = "flow",
                 model_kwargs: Mapping[str, Any] | None = None, **flow_kwargs: Any):
        from numpyro.infer.util import initialize_model

        if not callable(model):
            raise TypeError(f"`model` must be a numpyro model function, got {type(model).__name__}")
        check_key(key)
        init_scale = check_positive_float(init_scale, "init_scale")
        if flow is not None and (flow_kwargs or init is not None or init_scale != 1.0):
            given = (sorted(flow_kwargs) + (["init"] if init is not None else [])
                     + (["init_scale"] if init_scale != 1.0 else []))
            raise ValueError(f"options {given} apply to the default flow only; "
                             "build `flow` with them instead")
        model_kwargs = dict(model_kwargs or {})
        key_model, key_flow, key_init = jax.random.split(key, 3)
        self.model = model
        self.prefix = str(prefix)
        self._sites = _latent_sites(model, args, model_kwargs, key_model)
        self.target: Target = from_numpyro(model, *args, key=key_model, **model_kwargs)
        info = initialize_model(key_model, model, model_args=args, model_kwargs=model_kwargs,
                                dynamic_args=False)
        flat_init, self._unravel = ravel_pytree(info.param_info.z)
        self.site_shapes = {name: tuple(np.shape(v)) for name, v in info.param_info.z.items()}
        self.dim = int(flat_init.shape[0])
        self.initial_gaussian = None
        if flow is None:
            gaussian = self._initial_gaussian(key_init, "pathfinder" if init is None else init)
            if init_scale != 1.0:
                gaussian = _scaled(gaussian, init_scale)
            self.initial_gaussian = gaussian
            if self.dim >= 2:
                flow = spline_flow(key_flow, self.dim, gaussian=gaussian, **flow_kwargs)
            else:
                flow = inverse_autoregressive_flow(key_flow, 1, transformer="spline",
                                                   gaussian=gaussian, **flow_kwargs)
        if not isinstance(flow, Flow):
            raise TypeError(f"`flow` must be a flows.Flow, got {type(flow).__name__}")
        if flow.dim != self.dim:
            raise ValueError(f"`flow` has dim {flow.dim} but the model's unconstrained latent "
                             f"space has dim {self.dim}")
        if flow.context_dim is not None:
            raise ValueError("`flow` must be unconditional (it was built with context_dim)")
        self.flow = flow
        self._params, self._static = eqx.partition(flow, eqx.is_inexact_array)
        self._reference_sd: np.ndarray | None = None
        if self.initial_gaussian is not None:
            covariance = self.initial_gaussian.covariance
            self._reference_sd = np.sqrt(np.diag(np.asarray(covariance, np.float64)))
        labels = self._unravel(jnp.arange(self.dim, dtype=jnp.float32))
        names = [""] * self.dim
        for name, index in labels.items():
            flat = np.asarray(index).reshape(-1).astype(int)
            for position, i in enumerate(flat):
                names[i] = name if np.ndim(index) == 0 else f"{name}[{position}]"
        self._coordinate_names = tuple(names)

    def _initial_gaussian(self, key, init):
        if isinstance(init, str):
            if init not in INIT_METHODS:
                raise ValueError(f"`init` must be one of {INIT_METHODS} or a probinf Gaussian "
                                 f"family, got {init!r}")
            from probinf.vi.pathfinder import initialize

            return initialize(key, self.target, family="full_rank", method=init, standardized=False)
        try:
            gaussian = as_gaussian(init)
        except TypeError:
            raise TypeError(f"`init` must be one of {INIT_METHODS} or a probinf FullRankGaussian, "
                            f"MeanFieldGaussian or Standardized Gaussian, got {type(init).__name__}") from None
        if gaussian.dim != self.dim:
            raise ValueError(f"`init` is a Gaussian of dim {gaussian.dim} but the model's "
                             f"unconstrained latent space has dim {self.dim}")
        return gaussian

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
        if num_samples >= MIN_DRAWS_FOR_SPREAD:
            self._warn_if_collapsed(self._spread(z)[1])
        return {name: np.asarray(v) for name, v in self.target.constrain(z).items()}

    def _reference(self) -> np.ndarray:
        """Per-coordinate sd of the initial flow (exact for the default flow)."""
        if self._reference_sd is None:
            draws = np.asarray(self.flow.sample(jax.random.key(0), 4000), np.float64)
            self._reference_sd = draws.std(axis=0)
        return self._reference_sd

    def _spread(self, z) -> tuple[np.ndarray, tuple[str, ...]]:
        z = np.asarray(z, np.float64)
        with np.errstate(invalid="ignore"):
            ratio = z.std(axis=0) / self._reference()
        # A NaN ratio (non-finite draws) counts as collapsed: the draws are unusable.
        collapsed = ~(ratio >= 1.0 / COLLAPSE_FACTOR)
        return ratio, tuple(n for n, c in zip(self._coordinate_names, collapsed, strict=True) if c)

    def _warn_if_collapsed(self, collapsed: tuple[str, ...]) -> None:
        if collapsed:
            shown = ", ".join(collapsed[:8]) + (f" and {len(collapsed) - 8} more" if len(collapsed) > 8 else "")
            warnings.warn(
                f"FlowGuide: the flow has collapsed: in unconstrained coordinate(s) {shown} its "
                f"draws' sd is over {COLLAPSE_FACTOR:g} times smaller than the initial flow's "
                "(the Gaussian approximation it started from), or not finite. Its draws do not "
                "represent the posterior. Check the fit (FitResult.diagnostics, or "
                "guide.diagnose for numpyro SVI); a lower learning rate, more draws per step "
                "or init='pathfinder' usually help.",
                RuntimeWarning, stacklevel=3,
            )

    def diagnose(self, key: PRNGKeyArray, flow: Flow | Mapping[str, Any] | None = None,
                 num_draws: int = 2000) -> GuideDiagnostics:
        """Pareto :math:`\\hat k` and the collapse check of a trained flow (see the class).

        :math:`\\hat k` (:func:`probinf.vi.diagnose`; Yao et al., 2018) comes from the
        importance weights :math:`\\tilde p(z)/q(z)` of ``num_draws`` draws, with
        :math:`\\log q` from the forward pass. A ``RuntimeWarning`` says when the flow has
        collapsed or :math:`\\hat k` is above its threshold.

        Args:
            key: PRNG key.
            flow: the trained flow, numpyro SVI params, or ``None`` for the guide's flow.
            num_draws: draws from the flow (at least 100).
        """
        from probinf.vi.diagnostics import diagnose

        check_key(key)
        trained = self._resolve(flow)
        result = diagnose(key, trained, self.target, num_draws)
        z = trained.sample(key, num_draws)
        ratio, collapsed = self._spread(z)
        self._warn_if_collapsed(collapsed)
        if result.reliable is False:
            warnings.warn(f"FlowGuide: {result.unreliable_message()}", RuntimeWarning, stacklevel=2)
        return GuideDiagnostics(vi=result, sd_ratio=ratio, collapsed=collapsed)

    def to_inference_data(self, key: PRNGKeyArray, num_samples: int = 1000,
                          flow: Flow | Mapping[str, Any] | None = None, **kwargs: Any):
        """Draws as an ArviZ ``InferenceData`` (one chain), checked for collapse.

        Groups: ``posterior`` (every latent and deterministic site, constrained),
        ``log_likelihood`` (pointwise, per observed site: `arviz.loo` works),
        ``observed_data``, and ``sample_stats`` with per draw ``lp``
        ($\\log \\tilde p(z)$), ``log_weight`` ($\\log \\tilde p(z) - \\log q(z)$, with
        $\\log q$ from the forward pass) and ``psis_log_weight`` (Pareto-smoothed,
        normalised), and per chain ``khat`` (their Pareto $\\hat k$) and ``ess`` (of the
        smoothed weights). See
        `probinf.diagnostics.target_inference_data`.

        The draws are the flow's own, so `arviz.loo` gives the LOO of the approximation;
        for the posterior's, fit with `probinf.fit` and export
        ``FitResult.to_inference_data(key, resample=True)``.

        Args:
            key: PRNG key.
            num_samples: number of draws.
            flow: the trained flow, numpyro SVI params, or ``None`` for the guide's flow.
            **kwargs: passed to `probinf.to_inference_data` (``coords``, ``dims``, ...).
        """
        from probinf.diagnostics import effective_sample_size, psis, target_inference_data

        check_key(key)
        num_samples = check_num_samples(num_samples, "num_samples")
        z, log_q = self._resolve(flow).sample_and_log_prob(key, num_samples)
        if num_samples >= MIN_DRAWS_FOR_SPREAD:
            self._warn_if_collapsed(self._spread(z)[1])
        log_p = np.asarray(self.target.log_density(z), np.float64)
        with np.errstate(invalid="ignore"):
            log_weight = log_p - np.asarray(log_q, np.float64)
        smoothed, khat = psis(log_weight)
        stats = {"lp": log_p[None], "log_weight": log_weight[None],
                 "psis_log_weight": smoothed[None], "khat": (("chain",), np.array([khat])),
                 "ess": (("chain",), np.array([float(effective_sample_size(smoothed))]))}
        return target_inference_data(self.target, z[None], sample_stats=stats, **kwargs)

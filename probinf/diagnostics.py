"""Sample diagnostics and ArviZ export: ESS, Pareto-smoothed importance sampling."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = [
    "to_inference_data",
    "target_inference_data",
    "pointwise_log_likelihood",
    "effective_sample_size",
    "psis",
    "khat_threshold",
]


def to_inference_data(
    samples: Mapping[str, ArrayLike],
    *,
    log_likelihood: Mapping[str, ArrayLike] | None = None,
    observed_data: Mapping[str, ArrayLike] | None = None,
    sample_stats: Mapping[str, Any] | None = None,
    constant_data: Mapping[str, ArrayLike] | None = None,
    **kwargs: Any,
):
    """Named draws of shape ``(chains, draws, *site_shape)`` as ArviZ ``InferenceData``.

    The one builder every result's export goes through. Groups (ArviZ's schema):

    * ``posterior``: ``samples``;
    * ``log_likelihood``: pointwise log likelihood per observed site, leading
      ``(chains, draws)`` then one axis per observation (what `arviz.loo` and
      `arviz.waic` read; with several sites they need ``var_name``);
    * ``observed_data`` / ``constant_data``: arrays without chain and draw axes;
    * ``sample_stats``: per-draw statistics with leading ``(chains, draws)`` axes
      (``lp``, ``log_weight``, ...). A value may also be an xarray-style pair
      ``(dims, array)`` whose first dim is ``"chain"``, for statistics of a whole run
      rather than of a draw: ``(("chain",), log_evidence)`` or
      ``(("chain", "stage"), temperatures)``.

    Args:
        samples: site name -> array with leading ``(chains, draws)`` axes.
        log_likelihood: optional site name -> ``(chains, draws, *observation_shape)``.
        observed_data: optional site name -> observed values.
        sample_stats: optional statistics, as above.
        constant_data: optional name -> array (inputs that are not observations).
        **kwargs: passed to `arviz.from_dict` (``coords``, ``dims``, ``attrs``, ...).

    Raises:
        ValueError: if ``samples`` is empty, a site or statistic disagrees with the
            ``(chains, draws)`` axes of the others (the message names it), or a run
            statistic's dims do not start with ``"chain"`` or do not match its shape.
    """
    import arviz as az
    import xarray as xr

    if not samples:
        raise ValueError("`samples` is empty: nothing to export")
    posterior = {name: np.asarray(v) for name, v in samples.items()}
    leading = {name: v.shape[:2] for name, v in posterior.items()}
    shapes = set(leading.values())
    if any(np.ndim(v) < 2 for v in posterior.values()) or len(shapes) != 1:
        raise ValueError(
            "every site in `samples` needs the same leading (chains, draws) axes, got "
            + ", ".join(f"{k}: {v}" for k, v in leading.items())
        )
    chains_draws = shapes.pop()
    groups: dict[str, dict[str, np.ndarray]] = {}
    if log_likelihood:
        groups["log_likelihood"] = _per_draw(log_likelihood, chains_draws, "log_likelihood")
    per_draw_stats, run_stats = {}, {}
    for name, value in (sample_stats or {}).items():
        if isinstance(value, tuple):
            run_stats[name] = _run_stat(name, value, chains_draws[0])
        else:
            per_draw_stats[name] = value
    if per_draw_stats:
        groups["sample_stats"] = _per_draw(per_draw_stats, chains_draws, "sample_stats")
    if observed_data:
        groups["observed_data"] = {k: np.asarray(v) for k, v in observed_data.items()}
    if constant_data:
        groups["constant_data"] = {k: np.asarray(v) for k, v in constant_data.items()}
    idata = az.from_dict(posterior=posterior, **groups, **kwargs)
    if run_stats:
        chain = idata.posterior["chain"].values
        stats = {name: xr.DataArray(array, dims=dims, coords={"chain": chain})
                 for name, (dims, array) in run_stats.items()}
        if "sample_stats" in idata.groups():
            idata.sample_stats = idata.sample_stats.assign(stats)
        else:
            dataset = xr.Dataset(stats)
            dataset.attrs.update(idata.posterior.attrs)
            idata.add_groups(sample_stats=dataset)
    return idata


def _per_draw(group: Mapping[str, ArrayLike], chains_draws: tuple[int, int],
              name: str) -> dict[str, np.ndarray]:
    arrays = {k: np.asarray(v) for k, v in group.items()}
    for key, value in arrays.items():
        if value.shape[:2] != chains_draws:
            raise ValueError(
                f"`{name}['{key}']` must have the samples' leading (chains, draws) axes "
                f"{chains_draws}, got shape {value.shape}"
            )
    return arrays


def _run_stat(name: str, value: tuple, num_chains: int) -> tuple[tuple[str, ...], np.ndarray]:
    if len(value) != 2:
        raise ValueError(f"`sample_stats['{name}']` must be an array or a (dims, array) pair")
    dims, array = tuple(value[0]), np.asarray(value[1])
    if not dims or dims[0] != "chain" or len(dims) != array.ndim or array.shape[0] != num_chains:
        raise ValueError(
            f"`sample_stats['{name}']` must be (dims, array) with dims starting with 'chain', one "
            f"per axis, and {num_chains} chain(s); got dims {dims} and shape {array.shape}"
        )
    return dims, array


# Target evaluations per vectorised batch: bounds the memory of models with big data.
_TARGET_BATCH = 128
# Largest log_likelihood group target_inference_data builds on its own (400 MB of float64).
MAX_LOG_LIKELIHOOD_ENTRIES = 50_000_000


def pointwise_log_likelihood(target, draws: ArrayLike) -> dict[str, np.ndarray]:
    """Log likelihood of every observation at each draw, for a target from a numpyro model.

    For draws $z$ on the target's unconstrained space, the model's sites
    $\\theta = T(z)$ (`probinf.Target.constrain`, deterministic sites included) are
    substituted into the model and numpyro's own
    ``numpyro.infer.util.log_likelihood`` scores each observed site,
    $\\log p(y_i \\mid \\theta)$ per observation $i$: one entry per element of the
    site's batch shape (an event, such as one row of a ``MultivariateNormal``, is one
    observation). Masked-out observations score 0, as numpyro scores them; ``factor``
    sites are not observations and are left out. This is the ``log_likelihood`` group
    that `arviz.loo` and `arviz.waic` need.

    Args:
        target: a `probinf.Target` made by `probinf.from_numpyro`.
        draws: ``(..., dim)`` unconstrained draws; leading axes are batch axes (e.g.
            ``(chains, draws)``).

    Returns:
        ``{site: (..., *site_batch_shape)}`` float64 arrays, one per likelihood site.

    Raises:
        ValueError: if the target was not made from a numpyro model (a `from_logdensity`
            target is one log density: which part of it is likelihood is not known), or
            ``draws`` has the wrong last axis.
    """
    info = getattr(target, "numpyro_model", None)
    if info is None:
        raise ValueError(
            "`target` has no numpyro model (it was made by from_logdensity, or is not a "
            "probinf Target): a pointwise log likelihood needs the model's observed sites; "
            "build the target with probinf.from_numpyro"
        )
    draws = jnp.asarray(draws)
    constrained = target.constrain(draws)  # checks the last axis
    batch_shape = draws.shape[:-1]
    if not info.likelihood_sites:
        return {}
    count = int(np.prod(batch_shape))
    flat = {k: v.reshape((count, *v.shape[len(batch_shape):])) for k, v in constrained.items()}
    values = _log_likelihood_of(info, flat, min(_TARGET_BATCH, max(count, 1)))
    return {name: np.asarray(v, np.float64).reshape(batch_shape + v.shape[1:])
            for name, v in values.items()}


def _log_likelihood_fits(info, num_draws: int) -> bool:
    """Whether the log_likelihood group stays under `MAX_LOG_LIKELIHOOD_ENTRIES`; warns if not.

    Counted from the observed values (an upper bound: an event counts each of its entries).
    """
    if info.observed_data is None:
        return True
    entries = num_draws * sum(int(np.size(v)) for v in info.observed_data.values())
    if entries <= MAX_LOG_LIKELIHOOD_ENTRIES:
        return True
    warnings.warn(
        f"the log_likelihood group was left out: {num_draws} draws times "
        f"{entries // num_draws} observations is about {entries:.3g} values (over "
        f"{MAX_LOG_LIKELIHOOD_ENTRIES:.3g}); compute it for a subset of the draws with "
        "probinf.diagnostics.pointwise_log_likelihood(target, draws) if you need az.loo",
        RuntimeWarning, stacklevel=3)
    return False


@functools.partial(jax.jit, static_argnums=(0, 2))
def _log_likelihood_of(info, flat_samples, batch_size):
    """Compiled once per model (``info`` hashes by identity) and shape."""
    from numpyro.infer.util import log_likelihood

    def one(sample):
        scores = log_likelihood(info.model, sample, *info.args, batch_ndims=0, **info.kwargs)
        return {name: scores[name] for name in info.likelihood_sites}

    return jax.lax.map(one, flat_samples, batch_size=batch_size)


@eqx.filter_jit
def _log_densities(target, flat_draws, batch_size):
    return jax.lax.map(target.log_density, flat_draws, batch_size=batch_size)


def target_inference_data(
    target,
    draws: ArrayLike,
    *,
    sample_stats: Mapping[str, Any] | None = None,
    log_likelihood: bool = True,
    **kwargs: Any,
):
    """``InferenceData`` of unconstrained draws ``(chains, draws, dim)`` of a `probinf.Target`.

    The export of every result on a Target (VI fits, flow guides, tempered SMC,
    `probinf.infer`):

    * ``posterior``: the model's named, constrained sites (`Target.constrain`);
    * ``sample_stats``: ``lp``, the target's log density $\\log \\tilde p(z)$ on the
      unconstrained space (log-Jacobian included, like Stan's ``lp__``), plus the
      caller's ``sample_stats``;
    * for a target from `probinf.from_numpyro`: ``log_likelihood``
      (`pointwise_log_likelihood`) and ``observed_data`` (the observed sites' values).
      A `from_logdensity` target has neither: its density does not say which part
      is likelihood.

    The draws must be equally weighted for ArviZ's summaries and `arviz.loo` to mean
    what they say: export importance-weighted draws after resampling them (the log
    weights may ride along in ``sample_stats``).

    Args:
        target: a `probinf.Target`.
        draws: ``(chains, draws, dim)`` unconstrained draws.
        sample_stats: extra statistics (see `to_inference_data`); an ``lp`` given here
            is used as is.
        log_likelihood: compute the ``log_likelihood`` group (when the target has a
            numpyro model). Above `MAX_LOG_LIKELIHOOD_ENTRIES` values (draws times
            observations) it is left out with a ``RuntimeWarning``.
        **kwargs: passed to `to_inference_data`.

    Raises:
        ValueError: if ``draws`` is not ``(chains, draws, target.dim)``.
    """
    draws = jnp.asarray(draws)
    if draws.ndim != 3 or draws.shape[-1] != target.dim:
        raise ValueError(
            f"`draws` must have shape (chains, draws, {target.dim}) (the target's dim), got "
            f"{tuple(draws.shape)}"
        )
    samples = {name: np.asarray(v) for name, v in target.constrain(draws).items()}
    stats = dict(sample_stats or {})
    if "lp" not in stats:
        flat = draws.reshape(-1, target.dim)
        lp = _log_densities(target, flat, min(_TARGET_BATCH, flat.shape[0]))
        stats["lp"] = np.asarray(lp, np.float64).reshape(draws.shape[:2])
    groups: dict[str, Any] = {}
    info = getattr(target, "numpyro_model", None)
    if info is not None:
        if log_likelihood and _log_likelihood_fits(info, draws.shape[0] * draws.shape[1]):
            groups["log_likelihood"] = pointwise_log_likelihood(target, draws)
        if info.observed_data:
            groups["observed_data"] = info.observed_data
    return to_inference_data(samples, sample_stats=stats, **groups, **kwargs)


def effective_sample_size(log_weights: ArrayLike) -> Array:
    """Kish's effective sample size $(\\sum_i w_i)^2 / \\sum_i w_i^2$ of log weights (last axis).

    Computed in log space, so unnormalised weights of any scale are fine. The edge cases
    have defined values:

    * every weight ``-inf`` (zero): ``0``, the honest ESS of a cloud with no mass
      (the ratio itself is 0/0);
    * some weights ``+inf``: the number of them, the limit when those weights grow
      together and the finite ones become negligible (as `psis` treats them);
    * any NaN: NaN. A NaN log weight is a weight nobody knows (typically a density that
      failed to evaluate), so the ESS is unknown too; reading it as a zero weight
      would report a confident ESS for a cloud with a broken particle.

    Args:
        log_weights: ``(..., m)`` log weights, ``m >= 1``; leading axes are batch axes.

    Returns:
        ``(...)`` ESS values in ``[1, m]``, or 0 / NaN as above.

    Raises:
        ValueError: if ``log_weights`` is a scalar or its last axis is empty.
    """
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim == 0 or log_weights.shape[-1] == 0:
        raise ValueError(
            "`log_weights` must have a non-empty last axis of log weights, got shape "
            f"{tuple(log_weights.shape)}"
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    log_sum = jnp.logaddexp.reduce(log_weights, axis=-1)
    log_sum_sq = jnp.logaddexp.reduce(2 * log_weights, axis=-1)
    ess = jnp.exp(2 * log_sum - log_sum_sq)
    num_unbounded = jnp.sum(log_weights == jnp.inf, axis=-1).astype(ess.dtype)
    ess = jnp.where(log_sum == -jnp.inf, 0.0, ess)
    ess = jnp.where(num_unbounded > 0, num_unbounded, ess)
    return jnp.where(jnp.any(jnp.isnan(log_weights), axis=-1), jnp.nan, ess)


def khat_threshold(num_draws: int) -> float:
    """Sample-size-dependent reliability threshold for the Pareto $\\hat k$ of ``num_draws`` draws.

    Vehtari, Simpson, Gelman, Yao & Gabry (2024, "Pareto smoothed importance sampling",
    JMLR 25(72)): with $S$ draws, PSIS estimates are reliable when
    $\\hat k < \\min(1 - 1/\\log_{10} S,\\ 0.7)$; the first term is the smaller
    for $S < 2154$ (0.5 at $S = 100$, 0.667 at $S = 1000$, 0.697 at $S = 2000$). Above
    0.7 more draws do not help in practice.
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, (int, np.integer)) or num_draws < 2:
        raise ValueError(f"`num_draws` must be an integer >= 2, got {num_draws!r}")
    return min(1.0 - 1.0 / math.log10(num_draws), 0.7)


def psis(log_weights: ArrayLike) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling of one vector of log importance weights.

    A generalised Pareto distribution is fitted to the largest
    $M = \\lceil\\min(S/5,\\ 3\\sqrt S)\\rceil$ of the $S$ weights; they are
    replaced by its expected order statistics (capped at the largest raw weight) and
    the result is normalised. The fitted shape $\\hat k$ says how heavy the weights'
    tail is: the variance of the weights is finite for $k < 1/2$, and PSIS estimates
    are reliable below `khat_threshold` (Vehtari, Simpson, Gelman, Yao & Gabry 2024,
    "Pareto smoothed importance sampling", JMLR; for variational inference, Yao,
    Vehtari, Simpson & Gelman 2018, "Yes, but did it work?: Evaluating variational
    inference", ICML). The smoothing and the fit are ArviZ's `arviz.psislw`, called
    with ``reff=1`` because the draws are independent (``reff`` is the relative
    efficiency ESS/S of MCMC draws).

    Non-finite log weights are handled before ArviZ sees them:

    * NaN and ``-inf`` (e.g. a target that is undefined or zero at a draw) count as
      zero weight;
    * any ``+inf`` (an unbounded weight) gives $\\hat k = \\infty$ and puts equal
      weight on the infinite entries;
    * if no weight is positive, $\\hat k = \\infty$ and every smoothed log weight is NaN;
    * if every positive weight is the same (the family equals the target up to a
      constant wherever it draws), the weights are bounded: $\\hat k = -\\infty$ and
      the smoothed weights are those weights, normalised. (ArviZ reports $\\infty$
      here because its tail is empty.)

    Args:
        log_weights: ``(S,)`` unnormalised log importance weights
            $\\log \\tilde p(z_s) - \\log q(z_s)$.

    Returns:
        ``(smoothed_log_weights, khat)``: ``(S,)`` float64 log weights normalised to sum
        to one (``-inf`` where the weight is zero), and $\\hat k$ as a float. With fewer
        than five draws in the tail (``S < 25``) ArviZ cannot fit it and $\\hat k = \\infty$.

    Raises:
        ValueError: if ``log_weights`` is not a non-empty 1-d array.
    """
    log_weights = np.array(log_weights, dtype=np.float64)  # a copy: ArviZ edits in place
    if log_weights.ndim != 1 or log_weights.size == 0:
        raise ValueError(
            f"`log_weights` must be a non-empty 1-d array, got shape {log_weights.shape}"
        )
    log_weights[np.isnan(log_weights)] = -np.inf
    unbounded = log_weights == np.inf
    if unbounded.any():
        return np.where(unbounded, -math.log(unbounded.sum()), -np.inf), math.inf
    positive = log_weights > -np.inf
    if not positive.any():
        return np.full_like(log_weights, np.nan), math.inf
    if log_weights[positive].min() == log_weights[positive].max():
        return np.where(positive, -math.log(positive.sum()), -np.inf), -math.inf
    with warnings.catch_warnings():
        # ArviZ 0.23 announces its refactor with a FutureWarning once a day on import.
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz as az
    # ArviZ's tail fit overflows exp() for some candidate shapes, whose weights then
    # correctly vanish: numpy's overflow warning there is noise.
    with np.errstate(over="ignore"):
        smoothed, khat = az.psislw(log_weights, reff=1.0)
    return np.asarray(smoothed, dtype=np.float64), float(khat)


def _kish_ess(log_weights: ArrayLike) -> float:
    """Kish's effective sample size of one vector of log weights, on the host (float64).

    Zero (and NaN) weights count as zero; ``+inf`` weights are the only ones that
    count, each equally; all-zero weights give 0.
    """
    log_weights = np.array(log_weights, dtype=np.float64).ravel()
    log_weights[np.isnan(log_weights)] = -np.inf
    unbounded = log_weights == np.inf
    if unbounded.any():
        return float(unbounded.sum())
    if not (log_weights > -np.inf).any():
        return 0.0
    w = np.exp(log_weights - log_weights.max())
    return float(w.sum() ** 2 / np.sum(w**2))

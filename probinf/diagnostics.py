"""Sample diagnostics and ArviZ export: ESS, Pareto-smoothed importance sampling."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = ["to_inference_data", "effective_sample_size", "psis", "khat_threshold"]


def to_inference_data(samples: Mapping[str, Array], *, log_likelihood=None, **kwargs):
    """Named samples of shape ``(chains, draws, *site_shape)`` as ArviZ ``InferenceData``.

    Args:
        samples: site name -> array with leading ``(chains, draws)`` axes.
        log_likelihood: optional mapping of the same layout for the log likelihood group.
        **kwargs: passed to `arviz.from_dict` (``coords``, ``dims``, ...).

    Raises:
        ValueError: if ``samples`` is empty or the sites disagree on ``(chains, draws)``.
    """
    import arviz as az

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
    extra = {} if log_likelihood is None else {
        "log_likelihood": {k: np.asarray(v) for k, v in log_likelihood.items()}
    }
    return az.from_dict(posterior=posterior, **extra, **kwargs)


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

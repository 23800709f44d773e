"""``infer``: one call from a numpyro model to posterior draws you can check.

The pipeline, and the rule that picks its last stage:

1. **Target.** `probinf.from_numpyro` (improper priors, deterministic sites, x64),
   started at numpyro's ``init_to_median``.
2. **Pathfinder** (Zhang, Carpenter, Gelman & Vehtari, JMLR 2022) gives a full-rank
   Gaussian $q_0$. Pareto-smoothed importance sampling (PSIS; Vehtari, Simpson,
   Gelman, Yao & Gabry, JMLR 2024) scores it with $\\hat k$ on ``num_proposals``
   draws. If $\\hat k_0 \\le 0.5$ and the smoothed weights keep an effective sample
   size of at least ``min_ess``, $q_0$ is already a good importance proposal and the
   flow stage is skipped.
3. **Flow VI.** A spline coupling flow that starts as $q_0$ (its first layer is the
   affine map of $q_0$, the flow layers after it start at the identity) is fitted
   with the ELBO until the smoothed loss stops improving; PSIS scores it the same way.
4. **Correction**, by the documented rule on the best proposal $q$ (lowest $\\hat k$):

   * $\\hat k \\le \\min(1 - 1/\\log_{10} S,\\ 0.7)$ (Vehtari et al. 2024's
     sample-size-dependent threshold, $S$ = ``num_proposals``) and ESS
     $\\ge$ ``min_ess``: **importance resampling** — ``num_draws`` draws resampled
     (systematic) from the $S$ proposals with the PSIS-smoothed weights;
   * otherwise **tempered SMC** to the posterior (adaptive temperatures, HMC moves in
     coordinates whitened by the cloud's covariance, each stage moving until the
     particles have left their starting points), ``num_draws`` particles. Its reference
     is Pathfinder's Gaussian with its scale multiplied by ``3``, not $q$ itself: a
     $\\hat k$ above the threshold says $q$'s tails are too light for the posterior, and
     tempering from a reference that does not cover the posterior leaves the particles
     where the reference put them (measured on the posteriordb suite: from the fitted
     flow 0.59 posterior sd off, from the Gaussian itself 0.24, from the widened Gaussian
     0.03). A Gaussian also keeps each HMC step cheap (a flow's log density is
     differentiated through its inverse at every leapfrog step: 7x slower per stage there;
     docs/inference.md has the conditions of each figure).

``method=`` forces a path: ``"importance"`` (steps 1-3, then resampling whatever
$\\hat k$ says, with a warning when it is above the threshold), ``"smc"`` (step 2,
then tempered SMC), ``"vi"`` (the flow's own draws, uncorrected), ``"pathfinder"``
(the Gaussian's own draws). The result always says which path ran, its
diagnostics and the time each stage took.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from probinf._progress import progress_bar
from probinf.families import FullRankGaussian, Standardized, check_num_samples

__all__ = ["infer", "METHODS"]

METHODS = ("auto", "importance", "smc", "vi", "pathfinder")
# Pathfinder's Gaussian alone is trusted only below this k-hat (finite variance of the
# weights with room to spare); the sample-size threshold applies to the final choice.
_KHAT_SKIP_FLOW = 0.5
# The tempered-SMC branch: reference scale relative to Pathfinder's Gaussian, and the cap on
# adaptive MCMC moves per stage (see the module docstring).
_SMC_WIDENING = 3.0
_SMC_MAX_MOVES = 200


class _Proposal:
    """``num_proposals`` draws from a fitted family, their PSIS diagnostics and smoothed weights."""

    def __init__(self, name, family, key, target, num_proposals):
        from probinf.vi.diagnostics import _assess, _draw_log_weights

        self.name = name
        self.family = family
        z, log_p, log_q = _draw_log_weights(key, family, target, num_proposals)
        self.z = np.asarray(z)
        self.diagnostics, self.log_weights = _assess(family, log_p, log_q)
        self.khat = self.diagnostics.khat
        self.ess = self.diagnostics.ess

    def resample(self, key, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws resampled with the smoothed weights, and their log weights."""
        from probinf.vi.diagnostics import resample_indices

        index = resample_indices(key, self.log_weights, n)
        return self.z[index], self.log_weights[index]

    def stats(self) -> dict[str, float | int | str]:
        return self.diagnostics.to_attrs(prefix=f"{self.name}_")


def infer(
    model: Callable,
    *args: Any,
    key: PRNGKeyArray,
    method: str = "auto",
    num_draws: int = 4000,
    num_proposals: int | None = None,
    min_ess: int | None = None,
    init_strategy: Any = None,
    progress: bool | None = None,
    **model_kwargs: Any,
):
    """Posterior draws of a numpyro model, checked, as ArviZ ``InferenceData``.

    See the module docstring for the pipeline and the rule that chooses between
    importance resampling and tempered SMC.

    Args:
        model: a numpyro model with continuous latent sites.
        *args: the model's positional arguments (data).
        key: PRNG key.
        method: ``"auto"`` (the documented rule), or force ``"importance"``, ``"smc"``,
            ``"vi"`` or ``"pathfinder"``.
        num_draws: posterior draws returned.
        num_proposals: proposal draws scored by PSIS and resampled (default
            ``4 * num_draws``).
        min_ess: smallest effective sample size of the smoothed importance weights that
            importance resampling accepts (default ``num_draws // 4``).
        init_strategy: numpyro initialisation strategy for the start (default
            ``init_to_median``).
        progress: show a progress bar over the stages (default: only on a terminal).
        **model_kwargs: the model's keyword arguments.

    Returns:
        ``InferenceData`` with a ``posterior`` group (one chain of ``num_draws`` draws,
        every latent and deterministic site), ``log_likelihood`` (pointwise, per observed
        site, so `arviz.loo` works) and ``observed_data`` groups, and a ``sample_stats``
        group holding each draw's ``lp`` and, where one applies, its log importance
        weight. ``idata.posterior.attrs`` has ``inference_path`` (what ran), the
        $\\hat k$, ESS, ELBO and log-evidence estimate of each proposal, the tempered-SMC
        log evidence when it ran, and each stage's wall time in seconds
        (``time_<stage>_s``).

    Raises:
        ValueError: an unknown ``method``, a non-positive ``num_draws`` /
            ``num_proposals`` / ``min_ess``, or a model ``from_numpyro`` rejects.
    """
    from probinf import vi
    from probinf.diagnostics import target_inference_data
    from probinf.target import from_numpyro

    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    num_draws = check_num_samples(num_draws, "num_draws")
    num_proposals = 4 * num_draws if num_proposals is None else check_num_samples(
        num_proposals, "num_proposals")
    min_ess = max(1, num_draws // 4) if min_ess is None else check_num_samples(min_ess, "min_ess")
    keys = jax.random.split(key, 8)
    timings: dict[str, float] = {}
    attrs: dict[str, Any] = {}
    stages = {"auto": 4, "importance": 4, "smc": 3, "vi": 3, "pathfinder": 2}[method]

    with progress_bar(total=stages, enabled=progress, desc="infer") as bar:
        began = time.perf_counter()
        target = from_numpyro(model, *args, key=keys[0], init_strategy=init_strategy, **model_kwargs)
        timings["target"] = time.perf_counter() - began
        bar.set_postfix(stage="pathfinder")
        bar.update(1)

        began = time.perf_counter()
        gaussian = vi.initialize(keys[1], target, family="full_rank", method="pathfinder")
        start = _Proposal("pathfinder", gaussian, keys[2], target, num_proposals)
        timings["pathfinder"] = time.perf_counter() - began
        attrs.update(start.stats())
        bar.update(1)

        proposals = [start]
        skip_flow = method == "auto" and start.khat <= _KHAT_SKIP_FLOW and start.ess >= min_ess
        if method not in ("pathfinder", "smc") and not skip_flow:
            bar.set_postfix(stage="flow VI")
            began = time.perf_counter()
            flow_fit = _fit_flow(keys[3], gaussian, target)
            fitted = _Proposal("flow", flow_fit.family, keys[4], target, num_proposals)
            timings["flow"] = time.perf_counter() - began
            attrs.update(fitted.stats())
            attrs["flow_steps"] = int(flow_fit.num_steps)
            attrs["flow_stop_reason"] = str(flow_fit.stop_reason)
            proposals.append(fitted)
            bar.update(1)

        # Lowest k-hat first; NaN (not assessed) sorts last.
        best = (min(proposals, key=lambda p: (np.nan_to_num(p.khat, nan=np.inf), -p.ess))
                if method == "auto" else proposals[-1])
        threshold = best.diagnostics.khat_threshold
        importance_ok = bool(best.diagnostics.reliable) and best.ess >= min_ess
        sample_stats = None
        bar.set_postfix(stage="correction")
        began = time.perf_counter()
        if method in ("vi", "pathfinder"):
            path = method
            draws = np.asarray(best.family.sample(keys[5], num_draws))
        elif method == "importance" or (method == "auto" and importance_ok):
            path = f"{best.name}+importance"
            if not importance_ok:
                warnings.warn(
                    f"importance resampling from the {best.name} approximation with k-hat "
                    f"{best.khat:.2f} (threshold {threshold:.2f}) and ESS {best.ess:.0f}: the "
                    "weights are too heavy-tailed for reliable estimates; method='smc' or "
                    "'auto' corrects with tempered SMC instead",
                    RuntimeWarning, stacklevel=2)
            draws, log_weights = best.resample(keys[5], num_draws)
            attrs["importance_ess"] = best.ess
            attrs["importance_khat"] = best.khat
            sample_stats = {"log_importance_weight": log_weights[None]}
        else:
            from probinf.smc import tempered_smc

            path = "tempered_smc"
            reference = FullRankGaussian.init(target.dim, loc=gaussian.frame_loc,
                                              scale_tril=_SMC_WIDENING * gaussian.frame_scale_tril)
            result = tempered_smc(keys[6], target, num_draws, reference=reference,
                                  max_mcmc_steps=_SMC_MAX_MOVES)
            draws = np.asarray(result.particles)
            attrs["smc_log_evidence"] = float(result.log_evidence)
            attrs["smc_num_stages"] = int(result.num_stages)
            attrs["smc_mcmc_steps"] = int(np.nansum(np.asarray(result.mcmc_steps)))
        timings["correction"] = time.perf_counter() - began
        bar.update(1)

    attrs["inference_path"] = path
    attrs.update({f"time_{stage}_s": seconds for stage, seconds in timings.items()})
    attrs["time_total_s"] = sum(timings.values())
    idata = target_inference_data(target, jnp.asarray(draws)[None], sample_stats=sample_stats)
    idata.posterior.attrs.update(attrs)
    return idata


def _fit_flow(key, gaussian, target):
    """Flow VI started at ``gaussian``: ELBO, Adam, run until the loss stops improving."""
    import flows  # lazily: probinf never imports its sibling packages at import time
    from probinf import vi

    key_flow, key_fit = jax.random.split(key)
    # In the frame of `gaussian` (see probinf.Standardized) the flow starts at the identity,
    # i.e. equal to `gaussian`, and trains in units of its scale. Its trainable full-rank
    # affine layer (starting at the identity) can rescale and rotate beyond the splines'
    # interval where the Gaussian was too narrow.
    identity = gaussian.base
    if target.dim >= 2:
        flow = flows.spline_flow(key_flow, target.dim, gaussian=identity)
    else:  # a coupling flow needs two coordinates
        flow = flows.inverse_autoregressive_flow(key_flow, 1, transformer="spline",
                                                 gaussian=identity)
    family = Standardized(flow, gaussian.frame_loc, gaussian.frame_scale_tril)
    return vi.fit(vi.ELBO(16), family, target, key=key_fit, diagnose=False)

"""Did the variational fit work? PSIS diagnostics and importance resampling.

Draws $z_s \\sim q$ from the fitted family are weighted by
$\\log w_s = \\log \\tilde p(z_s) - \\log q(z_s)$ (the target's unnormalised log
density minus the family's). From the same $S$ weights come

* the Pareto $\\hat k$ of their right tail (Yao, Vehtari, Simpson & Gelman 2018,
  "Yes, but did it work?: Evaluating variational inference", ICML; Vehtari, Simpson,
  Gelman, Yao & Gabry 2024, "Pareto smoothed importance sampling", JMLR), computed
  by `probinf.diagnostics.psis`;
* the importance-sampling estimate of the log evidence
  $\\log \\hat Z = \\log \\frac1S \\sum_s w_s$ (its exponential is unbiased for $Z$);
* the ELBO estimate $\\frac1S \\sum_s \\log w_s$ (a lower bound on $\\log Z$ in
  expectation);
* Kish's effective sample size $(\\sum_s w_s)^2 / \\sum_s w_s^2$ of the raw and of the
  Pareto-smoothed weights.

How to read $\\hat k$ (thresholds of Vehtari et al. 2024 and of Yao
et al. 2018), with $S$ draws and $t_S = \\min(1 - 1/\\log_{10} S,\\ 0.7)$
(`probinf.diagnostics.khat_threshold`; 0.697 at the default $S = 2000$):

* $\\hat k \\le 0.5$: good; the approximation is close to the posterior and
  importance-weighted estimates have finite variance;
* $0.5 < \\hat k \\le t_S$: usable with care; means (and the PSIS-corrected
  estimates, `importance_resample`) are reliable, tails and variances less so;
* $\\hat k > t_S$: unreliable; the family's draws and moments can be far from the
  posterior, and importance resampling cannot repair it.

`importance_resample` is sampling-importance-resampling (Rubin 1988, "Using the SIR
algorithm to simulate posterior distributions", Bayesian Statistics 3) with the
Pareto-smoothed weights.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from probinf.diagnostics import _kish_ess, khat_threshold, psis
from probinf.families import check_num_samples

__all__ = ["VIDiagnostics", "diagnose", "importance_resample", "DEFAULT_DIAGNOSTIC_DRAWS"]

# 2,000 draws make the sample-size-dependent threshold 0.697, within rounding of the
# 0.7 above which more draws stop helping (Vehtari et al. 2024).
DEFAULT_DIAGNOSTIC_DRAWS = 2000
MIN_DIAGNOSTIC_DRAWS = 100
# Target evaluations per vectorised batch: bounds the memory of models with big data.
_TARGET_BATCH = 128

_NOT_ASSESSED = "not assessed"


@dataclass(frozen=True)
class VIDiagnostics:
    """How well a variational family approximates its target, from importance weights.

    Attributes:
        khat: Pareto $\\hat k$ of the importance weights (``nan`` when not assessed,
            ``-inf`` when the weights are constant, ``inf`` when no weight is usable).
        khat_threshold: $\\min(1 - 1/\\log_{10} S, 0.7)$ for these ``num_draws``.
        log_evidence: $\\log \\frac1S \\sum_s w_s$, the importance-weighted estimate of
            $\\log Z$ (biased low by Jensen; unreliable when ``reliable`` is False).
        elbo: $\\frac1S \\sum_s \\log w_s$ on the same draws (``-inf`` if any weight is zero).
        ess: Kish effective sample size of the Pareto-smoothed weights.
        ess_raw: Kish effective sample size of the raw weights.
        num_draws: $S$, the number of draws from the family.
        num_nonfinite: draws whose log weight was NaN or infinite.
        reliable: ``khat <= khat_threshold``; ``None`` when $\\hat k$ was not assessed.
        notes: caveats (what was skipped or estimated, and why).
    """

    khat: float
    khat_threshold: float
    log_evidence: float
    elbo: float
    ess: float
    ess_raw: float
    num_draws: int
    num_nonfinite: int
    reliable: bool | None
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """``"good"``, ``"ok for means, use with care"``, ``"unreliable"`` or ``"not assessed"``."""
        if self.reliable is None:
            return _NOT_ASSESSED
        if not self.reliable:
            return "unreliable"
        return "good" if self.khat <= 0.5 else "ok for means, use with care"

    def summary(self) -> str:
        """A few lines a person can read."""
        lines = [
            f"VI diagnostics ({self.num_draws} draws from the fitted family; PSIS, Vehtari et al. 2024)",
            f"  Pareto k-hat  {self.khat:.3f}  (reliable below {self.khat_threshold:.3f}): {self.verdict}",
            f"  ELBO          {self.elbo:.6g}",
            f"  log evidence  {self.log_evidence:.6g}  (importance-weighted estimate)",
            f"  ESS           {self.ess:.0f} of {self.num_draws} (Pareto-smoothed), "
            f"{self.ess_raw:.0f} (raw weights)",
        ]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    __str__ = summary

    def to_attrs(self, prefix: str = "vi_") -> dict[str, float | int | str]:
        """Scalar diagnostics as a flat dict (ArviZ/netCDF attributes hold no bools or None)."""
        return {
            f"{prefix}khat": self.khat,
            f"{prefix}khat_threshold": self.khat_threshold,
            f"{prefix}log_evidence": self.log_evidence,
            f"{prefix}elbo": self.elbo,
            f"{prefix}ess": self.ess,
            f"{prefix}ess_raw": self.ess_raw,
            f"{prefix}num_diagnostic_draws": self.num_draws,
            f"{prefix}num_nonfinite": self.num_nonfinite,
            f"{prefix}verdict": self.verdict,
            f"{prefix}notes": " | ".join(self.notes),
        }

    def unreliable_message(self) -> str:
        """What the ``RuntimeWarning`` says when ``reliable`` is False."""
        return (
            f"the variational approximation is unreliable: Pareto k-hat = {self.khat:.2f} > "
            f"{self.khat_threshold:.2f} on {self.num_draws} draws (PSIS; Yao et al. 2018, "
            "Vehtari et al. 2024), so its draws and moments may be far from the posterior. "
            "Try: training to convergence (steps=None) or a better learning rate; a richer "
            "family (FullRankGaussian, a normalizing flow from `flows`); or tempered SMC "
            "(probinf.smc.tempered_smc, with the fitted family as reference). Importance "
            "resampling (FitResult.resample) cannot repair k-hat above 0.7."
            + "".join(f" Note: {note}" for note in self.notes)
        )


def _has_tractable_log_prob(family) -> bool:
    probe = jax.ShapeDtypeStruct((1, family.dim), jnp.result_type(float))
    try:
        jax.eval_shape(family.log_prob, probe)
    except NotImplementedError:
        return False
    return True


@eqx.filter_jit
def _draw_log_weights(key, family, target, num_draws):
    """``num_draws`` draws from ``family`` with $\\log \\tilde p$ and $\\log q$ (compiled once per shape)."""
    z, log_q = family.sample_and_log_prob(key, num_draws)
    log_p = jax.lax.map(target.log_density, z, batch_size=min(_TARGET_BATCH, num_draws))
    return z, log_p, log_q


def _assess(family, log_p, log_q) -> tuple[VIDiagnostics, np.ndarray]:
    """Diagnostics from the draws' log densities, and the log weights to resample with."""
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    num_draws = log_p.shape[0]
    with np.errstate(invalid="ignore"):
        raw = log_p - log_q
    nonfinite = ~np.isfinite(raw)
    raw[np.isnan(raw)] = -np.inf  # an undefined target or family density: zero weight
    notes = []
    if nonfinite.any():
        num_unbounded = int((raw == np.inf).sum())
        notes.append(
            f"{int(nonfinite.sum())} of {num_draws} draws had a non-finite log weight "
            "(target or family density NaN or infinite); "
            + (f"{num_unbounded} were +inf (unbounded weights), " if num_unbounded else "")
            + "NaN and -inf count as zero weight"
        )
    if not (raw > -np.inf).any():
        notes.append(
            "every draw had zero weight: the target is -inf or NaN wherever the family puts "
            "its mass, so nothing about the fit can be estimated"
        )
    threshold = khat_threshold(num_draws)
    if getattr(family, "discrete", False):
        # A discrete family's log weights take few distinct values, with ties in the
        # tail that the Pareto fit cannot use.
        khat, smoothed, reliable = math.nan, raw, None
        notes.append(
            "k-hat is not assessed for a discrete family (its log weights take few "
            "distinct values); ELBO, log evidence and ESS come from the raw weights"
        )
        ess = _kish_ess(raw)
    else:
        smoothed, khat = psis(raw)
        reliable = bool(khat <= threshold)
        ess = _kish_ess(smoothed)
        if not _has_tractable_log_prob(family):
            notes.append(
                f"{type(family).__name__} has no tractable log_prob: log q is the stochastic "
                "estimate of sample_and_log_prob, so k-hat, ESS and the log evidence are "
                "those of importance sampling on the family's extended space (z with its "
                "auxiliary draws); read them as approximate"
            )
    finite = raw[raw > -np.inf]
    if (raw == np.inf).any():
        log_evidence, elbo = math.inf, math.inf
    elif finite.size == 0:
        log_evidence, elbo = -math.inf, -math.inf
    else:
        top = finite.max()
        log_evidence = float(top + math.log(np.exp(finite - top).sum()) - math.log(num_draws))
        elbo = float(raw.mean())
    diagnostics = VIDiagnostics(
        khat=float(khat), khat_threshold=threshold, log_evidence=log_evidence, elbo=elbo,
        ess=ess, ess_raw=_kish_ess(raw), num_draws=num_draws,
        num_nonfinite=int(nonfinite.sum()), reliable=reliable, notes=tuple(notes),
    )
    return diagnostics, smoothed


def _check_family_and_target(family, target) -> None:
    if not hasattr(family, "sample_and_log_prob"):
        raise TypeError(f"`family` must provide sample_and_log_prob; got {type(family).__name__}")
    if not hasattr(target, "log_density"):
        raise TypeError(f"`target` must provide log_density; got {type(target).__name__}")


def _check_draws(num: object, name: str) -> int:
    num = check_num_samples(num, name)
    if num < MIN_DIAGNOSTIC_DRAWS:
        raise ValueError(
            f"`{name}` must be at least {MIN_DIAGNOSTIC_DRAWS} for a Pareto tail fit, got {num}"
        )
    return num


def diagnose(
    key: PRNGKeyArray, family, target, num_draws: int = DEFAULT_DIAGNOSTIC_DRAWS
) -> VIDiagnostics:
    """PSIS diagnostics of ``family`` as an approximation of ``target`` (see the module docstring).

    Works for any family with ``sample_and_log_prob``. A discrete family gets no
    $\\hat k$ (``reliable=None``); a family without a tractable ``log_prob``
    (`probinf.HierarchicalFamily`) is assessed with its estimated $\\log q$ and
    says so in ``notes``. Non-finite log weights count as zero weight and are counted.
    The draws are compiled once per family structure, target and ``num_draws``.

    Args:
        key: PRNG key for the draws.
        family: the variational family.
        target: a `probinf.Target`.
        num_draws: $S \\ge 100$ (default 2,000).
    """
    _check_family_and_target(family, target)
    num_draws = _check_draws(num_draws, "num_draws")
    _, log_p, log_q = _draw_log_weights(key, family, target, num_draws)
    return _assess(family, log_p, log_q)[0]


def importance_resample(
    key: PRNGKeyArray,
    family,
    target,
    num_samples: int,
    *,
    num_proposals: int | None = None,
    stacklevel: int = 2,
) -> tuple[np.ndarray, VIDiagnostics]:
    """Sampling-importance-resampling from ``family`` towards ``target``.

    Draws $S$ proposals $z_s \\sim q$, smooths their importance weights with PSIS
    and resamples ``num_samples`` of them (systematic resampling, then shuffled so any
    prefix is a fair subsample). As $S \\to \\infty$ the resampled draws follow the
    target (Rubin 1988); with finite $S$ they can only be as diverse as the weights'
    effective sample size (``diagnostics.ess``), so many duplicates mean $S$ is too
    small. A ``RuntimeWarning`` says when $\\hat k$ is above its threshold: then
    resampling cannot fix the approximation.

    Args:
        key: PRNG key.
        family: the proposal (e.g. a fitted variational family).
        target: a `probinf.Target`.
        num_samples: number of resampled draws.
        num_proposals: $S$; default ``max(10 * num_samples, 2000)``, at least 100.
        stacklevel: of the warning (for wrappers).

    Returns:
        ``(draws, diagnostics)``: ``(num_samples, dim)`` unconstrained draws, and the
        `VIDiagnostics` of the $S$ proposals.

    Raises:
        ValueError: on a bad count, or when every proposal has zero weight.
    """
    _check_family_and_target(family, target)
    num_samples = check_num_samples(num_samples, "num_samples")
    if num_proposals is None:
        num_proposals = max(10 * num_samples, DEFAULT_DIAGNOSTIC_DRAWS)
    num_proposals = _check_draws(num_proposals, "num_proposals")
    key_draw, key_pick, key_shuffle = jax.random.split(key, 3)
    z, log_p, log_q = _draw_log_weights(key_draw, family, target, num_proposals)
    diagnostics, log_weights = _assess(family, log_p, log_q)
    if not (np.asarray(log_weights) > -np.inf).any():
        raise ValueError(
            "cannot resample: every one of the "
            f"{num_proposals} proposals has zero weight ({diagnostics.notes[-1]})"
        )
    if diagnostics.reliable is False:
        warnings.warn(
            "importance resampling cannot repair this approximation: Pareto k-hat = "
            f"{diagnostics.khat:.2f} > {diagnostics.khat_threshold:.2f} on {num_proposals} "
            "proposals, so the resampled draws may still be far from the posterior. Fit "
            "longer or a richer family, or use tempered SMC (probinf.smc.tempered_smc with "
            "the family as reference).",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    ancestors = resample_indices(key_pick, log_weights, num_samples,
                                 key_shuffle)
    return np.asarray(z)[ancestors], diagnostics


def resample_indices(key: PRNGKeyArray, log_weights: np.ndarray, num_samples: int,
                     key_shuffle: PRNGKeyArray | None = None) -> np.ndarray:
    """Systematic resampling of ``num_samples`` indices, then shuffled so any prefix is fair."""
    from probinf.smc.resampling import systematic  # lazily: probinf.smc loads on first use

    if key_shuffle is None:
        key, key_shuffle = jax.random.split(key)
    normalised = log_weights - np.logaddexp.reduce(log_weights[log_weights > -np.inf])
    ancestors = systematic(key, jnp.asarray(normalised), num_samples)
    return np.asarray(jax.random.permutation(key_shuffle, ancestors))

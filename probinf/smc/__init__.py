"""Sequential Monte Carlo: resampling, Feynman–Kac particle filters, particle Gibbs,
tempered SMC for static targets, and exact filters as sequential and parallel scans.

Modules:

* `probinf.smc.resampling` — multinomial, stratified, systematic and residual
  resampling with one signature ``(key, log_weights, n) -> ancestors``.
* `probinf.smc.kernel` — the Feynman–Kac kernel: `FilterState`, `init`,
  ``step(key, state, t, model) -> (state, info)``, the weighting / ESS / resampling
  rule (`reweight`, `should_resample`) and the one failure table `FAILURES`.
* `probinf.smc.feynman_kac` — the Feynman–Kac protocol, bootstrap / guided /
  auxiliary filters, `particle_filter`, backward smoothing.
* `probinf.smc.particle_gibbs` — conditional SMC (with ancestor sampling) and
  particle Gibbs.
* `probinf.smc.tempered` — adaptive / fixed tempered SMC and waste-free SMC on any
  `probinf.target.Target`.
* `probinf.smc.scans` — Kalman filter, RTS smoother and HMM forward–backward, as
  ``lax.scan`` and as parallel ``lax.associative_scan``.
* `probinf.smc.models` — the linear-Gaussian state-space model.
* `probinf.smc.sharding` — particles split across devices.
"""

from probinf.smc.feynman_kac import (
    Auxiliary,
    Bootstrap,
    FeynmanKac,
    FilterResult,
    Guided,
    StateSpaceModel,
    backward_sampling,
    particle_filter,
    trace_genealogy,
)
from probinf.smc.kernel import (
    FAILURES,
    FilterState,
    StepInfo,
    init,
    reweight,
    should_resample,
    step,
)
from probinf.smc.models import LinearGaussianSSM
from probinf.smc.particle_gibbs import conditional_smc, particle_gibbs
from probinf.smc.resampling import (
    SCHEMES,
    effective_sample_size,
    multinomial,
    resample,
    residual,
    stratified,
    systematic,
)
from probinf.smc.scans import hmm_filter, hmm_smoother, kalman_filter, rts_smoother
from probinf.smc.sharding import particle_sharding, shard_leading_axis
from probinf.smc.tempered import TemperedResult, tempered_smc

__all__ = [
    "FAILURES",
    "FilterState",
    "StepInfo",
    "init",
    "step",
    "reweight",
    "should_resample",
    "trace_genealogy",
    "SCHEMES",
    "effective_sample_size",
    "multinomial",
    "resample",
    "residual",
    "stratified",
    "systematic",
    "FeynmanKac",
    "StateSpaceModel",
    "Bootstrap",
    "Guided",
    "Auxiliary",
    "FilterResult",
    "particle_filter",
    "backward_sampling",
    "conditional_smc",
    "particle_gibbs",
    "tempered_smc",
    "TemperedResult",
    "LinearGaussianSSM",
    "kalman_filter",
    "rts_smoother",
    "hmm_filter",
    "hmm_smoother",
    "particle_sharding",
    "shard_leading_axis",
]

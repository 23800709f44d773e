"""``fit``: run any objective with any optax optimizer on any family and target."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import PRNGKeyArray

from probinf import train as engine
from probinf.families import check_num_samples
from probinf.validation import check_key
from probinf.vi import convergence
from probinf.vi.diagnostics import (
    DEFAULT_DIAGNOSTIC_DRAWS,
    VIDiagnostics,
    _check_draws,
    _draw_log_weights,
    importance_resample,
)
from probinf.vi.diagnostics import diagnose as _diagnose_family
from probinf.vi.estimators import Learnable
from probinf.vi.objectives import RWS, Objective
from probinf.xla_workaround import warn_if_cpu_gradients_are_wrong

__all__ = ["fit", "FitResult"]

# One shared default: the compiled loop is cached by the optimizer's identity, so a fresh
# optax.adam per call would recompile every time.
DEFAULT_OPTIMIZER = optax.adam(1e-2)
# The fixed chunk used when `patience` counts chunks (otherwise the engine's adaptive chunks).
PATIENCE_CHUNK = 100
# steps=None runs until `probinf.vi.convergence`'s rule says the loss stopped improving,
# or this many steps. Generous: steps of small models cost microseconds, and a run that
# is still improving here says so.
DEFAULT_MAX_STEPS = 20_000
# The diagnostics' draws use fold_in(key, DIAGNOSTIC_STREAM): never a step's index.
DIAGNOSTIC_STREAM = 0xFFFFFFFF
# A subsampled target's rows at step t come from fold_in(fold_in(key, t), BATCH_STREAM).
BATCH_STREAM = 0xFFFFFFFE
# The control variate's reference point: the mean of this many draws of the first phase's
# family, from fold_in(key, REFERENCE_STREAM).
REFERENCE_STREAM = 0xFFFFFFFD
REFERENCE_DRAWS = 1000
# Iterate averaging (`average=True`): the time constant, in steps, of the running average of
# the iterates. Two of the convergence rule's windows: the rule has judged at least the last
# half of a converged run (500+ steps) flat, so the average holds only stationary iterates.
AVERAGE_HORIZON = 2 * convergence.WINDOW


@dataclass(frozen=True)
class FitResult:
    """What `fit` returns.

    Attributes:
        family: the fitted variational family.
        target: the target (with learned ``params`` when ``learn_target=True``).
        objective: the objective (with any learned baseline).
        losses: loss at every completed step, ``(num_steps,)``.
        num_steps: number of optimisation steps applied.
        stop_reason: why training ended:

            * ``"converged"`` — ``steps=None`` and the loss stopped improving by the
              rule of `probinf.vi.convergence`;
            * ``"max_steps"`` — ``steps=None`` and ``max_steps`` ran out first (the loss
              was still improving; a ``RuntimeWarning`` said so);
            * ``"completed"`` — a fixed number of ``steps`` ran;
            * ``"plateau"`` — the ``patience`` rule stopped it;
            * a sentence naming the step at which the loss became non-finite.
        opt_state: the optimizer state, to continue training.
        diagnostics: `probinf.vi.VIDiagnostics` of the fitted family (Pareto
            $\\hat k$, log evidence, ELBO, ESS), or ``None`` with ``diagnose=False``.
        converged: whether the loss had stopped improving at the end by the rule of
            `probinf.vi.convergence` (for any ``steps``), ``None`` below 1,000 steps.
        control_variate_from: for a subsampled target, the first step that used the
            Taylor control variate (0, or the start of the second phase; see `fit`),
            ``None`` if none did.
        averaged: whether ``family`` is the running average of the last iterates (see
            `fit`, *Iterate averaging*) rather than the last iterate.
    """

    family: Any
    target: Any
    objective: Any
    losses: np.ndarray
    num_steps: int
    stop_reason: str
    opt_state: Any = None
    diagnostics: VIDiagnostics | None = None
    converged: bool | None = None
    control_variate_from: int | None = None
    averaged: bool = False

    def sample_posterior(self, key: PRNGKeyArray, num_samples: int = 1000) -> dict[str, np.ndarray]:
        """Draws from the fitted family mapped to the model's named, constrained sites."""
        num_samples = check_num_samples(num_samples, "num_samples")
        z = self.family.sample(key, num_samples)
        return {name: np.asarray(v) for name, v in self.target.constrain(z).items()}

    def resample(
        self, key: PRNGKeyArray, num_samples: int = 1000, *, num_proposals: int | None = None
    ) -> dict[str, np.ndarray]:
        """Importance-resampled draws at the model's named, constrained sites.

        Sampling-importance-resampling (Rubin 1988) with Pareto-smoothed weights:
        ``num_proposals`` draws from the fitted family (default
        ``max(10 * num_samples, 2000)``) are weighted by $\\tilde p / q$ and
        ``num_samples`` of them resampled, which corrects a family that is close but not
        exact (Pareto $\\hat k$ up to about 0.7). A ``RuntimeWarning`` says when
        $\\hat k$ is above its threshold: resampling cannot fix that. See
        `probinf.vi.importance_resample` (its unconstrained form).
        """
        z, _ = importance_resample(key, self.family, self.target, num_samples,
                                   num_proposals=num_proposals, stacklevel=3)
        return {name: np.asarray(v) for name, v in self.target.constrain(jnp.asarray(z)).items()}

    def to_inference_data(self, key: PRNGKeyArray, num_samples: int = 1000, *,
                          resample: bool = False):
        """Draws from the fitted family as an ArviZ ``InferenceData`` (one chain).

        Groups (see `probinf.diagnostics.target_inference_data`):

        * ``posterior``: the model's named, constrained sites;
        * ``sample_stats``: per draw ``lp`` ($\\log \\tilde p(z)$), and, for the
          family's own draws, ``log_weight`` ($\\log \\tilde p(z) - \\log q(z)$) and
          ``psis_log_weight`` (the Pareto-smoothed, normalised log weights of these
          draws, for weighted estimates); per chain ``khat``, the Pareto $\\hat k$ of
          the importance weights behind the draws (Yao et al. 2018), and ``ess``, the
          effective sample size of their Pareto-smoothed weights;
        * ``log_likelihood`` and ``observed_data`` when the target came from
          `probinf.from_numpyro` (absent for a `probinf.from_logdensity` target).

        The fit's scalar diagnostics are attributes of the posterior group,
        ``idata.posterior.attrs``: ``vi_khat``, ``vi_khat_threshold``,
        ``vi_log_evidence``, ``vi_elbo``, ``vi_ess``, ``vi_ess_raw``,
        ``vi_num_diagnostic_draws``, ``vi_num_nonfinite``, ``vi_verdict``, ``vi_notes``
        (when diagnosed), and ``vi_stop_reason``, ``vi_num_steps``.

        How `arviz.loo` reads the result: ArviZ treats the draws as equally weighted
        draws of the posterior. The family's own draws (``resample=False``) give the
        LOO of the approximation $q$, not of the posterior; ``resample=True``
        exports draws importance-resampled toward the posterior (`resample`, PSIS
        weights; sound while $\\hat k$ is below its threshold), whose LOO is the
        posterior's. The raw ``log_weight`` are not used by any ArviZ function.

        Args:
            key: PRNG key.
            num_samples: draws exported.
            resample: export importance-resampled draws (from
                ``max(10 * num_samples, 2000)`` proposals) instead of the family's own.
        """
        from probinf.diagnostics import _kish_ess, psis, target_inference_data

        num_samples = check_num_samples(num_samples, "num_samples")
        if resample:
            z, diagnostics = importance_resample(key, self.family, self.target, num_samples,
                                                 stacklevel=3)
            stats = {"khat": (("chain",), np.array([diagnostics.khat])),
                     "ess": (("chain",), np.array([diagnostics.ess]))}
        else:
            z, log_p, log_q = _draw_log_weights(key, self.family, self.target, num_samples)
            log_p = np.asarray(log_p, np.float64)
            with np.errstate(invalid="ignore"):
                log_weight = log_p - np.asarray(log_q, np.float64)
            smoothed, khat = psis(log_weight)
            stats = {"lp": log_p[None], "log_weight": log_weight[None],
                     "psis_log_weight": smoothed[None], "khat": (("chain",), np.array([khat])),
                     "ess": (("chain",), np.array([_kish_ess(smoothed)]))}
        idata = target_inference_data(self.target, jnp.asarray(z)[None], sample_stats=stats)
        attrs = {} if self.diagnostics is None else self.diagnostics.to_attrs()
        attrs.update(vi_stop_reason=self.stop_reason, vi_num_steps=self.num_steps,
                     vi_resampled=int(bool(resample)), vi_averaged=int(self.averaged))
        idata.posterior.attrs.update(attrs)
        return idata

    def summary(self) -> str:
        """How training ended and, when diagnosed, how good the approximation is."""
        converged = {True: "yes", False: "no: the loss was still decreasing",
                     None: "not assessed (under 1,000 steps)"}[self.converged]
        lines = [f"fit: {self.num_steps} steps, stop reason: {self.stop_reason}; "
                 f"converged: {converged}"]
        if self.averaged:
            lines.append(f"  family: running average of the iterates (time constant "
                         f"{AVERAGE_HORIZON} steps)")
        if self.control_variate_from is not None:
            lines.append(f"  data subsampling with the Taylor control variate from step "
                         f"{self.control_variate_from}")
        if len(self.losses):
            tail = self.losses[-min(len(self.losses), convergence.WINDOW):]
            lines.append(f"  final loss (mean of last {len(tail)} steps): {tail.mean():.6g}")
        if self.diagnostics is not None:
            lines.append(self.diagnostics.summary())
        return "\n".join(lines)

    def plot_losses(self, ax=None, *, smooth: int | None = None):
        """Plot the loss history (with a running mean when ``smooth`` is given)."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        steps = np.arange(1, len(self.losses) + 1)
        ax.plot(steps, self.losses, lw=0.6, alpha=0.5 if smooth else 1.0, label="loss")
        if smooth and len(self.losses) >= smooth:
            window = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1 :], np.convolve(self.losses, window, "valid"),
                    label=f"running mean ({smooth})")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(frameon=False)
        return ax


def _trainable_spec(family, target, objective, learn_target: bool):
    family_spec = jtu.tree_map(eqx.is_inexact_array, family)
    # A prefix: the frozen target's structure (e.g. a control variate added between the
    # phases of a subsampled fit) is then no part of the trainable tree or optimizer state.
    target_spec = False
    if learn_target:
        params = getattr(target, "params", None)
        if params is None:
            raise ValueError("`learn_target=True` needs a target with `params` to learn")
        target_spec = eqx.tree_at(
            lambda t: t.params, jtu.tree_map(lambda _: False, target),
            replace=jtu.tree_map(eqx.is_inexact_array, params)
        )
    objective_spec = jtu.tree_map(
        lambda x: isinstance(x, Learnable), objective, is_leaf=lambda x: isinstance(x, Learnable)
    )
    return family_spec, target_spec, objective_spec


def _loss(trainable, frozen, key, step, row_sharding=None):
    family, target, objective = eqx.combine(trainable, frozen)
    if getattr(target, "subsample_plates", ()):
        # A fresh batch of rows per step, from its own stream: the objective's draws stay
        # those of the same step without subsampling.
        batch = target.draw_batch(jax.random.fold_in(key, BATCH_STREAM))
        if row_sharding is not None:
            # Data-parallel: each device evaluates its share of the batch's rows; the
            # partitioner turns the sums over rows into per-device sums and an all-reduce.
            batch = {name: jax.lax.with_sharding_constraint(rows, row_sharding)
                     for name, rows in batch.items()}
        target = target.with_batch(batch)
    if isinstance(objective, Objective):
        return objective(key, family, target, step)
    return objective(key, family, target)


def _engine_loss(trainable, key, data, step):
    """`_loss` in `probinf.train`'s step signature: ``data = (frozen, row_sharding)``, the
    frozen parts and the sharding of a batch's rows (``None``: one device) ride as the batch."""
    frozen, row_sharding = data
    return _loss(trainable, frozen, key, step, row_sharding)


def _row_sharding(mesh, target):
    """The sharding that splits each step's batch rows over ``mesh``'s first axis, after
    checking that ``target`` has subsampled plates whose batches split evenly."""
    row_sharding = engine.split_sharding(mesh)
    plates = getattr(target, "subsample_plates", ())
    if not plates:
        raise ValueError("`sharding` splits each step's batch of rows over the devices: it "
                         "needs a target with a subsampled plate (numpyro.plate(..., "
                         "subsample_size=B)); this target has none")
    for plate in plates:
        engine.split_sharding(mesh, plate.subsample_size,
                              f"plate '{plate.name}': its subsample_size")
    return row_sharding


class _ChunkPlateau:
    """``patience``'s rule for `probinf.train.run`: stop once the mean loss of a chunk has
    not beaten the best chunk mean by ``min_delta`` for ``patience`` chunks in a row."""

    reason = "plateau"

    def __init__(self, patience: int, min_delta: float):
        self.patience, self.min_delta = patience, min_delta
        self.best, self.waited = math.inf, 0

    def update(self, losses: np.ndarray) -> int | None:
        mean = float(np.mean(losses))
        if mean < self.best - self.min_delta:
            self.best, self.waited = mean, 0
            return None
        self.waited += 1
        return len(losses) if self.waited >= self.patience else None


def _run_phase(optimizer, trainable, frozen, opt_state, first_step, budget, key, stop_rule,
               chunk_size, progress, average, row_sharding):
    """`probinf.train.run` from step ``first_step``: (trainable, opt_state, losses, reason,
    averaged), ``averaged`` the running average of the phase's iterates (`average=True`),
    or ``None`` when off or when the iterates did not fluctuate around it
    (`probinf.train.fluctuates`)."""
    if average:
        optimizer = engine.iterate_average(optimizer, AVERAGE_HORIZON)
        start = eqx.filter(trainable, eqx.is_inexact_array)
        opt_state = engine.IterateAverageState(opt_state, start, start, jnp.zeros((), jnp.int32))
    state = engine.TrainState(trainable, opt_state, jnp.asarray(first_step, jnp.int32))
    if row_sharding is not None:
        state, frozen = engine.replicate((state, frozen), row_sharding.mesh)
    # The frozen parts (the target's data, the family's structure) are the engine's `data`:
    # every step gets them whole, so the compiled loop is shared by fits of one shape.
    result = engine.run(
        engine.make_step(_engine_loss, optimizer, step_index=True),
        state,
        key=key,
        steps=budget,
        data=(frozen, row_sharding),
        stop_rule=stop_rule,
        chunk_size=chunk_size,
        progress=progress,
        warn=False,
        name="fit",
    )
    trainable, opt_state = result.state.params, result.state.opt_state
    averaged = None
    if average:
        if engine.fluctuates(opt_state, trainable):
            averaged = eqx.combine(opt_state.average, trainable)
        opt_state = opt_state.inner
    return trainable, opt_state, result.losses, result.stop_reason, averaged


def _control_variate_at(family, target, key, *, near_mode_only: bool):
    """``target`` with the Taylor control variate around the mean of ``family``, or ``None``.

    With ``near_mode_only``, only if the reference is near the mode of the full-data
    log-likelihood: its Newton step from there is within one sd of the likelihood's Laplace
    approximation in every coordinate (the expansion is then good where the posterior mass
    is); a failure to build it returns ``None`` quietly (the first phase will move nearer
    the mode). Otherwise a failure warns."""
    reference = jnp.mean(family.sample(jax.random.fold_in(key, REFERENCE_STREAM),
                                       REFERENCE_DRAWS), axis=0)
    try:
        centred = target.with_control_variate(reference)
    except ValueError as error:
        if not near_mode_only:
            warnings.warn(f"fit: no control variate ({error}); the result keeps the plain "
                          "subsampled estimate's batch noise", RuntimeWarning, stacklevel=3)
        return None
    if near_mode_only and _newton_distance(centred.control_variate) > 1.0:
        return None
    return centred


def _newton_distance(variate) -> float:
    """Largest |Newton step| / Laplace sd of the full-data log-likelihood at the variate's
    reference; infinite when its Hessian there is not negative definite."""
    hessian = np.asarray(variate.full_hessian, np.float64)
    hessian = 0.5 * (hessian + hessian.T)
    if not np.all(np.isfinite(hessian)) or np.max(np.linalg.eigvalsh(hessian)) >= 0:
        return math.inf
    covariance = np.linalg.inv(-hessian)
    step = covariance @ np.asarray(variate.full_gradient, np.float64)
    return float(np.max(np.abs(step) / np.sqrt(np.diag(covariance))))


def _control_variate_unavailable(target) -> str | None:
    """Why `fit` cannot add a control variate to this subsampled target, or ``None``."""
    model = getattr(target, "numpyro_model", None)
    if model is None or model.row_log_likelihood is None:
        plates = [plate.name for plate in target.subsample_plates]
        return (f"the target subsamples {len(plates)} plates {plates}; the control variate "
                "supports one subsampled plate of a from_numpyro target")
    return None


def _diagnose_initial_failure(family, target, key, loss) -> Exception:
    z = family.sample(key, 16)
    log_p = np.asarray(target.log_density(z))
    bad = ~np.isfinite(log_p)
    if bad.any():
        first = np.asarray(z)[bad.argmax()]
        return ValueError(
            f"`target` returned a non-finite log density ({log_p[bad][0]}) at {bad.sum()} of 16 "
            f"points drawn from the initial family, e.g. z={np.array2string(first, precision=3)}; "
            "check the model, its data, or start the family inside the target's support"
        )
    return ValueError(
        f"the objective's loss was non-finite ({loss}) at step 0 although the target is finite "
        "at samples from the family; check the family's initial parameters"
    )


def fit(
    objective,
    family,
    target,
    *,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    chunk_size: int | None = None,
    progress: bool | None = None,
    learn_target: bool = False,
    patience: int | None = None,
    min_delta: float = 0.0,
    opt_state: Any = None,
    diagnose: bool = True,
    num_diagnostic_draws: int = DEFAULT_DIAGNOSTIC_DRAWS,
    control_variate: bool = True,
    average: bool = True,
    sharding: jax.sharding.Mesh | None = None,
) -> FitResult:
    """Optimise ``objective`` over the parameters of ``family``, then check the result.

    The loop is `probinf.train.run`'s (a compiled ``jax.lax.while_loop`` in chunks of
    steps, one host sync and one progress-bar update per chunk). Step ``t`` uses the key
    ``fold_in(key, t)``, so results do not depend on how the steps are chunked. The
    compiled loop is reused across calls with the same objective, family structure,
    target and optimizer *object*: pass one optimizer instance to repeated calls.

    **When it stops.** By default (``steps=None``) training runs until the loss stops
    improving, by the rule of `probinf.vi.convergence`: the losses are averaged over
    windows of 100 steps; after at least 1,000 steps a line is fitted to the window
    means of the second half of the run, and training stops (``stop_reason=
    "converged"``) once, at two consecutive windows, its slope is not negative by more
    than one standard error (estimated from the noise of the losses) or the fitted
    decrease is below ``min_delta``. If ``max_steps`` come first, ``stop_reason=
    "max_steps"`` and a ``RuntimeWarning`` says the loss was still improving. An
    integer ``steps`` runs exactly that many (``"completed"``). ``patience`` selects
    the older, simpler rule instead (chunk means against the best by ``min_delta``,
    ``"plateau"``); prefer the default. The rule assumes the objective itself does not
    change with the step: give an annealed objective (`probinf.vi.TemperedELBO` with a
    schedule) a fixed ``steps`` that covers its schedule.

    **Data subsampling.** For a target with subsampled plates (`probinf.Target`,
    *Data subsampling*: a numpyro model with ``plate(..., subsample_size=B)``) every
    step draws a fresh batch of ``B`` rows, from the key ``fold_in(fold_in(key, t),
    BATCH_STREAM)``, scaled by ``N / B``; the objective's own draws use the step key as
    without subsampling. The diagnostics use the full data. The batch noise of the plain
    estimate can dwarf the objective's own (on a 20,000-row logistic regression with
    ``B = 500``, 17 times in gradient sd), and Adam then stops tenths of a posterior sd
    from the full-data optimum. So by default (``control_variate=True``) the Taylor control
    variate of `probinf.Target.with_control_variate` is used, around the mean of 1,000
    draws of the family: from step 0 if that point is near the mode (the Newton step of
    the full-data log-likelihood from it is within one sd of the likelihood's Laplace
    approximation in every coordinate, as from `probinf.vi.initialize`'s start); otherwise
    training runs in two phases, the plain estimate until the stopping rule (or half of an
    integer ``steps``), then the variate around the family so far, from a fresh optimizer
    state (a schedule restarts with it). Each full-data expansion costs about ``dim + 2``
    passes over the ``N`` rows.
    ``FitResult.target`` is then the target with the control variate, and
    ``FitResult.control_variate_from`` the step it started at.

    **Iterate averaging.** With a constant step size the iterates of a stochastic
    optimizer do not settle at the optimum: they fluctuate around it, by about a tenth of
    a posterior sd for Adam at 1e-2 on a Gaussian family (measured on a 20-weight logistic
    regression). So the loop also keeps a running average of the iterates
    (`probinf.train.iterate_average`: the mean of the first ``AVERAGE_HORIZON = 200``
    iterates, then an exponential moving average with that time constant; Polyak and
    Juditsky 1992, for VI Dhaka et al. 2020), and when the run ended stationary
    (``FitResult.converged`` is True: the loss had stopped improving by the rule above,
    judged over at least the last 500 steps) the average is returned as the fitted family
    (``FitResult.averaged``), provided the iterates fluctuate around it
    (`probinf.train.fluctuates`: the last iterate is farther from the average than the
    average is from a slower one). Iterates that converge instead (an estimate with zero
    variance at the optimum: `probinf.vi.STL` on a family that holds the posterior, an
    enumerated objective) reach the optimum ahead of their average, which would lag.
    Otherwise (converging iterates, the loss still falling, under 1,000 steps, a
    non-finite stop) the last iterate is returned. On that regression (10^6 rows, four seeds) the
    average was 0.03-0.05 posterior sd from the exact posterior's mode where the last
    iterate was 0.08-0.13. The optimizer's
    trajectory, the losses and ``opt_state`` are those of the iterates; ``average=False``
    returns the last iterate always.

    **Diagnostics.** With ``diagnose=True`` (default) ``num_diagnostic_draws`` draws
    from the fitted family are weighted by the target (key ``fold_in(key,
    0xFFFFFFFF)``) and give the Pareto $\\hat k$, the importance-weighted log
    evidence, the ELBO and the effective sample size (`probinf.vi.diagnose`,
    ``FitResult.diagnostics``). When $\\hat k$ exceeds $\\min(1 - 1/\\log_{10} S,
    0.7)$ (Vehtari et al. 2024) a ``RuntimeWarning`` says the approximation is
    unreliable and what to try.

    Args:
        objective: an `probinf.vi.Objective`, or any function
            ``(key, family, target) -> scalar loss`` to minimise.
        family: the variational family (every inexact array in it is trained).
        target: a `probinf.Target`.
        key: PRNG key.
        optimizer: any optax ``GradientTransformation`` (default: the shared
            ``DEFAULT_OPTIMIZER = optax.adam(1e-2)``).
        steps: number of optimisation steps, or ``None`` (default) to run until
            convergence (at most ``max_steps``).
        max_steps: the most steps ``steps=None`` runs (default 20,000).
        chunk_size: steps per compiled chunk (and per progress-bar update). ``None``
            (default) adapts: chunks grow from one step to about 0.2 s of work each,
            at most 1,024 steps, so the per-call overhead stays negligible on
            microsecond steps; with ``patience`` the default is 100 steps.
        progress: show a progress bar (default: only on a terminal).
        learn_target: also train ``target.params`` (model learning, e.g. RWS wake-p).
        patience: the older stopping rule: stop when the mean loss of a chunk has not
            improved by more than ``min_delta`` for this many chunks (``None``: off);
            chunks are then of a fixed size, so the stopping step is reproducible.
        min_delta: improvement that counts, for ``patience`` between chunk means and
            for the default rule over its horizon.
        opt_state: optimizer state to resume from (``FitResult.opt_state``).
        diagnose: compute ``FitResult.diagnostics`` after training.
        num_diagnostic_draws: draws for the diagnostics (at least 100; default 2,000).
        control_variate: for a subsampled target, continue with a Taylor control variate
            (see *Data subsampling*); ``False`` keeps the plain estimate throughout.
            Ignored for other targets.
        average: return the running average of the iterates when the run ended
            stationary (see *Iterate averaging*); ``False``: the last iterate.
        sharding: a `jax.sharding.Mesh` to train data-parallel on, for a subsampled
            target: each step's batch of rows is split over the mesh's first axis (every
            plate's ``subsample_size`` a multiple of its size), the family, optimizer state
            and data replicated; the result equals the one-device fit up to the order of
            floating-point sums (docs/scaling.md).

    Returns:
        A `FitResult`. If the loss or the parameters become non-finite, training
        stops, a ``RuntimeWarning`` names the step, and the result holds the last
        finite state.

    Raises:
        ValueError: a non-finite target or loss at the first step, dimension mismatch,
            an invalid option, nothing to train (no floating-point array in ``family``,
            nor learned target params), or `probinf.vi.RWS` with ``phase="p"`` (which
            trains only the target) without ``learn_target=True``; TypeError: an
            optimizer that is not an optax transformation or a key that is not a PRNG key.
    """
    if type(family).__module__.split(".")[0] == "flows":  # scanned layers: probinf/xla_workaround.py
        warn_if_cpu_gradients_are_wrong()
    if not callable(objective):
        raise TypeError(f"`objective` must be callable, got {type(objective).__name__}")
    for name, obj, attrs in (
        ("family", family, ("sample_and_log_prob", "sample")),
        ("target", target, ("log_density",)),
    ):
        missing = [a for a in attrs if not hasattr(obj, a)]
        if missing:
            raise TypeError(f"`{name}` must provide {', '.join(missing)}; got {type(obj).__name__}")
    family_dim, target_dim = getattr(family, "dim", None), getattr(target, "dim", None)
    if family_dim is not None and target_dim is not None and family_dim != target_dim:
        raise ValueError(
            f"dimension mismatch: `family` has dim {family_dim} but `target` has dim {target_dim}"
        )
    check_key(key)
    optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "`optimizer` must be an optax GradientTransformation (e.g. optax.adam(1e-2)), "
            f"got {type(optimizer).__name__}"
        )
    until_converged = steps is None
    budget = check_num_samples(max_steps if until_converged else steps,
                               "max_steps" if until_converged else "steps")
    if chunk_size is None and patience is not None:
        chunk_size = PATIENCE_CHUNK
    if chunk_size is not None:
        chunk_size = check_num_samples(chunk_size, "chunk_size")
    if patience is not None:
        patience = check_num_samples(patience, "patience")
    if isinstance(min_delta, bool) or not (isinstance(min_delta, (int, float)) and min_delta >= 0):
        raise ValueError(f"`min_delta` must be a non-negative number, got {min_delta!r}")
    for flag_name, flag in (("diagnose", diagnose), ("control_variate", control_variate),
                            ("average", average)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{flag_name}` must be True or False, got {flag!r}")
    if diagnose:
        num_diagnostic_draws = _check_draws(num_diagnostic_draws, "num_diagnostic_draws")
    row_sharding = None if sharding is None else _row_sharding(sharding, target)

    if isinstance(objective, RWS) and objective.phase == "p" and not learn_target:
        raise ValueError(
            "`objective` RWS(phase='p') trains only the target's `params` (the wake-phase p "
            "update), so with learn_target=False nothing would be trained; pass "
            "learn_target=True (with a target that has params), or use phase='q' or 'both' "
            "to train the family"
        )
    spec = _trainable_spec(family, target, objective, learn_target)
    trainable, frozen = eqx.partition((family, target, objective), spec)
    if not jtu.tree_leaves(trainable):
        raise ValueError(
            f"nothing to train: `family` ({type(family).__name__}) holds no floating-point "
            "array (fit trains floating-point arrays only; integer parameters never move)"
            + ("" if learn_target else " and learn_target=False")
        )
    if opt_state is None:
        opt_state = optimizer.init(eqx.filter(trainable, eqx.is_inexact_array))

    loss_eps = float(jnp.finfo(jnp.result_type(float)).eps)
    if patience is not None:
        stop_rule = _ChunkPlateau(patience, min_delta)
    elif until_converged:
        stop_rule = convergence.ConvergenceMonitor(min_delta=min_delta, eps=loss_eps)
    else:
        stop_rule = None
    auto_variate = (control_variate and getattr(target, "subsample_plates", ())
                    and getattr(target, "control_variate", None) is None)
    unavailable = _control_variate_unavailable(target) if auto_variate else None
    if unavailable:
        warnings.warn(
            f"fit: {unavailable}; the fit uses the plain subsampled "
            "estimate, whose batch noise can leave the result several tenths of a posterior "
            "sd from the full-data fit. Check it against a full-data fit on a subset.",
            RuntimeWarning, stacklevel=2)
        auto_variate = False
    variate_from = None
    first_budget = budget
    if auto_variate:
        fam, tgt, obj = eqx.combine(trainable, frozen)
        centred = _control_variate_at(fam, tgt, key, near_mode_only=True)
        if centred is not None:  # the start is near the mode: the variate from step 0
            frozen = eqx.partition((fam, centred, obj), _trainable_spec(fam, centred, obj,
                                                                        False))[1]
            auto_variate, variate_from = False, 0
        elif not until_converged:
            first_budget = max(budget // 2, 1)
    first = _run_phase(optimizer, trainable, frozen, opt_state, 0, first_budget, key,
                       stop_rule, chunk_size, progress, average, row_sharding)
    trainable, opt_state, all_losses, stop_reason, averaged = first
    if auto_variate and stop_reason != "non_finite" and budget > len(all_losses):
        fam, tgt, obj = eqx.combine(trainable, frozen)
        centred = _control_variate_at(fam, tgt, key, near_mode_only=False)
        if centred is not None:
            # A subsampled target comes from from_numpyro: it has no params to learn.
            frozen = eqx.partition((fam, centred, obj), _trainable_spec(fam, centred, obj,
                                                                        False))[1]
            stop_rule = (_ChunkPlateau(patience, min_delta) if patience is not None
                         else convergence.ConvergenceMonitor(min_delta=min_delta, eps=loss_eps)
                         if until_converged else None)
            # A fresh optimizer state: the first phase's second-moment estimates hold the
            # batch noise, orders of magnitude above the control variate's, and would
            # shrink Adam's steps for thousands of steps (the stopping rule then sees a
            # flat loss and stops early: 0.41 posterior sd off at N = 10^6).
            opt_state = optimizer.init(eqx.filter(trainable, eqx.is_inexact_array))
            variate_from = len(all_losses)
            trainable, opt_state, losses, stop_reason, averaged = _run_phase(
                optimizer, trainable, frozen, opt_state, variate_from, budget - variate_from,
                key, stop_rule, chunk_size, progress, average, row_sharding)
            all_losses = np.concatenate([all_losses, losses])
    stopped_nonfinite = stop_reason == "non_finite"
    if stopped_nonfinite:
        bad_step = len(all_losses)
        # The engine keeps the state before the bad step; score that step again for the message.
        bad_loss = float(_loss(trainable, frozen, jax.random.fold_in(key, bad_step), bad_step))
        if bad_step == 0:
            fam, tgt, _ = eqx.combine(trainable, frozen)
            raise _diagnose_initial_failure(fam, tgt, key, bad_loss)
        stop_reason = (f"non-finite loss or gradient at step {bad_step} (value {bad_loss}); "
                       f"kept the state after step {bad_step - 1}")
        warnings.warn(f"fit stopped: {stop_reason}", RuntimeWarning, stacklevel=2)

    trend = convergence.loss_trend(all_losses, min_delta=min_delta, eps=loss_eps)
    converged = None if trend is None else not trend.improving
    if stop_reason == "converged":
        converged = True
    elif until_converged and stop_reason == "completed":
        stop_reason = "max_steps"
        converged = False if trend is None else converged
        detail = (
            f"it needs at least {convergence.MIN_WINDOWS * convergence.WINDOW} steps to judge"
            if trend is None else trend.describe()
        )
        warnings.warn(
            f"fit did not converge in max_steps={budget} steps: {detail}. Raise max_steps, "
            "or the learning rate (or use a schedule); a loss that keeps falling can also "
            "mean an improper posterior (e.g. a scale drifting to infinity).",
            RuntimeWarning,
            stacklevel=2,
        )

    use_average = bool(converged) and averaged is not None and not stopped_nonfinite
    family, target, objective = eqx.combine(averaged if use_average else trainable, frozen)
    diagnostics = None
    if diagnose:
        diagnostics = _diagnostics_or_warning(jax.random.fold_in(key, DIAGNOSTIC_STREAM),
                                              family, target, num_diagnostic_draws)
        if diagnostics is not None and diagnostics.reliable is False:
            warnings.warn(f"fit: {diagnostics.unreliable_message()}", RuntimeWarning, stacklevel=2)
    return FitResult(
        family=family,
        target=target,
        objective=objective,
        losses=all_losses,
        num_steps=len(all_losses),
        stop_reason=stop_reason,
        opt_state=opt_state,
        diagnostics=diagnostics,
        converged=converged,
        control_variate_from=variate_from,
        averaged=use_average,
    )


def _diagnostics_or_warning(key, family, target, num_draws) -> VIDiagnostics | None:
    # A failure here must not throw away a finished training run: it becomes a warning.
    try:
        return _diagnose_family(key, family, target, num_draws)
    except Exception as error:  # noqa: BLE001
        warnings.warn(
            f"fit: the diagnostics failed ({type(error).__name__}: {error}); the fitted "
            "family is returned without them",
            RuntimeWarning,
            stacklevel=3,
        )
        return None

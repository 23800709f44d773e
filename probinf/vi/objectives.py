"""Variational objectives assembled from estimator primitives.

An objective is a callable ``objective(key, family, target, step=0) -> loss``. The
loss is a scalar to *minimise*: its value is the negated Monte Carlo estimate of
a lower bound (or the estimate of an upper bound, for `CUBO`), and its
gradient is the chosen estimator's unbiased gradient estimate. Every objective
takes its estimator as an argument, so the pair is the user's choice:

>>> ELBO(num_samples=8, estimator=STL())              # doctest: +SKIP
>>> IWAE(num_samples=16, estimator=DReG())            # doctest: +SKIP
>>> IWAE(num_samples=16, estimator=Score("loo"))      # VIMCO  # doctest: +SKIP

A new objective is a subclass that says how log weights are formed
(`Objective.log_weight`) and reduced (`Objective.reduce`); see
``docs/vi.md`` for a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from probinf.families import Family, check_num_samples, stop_gradient_params
from probinf.vi.estimators import DReG, Estimator, Reparam, Score

__all__ = [
    "Objective",
    "ELBO",
    "IWAE",
    "VIMCO",
    "RenyiBound",
    "CUBO",
    "TemperedELBO",
    "ForwardKL",
    "RWS",
    "linear_schedule",
    "logmeanexp",
]


def logmeanexp(x: Array, axis: int = -1) -> Array:
    """$\\log \\frac1m \\sum_k e^{x_k}$, computed stably."""
    return jax.nn.logsumexp(x, axis=axis) - math.log(x.shape[axis])


def _check_estimator(estimator: object) -> Estimator:
    if not isinstance(estimator, Estimator):
        raise TypeError(
            f"`estimator` must be a probinf.vi estimator (Reparam(), STL(), DReG(), Score(), "
            f"Enumerate()), got {type(estimator).__name__}"
        )
    return estimator


def _check_batches(num_batches: object) -> int:
    return check_num_samples(num_batches, "num_batches")


class Objective(eqx.Module):
    """Base class of the objectives.

    Subclasses set ``separable`` (``F`` is a mean of per-sample terms) and
    ``maximize`` (a lower bound, maximised) and override `reduce` and, when
    the log weights are not $\\log\\tilde p(z) - \\log q(z)$, `log_weight`.
    ``num_batches`` independent sets of ``num_samples`` draws are averaged.
    """

    estimator: Estimator
    num_samples: int = eqx.field(static=True)
    num_batches: int = eqx.field(static=True)
    separable: ClassVar[bool] = True
    maximize: ClassVar[bool] = True

    def log_weight(self, target, z: Array, log_q: Array, step: Array) -> Array:
        """Log weights of the draws: $\\log \\tilde p(z_k) - \\log q(z_k)$."""
        return target.log_density(z) - log_q

    def reduce(self, log_w: Array) -> Array:
        """The reduction ``F`` of the log weights of one batch."""
        return jnp.mean(log_w)

    def estimate(self, key: PRNGKeyArray, family: Family, target, step: Array = 0) -> Array:
        """Surrogate of the objective itself (to maximise when ``maximize``)."""
        log_weight_fn = partial(self.log_weight, step=step)

        def one(k):
            return self.estimator.estimate(
                k, family, target, self.num_samples, log_weight_fn, self.reduce, self.separable
            )

        if self.num_batches == 1:
            return one(key)
        return jnp.mean(jax.vmap(one)(jax.random.split(key, self.num_batches)))

    def __call__(self, key: PRNGKeyArray, family: Family, target, step: Array = 0) -> Array:
        value = self.estimate(key, family, target, step)
        return -value if self.maximize else value


class ELBO(Objective):
    """Evidence lower bound (Jordan et al., 1999),

    $$
    \\mathrm{ELBO}(q) = \\mathbb E_q[\\log \\tilde p(z) - \\log q(z)]
    = \\log Z - \\mathrm{KL}(q \\,\\|\\, p),
    $$

    estimated with ``num_samples`` draws.
    """

    def __init__(self, num_samples: int = 1, estimator: Estimator | None = None, *,
                 num_batches: int = 1):
        self.num_samples = check_num_samples(num_samples, "num_samples")
        self.num_batches = _check_batches(num_batches)
        self.estimator = _check_estimator(Reparam() if estimator is None else estimator)


class IWAE(Objective):
    """Importance-weighted bound (Burda, Grosse & Salakhutdinov, 2016),

    $$
    \\mathcal L_K = \\mathbb E_{z_{1:K} \\sim q}\\Big[\\log \\frac1K
    \\sum_{k=1}^K \\frac{\\tilde p(z_k)}{q(z_k)}\\Big],
    \\qquad \\mathrm{ELBO} \\le \\mathcal L_K \\le \\mathcal L_{2K} \\le \\log Z .
    $$
    """

    separable: ClassVar[bool] = False

    def __init__(self, num_samples: int = 8, estimator: Estimator | None = None, *,
                 num_batches: int = 1):
        self.num_samples = check_num_samples(num_samples, "num_samples")
        self.num_batches = _check_batches(num_batches)
        self.estimator = _check_estimator(Reparam() if estimator is None else estimator)

    def reduce(self, log_w: Array) -> Array:
        return logmeanexp(log_w)


def VIMCO(num_samples: int = 8, *, num_batches: int = 1) -> IWAE:
    """VIMCO (Mnih & Rezende, 2016): the IWAE bound with the score-function
    estimator and leave-one-out baselines, ``IWAE(K, Score("loo"))``."""
    return IWAE(num_samples, Score("loo"), num_batches=num_batches)


class RenyiBound(Objective):
    """Variational Rényi bound (Li & Turner, 2016),

    $$
    \\mathcal L_\\alpha = \\frac{1}{1-\\alpha}
    \\log \\mathbb E_q\\Big[\\Big(\\frac{\\tilde p(z)}{q(z)}\\Big)^{1-\\alpha}\\Big],
    $$

    estimated with ``num_samples`` draws inside the logarithm. ``alpha=0`` is the
    IWAE bound, ``alpha -> 1`` the ELBO; $\\mathcal L_\\alpha$ decreases in
    $\\alpha$ and is a lower bound on $\\log Z$ for $\\alpha \\ge 0$.
    """

    alpha: float = eqx.field(static=True)
    separable: ClassVar[bool] = False

    def __init__(self, alpha: float = 0.5, num_samples: int = 8,
                 estimator: Estimator | None = None, *, num_batches: int = 1):
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
            raise ValueError(f"`alpha` must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)
        self.num_samples = check_num_samples(num_samples, "num_samples")
        self.num_batches = _check_batches(num_batches)
        self.estimator = _check_estimator(Reparam() if estimator is None else estimator)

    def reduce(self, log_w: Array) -> Array:
        if self.alpha == 1.0:
            return jnp.mean(log_w)
        return logmeanexp((1.0 - self.alpha) * log_w) / (1.0 - self.alpha)


class CUBO(Objective):
    """χ upper bound (Dieng, Tran, Ranganath, Paisley & Blei, 2017),

    $$
    \\mathrm{CUBO}_n(q) = \\frac1n \\log \\mathbb E_q\\Big[\\Big(\\frac{\\tilde p(z)}{q(z)}\\Big)^n\\Big]
    \\ \\ge\\ \\log Z, \\qquad n \\ge 1,
    $$

    minimised; ``n=2`` is the χ² bound. The loss is the ``num_samples``-draw
    estimate (biased low for finite samples, consistent as they grow).
    """

    order: float = eqx.field(static=True)
    separable: ClassVar[bool] = False
    maximize: ClassVar[bool] = False

    def __init__(self, order: float = 2.0, num_samples: int = 16,
                 estimator: Estimator | None = None, *, num_batches: int = 1):
        if not isinstance(order, (int, float)) or isinstance(order, bool) or not order >= 1:
            raise ValueError(f"`order` must be a number >= 1, got {order!r}")
        self.order = float(order)
        self.num_samples = check_num_samples(num_samples, "num_samples")
        self.num_batches = _check_batches(num_batches)
        self.estimator = _check_estimator(Reparam() if estimator is None else estimator)

    def reduce(self, log_w: Array) -> Array:
        return logmeanexp(self.order * log_w) / self.order


def linear_schedule(start: float, end: float, num_steps: int) -> Callable[[Array], Array]:
    """``step -> beta`` rising linearly from ``start`` to ``end`` over ``num_steps``, then flat."""
    num_steps = check_num_samples(num_steps, "num_steps")

    def schedule(step: Array) -> Array:
        fraction = jnp.clip(jnp.asarray(step, jnp.result_type(float)) / num_steps, 0.0, 1.0)
        return start + (end - start) * fraction

    return schedule


def _standard_normal_log_density(z: Array) -> Array:
    return -0.5 * jnp.sum(z**2 + math.log(2 * math.pi), axis=-1)


class TemperedELBO(Objective):
    """Tempered / annealed ELBO (Huang et al., 2018, "Improving Explorability in
    Variational Inference with Annealed Variational Objectives"),

    $$
    \\mathcal L_\\beta(q) = \\mathbb E_q\\big[\\beta \\log \\tilde p(z)
    + (1 - \\beta) \\log r(z) - \\log q(z)\\big],
    $$

    the ELBO of the geometric bridge $\\tilde p^\\beta r^{1-\\beta}$ between a
    reference density ``r`` (standard normal by default) and the target. ``beta``
    is a constant or a schedule ``step -> beta`` (see `linear_schedule`);
    annealing it to 1 ends on the ordinary ELBO.
    """

    beta: float | Callable[[Array], Array]
    reference: Callable[[Array], Array]

    def __init__(self, beta: float | Callable[[Array], Array] = 1.0, num_samples: int = 1,
                 estimator: Estimator | None = None, *,
                 reference: Callable[[Array], Array] | None = None, num_batches: int = 1):
        if not callable(beta):
            if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0 <= beta <= 1:
                raise ValueError(f"`beta` must be in [0, 1] or a schedule callable, got {beta!r}")
            beta = float(beta)
        self.beta = beta
        self.reference = _standard_normal_log_density if reference is None else reference
        self.num_samples = check_num_samples(num_samples, "num_samples")
        self.num_batches = _check_batches(num_batches)
        self.estimator = _check_estimator(Reparam() if estimator is None else estimator)

    def inverse_temperature(self, step: Array) -> Array:
        return self.beta(step) if callable(self.beta) else jnp.asarray(self.beta)

    def log_weight(self, target, z, log_q, step):
        beta = self.inverse_temperature(step)
        return beta * target.log_density(z) + (1.0 - beta) * self.reference(z) - log_q


class ForwardKL(Objective):
    """Forward KL from samples of the target (maximum likelihood on those samples),

    $$
    \\mathrm{KL}(p \\,\\|\\, q) = -\\mathbb E_{p}[\\log q(z)] + \\text{const},
    $$

    with a minibatch of ``num_samples`` rows of ``samples`` per step (all rows when
    ``num_samples`` is ``None``). The loss is the minibatch cross-entropy
    $-\\frac1m\\sum_i \\log q(z_i)$. No estimator is needed: the samples do
    not depend on the family.
    """

    samples: Array
    maximize: ClassVar[bool] = False

    def __init__(self, samples: Array, num_samples: int | None = None):
        samples = jnp.asarray(samples, dtype=jnp.result_type(float))  # float64 under x64
        if samples.ndim != 2 or samples.shape[0] == 0:
            raise ValueError(
                f"`samples` must be a non-empty (n, dim) array, got shape {tuple(samples.shape)}"
            )
        if not bool(jnp.all(jnp.isfinite(samples))):
            raise ValueError("`samples` contains NaN or infinite values")
        self.samples = samples
        self.num_samples = (
            samples.shape[0] if num_samples is None else check_num_samples(num_samples, "num_samples")
        )
        self.num_batches = 1
        self.estimator = Reparam()

    def estimate(self, key, family, target, step=0):
        samples = jax.lax.stop_gradient(self.samples)
        if self.num_samples < samples.shape[0]:
            index = jax.random.choice(key, samples.shape[0], (self.num_samples,), replace=False)
            samples = samples[index]
        return -jnp.mean(family.log_prob(samples))


class RWS(Objective):
    """Reweighted wake-sleep (Bornschein & Bengio, 2015; Le et al., 2019,
    "Revisiting Reweighted Wake-Sleep").

    With $K$ draws from $q$ and normalised weights
    $\\bar w_k \\propto \\tilde p(z_k)/q(z_k)$:

    * wake-phase q: $\\nabla_\\phi \\approx \\sum_k \\bar w_k \\nabla_\\phi \\log q_\\phi(z_k)$,
      a self-normalised estimate of $-\\nabla_\\phi \\mathrm{KL}(p\\,\\|\\,q)$;
      with ``estimator=DReG()`` the doubly reparameterised form
      $\\sum_k (\\bar w_k - \\bar w_k^2)\\, \\partial_{z_k}\\ell_k\\, \\partial_\\phi z_k$
      (Tucker et al., 2019) is used instead;
    * wake-phase p: $\\nabla_\\theta \\approx \\sum_k \\bar w_k \\nabla_\\theta \\log \\tilde p_\\theta(z_k)$
      for a target with learnable ``params`` (fit with ``learn_target=True``).

    ``phase`` selects ``"q"``, ``"p"`` or ``"both"``. The reported value is the
    IWAE bound of the same draws.
    """

    phase: str = eqx.field(static=True)
    separable: ClassVar[bool] = False

    def __init__(self, num_samples: int = 8, phase: Literal["q", "p", "both"] = "both",
                 estimator: Estimator | None = None, *, num_batches: int = 1):
        if phase not in ("q", "p", "both"):
            raise ValueError(f"`phase` must be 'q', 'p' or 'both', got {phase!r}")
        self.phase = phase
        self.num_samples = check_num_samples(num_samples, "num_samples")
        self.num_batches = _check_batches(num_batches)
        estimator = Score() if estimator is None else _check_estimator(estimator)
        if not isinstance(estimator, (Score, DReG)) or (
            isinstance(estimator, Score) and estimator.baseline is not None
        ):
            raise ValueError(
                "RWS supports estimator=None (self-normalised wake-q) or DReG(), got "
                f"{estimator!r}"
            )
        self.estimator = estimator

    def reduce(self, log_w: Array) -> Array:
        return logmeanexp(log_w)

    def estimate(self, key, family, target, step=0):
        def one(k):
            return self._estimate_batch(k, family, target)

        if self.num_batches == 1:
            return one(key)
        return jnp.mean(jax.vmap(one)(jax.random.split(key, self.num_batches)))

    def _estimate_batch(self, key, family, target):
        use_dreg = isinstance(self.estimator, DReG)
        z_live = family.sample(key, self.num_samples)
        z = jax.lax.stop_gradient(z_live)
        try:
            log_q = family.log_prob(z)
        except NotImplementedError as err:
            raise ValueError(f"RWS needs the density of {type(family).__name__} ({err})") from err
        log_p = target.log_density(z)
        log_w = jax.lax.stop_gradient(log_p - log_q)
        weights = jax.nn.softmax(log_w)
        terms = jnp.zeros(())
        if self.phase in ("q", "both"):
            if use_dreg:
                frozen_q = stop_gradient_params(family).log_prob(z_live)
                path = stop_gradient_params(target).log_density(z_live) - frozen_q
                terms = terms + jnp.sum(jax.lax.stop_gradient(weights - weights**2) * path)
            else:
                terms = terms + jnp.sum(weights * log_q)
        if self.phase in ("p", "both"):
            terms = terms + jnp.sum(weights * log_p)
        # The value is the IWAE bound; the gradient is the wake-phase direction (to maximise).
        return jax.lax.stop_gradient(logmeanexp(log_w)) + terms - jax.lax.stop_gradient(terms)

"""Gradient-estimation primitives.

An objective of `probinf.vi` is an expectation over ``m`` draws from the
variational family,

$$
\\mathcal L(\\phi) = \\mathbb E_{z_{1:m} \\sim q_\\phi}\\big[F(\\ell_1, \\dots, \\ell_m)\\big],
\\qquad \\ell_k = \\log \\tilde p(z_k) - \\log q_\\phi(z_k),
$$

for a reduction ``F`` of the log weights (the mean for the ELBO, ``logmeanexp``
for IWAE, ...). An `Estimator` turns that expectation into a *surrogate*:
a scalar whose **value** is the usual Monte Carlo estimate of $\\mathcal L$
and whose **gradient** is an unbiased estimate of $\\nabla_\\phi \\mathcal L$
(and of the gradient in the target's parameters, when it has any). Objectives and
estimators are chosen independently; an unsupported pair raises a ``ValueError``.

Estimators:

* `Reparam` — pathwise gradients through $z = g_\\phi(\\varepsilon)$
  (Kingma & Welling, 2014; Rezende et al., 2014).
* `STL` — "sticking the landing": the path derivative with the score term
  of $\\log q_\\phi$ dropped (Roeder, Wu & Duvenaud, 2017).
* `DReG` — doubly reparameterised gradients for any reduction ``F``
  (Tucker, Lawson, Gu & Maddison, 2019), derived generically below.
* `Score` — the score-function / REINFORCE estimator (Williams, 1992) with
  baselines: constant, leave-one-out (RLOO, Kool et al., 2019; VIMCO for joint
  objectives, Mnih & Rezende, 2016) or learned (NVIL, Mnih & Gregor, 2014).
* `Enumerate` — exact sums over a finite support, or over the components of
  a `probinf.families.Mixture` with an inner estimator per component.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from probinf.families import Family, Mixture, check_num_samples, stop_gradient_params

__all__ = [
    "Estimator",
    "Reparam",
    "STL",
    "DReG",
    "Score",
    "Enumerate",
    "Learnable",
    "LogWeightFn",
    "ReduceFn",
]

LogWeightFn = Callable[[eqx.Module, Array, Array], Array]
"""``log_weight_fn(target, z, log_q) -> (m,)`` log weights of the draws."""
ReduceFn = Callable[[Array], Array]
"""``reduce_fn(log_weights) -> scalar``: the objective's reduction ``F``."""


class Learnable(eqx.Module):
    """Marks an array inside an objective as a parameter that `probinf.vi.fit` trains."""

    value: Array


def _surrogate(value: Array, term: Array) -> Array:
    """``value`` in the forward pass, ``grad(term)`` in the backward pass (term's value is dropped)."""
    return jax.lax.stop_gradient(value) + term - jax.lax.stop_gradient(term)


def _require_reparameterized(estimator: str, family: Family) -> None:
    if not getattr(family, "reparameterized", False):
        raise ValueError(
            f"estimator {estimator} needs a reparameterised family, but "
            f"{type(family).__name__} is not; use Score() or Enumerate() instead"
        )


def _frozen_log_prob(estimator: str, family: Family, z: Array) -> Array:
    try:
        return stop_gradient_params(family).log_prob(z)
    except NotImplementedError as err:
        raise ValueError(
            f"estimator {estimator} evaluates log q at its own samples, but "
            f"{type(family).__name__} has no tractable log_prob ({err})"
        ) from err


def _sample_and_frozen_log_prob(estimator: str, family: Family, key, num_samples: int):
    # A family whose log_prob may disagree with the density its draws came from (a flow,
    # whose inverse pass is inexact in floating point) reports the draws' own log q.
    if hasattr(family, "sample_and_frozen_log_prob"):
        return family.sample_and_frozen_log_prob(key, num_samples)
    z = family.sample(key, num_samples)
    return z, _frozen_log_prob(estimator, family, z)


class Estimator(eqx.Module):
    """Base class: turns ``E_q[F(log weights)]`` into a surrogate scalar."""

    @abc.abstractmethod
    def estimate(
        self,
        key: PRNGKeyArray,
        family: Family,
        target: eqx.Module,
        num_samples: int,
        log_weight_fn: LogWeightFn,
        reduce_fn: ReduceFn,
        separable: bool,
    ) -> Array:
        """Surrogate whose value estimates the objective and whose gradient is unbiased.

        ``separable`` says that ``F`` is the mean of per-sample terms, which lets
        estimators use per-sample learning signals.
        """


class Reparam(Estimator):
    """Reparameterisation (pathwise) gradients: differentiate ``F`` through the samples."""

    def estimate(self, key, family, target, num_samples, log_weight_fn, reduce_fn, separable):
        _require_reparameterized("Reparam()", family)
        z, log_q = family.sample_and_log_prob(key, num_samples)
        return reduce_fn(log_weight_fn(target, z, log_q))


class STL(Estimator):
    """Sticking the landing (Roeder et al., 2017): $\\log q$ is evaluated with
    stopped parameters, which removes the zero-mean score term
    $-\\nabla_\\phi \\log q_\\phi(z)$ and makes the gradient vanish at an
    exact fit. Unbiased for the ELBO; for joint reductions use `DReG`."""

    def estimate(self, key, family, target, num_samples, log_weight_fn, reduce_fn, separable):
        _require_reparameterized("STL()", family)
        if not separable:
            raise ValueError(
                "STL() is unbiased only for separable objectives (ELBO-type); "
                "use DReG() for importance-weighted objectives"
            )
        z, log_q = _sample_and_frozen_log_prob("STL()", family, key, num_samples)
        return reduce_fn(log_weight_fn(target, z, log_q))


def _diagonal_hessian(fn: ReduceFn, x: Array) -> Array:
    grad_fn = jax.grad(fn)
    basis = jnp.eye(x.shape[0], dtype=x.dtype)
    return jax.vmap(lambda e: jnp.vdot(jax.jvp(grad_fn, (x,), (e,))[1], e))(basis)


class DReG(Estimator):
    """Doubly reparameterised gradients for any reduction ``F`` of the log weights.

    Writing $\\ell_k = \\log \\tilde p(z_k) - \\log q_\\phi(z_k)$ with
    $z_k = g_\\phi(\\varepsilon_k)$, the reparameterisation gradient holds a
    score term $-\\sum_k \\partial_k F\\, \\nabla_\\phi \\log q_\\phi(z_k)$.
    Applying the identity $\\mathbb E_q[h(z) \\nabla_\\phi \\log q_\\phi(z)]
    = \\mathbb E_q[\\nabla_z h(z)\\, \\partial_\\phi z]$ to it with
    $h = \\partial_k F$ gives

    $$
    \\nabla_\\phi \\mathcal L = \\mathbb E\\Big[\\sum_k
    \\big(\\partial_k F - \\partial_k^2 F\\big)\\,
    \\frac{\\partial \\ell_k}{\\partial z_k}\\frac{\\partial z_k}{\\partial \\phi}\\Big],
    $$

    where the path derivative holds $\\phi$ fixed inside $\\log q$. For
    IWAE, $\\partial_k F - \\partial_k^2 F = \\tilde w_k^2$ (Tucker et al., 2019,
    "Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives"); for
    the ELBO the second derivative is zero and DReG reduces to `STL`.
    Gradients in the target's own parameters are the ordinary ones.
    """

    def estimate(self, key, family, target, num_samples, log_weight_fn, reduce_fn, separable):
        _require_reparameterized("DReG()", family)
        z, log_q_frozen = _sample_and_frozen_log_prob("DReG()", family, key, num_samples)
        log_w_path = log_weight_fn(stop_gradient_params(target), z, log_q_frozen)
        log_w_model = log_weight_fn(
            target, jax.lax.stop_gradient(z), jax.lax.stop_gradient(log_q_frozen)
        )
        log_w = jax.lax.stop_gradient(log_w_path)
        value = reduce_fn(log_w)
        first = jax.grad(reduce_fn)(log_w)
        second = _diagonal_hessian(reduce_fn, log_w)
        path_term = jnp.sum(jax.lax.stop_gradient(first - second) * log_w_path)
        model_term = jnp.sum(jax.lax.stop_gradient(first) * log_w_model)
        return _surrogate(value, path_term + model_term)


Baseline = None | float | Literal["loo", "learned"]


class Score(Estimator):
    """Score-function (REINFORCE) gradients with a baseline.

    $$
    \\nabla_\\phi \\mathbb E_q[F] = \\mathbb E_q\\Big[\\nabla_\\phi F
    + \\sum_k (s_k - b_k)\\, \\nabla_\\phi \\log q_\\phi(z_k)\\Big]
    $$

    with learning signal $s_k = \\ell_k$ for separable objectives and
    $s_k = F$ otherwise. The baseline $b_k$ must not depend on
    $z_k$, which keeps the estimator unbiased:

    * ``None``: no baseline;
    * a float: a constant;
    * ``"loo"``: leave-one-out — the mean of the other samples' signals for
      separable objectives (RLOO), or $F$ with $\\ell_k$ replaced by the
      mean of the other log weights for joint ones (VIMCO, Mnih & Rezende, 2016);
    * ``"learned"``: a scalar trained alongside the family to minimise
      $\\mathbb E[(s_k - b)^2]$ (NVIL, Mnih & Gregor, 2014).

    Works with any family that has a tractable ``log_prob``, discrete ones included.
    """

    baseline: Baseline | Learnable = None

    def __init__(self, baseline: Baseline = None):
        if baseline == "learned":
            self.baseline = Learnable(jnp.zeros(()))
        elif baseline is None or baseline == "loo":
            self.baseline = baseline
        elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
            self.baseline = float(baseline)
        else:
            raise ValueError(
                f"`baseline` must be None, a float, 'loo' or 'learned', got {baseline!r}"
            )

    def _baselines(self, signal_fn, log_w, signals, separable):
        m = log_w.shape[0]
        if self.baseline is None:
            return jnp.zeros(m)
        if isinstance(self.baseline, float):
            return jnp.full(m, self.baseline)
        if isinstance(self.baseline, Learnable):
            return jnp.broadcast_to(self.baseline.value, (m,))
        if m < 2:
            raise ValueError("the leave-one-out baseline needs num_samples >= 2")
        if separable:
            return (jnp.sum(signals) - signals) / (m - 1)
        mean_others = (jnp.sum(log_w) - log_w) / (m - 1)
        replaced = jnp.where(jnp.eye(m, dtype=bool), mean_others[:, None], log_w[None, :])
        return jax.vmap(signal_fn)(replaced)

    def estimate(self, key, family, target, num_samples, log_weight_fn, reduce_fn, separable):
        z = jax.lax.stop_gradient(family.sample(key, num_samples))
        try:
            log_q = family.log_prob(z)
        except NotImplementedError as err:
            raise ValueError(
                f"Score() needs the density of {type(family).__name__} ({err})"
            ) from err
        log_w = log_weight_fn(target, z, log_q)
        value = reduce_fn(log_w)
        log_w_fixed = jax.lax.stop_gradient(log_w)
        m = log_w.shape[0]
        if separable:
            signals = log_w_fixed
        else:
            signals = jnp.full(m, jax.lax.stop_gradient(value))
        baselines = self._baselines(reduce_fn, log_w_fixed, signals, separable)
        advantages = jax.lax.stop_gradient(signals - baselines)
        weight = 1.0 / m if separable else 1.0
        score_term = weight * jnp.sum(advantages * (log_q - jax.lax.stop_gradient(log_q)))
        surrogate = value + score_term
        if isinstance(self.baseline, Learnable):
            residual = jnp.mean((signals - self.baseline.value) ** 2)
            surrogate = surrogate - (residual - jax.lax.stop_gradient(residual))
        return surrogate


class Enumerate(Estimator):
    """Exact expectation over a finite support.

    * For a discrete family (``family.discrete``) the sum runs over every point of
      ``family.support()``: $\\mathcal L = \\sum_z q_\\phi(z) \\ell(z)$ — exact
      value and exact gradient; ``num_samples`` is ignored.
    * For a `probinf.families.Mixture` the component index is summed out
      exactly and each component is handled by ``inner`` (``Reparam()`` or
      ``STL()``) with ``num_samples`` draws:
      $\\mathcal L = \\sum_c \\pi_c\\, \\mathbb E_{q_c}[\\ell(z)]$ (the stratified
      mixture ELBO, Morningstar et al., 2021).

    Only separable (ELBO-type) objectives are supported.
    """

    inner: Estimator = eqx.field(default_factory=Reparam)

    def __check_init__(self):
        if not isinstance(self.inner, (Reparam, STL)):
            raise ValueError(f"`inner` must be Reparam() or STL(), got {self.inner!r}")

    def estimate(self, key, family, target, num_samples, log_weight_fn, reduce_fn, separable):
        if not separable:
            raise ValueError("Enumerate() supports separable (ELBO-type) objectives only")
        if getattr(family, "discrete", False):
            support = family.support()
            log_mass = family.log_prob(support)
            log_w = log_weight_fn(target, support, log_mass)
            return jnp.sum(jnp.exp(log_mass) * log_w)
        if isinstance(family, Mixture):
            num_samples = check_num_samples(num_samples, "num_samples")
            keys = jax.random.split(key, len(family.components))
            density = family if isinstance(self.inner, Reparam) else stop_gradient_params(family)
            per_component = []
            for component, k in zip(family.components, keys, strict=True):
                _require_reparameterized(f"Enumerate(inner={self.inner!r})", component)
                z = component.sample(k, num_samples)
                per_component.append(reduce_fn(log_weight_fn(target, z, density.log_prob(z))))
            return jnp.sum(jnp.exp(family.log_weights) * jnp.stack(per_component))
        raise ValueError(
            f"Enumerate() needs a discrete family or a Mixture, got {type(family).__name__}"
        )

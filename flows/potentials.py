"""Test targets with known normalising constants, for checking flow-based VI.

* :func:`rezende_mohamed` — the four 2-d energy functions :math:`U_1..U_4` of
  Rezende & Mohamed (2015, table 1), :math:`p(z) \\propto e^{-U(z)}`. :math:`U_1` is
  integrable on the plane; :math:`U_2..U_4` constrain only :math:`z_2` given
  :math:`z_1`, so they are multiplied by a weak Gaussian prior
  :math:`\\mathcal N(z; 0, s^2 I)` (``prior_scale`` :math:`s`). The log normaliser
  :math:`\\log Z = \\log \\int e^{-U(z)} [\\mathcal N(z; 0, s^2 I)]\\, dz` is computed by
  trapezoidal quadrature in float64 on a grid fine enough that its error is far
  below 1e-6 (the integrands are smooth and decay like Gaussians).
* :func:`neal_funnel` — Neal's (2003) funnel
  :math:`v \\sim \\mathcal N(0, 3^2)`, :math:`x_i \\mid v \\sim \\mathcal N(0, e^{v})`,
  a normalised density: :math:`\\log Z = 0` exactly.

With :math:`U` as in the paper, :math:`w_1(z) = \\sin(2\\pi z_1/4)`,
:math:`w_2(z) = 3 e^{-\\frac12((z_1-1)/0.6)^2}`, :math:`w_3(z) = 3\\sigma((z_1-1)/0.3)`:

.. math::
    U_1 &= \\tfrac12\\big(\\tfrac{\\|z\\| - 2}{0.4}\\big)^2
          - \\log\\big(e^{-\\frac12(\\frac{z_1-2}{0.6})^2} + e^{-\\frac12(\\frac{z_1+2}{0.6})^2}\\big)\\\\
    U_2 &= \\tfrac12\\big(\\tfrac{z_2 - w_1}{0.4}\\big)^2\\\\
    U_3 &= -\\log\\big(e^{-\\frac12(\\frac{z_2-w_1}{0.35})^2} + e^{-\\frac12(\\frac{z_2-w_1+w_2}{0.35})^2}\\big)\\\\
    U_4 &= -\\log\\big(e^{-\\frac12(\\frac{z_2-w_1}{0.4})^2} + e^{-\\frac12(\\frac{z_2-w_1+w_3}{0.35})^2}\\big)
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from flows._checks import check_positive_float, check_positive_int
from probinf.target import Target, from_logdensity

__all__ = ["rezende_mohamed", "neal_funnel", "POTENTIALS"]

POTENTIALS = ("U1", "U2", "U3", "U4")


def _energy(name: str, z1, z2, xp):
    """The energy U(z) with array module ``xp`` (numpy for quadrature, jax.numpy for VI)."""

    def logaddexp(a, b):
        return xp.logaddexp(a, b)

    w1 = xp.sin(2.0 * math.pi * z1 / 4.0)
    if name == "U1":
        radius = xp.sqrt(z1**2 + z2**2)
        return 0.5 * ((radius - 2.0) / 0.4) ** 2 - logaddexp(
            -0.5 * ((z1 - 2.0) / 0.6) ** 2, -0.5 * ((z1 + 2.0) / 0.6) ** 2
        )
    if name == "U2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "U3":
        w2 = 3.0 * xp.exp(-0.5 * ((z1 - 1.0) / 0.6) ** 2)
        return -logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
    w3 = 3.0 / (1.0 + xp.exp(-(z1 - 1.0) / 0.3))
    return -logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)


def _log_prior(z1, z2, scale, xp):
    return -0.5 * (z1**2 + z2**2) / scale**2 - math.log(2.0 * math.pi * scale**2)


@functools.lru_cache(maxsize=16)
def _log_normalizer(name: str, prior_scale: float | None) -> float:
    # Grid: wide enough that the integrand is below e^-30 of its peak outside it,
    # spacing 0.01 (the narrowest feature has width 0.3).
    half_width_z1 = 6.0 if prior_scale is None else min(8.0 * prior_scale, 40.0)
    z1 = np.linspace(-half_width_z1, half_width_z1, int(2 * half_width_z1 / 0.01) + 1)
    z2 = np.linspace(-10.0, 10.0, 2001)
    total = 0.0
    log_values = []
    for start in range(0, z1.shape[0], 500):  # in chunks to bound memory
        a, b = np.meshgrid(z1[start : start + 500], z2, indexing="ij")
        log_f = -_energy(name, a, b, np)
        if prior_scale is not None:
            log_f = log_f + _log_prior(a, b, prior_scale, np)
        log_values.append(log_f)
    log_f = np.concatenate(log_values, axis=0)
    peak = log_f.max()
    total = np.trapezoid(np.trapezoid(np.exp(log_f - peak), z2, axis=1), z1)
    return float(peak + np.log(total))


def _rezende_mohamed_log_density(z: Array, params: dict[str, Array]) -> Array:
    # One function for all four potentials (selected by a one-hot vector), so that
    # targets differing only in `params` share compiled code.
    energies = jnp.stack([_energy(name, z[0], z[1], jnp) for name in POTENTIALS])
    log_prior = -0.5 * params["prior_precision"] * (z[0] ** 2 + z[1] ** 2) + params["log_prior_norm"]
    return -jnp.dot(params["which"], energies) + log_prior


def rezende_mohamed(name: str, *, prior_scale: float | None = None) -> tuple[Target, float]:
    """The 2-d target :math:`e^{-U(z)}` (times a weak prior) and its log normaliser.

    Args:
        name: ``"U1"``, ``"U2"``, ``"U3"`` or ``"U4"``.
        prior_scale: standard deviation :math:`s` of the Gaussian prior
            :math:`\\mathcal N(0, s^2 I)` multiplying the density. Required for
            U2–U4 (not integrable on the plane); optional for U1.

    Returns:
        ``(target, log_z)``: a :class:`probinf.Target` on ``R^2`` and
        :math:`\\log Z` by quadrature. The potential and prior live in the target's
        ``params``, so the four targets share one compiled program.

    Raises:
        ValueError: an unknown ``name``, or U2–U4 without ``prior_scale``.
    """
    if name not in POTENTIALS:
        raise ValueError(f"`name` must be one of {POTENTIALS}, got {name!r}")
    if prior_scale is None and name != "U1":
        raise ValueError(
            f"`prior_scale` is required for {name}: exp(-{name}) is not integrable on the plane"
        )
    if prior_scale is not None:
        prior_scale = check_positive_float(prior_scale, "prior_scale")
    params = {
        "which": jnp.asarray([float(n == name) for n in POTENTIALS]),
        "prior_precision": jnp.asarray(0.0 if prior_scale is None else prior_scale**-2),
        "log_prior_norm": jnp.asarray(
            0.0 if prior_scale is None else -math.log(2.0 * math.pi * prior_scale**2)
        ),
    }
    target = from_logdensity(_rezende_mohamed_log_density, 2, params=params)
    return target, _log_normalizer(name, prior_scale)


def neal_funnel(dim: int = 2, *, scale: float = 3.0) -> tuple[Target, float]:
    """Neal's funnel in ``dim`` dimensions (``v`` first, then ``dim - 1`` coordinates ``x``).

    .. math:: \\log p(v, x) = \\log\\mathcal N(v; 0, \\mathrm{scale}^2)
        + \\sum_{i=1}^{d-1} \\log\\mathcal N(x_i; 0, e^{v}),

    normalised, so the returned :math:`\\log Z` is exactly 0.
    """
    dim = check_positive_int(dim, "dim", minimum=2)
    scale = check_positive_float(scale, "scale")
    return from_logdensity(_funnel_log_density, dim, params=jnp.asarray(scale)), 0.0


def _funnel_log_density(z: Array, scale: Array) -> Array:
    v, x = z[0], z[1:]
    log_v = -0.5 * (v / scale) ** 2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi)
    log_x = jnp.sum(-0.5 * x**2 * jnp.exp(-v) - 0.5 * v - 0.5 * math.log(2 * math.pi))
    return log_v + log_x

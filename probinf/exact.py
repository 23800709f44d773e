"""Closed-form reference answers used by tests, demos and benchmarks."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["linear_gaussian_posterior"]


def linear_gaussian_posterior(prior_mean, prior_cov, design, observation, noise_cov):
    """Exact posterior and evidence of $x \\sim \\mathcal N(m_0, S_0)$, $y \\mid x \\sim \\mathcal N(A x, R)$.

    $$
    S_y = A S_0 A^\\top + R,\\quad K = S_0 A^\\top S_y^{-1},\\quad
    m = m_0 + K (y - A m_0),\\quad S = S_0 - K A S_0,\\quad
    \\log p(y) = \\log \\mathcal N(y; A m_0, S_y).
    $$

    Computed in float64 with NumPy. Returns ``(posterior_mean, posterior_cov, log_evidence)``.
    """
    m0 = np.asarray(prior_mean, np.float64)
    s0 = np.asarray(prior_cov, np.float64)
    a = np.asarray(design, np.float64)
    y = np.asarray(observation, np.float64)
    r = np.asarray(noise_cov, np.float64)
    if s0.shape != (m0.size, m0.size):
        raise ValueError(f"`prior_cov` must have shape {(m0.size, m0.size)}, got {s0.shape}")
    if a.shape != (y.size, m0.size):
        raise ValueError(f"`design` must have shape {(y.size, m0.size)}, got {a.shape}")
    if r.shape != (y.size, y.size):
        raise ValueError(f"`noise_cov` must have shape {(y.size, y.size)}, got {r.shape}")
    s_y = a @ s0 @ a.T + r
    gain = np.linalg.solve(s_y, a @ s0).T
    residual = y - a @ m0
    mean = m0 + gain @ residual
    cov = s0 - gain @ a @ s0
    _, logdet = np.linalg.slogdet(s_y)
    log_evidence = -0.5 * (residual @ np.linalg.solve(s_y, residual) + logdet + y.size * math.log(2 * math.pi))
    return mean, 0.5 * (cov + cov.T), float(log_evidence)

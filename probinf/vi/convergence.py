"""When has a stochastic optimisation stopped improving? The rule of ``fit(steps=None)``.

The loss of a stochastic objective is noisy at every step, so the rule compares
smoothed losses and scales its tolerance by the noise:

1. The losses are cut into windows of ``W = 100`` consecutive steps, counted from
   step 0. Each window gives its mean $m_j$ and a noise variance
   $v_j = \\tfrac12 \\operatorname{Var}(\\ell_{t+1} - \\ell_t)$ from its first differences
   (a linear trend inside the window does not inflate it).
2. After window $J \\ge 10$ (at least 1,000 steps), a straight line is fitted by least
   squares to the last $H = \\max(10, \\lceil J/2 \\rceil)$ window means, the second half
   of the run. Its slope $b$ has standard error
   $\\mathrm{se}(b) = \\sqrt{\\max(s^2_{\\rm res}, \\bar v / W) / \\sum_j (j - \\bar j)^2}$: the
   larger of the residual variance of the fit (which also catches slow, correlated
   wandering of the loss) and the within-window noise of a window mean.
3. The loss is **still improving** when $-b > z\\,\\mathrm{se}(b)$ with $z = 1$ and the
   fitted decrease over the horizon, $-b (H - 1)$, exceeds
   $\\max(\\text{min\\_delta},\\ 100\\,\\epsilon\\,(1 + |\\bar m|))$ ($\\epsilon$ the
   machine epsilon of the loss: what rounding alone can produce).
4. Training has **converged** when it is not still improving at two consecutive windows.

Why these choices: the horizon grows with the run, so the longer the run, the slower a
decline it can detect (the detectable slope shrinks like $H^{-3/2}$), and a loss at its
noise floor (a fixed learning rate leaves Adam jittering there) stops once the floor
fills the second half of the run: at about twice the step at which the loss
flattened. The loose $z = 1$ and two windows of patience make stopping on a real
decline unlikely, at the cost of a few hundred extra steps at a true plateau. In
simulations with white noise of standard deviation $\\sigma$ per step (runs of 20,000
steps, this module's code), a straight decline of $5 \\cdot 10^{-4}\\sigma$ per step was
never stopped (0 of 40 runs), $3 \\cdot 10^{-4}\\sigma$ in 8 of 40 and
$2 \\cdot 10^{-4}\\sigma$ in 28 of 40 (such a decline gains only 4 to 10 $\\sigma$ over
the whole 20,000 steps); a flat loss stopped after 1,100 to 1,600 steps (to 1,800 with
slowly wandering, AR(1) $\\rho = 0.99$, noise added); an exponential approach to the
floor, $50 e^{-t/\\tau}$, stopped at a median 2,550 (12,750) steps for $\\tau = 200$
(1,000), never more than $0.003\\sigma$ above the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Trend", "ConvergenceMonitor", "loss_trend"]

WINDOW = 100
MIN_WINDOWS = 10
Z = 1.0
PATIENCE = 2
ROUNDING_FACTOR = 100.0


@dataclass(frozen=True)
class Trend:
    """The fitted trend of the loss over the rule's horizon.

    Attributes:
        improving: the rule's verdict (see the module docstring).
        slope: fitted loss change per step (negative while improving).
        standard_error: standard error of ``slope``.
        horizon: number of steps the line was fitted to.
        end: the step count at which the trend was assessed.
    """

    improving: bool
    slope: float
    standard_error: float
    horizon: int
    end: int

    def describe(self) -> str:
        return (
            f"the loss fell by {-self.slope * 1000:.3g} per 1,000 steps over the last "
            f"{self.horizon} steps ({-self.slope / max(self.standard_error, 1e-300):.1f} "
            "standard errors)"
        )


def _window_stats(losses: np.ndarray) -> tuple[float, float]:
    return float(losses.mean()), float(np.var(np.diff(losses)) / 2.0)


def _trend(means, noise_vars, *, window, min_delta, eps) -> Trend:
    num_windows = len(means)
    horizon = max(MIN_WINDOWS, math.ceil(num_windows / 2))
    m = np.asarray(means[-horizon:], dtype=np.float64)
    x = np.arange(horizon) - (horizon - 1) / 2.0
    sxx = float(x @ x)
    slope = float(x @ m) / sxx
    residuals = m - m.mean() - slope * x
    residual_var = float(residuals @ residuals) / (horizon - 2)
    noise_var = float(np.mean(noise_vars[-horizon:])) / window
    standard_error = math.sqrt(max(residual_var, noise_var) / sxx)
    floor = max(min_delta, ROUNDING_FACTOR * eps * (1.0 + abs(float(m.mean()))))
    improving = bool(-slope > Z * standard_error and -slope * (horizon - 1) > floor)
    return Trend(improving, slope / window, standard_error / window, horizon * window,
                 num_windows * window)


class ConvergenceMonitor:
    """Applies the rule to a stream of losses (host-side; fed chunk by chunk).

    Args:
        min_delta: a decrease smaller than this over the horizon does not count.
        eps: machine epsilon of the loss's dtype.
    """

    def __init__(self, *, min_delta: float = 0.0, eps: float = float(np.finfo(np.float32).eps)):
        self.min_delta = float(min_delta)
        self.eps = float(eps)
        self._means: list[float] = []
        self._noise_vars: list[float] = []
        self._pending = np.zeros(0)
        self._streak = 0
        self.last: Trend | None = None

    def update(self, losses: np.ndarray) -> int | None:
        """Feed the next losses; return how many of them were used when training converged.

        ``None`` while not converged. The verdict only changes at window boundaries
        (multiples of ``WINDOW`` steps from step 0), so it does not depend on how the
        losses are chunked.
        """
        losses = np.asarray(losses, dtype=np.float64)
        buffered = np.concatenate([self._pending, losses])
        offset = len(self._pending)
        used = 0
        while len(buffered) - used >= WINDOW:
            mean, noise_var = _window_stats(buffered[used : used + WINDOW])
            used += WINDOW
            self._means.append(mean)
            self._noise_vars.append(noise_var)
            if len(self._means) < MIN_WINDOWS:
                continue
            self.last = _trend(self._means, self._noise_vars, window=WINDOW,
                               min_delta=self.min_delta, eps=self.eps)
            self._streak = 0 if self.last.improving else self._streak + 1
            if self._streak >= PATIENCE:
                self._pending = np.zeros(0)
                return used - offset
        self._pending = buffered[used:]
        return None


def loss_trend(losses, *, min_delta: float = 0.0, eps: float | None = None) -> Trend | None:
    """The rule's trend at the end of a loss history (``None`` below 1,000 steps).

    Uses the complete windows counted from step 0, exactly as `ConvergenceMonitor`.
    """
    losses = np.asarray(losses, dtype=np.float64)
    num_windows = len(losses) // WINDOW
    if num_windows < MIN_WINDOWS:
        return None
    stats = [_window_stats(losses[j * WINDOW : (j + 1) * WINDOW]) for j in range(num_windows)]
    eps = float(np.finfo(np.float32).eps) if eps is None else eps
    return _trend([s[0] for s in stats], [s[1] for s in stats], window=WINDOW,
                  min_delta=min_delta, eps=eps)

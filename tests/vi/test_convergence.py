"""The convergence rule of fit(steps=None) on loss sequences whose trend is known exactly."""

import numpy as np
import pytest

from probinf.vi import convergence

STEPS = 20_000
FIRST_STOP = (convergence.MIN_WINDOWS + convergence.PATIENCE - 1) * convergence.WINDOW  # 1,100


def _stop(losses, chunk=None, **kwargs):
    """The step at which the monitor says converged (None if never), fed ``chunk`` at a time."""
    monitor = convergence.ConvergenceMonitor(**kwargs)
    chunk = len(losses) if chunk is None else chunk
    for start in range(0, len(losses), chunk):
        used = monitor.update(losses[start : start + chunk])
        if used is not None:
            return start + used
    return None


def test_a_flat_noisy_loss_stops_at_the_first_chance():
    noise = np.random.default_rng(0).normal(size=STEPS)
    assert _stop(noise) <= FIRST_STOP + 2 * convergence.WINDOW


def test_a_steady_decline_never_stops():
    """A straight decline of 1e-3 noise sds per step (20 sds over the run, a slope 5
    standard errors from zero at the first check) never counts as converged."""
    rng = np.random.default_rng(1)
    steps = np.arange(STEPS)
    for _ in range(5):
        losses = 50.0 - 1e-3 * steps + rng.normal(size=STEPS)
        assert _stop(losses) is None
        trend = convergence.loss_trend(losses)
        assert trend.improving and trend.slope == pytest.approx(-1e-3, rel=0.1)
        assert trend.horizon == STEPS // 2 and trend.end == STEPS


def test_a_decay_to_a_noise_floor_stops_after_the_floor_fills_the_horizon():
    """50 exp(-t / 300) + noise: flat (within 0.01 sd) from t = 2,600; the rule waits until
    the second half of the run is flat, so stops between 2,600 and about 2 x 2,600."""
    rng = np.random.default_rng(2)
    steps = np.arange(STEPS)
    for _ in range(5):
        stop = _stop(50 * np.exp(-steps / 300) + rng.normal(size=STEPS))
        assert 2600 <= stop <= 6000
        assert 50 * np.exp(-stop / 300) < 1e-2  # what was left to gain, in noise sds


def test_a_noiseless_decay_stops_at_the_rounding_floor():
    """Deterministic losses 2 + exp(-t / 500) in float32: the noise is zero, so only the
    rounding floor 100 eps (1 + |loss|) ends the decay. The rule stops when the decrease
    over its horizon (the second half of the run) falls to that floor: the exact decrease
    over [stop / 2, stop] is within a factor 2 of it, and three windows earlier above it."""
    steps = np.arange(STEPS)
    tau = 500.0
    stop = _stop((2.0 + np.exp(-steps / tau)).astype(np.float32))
    floor = 100 * float(np.finfo(np.float32).eps) * 3.0

    def decrease_over_second_half(end):
        return np.exp(-end / 2 / tau) - np.exp(-end / tau)

    assert decrease_over_second_half(stop) < 2 * floor
    assert decrease_over_second_half(stop - 3 * convergence.WINDOW) > floor
    # A slower exponential is still improving after 20,000 steps: no stop.
    assert _stop((2.0 + np.exp(-steps / 5000)).astype(np.float32)) is None


def test_min_delta_sets_what_counts_as_improvement():
    steps = np.arange(STEPS, dtype=np.float64)
    losses = -1e-4 * steps  # 0.1 per 1,000 steps, noiseless
    assert _stop(losses) is None
    assert _stop(losses, min_delta=1.0) == FIRST_STOP  # the horizon's decrease, 0.09, < 1


def test_chunking_does_not_change_the_stopping_step():
    rng = np.random.default_rng(3)
    losses = 10 * np.exp(-np.arange(STEPS) / 200) + rng.normal(size=STEPS)
    stops = {_stop(losses, chunk) for chunk in (1, 7, 100, 333, None)}
    assert len(stops) == 1 and None not in stops


def test_too_short_a_history_has_no_trend():
    assert convergence.loss_trend(np.zeros(convergence.MIN_WINDOWS * convergence.WINDOW - 1)) is None
    assert convergence.loss_trend(np.zeros(convergence.MIN_WINDOWS * convergence.WINDOW)) is not None

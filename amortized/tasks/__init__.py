"""Simulation tasks: (prior, parameter, data) generators with exact or reference posteriors."""

from amortized.tasks.base import (
    SimulationBatch,
    Task,
    nuts_posterior_samples,
    observation_mask,
    random_mixture_prior,
)
from amortized.tasks.conjugate import ConjugateGaussian
from amortized.tasks.inverse_gamma import InverseGammaVariance, LogInverseGamma
from amortized.tasks.logistic import LogisticRegression
from amortized.tasks.sbibm import SLCP, GaussianLinear, TwoMoons
from amortized.tasks.state_space import LinearGaussianStateSpace, kalman_filter

__all__ = [
    "SimulationBatch",
    "Task",
    "nuts_posterior_samples",
    "observation_mask",
    "random_mixture_prior",
    "ConjugateGaussian",
    "InverseGammaVariance",
    "LogInverseGamma",
    "LogisticRegression",
    "LinearGaussianStateSpace",
    "kalman_filter",
    "GaussianLinear",
    "TwoMoons",
    "SLCP",
]

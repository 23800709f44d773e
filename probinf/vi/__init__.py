"""Programmable variational inference: estimators x objectives, and ``fit``.

See `probinf.vi.estimators` for the gradient estimators and
`probinf.vi.objectives` for the objectives; any objective takes any
compatible estimator.
"""

from probinf.vi.diagnostics import VIDiagnostics, diagnose, importance_resample
from probinf.vi.estimators import (
    STL,
    DReG,
    Enumerate,
    Estimator,
    Learnable,
    Reparam,
    Score,
)
from probinf.vi.fit import FitResult, fit
from probinf.vi.laplace import LaplaceResult, MAPResult, find_map, laplace
from probinf.vi.objectives import (
    CUBO,
    ELBO,
    IWAE,
    RWS,
    VIMCO,
    ForwardKL,
    Objective,
    RenyiBound,
    TemperedELBO,
    linear_schedule,
    logmeanexp,
)
from probinf.vi.pathfinder import PathfinderResult, initialize, pathfinder

__all__ = [
    "Estimator",
    "Reparam",
    "STL",
    "DReG",
    "Score",
    "Enumerate",
    "Learnable",
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
    "fit",
    "FitResult",
    "VIDiagnostics",
    "diagnose",
    "importance_resample",
    "find_map",
    "MAPResult",
    "laplace",
    "LaplaceResult",
    "pathfinder",
    "PathfinderResult",
    "initialize",
]

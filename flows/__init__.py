"""flows: normalizing flows on JAX and equinox, and flow-based variational inference.

* Bijections (:mod:`flows.bijection`, :mod:`flows.elementwise`, :mod:`flows.linear`,
  :mod:`flows.coupling`, :mod:`flows.autoregressive`, :mod:`flows.planar`,
  :mod:`flows.spline`): small modules with ``forward_and_log_det`` /
  ``inverse_and_log_det`` on one ``(dim,)`` vector, optionally conditioned on a context.
* :class:`Flow` (:mod:`flows.distribution`): a base density pushed through a bijection;
  a :class:`probinf.families.Family`, so every objective of :mod:`probinf.vi` trains it.
* Builders (:mod:`flows.builders`): :func:`coupling_flow`, :func:`spline_flow`,
  :func:`masked_autoregressive_flow`, :func:`inverse_autoregressive_flow`,
  :func:`planar_flow`.
"""

from flows import potentials
from flows.autoregressive import MaskedAutoregressive
from flows.bijection import Bijection, Chain, Identity, Invert, Scan
from flows.builders import (
    coupling_flow,
    inverse_autoregressive_flow,
    masked_autoregressive_flow,
    planar_flow,
    spline_flow,
)
from flows.coupling import Coupling, MaskedCoupling
from flows.density import DensityFitResult, fit_to_data
from flows.distribution import ConditionedFlow, Flow, StandardNormal
from flows.elementwise import Affine, Exp, Sigmoid, Softplus, Spline, Tanh
from flows.linear import LULinear, Permutation, TriangularAffine
from flows.planar import Planar, Radial
from flows.spline import AffineTransformer, SplineTransformer, Transformer

__all__ = [
    "Bijection",
    "Chain",
    "Invert",
    "Scan",
    "Identity",
    "Affine",
    "Exp",
    "Softplus",
    "Sigmoid",
    "Tanh",
    "Spline",
    "Permutation",
    "LULinear",
    "TriangularAffine",
    "Coupling",
    "MaskedCoupling",
    "MaskedAutoregressive",
    "Planar",
    "Radial",
    "Transformer",
    "AffineTransformer",
    "SplineTransformer",
    "Flow",
    "ConditionedFlow",
    "StandardNormal",
    "coupling_flow",
    "spline_flow",
    "masked_autoregressive_flow",
    "inverse_autoregressive_flow",
    "planar_flow",
    "fit_to_data",
    "DensityFitResult",
    "FlowGuide",
    "FlowDistribution",
    "potentials",
]

# The numpyro bridge imports numpyro.distributions (about a second): load it on first use.
_LAZY = {"FlowGuide": "flows.numpyro_bridge", "FlowDistribution": "flows.numpyro_bridge"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'flows' has no attribute {name!r}")

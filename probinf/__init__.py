"""probinf: probabilistic inference and Bayesian modeling on JAX.

The curated public API. Subpackages: `probinf.vi` (programmable variational
inference), and — imported on first use, so ``import probinf`` stays light —
`probinf.smc` (particle methods), `probinf.pcn` (predictive coding) and
`probinf.llm` (reward-guided LLM decoding). The sibling packages ``flows``,
``circuits`` and ``amortized`` are imported on their own; importing `probinf`
never imports them (or torch).
"""

import importlib as _importlib

from probinf import (
    datasets,
    exact,
    train,
    vi,
)
from probinf._version import __version__
from probinf.auto import infer
from probinf.diagnostics import effective_sample_size, to_inference_data
from probinf.families import (
    AffineGaussianConditional,
    Bernoulli,
    Categorical,
    Family,
    FullRankGaussian,
    HierarchicalFamily,
    MeanFieldGaussian,
    Mixture,
    Standardized,
)
from probinf.io import load, save
from probinf.target import SubsamplePlate, Target, from_logdensity, from_numpyro
from probinf.vi import fit
from probinf.xla_workaround import xla_cpu_workaround

__all__ = [
    "__version__",
    "xla_cpu_workaround",
    "Target",
    "SubsamplePlate",
    "from_numpyro",
    "from_logdensity",
    "Family",
    "MeanFieldGaussian",
    "FullRankGaussian",
    "Mixture",
    "Bernoulli",
    "Categorical",
    "HierarchicalFamily",
    "Standardized",
    "AffineGaussianConditional",
    "vi",
    "datasets",
    "exact",
    "fit",
    "train",
    "infer",
    "save",
    "load",
    "to_inference_data",
    "effective_sample_size",
]

_LAZY_SUBMODULES = ("smc", "pcn", "llm")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        return _importlib.import_module(f"probinf.{name}")
    raise AttributeError(f"module 'probinf' has no attribute {name!r}")

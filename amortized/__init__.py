"""amortized: Distribution Transformers, Gaussian-mixture algebra, simulators and calibration.

* :mod:`amortized.gmm` — Gaussian mixtures as pytrees and their exact conjugate update.
* :mod:`amortized.transformer` — the Distribution Transformer (Whittle et al., 2025).
* :mod:`amortized.training` — training on simulated (prior, parameter, data) triples.
* :mod:`amortized.tasks` — simulators with exact or reference posteriors.
* :mod:`amortized.calibration` — SBC, TARP and C2ST for any amortized posterior.
* :mod:`amortized.npe` — neural posterior estimation with ``flows`` (the baseline).
* :mod:`amortized.inference_data` — ArviZ export of any amortized posterior's draws.
"""

from amortized import tasks
from amortized.calibration import (
    AmortizedPosterior,
    MixturePosterior,
    SBCResult,
    TARPResult,
    c2st,
    sbc,
    tarp,
)
from amortized.gmm import (
    GaussianMixture,
    condition_linear_gaussian,
    monte_carlo_kl,
    sign_symmetrize,
)
from amortized.inference_data import to_inference_data
from amortized.npe import NPEPosterior, NPEResult, train_npe
from amortized.training import TrainResult, default_optimizer, load_checkpoint, train
from amortized.transformer import DistributionTransformer, sequential_posterior

__all__ = [
    "GaussianMixture",
    "condition_linear_gaussian",
    "monte_carlo_kl",
    "sign_symmetrize",
    "DistributionTransformer",
    "sequential_posterior",
    "train",
    "default_optimizer",
    "TrainResult",
    "load_checkpoint",
    "AmortizedPosterior",
    "MixturePosterior",
    "sbc",
    "SBCResult",
    "tarp",
    "TARPResult",
    "c2st",
    "train_npe",
    "NPEPosterior",
    "NPEResult",
    "tasks",
    "to_inference_data",
]

"""posteriordb development suite: twelve reference posteriors with numpyro translations.

See ``README.md`` in this folder; ``check_nuts.py`` validates the translations with NUTS.
"""

from .suite import (
    POSTERIORS,
    Posterior,
    data_directory,
    load,
    parameter_errors,
    score,
    to_posteriordb_names,
)

__all__ = [
    "POSTERIORS",
    "Posterior",
    "data_directory",
    "load",
    "parameter_errors",
    "score",
    "to_posteriordb_names",
]

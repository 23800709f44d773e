"""Loading, naming and scoring for the posteriordb development suite.

A posterior is a Stan model (translated in `models`), its data and posteriordb's
reference draws (10 chains x 1,000 NUTS draws). ``load(name)`` returns all three;
``score(posterior, draws)`` compares any method's draws with the reference by

* the largest |mean - reference mean| / reference sd over the parameters, and
* the largest |log(sd / reference sd)| over the parameters

(sds are sample sds, ddof = 1). A good method scores <= 0.1 on both.

The data directory defaults to ``<repo root>/../shared/data/posteriordb`` and is
overridden by the environment variable ``PROBINF_POSTERIORDB``.
"""

from __future__ import annotations

import dataclasses
import gzip
import inspect
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import models

__all__ = [
    "POSTERIORS",
    "Posterior",
    "data_directory",
    "load",
    "parameter_errors",
    "score",
    "to_posteriordb_names",
]

DATA_DIR_ENV = "PROBINF_POSTERIORDB"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data" / "posteriordb"

# posterior name -> the numpyro translation of its Stan model
_MODELS: dict[str, Callable[..., None]] = {
    "eight_schools-eight_schools_noncentered": models.eight_schools_noncentered,
    "sblrc-blr": models.blr,
    "sblri-blr": models.blr,
    "diamonds-diamonds": models.diamonds,
    "kilpisjarvi_mod-kilpisjarvi": models.kilpisjarvi,
    "arma-arma11": models.arma11,
    "earnings-logearn_interaction_z": models.logearn_interaction_z,
    "kidiq-kidscore_momhsiq": models.kidscore_momhsiq,
    "mesquite-logmesquite_logvas": models.logmesquite_logvas,
    "nes1980-nes": models.nes,
    "gp_pois_regr-gp_pois_regr": models.gp_pois_regr,
    "hmm_example-hmm_example": models.hmm_example,
}

POSTERIORS: tuple[str, ...] = tuple(_MODELS)

_NAME_PATTERN = re.compile(r"^(?P<site>[^\[\]]+)(\[(?P<index>\d+(,\d+)*)\])?$")


@dataclasses.dataclass(frozen=True)
class Posterior:
    """One posterior of the suite.

    Attributes:
        name: posteriordb's posterior name, e.g. ``"sblrc-blr"``.
        model: the numpyro model; call it as ``model(*args, **kwargs)``.
        args: positional model arguments (empty: the data are passed by keyword).
        kwargs: the data, by the Stan data-block names (numpy arrays and scalars).
        reference: posteriordb parameter name (``"beta[1]"``) -> the 10,000 reference
            draws (all chains concatenated), in posteriordb's order.
        stan_file: path of the Stan program the model translates.
        unused_data: data fields in the posteriordb file that the Stan program does
            not declare (Stan ignores them; so does the model).
    """

    name: str
    model: Callable[..., None]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    reference: dict[str, np.ndarray]
    stan_file: Path
    unused_data: tuple[str, ...] = ()

    @property
    def reference_sites(self) -> tuple[str, ...]:
        """The numpyro site names (sample or deterministic) the reference covers, in order."""
        sites: list[str] = []
        for parameter in self.reference:
            site = _NAME_PATTERN.match(parameter)["site"]
            if site not in sites:
                sites.append(site)
        return tuple(sites)

    @property
    def dim(self) -> int:
        """Number of reference parameters (scalar coordinates)."""
        return len(self.reference)


def data_directory(data_dir: str | os.PathLike | None = None) -> Path:
    """The posteriordb data directory: ``data_dir``, else ``$PROBINF_POSTERIORDB``, else the default.

    Raises:
        FileNotFoundError: if the directory does not exist.
    """
    if data_dir is not None:
        path, source = Path(data_dir), "the `data_dir` argument"
    elif os.environ.get(DATA_DIR_ENV):
        path, source = Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    else:
        path, source = _DEFAULT_DATA_DIR, f"the default (set ${DATA_DIR_ENV} to override)"
    if not path.is_dir():
        raise FileNotFoundError(f"posteriordb data directory {path} (from {source}) does not exist")
    return path


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"posteriordb file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return json.load(handle)


def load(name: str, data_dir: str | os.PathLike | None = None) -> Posterior:
    """Load posterior ``name`` (one of `POSTERIORS`): model, data and reference draws."""
    if name not in _MODELS:
        raise ValueError(f"`name` must be one of {POSTERIORS}; got {name!r}")
    directory = data_directory(data_dir)
    meta = _read_json(directory / f"{name}.posterior.json")
    data = _read_json(directory / f"{meta['data_name']}.data.json.gz")
    chains = _read_json(directory / f"{meta['reference_posterior_name']}.reference_draws.json.gz")
    model = _MODELS[name]
    declared = list(inspect.signature(model).parameters)
    missing = [field for field in declared if field not in data]
    if missing:
        raise ValueError(f"posteriordb data {meta['data_name']!r} lacks the fields {missing} "
                         f"that the model {model.__name__} needs")
    kwargs = {field: _as_array(data[field]) for field in declared}
    reference = {parameter: np.concatenate([np.asarray(chain[parameter], dtype=np.float64)
                                            for chain in chains])
                 for parameter in chains[0]}
    return Posterior(
        name=name,
        model=model,
        args=(),
        kwargs=kwargs,
        reference=reference,
        stan_file=directory / f"{meta['model_name']}.stan",
        unused_data=tuple(field for field in data if field not in declared),
    )


def _as_array(value: Any) -> Any:
    """JSON lists become numpy arrays (ints stay ints); scalars stay Python scalars."""
    return np.asarray(value) if isinstance(value, list) else value


def to_posteriordb_names(samples: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flatten numpyro site draws into posteriordb's parameter names.

    ``samples[site]`` has shape ``(num_draws, *site_shape)``. A scalar site keeps its
    name; element ``(i, j, ...)`` of a larger site is named ``site[i+1,j+1,...]``
    (1-based, as Stan and posteriordb write it), listed in row-major order.

    Returns:
        posteriordb name -> ``(num_draws,)`` float64 array.
    """
    named: dict[str, np.ndarray] = {}
    for site, value in samples.items():
        draws = np.asarray(value)
        if draws.ndim == 0:
            raise ValueError(f"samples[{site!r}] must have a leading draws axis, "
                             f"shape (num_draws, *site_shape); got a scalar")
        if draws.ndim == 1:
            named[site] = draws.astype(np.float64)
            continue
        for index in np.ndindex(*draws.shape[1:]):
            label = ",".join(str(i + 1) for i in index)
            named[f"{site}[{label}]"] = draws[(slice(None), *index)].astype(np.float64)
    return named


def _draws_by_parameter(posterior: Posterior, draws: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Accept posteriordb names (1-d arrays) and numpyro site names, return posteriordb names."""
    by_parameter: dict[str, np.ndarray] = {}
    sites: dict[str, Any] = {}
    for key, value in draws.items():
        if key in posterior.reference:
            values = np.asarray(value, dtype=np.float64)
            if values.ndim != 1:
                raise ValueError(f"draws[{key!r}] must be a 1-d array of draws (a posteriordb "
                                 f"parameter); got shape {values.shape}")
            by_parameter[key] = values
        else:
            sites[key] = value
    for key, values in to_posteriordb_names(sites).items():
        by_parameter.setdefault(key, values)
    return by_parameter


def parameter_errors(posterior: Posterior, draws: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Per reference parameter: (|mean error| / reference sd, |log(sd / reference sd)|).

    ``draws`` maps posteriordb names to 1-d draws, or numpyro site names to
    ``(num_draws, *site_shape)`` draws (converted with `to_posteriordb_names`);
    keys the reference does not cover are ignored.

    Raises:
        KeyError: if a reference parameter has no draws (the parameter is named).
        ValueError: if a parameter has fewer than 2 draws or a non-finite draw.
    """
    by_parameter = _draws_by_parameter(posterior, draws)
    missing = [parameter for parameter in posterior.reference if parameter not in by_parameter]
    if missing:
        raise KeyError(f"`draws` has no draws for the reference parameters {missing} of "
                       f"{posterior.name!r} (got keys {sorted(draws)})")
    errors: dict[str, tuple[float, float]] = {}
    for parameter, reference in posterior.reference.items():
        values = by_parameter[parameter]
        if values.size < 2:
            raise ValueError(f"draws[{parameter!r}] needs at least 2 draws; got {values.size}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"draws[{parameter!r}] has {np.sum(~np.isfinite(values))} non-finite draws")
        reference_sd = reference.std(ddof=1)
        mean_error = abs(values.mean() - reference.mean()) / reference_sd
        log_sd_ratio = abs(np.log(values.std(ddof=1) / reference_sd))
        errors[parameter] = (float(mean_error), float(log_sd_ratio))
    return errors


def score(posterior: Posterior, draws: Mapping[str, Any]) -> tuple[float, float]:
    """(max |mean error| / reference sd, max |log(sd / reference sd)|) over the reference parameters.

    See `parameter_errors` for the accepted ``draws``.
    """
    errors = parameter_errors(posterior, draws)
    return (max(mean_error for mean_error, _ in errors.values()),
            max(log_sd_ratio for _, log_sd_ratio in errors.values()))

"""ArviZ export of amortized posteriors (Distribution Transformers, NPE, any ``sample``-able one).

One observation, many draws: :func:`to_inference_data` draws :math:`\\theta \\sim
q(\\theta \\mid x)` for one observation and, when a task's numpyro model says how the data
arise, scores every real (unmasked) observation with numpyro's own
``numpyro.infer.util.log_likelihood``, so ``arviz.loo`` works on the amortized posterior
as on any other.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from probinf.families import check_num_samples

__all__ = ["to_inference_data"]

THETA_SITE = "theta"


def to_inference_data(
    key: PRNGKeyArray,
    posterior: Any,
    observation: tuple,
    num_samples: int = 1000,
    *,
    task: Any = None,
    num_chains: int = 1,
):
    """Draws of an amortized posterior for one observation, as ArviZ ``InferenceData``.

    Groups:

    * ``posterior`` ``theta`` ``(chain, draw, dim)``: ``num_chains * num_samples``
      independent draws of :math:`q(\\theta \\mid x)`, split into chains (independent
      draws: ``r_hat`` is 1 up to noise);
    * ``sample_stats`` ``log_q``, :math:`\\log q(\\theta \\mid x)` of each draw, when the
      posterior has ``log_prob``;
    * with a ``task`` whose ``numpyro_model(prior, observations, mask)`` samples
      :math:`\\theta` at a site named ``theta``: ``log_likelihood`` (per observed site,
      one entry per real observation: masked-out padding rows are dropped) and
      ``observed_data`` (those rows). Sites written with ``numpyro.factor`` (logistic
      regression, two moons, SLCP) are not per-observation likelihoods and are left out,
      so those tasks get neither group.

    Args:
        key: PRNG key.
        posterior: an amortized posterior with ``sample(key, observation, num_samples)``
            (:class:`~amortized.MixturePosterior`, :class:`~amortized.NPEPosterior`), or a
            :class:`~amortized.DistributionTransformer` (called as ``model(*observation)``).
        observation: ``(prior, observations, mask)``, one data set as in
            :class:`~amortized.tasks.SimulationBatch` (no batch axis).
        num_samples: draws per chain.
        task: the :class:`~amortized.tasks.Task` the data come from (optional).
        num_chains: number of chains.

    Raises:
        TypeError: ``posterior`` cannot be sampled, or ``observation`` is not a triple.
        ValueError: a bad count, or ``task``'s numpyro model has no ``theta`` site of the
            draws' shape.
    """
    from amortized.calibration import MixturePosterior
    from amortized.transformer import DistributionTransformer
    from probinf.diagnostics import to_inference_data as build

    if isinstance(posterior, DistributionTransformer):
        model = posterior
        posterior = MixturePosterior(lambda obs: model(*obs))
    if not callable(getattr(posterior, "sample", None)):
        raise TypeError("`posterior` must provide sample(key, observation, num_samples) or be a "
                        f"DistributionTransformer, got {type(posterior).__name__}")
    if not (isinstance(observation, tuple) and len(observation) == 3):
        raise TypeError("`observation` must be a triple (prior, observations, mask), got "
                        f"{type(observation).__name__}")
    num_samples = check_num_samples(num_samples, "num_samples")
    num_chains = check_num_samples(num_chains, "num_chains")
    total = num_samples * num_chains
    theta = jnp.asarray(posterior.sample(key, observation, total))
    draws = np.asarray(theta).reshape(num_chains, num_samples, *theta.shape[1:])
    stats = {}
    if callable(getattr(posterior, "log_prob", None)):
        log_q = np.asarray(posterior.log_prob(theta, observation), np.float64)
        stats["log_q"] = log_q.reshape(num_chains, num_samples)
    groups = {} if task is None else _likelihood_groups(task, observation, draws)
    return build({THETA_SITE: draws}, sample_stats=stats, **groups)


def _likelihood_groups(task: Any, observation: tuple, draws: np.ndarray) -> dict[str, Any]:
    from numpyro import handlers
    from numpyro.infer.util import log_likelihood

    prior, observations, mask = observation
    args = (prior, jnp.asarray(observations), jnp.asarray(mask, bool))
    try:
        seeded = handlers.seed(task.numpyro_model, jax.random.key(0))
        trace = handlers.trace(handlers.substitute(seeded, {THETA_SITE: draws[0, 0]})).get_trace(*args)
    except NotImplementedError:  # the task has no numpyro model
        return {}
    site = trace.get(THETA_SITE)
    if site is None or site["type"] != "sample" or site["is_observed"] \
            or np.shape(site["value"]) != draws.shape[2:]:
        raise ValueError(f"`task.numpyro_model` must sample the parameter at a latent site "
                         f"'{THETA_SITE}' of shape {draws.shape[2:]}")
    sites = [name for name, s in trace.items()
             if s["type"] == "sample" and s["is_observed"]
             and not _is_factor(s["fn"])]
    if not sites:
        return {}
    scores = jax.jit(lambda d: log_likelihood(task.numpyro_model, {THETA_SITE: d}, *args,
                                              parallel=True, batch_ndims=2))(jnp.asarray(draws))
    real = np.asarray(mask, bool)
    log_lik, observed = {}, {}
    for name in sites:
        values = np.asarray(scores[name], np.float64)
        data = np.asarray(trace[name]["value"])
        if values.shape[2:3] == real.shape:  # one entry per (padded) observation row
            values, data = values[:, :, real], data[real]
        log_lik[name], observed[name] = values, data
    return {"log_likelihood": log_lik, "observed_data": observed}


def _is_factor(fn: Any) -> bool:
    """A ``numpyro.factor`` site: a ``Unit`` distribution under any mask / event wrappers."""
    from numpyro.distributions import ExpandedDistribution, Independent, MaskedDistribution, Unit

    while isinstance(fn, (MaskedDistribution, Independent, ExpandedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, Unit)

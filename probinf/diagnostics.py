"""Sample diagnostics and ArviZ export."""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

__all__ = ["to_inference_data", "effective_sample_size"]


def to_inference_data(samples: Mapping[str, Array], *, log_likelihood=None, **kwargs):
    """Named samples of shape ``(chains, draws, *site_shape)`` as ArviZ ``InferenceData``.

    Args:
        samples: site name -> array with leading ``(chains, draws)`` axes.
        log_likelihood: optional mapping of the same layout for the log likelihood group.
        **kwargs: passed to `arviz.from_dict` (``coords``, ``dims``, ...).

    Raises:
        ValueError: if ``samples`` is empty or the sites disagree on ``(chains, draws)``.
    """
    import arviz as az

    if not samples:
        raise ValueError("`samples` is empty: nothing to export")
    posterior = {name: np.asarray(v) for name, v in samples.items()}
    leading = {name: v.shape[:2] for name, v in posterior.items()}
    shapes = set(leading.values())
    if any(np.ndim(v) < 2 for v in posterior.values()) or len(shapes) != 1:
        raise ValueError(
            "every site in `samples` needs the same leading (chains, draws) axes, got "
            + ", ".join(f"{k}: {v}" for k, v in leading.items())
        )
    extra = {} if log_likelihood is None else {
        "log_likelihood": {k: np.asarray(v) for k, v in log_likelihood.items()}
    }
    return az.from_dict(posterior=posterior, **extra, **kwargs)


def effective_sample_size(log_weights: Array) -> Array:
    """Kish's effective sample size $(\\sum_i w_i)^2 / \\sum_i w_i^2$ of log weights (last axis)."""
    log_weights = jnp.asarray(log_weights)
    log_sum = jnp.logaddexp.reduce(log_weights, axis=-1)
    log_sum_sq = jnp.logaddexp.reduce(2 * log_weights, axis=-1)
    return jnp.exp(2 * log_sum - log_sum_sq)

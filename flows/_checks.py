"""Input validation shared by the flows package (run at the Python boundary, before tracing)."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from probinf.validation import check_key, check_positive_int

__all__ = [
    "check_positive_int",
    "check_optional_context_dim",
    "check_positive_float",
    "check_key",
    "check_context",
    "check_points",
]


def check_optional_context_dim(value: object) -> int | None:
    """``None`` (an unconditional flow) or a positive context dimension."""
    return None if value is None else check_positive_int(value, "context_dim")


def check_positive_float(value: object, name: str) -> float:
    """``value`` as a finite float ``> 0``, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite positive number, got {value!r}")
    return float(value)


def check_points(x: object, dim: int, name: str = "x") -> jax.Array:
    """``x`` as an array whose last axis has length ``dim``."""
    x = jnp.asarray(x)
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"`{name}` must have last axis of length {dim} (the flow's dim), got shape {tuple(x.shape)}"
        )
    return x


def check_context(context: object, context_dim: int | None) -> jax.Array | None:
    """Validate the ``context`` argument of a (possibly) conditional flow.

    An unconditional flow (``context_dim is None``) accepts only ``context=None``;
    a conditional one needs an array whose last axis has length ``context_dim``.
    """
    if context_dim is None:
        if context is not None:
            raise ValueError(
                "`context` was given but this flow is unconditional (built without context_dim)"
            )
        return None
    if context is None:
        raise ValueError(
            f"`context` is required: this flow is conditional on a context of length {context_dim}"
        )
    context = jnp.asarray(context)
    if context.ndim == 0 or context.shape[-1] != context_dim:
        raise ValueError(
            f"`context` must have last axis of length {context_dim} (the flow's context_dim), "
            f"got shape {tuple(context.shape)}"
        )
    if not jnp.issubdtype(context.dtype, jnp.floating):
        context = context.astype(jnp.result_type(float))  # the default float (float64 under x64)
    return context

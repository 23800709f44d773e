"""Small pytree helpers shared by the training loops."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu

__all__ = ["all_finite"]


def all_finite(tree) -> jax.Array:
    """True when every inexact array in ``tree`` is free of NaN and infinity."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)

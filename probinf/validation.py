"""Input validation for every package (probinf, flows, circuits, amortized): one check per kind.

``check_positive_int`` (counts, with a ``minimum``), ``check_key`` (one typed or raw PRNG key),
``check_finite`` (arrays, naming the first bad entry), ``raise_if`` (checks that also run
inside ``jit``), ``check_activation`` (the activation rule) and ``is_traced`` (whether values
are known yet); every message names the argument.

Concrete values are checked at once, at the Python boundary, with a ``ValueError``
that names the argument and the offending entry. Traced values (inside ``jit``,
``vmap``, ``grad``) are unknown until run time: `check_finite` lets them through,
and `raise_if` checks them with `equinox.branched_error_if`. Under
`equinox.filter_jit` that error is re-raised as ``EquinoxRuntimeError`` with the
message alone; under plain ``jax.jit`` JAX wraps it in a ``JaxRuntimeError`` whose
text holds the same message (after the callback's stack).
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

__all__ = ["check_activation", "check_positive_int", "check_key", "check_finite", "first_entry", "is_traced",
           "raise_if"]


def is_traced(*values) -> bool:
    """Whether any leaf of ``values`` (pytrees allowed) is a JAX tracer: inside ``jit``,
    ``vmap`` or ``grad`` its value is unknown until run time, so only shapes can be checked.
    The one such test of every package."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(values))


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (a Python or NumPy int, not a bool), or a
    ValueError naming the argument. The one integer check of every package."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        wanted = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
        raise ValueError(f"`{name}` must be {wanted}, got {value!r}")
    return int(value)


def check_key(key, name: str = "key"):
    """``key`` unchanged if it is one JAX PRNG key, typed (``jax.random.key``, shape ``()``)
    or raw (``jax.random.PRNGKey``, ``uint32[2]``); else a TypeError naming the argument.
    The one key check of every package."""
    if isinstance(key, jax.Array):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == jnp.uint32 and key.shape == (2,):
            return key
        got = f"an array of dtype {key.dtype} and shape {tuple(key.shape)}"
    else:
        got = f"{type(key).__name__} {key!r}"
    raise TypeError(f"`{name}` must be one JAX PRNG key (jax.random.key(0) or "
                    f"jax.random.PRNGKey(0)), got {got}")


def check_activation(activation, name: str = "activation"):
    """``activation`` unchanged if it is callable, else a TypeError naming the argument.

    The one activation rule of every package: an activation is a function applied
    element-wise (``jax.nn.relu``, ``jnp.tanh``, a function of the user's own module), as
    in ``equinox.nn``. :func:`probinf.save` stores it by reference, so a lambda or a
    nested function trains but cannot be saved.
    """
    if not callable(activation):
        raise TypeError(f"`{name}` must be a function such as jax.nn.relu or jnp.tanh, "
                        f"got {type(activation).__name__} {activation!r}")
    return activation


def first_entry(values: np.ndarray, where: np.ndarray) -> str:
    """``"nan at index (0, 2)"``: the first entry of ``values`` where ``where`` holds."""
    index = tuple(int(i) for i in np.argwhere(where)[0])
    return f"{values[index]} at index {index[0] if len(index) == 1 else index}"


def check_finite(value: ArrayLike, name: str) -> ArrayLike:
    """``value`` unchanged; a ValueError naming ``name`` if a concrete array holds NaN or infinity."""
    if is_traced(value):
        return value
    values = np.asarray(value)
    if np.issubdtype(values.dtype, np.inexact):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"`{name}` must be finite, got {first_entry(values, bad)}")
    return value


def raise_if(value: Array, checks: Sequence[tuple[ArrayLike, str]]) -> Array:
    """``value`` unchanged, after a ``ValueError`` with the message of the first true check.

    Each check is ``(invalid, message)`` with a boolean scalar ``invalid``. Concrete checks
    raise at once; traced ones at run time through `equinox.branched_error_if` (tied to
    ``value``, so use the returned array for the check to run).
    """
    flags = [flag for flag, _ in checks]
    messages = tuple(message for _, message in checks)
    if is_traced(*flags):
        stacked = jnp.stack([jnp.asarray(flag, bool) for flag in flags])
        return eqx.branched_error_if(value, jnp.any(stacked), jnp.argmax(stacked), messages)
    for flag, message in checks:
        if bool(flag):
            raise ValueError(message)
    return value

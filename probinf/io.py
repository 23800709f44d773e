"""Save and reload fitted models (families, flows, circuits, ...) exactly."""

from __future__ import annotations

import os
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from probinf._version import __version__

__all__ = ["save", "load"]

_FORMAT = "probinf-pytree-v1"


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write any pytree of arrays and modules (an equinox family, a flow, ...) to ``path``.

    Arrays are stored bit-for-bit; the module classes, and any function the object
    holds, are stored by reference (module and name), so loading needs the same
    packages importable. Loading runs pickle: only load files you trust.

    Raises:
        TypeError: if part of ``obj`` cannot be stored (the message names it and says
            why): typically a lambda, a nested function or a closure, such as the log
            density of a target from ``from_logdensity(lambda z: ...)`` or
            ``from_numpyro``. Nothing is written then.
    """
    arrays_as_numpy = jax.tree_util.tree_map(
        lambda x: ("__jax__", np.asarray(x)) if isinstance(x, jax.Array) else x, obj
    )
    payload = {"format": _FORMAT, "version": __version__, "tree": arrays_as_numpy}
    try:
        data = pickle.dumps(payload)  # before opening the file, so a failure leaves none
    except (pickle.PicklingError, AttributeError, TypeError) as err:
        raise TypeError(_unsavable(obj, err)) from err
    with open(path, "wb") as f:
        f.write(data)


def _unsavable(obj: Any, err: Exception) -> str:
    """Which part of ``obj`` pickle cannot store, and why."""
    for key_path, leaf in jax.tree_util.tree_leaves_with_path(obj):
        if isinstance(leaf, jax.Array):
            continue
        try:
            pickle.dumps(leaf)
        except (pickle.PicklingError, AttributeError, TypeError) as leaf_err:
            where, culprit, reason = f"obj{jax.tree_util.keystr(key_path)}", leaf, leaf_err
            break
    else:  # a static field or the type itself
        where, culprit, reason = "a static part of `obj`", type(obj), err
    hint = (
        " Functions are saved by reference (module and name), so a lambda, a nested function "
        "or a closure (e.g. the log density of from_logdensity(lambda ...) or from_numpyro) "
        "cannot be saved: define it with `def` at the top level of a module, or save the "
        "fitted parts (the family, `target.params`) and rebuild the target when loading."
        if callable(culprit) else ""
    )
    return f"`obj` cannot be saved: {where} is {culprit!r}, which pickle cannot store ({reason}).{hint}"


def load(path: str | os.PathLike) -> Any:
    """Read back an object written by `save`."""
    with open(path, "rb") as f:
        payload = pickle.load(f)
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"`path` {os.fspath(path)!r} is not a file written by probinf.save")

    def is_marked(x):
        return isinstance(x, tuple) and len(x) == 2 and x[0] == "__jax__"

    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x[1]) if is_marked(x) else x, payload["tree"], is_leaf=is_marked
    )

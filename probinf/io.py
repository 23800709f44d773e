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

    Arrays are stored bit-for-bit; the module classes are stored by reference, so
    loading needs the same packages importable. Loading runs pickle: only load
    files you trust.
    """
    arrays_as_numpy = jax.tree_util.tree_map(
        lambda x: ("__jax__", np.asarray(x)) if isinstance(x, jax.Array) else x, obj
    )
    with open(path, "wb") as f:
        pickle.dump({"format": _FORMAT, "version": __version__, "tree": arrays_as_numpy}, f)


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

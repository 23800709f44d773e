"""Validation at the Python boundary, shared by inference, learning and the generative helpers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from probinf.validation import check_key, is_traced  # noqa: F401  (re-exported for the pcn modules)

METHODS = ("euler", "heun")
INITS = ("forward", "random")


def check_steps(steps, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(
            f"`{name}` must be an integer >= 1 (the number of inference steps T), got {steps!r}"
        )
    return int(steps)


def check_step_size(step_size, name: str = "step_size") -> float:
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float, np.floating)) or not (
        math.isfinite(step_size) and step_size > 0
    ):
        raise ValueError(f"`{name}` must be a positive finite number, got {step_size!r}")
    return float(step_size)


def check_choice(value, choices, name: str) -> str:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")
    return value



def _as_array(value, name: str):
    """A jax array (under ``jit``) or a NumPy array: validation works on host copies so that
    it compiles nothing."""
    if is_traced(value):
        return value
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be an array, got {type(value).__name__}") from None


def _to_float(array, original, name: str):
    """The validated values as a float jax array (the original array when it already is one)."""
    dtype = jnp.result_type(float)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
            or array.dtype == np.bool_):
        raise TypeError(f"`{name}` must hold numbers, got dtype {array.dtype}")
    if is_traced(array):
        return array.astype(dtype)
    finite = np.isfinite(array)
    if not finite.all():
        raise ValueError(f"`{name}` holds {int((~finite).sum())} non-finite values (NaN or inf)")
    if isinstance(original, jax.Array) and original.dtype == dtype:
        return original
    return jax.device_put(array.astype(dtype))  # device_put compiles nothing


def check_node_data(net, x=None, y=None, y_mask=None, *, need_y: bool = False):
    """Validate and convert the clamped values of node 0 (``x``) and node L (``y``).

    Returns ``(x, y, y_mask, batch_size)`` as float arrays (``None`` where absent). A
    categorical network accepts integer labels ``(batch,)`` for ``y`` (one-hot encoded here)
    or label distributions ``(batch, classes)``.
    """
    first, last = net.node_shapes[0], net.node_shapes[-1]
    if x is None and y is None:
        raise ValueError("pass `x` (node 0), `y` (the last node) or both: no node is clamped")
    if need_y and y is None:
        raise ValueError(f"`y` is required: the values of the last node, shape (batch, {', '.join(map(str, last))})")
    sizes = {}
    if x is not None:
        x_raw = _as_array(x, "x")
        if x_raw.shape[1:] != first or x_raw.ndim != len(first) + 1:
            raise ValueError(
                f"shape mismatch: `x` must have shape (batch, {', '.join(map(str, first))}) "
                f"to match node 0 of the network, got {tuple(x_raw.shape)}"
            )
        x = _to_float(x_raw, x, "x")
        sizes["x"] = x.shape[0]
    if y is not None:
        y_raw = _as_array(y, "y")
        if net.output == "categorical" and np.issubdtype(y_raw.dtype, np.integer):
            num_classes = last[0]
            if y_raw.ndim != 1:
                raise ValueError(
                    f"integer labels `y` must have shape (batch,), got {tuple(y_raw.shape)}"
                )
            if is_traced(y_raw):
                y = jax.nn.one_hot(y_raw, num_classes, dtype=jnp.result_type(float))
            else:
                if y_raw.size and (y_raw.min() < 0 or y_raw.max() >= num_classes):
                    raise ValueError(
                        f"labels `y` must lie in [0, {num_classes - 1}] for a network with "
                        f"{num_classes} classes, got values in [{y_raw.min()}, {y_raw.max()}]"
                    )
                one_hot = np.eye(num_classes, dtype=np.dtype(jnp.result_type(float)))[y_raw]
                y = jax.device_put(one_hot)
        else:
            if y_raw.shape[1:] != last or y_raw.ndim != len(last) + 1:
                raise ValueError(
                    f"shape mismatch: `y` must have shape (batch, {', '.join(map(str, last))}) "
                    f"to match the last node of the network, got {tuple(y_raw.shape)}"
                )
            y = _to_float(y_raw, y, "y")
        sizes["y"] = y.shape[0]
    if y_mask is not None:
        if y is None:
            raise ValueError("`y_mask` needs `y`: the partially observed values of the last node")
        if net.output == "categorical":
            raise ValueError("`y_mask` (partial clamping) needs a Gaussian last node, not a categorical one")
        mask = _as_array(y_mask, "y_mask")
        if mask.shape != y.shape and mask.shape != y.shape[1:]:
            raise ValueError(
                f"shape mismatch: `y_mask` must have the shape of `y` {tuple(y.shape)} or of "
                f"one row {tuple(y.shape[1:])}, got {tuple(mask.shape)}"
            )
        dtype = jnp.result_type(float)
        if is_traced(mask):
            y_mask = jnp.broadcast_to(mask, y.shape).astype(dtype)
        else:
            if mask.dtype != np.bool_ and not np.isin(mask, (0, 1)).all():
                raise ValueError("`y_mask` must be boolean (True where `y` is observed)")
            y_mask = jax.device_put(np.broadcast_to(mask, y.shape).astype(np.dtype(dtype)))
    if len(set(sizes.values())) > 1:
        raise ValueError(
            f"`x` and `y` must have the same number of rows, got {sizes['x']} and {sizes['y']}"
        )
    batch = next(iter(sizes.values()))
    if batch < 1:
        raise ValueError("`x`/`y` hold no rows")
    return x, y, y_mask, batch


def float_scalar(value) -> np.ndarray:
    """A float scalar in the default float dtype, as NumPy (no compilation when passed to jit)."""
    return np.asarray(value, dtype=np.dtype(jnp.result_type(float)))

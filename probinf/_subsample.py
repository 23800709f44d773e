"""Per-row log-likelihoods of a subsampled numpyro plate and the Taylor control variate
of `probinf.Target.with_control_variate`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array


def plate_rows(model: Callable, rows: Mapping[str, Array]) -> Callable:
    """``model`` with each named plate at the given row indices (scale ``N / len(rows)``).

    numpyro's ``substitute`` would do, but warns that the rows' count differs from the
    declared ``subsample_size``; here the count is the declared one."""
    from numpyro.primitives import Messenger

    class _PlateRows(Messenger):
        def process_message(self, msg: dict) -> None:
            if msg["type"] == "plate" and msg["name"] in rows:
                msg["value"] = rows[msg["name"]]
                msg["args"] = (msg["args"][0], msg["value"].shape[0])

    return _PlateRows(model)


def numpyro_row_log_likelihood(model: Callable, args: tuple, kwargs: dict, plate: Any,
                               unravel: Callable, dtype: Any) -> Callable[[Array, Array], Array]:
    """``fn(z, indices) -> (B,)``: the log-likelihood of each selected row of ``plate``,
    unscaled by the plate's ``N / B`` (every sample site inside the plate counts:
    observations and ``numpyro.factor`` terms; masks apply)."""
    from numpyro import handlers
    from numpyro.infer.util import constrain_fn

    def row_log_likelihood(z: Array, indices: Array) -> Array:
        model_at = plate_rows(model, {plate.name: indices})
        values = constrain_fn(model_at, args, kwargs, unravel(jnp.asarray(z, dtype)))
        trace = handlers.trace(handlers.substitute(model_at, data=values)).get_trace(
            *args, **kwargs)
        rows = jnp.zeros(indices.shape[0], dtype)
        for name, site in trace.items():
            if site["type"] != "sample":
                continue
            frames = [f for f in site["cond_indep_stack"] if f.name == plate.name]
            if not frames:
                continue
            log_prob = site["fn"].log_prob(site["value"])
            batch_ndim = jnp.ndim(log_prob)
            axis = frames[0].dim + batch_ndim
            if not 0 <= axis < batch_ndim or log_prob.shape[axis] != indices.shape[0]:
                raise ValueError(
                    f"site '{name}' in plate '{plate.name}' has log-probability shape "
                    f"{tuple(jnp.shape(log_prob))}: no axis of the plate's {indices.shape[0]} "
                    "rows at its plate dim, so its rows cannot be told apart")
            per_row = jnp.moveaxis(log_prob, axis, 0).reshape(indices.shape[0], -1).sum(1)
            # site["scale"] holds the plate's N / B times any scale of the user's own.
            own_scale = 1.0 if site["scale"] is None else site["scale"] * (
                indices.shape[0] / plate.size)
            rows = rows + own_scale * per_row
        return rows

    return row_log_likelihood


# Rows x dim per chunk of the full-data Hessian pass.
ROW_CHUNK_ELEMENTS = 1 << 16


class TaylorControlVariate(eqx.Module):
    """The difference estimator around ``reference`` (see `Target.with_control_variate`).

    Attributes:
        reference: the expansion point $z^\\star$.
        full_value, full_gradient, full_hessian: $\\sum_i \\ell_i$, its gradient and
            Hessian at $z^\\star$ over all $N$ rows.
    """

    reference: Array
    full_value: Array
    full_gradient: Array
    full_hessian: Array
    plate: Any = eqx.field(static=True)

    @classmethod
    def build(cls, target: Any, reference: Array) -> TaylorControlVariate:
        plates = target.subsample_plates
        rows = target.numpyro_model.row_log_likelihood
        if len(plates) != 1 or rows is None:
            raise ValueError(
                "`with_control_variate` supports models with exactly one subsampled plate; "
                f"this model has {len(plates)}: {[p.name for p in plates]}")
        plate = plates[0]
        # The N rows in chunks, so the Hessian pass holds dim x chunk values, not dim x N.
        chunk = max(1, min(plate.size, ROW_CHUNK_ELEMENTS // reference.shape[0]))
        num_chunks = -(-plate.size // chunk)
        padded = jnp.arange(num_chunks * chunk)
        indices = (padded % plate.size).reshape(num_chunks, chunk)
        weights = (padded < plate.size).astype(reference.dtype).reshape(num_chunks, chunk)

        def chunk_sums(chunk_rows):
            def total(z):
                return jnp.sum(chunk_rows[1] * rows(z, chunk_rows[0]))

            value, gradient = jax.value_and_grad(total)(reference)
            return value, gradient, jax.hessian(total)(reference)

        sums = jax.jit(lambda: jax.lax.map(chunk_sums, (indices, weights)))()
        value, gradient, hessian = (part.sum(0) for part in sums)
        for what, array in (("log-likelihood", value), ("gradient", gradient),
                            ("Hessian", hessian)):
            if not bool(jnp.all(jnp.isfinite(array))):
                raise ValueError(f"the full-data {what} is not finite at `reference`; choose a "
                                 "reference point where the model is finite")
        return cls(reference, value, gradient, hessian, plate)

    def log_density(self, target: Any, z: Array) -> Array:
        """The control-variate estimate of $\\log \\tilde p(z)$ on ``target.batch``."""
        indices = target.batch[self.plate.name]
        rows = target.numpyro_model.row_log_likelihood
        delta = z - self.reference
        # Value, first and second directional derivatives of every batch row along delta.
        at_reference = rows(self.reference, indices)

        def along(u):
            return jax.jvp(lambda v: rows(v, indices), (self.reference + u,), (delta,))[1]

        first, second = jax.jvp(along, (jnp.zeros_like(z),), (delta,))
        row_proxy = at_reference + first + 0.5 * second
        full_proxy = (self.full_value + self.full_gradient @ delta
                      + 0.5 * delta @ self.full_hessian @ delta)
        scale = self.plate.size / indices.shape[0]
        plain = target.log_density_fn(z, target.batch)
        return plain - scale * row_proxy.sum() + full_proxy

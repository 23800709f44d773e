"""Input layers: the univariate distributions at the leaves of a circuit.

An input layer is a small, hashable description (a frozen dataclass); its
parameters live in the compiled :class:`circuits.Circuit` as arrays with a leading
``(num_slots, num_units)`` shape, one *slot* per (leaf region, variable) pair, so
all input units are evaluated by one batched operation. Every input distribution
is normalised, so a missing variable contributes ``log 1 = 0`` (marginalisation).

Each layer provides, for the folded arrays:

* ``log_prob(params, x)`` — ``x`` of shape ``(S, B)`` to log-probabilities ``(S, B, K)``;
* ``mode(params)`` and its log-probability (used by MAP);
* ``sample(key, params, units)`` — one draw per slot and sample from the chosen units;
* expected sufficient statistics and the (stochastic) EM update, with a pseudocount.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from probinf.validation import check_positive_int

__all__ = ["InputLayer", "Bernoulli", "Categorical", "Gaussian", "Binomial"]

_LOG_2PI = math.log(2.0 * math.pi)
# Categorical layers with at most this many categories evaluate by a one-hot product.
_ONE_HOT_MAX_CATEGORIES = 32


def _gather_units(array, units):
    """``array[s, units[s, b]]`` for ``array`` of shape ``(S, K, ...)``, ``units`` ``(S, B)``."""
    return jnp.take_along_axis(
        array, units.reshape(units.shape + (1,) * (array.ndim - 2)), axis=1
    )


def _blend(old, new, step_size):
    return new if step_size is None else (1.0 - step_size) * old + step_size * new


class InputLayer(abc.ABC):
    """Base class of input layers (see the module docstring)."""

    #: True for discrete layers (values are integers).
    discrete: bool = True

    @abc.abstractmethod
    def init_params(self, key, num_slots: int, num_units: int, data_slots=None) -> dict:
        """Random initial parameters; ``data_slots`` ``(N, S)`` (optional) centres them on data."""

    @abc.abstractmethod
    def log_prob(self, params: dict, x):
        """Log-probabilities ``(S, B, K)`` of values ``x`` ``(S, B)`` under every unit."""

    @abc.abstractmethod
    def mode(self, params: dict):
        """The most probable value of every unit, ``(S, K)``."""

    @abc.abstractmethod
    def sample(self, key, params: dict, units):
        """One draw per slot and sample from unit ``units[s, b]`` ``(S, B)``; returns ``(S, B)``."""

    @abc.abstractmethod
    def check_values(self, x: np.ndarray, observed: np.ndarray, name: str) -> None:
        """Raise a ValueError naming the variable if an observed value is outside the support."""

    @abc.abstractmethod
    def sufficient_statistics(self, responsibility, x) -> dict:
        """Expected statistics ``sum_b r[s,b,k] T(x[s,b])`` from responsibilities ``(S, B, K)``."""

    @abc.abstractmethod
    def em_update(self, params: dict, stats: dict, pseudocount: float, step_size=None) -> dict:
        """The M-step, blended with the old parameters by ``step_size`` (``None``: replace)."""

    def mode_log_prob(self, params: dict):
        """``log p_k(mode_k)`` for every unit, ``(S, K)``."""
        mode = self.mode(params)
        num_units = mode.shape[1]
        # Evaluate unit k at its own mode: a (S, K, K) table, take the diagonal.
        table = self.log_prob(params, mode)  # (S, K(values), K(units))
        return jnp.diagonal(table, axis1=1, axis2=2)[..., :num_units]

    def value_dtype(self):
        """dtype of drawn values: int32 for discrete inputs, else the default float."""
        return jnp.int32 if self.discrete else jnp.result_type(float)


def _check_discrete(x, observed, name, upper, layer):
    values = np.where(observed, x, 0)
    finite = np.isfinite(values)
    integer = finite & (values == np.round(np.where(finite, values, 0)))
    bad = observed & (~integer | (values < 0) | (values > upper))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"`{name}` variable {col} has value {float(x[row, col]):g} (row {row}) outside the support "
            f"{{0, ..., {upper}}} of the {layer} input layer"
        )


@dataclass(frozen=True)
class Bernoulli(InputLayer):
    """Bernoulli units, ``p_k(x) = sigmoid(l_k)^x (1 - sigmoid(l_k))^(1-x)``, ``x`` in {0, 1}.

    Parameters: ``logits`` ``(S, K)``.
    """

    def init_params(self, key, num_slots, num_units, data_slots=None):
        if data_slots is None:
            probs = jax.random.uniform(key, (num_slots, num_units), minval=0.25, maxval=0.75)
        else:
            mean = (jnp.mean(data_slots, axis=0) + 0.1) / 1.2
            noise = jax.random.uniform(key, (num_slots, num_units), minval=-0.15, maxval=0.15)
            probs = jnp.clip(mean[:, None] + noise, 0.02, 0.98)
        return {"logits": jnp.log(probs) - jnp.log1p(-probs)}

    def log_prob(self, params, x):
        # log p = log(1-p) + x (log p - log(1-p)): an outer product per slot, whose
        # transpose (the backward pass) is a batched matrix product, not a reduction.
        log_one = jax.nn.log_sigmoid(params["logits"])
        log_zero = jax.nn.log_sigmoid(-params["logits"])
        return (jnp.einsum("sb,sk->sbk", x.astype(log_one.dtype), log_one - log_zero)
                + log_zero[:, None, :])

    def mode(self, params):
        return (params["logits"] > 0).astype(jnp.int32)

    def mode_log_prob(self, params):
        return jax.nn.log_sigmoid(jnp.abs(params["logits"]))

    def sample(self, key, params, units):
        logits = _gather_units(params["logits"], units)
        return jax.random.bernoulli(key, jax.nn.sigmoid(logits)).astype(jnp.int32)

    def check_values(self, x, observed, name):
        _check_discrete(x, observed, name, 1, "Bernoulli")

    def sufficient_statistics(self, responsibility, x):
        x = x.astype(responsibility.dtype)[..., None]
        return {"count": responsibility.sum(1), "ones": (responsibility * x).sum(1)}

    def em_update(self, params, stats, pseudocount, step_size=None):
        total = stats["count"] + 2.0 * pseudocount
        old = jax.nn.sigmoid(params["logits"])
        new = jnp.where(total > 0, (stats["ones"] + pseudocount) / jnp.where(total > 0, total, 1.0),
                        old)
        probs = jnp.clip(_blend(old, new, step_size), 1e-6, 1 - 1e-6)
        return {"logits": jnp.log(probs) - jnp.log1p(-probs)}


@dataclass(frozen=True)
class Categorical(InputLayer):
    """Categorical units over ``{0, ..., num_categories - 1}``, ``p_k(x) = softmax(l_k)[x]``.

    Parameters: ``logits`` ``(S, K, num_categories)``.
    """

    num_categories: int = 2

    def __post_init__(self):
        if isinstance(self.num_categories, bool) or not isinstance(
            self.num_categories, (int, np.integer)
        ) or self.num_categories < 2:
            raise ValueError(f"`num_categories` must be an integer >= 2, got {self.num_categories!r}")

    def init_params(self, key, num_slots, num_units, data_slots=None):
        shape = (num_slots, num_units, self.num_categories)
        if data_slots is None:
            return {"logits": jnp.log(jax.random.dirichlet(key, jnp.full(self.num_categories, 5.0),
                                                           shape[:2]))}
        counts = jax.vmap(lambda col: jnp.bincount(col, length=self.num_categories))(
            jnp.asarray(data_slots, jnp.int32).T)
        freq = (counts + 1.0) / (counts.sum(-1, keepdims=True) + self.num_categories)
        noise = jax.random.dirichlet(key, jnp.full(self.num_categories, 5.0), shape[:2])
        return {"logits": jnp.log(0.7 * freq[:, None, :] + 0.3 * noise)}

    def log_prob(self, params, x):
        log_probs = jax.nn.log_softmax(params["logits"], axis=-1)  # (S, K, C)
        num_slots, num_units, num_categories = log_probs.shape
        if num_categories <= _ONE_HOT_MAX_CATEGORIES:
            # One-hot matrix product: its backward is a matrix product too (no scatter).
            # Zero probabilities are clamped to the lowest float (0 * -inf would be NaN)
            # and mapped back to -inf afterwards.
            lowest = jnp.finfo(log_probs.dtype).min
            onehot = jax.nn.one_hot(x.astype(jnp.int32), num_categories, dtype=log_probs.dtype)
            values = jnp.einsum("sbc,skc->sbk", onehot, jnp.maximum(log_probs, lowest))
            return jnp.where(values <= lowest, -jnp.inf, values)
        # A 1-d gather of K-rows from the flattened (S * C, K) table.
        table = jnp.swapaxes(log_probs, 1, 2).reshape(num_slots * num_categories, num_units)
        flat = (jnp.arange(num_slots)[:, None] * num_categories
                + jnp.clip(x.astype(jnp.int32), 0, num_categories - 1))
        return jnp.take(table, flat.reshape(-1), axis=0, mode="clip").reshape(
            x.shape + (num_units,))

    def mode(self, params):
        return jnp.argmax(params["logits"], axis=-1).astype(jnp.int32)

    def mode_log_prob(self, params):
        return jnp.max(jax.nn.log_softmax(params["logits"], axis=-1), axis=-1)

    def sample(self, key, params, units):
        logits = _gather_units(params["logits"], units)  # (S, B, C)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    def check_values(self, x, observed, name):
        _check_discrete(x, observed, name, self.num_categories - 1, "Categorical")

    def sufficient_statistics(self, responsibility, x):
        num_slots, _, num_units = responsibility.shape
        slots = jnp.broadcast_to(jnp.arange(num_slots)[:, None], x.shape)
        counts = jnp.zeros((num_slots, self.num_categories, num_units), responsibility.dtype)
        counts = counts.at[slots, x.astype(jnp.int32)].add(responsibility)
        return {"counts": jnp.swapaxes(counts, 1, 2)}  # (S, K, C)

    def em_update(self, params, stats, pseudocount, step_size=None):
        counts = stats["counts"] + pseudocount
        total = counts.sum(-1, keepdims=True)
        old = jax.nn.softmax(params["logits"], axis=-1)
        new = jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), old)
        probs = _blend(old, new, step_size)
        return {"logits": jnp.log(jnp.maximum(probs, 1e-30))}


@dataclass(frozen=True)
class Gaussian(InputLayer):
    """Gaussian units ``N(x; mu_k, sigma_k^2)`` with ``sigma_k = exp(log_scale_k)``.

    Parameters: ``loc`` and ``log_scale`` ``(S, K)``. EM keeps ``sigma >= min_scale``.
    """

    min_scale: float = 1e-3
    discrete = False

    def init_params(self, key, num_slots, num_units, data_slots=None):
        if data_slots is None:
            loc = jax.random.normal(key, (num_slots, num_units))
            return {"loc": loc, "log_scale": jnp.zeros((num_slots, num_units))}
        mean = jnp.mean(data_slots, axis=0)
        std = jnp.maximum(jnp.std(data_slots, axis=0), self.min_scale)
        loc = mean[:, None] + std[:, None] * jax.random.normal(key, (num_slots, num_units))
        return {"loc": loc, "log_scale": jnp.broadcast_to(jnp.log(std)[:, None], loc.shape)}

    def log_prob(self, params, x):
        loc, log_scale = params["loc"][:, None, :], params["log_scale"][:, None, :]
        z = (x[..., None] - loc) * jnp.exp(-log_scale)
        return -0.5 * z**2 - log_scale - 0.5 * _LOG_2PI

    def mode(self, params):
        return params["loc"]

    def mode_log_prob(self, params):
        return -params["log_scale"] - 0.5 * _LOG_2PI

    def sample(self, key, params, units):
        loc = _gather_units(params["loc"], units)
        scale = jnp.exp(_gather_units(params["log_scale"], units))
        return loc + scale * jax.random.normal(key, loc.shape)

    def check_values(self, x, observed, name):
        bad = observed & ~np.isfinite(np.where(observed, x, 0.0))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ValueError(f"`{name}` variable {col} has value {float(x[row, col]):g} (row {row}); the "
                             "Gaussian input layer needs finite values")

    def sufficient_statistics(self, responsibility, x):
        x = x.astype(responsibility.dtype)[..., None]
        return {"count": responsibility.sum(1), "sum": (responsibility * x).sum(1),
                "sum_sq": (responsibility * x**2).sum(1)}

    def em_update(self, params, stats, pseudocount, step_size=None):
        # The pseudocount pulls the variance towards 1 (a weak inverse-gamma prior).
        count = stats["count"]
        positive = count > 0
        safe = jnp.where(positive, count, 1.0)
        old_mean = params["loc"]
        old_second = jnp.exp(2 * params["log_scale"]) + old_mean**2
        mean = jnp.where(positive, stats["sum"] / safe, old_mean)
        variance = (stats["sum_sq"] - count * mean**2 + pseudocount) / (count + pseudocount)
        second = jnp.where(positive | (pseudocount > 0), variance + mean**2, old_second)
        mean = _blend(old_mean, mean, step_size)
        second = _blend(old_second, second, step_size)
        variance = jnp.maximum(second - mean**2, self.min_scale**2)
        return {"loc": mean, "log_scale": 0.5 * jnp.log(variance)}


@dataclass(frozen=True)
class Binomial(InputLayer):
    """Binomial units ``Bin(x; n, sigmoid(l_k))`` over ``{0, ..., total_count}``.

    Parameters: ``logits`` ``(S, K)``.
    """

    total_count: int = 1

    def __post_init__(self):
        check_positive_int(self.total_count, "total_count")

    def init_params(self, key, num_slots, num_units, data_slots=None):
        if data_slots is None:
            probs = jax.random.uniform(key, (num_slots, num_units), minval=0.25, maxval=0.75)
        else:
            mean = (jnp.mean(data_slots, axis=0) / self.total_count + 0.1) / 1.2
            noise = jax.random.uniform(key, (num_slots, num_units), minval=-0.15, maxval=0.15)
            probs = jnp.clip(mean[:, None] + noise, 0.02, 0.98)
        return {"logits": jnp.log(probs) - jnp.log1p(-probs)}

    def _log_binom(self, x):
        n = self.total_count
        return gammaln(n + 1.0) - gammaln(x + 1.0) - gammaln(n - x + 1.0)

    def log_prob(self, params, x):
        log_p = jax.nn.log_sigmoid(params["logits"])
        log_q = jax.nn.log_sigmoid(-params["logits"])
        x = x.astype(log_p.dtype)
        return (jnp.einsum("sb,sk->sbk", x, log_p - log_q) + self.total_count * log_q[:, None, :]
                + self._log_binom(x)[..., None])

    def mode(self, params):
        # The mode of Bin(n, p) is floor((n + 1) p) (either neighbour at ties).
        probs = jax.nn.sigmoid(params["logits"])
        return jnp.clip(jnp.floor((self.total_count + 1) * probs), 0, self.total_count).astype(
            jnp.int32)

    def sample(self, key, params, units):
        probs = jax.nn.sigmoid(_gather_units(params["logits"], units))
        return jax.random.binomial(key, self.total_count, probs).astype(jnp.int32)

    def check_values(self, x, observed, name):
        _check_discrete(x, observed, name, self.total_count, "Binomial")

    def sufficient_statistics(self, responsibility, x):
        x = x.astype(responsibility.dtype)[..., None]
        return {"count": responsibility.sum(1), "successes": (responsibility * x).sum(1)}

    def em_update(self, params, stats, pseudocount, step_size=None):
        total = self.total_count * stats["count"] + 2.0 * pseudocount
        old = jax.nn.sigmoid(params["logits"])
        new = jnp.where(total > 0,
                        (stats["successes"] + pseudocount) / jnp.where(total > 0, total, 1.0), old)
        probs = jnp.clip(_blend(old, new, step_size), 1e-6, 1 - 1e-6)
        return {"logits": jnp.log(probs) - jnp.log1p(-probs)}

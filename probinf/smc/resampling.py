r"""Resampling schemes: draw ancestor indices from normalised particle weights.

Every scheme has one signature ``scheme(key, log_weights, n) -> ancestors``: given
``m`` unnormalised log weights it returns ``n`` indices in ``[0, m)`` whose offspring
counts $N_i = \#\{k : a_k = i\}$ are unbiased,

$$
\mathbb E[N_i] = n\, w_i, \qquad w_i = e^{\ell_i} / \textstyle\sum_j e^{\ell_j}.
$$

The schemes differ in the variance of $N_i$ (multinomial > stratified >=
systematic in practice; residual in between). All are ``jit``-able with a static
``n``, work in log space, and cost $O((n + m)\log m)$. See Douc, Cappé and
Moulines (2005), *Comparison of resampling schemes for particle filtering*, and
Chopin and Papaspiliopoulos (2020), *An Introduction to Sequential Monte Carlo*, ch. 9.

Invalid weights (a NaN, a ``+inf``, or every weight ``-inf``) raise an error whose
message names ``log_weights`` and what is wrong with it: a ``ValueError`` at once for
concrete arrays; inside ``jit``, at run time through `equinox.branched_error_if`, which
`equinox.filter_jit` re-raises as ``EquinoxRuntimeError`` with that message alone
(plain ``jax.jit`` wraps the same message in a ``JaxRuntimeError``, after the
callback's stack: wrap with `equinox.filter_jit` to read it first).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from probinf.diagnostics import effective_sample_size
from probinf.validation import raise_if

__all__ = [
    "multinomial",
    "stratified",
    "systematic",
    "residual",
    "resample",
    "SCHEMES",
    "effective_sample_size",
    "normalize_log_weights",
]


def normalize_log_weights(log_weights: Float[Array, " m"]) -> Float[Array, " m"]:
    """Log of the normalised weights, $\\ell_i - \\log\\sum_j e^{\\ell_j}$."""
    return jax.nn.log_softmax(log_weights)


def _check_n(n, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`{name}` must be a positive Python int (the number of draws), got {n!r}")
    return int(n)


def _check_log_weights(log_weights) -> Array:
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim != 1 or log_weights.shape[0] < 1:
        raise ValueError(
            f"`log_weights` must be a non-empty 1-d array of m log weights, got shape "
            f"{tuple(log_weights.shape)}"
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))  # float64 under x64
    cannot = "`log_weights` cannot be normalised to resampling probabilities: "
    return raise_if(log_weights, [
        (jnp.any(jnp.isnan(log_weights)),
         cannot + "it holds a NaN (a weight that could not be computed)"),
        (jnp.any(log_weights == jnp.inf), cannot + "it holds +inf (an unbounded weight)"),
        (jnp.all(log_weights == -jnp.inf),
         cannot + "every weight is -inf (no particle has positive weight)"),
    ])


def _cdf(log_weights: Float[Array, " m"]) -> Float[Array, " m"]:
    # Normalising by the last entry makes cdf[-1] exactly 1, so a uniform u < 1
    # never falls beyond the last particle with positive weight.
    cdf = jnp.cumsum(jax.nn.softmax(log_weights))
    return cdf / cdf[-1]


def _invert_cdf(cdf: Float[Array, " m"], uniforms: Float[Array, " n"]) -> Int[Array, " n"]:
    # First index whose cdf exceeds u: zero-weight particles (flat cdf steps) are never drawn.
    index = jnp.searchsorted(cdf, uniforms, side="right")
    return jnp.clip(index, 0, cdf.shape[0] - 1).astype(jnp.int32)


def _multinomial(key, log_weights, n):
    uniforms = jax.random.uniform(key, (n,), dtype=log_weights.dtype)
    return _invert_cdf(_cdf(log_weights), uniforms)


def _stratified(key, log_weights, n):
    offsets = jax.random.uniform(key, (n,), dtype=log_weights.dtype)
    uniforms = (jnp.arange(n, dtype=log_weights.dtype) + offsets) / n
    return _invert_cdf(_cdf(log_weights), uniforms)


def _systematic(key, log_weights, n):
    offset = jax.random.uniform(key, (), dtype=log_weights.dtype)
    uniforms = (jnp.arange(n, dtype=log_weights.dtype) + offset) / n
    return _invert_cdf(_cdf(log_weights), uniforms)


def _residual(key, log_weights, n):
    expected = n * jax.nn.softmax(log_weights)
    copies = jnp.floor(expected)
    cumulative_copies = jnp.cumsum(copies)
    num_deterministic = cumulative_copies[-1]
    slot = jnp.arange(n)
    deterministic = jnp.searchsorted(cumulative_copies, slot, side="right")
    deterministic = jnp.clip(deterministic, 0, log_weights.shape[0] - 1).astype(jnp.int32)
    remainder = expected - copies
    # When n * w_i are all integers the remainder is zero and no random draw is used;
    # uniform weights there only keep the (discarded) draws finite.
    remainder = jnp.where(jnp.sum(remainder) > 0, remainder, jnp.ones_like(remainder))
    # iid (unsorted) draws, so any prefix of them is itself a multinomial sample.
    random = _multinomial(key, jnp.log(remainder), n)
    return jnp.where(slot < num_deterministic, deterministic, random)


def multinomial(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], n: int
) -> Int[Array, " n"]:
    """Multinomial resampling: ``n`` independent draws from the categorical of the weights.

    Args:
        key: PRNG key.
        log_weights: ``(m,)`` unnormalised log weights.
        n: number of ancestors to draw (static).

    Returns:
        ``(n,)`` int32 ancestor indices in ``[0, m)``.

    Raises:
        ValueError: if ``n`` is not a positive int, ``log_weights`` is not a non-empty
            1-d array, or the weights cannot be normalised.
    """
    n = _check_n(n)
    return _multinomial(key, _check_log_weights(log_weights), n)


def stratified(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], n: int
) -> Int[Array, " n"]:
    """Stratified resampling (Kitagawa, 1996): one uniform in each stratum ``[k/n, (k+1)/n)``.

    Args:
        key: PRNG key.
        log_weights: ``(m,)`` unnormalised log weights.
        n: number of ancestors to draw (static).

    Returns:
        ``(n,)`` int32 ancestor indices in ``[0, m)``, sorted.

    Raises:
        ValueError: on invalid ``n`` or ``log_weights`` (see `multinomial`).
    """
    n = _check_n(n)
    return _stratified(key, _check_log_weights(log_weights), n)


def systematic(
    key: PRNGKeyArray, log_weights: Float[Array, " m"], n: int
) -> Int[Array, " n"]:
    """Systematic resampling (Carpenter, Clifford and Fearnhead, 1999): one shared uniform.

    The points $(k + U)/n$, $k = 0..n-1$, are inverted through the weights' CDF.

    Args:
        key: PRNG key.
        log_weights: ``(m,)`` unnormalised log weights.
        n: number of ancestors to draw (static).

    Returns:
        ``(n,)`` int32 ancestor indices in ``[0, m)``, sorted.

    Raises:
        ValueError: on invalid ``n`` or ``log_weights`` (see `multinomial`).
    """
    n = _check_n(n)
    return _systematic(key, _check_log_weights(log_weights), n)


def residual(key: PRNGKeyArray, log_weights: Float[Array, " m"], n: int) -> Int[Array, " n"]:
    """Residual resampling (Liu and Chen, 1998).

    Particle ``i`` first gets $\\lfloor n w_i \\rfloor$ copies; the remaining
    $R = n - \\sum_i \\lfloor n w_i \\rfloor$ slots are filled by multinomial draws
    with probabilities proportional to $n w_i - \\lfloor n w_i \\rfloor$.

    Args:
        key: PRNG key.
        log_weights: ``(m,)`` unnormalised log weights.
        n: number of ancestors to draw (static).

    Returns:
        ``(n,)`` int32 ancestor indices in ``[0, m)``.

    Raises:
        ValueError: on invalid ``n`` or ``log_weights`` (see `multinomial`).
    """
    n = _check_n(n)
    return _residual(key, _check_log_weights(log_weights), n)


SCHEMES: dict[str, Callable[[PRNGKeyArray, Array, int], Array]] = {
    "multinomial": multinomial,
    "stratified": stratified,
    "systematic": systematic,
    "residual": residual,
}

# Unchecked versions for use inside loops that track invalid weights themselves.
_UNCHECKED = {
    "multinomial": _multinomial,
    "stratified": _stratified,
    "systematic": _systematic,
    "residual": _residual,
}


def check_scheme(scheme: str, name: str = "scheme") -> str:
    """Validate a resampling scheme name; returns it."""
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(
            f"`{name}` must be one of {sorted(SCHEMES)}, got {scheme!r}"
        )
    return scheme


def resample(
    key: PRNGKeyArray,
    log_weights: Float[Array, " m"],
    n: int,
    scheme: str = "systematic",
) -> Int[Array, " n"]:
    """Draw ``n`` ancestors with the named scheme.

    Args:
        key: PRNG key.
        log_weights: ``(m,)`` unnormalised log weights.
        n: number of ancestors (static).
        scheme: ``"multinomial"``, ``"stratified"``, ``"systematic"`` or ``"residual"``.

    Returns:
        ``(n,)`` int32 ancestor indices.

    Raises:
        ValueError: for an unknown ``scheme`` or invalid ``n`` / ``log_weights``.
    """
    return SCHEMES[check_scheme(scheme)](key, log_weights, n)

r"""Integral circuits whose integrals have closed forms, and their exact evaluation.

When every function of a PIC comes from a family closed under products and
integration, the PIC is tractable without quadrature (Gala et al., AISTATS 2024,
Section 3): the value of each region, for fixed data, is a finite expression in
its latent, passed upwards exactly. Two such families are provided, each with
random instances for tests and demos; `exact_log_marginal` evaluates them
exactly (float64 numpy), so the QPC of `IntegralCircuit.materialize` can be
compared with the PIC it approximates.

**Linear-Gaussian functions** on the real line (`LinearGaussianFunctions`,
`LinearGaussianInputs`, Gaussian input layer): integral units carry conditional
densities $f(z, u) = \mathcal{N}(u;\, a z + b,\, \Sigma)$ of the integrated
latents $u$ ($1$-D for CP, $2$-D for Tucker merges) and inputs are
$p(x \mid z) = \mathcal{N}(x;\, \alpha z + \beta,\, \sigma^2)$. For fixed $x$ each
region's value is a mixture of scaled Gaussians in its latent,
$\sum_t \exp(c_t - \tfrac12 P_t z^2 + h_t z)$, and an integral unit maps it with the
Gaussian identity ($m = a z + b$, $G = (\Sigma^{-1} + \Lambda)^{-1}$)

$$
\int \mathcal{N}(u; m, \Sigma)\, e^{-\frac12 u^\top \Lambda u + \eta^\top u}\, du
= |I + \Sigma\Lambda|^{-1/2}
  \exp\!\big(\tfrac12 (\Sigma^{-1} m + \eta)^\top G\, (\Sigma^{-1} m + \eta)
             - \tfrac12 m^\top \Sigma^{-1} m\big),
$$

again a scaled Gaussian in $z$. Every function is a normalised density, so
$Z = 1$ and both normalisations of the QPC converge to the same PIC; the latent
domain is $\mathbb{R}$ and quadrature integrates over a finite interval of it.

**Exponential sums** on a bounded interval $[a, b]$ (`ExponentialSumFunctions`,
`ExponentialBernoulliInputs`, Bernoulli input layer):
$f(z, u) = \sum_m \alpha_m e^{\nu_m z + \mu_m^\top u}$ and
$P(x = 1 \mid z) = c + d\, e^{\lambda z}$. Values are finite sums
$\sum_t c_t e^{r_t z}$, closed under products, and integrals use
$\int_a^b e^{s y} dy = (e^{s b} - e^{s a}) / s$. These integrands are smooth but not
periodic, so each quadrature rule shows its textbook rate ($h^2$, $h^2$, $h^4$,
geometric); the PIC is evaluated with ``normalization="global"``
($p = c(x)/Z$ with $Z$ computed the same way).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from circuits.functions import FunctionGroup
from circuits.inputs import Bernoulli, Gaussian
from circuits.integral import IntegralCircuit
from circuits.region_graph import RegionGraph

__all__ = [
    "LinearGaussianFunctions",
    "LinearGaussianInputs",
    "ExponentialSumFunctions",
    "ExponentialBernoulliInputs",
    "linear_gaussian_circuit",
    "exponential_circuit",
    "exact_log_marginal",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _logsumexp(values, axis=None):
    """``log sum exp`` with max-shifting (numpy, float64; -inf where every term is -inf)."""
    values = np.asarray(values, np.float64)
    shift = np.max(values, axis=axis, keepdims=True)
    shift = np.where(np.isfinite(shift), shift, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(values - shift), axis=axis, keepdims=True)) + shift
    return np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


# ------------------------------------------------------------ Gaussian family
class LinearGaussianFunctions(FunctionGroup):
    """``log N(u; a z + b, L L^T)`` for ``F`` folds; ``u`` has 1 (CP) or 2 (Tucker) coordinates.

    Points are ``(z, u)`` when ``has_parent`` (an inner integral unit) and ``u`` at the
    root (then ``a`` is ignored). ``L`` is lower-triangular with diagonal
    ``exp(log_scale)`` and, for 2-D ``u``, off-diagonal ``cholesky_offdiag``.

    Args:
        slope: ``a``, ``(F, n)``.
        offset: ``b``, ``(F, n)``.
        log_scale: ``(F, n)``.
        cholesky_offdiag: ``(F,)`` for ``n = 2`` (default zeros).
        has_parent: whether the first coordinate is the output latent ``z``.
    """

    has_parent: bool = eqx.field(static=True)
    slope: Array
    offset: Array
    log_scale: Array
    cholesky_offdiag: Array

    def __init__(self, slope, offset, log_scale, cholesky_offdiag=None, *, has_parent: bool):
        slope, offset, log_scale = (jnp.asarray(a) for a in (slope, offset, log_scale))
        if slope.ndim != 2 or slope.shape[1] not in (1, 2) or offset.shape != slope.shape \
                or log_scale.shape != slope.shape:
            raise ValueError(f"`slope`, `offset` and `log_scale` must share one shape (F, n) with "
                             f"n in (1, 2), got {slope.shape}, {offset.shape}, {log_scale.shape}")
        num_functions, integrated = slope.shape
        if cholesky_offdiag is None:
            cholesky_offdiag = jnp.zeros(num_functions)
        cholesky_offdiag = jnp.asarray(cholesky_offdiag)
        if cholesky_offdiag.shape != (num_functions,):
            raise ValueError(f"`cholesky_offdiag` must be ({num_functions},), got "
                             f"{cholesky_offdiag.shape}")
        self.num_functions = int(num_functions)
        self.input_dim = int(integrated + bool(has_parent))
        self.output_dim = 1
        self.has_parent = bool(has_parent)
        self.slope, self.offset, self.log_scale = slope, offset, log_scale
        self.cholesky_offdiag = cholesky_offdiag

    def __call__(self, points: Float[Array, "N d"]) -> Float[Array, "F N 1"]:
        start = 1 if self.has_parent else 0
        u = points[None, :, start:]  # (1, N, n)
        mean = self.offset[:, None, :]
        if self.has_parent:
            mean = mean + self.slope[:, None, :] * points[None, :, :1]
        scale = jnp.exp(self.log_scale)[:, None, :]
        r1 = (u[..., 0] - mean[..., 0]) / scale[..., 0]
        quad = r1**2
        if u.shape[-1] == 2:
            r2 = (u[..., 1] - mean[..., 1] - self.cholesky_offdiag[:, None] * r1) / scale[..., 1]
            quad = quad + r2**2
        n = u.shape[-1]
        value = -0.5 * quad - jnp.sum(self.log_scale, axis=-1)[:, None] - 0.5 * n * _LOG_2PI
        return value[..., None]

    def covariances(self) -> np.ndarray:
        """``Sigma = L L^T`` per fold, ``(F, n, n)`` float64."""
        scale = np.exp(np.asarray(self.log_scale, np.float64))
        n = scale.shape[1]
        chol = np.zeros((scale.shape[0], n, n))
        chol[:, 0, 0] = scale[:, 0]
        if n == 2:
            chol[:, 1, 1] = scale[:, 1]
            chol[:, 1, 0] = np.asarray(self.cholesky_offdiag, np.float64)
        return chol @ np.swapaxes(chol, 1, 2)


class LinearGaussianInputs(FunctionGroup):
    """Gaussian input units ``p(x | z) = N(x; slope z + offset, exp(log_scale)^2)``, one per slot.

    Returns ``(loc, log_scale)`` per slot and point (for the `Gaussian` input layer).
    """

    slope: Array
    offset: Array
    log_scale: Array

    def __init__(self, slope, offset, log_scale):
        slope, offset, log_scale = (jnp.asarray(a) for a in (slope, offset, log_scale))
        if slope.ndim != 1 or offset.shape != slope.shape or log_scale.shape != slope.shape:
            raise ValueError(f"`slope`, `offset` and `log_scale` must share one shape (S,), got "
                             f"{slope.shape}, {offset.shape}, {log_scale.shape}")
        self.num_functions, self.input_dim, self.output_dim = int(slope.shape[0]), 1, 2
        self.slope, self.offset, self.log_scale = slope, offset, log_scale

    def __call__(self, points: Float[Array, "N 1"]) -> Float[Array, "S N 2"]:
        loc = self.slope[:, None] * points[None, :, 0] + self.offset[:, None]
        return jnp.stack([loc, jnp.broadcast_to(self.log_scale[:, None], loc.shape)], axis=-1)


# --------------------------------------------------------- exponential family
class ExponentialSumFunctions(FunctionGroup):
    """``log sum_m exp(log_coefficient_m + parent_rate_m z + rates_m . u)`` for ``F`` folds.

    Args:
        log_coefficients: ``log alpha``, ``(F, M)``.
        parent_rates: ``nu``, ``(F, M)`` (ignored at the root).
        rates: ``mu``, ``(F, M, n)`` with ``n`` integrated latents (1 or 2).
        has_parent: whether the first coordinate is the output latent ``z``.
    """

    has_parent: bool = eqx.field(static=True)
    log_coefficients: Array
    parent_rates: Array
    rates: Array

    def __init__(self, log_coefficients, parent_rates, rates, *, has_parent: bool):
        log_coefficients, parent_rates, rates = (
            jnp.asarray(a) for a in (log_coefficients, parent_rates, rates))
        if log_coefficients.ndim != 2 or parent_rates.shape != log_coefficients.shape or \
                rates.shape[:2] != log_coefficients.shape or rates.ndim != 3 or \
                rates.shape[2] not in (1, 2):
            raise ValueError(f"`log_coefficients` and `parent_rates` must be (F, M) and `rates` "
                             f"(F, M, n) with n in (1, 2), got {log_coefficients.shape}, "
                             f"{parent_rates.shape}, {rates.shape}")
        self.num_functions = int(log_coefficients.shape[0])
        self.input_dim = int(rates.shape[2] + bool(has_parent))
        self.output_dim = 1
        self.has_parent = bool(has_parent)
        self.log_coefficients, self.parent_rates, self.rates = log_coefficients, parent_rates, rates

    def __call__(self, points: Float[Array, "N d"]) -> Float[Array, "F N 1"]:
        start = 1 if self.has_parent else 0
        u = points[:, start:]
        exponent = self.log_coefficients[:, None, :] + jnp.einsum("nd,fmd->fnm", u, self.rates)
        if self.has_parent:
            exponent = exponent + points[None, :, :1] * self.parent_rates[:, None, :]
        return jax.nn.logsumexp(exponent, axis=-1)[..., None]


class ExponentialBernoulliInputs(FunctionGroup):
    """Bernoulli input units with ``P(x = 1 | z) = base + amplitude * exp(rate * z)``.

    Returns the logit per slot and point (for the `Bernoulli` input layer). The
    probability must stay in ``(0, 1)`` on the latent domain (checked by
    :func:`exact_log_marginal`).
    """

    base: Array
    amplitude: Array
    rate: Array

    def __init__(self, base, amplitude, rate):
        base, amplitude, rate = (jnp.asarray(a) for a in (base, amplitude, rate))
        if base.ndim != 1 or amplitude.shape != base.shape or rate.shape != base.shape:
            raise ValueError(f"`base`, `amplitude` and `rate` must share one shape (S,), got "
                             f"{base.shape}, {amplitude.shape}, {rate.shape}")
        self.num_functions, self.input_dim, self.output_dim = int(base.shape[0]), 1, 1
        self.base, self.amplitude, self.rate = base, amplitude, rate

    def probability(self, z):
        """``P(x = 1 | z)`` for every slot, ``(S,) + z.shape``."""
        z = jnp.asarray(z)
        shape = (-1,) + (1,) * z.ndim
        return self.base.reshape(shape) + self.amplitude.reshape(shape) * jnp.exp(
            self.rate.reshape(shape) * z)

    def __call__(self, points: Float[Array, "N 1"]) -> Float[Array, "S N 1"]:
        p = self.probability(points[:, 0])
        return (jnp.log(p) - jnp.log1p(-p))[..., None]


# ---------------------------------------------------------- random instances
def _stage_sizes(region_graph: RegionGraph, merge: str):
    from circuits.integral import _plan

    structure = _plan(region_graph, 1, merge)
    return structure, [inner.index.shape[0] for inner, _ in structure.stages]


def _random_mix_logits(key, structure):
    keys = jax.random.split(key, len(structure.stages))
    return tuple(None if m is None else jax.random.normal(k, m.index.shape)
                 for k, (_, m) in zip(keys, structure.stages, strict=True))


def linear_gaussian_circuit(key: PRNGKeyArray, region_graph: RegionGraph, merge: str = "cp", *,
                            normalization: str = "units") -> IntegralCircuit:
    """A random linear-Gaussian PIC on the real line, with latents of scale about one.

    Slopes ``|a| <= 0.7`` and scales in ``[0.45, 0.7]`` keep every latent's marginal
    standard deviation near 1 at any depth, so quadrature on ``[-8, 8]`` misses a
    negligible mass; inputs have slopes ``0.5 .. 1.2`` (random sign) and scales
    ``0.45 .. 0.8``.

    Args:
        key: PRNG key.
        region_graph: any region graph (binary partitions for ``merge="tucker"``).
        merge: ``"cp"`` or ``"tucker"``.
        normalization: see `IntegralCircuit`.
    """
    structure, sizes = _stage_sizes(region_graph, merge)
    integrated = 1 if merge == "cp" else 2
    keys = jax.random.split(key, len(sizes) + 2)
    inner = []
    for d, (size, k) in enumerate(zip(sizes, keys[:-2], strict=True)):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        shape = (size, integrated)
        inner.append(LinearGaussianFunctions(
            jax.random.uniform(k1, shape, minval=-0.7, maxval=0.7),
            jax.random.uniform(k2, shape, minval=-0.5, maxval=0.5),
            jnp.log(jax.random.uniform(k3, shape, minval=0.45, maxval=0.7)),
            jax.random.uniform(k4, (size,), minval=-0.25, maxval=0.25),
            has_parent=d < len(sizes) - 1))
    k1, k2, k3, k4 = jax.random.split(keys[-2], 4)
    s = structure.num_slots
    sign = jnp.where(jax.random.bernoulli(k4, 0.5, (s,)), 1.0, -1.0)
    inputs = LinearGaussianInputs(sign * jax.random.uniform(k1, (s,), minval=0.5, maxval=1.2),
                                  jax.random.uniform(k2, (s,), minval=-0.5, maxval=0.5),
                                  jnp.log(jax.random.uniform(k3, (s,), minval=0.45, maxval=0.8)))
    return IntegralCircuit(region_graph, Gaussian(), inputs, inner, merge=merge,
                           mix_logits=_random_mix_logits(keys[-1], structure),
                           domain=(-math.inf, math.inf), normalization=normalization)


def exponential_circuit(key: PRNGKeyArray, region_graph: RegionGraph, merge: str = "cp", *,
                        num_terms: int = 2, domain=(0.0, 1.0)) -> IntegralCircuit:
    """A random exponential-sum PIC with Bernoulli inputs on a bounded latent domain.

    Coefficients ``log alpha ~ N(0, 0.5^2)``, rates uniform in ``[-1.5, 1.5]`` (scaled to
    the domain's width), inputs ``P(x=1|z) = c + d exp(lambda z)`` with
    ``c in [0.1, 0.3]``, ``d in [0.1, 0.2]`` and ``lambda`` such that the probability
    stays in ``[0.1, 0.8]``. The circuit uses ``normalization="global"``.

    Args:
        key: PRNG key.
        region_graph: any region graph (binary partitions for ``merge="tucker"``).
        merge: ``"cp"`` or ``"tucker"``.
        num_terms: ``M``, exponentials per function.
        domain: finite latent domain ``(a, b)``.
    """
    structure, sizes = _stage_sizes(region_graph, merge)
    integrated = 1 if merge == "cp" else 2
    low, high = (float(v) for v in domain)
    width = high - low
    keys = jax.random.split(key, len(sizes) + 2)
    inner = []
    for d, (size, k) in enumerate(zip(sizes, keys[:-2], strict=True)):
        k1, k2, k3 = jax.random.split(k, 3)
        inner.append(ExponentialSumFunctions(
            0.5 * jax.random.normal(k1, (size, num_terms)),
            jax.random.uniform(k2, (size, num_terms), minval=-1.5, maxval=1.5) / width,
            jax.random.uniform(k3, (size, num_terms, integrated), minval=-1.5, maxval=1.5) / width,
            has_parent=d < len(sizes) - 1))
    k1, k2, k3 = jax.random.split(keys[-2], 3)
    s = structure.num_slots
    base = jax.random.uniform(k1, (s,), minval=0.1, maxval=0.3)
    amplitude = jax.random.uniform(k2, (s,), minval=0.1, maxval=0.2)
    # exp(rate * z) must stay within [0, (0.8 - base) / amplitude] on the domain.
    limit = jnp.log((0.8 - base) / amplitude) / max(abs(low), abs(high), 1e-12)
    rate = jax.random.uniform(k3, (s,), minval=-1.0, maxval=1.0) * jnp.minimum(limit, 1.5 / width)
    inputs = ExponentialBernoulliInputs(base, amplitude, rate)
    return IntegralCircuit(region_graph, Bernoulli(), inputs, inner, merge=merge,
                           mix_logits=_random_mix_logits(keys[-1], structure),
                           domain=(low, high), normalization="global")


# ---------------------------------------------------------- exact evaluation
def _traversal(pic: IntegralCircuit):
    """Per partition its (stage, fold); per mixed region its (stage, row, partition order)."""
    structure = pic.structure
    fold_of, mixed = {}, {}
    for d, (inner, mixing) in enumerate(structure.stages):
        for f, (_, number) in enumerate(inner.partitions):
            fold_of[number] = (d, f)
        if mixing is not None:
            for row, region in enumerate(mixing.regions):
                order = [number for r, number in inner.partitions if r == region]
                mixed[region] = (d, row, order)
    return fold_of, mixed


def _log_mixing_weights(pic, d, row, count):
    logits = np.asarray(pic.mix_logits[d][row, :count], np.float64)
    return logits - _logsumexp(logits)


def _evaluate(pic: IntegralCircuit, ops, x: np.ndarray, observed: np.ndarray):
    """Bottom-up recursion over regions with the message operations ``ops``."""
    structure = pic.structure
    graph = structure.region_graph
    fold_of, mixed = _traversal(pic)
    last = len(structure.stages) - 1
    leaf_row = {int(r): row for row, r in enumerate(structure.leaf_regions)}
    cache = {}

    def value(region):
        if region in cache:
            return cache[region]
        if region in leaf_row:
            slots = np.flatnonzero(structure.slot_leaf == leaf_row[region])
            out = ops.leaf(slots, x, observed)
        else:
            outs = {}
            for number, partition in enumerate(graph.partitions):
                if partition.region != region:
                    continue
                d, f = fold_of[number]
                children = [value(c) for c in partition.children]
                outs[number] = ops.integrate(d, f, children, d == last)
            if len(outs) == 1:
                out = next(iter(outs.values()))
            else:
                d, row, order = mixed[region]
                out = ops.mix([outs[n] for n in order], _log_mixing_weights(pic, d, row, len(order)))
        cache[region] = out
        return out

    return ops.finish(value(graph.root))


class _GaussianOps:
    """Messages ``sum_t exp(logc_t - P_t z^2 / 2 + h_t z)`` as arrays ``(B, T)``."""

    def __init__(self, pic):
        inputs = pic.input_functions
        self.alpha = np.asarray(inputs.slope, np.float64)
        self.beta = np.asarray(inputs.offset, np.float64)
        self.sigma = np.exp(np.asarray(inputs.log_scale, np.float64))
        self.variable = pic.structure.slot_variable
        self.groups = pic.inner_functions

    def leaf(self, slots, x, observed):
        batch = x.shape[0]
        logc, precision, linear = np.zeros(batch), np.zeros(batch), np.zeros(batch)
        for s in slots:
            v = self.variable[s]
            obs = observed[:, v]
            resid = np.where(obs, x[:, v], 0.0) - self.beta[s]
            var = self.sigma[s] ** 2
            precision += np.where(obs, self.alpha[s] ** 2 / var, 0.0)
            linear += np.where(obs, self.alpha[s] * resid / var, 0.0)
            logc += np.where(obs, -0.5 * resid**2 / var - math.log(self.sigma[s])
                             - 0.5 * _LOG_2PI, 0.0)
        return logc[:, None], precision[:, None], linear[:, None]

    @staticmethod
    def _cross(a, b):
        batch = a[0].shape[0]
        return tuple((u[:, :, None] + w[:, None, :]).reshape(batch, -1) for u, w in zip(a, b, strict=True))

    def integrate(self, d, f, children, is_root):
        group = self.groups[d]
        cov = group.covariances()[f]
        n = cov.shape[0]
        slope = np.zeros(n) if is_root else np.asarray(group.slope[f], np.float64)
        offset = np.asarray(group.offset[f], np.float64)
        if n == 1:
            logc, precision, linear = children[0]
            for child in children[1:]:
                logc, precision, linear = self._cross((logc, precision, linear), child)
            lam = precision[..., None, None]
            eta = linear[..., None]
        else:
            first, second = children
            batch, t1, t2 = first[0].shape[0], first[0].shape[1], second[0].shape[1]

            def pair(a, b):  # every component of the first child with every one of the second
                return (np.broadcast_to(a[:, :, None], (batch, t1, t2)).reshape(batch, -1),
                        np.broadcast_to(b[:, None, :], (batch, t1, t2)).reshape(batch, -1))

            c1, c2 = pair(first[0], second[0])
            p1, p2 = pair(first[1], second[1])
            h1, h2 = pair(first[2], second[2])
            logc = c1 + c2
            lam = np.zeros(logc.shape + (2, 2))
            lam[..., 0, 0], lam[..., 1, 1] = p1, p2
            eta = np.stack([h1, h2], axis=-1)
        cov_inv = np.linalg.inv(cov)
        gain = np.linalg.inv(cov_inv + lam)  # G, (B, T, n, n)
        quad = cov_inv @ gain @ cov_inv - cov_inv  # coefficient of m m^T / 2
        # Exponent in m = slope z + offset: m^T quad m / 2 + eta^T G Sigma^-1 m + eta^T G eta / 2.
        cross = np.einsum("btij,btj->bti", gain, eta) @ cov_inv  # (B, T, n), row vector eta^T G S^-1
        log_det = np.log(np.linalg.det(np.eye(n) + cov @ lam))
        const = (0.5 * offset @ quad @ offset + cross @ offset
                 + 0.5 * np.einsum("bti,btij,btj->bt", eta, gain, eta) - 0.5 * log_det + logc)
        if is_root:
            return const
        new_precision = -(slope @ quad @ slope)
        new_linear = slope @ quad @ offset + cross @ slope
        return const, new_precision, new_linear

    @staticmethod
    def mix(values, log_weights):
        if isinstance(values[0], tuple):
            return tuple(np.concatenate([v[i] + (log_weights[p] if i == 0 else 0.0)
                                         for p, v in enumerate(values)], axis=1)
                         for i in range(3))
        return np.concatenate([v + lw for v, lw in zip(values, log_weights, strict=True)], axis=1)

    @staticmethod
    def finish(root):
        return _logsumexp(root, axis=1)


def _exp_integral(s, low, high):
    """``int_low^high exp(s y) dy`` elementwise, stable near ``s = 0``."""
    t = s * (high - low)
    small = np.abs(t) < 1e-8
    ratio = np.where(small, 1.0 + 0.5 * t, np.expm1(np.where(small, 1.0, t)) / np.where(small, 1.0, t))
    return np.exp(s * low) * (high - low) * ratio


class _ExponentialOps:
    """Messages ``sum_t c_t exp(r_t z)``: rates ``(T,)`` and signed coefficients ``(B, T)``."""

    def __init__(self, pic):
        inputs = pic.input_functions
        self.base = np.asarray(inputs.base, np.float64)
        self.amplitude = np.asarray(inputs.amplitude, np.float64)
        self.rate = np.asarray(inputs.rate, np.float64)
        self.variable = pic.structure.slot_variable
        self.groups = pic.inner_functions
        self.low, self.high = pic.domain

    @staticmethod
    def _merge(rates, coefs):
        keys, inverse = np.unique(np.round(rates, 12), return_inverse=True)
        merged = np.zeros((coefs.shape[0], keys.shape[0]))
        np.add.at(merged.T, inverse, coefs.T)
        return keys, merged

    def _product(self, a, b):
        rates = (a[0][:, None] + b[0][None, :]).reshape(-1)
        coefs = (a[1][:, :, None] * b[1][:, None, :]).reshape(a[1].shape[0], -1)
        return self._merge(rates, coefs)

    def leaf(self, slots, x, observed):
        batch = x.shape[0]
        out = (np.zeros(1), np.ones((batch, 1)))
        for s in slots:
            v = self.variable[s]
            obs, one = observed[:, v], x[:, v] == 1
            constant = np.where(obs, np.where(one, self.base[s], 1.0 - self.base[s]), 1.0)
            varying = np.where(obs, np.where(one, self.amplitude[s], -self.amplitude[s]), 0.0)
            out = self._product(out, (np.array([0.0, self.rate[s]]),
                                      np.stack([constant, varying], axis=1)))
        return out

    def _moments(self, message, rates):
        """``sum_t c_t int exp((mu_m + r_t) y) dy`` for every term ``m``: ``(B, M)``."""
        table = _exp_integral(rates[None, :] + message[0][:, None], self.low, self.high)  # (T, M)
        return message[1] @ table

    def integrate(self, d, f, children, is_root):
        group = self.groups[d]
        alpha = np.exp(np.asarray(group.log_coefficients[f], np.float64))
        mu = np.asarray(group.rates[f], np.float64)  # (M, n)
        if mu.shape[1] == 1:
            message = children[0]
            for child in children[1:]:
                message = self._product(message, child)
            moments = self._moments(message, mu[:, 0])
        else:
            moments = self._moments(children[0], mu[:, 0]) * self._moments(children[1], mu[:, 1])
        coefs = moments * alpha
        if is_root:
            return coefs.sum(axis=1)
        return self._merge(np.asarray(group.parent_rates[f], np.float64), coefs)

    def mix(self, values, log_weights):
        weights = np.exp(log_weights)
        if isinstance(values[0], tuple):
            return self._merge(np.concatenate([v[0] for v in values]),
                               np.concatenate([w * v[1] for w, v in zip(weights, values, strict=True)],
                                              axis=1))
        return sum(w * v for w, v in zip(weights, values, strict=True))

    @staticmethod
    def finish(root):
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.log(root)


def _family(pic: IntegralCircuit):
    groups = pic.inner_functions
    if isinstance(pic.input_functions, LinearGaussianInputs) and \
            all(isinstance(g, LinearGaussianFunctions) for g in groups):
        if not isinstance(pic.input_layer, Gaussian):
            raise TypeError("`pic`: linear-Gaussian input functions need the Gaussian input layer")
        if pic.domain != (-math.inf, math.inf):
            raise ValueError(f"`pic`: linear-Gaussian functions are integrated over the real line, "
                             f"but the domain is {pic.domain}")
        return _GaussianOps(pic)
    if isinstance(pic.input_functions, ExponentialBernoulliInputs) and \
            all(isinstance(g, ExponentialSumFunctions) for g in groups):
        if not isinstance(pic.input_layer, Bernoulli):
            raise TypeError("`pic`: exponential Bernoulli inputs need the Bernoulli input layer")
        if not all(math.isfinite(v) for v in pic.domain):
            raise ValueError(f"`pic`: exponential sums need a bounded domain, got {pic.domain}")
        if pic.normalization != "global":
            raise ValueError("`pic`: exact evaluation of exponential sums needs "
                             "normalization='global' (their integrals over the latent are not "
                             "constant, so per-unit normalisation leaves the family)")
        ends = np.asarray(pic.input_functions.probability(jnp.asarray(pic.domain)))
        if not np.all((ends > 0) & (ends < 1)):
            raise ValueError("`pic`: an input probability base + amplitude * exp(rate z) leaves "
                             "(0, 1) on the domain")
        return _ExponentialOps(pic)
    raise TypeError("`pic` must use one analytic family throughout: LinearGaussianFunctions with "
                    "LinearGaussianInputs, or ExponentialSumFunctions with "
                    "ExponentialBernoulliInputs")


def exact_log_marginal(pic: IntegralCircuit, x, observed=None) -> np.ndarray:
    """Exact ``log p(x_O)`` of an analytic PIC, without quadrature (float64).

    ``p = c / Z`` with ``c`` the PIC's root value given the observed variables (the
    others integrated out, i.e. their input functions set to 1) and ``Z`` the value
    with every variable integrated out.

    Args:
        pic: an `IntegralCircuit` built from one analytic family (module docstring).
        x: ``(B, V)`` values (ignored where not observed).
        observed: ``(B, V)`` or ``(V,)`` boolean mask (default: all observed).

    Returns:
        ``(B,)`` float64 log-probabilities (densities for Gaussian inputs).

    Raises:
        TypeError: if the functions are not all of one analytic family.
        ValueError: naming ``x``/``observed`` for bad shapes, and for an unsupported
            normalisation or domain.
    """
    ops = _family(pic)
    v = pic.num_variables
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[1] != v:
        raise ValueError(f"`x` must be (B, {v}), got shape {x.shape}")
    observed = np.ones(x.shape, bool) if observed is None else np.asarray(observed, bool)
    try:
        observed = np.broadcast_to(observed, x.shape)
    except ValueError:
        raise ValueError(f"`observed` of shape {observed.shape} does not broadcast to {x.shape}") \
            from None
    log_c = _evaluate(pic, ops, x, observed)
    log_z = _evaluate(pic, ops, x[:1], np.zeros((1, v), bool))
    return log_c - log_z[0]

"""Calibration and accuracy diagnostics for *any* amortized posterior.

An amortized posterior is anything with

``sample(key, observation, num_samples) -> (num_samples, dim)``

(and optionally ``log_prob(theta, observation)``), where ``observation`` is whatever
the posterior conditions on — a dataset, or a ``(prior, dataset, mask)`` tuple for a
Distribution Transformer. :class:`MixturePosterior` wraps any function returning a
:class:`~amortized.gmm.GaussianMixture` (a trained DT, an exact conjugate posterior),
:class:`~amortized.npe.NPEPosterior` wraps a conditional flow; a user's own object works
if it has ``sample``. Posteriors written in JAX are mapped over observations with
:func:`jax.vmap`; others (e.g. a torch model) are called once per observation.

* :func:`sbc` — simulation-based calibration (Talts, Betancourt, Simpson, Vehtari,
  Gelman, 2018): ranks of the true parameter among posterior draws are uniform for
  a calibrated posterior; a chi-square test per dimension checks it.
* :func:`tarp` — tests of accuracy with random points (Lemos, Coogan, Hezaveh,
  Perreault-Levasseur, 2023): the expected coverage of random-centred balls lies on
  the diagonal exactly when the posterior is correct (for random reference points).
* :func:`c2st` — the classifier two-sample test (Lopez-Paz & Oquab, 2017), as used by
  sbibm: cross-validated accuracy of a small neural classifier telling two samples
  apart (0.5: indistinguishable, 1: disjoint).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import gammaincc
from jaxtyping import Array, Float, PRNGKeyArray

from amortized.gmm import GaussianMixture
from probinf import train
from probinf.families import check_num_samples

__all__ = [
    "AmortizedPosterior",
    "MixturePosterior",
    "sample_posteriors",
    "sbc",
    "SBCResult",
    "tarp",
    "TARPResult",
    "c2st",
    "ks_uniform_test",
]


@runtime_checkable
class AmortizedPosterior(Protocol):
    """What the diagnostics need: posterior draws given one observation."""

    def sample(self, key: PRNGKeyArray, observation: Any, num_samples: int) -> Array: ...


class MixturePosterior(eqx.Module):
    """An amortized posterior from a function ``observation -> GaussianMixture``.

    Examples: ``MixturePosterior(lambda y: model(prior, y))`` for a trained
    Distribution Transformer with a fixed prior, or
    ``MixturePosterior(lambda obs: task.exact_posterior(*obs))`` for an exact one.
    """

    posterior_fn: Callable[[Any], GaussianMixture]

    def posterior(self, observation: Any) -> GaussianMixture:
        return self.posterior_fn(observation)

    def sample(self, key: PRNGKeyArray, observation: Any, num_samples: int) -> Array:
        return self.posterior_fn(observation).sample(key, num_samples)

    def log_prob(self, theta: Array, observation: Any) -> Array:
        return self.posterior_fn(observation).log_prob(theta)


def _num_observations(observations: Any) -> int:
    leaves = jax.tree_util.tree_leaves(observations)
    if not leaves:
        raise ValueError("`observations` is empty")
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every leaf of `observations` needs the same leading axis, got sizes {sizes}")
    return sizes.pop()


@eqx.filter_jit
def _sample_each(posterior, keys, observations, num_samples):
    # Module level, so repeated calls with the same posterior reuse the compiled program.
    return jax.vmap(lambda key, observation: posterior.sample(key, observation, num_samples))(keys, observations)


def sample_posteriors(
    key: PRNGKeyArray, posterior: AmortizedPosterior, observations: Any, num_samples: int
) -> Float[Array, "n num_samples dim"]:
    """``num_samples`` posterior draws for each of the ``n`` observations (leading axis)."""
    if not hasattr(posterior, "sample"):
        raise TypeError(f"`posterior` must provide sample(key, observation, num_samples), got {type(posterior).__name__}")
    num_samples = check_num_samples(num_samples, "num_samples")
    n = _num_observations(observations)
    keys = jax.random.split(key, n)
    try:
        draws = _sample_each(posterior, keys, observations, num_samples)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
        # Not traceable by JAX (e.g. a torch model): one call per observation.
        draws = jnp.stack([
            jnp.asarray(posterior.sample(keys[i], jax.tree_util.tree_map(lambda x, i=i: x[i], observations), num_samples))
            for i in range(n)
        ])
    return draws


def _check_thetas(thetas, observations) -> np.ndarray:
    thetas = np.asarray(thetas, dtype=np.float64)
    if thetas.ndim != 2 or thetas.shape[0] < 2:
        raise ValueError(f"`thetas` must have shape (n, dim) with n >= 2, got {thetas.shape}")
    n = _num_observations(observations)
    if n != thetas.shape[0]:
        raise ValueError(f"`thetas` holds {thetas.shape[0]} parameters but `observations` holds {n}")
    return thetas


# -- SBC --------------------------------------------------------------------------------
def _chi2_sf(statistic: np.ndarray, dof: int) -> np.ndarray:
    return np.asarray(gammaincc(0.5 * dof, 0.5 * jnp.asarray(statistic, jnp.result_type(float))), np.float64)


@dataclass(frozen=True)
class SBCResult:
    """Ranks and uniformity tests of simulation-based calibration.

    Attributes:
        ranks: ``(n, dim)`` number of posterior draws below the true value, in ``[0, L]``.
        num_posterior_samples: ``L``.
        num_bins: bins of the chi-square test.
        statistics: ``(dim,)`` chi-square statistics.
        p_values: ``(dim,)`` p-values of uniformity, one per dimension.
    """

    ranks: np.ndarray
    num_posterior_samples: int
    num_bins: int
    statistics: np.ndarray
    p_values: np.ndarray

    @property
    def combined_p_value(self) -> float:
        """Bonferroni combination over dimensions: :math:`\\min(1, d \\cdot \\min_i p_i)`."""
        return float(min(1.0, self.p_values.size * self.p_values.min()))

    def passed(self, alpha: float = 0.01) -> bool:
        """``True`` when uniformity is not rejected at level ``alpha`` (Bonferroni)."""
        return self.combined_p_value > alpha

    def plot(self, ax=None, *, dims: list[int] | None = None, labels: list[str] | None = None):
        """Rank histograms with the 99 % band of a uniform histogram (binomial, normal approx.)."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        dims = list(range(self.ranks.shape[1])) if dims is None else dims
        n = self.ranks.shape[0]
        probs = _bin_probabilities(self.num_posterior_samples, self.num_bins)
        expected = n * probs
        band = 2.576 * np.sqrt(n * probs * (1 - probs))
        centres = np.arange(self.num_bins)
        ax.fill_between(centres, expected - band, expected + band, step="mid", color="0.85", label="99% band")
        ax.step(centres, expected, where="mid", color="0.5", lw=1)
        for d in dims:
            counts = np.bincount(_bin_ranks(self.ranks[:, d], self.num_posterior_samples, self.num_bins),
                                 minlength=self.num_bins)
            name = labels[d] if labels else f"θ{d + 1}"
            ax.step(centres, counts, where="mid", label=f"{name} (p={self.p_values[d]:.2f})")
        ax.set_xlabel("rank bin")
        ax.set_ylabel("count")
        ax.set_title("SBC rank histogram")
        ax.legend(frameon=False, fontsize=7)
        return ax


def _bin_ranks(ranks: np.ndarray, num_posterior_samples: int, num_bins: int) -> np.ndarray:
    return (np.asarray(ranks) * num_bins) // (num_posterior_samples + 1)


def _bin_probabilities(num_posterior_samples: int, num_bins: int) -> np.ndarray:
    values = np.arange(num_posterior_samples + 1)
    counts = np.bincount(_bin_ranks(values, num_posterior_samples, num_bins), minlength=num_bins)
    return counts / counts.sum()


def sbc_uniformity_test(
    ranks: np.ndarray, num_posterior_samples: int, num_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square test that ranks in ``[0, L]`` are uniform, per column: ``(statistics, p_values)``.

    Ranks are binned into ``num_bins`` bins; each bin's probability under uniformity is
    computed exactly (so ``L + 1`` need not be a multiple of ``num_bins``); the
    statistic has ``num_bins - 1`` degrees of freedom.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    if np.any(ranks < 0) or np.any(ranks > num_posterior_samples):
        raise ValueError(f"`ranks` must lie in [0, {num_posterior_samples}]")
    if not 2 <= num_bins <= num_posterior_samples + 1:
        raise ValueError(f"`num_bins` must be in [2, {num_posterior_samples + 1}], got {num_bins}")
    n = ranks.shape[0]
    expected = n * _bin_probabilities(num_posterior_samples, num_bins)
    stats = []
    for column in ranks.T:
        counts = np.bincount(_bin_ranks(column, num_posterior_samples, num_bins), minlength=num_bins)
        stats.append(float(np.sum((counts - expected) ** 2 / expected)))
    stats = np.asarray(stats)
    return stats, _chi2_sf(stats, num_bins - 1)


def sbc(
    key: PRNGKeyArray,
    posterior: AmortizedPosterior,
    thetas: Float[Array, "n dim"],
    observations: Any,
    *,
    num_posterior_samples: int = 99,
    num_bins: int | None = None,
) -> SBCResult:
    """Simulation-based calibration (Talts et al., 2018).

    For pairs :math:`(\\theta_i, y_i)` drawn from the joint (:math:`\\theta_i` from the
    prior the posterior assumes, :math:`y_i` simulated from it), draw :math:`L`
    posterior samples given :math:`y_i` and record the rank
    :math:`r_{id} = \\#\\{\\ell : \\theta^{(\\ell)}_{id} < \\theta_{id}\\}`. If the posterior is
    exact, every :math:`r_{\\cdot d}` is uniform on :math:`\\{0, \\dots, L\\}`; a
    chi-square test per dimension checks it (:func:`sbc_uniformity_test`).

    Args:
        key: PRNG key.
        posterior: any :class:`AmortizedPosterior`.
        thetas: ``(n, dim)`` true parameters.
        observations: a pytree with leading axis ``n`` (what ``posterior.sample`` takes).
        num_posterior_samples: :math:`L`.
        num_bins: bins of the chi-square test (default :math:`\\min(20, \\max(2, n/10))`).

    Returns:
        An :class:`SBCResult` (``passed()``, ``p_values``, ``plot()``).
    """
    thetas = _check_thetas(thetas, observations)
    num_posterior_samples = check_num_samples(num_posterior_samples, "num_posterior_samples")
    n = thetas.shape[0]
    num_bins = min(20, max(2, n // 10), num_posterior_samples + 1) if num_bins is None else int(num_bins)
    draws = np.asarray(sample_posteriors(key, posterior, observations, num_posterior_samples), np.float64)
    if draws.shape != (n, num_posterior_samples, thetas.shape[1]):
        raise ValueError(
            f"`posterior.sample` returned draws of shape {draws.shape[1:]}, expected "
            f"({num_posterior_samples}, {thetas.shape[1]})"
        )
    ranks = np.sum(draws < thetas[:, None, :], axis=1)
    stats, p_values = sbc_uniformity_test(ranks, num_posterior_samples, num_bins)
    return SBCResult(ranks, num_posterior_samples, num_bins, stats, p_values)


# -- TARP -------------------------------------------------------------------------------
def ks_uniform_test(values: np.ndarray) -> tuple[float, float]:
    """One-sample Kolmogorov–Smirnov test of ``values`` against :math:`\\mathcal U(0, 1)`.

    Returns ``(D, p)`` with the asymptotic Kolmogorov p-value using Stephens' (1970)
    small-sample correction :math:`\\lambda = (\\sqrt n + 0.12 + 0.11/\\sqrt n) D`,
    :math:`p = 2\\sum_{k\\ge1} (-1)^{k-1} e^{-2k^2\\lambda^2}`.
    """
    values = np.sort(np.asarray(values, np.float64).ravel())
    n = values.size
    if n < 1:
        raise ValueError("`values` is empty")
    grid = np.arange(1, n + 1) / n
    statistic = float(max(np.max(grid - values), np.max(values - (grid - 1.0 / n))))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * statistic
    if lam < 1e-3:
        return statistic, 1.0
    k = np.arange(1, 101)
    p = 2.0 * np.sum((-1.0) ** (k - 1) * np.exp(-2.0 * k**2 * lam**2))
    return statistic, float(np.clip(p, 0.0, 1.0))


@dataclass(frozen=True)
class TARPResult:
    """Expected coverage of random-point balls (Lemos et al., 2023).

    Attributes:
        alphas: ``(m,)`` credibility levels in ``[0, 1]``.
        expected_coverage: ``(m,)`` fraction of simulations whose true parameter lies in
            the ``alpha`` ball; the diagonal for a correct posterior.
        coverage_levels: ``(n,)`` per-simulation level :math:`f_i` (uniform if correct).
        area: :math:`\\int_0^1 |\\mathrm{ECP}(\\alpha) - \\alpha|\\, d\\alpha` (0 is perfect).
        ks_statistic, p_value: KS test of the :math:`f_i` against :math:`\\mathcal U(0,1)`.
    """

    alphas: np.ndarray
    expected_coverage: np.ndarray
    coverage_levels: np.ndarray
    area: float
    ks_statistic: float
    p_value: float

    def passed(self, alpha: float = 0.01) -> bool:
        """``True`` when the KS test does not reject calibration at level ``alpha``."""
        return self.p_value > alpha

    def plot(self, ax=None, *, label: str = "posterior"):
        """The expected-coverage curve against the diagonal."""
        import matplotlib.pyplot as plt

        ax = plt.gca() if ax is None else ax
        ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="ideal")
        ax.plot(self.alphas, self.expected_coverage, label=f"{label} (area {self.area:.3f})")
        ax.set_xlabel("credibility level α")
        ax.set_ylabel("expected coverage")
        ax.set_title("TARP")
        ax.legend(frameon=False, fontsize=7)
        return ax


def tarp(
    key: PRNGKeyArray,
    posterior: AmortizedPosterior,
    thetas: Float[Array, "n dim"],
    observations: Any,
    *,
    num_posterior_samples: int = 100,
    references: Float[Array, "n dim"] | None = None,
    num_alphas: int = 101,
    z_score: bool = True,
) -> TARPResult:
    """Tests of accuracy with random points (Lemos et al., 2023).

    For each simulation :math:`i` pick a reference point :math:`r_i`, draw :math:`L`
    posterior samples, and let :math:`f_i` be the fraction of samples closer to
    :math:`r_i` than :math:`\\theta_i` is (ties broken uniformly at random, so that
    :math:`f_i` is exactly :math:`\\mathcal U(0,1)` for a correct posterior). The expected
    coverage is :math:`\\mathrm{ECP}(\\alpha) = \\frac1n\\sum_i \\mathbf 1[f_i < \\alpha]`.

    Args:
        key: PRNG key.
        posterior: any :class:`AmortizedPosterior`.
        thetas: ``(n, dim)`` true parameters.
        observations: pytree with leading axis ``n``.
        num_posterior_samples: :math:`L`.
        references: ``(n, dim)`` reference points (default: uniform on the bounding box
            of ``thetas``, after z-scoring).
        num_alphas: points of the coverage curve.
        z_score: standardise every coordinate by the mean and s.d. of ``thetas``.
    """
    thetas = _check_thetas(thetas, observations)
    num_posterior_samples = check_num_samples(num_posterior_samples, "num_posterior_samples")
    n, dim = thetas.shape
    key_draws, key_ref, key_ties = jax.random.split(key, 3)
    draws = np.asarray(sample_posteriors(key_draws, posterior, observations, num_posterior_samples), np.float64)
    if draws.shape != (n, num_posterior_samples, dim):
        raise ValueError(f"`posterior.sample` returned draws of shape {draws.shape[1:]}, expected ({num_posterior_samples}, {dim})")
    if z_score:
        loc, scale = thetas.mean(0), thetas.std(0) + 1e-12
        thetas = (thetas - loc) / scale
        draws = (draws - loc) / scale
        if references is not None:
            references = (np.asarray(references, np.float64) - loc) / scale
    if references is None:
        low, high = thetas.min(0), thetas.max(0)
        references = np.asarray(jax.random.uniform(key_ref, (n, dim)), np.float64) * (high - low) + low
    references = np.asarray(references, np.float64)
    if references.shape != (n, dim):
        raise ValueError(f"`references` must have shape ({n}, {dim}), got {references.shape}")
    sample_dist = np.linalg.norm(draws - references[:, None, :], axis=-1)
    true_dist = np.linalg.norm(thetas - references, axis=-1)
    closer = np.sum(sample_dist < true_dist[:, None], axis=1)
    ties = np.sum(sample_dist == true_dist[:, None], axis=1)
    jitter = np.asarray(jax.random.uniform(key_ties, (n,)), np.float64)
    # The rank of the true distance among L+1 distances, spread uniformly within its cell.
    levels = (closer + jitter * (ties + 1)) / (num_posterior_samples + 1)
    alphas = np.linspace(0.0, 1.0, num_alphas)
    ecp = np.mean(levels[None, :] < alphas[:, None], axis=1)
    area = float(np.trapezoid(np.abs(ecp - alphas), alphas))
    ks_stat, p_value = ks_uniform_test(levels)
    return TARPResult(alphas, ecp, levels, area, ks_stat, p_value)


# -- C2ST -------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # One object per learning rate: probinf.train caches the compiled loop on it.
    return optax.adam(learning_rate)


@eqx.filter_jit
def _classifiers(key: PRNGKeyArray, num_folds: int, dim: int, width: int, dtype) -> eqx.nn.MLP:
    """``num_folds`` MLPs (two hidden ReLU layers of ``width``) stacked along a leading axis."""
    make = lambda k: eqx.nn.MLP(dim, "scalar", width, depth=2, activation=jax.nn.relu, dtype=dtype, key=k)  # noqa: E731
    return eqx.filter_vmap(make)(jax.random.split(key, num_folds))


def _fold_logits(classifiers: eqx.nn.MLP, x: Array) -> Array:
    """``(num_folds, rows)`` logits: classifier ``k`` on ``x[:, k]`` (``x`` is ``(rows, num_folds, dim)``)."""
    return eqx.filter_vmap(lambda model, xk: jax.vmap(model)(xk), in_axes=(eqx.if_array(0), 1))(classifiers, x)


def _c2st_loss(classifiers: eqx.nn.MLP, key: PRNGKeyArray, batch: tuple[Array, Array]) -> Array:
    """Sum over folds of each classifier's mean cross-entropy on its own training rows.

    A sum, so the gradient of classifier ``k`` is that of its own loss alone: the folds
    train independently (Adam acts per parameter), only in one program.
    """
    del key
    x, labels = batch
    return jnp.sum(jnp.mean(optax.sigmoid_binary_cross_entropy(_fold_logits(classifiers, x), labels.T), axis=1))


@eqx.filter_jit
def _c2st_folds(key, data, labels, num_folds):
    """Random equal folds; fold ``k``'s training and held-out rows, stacked on axis 1.

    Returns ``(train_x, train_y, test_x, test_y)`` of shapes ``(t, K, dim)``, ``(t, K)``,
    ``(h, K, dim)``, ``(h, K)`` with ``h = rows // K`` and ``t = rows - h``. Each fold's
    training rows come in their own random order, so the minibatches `probinf.train.run`
    cuts from one shuffle of positions differ between folds.
    """
    key_split, key_order = jax.random.split(key)
    rows = data.shape[0]
    fold_of = jax.random.permutation(key_split, jnp.arange(rows) % num_folds)
    folds = jnp.arange(num_folds)
    # Stable argsort of "is in fold k" lists the other folds' rows first, then fold k's.
    order = jax.vmap(lambda k: jnp.argsort(fold_of == k, stable=True))(folds)  # (K, rows)
    held_out = rows // num_folds
    train_rows = jax.vmap(jax.random.permutation)(jax.random.split(key_order, num_folds), order[:, : rows - held_out])
    test_rows = order[:, rows - held_out:]
    return data[train_rows.T], labels[train_rows.T], data[test_rows.T], labels[test_rows.T]


@eqx.filter_jit
def _fold_accuracies(classifiers, test_x, test_y):
    correct = (_fold_logits(classifiers, test_x) > 0) == (test_y.T > 0.5)
    return jnp.mean(correct.astype(test_x.dtype), axis=1)


def c2st(
    key: PRNGKeyArray,
    samples_p: Float[Array, "n dim"],
    samples_q: Float[Array, "m dim"],
    *,
    num_folds: int = 5,
    width: int | None = None,
    num_epochs: int = 50,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    z_score: bool = True,
) -> float:
    """Classifier two-sample test (Lopez-Paz & Oquab, 2017): cross-validated accuracy of telling ``samples_p`` from ``samples_q``.

    As in sbibm's ``c2st``: both samples are z-scored with the mean and s.d. of
    ``samples_p``; the pooled rows, labelled :math:`y = 0` (``p``) and :math:`y = 1`
    (``q``), are split at random into ``num_folds`` equal folds (the few rows beyond a
    multiple of ``num_folds`` are dropped at random). For each fold :math:`k` a classifier
    :math:`f_k` (an MLP with two hidden ReLU layers of ``width`` units) is trained with
    Adam on the other folds' rows, minimising the cross-entropy

    .. math::
        \\mathcal L_k = -\\frac1{|B|} \\sum_{i \\in B} \\big[y_i \\log \\sigma(f_k(x_i))
        + (1 - y_i) \\log(1 - \\sigma(f_k(x_i)))\\big]

    over shuffled minibatches :math:`B` for ``num_epochs`` epochs (all folds train at once,
    as one ensemble, through `probinf.train.run`); the statistic is the mean over folds
    of the accuracy :math:`\\frac1{|F_k|}\\sum_{i \\in F_k} \\mathbf 1[(f_k(x_i) > 0) = y_i]`
    on the held-out fold :math:`F_k`. About 0.5 means the samples are indistinguishable,
    1.0 that they are disjoint. A second call with the same shapes and settings reuses the
    compiled training loop.

    Args:
        key: PRNG key (fold split, initialisation, minibatches).
        samples_p: ``(n, dim)`` samples.
        samples_q: ``(m, dim)`` samples.
        num_folds: folds of the cross-validation.
        width: hidden width (default ``10 * dim``).
        num_epochs: passes over the training rows per fold.
        batch_size: minibatch size (capped at the number of training rows per fold, as
            scikit-learn's ``MLPClassifier`` does); the rows left over after the last full
            minibatch of an epoch are not used in that epoch.
        learning_rate: Adam step size.
        z_score: standardise with the statistics of ``samples_p``.
    """
    if not isinstance(key, jax.Array):
        raise TypeError(f"`key` must be a JAX PRNG key (jax.random.key(0)), got {type(key).__name__}")
    p = np.asarray(samples_p, np.float64)
    q = np.asarray(samples_q, np.float64)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"`samples_p` and `samples_q` must be (n, dim) with the same dim, got {p.shape} and {q.shape}")
    num_folds = check_num_samples(num_folds, "num_folds")
    if num_folds < 2:
        raise ValueError(f"`num_folds` must be at least 2, got {num_folds}")
    if min(p.shape[0], q.shape[0]) < num_folds:
        raise ValueError(f"need at least `num_folds` ({num_folds}) samples in each set, got {p.shape[0]} and {q.shape[0]}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise ValueError("`samples_p` and `samples_q` must be finite")
    num_epochs = check_num_samples(num_epochs, "num_epochs")
    batch_size = check_num_samples(batch_size, "batch_size")
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not 0 < learning_rate < math.inf:
        raise ValueError(f"`learning_rate` must be a finite positive number, got {learning_rate!r}")
    if z_score:
        loc, scale = p.mean(0), p.std(0) + 1e-12
        p, q = (p - loc) / scale, (q - loc) / scale
    dim = p.shape[1]
    width = 10 * dim if width is None else check_num_samples(width, "width")
    dtype = jnp.result_type(float)  # float64 under x64
    data = jnp.asarray(np.concatenate([p, q]), dtype)
    labels = jnp.concatenate([jnp.zeros(p.shape[0], dtype), jnp.ones(q.shape[0], dtype)])
    key_drop, key_folds, key_init, key_train = jax.random.split(key, 4)
    # Equal folds: drop the few rows (at random) beyond a multiple of num_folds.
    keep = jax.random.permutation(key_drop, data.shape[0])[: data.shape[0] - data.shape[0] % num_folds]
    train_x, train_y, test_x, test_y = _c2st_folds(key_folds, data[keep], labels[keep], num_folds)
    batch_size = min(batch_size, train_x.shape[0])

    optimizer = _adam(float(learning_rate))
    classifiers = _classifiers(key_init, num_folds, dim, width, dtype)
    result = train.run(
        train.make_step(_c2st_loss, optimizer), train.init(classifiers, optimizer), key_train,
        epochs=num_epochs, data=(train_x, train_y), batch_size=batch_size, progress=False, name="c2st",
    )
    return float(jnp.mean(_fold_accuracies(result.params, test_x, test_y)))

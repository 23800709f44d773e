"""Pathfinder, and `initialize`: a good Gaussian start for variational inference.

Pathfinder (Zhang, Carpenter, Gelman & Vehtari, "Pathfinder: Parallel quasi-Newton
variational inference", JMLR 23(306), 2022) runs L-BFGS on $-\\log\\tilde p$ and, at
every iterate $z_l$, forms the normal approximation

$$
q_l = \\mathcal N\\big(z_l + H_l \\nabla\\log\\tilde p(z_l),\\ H_l\\big),
$$

where $H_l$ is the L-BFGS inverse Hessian of the last $J$ position/gradient
difference pairs that pass the curvature condition, started at Pathfinder's
diagonal estimate $\\mathrm{diag}(\\alpha_l)$ (low rank plus diagonal,
$H_l = \\mathrm{diag}(\\alpha_l) + \\beta_l\\gamma_l\\beta_l^\\top$). It estimates each
$q_l$'s ELBO $\\mathbb E_{q_l}[\\log\\tilde p - \\log q_l]$ with ``num_draws`` Monte Carlo
draws and returns the $q_l$ with the highest estimate (the smallest estimated
$\\mathrm{KL}(q\\,\\|\\,p)$) as a dense `probinf.FullRankGaussian`.

`initialize` is the one entry point the rest of the library uses to start a
Gaussian family: Pathfinder, falling back to the Laplace approximation and then to
a unit-scale Gaussian at ``target.init_position``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from probinf.families import FullRankGaussian, MeanFieldGaussian, Standardized, check_num_samples
from probinf.linalg import cholesky
from probinf.target import Target
from probinf.validation import check_key, is_traced
from probinf.vi import _lbfgs
from probinf.vi.laplace import _EXACT as _LAPLACE_EXACT
from probinf.vi.laplace import (
    _laplace_compiled,
    check_finite_start,
    check_target,
    check_tolerance,
    laplace,
    resolve_init,
    working_dtype,
)

__all__ = ["PathfinderResult", "pathfinder", "initialize"]

# Stan's defaults (cmdstan ``pathfinder``: num_elbo_draws=25, max_lbfgs_iters=1000) and
# the history size J = 6 used throughout Zhang et al. (2022).
_DEFAULT_NUM_DRAWS = 25
_DEFAULT_MAX_ITERS = 1000
_DEFAULT_HISTORY = 6
# Multi-path starts: uniform(-2, 2) around the first path's start, Stan's init radius.
_INIT_RADIUS = 2.0

_LOG_2PI = math.log(2.0 * math.pi)

FAMILIES = ("full_rank", "mean_field")
METHODS = ("pathfinder", "laplace", "prior_median")


class PathfinderResult(NamedTuple):
    """What `pathfinder` returns.

    Attributes:
        family: the selected normal approximation as a dense `probinf.FullRankGaussian`
            (with ``num_paths > 1``: the Gaussian matching the first two moments of the
            importance-weighted mixture of the paths' selections).
        elbo: a fresh ``num_draws``-sample estimate of ``family``'s ELBO (independent of
            the draws used to select it, so not biased upwards by the selection);
            ``-inf`` when not finite.
        elbos: the ELBO estimate at every iterate, ``(max_iters + 1,)`` (a leading
            ``num_paths`` axis for several paths); NaN past the last iterate, ``-inf``
            where the estimate was not finite.
        path: the L-BFGS iterates, ``(max_iters + 1, dim)``, NaN past the last one.
        num_evaluations: log-density evaluations (with gradient in the optimiser), all
            paths together.
        num_iterations: L-BFGS iterations (per path).
        best_index: the iterate whose approximation was selected (per path).
        path_weights: with several paths, each path's share of the importance weights
            ``(num_paths,)``; ``None`` for one path.
    """

    family: FullRankGaussian
    elbo: Float[Array, ""]
    elbos: Float[Array, "... iters"]
    path: Float[Array, "... iters dim"]
    num_evaluations: Int[Array, ""]
    num_iterations: Int[Array, "..."]
    best_index: Int[Array, "..."]
    path_weights: Float[Array, " paths"] | None = None


def _family_from_tril(loc: Array, scale_tril: Array) -> FullRankGaussian:
    return FullRankGaussian(loc, jnp.log(jnp.diag(scale_tril)), jnp.tril(scale_tril, -1))


def _gaussian_elbo_terms(family: FullRankGaussian, target: Target, u: Array) -> Array:
    """``log p(z) - log q(z)`` at ``z = loc + L u`` for standard normal rows ``u``."""
    z = family.loc + u @ family.scale_tril.T
    log_q = -0.5 * jnp.sum(u**2 + _LOG_2PI, axis=-1) - jnp.sum(family.log_diagonal)
    log_w = target.log_density(z).astype(log_q.dtype) - log_q
    return jnp.where(jnp.isnan(log_w), -jnp.inf, log_w)


def _mean_or_minus_inf(values: Array) -> Array:
    mean = jnp.mean(values)
    return jnp.where(jnp.isfinite(mean), mean, -jnp.inf)


def _single_path(target, x0, draws, max_iters, history_size, ftol, gtol):
    """One path: the selected family, a fresh ELBO estimate, its terms, the optimiser output.

    ``draws`` ``(2, num_draws, dim)``: standard normals for the ELBO along the path and,
    independent of them, for the fresh estimate of the selection.
    """
    path_draws, fresh_draws = draws
    out = _lbfgs.run_lbfgs(
        target.log_density,
        x0,
        max_iters=max_iters,
        history_size=history_size,
        ftol=ftol,
        gtol=gtol,
        draws=path_draws,
    )
    scale_tril = _lbfgs.lower_triangular_factor(_lbfgs.approximation_scale(out.best))
    family = _family_from_tril(out.best.mean, scale_tril)
    log_w = _gaussian_elbo_terms(family, target, fresh_draws)
    log_w = jnp.where(jnp.isfinite(out.best_elbo), log_w, -jnp.inf)
    return family, _mean_or_minus_inf(log_w), log_w, out


@eqx.filter_jit
def _pathfinder_compiled(target, x0, draws, max_iters, history_size, ftol, gtol):
    """One path as a `PathfinderResult`, and the log importance weights of its fresh draws."""
    family, elbo, log_w, out = _single_path(target, x0, draws, max_iters, history_size, ftol, gtol)
    result = PathfinderResult(
        family=family,
        elbo=elbo,
        elbos=out.elbos,
        path=out.path,
        num_evaluations=out.num_evaluations + draws.shape[1],
        num_iterations=out.num_iterations,
        best_index=out.best_index,
    )
    return result, log_w


@eqx.filter_jit
def _combine_paths(target, paths: PathfinderResult, log_w, fresh):
    """Multi-path Pathfinder's combination (Zhang et al. 2022, Algorithm 2).

    ``log_w`` ``(num_paths, num_draws)``: log p(z) - log q_k(z) for fresh draws from each
    path's selection q_k. Resampling the pooled draws with probability proportional to
    w gives path k the expected share sum_i w_ki / sum w; that share is used directly
    (no resampling noise) as the weight of q_k in a mixture whose mean and covariance
    the returned Gaussian matches.
    """
    num_paths, num_draws = log_w.shape
    log_share = jax.nn.logsumexp(log_w, axis=1)
    any_finite = jnp.any(jnp.isfinite(log_share))
    weights = jnp.where(
        any_finite, jax.nn.softmax(jnp.where(any_finite, log_share, 0.0)), 1.0 / num_paths
    )
    used = weights > 0  # a failed path may hold NaN, and NaN * 0 is NaN
    families = paths.family
    means = jnp.where(used[:, None], families.loc, 0.0)
    covariances = jnp.where(used[:, None, None], jax.vmap(lambda f: f.covariance)(families), 0.0)
    mean = weights @ means
    centred = means - mean
    covariance = jnp.einsum("k,kij->ij", weights, covariances) + jnp.einsum(
        "k,ki,kj->ij", weights, centred, centred
    )
    family = _family_from_tril(mean, cholesky(covariance))
    elbo = jnp.where(
        any_finite, _mean_or_minus_inf(_gaussian_elbo_terms(family, target, fresh)), -jnp.inf
    )
    return PathfinderResult(
        family=family,
        elbo=elbo,
        elbos=paths.elbos,
        path=paths.path,
        num_evaluations=jnp.sum(paths.num_evaluations) + num_draws,
        num_iterations=paths.num_iterations,
        best_index=paths.best_index,
        path_weights=weights,
    )


def _starts(key, target: Target, init: object, num_paths: int) -> Array:
    """``(num_paths, dim)`` starting points: ``init`` rows, or jitter around one start."""
    if init is not None and np.ndim(init) == 2:
        starts = jnp.asarray(init, dtype=working_dtype())
        if starts.shape != (num_paths, target.dim):
            raise ValueError(
                f"`init` must have shape ({target.dim},) or ({num_paths}, {target.dim}) with "
                f"num_paths={num_paths}, got shape {tuple(starts.shape)}"
            )
        for i in range(num_paths):
            check_finite_start(target, resolve_init(target, starts[i], f"init[{i}]"), f"init[{i}]")
        return starts
    base = resolve_init(target, init)
    check_finite_start(target, base)
    jitter = jax.random.uniform(
        key, (num_paths - 1, target.dim), base.dtype, -_INIT_RADIUS, _INIT_RADIUS
    )
    return jnp.concatenate([base[None], base + jitter])


def _pathfinder(key, target, *, init, num_draws, max_iters, history_size, num_paths, ftol, gtol):
    """`pathfinder` without its failure warning (``initialize`` words its own)."""
    check_key(key)
    target = check_target(target)
    num_draws = check_num_samples(num_draws, "num_draws")
    max_iters = check_num_samples(max_iters, "max_iters")
    history_size = check_num_samples(history_size, "history_size")
    num_paths = check_num_samples(num_paths, "num_paths")
    default_ftol, default_gtol = _lbfgs.default_tolerances(working_dtype())
    ftol = check_tolerance(ftol, "ftol", default_ftol)
    gtol = check_tolerance(gtol, "gtol", default_gtol)
    if num_paths == 1:
        if init is not None and np.ndim(init) == 2 and np.shape(init)[0] == 1:
            init = np.asarray(init)[0]
        x0 = resolve_init(target, init)
        check_finite_start(target, x0)
        # Drawn outside the compiled path so that compilation is shared across targets.
        draws = jax.random.normal(key, (2, num_draws, target.dim), x0.dtype)
        return _pathfinder_compiled(target, x0, draws, max_iters, history_size, ftol, gtol)[0]
    key_starts, key_draws, key_fresh = jax.random.split(key, 3)
    starts = _starts(key_starts, target, init, num_paths)
    draws = jax.random.normal(key_draws, (num_paths, 2, num_draws, target.dim), starts.dtype)
    fresh = jax.random.normal(key_fresh, (num_draws, target.dim), starts.dtype)
    # The paths run one after another through the single-path program (compiled once).
    runs = [
        _pathfinder_compiled(target, starts[k], draws[k], max_iters, history_size, ftol, gtol)
        for k in range(num_paths)
    ]
    paths = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[run[0] for run in runs])
    log_w = jnp.stack([run[1] for run in runs])
    return _combine_paths(target, paths, log_w, fresh)


def pathfinder(
    key: PRNGKeyArray,
    target: Target,
    *,
    init: Float[Array, "... dim"] | None = None,
    num_draws: int = _DEFAULT_NUM_DRAWS,
    max_iters: int = _DEFAULT_MAX_ITERS,
    history_size: int = _DEFAULT_HISTORY,
    num_paths: int = 1,
    ftol: float | None = None,
    gtol: float | None = None,
) -> PathfinderResult:
    """Pathfinder variational inference (Zhang, Carpenter, Gelman & Vehtari, JMLR 2022).

    Runs L-BFGS on $-\\log\\tilde p$ from ``init`` (see `probinf.vi.find_map` for the
    optimiser and its stopping rules). At each iterate $l$ it updates the diagonal
    $\\alpha_l$ (paper's Algorithm 3: the diagonal of a BFGS update of a scaled
    diagonal Hessian estimate, kept when the pair fails the curvature condition
    $s^\\top y > \\epsilon \\|s\\|\\,\\|y\\|$), builds
    $H_l = \\mathrm{diag}(\\alpha_l) + \\beta_l\\gamma_l\\beta_l^\\top$ from the last
    ``history_size`` accepted pairs (eq. II.1, the compact L-BFGS form), draws
    ``num_draws`` points from $q_l = \\mathcal N(z_l - H_l\\nabla f(z_l), H_l)$ through the
    $O(d J^2)$ factorisation of Algorithm 4, and estimates
    $\\mathrm{ELBO}_l = \\frac1K\\sum_k \\log\\tilde p(\\phi_k) - \\log q_l(\\phi_k)$
    (``-inf`` when not finite). The approximation with the highest estimate is
    returned as a dense `probinf.FullRankGaussian` (its Cholesky factor by QR of
    the square root, $O(d^3)$ once).

    With ``num_paths > 1`` (the paper's multi-path Pathfinder, Algorithm 2) the paths
    start from ``init`` rows ``(num_paths, dim)`` or from ``init`` and points drawn
    uniformly within $\\pm 2$ of it (Stan's init radius), run one after another, and
    are combined by importance weights $w = \\tilde p(\\phi)/q_k(\\phi)$ of
    ``num_draws`` fresh draws from each path's selection: path $k$ gets the share of
    the total weight its draws carry (the expected share importance resampling would
    give it), and the returned Gaussian has that mixture's mean and covariance.

    A RuntimeWarning is raised when no iterate's ELBO estimate is finite (then the
    result is unreliable; `initialize` falls back to the Laplace approximation).

    Args:
        key: PRNG key for the ELBO draws (and multi-path starts).
        target: the `probinf.Target`.
        init: start ``(dim,)`` (default ``target.init_position``, else zeros), or one
            start per path ``(num_paths, dim)``.
        num_draws: Monte Carlo draws per ELBO estimate (Stan's default 25).
        max_iters: most L-BFGS iterations (per path).
        history_size: $J$, the number of pairs in the inverse-Hessian estimate (the
            paper's 6).
        num_paths: independent paths.
        ftol: the optimiser's relative objective tolerance (see `probinf.vi.find_map`).
        gtol: the optimiser's gradient tolerance (see `probinf.vi.find_map`).

    Returns:
        A `PathfinderResult`.

    Raises:
        TypeError: if ``target`` is not a `probinf.Target` or ``key`` is not a key.
        ValueError: on a wrongly shaped or non-finite ``init``, a start where the log
            density or its gradient is not finite, or bad settings.
    """
    result = _pathfinder(
        key,
        target,
        init=init,
        num_draws=num_draws,
        max_iters=max_iters,
        history_size=history_size,
        num_paths=num_paths,
        ftol=ftol,
        gtol=gtol,
    )
    if not is_traced(result.elbo) and not bool(jnp.isfinite(result.elbo)):
        warnings.warn(
            "pathfinder: the ELBO estimate is not finite (draws from every approximation "
            "along the path hit points where the log density is -inf or NaN); the returned "
            "Gaussian is unreliable",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


@eqx.filter_jit
def _laplace_candidate(target, position, pathfinder_family, draws):
    family, status, _ = _laplace_compiled(target, position)
    elbo_laplace = _mean_or_minus_inf(_gaussian_elbo_terms(family, target, draws))
    elbo_path = _mean_or_minus_inf(_gaussian_elbo_terms(pathfinder_family, target, draws))
    return family, status, elbo_laplace, elbo_path


def _unit_gaussian(target: Target, init: object) -> FullRankGaussian:
    loc = resolve_init(target, init)
    return FullRankGaussian(
        loc, jnp.zeros_like(loc), jnp.zeros((target.dim, target.dim), loc.dtype)
    )


def _all_finite(family: FullRankGaussian) -> bool:
    return all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in (family.loc, family.log_diagonal, family.off_diagonal)
    )


def _to_mean_field(family: FullRankGaussian) -> MeanFieldGaussian:
    # Marginal variances: the diagonal of L L^T.
    variances = jnp.sum(family.scale_tril**2, axis=-1)
    return MeanFieldGaussian(family.loc, 0.5 * jnp.log(variances))


def initialize(
    key: PRNGKeyArray,
    target: Target,
    *,
    family: str = "full_rank",
    method: str = "pathfinder",
    init: Float[Array, " dim"] | None = None,
    standardized: bool = True,
) -> Standardized | FullRankGaussian | MeanFieldGaussian:
    """A starting Gaussian family for variational inference on ``target``.

    By default the Gaussian is returned as a `probinf.Standardized` family: a standard
    normal of the chosen kind in the frame (mean and Cholesky factor) of the
    approximation below. It is the same distribution, but `probinf.fit` then trains it
    in units of the approximation's own scale: Adam's steps of about its learning rate
    are a fraction of a posterior sd in every direction, whatever the model's units
    (without the frame, a posterior with sds of 1e-3 is left within a few hundred
    steps). ``standardized=False`` returns the plain Gaussian.

    ``method``:

    * ``"pathfinder"`` (default): `pathfinder` with its defaults, checked against the
      Laplace approximation at the end of its path (the mode its L-BFGS run found):
      both ELBOs are estimated on the same ``25`` fresh draws and the higher wins (the
      Laplace candidate only when the Hessian there is negative definite). Pathfinder
      picks among L-BFGS inverse-Hessian estimates, which miss directions the
      optimiser never moved along; the exact Hessian does not. If Pathfinder's ELBO
      estimate is not finite, a RuntimeWarning says so and `laplace` is used.
    * ``"laplace"``: `laplace`. If the Hessian at the mode is not finite (or the result
      is), a RuntimeWarning says so and the unit-scale start below is used.
    * ``"prior_median"``: mean ``init`` (default ``target.init_position`` — numpyro's
      initial point for `probinf.from_numpyro` targets — else zeros), unit scale.

    ``family``: ``"full_rank"`` returns a `probinf.FullRankGaussian`; ``"mean_field"``
    a `probinf.MeanFieldGaussian` with the same mean and the diagonal of the
    covariance (the marginal variances).

    Args:
        key: PRNG key (Pathfinder's ELBO draws).
        target: the `probinf.Target`.
        family: ``"full_rank"`` or ``"mean_field"``.
        method: ``"pathfinder"``, ``"laplace"`` or ``"prior_median"``.
        init: where the optimiser starts (or the ``prior_median`` mean).
        standardized: return the Gaussian as a `probinf.Standardized` family (default)
            rather than as a plain `probinf.FullRankGaussian` / `probinf.MeanFieldGaussian`.

    Raises:
        ValueError: on an unknown ``family`` or ``method``, a bad ``init``, or (for the
            optimising methods) a start where the log density is not finite.
    """
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
    target = check_target(target)
    check_key(key)
    if init is not None:
        resolve_init(target, init)  # fail on a bad `init` before any work

    result: FullRankGaussian | None = None
    if method == "pathfinder":
        path = _pathfinder(
            key,
            target,
            init=init,
            num_draws=_DEFAULT_NUM_DRAWS,
            max_iters=_DEFAULT_MAX_ITERS,
            history_size=_DEFAULT_HISTORY,
            num_paths=1,
            ftol=None,
            gtol=None,
        )
        if bool(jnp.isfinite(path.elbo)) and _all_finite(path.family):
            result = path.family
            # The Laplace approximation at the end of the path (the optimiser's mode) is
            # one more candidate, judged by the same criterion on common draws. It wins
            # where the L-BFGS history never explored a direction (a long, thin ridge).
            end = path.path[int(path.num_iterations)]
            draws = jax.random.normal(
                jax.random.fold_in(key, 1), (_DEFAULT_NUM_DRAWS, target.dim), end.dtype
            )
            candidate, status, elbo_laplace, elbo_path = _laplace_candidate(
                target, end, path.family, draws
            )
            if (
                int(status) == _LAPLACE_EXACT
                and float(elbo_laplace) > float(elbo_path)
                and _all_finite(candidate)
            ):
                result = candidate
        else:
            warnings.warn(
                "initialize: Pathfinder failed (its ELBO estimate is not finite at any "
                "iterate); falling back to the Laplace approximation",
                RuntimeWarning,
                stacklevel=2,
            )
            method = "laplace"
    if method == "laplace":
        failure = None
        try:
            approximation = laplace(target, init=init)
        except RuntimeError as err:
            failure = str(err)
        else:
            if _all_finite(approximation.family):
                result = approximation.family
            else:
                failure = "the Laplace approximation has non-finite parameters"
        if failure is not None:
            warnings.warn(
                f"initialize: the Laplace approximation failed ({failure}); falling back to "
                "a unit-scale Gaussian at the initial position",
                RuntimeWarning,
                stacklevel=2,
            )
    if result is None:
        result = _unit_gaussian(target, init)
    gaussian = _to_mean_field(result) if family == "mean_field" else result
    return Standardized.around(gaussian) if standardized else gaussian

"""The posterior mode (MAP) by L-BFGS, and the Laplace approximation around it.

`find_map` maximises a `probinf.Target`'s log density on its unconstrained space;
`laplace` returns the Gaussian $\\mathcal N(\\hat z, (-\\nabla^2 \\log \\tilde p(\\hat z))^{-1})$
at that mode as a `probinf.FullRankGaussian`. Both compile once per target
structure (the target is an argument of the compiled functions) and work with
``jax_enable_x64`` on or off: the working dtype is JAX's default float.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from probinf.families import FullRankGaussian, check_num_samples
from probinf.linalg import cholesky, solve_triangular
from probinf.target import Target
from probinf.validation import is_traced
from probinf.vi import _lbfgs

__all__ = ["MAPResult", "LaplaceResult", "find_map", "laplace"]

_DEFAULT_MAX_ITERS = 1000
_DEFAULT_HISTORY = 6


class MAPResult(NamedTuple):
    """What `find_map` returns.

    Attributes:
        position: the mode found, ``(dim,)`` on the unconstrained space.
        log_density: the target's log density there.
        num_iterations: accepted L-BFGS iterations.
        converged: whether a convergence test (gradient, relative objective change,
            or working precision reached) stopped the run; ``False`` when it ran out
            of iterations or the line search failed.
        num_evaluations: log-density-and-gradient evaluations.
        grad_norm: largest absolute entry of the gradient at ``position``.
        status: the stop code; `stop_reason` says it in words.
    """

    position: Float[Array, " dim"]
    log_density: Float[Array, ""]
    num_iterations: Int[Array, ""]
    converged: Bool[Array, ""]
    num_evaluations: Int[Array, ""]
    grad_norm: Float[Array, ""]
    status: Int[Array, ""]

    @property
    def stop_reason(self) -> str:
        """Why the optimiser stopped, in words."""
        return _lbfgs.STOP_REASONS.get(int(self.status), "it is still running")


class LaplaceResult(NamedTuple):
    """What `laplace` returns.

    Attributes:
        family: $\\mathcal N(\\hat z, \\Sigma)$ with $\\Sigma^{-1}$ the negative Hessian at the
            mode (or its regularised version, see `laplace`).
        map: the `MAPResult` the approximation is centred on.
        regularized: ``True`` when the negative Hessian was not positive definite and
            its eigenvalues were repaired.
    """

    family: FullRankGaussian
    map: MAPResult
    regularized: Bool[Array, ""]


# --- input checks shared with pathfinder -------------------------------------------------


def working_dtype():
    """JAX's default float dtype: float64 with ``jax_enable_x64``, else float32."""
    return jnp.asarray(0.0).dtype



def check_target(target: object) -> Target:
    if not isinstance(target, Target):
        raise TypeError(
            f"`target` must be a probinf.Target (see probinf.from_numpyro / from_logdensity), "
            f"got {type(target).__name__}"
        )
    return target


def check_tolerance(value: object, name: str, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"`{name}` must be a non-negative float, got {value!r}")
    value = float(value)
    if not (value >= 0 and np.isfinite(value)):
        raise ValueError(f"`{name}` must be a non-negative finite float, got {value!r}")
    return value


def resolve_init(target: Target, init: object, name: str = "init") -> Array:
    """``init`` (default ``target.init_position``, else zeros) as a checked ``(dim,)`` vector."""
    dtype = working_dtype()
    if init is None:
        init = target.init_position if target.init_position is not None else jnp.zeros(target.dim)
    try:
        position = jnp.asarray(init, dtype=dtype)
    except TypeError as err:
        raise ValueError(
            f"`{name}` must be an array of shape ({target.dim},), got {init!r}"
        ) from err
    if position.shape != (target.dim,):
        raise ValueError(
            f"`{name}` must have shape ({target.dim},) (the target's dim), got shape {tuple(position.shape)}"
        )
    if not is_traced(position) and not bool(jnp.all(jnp.isfinite(position))):
        bad = np.flatnonzero(~np.isfinite(np.asarray(position))).tolist()
        raise ValueError(f"`{name}` must be finite; entries {bad[:10]} are not")
    return position


@eqx.filter_jit
def _value_and_grad(target: Target, z: Array) -> tuple[Array, Array]:
    return jax.value_and_grad(lambda v: target.log_density(v).astype(z.dtype))(z)


def check_finite_start(target: Target, position: Array, name: str = "init") -> None:
    """Raise if the log density or its gradient is not finite at ``position``."""
    if is_traced(target, position):
        return
    value, grad = _value_and_grad(target, position)
    if not bool(jnp.isfinite(value)):
        raise ValueError(
            f"the target's log density at `{name}` is {float(value)}; the optimiser needs a "
            "starting point where the log density is finite (pass another `init`)"
        )
    if not bool(jnp.all(jnp.isfinite(grad))):
        bad = np.flatnonzero(~np.isfinite(np.asarray(grad))).tolist()
        raise ValueError(
            f"the gradient of the target's log density at `{name}` is not finite (entries "
            f"{bad[:10]}); pass another `init`"
        )


# --- find_map -----------------------------------------------------------------------------


@eqx.filter_jit
def _find_map_compiled(target, x0, max_iters, history_size, ftol, gtol) -> MAPResult:
    out = _lbfgs.run_lbfgs(
        target.log_density,
        x0,
        max_iters=max_iters,
        history_size=history_size,
        ftol=ftol,
        gtol=gtol,
    )
    converged = (
        (out.status == _lbfgs.CONVERGED_GRADIENT)
        | (out.status == _lbfgs.CONVERGED_OBJECTIVE)
        | (out.status == _lbfgs.CONVERGED_PRECISION)
    )
    return MAPResult(
        position=out.position,
        log_density=out.log_density,
        num_iterations=out.num_iterations,
        converged=converged,
        num_evaluations=out.num_evaluations,
        grad_norm=jnp.max(jnp.abs(out.grad)),
        status=out.status,
    )


def find_map(
    target: Target,
    *,
    init: Float[Array, " dim"] | None = None,
    max_iters: int = _DEFAULT_MAX_ITERS,
    history_size: int = _DEFAULT_HISTORY,
    ftol: float | None = None,
    gtol: float | None = None,
) -> MAPResult:
    """Maximise the target's log density by L-BFGS (the posterior mode, MAP).

    Minimises $f(z) = -\\log\\tilde p(z)$ with limited-memory BFGS (Liu & Nocedal 1989;
    Nocedal & Wright 2006, Algorithm 7.5) started from a diagonal matrix updated at every
    step (Gilbert & Lemaréchal 1989), and a strong-Wolfe line search that treats a
    non-finite value or gradient at a trial point as "step too long", so it backtracks
    out of ``-inf``/NaN regions. It stops when

    * $\\max_i |\\partial_i f| \\le$ ``gtol``, or
    * the last step lowered $f$ by at most ``ftol`` $\\cdot s$, $s = \\max(|f_k|, |f_{k+1}|, 1)$,
      *and* the next quasi-Newton step predicts no more: $\\tfrac12 g^\\top H g \\le$
      ``ftol`` $\\cdot s$ ($\\sqrt{g^\\top H g}$ is the distance to the mode in posterior
      standard deviations when $H$ is the inverse Hessian), or
    * no decrease is representable and $g^\\top H g \\le 10\\,$``ftol``$\\cdot s$ (the
      working precision's floor),

    and reports ``converged=False`` (with a RuntimeWarning) when it runs out of
    iterations or the line search fails along the steepest-descent direction (a
    gradient inconsistent with the values: a non-smooth or noisy log density).

    Args:
        target: the `probinf.Target`.
        init: starting point ``(dim,)``; default ``target.init_position``, else zeros.
        max_iters: most L-BFGS iterations.
        history_size: number of position/gradient pairs L-BFGS keeps.
        ftol: relative objective-change tolerance; default ``1e4 * eps`` in float64
            (Stan's), ``eps`` in float32 (see `probinf.vi._lbfgs.default_tolerances`).
        gtol: gradient tolerance; default ``1e-8`` in float64 (Stan's), ``1e-5`` in
            float32 (scipy L-BFGS-B's).

    Returns:
        A `MAPResult`.

    Raises:
        TypeError: if ``target`` is not a `probinf.Target`.
        ValueError: on a wrongly shaped or non-finite ``init``, a start where the log
            density or its gradient is not finite, or bad settings.
    """
    target = check_target(target)
    max_iters = check_num_samples(max_iters, "max_iters")
    history_size = check_num_samples(history_size, "history_size")
    x0 = resolve_init(target, init)
    default_ftol, default_gtol = _lbfgs.default_tolerances(x0.dtype)
    ftol = check_tolerance(ftol, "ftol", default_ftol)
    gtol = check_tolerance(gtol, "gtol", default_gtol)
    check_finite_start(target, x0)
    result = _find_map_compiled(target, x0, max_iters, history_size, ftol, gtol)
    if not is_traced(result) and not bool(result.converged):
        warnings.warn(
            f"find_map stopped before converging because {result.stop_reason} "
            f"(after {int(result.num_iterations)} iterations, largest gradient entry "
            f"{float(result.grad_norm):.3g}); the position may not be the mode",
            RuntimeWarning,
            stacklevel=2,
        )
    return result


# --- laplace ------------------------------------------------------------------------------

_EXACT, _REGULARIZED, _NONFINITE = 0, 1, 2


@eqx.filter_jit
def _laplace_compiled(target: Target, position: Array):
    dtype = position.dtype
    dim = position.shape[0]
    hessian = jax.hessian(lambda z: target.log_density(z).astype(dtype))(position)
    precision = -0.5 * (hessian + hessian.T)
    finite = jnp.all(jnp.isfinite(precision))
    precision = jnp.where(finite, precision, jnp.eye(dim, dtype=dtype))
    # Cholesky of the index-reversed precision J P J = M M^T gives the lower-triangular
    # covariance factor J M^{-T} J directly, with no explicit inverse.
    reversed_factor = cholesky(precision[::-1, ::-1])
    positive_definite = jnp.all(jnp.isfinite(reversed_factor)) & jnp.all(
        jnp.diag(reversed_factor) > 0
    )

    def exact(_):
        safe = jnp.where(positive_definite, reversed_factor, jnp.eye(dim, dtype=dtype))
        inverse = solve_triangular(safe, jnp.eye(dim, dtype=dtype), lower=True)
        return inverse.T[::-1, ::-1], jnp.zeros((), jnp.int32)

    def regularised(_):
        eigenvalues, eigenvectors = jnp.linalg.eigh(precision)
        threshold = dim * jnp.finfo(dtype).eps * jnp.max(jnp.abs(eigenvalues))
        flat = jnp.abs(eigenvalues) <= threshold
        repaired = jnp.where(flat, 1.0, jnp.abs(eigenvalues))
        scale = eigenvectors / jnp.sqrt(repaired)
        replaced = jnp.sum(eigenvalues <= threshold).astype(jnp.int32)
        return _lbfgs.lower_triangular_factor(scale), replaced

    scale_tril, num_repaired = jax.lax.cond(positive_definite, exact, regularised, None)
    status = jnp.where(~finite, _NONFINITE, jnp.where(positive_definite, _EXACT, _REGULARIZED))
    family = FullRankGaussian(position, jnp.log(jnp.diag(scale_tril)), jnp.tril(scale_tril, -1))
    return family, status, num_repaired


def laplace(
    target: Target,
    *,
    init: Float[Array, " dim"] | None = None,
    max_iters: int = _DEFAULT_MAX_ITERS,
    history_size: int = _DEFAULT_HISTORY,
) -> LaplaceResult:
    """The Laplace approximation: a Gaussian at the mode with the inverse negative Hessian.

    $q(z) = \\mathcal N(z;\\ \\hat z,\\ P^{-1})$ with $\\hat z$ from `find_map` and
    $P = -\\nabla^2 \\log\\tilde p(\\hat z)$ (``jax.hessian``). For a Gaussian target it
    is exact. The covariance's Cholesky factor is $J M^{-\\top} J$ where $J$ reverses
    the index order and $JPJ = MM^\\top$, so no matrix is inverted explicitly.

    When $P$ is not positive definite (a saddle, a flat direction, or a MAP run that
    stopped early) a RuntimeWarning says so and $P$ is repaired in its eigenbasis
    $P = V\\Lambda V^\\top$: every eigenvalue with $|\\lambda_i| \\le \\tau =
    d\\,\\epsilon\\max_j|\\lambda_j|$ (numerically zero, the matrix-rank rule) becomes 1
    (unit variance, the scale of an uninformed start), and every negative one becomes
    $|\\lambda_i|$ (keeping the local length scale of that direction);
    ``regularized`` is then ``True``.

    Args:
        target: the `probinf.Target`.
        init: where `find_map` starts; default ``target.init_position``, else zeros.
        max_iters: most L-BFGS iterations of `find_map`.
        history_size: L-BFGS history.

    Returns:
        A `LaplaceResult` with ``family`` (a `probinf.FullRankGaussian`), ``map`` and
        ``regularized``.

    Raises:
        RuntimeError: if the Hessian at the mode has non-finite entries (no Laplace
            approximation exists there).
        TypeError, ValueError: as for `find_map`.
    """
    map_result = find_map(target, init=init, max_iters=max_iters, history_size=history_size)
    family, status, num_repaired = _laplace_compiled(target, map_result.position)
    if not is_traced(status):
        status = int(status)
        if status == _NONFINITE:
            raise RuntimeError(
                "laplace: the Hessian of the target's log density at the mode found by "
                "find_map has non-finite entries, so no Laplace approximation exists there"
            )
        if status == _REGULARIZED:
            warnings.warn(
                "laplace: the negative Hessian at the mode is not positive definite "
                f"({int(num_repaired)} of {target.dim} eigenvalues are not positive); its "
                "numerically zero eigenvalues were set to 1 and negative ones to their "
                "absolute value, so the covariance is a regularised stand-in, not a "
                "Laplace approximation",
                RuntimeWarning,
                stacklevel=2,
            )
    return LaplaceResult(
        family=family, map=map_result, regularized=jnp.asarray(status == _REGULARIZED)
    )

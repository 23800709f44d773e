"""L-BFGS on a negative log density, shared by `find_map`, `laplace` and `pathfinder`.

One compiled ``lax.while_loop`` minimises $f(z) = -\\log \\tilde p(z)$ with

* the two-loop recursion for the search direction $-H_k \\nabla f$, with
  $H_k$ the limited-memory BFGS inverse Hessian of the last ``history_size``
  position/gradient difference pairs (Nocedal & Wright, *Numerical Optimization*,
  2nd ed., Algorithm 7.4) started from a *diagonal* matrix $\\mathrm{diag}(\\alpha_k)$
  updated at every accepted pair (Gilbert & Lemaréchal, "Some numerical experiments
  with variable-storage quasi-Newton algorithms", Math. Program. 1989) — the same
  $\\alpha_k$ and $H_k$ Pathfinder uses, so Pathfinder's local mean is the full
  quasi-Newton step. On the posteriordb development models this converged in fewer
  iterations, and on badly scaled ones (kilpisjarvi, arma) where the usual scalar
  $\\frac{s^\\top y}{y^\\top y} I$ did not. The first step is steepest descent of
  unit length;
* a strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5-3.6: bracketing,
  then zooming by safeguarded cubic interpolation); a trial step whose value or
  gradient is not finite counts as failing the sufficient-decrease test, so
  ``-inf``/NaN log densities at trial points are handled by backtracking;
* pairs $(s, y)$ kept only when $s^\\top y > \\epsilon \\|s\\|\\,\\|y\\|$ (the
  curvature condition as a cosine, so it does not depend on the Hessian's scale;
  $\\epsilon$ the dtype's machine epsilon), so every inverse Hessian stays
  positive definite.

Given standard normal ``draws``, the same loop also builds, at every iterate,
Pathfinder's normal approximation and estimates its ELBO (see
`probinf.vi.pathfinder`), keeping the best one in the loop carry, so the
optimisation history never has to be stored.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array

from probinf.linalg import cholesky

# Why the loop stopped (``LBFGSOutput.status``).
RUNNING = 0
CONVERGED_GRADIENT = 1
CONVERGED_OBJECTIVE = 2
CONVERGED_PRECISION = 3
MAX_ITERATIONS = 4
LINE_SEARCH_FAILED = 5

STOP_REASONS = {
    CONVERGED_GRADIENT: "the gradient's largest entry fell below `gtol`",
    CONVERGED_OBJECTIVE: (
        "the last step's decrease of -log density and the next step's predicted decrease "
        "fell below `ftol` (relative)"
    ),
    CONVERGED_PRECISION: (
        "no further decrease is representable in the working precision and the "
        "predicted decrease is below `ftol`"
    ),
    MAX_ITERATIONS: "it reached `max_iters` iterations",
    LINE_SEARCH_FAILED: (
        "the line search found no decrease along the steepest-descent direction "
        "(a non-finite or non-smooth log density around the current point, or a gradient "
        "that rounding error makes inconsistent with the values)"
    ),
}

_ARMIJO = 1e-4  # sufficient-decrease constant c1
_WOLFE = 0.9  # curvature constant c2 (the usual quasi-Newton choice)
_LOG_2PI = math.log(2.0 * math.pi)


def default_tolerances(dtype) -> tuple[float, float]:
    """``(ftol, gtol)`` for a working dtype.

    float64: Stan's optimiser defaults (relative objective change ``1e4 * eps``,
    gradient ``1e-8``). float32: ``eps`` relative change — the objective resolves
    only about 7 digits, so anything looser stops on ill-conditioned posteriors
    while tiny steps still make progress — and gradient ``1e-5`` (scipy L-BFGS-B's).
    """
    eps = float(jnp.finfo(dtype).eps)
    if jnp.finfo(dtype).bits >= 64:
        return 1e4 * eps, 1e-8
    return eps, 1e-5


class History(NamedTuple):
    """The last ``m`` accepted pairs, oldest first; invalid rows are zero."""

    s: Array  # (m, dim) position differences
    y: Array  # (m, dim) gradient differences (of -log density)
    valid: Array  # (m,) bool; valid rows form a suffix


def _empty_history(m: int, dim: int, dtype) -> History:
    return History(jnp.zeros((m, dim), dtype), jnp.zeros((m, dim), dtype), jnp.zeros(m, bool))


def _push(history: History, s: Array, y: Array, accept: Array) -> History:
    shifted = History(
        jnp.concatenate([history.s[1:], s[None]]),
        jnp.concatenate([history.y[1:], y[None]]),
        jnp.concatenate([history.valid[1:], jnp.ones(1, bool)]),
    )
    return jax.tree_util.tree_map(lambda new, old: jnp.where(accept, new, old), shifted, history)


def _two_loop(grad: Array, history: History, initial_scale: Array) -> Array:
    """$H_k g$ by the two-loop recursion with $H_0 = \\mathrm{diag}($``initial_scale``$)$ (vector or scalar).

    Invalid pairs get $\\rho = 0$ and drop out. Both loops are ``lax.scan``s, so the
    compiled size does not grow with the history size.
    """
    s, y, valid = history
    sy = jnp.sum(s * y, axis=-1)
    rho = jnp.where(valid, 1.0 / jnp.where(valid, sy, 1.0), 0.0)

    def newest_first(q, pair):
        s_i, y_i, rho_i = pair
        a = rho_i * (s_i @ q)
        return q - a * y_i, a

    q, coefficients = jax.lax.scan(newest_first, grad, (s, y, rho), reverse=True)

    def oldest_first(r, pair):
        s_i, y_i, rho_i, a = pair
        b = rho_i * (y_i @ r)
        return r + s_i * (a - b), None

    r, _ = jax.lax.scan(oldest_first, initial_scale * q, (s, y, rho, coefficients))
    return r


class _Search(NamedTuple):
    step: Array
    zooming: Array  # False while bracketing, True once [lo, hi] brackets a Wolfe point
    t: Array  # the next trial step
    t_lo: Array  # best step so far: satisfies sufficient decrease, lowest value
    f_lo: Array
    d_lo: Array  # directional derivative there
    g_lo: Array
    t_hi: Array  # the other end of the bracket
    f_hi: Array
    d_hi: Array
    done: Array


def _cubic_minimiser(a, f_a, d_a, b, f_b, d_b):
    """Minimiser of the cubic through (a, f_a, d_a), (b, f_b, d_b) (Nocedal & Wright, eq. 3.59)."""
    d1 = d_a + d_b - 3.0 * (f_a - f_b) / (a - b)
    d2 = jnp.sign(b - a) * jnp.sqrt(d1**2 - d_a * d_b)
    return b - (b - a) * (d_b + d2 - d1) / (d_b - d_a + 2.0 * d2)


def _line_search(value_and_grad, x, f, g, direction, max_steps):
    """Strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5 and 3.6).

    Bracketing doubles the step until the value rises, sufficient decrease fails or the
    slope turns non-negative; zooming then shrinks the bracket with safeguarded cubic
    interpolation. A trial whose value or gradient is not finite counts as a failed
    sufficient-decrease test, so the search backs out of ``-inf``/NaN regions (by
    bisection: no interpolation through a non-finite value). Returns
    ``(t, f(x + t d), grad, evaluations)``, with ``t = 0`` when no step decreased ``f``;
    after ``max_steps`` trials the best sufficient-decrease step is returned.
    """
    dtype = x.dtype
    slope = g @ direction
    inf = jnp.asarray(jnp.inf, dtype)

    def cond(state: _Search):
        return (~state.done) & (state.step < max_steps)

    def body(state: _Search):
        t = state.t
        f_t, g_t = value_and_grad(x + t * direction)
        d_t = g_t @ direction
        finite = jnp.isfinite(f_t) & jnp.all(jnp.isfinite(g_t))
        too_far = ~finite | (f_t > f + _ARMIJO * t * slope) | (f_t >= state.f_lo)
        wolfe = ~too_far & (jnp.abs(d_t) <= -_WOLFE * slope)
        uphill = ~too_far & ~wolfe & (d_t * (state.t_hi - state.t_lo) >= 0)
        # Bracketing: an uphill slope at t brackets [t_lo, t]; the old lo becomes hi.
        uphill = jnp.where(state.zooming, uphill, ~too_far & ~wolfe & (d_t >= 0))
        new_hi = too_far | uphill
        t_hi = jnp.where(too_far, t, jnp.where(uphill, state.t_lo, state.t_hi))
        f_hi = jnp.where(
            too_far, jnp.where(finite, f_t, inf), jnp.where(uphill, state.f_lo, state.f_hi)
        )
        d_hi = jnp.where(too_far, d_t, jnp.where(uphill, state.d_lo, state.d_hi))
        better = ~too_far
        t_lo = jnp.where(better, t, state.t_lo)
        f_lo = jnp.where(better, f_t, state.f_lo)
        d_lo = jnp.where(better, d_t, state.d_lo)
        g_lo = jnp.where(better, g_t, state.g_lo)
        zooming = state.zooming | new_hi

        # Next trial: double while bracketing; inside a bracket, the cubic minimiser kept
        # at least 10% of the bracket away from its ends (bisection if it cannot be used).
        low, high = jnp.minimum(t_lo, t_hi), jnp.maximum(t_lo, t_hi)
        width = high - low
        cubic = _cubic_minimiser(t_lo, f_lo, d_lo, t_hi, f_hi, d_hi)
        usable = jnp.isfinite(cubic) & jnp.isfinite(f_hi) & jnp.isfinite(d_hi)
        interpolated = jnp.clip(
            jnp.where(usable, cubic, 0.5 * (low + high)), low + 0.1 * width, high - 0.1 * width
        )
        next_t = jnp.where(zooming, interpolated, 2.0 * t)
        # A bracket narrower than rounding can resolve ends the search.
        collapsed = zooming & (width <= 4 * jnp.finfo(dtype).eps * jnp.maximum(high, 1.0))
        return _Search(
            state.step + jnp.int32(1),
            zooming,
            next_t,
            t_lo,
            f_lo,
            d_lo,
            g_lo,
            t_hi,
            f_hi,
            d_hi,
            wolfe | collapsed,
        )

    zero = jnp.zeros((), dtype)
    init = _Search(
        jnp.zeros((), jnp.int32),
        jnp.array(False),
        jnp.ones((), dtype),
        zero,
        f,
        slope,
        g,
        inf,
        inf,
        zero,
        jnp.array(False),
    )
    out = jax.lax.while_loop(cond, body, init)
    return out.t_lo, out.f_lo, out.g_lo, out.step


# --- Pathfinder's normal approximation ---------------------------------------------------


class Approximation(NamedTuple):
    """$\\mathcal N(\\mu, H)$ with $H = \\mathrm{diag}(\\alpha) + \\beta\\gamma\\beta^\\top$ in sampling form."""

    mean: Array  # (dim,)
    sqrt_alpha: Array  # (dim,)
    basis: Array  # (dim, k) orthonormal columns Q
    inner_factor: Array  # (k, k) lower Cholesky L of I + R gamma R^T
    log_det: Array  # log det H


def update_diagonal(alpha: Array, s: Array, y: Array, accept: Array) -> Array:
    """Pathfinder's diagonal $\\alpha$ (Zhang et al. 2022, Algorithm 3; Gilbert & Lemaréchal 1989).

    The diagonal of the BFGS update of the diagonal Hessian estimate
    $\\frac{a}{b}\\mathrm{diag}(\\alpha)^{-1}$ with $a = y^\\top \\mathrm{diag}(\\alpha) y$,
    $b = y^\\top s$, $c = s^\\top \\mathrm{diag}(\\alpha)^{-1} s$:
    $1/\\alpha_i' = \\frac{a}{b\\alpha_i} + \\frac{y_i^2}{b} - \\frac{a s_i^2}{b c \\alpha_i^2}$.
    Kept unchanged when the pair is rejected or rounding makes an entry non-positive.
    """
    a = y @ (alpha * y)
    b = y @ s
    c = s @ (s / alpha)
    inverse = a / (b * alpha) + y**2 / b - a * s**2 / (b * c * alpha**2)
    usable = accept & jnp.all(jnp.isfinite(inverse) & (inverse > 0))
    return jnp.where(usable, 1.0 / jnp.where(usable, inverse, 1.0), alpha)


def inverse_hessian_factors(alpha: Array, history: History) -> tuple[Array, Array]:
    """$\\beta$ ``(dim, 2m)`` and $\\gamma$ ``(2m, 2m)`` with $H = \\mathrm{diag}(\\alpha) + \\beta\\gamma\\beta^\\top$.

    The compact form of the L-BFGS inverse Hessian started at $\\mathrm{diag}(\\alpha)$
    (Byrd, Nocedal & Schnabel 1994, Theorem 2.2; Zhang et al. 2022, eq. II.1):
    $\\beta = [\\mathrm{diag}(\\alpha) Z,\\ S]$,
    $\\gamma = \\begin{pmatrix} 0 & -R^{-1} \\\\ -R^{-\\top} & R^{-\\top}(E + Z^\\top \\mathrm{diag}(\\alpha) Z) R^{-1}\\end{pmatrix}$,
    $R = \\mathrm{triu}(S^\\top Z)$, $E = \\mathrm{diag}(S^\\top Z)$. Invalid (zero) pairs
    get a unit diagonal in $R$, so they drop out exactly.
    """
    s, z, valid = history
    m = s.shape[0]
    sz = s @ z.T  # (i, j) = s_i . z_j
    r = jnp.triu(sz) + jnp.diag(jnp.where(valid, 0.0, 1.0).astype(s.dtype))
    r_inv = jax.scipy.linalg.solve_triangular(r, jnp.eye(m, dtype=s.dtype), lower=False)
    e = jnp.diag(jnp.diag(sz))
    alpha_z = z * alpha  # rows: diag(alpha) z_i
    lower_right = r_inv.T @ (e + alpha_z @ z.T) @ r_inv
    gamma = jnp.block([[jnp.zeros((m, m), s.dtype), -r_inv], [-r_inv.T, lower_right]])
    beta = jnp.concatenate([alpha_z, s], axis=0).T
    return beta, gamma


def normal_approximation(x: Array, grad: Array, alpha: Array, history: History) -> Approximation:
    """Pathfinder's local normal $\\mathcal N(x - H\\nabla f(x), H)$ (Zhang et al. 2022, Algorithm 4).

    With $W = \\mathrm{diag}(\\alpha)^{-1/2}\\beta = QR$ (thin QR) and
    $LL^\\top = I + R\\gamma R^\\top$, a square root of $H$ is
    $\\mathrm{diag}(\\alpha)^{1/2}(I + Q(L - I)Q^\\top)$ and
    $\\log\\det H = \\sum_i\\log\\alpha_i + 2\\sum_j \\log L_{jj}$; cost $O(d m^2)$.
    A non-positive-definite $H$ (rounding) gives NaN, which the caller rejects.
    """
    beta, gamma = inverse_hessian_factors(alpha, history)
    mean = x - (alpha * grad + beta @ (gamma @ (beta.T @ grad)))
    sqrt_alpha = jnp.sqrt(alpha)
    basis, r = jnp.linalg.qr(beta / sqrt_alpha[:, None], mode="reduced")
    k = r.shape[0]
    inner = jnp.eye(k, dtype=x.dtype) + r @ gamma @ r.T
    inner_factor = cholesky(inner)
    log_det = jnp.sum(jnp.log(alpha)) + 2.0 * jnp.sum(jnp.log(jnp.diag(inner_factor)))
    return Approximation(mean, sqrt_alpha, basis, inner_factor, log_det)


def transform_draws(approx: Approximation, u: Array) -> tuple[Array, Array]:
    """Map standard normal draws ``u`` ``(n, dim)`` to the approximation; their log densities."""
    dim = approx.mean.shape[0]
    k = approx.inner_factor.shape[0]
    identity = jnp.eye(k, dtype=u.dtype)
    correction = ((u @ approx.basis) @ (approx.inner_factor - identity).T) @ approx.basis.T
    z = approx.mean + approx.sqrt_alpha * (u + correction)
    log_q = -0.5 * (dim * _LOG_2PI + approx.log_det + jnp.sum(u**2, axis=-1))
    return z, log_q


def approximation_scale(approx: Approximation) -> Array:
    """A dense ``(dim, dim)`` square root $A$ of $H$, $AA^\\top = H$ (not triangular)."""
    dim = approx.mean.shape[0]
    k = approx.inner_factor.shape[0]
    middle = (
        jnp.eye(dim, dtype=approx.mean.dtype)
        + approx.basis
        @ (approx.inner_factor - jnp.eye(k, dtype=approx.mean.dtype))
        @ approx.basis.T
    )
    return approx.sqrt_alpha[:, None] * middle


def lower_triangular_factor(scale: Array) -> Array:
    """The lower-triangular $L$ (positive diagonal) with $LL^\\top = AA^\\top$, via QR of $A^\\top$.

    Orthogonal factorisation of the square root never squares its condition number,
    unlike forming $AA^\\top$ and taking its Cholesky factor.
    """
    _, r = jnp.linalg.qr(scale.T)
    signs = jnp.where(jnp.diag(r) < 0, -1.0, 1.0).astype(r.dtype)
    return (signs[:, None] * r).T


def estimate_elbo(approx: Approximation, log_density, u: Array) -> Array:
    """Monte Carlo ELBO $\\frac1n\\sum_i \\log\\tilde p(z_i) - \\log q(z_i)$ at draws ``u``; ``-inf`` if not finite."""
    z, log_q = transform_draws(approx, u)
    elbo = jnp.mean(log_density(z).astype(log_q.dtype) - log_q)
    return jnp.where(jnp.isfinite(elbo), elbo, -jnp.inf)


# --- the optimiser ----------------------------------------------------------------------


class LBFGSOutput(NamedTuple):
    position: Array
    log_density: Array
    grad: Array  # of -log density
    num_iterations: Array
    num_evaluations: Array
    status: Array
    # Pathfinder only (``None`` otherwise)
    elbos: Array | None = None  # (max_iters + 1,), NaN past the last iterate
    path: Array | None = None  # (max_iters + 1, dim), NaN past the last iterate
    best: Approximation | None = None
    best_elbo: Array | None = None
    best_index: Array | None = None


class _Carry(NamedTuple):
    x: Array
    f: Array
    g: Array
    direction: Array  # the search direction at x
    history: History
    iteration: Array
    status: Array
    num_evaluations: Array
    alpha: Array  # Pathfinder's diagonal inverse-Hessian estimate
    # Pathfinder only (``None`` otherwise)
    pending: Array | None  # the current iterate's ELBO is not recorded yet
    elbos: Array | None
    path: Array | None
    best: Approximation | None
    best_elbo: Array | None
    best_index: Array | None


def run_lbfgs(
    log_density,
    x0: Array,
    *,
    max_iters: int,
    history_size: int,
    ftol: float,
    gtol: float,
    max_line_search: int = 40,
    draws: Array | None = None,
) -> LBFGSOutput:
    """Minimise ``-log_density`` from ``x0`` (see the module docstring). Traceable.

    With standard normal ``draws`` ``(num_draws, dim)`` the loop also records Pathfinder's
    ELBO estimate at every iterate. The same draws serve every iterate (common random
    numbers): each estimate stays unbiased and their differences, which decide the
    selection, are less noisy than with independent draws. Each iterate is recorded
    once, at the top of the loop body, so the ELBO code is compiled once.
    """
    dtype = x0.dtype
    dim = x0.shape[0]
    eps = jnp.finfo(dtype).eps
    track = draws is not None
    num_draws = 0 if draws is None else draws.shape[0]

    def value_and_grad(z):
        value, grad = jax.value_and_grad(lambda v: -log_density(v).astype(dtype))(z)
        return value, grad.astype(dtype)

    def search_direction(g: Array, history: History, alpha: Array) -> Array:
        """$-H g$, or the unit-length steepest-descent step if that is not a descent direction."""
        has_history = history.valid[-1]
        steepest_scale = 1.0 / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(dtype).tiny)
        initial_scale = jnp.where(has_history, alpha, steepest_scale)
        direction = -_two_loop(g, history, initial_scale)
        descent = (g @ direction < 0) & jnp.all(jnp.isfinite(direction))
        return jnp.where(descent, direction, -steepest_scale * g)

    f0, g0 = value_and_grad(x0)
    history0 = _empty_history(history_size, dim, dtype)
    status0 = jnp.where(jnp.max(jnp.abs(g0)) <= gtol, CONVERGED_GRADIENT, RUNNING).astype(jnp.int32)
    if track:
        nan = jnp.asarray(jnp.nan, dtype)
        placeholder = Approximation(
            mean=jnp.full(dim, nan),
            sqrt_alpha=jnp.ones(dim, dtype),
            basis=jnp.zeros((dim, min(dim, 2 * history_size)), dtype),
            inner_factor=jnp.eye(min(dim, 2 * history_size), dtype=dtype),
            log_det=jnp.zeros((), dtype),
        )
        extras = (
            jnp.array(True),
            jnp.full(max_iters + 1, nan),
            jnp.full((max_iters + 1, dim), nan),
            placeholder,
            jnp.asarray(-jnp.inf, dtype),
            jnp.zeros((), jnp.int32),
        )
    else:
        extras = (None,) * 6
    carry0 = _Carry(
        x0,
        f0,
        g0,
        search_direction(g0, history0, jnp.ones(dim, dtype)),
        history0,
        jnp.zeros((), jnp.int32),
        status0,
        jnp.ones((), jnp.int32),
        jnp.ones(dim, dtype),
        *extras,
    )

    def record(carry: _Carry) -> _Carry:
        """Pathfinder's approximation and ELBO at the current iterate."""
        approx = normal_approximation(carry.x, carry.g, carry.alpha, carry.history)
        elbo = estimate_elbo(approx, log_density, draws)
        index = carry.iteration
        # Iterate 0 always fills the slot, so a path with no finite ELBO still returns it.
        better = (elbo > carry.best_elbo) | (index == 0)
        return carry._replace(
            pending=jnp.array(False),
            elbos=carry.elbos.at[index].set(elbo),
            path=carry.path.at[index].set(carry.x),
            best=jax.tree_util.tree_map(lambda a, b: jnp.where(better, a, b), approx, carry.best),
            best_elbo=jnp.where(better, elbo, carry.best_elbo),
            best_index=jnp.where(better, index, carry.best_index),
            num_evaluations=carry.num_evaluations + jnp.int32(num_draws),
        )

    def step(carry: _Carry) -> _Carry:
        """One L-BFGS iteration (or a history reset after a failed line search)."""
        x, f, g, history = carry.x, carry.f, carry.g, carry.history
        has_history = history.valid[-1]
        direction = carry.direction
        slope = g @ direction

        t, f_new, g_new, steps = _line_search(value_and_grad, x, f, g, direction, max_line_search)
        moved = t > 0
        x_new = x + t * direction
        s, y = x_new - x, g_new - g
        accept = moved & (s @ y > eps * jnp.linalg.norm(s) * jnp.linalg.norm(y))
        new_history = _push(history, s, y, accept)
        # On a failed search with history: forget it and retry along -gradient.
        new_history = jax.tree_util.tree_map(
            lambda h, empty: jnp.where(moved, h, empty),
            new_history,
            _empty_history(history_size, dim, dtype),
        )
        iteration = carry.iteration + moved.astype(jnp.int32)
        x_next, f_next, g_next = (
            jnp.where(moved, x_new, x),
            jnp.where(moved, f_new, f),
            jnp.where(moved, g_new, g),
        )
        alpha = update_diagonal(carry.alpha, s, y, accept)
        next_direction = search_direction(g_next, new_history, alpha)

        scale = jnp.maximum(jnp.maximum(jnp.abs(f), jnp.abs(f_new)), 1.0)
        gradient_small = jnp.max(jnp.abs(g_new)) <= gtol
        # Converged in the objective when the last step lowered -log p by at most
        # ftol * scale and the next quasi-Newton step predicts no more than that:
        # half the Newton decrement g^T H g (about half the squared distance to the mode
        # in posterior sd units) is below ftol * scale.
        decrease_small = ((f - f_new) <= ftol * scale) & (
            -(g_next @ next_direction) <= 2.0 * ftol * scale
        )
        # A failed search along a direction whose predicted decrease is below the
        # objective tolerance means we are at the working precision's floor.
        at_precision = -slope <= 10.0 * ftol * jnp.maximum(jnp.abs(f), 1.0)
        status = jnp.select(
            [
                moved & gradient_small,
                moved & decrease_small,
                moved & (iteration >= max_iters),
                ~moved & at_precision,
                ~moved & ~has_history,
            ],
            [
                CONVERGED_GRADIENT,
                CONVERGED_OBJECTIVE,
                MAX_ITERATIONS,
                CONVERGED_PRECISION,
                LINE_SEARCH_FAILED,
            ],
            RUNNING,
        ).astype(jnp.int32)
        new = carry._replace(
            x=x_next,
            f=f_next,
            g=g_next,
            direction=next_direction,
            history=new_history,
            iteration=iteration,
            status=status,
            num_evaluations=carry.num_evaluations + jnp.asarray(steps, jnp.int32),
            alpha=alpha,
        )
        if track:
            new = new._replace(pending=moved)
        return new

    def cond(carry: _Carry):
        running = carry.status == RUNNING
        return (running | carry.pending) if track else running

    def body(carry: _Carry) -> _Carry:
        if not track:
            return step(carry)
        carry = jax.lax.cond(carry.pending, record, lambda c: c, carry)
        return jax.lax.cond(carry.status == RUNNING, step, lambda c: c, carry)

    out = jax.lax.while_loop(cond, body, carry0)
    return LBFGSOutput(
        position=out.x,
        log_density=-out.f,
        grad=out.g,
        num_iterations=out.iteration,
        num_evaluations=out.num_evaluations,
        status=out.status,
        elbos=out.elbos,
        path=out.path,
        best=out.best,
        best_elbo=out.best_elbo,
        best_index=out.best_index,
    )

r"""Exact filters and smoothers, sequential (``lax.scan``) and parallel-in-time (``lax.associative_scan``).

Two model classes have exact recursions:

* the linear-Gaussian state-space model (`probinf.smc.models.LinearGaussianSSM`):
  the Kalman filter, the Rauch–Tung–Striebel smoother and the exact log evidence;
* the hidden Markov model with ``K`` discrete states: the forward–backward algorithm.

Each recursion is written twice. ``method="sequential"`` is the textbook
$O(T)$-depth ``lax.scan``. ``method="parallel"`` recasts the same recursion as
an associative operator on per-step *elements* and evaluates every prefix (or suffix)
with ``jax.lax.associative_scan`` in $O(\log T)$ depth, which pays off on
accelerators for long series (Särkkä and García-Fernández, 2021, *Temporal
parallelization of Bayesian smoothers*, IEEE TAC 66(1)). Both give the same answer
up to floating-point rounding.
"""

from __future__ import annotations

import warnings
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from probinf.smc.models import LinearGaussianSSM, gaussian_log_density
from probinf.validation import first_entry, is_traced, raise_if

__all__ = [
    "KalmanResult",
    "HMMResult",
    "kalman_filter",
    "rts_smoother",
    "hmm_filter",
    "hmm_smoother",
]

Method = Literal["sequential", "parallel"]


def _check_method(method) -> str:
    if method not in ("sequential", "parallel"):
        raise ValueError(f"`method` must be 'sequential' or 'parallel', got {method!r}")
    return method


def _sym(matrix):
    return 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))


def _mT(matrix):
    return jnp.swapaxes(matrix, -1, -2)


class KalmanResult(eqx.Module):
    """Exact filtering (and, from `rts_smoother`, smoothing) of a linear-Gaussian model.

    Attributes:
        filtered_means: ``(T, dx)`` means of $p(x_t \\mid y_{0:t})$.
        filtered_covs: ``(T, dx, dx)`` covariances of $p(x_t \\mid y_{0:t})$.
        log_likelihoods: ``(T,)`` $\\log p(y_t \\mid y_{0:t-1})$.
        log_evidence: $\\log p(y_{0:T-1})$, the sum of ``log_likelihoods``.
        smoothed_means: ``(T, dx)`` means of $p(x_t \\mid y_{0:T-1})$ (``None`` from
            `kalman_filter`).
        smoothed_covs: ``(T, dx, dx)`` covariances of the same (or ``None``).
    """

    filtered_means: Float[Array, "T dx"]
    filtered_covs: Float[Array, "T dx dx"]
    log_likelihoods: Float[Array, " T"]
    log_evidence: Float[Array, ""]
    smoothed_means: Float[Array, "T dx"] | None = None
    smoothed_covs: Float[Array, "T dx dx"] | None = None


# --- Kalman filter ---------------------------------------------------------------------------


def _condition(mean, cov, h, r, y):
    """Gaussian prior N(mean, cov) conditioned on y ~ N(h x, r)."""
    s = h @ cov @ h.T + r
    gain = jnp.linalg.solve(s, h @ cov).T
    return mean + gain @ (y - h @ mean), _sym(cov - gain @ s @ gain.T)


@eqx.filter_jit
def _kalman_sequential(model: LinearGaussianSSM):
    f, q = model.transition_matrix, model.transition_cov
    h, r = model.observation_matrix, model.observation_cov
    y = model.observations
    first = _condition(model.initial_mean, model.initial_cov, h, r, y[0])

    def step(carry, y_t):
        mean, cov = carry
        predicted_mean = f @ mean
        predicted_cov = _sym(f @ cov @ f.T + q)
        updated = _condition(predicted_mean, predicted_cov, h, r, y_t)
        return updated, updated

    _, (means, covs) = jax.lax.scan(step, first, y[1:])
    return jnp.concatenate([first[0][None], means]), jnp.concatenate([first[1][None], covs])


def _kalman_elements(model: LinearGaussianSSM):
    """Per-step elements (A, b, C, eta, J) of Särkkä & García-Fernández (2021), eq. (13)-(14).

    Element t represents p(x_t | x_{t-1}, y_t) = N(A x_{t-1} + b, C) and
    p(y_t | x_{t-1}) as an information-form function N_I(x_{t-1}; eta, J).
    """
    f, q = model.transition_matrix, model.transition_cov
    h, r = model.observation_matrix, model.observation_cov
    y = model.observations
    dx = model.state_dim
    eye = jnp.eye(dx, dtype=f.dtype)

    s = h @ q @ h.T + r
    gain = jnp.linalg.solve(s, h @ q).T  # Q H^T S^-1
    a = (eye - gain @ h) @ f
    c = _sym((eye - gain @ h) @ q)
    hf = h @ f
    s_inv_hf = jnp.linalg.solve(s, hf)  # S^-1 H F
    j = _sym(hf.T @ s_inv_hf)
    b = y[1:] @ gain.T
    eta = y[1:] @ s_inv_hf  # (H F)^T S^-1 y_t

    b0, c0 = _condition(model.initial_mean, model.initial_cov, h, r, y[0])
    steps = y.shape[0] - 1
    tile = lambda m: jnp.broadcast_to(m, (steps, *m.shape))
    return (
        jnp.concatenate([jnp.zeros((1, dx, dx)), tile(a)]),
        jnp.concatenate([b0[None], b]),
        jnp.concatenate([c0[None], tile(c)]),
        jnp.concatenate([jnp.zeros((1, dx)), eta]),
        jnp.concatenate([jnp.zeros((1, dx, dx)), tile(j)]),
    )


def _kalman_combine(earlier, later):
    a1, b1, c1, eta1, j1 = earlier
    a2, b2, c2, eta2, j2 = later
    dx = a1.shape[-1]
    eye = jnp.eye(dx, dtype=a1.dtype)
    # C and J are symmetric, so (I + J2 C1)^-1 = ((I + C1 J2)^-1)^T: one solve serves both
    # halves of the operator, with right-hand sides [A1 | C1 | b1 + C1 eta2].
    rhs = jnp.concatenate([a1, c1, b1[..., None] + c1 @ eta2[..., None]], axis=-1)
    solved = jnp.linalg.solve(eye + c1 @ j2, rhs)
    x_a, x_c, x_b = solved[..., :dx], solved[..., dx:2 * dx], solved[..., 2 * dx]
    a = a2 @ x_a
    b = (a2 @ x_b[..., None])[..., 0] + b2
    c = _sym(a2 @ x_c @ _mT(a2) + c2)
    eta = (_mT(x_a) @ (eta2 - (j2 @ b1[..., None])[..., 0])[..., None])[..., 0] + eta1
    j = _sym(_mT(x_a) @ j2 @ a1 + j1)
    return a, b, c, eta, j


@eqx.filter_jit
def _kalman_parallel(model: LinearGaussianSSM):
    _, means, covs, _, _ = jax.lax.associative_scan(_kalman_combine, _kalman_elements(model))
    return means, covs


@eqx.filter_jit
def _log_likelihoods(model: LinearGaussianSSM, means, covs):
    """log p(y_t | y_{0:t-1}) from the filtered moments at t-1, for all t at once."""
    f, q = model.transition_matrix, model.transition_cov
    h, r = model.observation_matrix, model.observation_cov
    predicted_means = jnp.concatenate([model.initial_mean[None], means[:-1] @ f.T])
    predicted_covs = jnp.concatenate(
        [model.initial_cov[None], _sym(f @ covs[:-1] @ f.T + q)]
    )
    y_means = predicted_means @ h.T
    y_covs = _sym(h @ predicted_covs @ h.T + r)
    return gaussian_log_density(model.observations, y_means, y_covs)


def _check_model(model):
    if not isinstance(model, LinearGaussianSSM):
        raise TypeError(f"`model` must be a LinearGaussianSSM, got {type(model).__name__}")


def kalman_filter(model: LinearGaussianSSM, method: Method = "sequential") -> KalmanResult:
    r"""The Kalman filter and the exact log evidence of a linear-Gaussian model.

    Sequential form: predict $m^-_t = F m_{t-1}$, $P^-_t = F P_{t-1} F^\top + Q$;
    update with $S_t = H P^-_t H^\top + R$, $K_t = P^-_t H^\top S_t^{-1}$,
    $m_t = m^-_t + K_t (y_t - H m^-_t)$, $P_t = P^-_t - K_t S_t K_t^\top$.
    The log evidence is $\sum_t \log \mathcal N(y_t; H m^-_t, S_t)$.

    Parallel form: the associative filtering operator of Särkkä and García-Fernández
    (2021) on elements $(A_t, b_t, C_t, \eta_t, J_t)$; the prefix of elements
    $0..t$ holds $(m_t, P_t)$ in its $(b, C)$ slots.

    Args:
        model: the model with its observations.
        method: ``"sequential"`` (``lax.scan``) or ``"parallel"`` (``lax.associative_scan``).

    Returns:
        A `KalmanResult` without the smoothing fields.

    Raises:
        ValueError: for an unknown ``method``, or when a step's log likelihood is
            undefined (NaN) because its predicted observation covariance
            $H P^-_t H^\top + R$ is singular, e.g. ``observation_cov = 0`` with a state
            known exactly. (`LinearGaussianSSM` already rejects covariances that are not
            positive semi-definite.) Inside ``jit`` the check runs at run time.
        TypeError: if ``model`` is not a `LinearGaussianSSM`.
    """
    _check_model(model)
    method = _check_method(method)
    run = _kalman_sequential if method == "sequential" else _kalman_parallel
    means, covs = run(model)
    log_likelihoods = _check_log_likelihoods(_log_likelihoods(model, means, covs))
    return KalmanResult(means, covs, log_likelihoods, jnp.sum(log_likelihoods))


def _check_log_likelihoods(log_likelihoods):
    undefined = jnp.isnan(log_likelihoods)
    step = "some step"
    if not is_traced(log_likelihoods) and bool(jnp.any(undefined)):
        step = f"step {int(np.argmax(np.asarray(undefined)))}"
    return raise_if(log_likelihoods, [(
        jnp.any(undefined),
        f"the Kalman filter's log likelihood log p(y_t | y_(0:t-1)) is NaN at {step}: the "
        "predicted observation covariance H P_t^- H^T + R is singular there (e.g. "
        "`observation_cov` = 0 with a state known exactly); make `observation_cov` positive "
        "definite",
    )])


@eqx.filter_jit
def _rts_sequential(model, means, covs):
    f, q = model.transition_matrix, model.transition_cov

    def step(carry, filtered):
        smoothed_mean, smoothed_cov = carry
        mean, cov = filtered
        predicted_cov = _sym(f @ cov @ f.T + q)
        gain = jnp.linalg.solve(predicted_cov, f @ cov).T  # P F^T (P^-)^-1
        new_mean = mean + gain @ (smoothed_mean - f @ mean)
        new_cov = _sym(cov + gain @ (smoothed_cov - predicted_cov) @ gain.T)
        return (new_mean, new_cov), (new_mean, new_cov)

    last = (means[-1], covs[-1])
    _, (sm, sc) = jax.lax.scan(step, last, (means[:-1], covs[:-1]), reverse=True)
    return jnp.concatenate([sm, means[-1:]]), jnp.concatenate([sc, covs[-1:]])


@eqx.filter_jit
def _rts_parallel(model, means, covs):
    # Elements (E_t, g_t, L_t): p(x_t | x_{t+1}, y_{0:t}) = N(E_t x_{t+1} + g_t, L_t).
    f, q = model.transition_matrix, model.transition_cov
    predicted_covs = _sym(f @ covs[:-1] @ f.T + q)
    e = _mT(jnp.linalg.solve(predicted_covs, f @ covs[:-1]))
    g = means[:-1] - (e @ (means[:-1] @ f.T)[..., None])[..., 0]
    ell = _sym(covs[:-1] - e @ f @ covs[:-1])
    dx = means.shape[-1]
    e = jnp.concatenate([e, jnp.zeros((1, dx, dx))])
    g = jnp.concatenate([g, means[-1:]])
    ell = jnp.concatenate([ell, covs[-1:]])

    def combine(later, earlier):  # reverse scan passes the later element first
        e2, g2, l2 = later
        e1, g1, l1 = earlier
        return e1 @ e2, (e1 @ g2[..., None])[..., 0] + g1, _sym(e1 @ l2 @ _mT(e1) + l1)

    _, smoothed_means, smoothed_covs = jax.lax.associative_scan(combine, (e, g, ell), reverse=True)
    return smoothed_means, smoothed_covs


def rts_smoother(model: LinearGaussianSSM, method: Method = "sequential") -> KalmanResult:
    r"""The Rauch–Tung–Striebel smoother: $p(x_t \mid y_{0:T-1})$ for every ``t``.

    Sequential form: with $G_t = P_t F^\top (F P_t F^\top + Q)^{-1}$,
    $m^s_t = m_t + G_t (m^s_{t+1} - F m_t)$ and
    $P^s_t = P_t + G_t (P^s_{t+1} - F P_t F^\top - Q) G_t^\top$.
    Parallel form: the associative smoothing operator of Särkkä and García-Fernández
    (2021) on elements $(E_t, g_t, L_t)$, evaluated as a suffix scan.
    The filter runs with the same ``method``.

    Args:
        model: the model with its observations.
        method: ``"sequential"`` or ``"parallel"``.

    Returns:
        A `KalmanResult` with filtering and smoothing fields.

    Raises:
        ValueError: for an unknown ``method``.
        TypeError: if ``model`` is not a `LinearGaussianSSM`.
    """
    filtered = kalman_filter(model, method)
    run = _rts_sequential if method == "sequential" else _rts_parallel
    means, covs = run(model, filtered.filtered_means, filtered.filtered_covs)
    return eqx.tree_at(
        lambda r: (r.smoothed_means, r.smoothed_covs), filtered, (means, covs),
        is_leaf=lambda x: x is None,
    )


# --- hidden Markov models --------------------------------------------------------------------


class HMMResult(eqx.Module):
    """Exact inference in a discrete hidden Markov model.

    Attributes:
        log_evidence: $\\log p(y_{0:T-1})$.
        log_filtered: ``(T, K)`` $\\log p(x_t \\mid y_{0:t})$.
        log_smoothed: ``(T, K)`` $\\log p(x_t \\mid y_{0:T-1})$ (``None`` from
            `hmm_filter`).
    """

    log_evidence: Float[Array, ""]
    log_filtered: Float[Array, "T K"]
    log_smoothed: Float[Array, "T K"] | None = None


def _check_hmm(log_initial, log_transition, log_likelihoods):
    pieces = (log_initial, log_transition, log_likelihoods)
    # One float dtype: the inputs' widest (float64 under x64), integers -> the default float.
    dtype = jnp.result_type(*(p if hasattr(p, "dtype") else np.asarray(p) for p in pieces), float)
    log_initial, log_transition, log_likelihoods = (jnp.asarray(p, dtype=dtype) for p in pieces)
    if log_initial.ndim != 1 or log_initial.shape[0] < 1:
        raise ValueError(
            f"`log_initial` must be a 1-d array of K log probabilities, got shape {log_initial.shape}"
        )
    k = log_initial.shape[0]
    if log_transition.shape != (k, k):
        raise ValueError(
            f"`log_transition` must have shape ({k}, {k}) to match `log_initial`, "
            f"got {log_transition.shape}"
        )
    if log_likelihoods.ndim != 2 or log_likelihoods.shape[1] != k or log_likelihoods.shape[0] < 1:
        raise ValueError(
            f"`log_likelihoods` must have shape (T, {k}) with T >= 1, got {log_likelihoods.shape}"
        )
    for name, value in (("log_initial", log_initial), ("log_transition", log_transition),
                        ("log_likelihoods", log_likelihoods)):
        if is_traced(value):
            continue
        values = np.asarray(value)
        bad = np.isnan(values) | (values == np.inf)  # -inf (probability zero) is valid
        if bad.any():
            raise ValueError(f"`{name}` must hold log probabilities (no NaN or +inf), got "
                             f"{first_entry(values, bad)}")
    return log_initial, log_transition, log_likelihoods


def _warn_if_impossible(result: HMMResult, smoothed: bool) -> None:
    """Say so when the observations have probability zero (a concrete result only)."""
    if is_traced(result.log_evidence) or float(result.log_evidence) > -np.inf:
        return
    step = int(np.argmax(np.isnan(np.asarray(result.log_filtered[:, 0]))))
    warnings.warn(
        f"the observations have probability zero under the model: at step {step} no state has "
        "positive probability, so `log_evidence` is -inf and the filtered marginals from that "
        f"step on{' (and every smoothed marginal)' if smoothed else ''} are NaN, being undefined",
        RuntimeWarning, stacklevel=3,
    )


def _normalize(log_p, axis=-1):
    return log_p - jax.scipy.special.logsumexp(log_p, axis=axis, keepdims=True)


@eqx.filter_jit
def _hmm_forward_sequential(log_initial, log_transition, log_likelihoods):
    def predict_update(log_filtered_prev, log_lik):
        log_predicted = jax.scipy.special.logsumexp(log_filtered_prev[:, None] + log_transition, 0)
        joint = log_predicted + log_lik
        increment = jax.scipy.special.logsumexp(joint)
        return joint - increment, (joint - increment, increment)

    joint0 = log_initial + log_likelihoods[0]
    increment0 = jax.scipy.special.logsumexp(joint0)
    first = joint0 - increment0
    _, (rest, increments) = jax.lax.scan(predict_update, first, log_likelihoods[1:])
    # After a step of probability zero the filter is NaN (0/0) and so are later increments;
    # the evidence is exactly zero.
    impossible = (increment0 == -jnp.inf) | jnp.any(increments == -jnp.inf)
    log_evidence = jnp.where(impossible, -jnp.inf, increment0 + jnp.sum(increments))
    return log_evidence, jnp.concatenate([first[None], rest])


@eqx.filter_jit
def _hmm_backward_sequential(log_transition, log_likelihoods):
    """Normalised log beta_t(i) ∝ log p(y_{t+1:T-1} | x_t = i)."""

    def step(log_beta_next, log_lik_next):
        log_beta = jax.scipy.special.logsumexp(log_transition + (log_lik_next + log_beta_next), 1)
        log_beta = _normalize(log_beta)
        return log_beta, log_beta

    k = log_transition.shape[0]
    last = jnp.zeros(k, log_transition.dtype)
    _, betas = jax.lax.scan(step, last, log_likelihoods[1:], reverse=True)
    return jnp.concatenate([betas, last[None]])


def _log_matmul(x, y):
    return jax.scipy.special.logsumexp(x[..., :, :, None] + y[..., None, :, :], axis=-2)


def _scaled_log_matmul(x, y):
    """Log-space product of (matrix, log_scale) elements, keeping each matrix's max at 0.

    Keeping the matrices normalised holds the working precision of the filtered
    probabilities however long the chain; the scale carries the running log evidence.
    """
    product = _log_matmul(x[0], y[0])
    peak = jnp.max(product, axis=(-2, -1))
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    return product - peak[..., None, None], x[1] + y[1] + peak


def _hmm_elements(log_initial, log_transition, log_likelihoods):
    # Element t is the matrix M_t[i, j] = log p(x_t = j | x_{t-1} = i) + log p(y_t | x_t = j);
    # element 0 repeats log p(x_0 = j) + log p(y_0 | x_0 = j) in every row.
    k = log_initial.shape[0]
    first = jnp.broadcast_to(log_initial + log_likelihoods[0], (k, k))
    rest = log_transition[None] + log_likelihoods[1:, None, :]
    matrices = jnp.concatenate([first[None], rest])
    peak = jnp.max(matrices, axis=(-2, -1))
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    return matrices - peak[:, None, None], peak


@eqx.filter_jit
def _hmm_forward_parallel(log_initial, log_transition, log_likelihoods):
    elements = _hmm_elements(log_initial, log_transition, log_likelihoods)
    matrices, scales = jax.lax.associative_scan(_scaled_log_matmul, elements)
    log_alpha = matrices[:, 0, :]  # every row is the same
    log_norm = jax.scipy.special.logsumexp(log_alpha, axis=-1)
    return scales[-1] + log_norm[-1], log_alpha - log_norm[:, None]


@eqx.filter_jit
def _hmm_backward_parallel(log_initial, log_transition, log_likelihoods):
    matrices, scales = _hmm_elements(log_initial, log_transition, log_likelihoods)
    # Suffix products M_{t+1} ... M_{T-1}; the reverse scan passes the later element first.
    suffix, _ = jax.lax.associative_scan(
        lambda later, earlier: _scaled_log_matmul(earlier, later),
        (matrices[1:], scales[1:]),
        reverse=True,
    )
    log_beta = _normalize(jax.scipy.special.logsumexp(suffix, axis=-1))
    k = log_initial.shape[0]
    return jnp.concatenate([log_beta, jnp.zeros((1, k), log_beta.dtype)])


def hmm_filter(
    log_initial: Float[Array, " K"],
    log_transition: Float[Array, "K K"],
    log_likelihoods: Float[Array, "T K"],
    method: Method = "sequential",
) -> HMMResult:
    r"""Forward algorithm of a hidden Markov model: filtered marginals and the log evidence.

    With $\alpha_0(j) = \pi_j\, p(y_0 \mid j)$ and
    $\alpha_t(j) = \sum_i \alpha_{t-1}(i)\, A_{ij}\, p(y_t \mid j)$, the evidence is
    $\sum_j \alpha_{T-1}(j)$. All in log space. The parallel form evaluates the
    prefix products of the matrices $M_t[i,j] = A_{ij}\, p(y_t \mid j)$ with an
    associative log-space matrix product.

    Args:
        log_initial: ``(K,)`` log initial probabilities $\log \pi$.
        log_transition: ``(K, K)`` log transition matrix, rows indexed by the previous state.
        log_likelihoods: ``(T, K)`` $\log p(y_t \mid x_t = k)$.
        method: ``"sequential"`` or ``"parallel"``.

    Returns:
        An `HMMResult` without ``log_smoothed``. When the observations have probability
        zero under the model (at some step every state is impossible: its predicted
        probability or its likelihood is zero), ``log_evidence`` is ``-inf``, exactly,
        and the filtered marginals from that step on are NaN: conditioning on an event
        of probability zero is undefined. A ``RuntimeWarning`` names the step (outside
        ``jit``).

    Raises:
        ValueError: on shapes that do not match, NaN or ``+inf`` entries, or an unknown
            ``method``.
    """
    method = _check_method(method)
    args = _check_hmm(log_initial, log_transition, log_likelihoods)
    run = _hmm_forward_sequential if method == "sequential" else _hmm_forward_parallel
    log_evidence, log_filtered = run(*args)
    result = HMMResult(log_evidence, log_filtered)
    _warn_if_impossible(result, smoothed=False)
    return result


def hmm_smoother(
    log_initial: Float[Array, " K"],
    log_transition: Float[Array, "K K"],
    log_likelihoods: Float[Array, "T K"],
    method: Method = "sequential",
) -> HMMResult:
    r"""Forward–backward algorithm: smoothed marginals $p(x_t \mid y_{0:T-1})$.

    $\beta_{T-1} = 1$, $\beta_t(i) = \sum_j A_{ij}\, p(y_{t+1} \mid j)\,\beta_{t+1}(j)$
    and $p(x_t \mid y) \propto \alpha_t \beta_t$. The parallel form takes suffix
    products of the same matrices as `hmm_filter`.

    Args:
        log_initial: ``(K,)`` log initial probabilities.
        log_transition: ``(K, K)`` log transition matrix.
        log_likelihoods: ``(T, K)`` log observation likelihoods.
        method: ``"sequential"`` or ``"parallel"``.

    Returns:
        An `HMMResult` with every field. For observations of probability zero, as in
        `hmm_filter` (``log_evidence = -inf``, with a ``RuntimeWarning``), and every
        smoothed marginal is NaN.

    Raises:
        ValueError: on shapes that do not match, NaN or ``+inf`` entries, or an unknown
            ``method``.
    """
    method = _check_method(method)
    args = _check_hmm(log_initial, log_transition, log_likelihoods)
    if method == "sequential":
        log_evidence, log_filtered = _hmm_forward_sequential(*args)
        log_beta = _hmm_backward_sequential(args[1], args[2])
    else:
        log_evidence, log_filtered = _hmm_forward_parallel(*args)
        log_beta = _hmm_backward_parallel(*args)
    # With zero evidence the backward messages before the impossible step are 0/0 as well.
    log_smoothed = jnp.where(log_evidence == -jnp.inf, jnp.nan,
                             _normalize(log_filtered + log_beta))
    result = HMMResult(log_evidence, log_filtered, log_smoothed)
    _warn_if_impossible(result, smoothed=True)
    return result



"""Parameter learning: expectation-maximisation and gradient training.

**EM.** A smooth, decomposable circuit is a latent-variable model whose latent
states are its induced trees, so EM applies (Peharz et al., "Einsum Networks",
ICML 2020; Choi, Liu & Van den Broeck, "On the expressive efficiency of sum
product networks" style derivations). The E-step's expected counts come from one
backward pass: for a sum weight ``w_oj`` and a data point ``x``,

.. math:: n_{oj}(x) = \\frac{\\partial \\log p(x)}{\\partial \\log w_{oj}}
          = P(\\text{edge } o \\to j \\text{ in the induced tree} \\mid x),

and an input unit's responsibility is the derivative of ``log p(x)`` with
respect to its log-value. The M-step sets ``w_oj \\propto n_oj + \\alpha``
(pseudocount ``alpha``) and each input unit to its responsibility-weighted
maximum-likelihood fit. Full-batch EM never decreases the training
log-likelihood (with ``alpha = 0``; with ``alpha > 0`` it is MAP-EM under a
Dirichlet prior). Mini-batch (stochastic) EM blends the batch's M-step into the
current parameters with a step size ``lambda``:
``theta <- (1 - lambda) theta + lambda theta_batch`` (this blends parameters, not
statistics, so rarely used units are noisy with small batches; full-batch EM is
the better choice for data that fit in a few passes).

**Gradients.** :func:`fit_gradient` minimises the negative mean
log-likelihood with any optax optimizer over the unconstrained parameters
(softmax logits, input logits, Gaussian locations and log-scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from circuits.circuit import Circuit, compile_circuit, root_value, upward
from circuits.inputs import Bernoulli, Binomial, Categorical
from circuits.region_graph import RegionGraph, chow_liu_trees
from probinf import train as engine
from probinf.validation import check_key, check_positive_int

__all__ = ["TrainResult", "em", "fit_gradient", "average_log_likelihood", "step_size_schedule",
           "soft_evidence", "hclt", "fit_debd", "train_debd"]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`em` and :func:`fit_gradient` return.

    Attributes:
        circuit: the trained circuit (the best on ``valid`` when ``keep_best``).
        train_log_likelihood: mean train log-likelihood per sample, one entry per
            epoch, measured with the parameters the epoch started from (for
            full-batch EM this is exactly the E-step's log-likelihood).
        valid_log_likelihood: mean validation log-likelihood after each epoch
            (empty without ``valid``).
        final_train_log_likelihood: mean train log-likelihood of ``circuit``.
        num_epochs: epochs run.
        stop_reason: ``"completed"``, or a sentence naming the epoch of an early stop
            or of a non-finite log-likelihood or parameter (training then keeps the
            parameters before that step).
        seconds: wall-clock training time.
    """

    circuit: Circuit
    train_log_likelihood: np.ndarray
    valid_log_likelihood: np.ndarray
    final_train_log_likelihood: float
    num_epochs: int
    stop_reason: str
    seconds: float


# ----------------------------------------------------------------- helpers
def _prepare_data(circuit: Circuit, data, name: str) -> jax.Array:
    if data is None:
        return None
    x, observed, batch_shape = circuit.prepare(data, None, name)
    if len(batch_shape) != 1:
        raise ValueError(f"`{name}` must be (num_samples, {circuit.num_variables}), got shape "
                         f"{np.shape(data)}")
    return x


def _batches(x, batch_size):
    """Pad ``x`` to whole batches: ``(num_batches, batch, V)`` and a 0/1 row weight."""
    n = x.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    xp = jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)]) if pad else x
    weight = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)])
    return (xp.reshape((num_batches, batch_size) + x.shape[1:]),
            weight.reshape(num_batches, batch_size))


@eqx.filter_jit
def _batch_log_likelihood(circuit, xb, wb):
    ll = circuit.log_marginal_prepared(xb, jnp.ones_like(xb, bool))
    return jnp.sum(jnp.where(wb > 0, ll, 0.0))


def average_log_likelihood(circuit: Circuit, data, batch_size: int = 1024) -> float:
    """Mean log-likelihood per sample (nats) of complete ``data`` ``(N, V)``, in batches.

    Every batch has the same shape (the last one is padded), so datasets of any
    size share one compiled function.

    Raises:
        ValueError: naming the variable for invalid data (see :meth:`Circuit.log_prob`).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    x = _prepare_data(circuit, data, "data")
    batches, weights = _batches(x, batch_size)
    total = sum(float(_batch_log_likelihood(circuit, xb, wb))
                for xb, wb in zip(batches, weights, strict=True))
    return total / x.shape[0]


# ---------------------------------------------------------------------- EM
def _soft_input_values(circuit: Circuit, soft):
    """Input log-values under soft evidence, ``log sum_v w(v) p_k(v)``, and the log-joint terms.

    ``soft`` is ``(B, V)`` (Bernoulli: the weight ``w(1)``) or ``(B, V, C)`` (Categorical:
    the weights ``w(v)``). Returns ``values`` ``(S, B, K)`` and ``log_joint`` ``(S, B, K, C)``
    with ``log_joint[..., v] = log w(v) + log p_k(v)``.
    """
    slots = jnp.asarray(circuit.structure.slot_variable)
    if isinstance(circuit.input_layer, Bernoulli):
        logits = circuit.input_params["logits"]
        log_p = jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], -1)
        w = soft.T[slots]  # (S, B)
        log_w = jnp.log(jnp.stack([1.0 - w, w], -1))  # (S, B, 2)
    else:
        log_p = jax.nn.log_softmax(circuit.input_params["logits"], axis=-1)  # (S, K, C)
        log_w = jnp.log(jnp.swapaxes(soft, 0, 1)[slots])  # (S, B, C)
    log_joint = log_w[:, :, None, :] + log_p[:, None, :, :]
    return jax.nn.logsumexp(log_joint, axis=-1), log_joint


def _expected_statistics(circuit: Circuit, x, weight, softened: bool = False):
    """Log-likelihood sum, expected sum-weight counts and input statistics of one batch.

    With ``softened``, ``x`` holds soft-evidence weights (see :func:`_soft_input_values`)
    and an input unit's statistics are its responsibility times the posterior
    ``w(v) p_k(v) / sum_u w(u) p_k(u)`` of each value: exact EM under soft evidence.
    """
    log_w, log_mix = circuit.log_weights()
    if softened:
        values, log_joint = _soft_input_values(circuit, x)
    else:
        observed = jnp.ones_like(x, bool)
        values = circuit.input_log_values(x, observed)

    def total(log_w, log_mix, values):
        groups = upward(circuit.structure, values, log_w, log_mix, "sum", circuit.backend)
        return jnp.sum(weight * root_value(circuit.structure, groups))

    ll, (counts, mix_counts, responsibility) = jax.value_and_grad(total, argnums=(0, 1, 2))(
        log_w, log_mix, values)
    if softened:
        posterior = jnp.exp(log_joint - values[..., None])  # (S, B, K, C)
        value_counts = jnp.einsum("sbk,sbkc->skc", responsibility, posterior)
        if isinstance(circuit.input_layer, Bernoulli):
            stats = {"count": value_counts.sum(-1), "ones": value_counts[..., 1]}
        else:
            stats = {"counts": value_counts}
        return ll, (counts, mix_counts, stats)
    xs = x.T[jnp.asarray(circuit.structure.slot_variable)]
    stats = circuit.input_layer.sufficient_statistics(responsibility, xs)
    return ll, (counts, mix_counts, stats)


PSEUDOCOUNT_RULES = ("child", "node")


def _check_pseudocount_rule(pseudocount_per: object) -> str:
    if pseudocount_per not in PSEUDOCOUNT_RULES:
        raise ValueError(f"`pseudocount_per` must be one of {PSEUDOCOUNT_RULES}, "
                         f"got {pseudocount_per!r}")
    return str(pseudocount_per)


def _pseudocounts(circuit: Circuit, pseudocount: float, per: str):
    """The pseudocount each expected count gets: per sum stage, per mixing stage, inputs.

    ``per="child"``: ``alpha`` on every child's count. ``per="node"``: ``alpha`` per
    unit, spread equally over its children (``alpha / C`` each), the rule of the
    Juice.jl EM Liu & Van den Broeck trained with; continuous inputs (Gaussian)
    have no children to spread over and keep ``alpha``.
    """
    structure = circuit.structure
    if per == "child":
        return ((pseudocount,) * len(structure.stages),
                tuple(None if m is None else pseudocount for _, m in structure.stages),
                pseudocount)
    sums = tuple(pseudocount / shape[-1] for shape in structure.sum_shapes())
    mixes = tuple(None if m is None else
                  pseudocount / np.asarray(m.valid).sum(-1).astype(np.float64)[:, None, None]
                  for _, m in structure.stages)
    layer = circuit.input_layer
    if isinstance(layer, Categorical):
        inputs = pseudocount / layer.num_categories
    elif isinstance(layer, (Bernoulli, Binomial)):
        inputs = pseudocount / 2.0
    else:
        inputs = pseudocount
    return sums, mixes, inputs


def _normalised_update(old_log_w, counts, pseudocount, step_size, valid=None):
    counts = counts + pseudocount
    if valid is not None:
        counts = jnp.where(valid, counts, 0.0)
    total = jnp.sum(counts, axis=-1, keepdims=True)
    old = jnp.exp(old_log_w)
    new = jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0), old)
    probs = (1.0 - step_size) * old + step_size * new
    log_probs = jnp.log(jnp.maximum(probs, 1e-30))
    return log_probs if valid is None else jnp.where(valid, log_probs, 0.0)


def _entropy_regularised_probs(counts, strength, valid=None, num_outer=8, num_inner=3):
    r"""Maximise ``sum_c a_c log t_c + b H(t)`` over the simplex, along the last axis.

    ``counts`` ``a >= 0`` (pseudocounts included) ``(..., C)``; ``strength`` ``b >= 0``
    broadcastable to ``(..., 1)``; ``valid`` an optional mask of the children that exist.
    The objective is strictly concave; its stationarity condition (Lagrange multiplier
    ``mu``) is

    .. math:: a_c / t_c - b \log t_c = \mu, \qquad \sum_c t_c = 1.

    No closed form exists (it needs Lambert's W), so it is solved by nested Newton
    iterations: for a fixed ``mu`` each ``u_c = log t_c`` solves the convex, decreasing
    ``a_c e^{-u} - b u - mu = 0``; ``phi(mu) = sum_c t_c(mu) - 1`` is convex and
    decreasing (``t_c'' > 0``), so Newton on ``mu`` started at ``sum_c a_c`` (left of
    the root when ``b > 0``, the root itself when ``b = 0``) increases monotonically to
    it. Nodes with ``b = 0`` get the closed form ``a / sum a``. Liu & Van den Broeck
    (NeurIPS 2021), Sec. 4, solve the same per-node problem by Newton's method.
    """
    dtype = counts.dtype
    tiny = jnp.finfo(dtype).tiny
    b = jnp.broadcast_to(jnp.asarray(strength, dtype), counts.shape[:-1] + (1,))
    if valid is not None:
        counts = jnp.where(valid, counts, 0.0)
    total = jnp.sum(counts, axis=-1, keepdims=True)
    closed = jnp.where(total > 0, counts / jnp.where(total > 0, total, 1.0),
                       1.0 / counts.shape[-1])
    log_a = jnp.log(counts)  # -inf for empty children: their a e^{-u} term is 0
    b_safe = jnp.where(b > 0, b, 1.0)

    def inner(u, mu):
        for _ in range(num_inner):
            a_exp = jnp.exp(log_a - u)
            u = u + (a_exp - b_safe * u - mu) / (a_exp + b_safe)
        return u

    def outer(_, state):
        u, mu = state
        u = inner(u, mu)
        t = jnp.exp(u)
        if valid is not None:
            t = jnp.where(valid, t, 0.0)
        # d t_c / d mu = -t^2 / (a_c + b t_c), written so an empty child (a = 0) gives no 0/0.
        slope = -t / (jnp.exp(log_a - u) + b_safe)
        phi = jnp.sum(t, -1, keepdims=True) - 1.0
        mu = mu - phi / jnp.minimum(jnp.sum(slope, -1, keepdims=True), -tiny)
        return u, mu

    u0 = jnp.log(jnp.maximum(closed, tiny))
    u, mu = jax.lax.fori_loop(0, num_outer, outer, (u0, total))
    u = inner(u, mu)
    if valid is not None:
        u = jnp.where(valid, u, -jnp.inf)
    solved = jax.nn.softmax(u, axis=-1)  # removes the last, tiny normalisation error
    probs = jnp.where(b > 0, solved, closed)
    return probs if valid is None else jnp.where(valid, probs, 0.0)


def _reach_probabilities(circuit: Circuit):
    """Top-down reach probability of every sum unit, mixing unit and input unit.

    With every input marginalised (log-value 0) each unit of a normalised circuit has
    value 1, so ``d log p / d log w_oj`` is the probability ``r(o) w_oj`` that a
    top-down induced-tree draw uses edge ``o -> j``, and ``d log p / d log v_k`` the
    probability ``r(k)`` that it reaches input unit ``k``.
    """
    log_w, log_mix = circuit.log_weights()
    structure = circuit.structure
    values = jnp.zeros((structure.num_slots, 1, structure.num_units), circuit.float_dtype)

    def root(log_w, log_mix, values):
        groups = upward(structure, values, log_w, log_mix, "sum", circuit.backend)
        return jnp.sum(root_value(structure, groups))

    counts, mix_counts, inputs = jax.grad(root, argnums=(0, 1, 2))(log_w, log_mix, values)
    sums = tuple(jnp.sum(c, -1, keepdims=True) for c in counts)
    mixes = tuple(None if c is None else jnp.sum(c, -1, keepdims=True) for c in mix_counts)
    return sums, mixes, inputs[:, 0, :]


def _blend_probs(old_log, new, step_size, valid=None):
    old = jnp.exp(old_log)
    probs = new if step_size is None else (1.0 - step_size) * old + step_size * new
    log_probs = jnp.log(jnp.maximum(probs, 1e-30))
    return log_probs if valid is None else jnp.where(valid, log_probs, 0.0)


def _entropy_m_step(circuit: Circuit, statistics, pseudocount, step_size, entropy_reg,
                    num_rows, pseudocount_per):
    """The M-step of ``sum_x log p(x) + tau N sum_n r(n) H(w_n)`` (see :func:`em`)."""
    counts, mix_counts, stats = statistics
    sum_alpha, mix_alpha, input_alpha = _pseudocounts(circuit, pseudocount, pseudocount_per)
    log_w, log_mix = circuit.log_weights()
    reach_sums, reach_mixes, reach_inputs = _reach_probabilities(circuit)
    scale = entropy_reg * num_rows
    sum_logits = tuple(
        _blend_probs(lw, _entropy_regularised_probs(c + a, scale * r), step_size)
        for lw, c, r, a in zip(log_w, counts, reach_sums, sum_alpha, strict=True))
    mix_logits = []
    for (_, mixing), lm, c, r, a in zip(circuit.structure.stages, log_mix, mix_counts,
                                        reach_mixes, mix_alpha, strict=True):
        if mixing is None:
            mix_logits.append(None)
            continue
        valid = jnp.asarray(mixing.valid)[:, None, :]
        probs = _entropy_regularised_probs(c + a, scale * r, valid)
        mix_logits.append(_blend_probs(jnp.where(valid, lm, 0.0), probs, step_size, valid))
    layer, params = circuit.input_layer, circuit.input_params
    strength = (scale * reach_inputs)[..., None]
    if isinstance(layer, Bernoulli):
        value_counts = jnp.stack([stats["count"] - stats["ones"], stats["ones"]], -1)
        probs = _entropy_regularised_probs(value_counts + input_alpha, strength)[..., 1]
        old = jax.nn.sigmoid(params["logits"])
        probs = probs if step_size is None else (1.0 - step_size) * old + step_size * probs
        probs = jnp.clip(probs, 1e-6, 1 - 1e-6)
        input_params = {"logits": jnp.log(probs) - jnp.log1p(-probs)}
    elif isinstance(layer, Categorical):
        probs = _entropy_regularised_probs(stats["counts"] + input_alpha, strength)
        old_log = jax.nn.log_softmax(params["logits"], axis=-1)
        input_params = {"logits": _blend_probs(old_log, probs, step_size)}
    else:  # continuous or Binomial inputs: the penalty covers the sum weights only
        input_params = layer.em_update(params, stats, input_alpha, step_size)
    return circuit.with_params(input_params, sum_logits, tuple(mix_logits))


def _m_step(circuit: Circuit, statistics, pseudocount, step_size, entropy_reg=0.0,
            num_rows=None, pseudocount_per="child"):
    if isinstance(step_size, (int, float)) and step_size == 1.0:
        step_size = None if entropy_reg else 1.0
    if entropy_reg:
        return _entropy_m_step(circuit, statistics, pseudocount, step_size, entropy_reg,
                               num_rows, pseudocount_per)
    counts, mix_counts, stats = statistics
    sum_alpha, mix_alpha, input_alpha = _pseudocounts(circuit, pseudocount, pseudocount_per)
    log_w, log_mix = circuit.log_weights()
    sum_logits = tuple(_normalised_update(lw, c, a, step_size)
                       for lw, c, a in zip(log_w, counts, sum_alpha, strict=True))
    mix_logits = []
    for (_, mixing), lm, c, a in zip(circuit.structure.stages, log_mix, mix_counts, mix_alpha,
                                     strict=True):
        if mixing is None:
            mix_logits.append(None)
        else:
            valid = jnp.asarray(mixing.valid)[:, None, :]
            mix_logits.append(_normalised_update(jnp.where(valid, lm, 0.0), c, a,
                                                 step_size, valid))
    input_params = circuit.input_layer.em_update(
        circuit.input_params, stats, input_alpha,
        None if isinstance(step_size, float) and step_size == 1.0 else step_size)
    return circuit.with_params(input_params, sum_logits, tuple(mix_logits))


@eqx.filter_jit
def _full_batch_epoch(circuit, batches, weights, pseudocount, step_size, softened=False,
                      entropy_reg=0.0, pseudocount_per="child"):
    def body(carry, batch):
        ll, acc = carry
        batch_ll, stats = _expected_statistics(circuit, *batch, softened)
        return (ll + batch_ll, jax.tree_util.tree_map(jnp.add, acc, stats)), None

    zero_ll, first = _expected_statistics(circuit, batches[0], weights[0], softened)
    (ll, stats), _ = jax.lax.scan(body, (zero_ll, first), (batches[1:], weights[1:]))
    return _m_step(circuit, stats, pseudocount, step_size, entropy_reg, jnp.sum(weights),
                   pseudocount_per), ll


def _finite_or_minus_inf(tree) -> jax.Array:
    """All inexact arrays finite, -inf allowed (a log-weight of an impossible child)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x) | (x == -jnp.inf)) for x in leaves]))


def _mean_log_likelihood(circuit, batches, weights):
    """Mean log-likelihood of padded ``(batches, weights)`` (see `_batches`), compiled whole."""
    totals = jax.lax.map(lambda bw: _batch_log_likelihood(circuit, *bw), (batches, weights))
    return jnp.sum(totals) / jnp.sum(weights)


def _validation_loss(circuit, validation_batches):
    return -_mean_log_likelihood(circuit, *validation_batches)


class _EMStep(eqx.Module):
    """One EM update as a `probinf.train` step (the engine's non-gradient kind).

    With ``full_batch`` the batch is the whole padded training set ``(batches, weights)``
    and one step is one epoch of EM; otherwise the batch is ``batch_size`` rows and the
    step blends the batch's M-step into the parameters with the step size of its epoch.
    The loss is the negative mean log-likelihood under the parameters the step started from.
    """

    step_sizes: jax.Array | None  # per epoch; None: the constant below, compiled in
    constant_step: float | None = eqx.field(static=True)
    steps_per_epoch: int = eqx.field(static=True)
    pseudocount: float = eqx.field(static=True)
    pseudocount_per: str = eqx.field(static=True)
    entropy_reg: float = eqx.field(static=True)
    softened: bool = eqx.field(static=True)
    full_batch: bool = eqx.field(static=True)
    # Full-batch data stored rows-first, (chunk rows, chunks, ...), so that the engine's
    # split of the leading axis over a mesh splits every chunk's rows (see `em`).
    rows_first: bool = eqx.field(static=True, default=False)

    def __call__(self, state, key, batch):
        del key  # EM is deterministic; the engine's shuffling already drew the batch
        circuit = state.params
        if self.constant_step is not None:
            step_size = self.constant_step
        else:
            step_size = self.step_sizes[jnp.minimum(state.step // self.steps_per_epoch,
                                                    self.step_sizes.shape[0] - 1)]
        if self.full_batch:
            if self.rows_first:
                batch = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), batch)
            updated, total = _full_batch_epoch(circuit, *batch, self.pseudocount, step_size,
                                               self.softened, self.entropy_reg,
                                               self.pseudocount_per)
            rows = jnp.sum(batch[1])
        else:
            rows = jnp.asarray(batch.shape[0], batch.dtype)
            total, stats = _expected_statistics(circuit, batch, jnp.ones(batch.shape[0]),
                                                self.softened)
            updated = _m_step(circuit, stats, self.pseudocount, step_size, self.entropy_reg,
                              rows, self.pseudocount_per)
        loss = -total / rows
        finite = jnp.isfinite(loss) & _finite_or_minus_inf(updated)
        return engine.TrainState(updated, None, state.step + 1), engine.StepInfo(loss, finite)


@dataclass(frozen=True)
class _NegativeLogLikelihood:
    """``-mean log p(batch)`` of a circuit, or of an integral circuit materialised with
    ``rule`` (hashable, so `probinf.train` reuses its compiled loop)."""

    rule: object = None
    backend: str = "auto"

    def __call__(self, model, key, batch):
        del key
        if self.rule is not None:
            model = model.materialize(self.rule, self.backend)
        return -jnp.mean(model.log_marginal_prepared(batch, jnp.ones_like(batch, bool)))


@dataclass(frozen=True)
class _MaterialisedValidation:
    rule: object
    backend: str

    def __call__(self, pic, validation_batches):
        return _validation_loss(pic.materialize(self.rule, self.backend), validation_batches)


def _train(step, state, x, *, data, batch_size, num_epochs, key, valid, validate, keep_best,
           patience, progress, desc, sharding=None, time_limit=None, patience_rule="best"):
    """Run ``step`` for ``num_epochs`` on `probinf.train`'s driver; the circuits' result pieces.

    Returns ``(params, train_ll, valid_ll, stop_reason, seconds)``: per-epoch mean train
    log-likelihoods (of the steps' batches, before each update), validation log-likelihoods
    after each epoch, and the parameters (the best on ``valid`` when ``keep_best``).
    """
    steps_per_epoch = 1 if batch_size is None else x.shape[0] // batch_size
    with_valid = valid is not None
    result = engine.run(
        step, state, key=jax.random.key(0) if key is None else key,
        steps=num_epochs * steps_per_epoch, data=data, batch_size=batch_size,
        validate=validate if with_valid else None,
        validation_data=_batches(valid, min(1024, valid.shape[0])) if with_valid else None,
        validate_every=steps_per_epoch if with_valid else None,
        patience=patience if with_valid else None, patience_rule=patience_rule,
        stop_rule=time_limit,
        progress=progress, warn=False, name=desc, sharding=sharding,
    )
    epochs_done = result.num_steps // steps_per_epoch
    train_ll = -result.losses[: epochs_done * steps_per_epoch].reshape(
        epochs_done, steps_per_epoch).mean(axis=1)
    valid_ll = -result.validation_losses
    if result.stop_reason == "non_finite":
        stop_reason = (f"stopped at epoch {result.nonfinite_step // steps_per_epoch} (step "
                       f"{result.nonfinite_step}): the log-likelihood or a parameter became "
                       "non-finite; kept the parameters before that step")
    elif result.stop_reason == "early_stopping":
        how = ("fell in each of the last" if patience_rule == "successive"
               else "did not improve on its best for")
        stop_reason = (f"early stop after epoch {epochs_done - 1}: the validation "
                       f"log-likelihood {how} {patience} epochs")
    elif result.stop_reason == engine.TimeLimit.reason:
        stop_reason = (f"time limit of {time_limit.seconds:g} s reached after {epochs_done} "
                       f"epochs ({result.num_steps} steps)")
    else:
        stop_reason = result.stop_reason
    params = result.params if (keep_best and with_valid and len(valid_ll)) else result.state.params
    return params, train_ll, valid_ll, stop_reason, result.seconds


def _time_limit(max_seconds):
    """``max_seconds`` as a `probinf.train.TimeLimit` (started now), or None."""
    if max_seconds is None or isinstance(max_seconds, engine.TimeLimit):
        return max_seconds
    try:
        return engine.TimeLimit(max_seconds)
    except ValueError:
        raise ValueError(f"`max_seconds` must be a positive finite number, got {max_seconds!r}") from None


_SCHEDULES = ("linear", "cosine")


def step_size_schedule(step_size, num_epochs: int) -> list[float]:
    """The step size of every epoch: a constant, a callable ``epoch -> step`` or a schedule.

    A schedule ``("linear", start, end)`` interpolates linearly from ``start`` at epoch 0
    to ``end`` at epoch ``num_epochs - 1``; ``("cosine", start, end)`` follows
    ``end + (start - end) (1 + cos(pi t)) / 2`` with ``t = epoch / (num_epochs - 1)``.
    The released training code of Liu & Van den Broeck (NeurIPS 2021) anneals its
    mini-batch EM with ``("linear", 0.9, 0.1)`` over 100 epochs (its
    ``exp_update_factor``, the weight of the *old* parameters, goes from 0.1 to 0.9).

    Raises:
        ValueError: naming ``step_size`` for an unknown schedule or a value outside (0, 1].
    """
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    if isinstance(step_size, tuple):
        if (len(step_size) != 3 or step_size[0] not in _SCHEDULES
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           for v in step_size[1:])):
            raise ValueError(f"`step_size` schedule must be ('linear' or 'cosine', start, end), "
                             f"got {step_size!r}")
        kind, start, end = step_size
        fractions = [e / (num_epochs - 1) if num_epochs > 1 else 0.0 for e in range(num_epochs)]
        if kind == "linear":
            steps = [start + (end - start) * t for t in fractions]
        else:
            steps = [end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t)) for t in fractions]
    elif callable(step_size):
        steps = [step_size(e) for e in range(num_epochs)]
    elif isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        steps = [step_size] * num_epochs
    else:
        raise ValueError(f"`step_size` must be a number in (0, 1], a callable epoch -> step size "
                         f"or ('linear' | 'cosine', start, end), got {step_size!r}")
    for epoch, step in enumerate(steps):
        if not (isinstance(step, (int, float, np.floating)) and 0.0 < float(step) <= 1.0):
            raise ValueError(f"`step_size` must be in (0, 1] at every epoch, got {step!r} at "
                             f"epoch {epoch}")
    return [float(step) for step in steps]


def soft_evidence(circuit: Circuit, data, softening: float, towards: str = "uniform"):
    """Soft-evidence weights of data softening (Liu & Van den Broeck, NeurIPS 2021, Sec. 3).

    Each observed value ``x_i`` becomes the soft evidence ``w_i(v)``: for
    ``towards="uniform"`` ``w_i = (1 - beta) onehot(x_i) + beta (1 - onehot(x_i)) / (C - 1)``
    (binary: ``x_i -> (1 - beta) x_i + beta (1 - x_i)``); for ``towards="marginal"``
    ``w_i = (1 - beta) onehot(x_i) + beta q_i`` with ``q_i`` the data's marginal of
    ``X_i`` (the authors' released code, ``soften(...; scale_by_marginal=true)``). The
    likelihood of a row is then ``sum_x prod_i w_i(x_i) p(x)``, computed exactly by
    giving every input unit the value ``sum_v w_i(v) p_k(v)``.

    Returns:
        ``(N, V)`` weights ``w(1)`` for a Bernoulli input layer, ``(N, V, C)`` for a
        Categorical one.
    """
    layer = circuit.input_layer
    if not isinstance(layer, (Bernoulli, Categorical)):
        raise ValueError(f"`softening` needs a Bernoulli or Categorical input layer, got "
                         f"{type(layer).__name__}")
    if towards not in ("uniform", "marginal"):
        raise ValueError(f"`soften_towards` must be 'uniform' or 'marginal', got {towards!r}")
    x = _prepare_data(circuit, data, "data")
    num_values = 2 if isinstance(layer, Bernoulli) else layer.num_categories
    onehot = jax.nn.one_hot(x.astype(jnp.int32), num_values, dtype=x.dtype)
    if towards == "uniform":
        other = (1.0 - onehot) / (num_values - 1)
    else:
        other = jnp.broadcast_to(jnp.mean(onehot, axis=0), onehot.shape)
    weights = (1.0 - softening) * onehot + softening * other
    return weights[..., 1] if isinstance(layer, Bernoulli) else weights


def em(
    circuit: Circuit,
    data,
    *,
    num_epochs: int = 10,
    batch_size: int | None = None,
    step_size=1.0,
    pseudocount: float = 0.1,
    pseudocount_per: str = "child",
    softening: float = 0.0,
    soften_towards: str = "uniform",
    entropy_reg: float = 0.0,
    key=None,
    valid=None,
    keep_best: bool = True,
    patience: int | None = None,
    patience_rule: str = "best",
    progress: bool | None = None,
    sharding: jax.sharding.Mesh | None = None,
    max_seconds: float | engine.TimeLimit | None = None,
) -> TrainResult:
    """Fit a normalised circuit by EM (see the module docstring), optionally regularised.

    **Data softening** (``softening = beta``; Liu & Van den Broeck, "Tractable
    Regularization of Probabilistic Circuits", NeurIPS 2021, Sec. 3) maximises the
    likelihood of softened data, each value ``x_i`` replaced by soft evidence ``w_i``
    (see :func:`soft_evidence`): ``sum_rows log sum_x prod_i w_i(x_i) p(x)``. The
    circuit computes it exactly (input unit ``k`` takes the value
    ``sum_v w_i(v) p_k(v)``), and the E-step's input statistics are the exact
    posteriors ``w_i(v) p_k(v) / sum_u w_i(u) p_k(u)`` times the unit's responsibility.

    **Entropy regularisation** (``entropy_reg = tau``; same paper, Sec. 4) maximises
    ``sum_rows log p(x) + tau N R(theta)`` with ``R = sum_n r(n) H(w_n)``, the
    entropy of every sum unit's (and Bernoulli / Categorical input unit's) weights
    weighted by its top-down reach probability ``r(n)`` (the probability that a
    top-down draw of an induced tree visits ``n``). For a deterministic circuit
    ``R`` is the entropy of ``p`` (up to the input units' own); in general it is
    the entropy of the joint of ``x`` and the induced tree, an upper bound. As in
    the authors' code the M-step holds ``r`` fixed (from the current parameters)
    and solves, per unit, ``max_t sum_c a_c log t_c + tau N r(n) H(t)`` with
    ``a_c = n_c + alpha``: strictly concave, with stationarity
    ``a_c / t_c - tau N r(n) log t_c = mu``, solved by Newton's method (no closed
    form). ``N`` is the number of rows the M-step sees (the batch for mini-batch EM).

    Args:
        circuit: a circuit with ``normalized=True``.
        data: complete training data ``(N, V)``.
        num_epochs: passes over the data.
        batch_size: ``None`` for full-batch EM (statistics are still accumulated in
            chunks of 1024 rows); an integer for mini-batch EM with one update per batch
            (an epoch is ``N // batch_size`` updates; the remaining rows sit out that epoch).
        step_size: ``lambda`` in ``(0, 1]``, or a per-epoch schedule: a callable
            ``epoch -> lambda`` or ``("linear" | "cosine", start, end)`` (see
            :func:`step_size_schedule`); full-batch EM uses 1 unless told otherwise.
        pseudocount: ``alpha >= 0``, the Dirichlet-style smoothing of every M-step.
        pseudocount_per: ``"child"`` (default): ``alpha`` is added to every child's
            expected count (a unit with ``C`` children gets ``C alpha`` in all);
            ``"node"``: every unit gets ``alpha`` in all, ``alpha / C`` per child, the
            rule of Liu & Van den Broeck's released training code (Juice.jl), whose
            smoothing does not grow with the fan-out. Gaussian inputs keep ``alpha``.
        softening: ``beta`` in ``[0, 0.5)``; 0 (default) trains on the data as given.
        soften_towards: ``"uniform"`` or ``"marginal"`` (see :func:`soft_evidence`).
        entropy_reg: ``tau >= 0``; 0 (default) is plain EM.
        key: PRNG key to shuffle the data each epoch (required for mini-batch EM).
        valid: optional validation data, evaluated after every epoch.
        keep_best: return the parameters with the best validation log-likelihood.
        patience: with ``valid``, stop once the validation log-likelihood has not
            improved on its best for ``patience`` epochs; ``None``: never.
        patience_rule: ``"best"`` (as above) or ``"successive"``: stop once it has fallen
            in each of ``patience`` epochs in a row (`probinf.train.run`).
        progress: show a progress bar (default: when on a terminal).
        sharding: a `jax.sharding.Mesh` for data-parallel EM, the circuit replicated: each
            mini-batch's rows split over the mesh's first axis (``batch_size`` a multiple
            of its size), or in full-batch EM every chunk of rows; the expected counts are
            summed across devices by all-reduces (`probinf.train.run`).
        max_seconds: a wall-clock budget: training stops at the first chunk of steps that
            ends past it (`probinf.train.TimeLimit`; pass one to share its budget between
            calls). ``None``: no limit.

    Returns:
        A :class:`TrainResult`. With softening, ``train_log_likelihood`` is the
        softened data's (the objective); ``final_train_log_likelihood`` is always the
        given data's.

    Raises:
        ValueError: for an unnormalised circuit, bad hyper-parameters (naming the
            argument) or invalid data (naming the variable).
    """
    if not isinstance(circuit, Circuit):
        raise TypeError(f"`circuit` must be a Circuit, got {type(circuit).__name__}")
    if not circuit.normalized:
        raise ValueError("`circuit` is unnormalised (normalized=False); EM needs normalised "
                         "weights — use fit_gradient")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    constant_step = isinstance(step_size, (int, float)) and not isinstance(step_size, bool)
    if constant_step and not 0.0 < step_size <= 1.0:
        raise ValueError(f"`step_size` must be in (0, 1], got {step_size!r}")
    steps = step_size_schedule(step_size, num_epochs)
    if not (isinstance(pseudocount, (int, float)) and pseudocount >= 0.0):
        raise ValueError(f"`pseudocount` must be >= 0, got {pseudocount!r}")
    pseudocount_per = _check_pseudocount_rule(pseudocount_per)
    if not (isinstance(softening, (int, float)) and 0.0 <= softening < 0.5):
        raise ValueError(f"`softening` must be in [0, 0.5), got {softening!r}")
    if not (isinstance(entropy_reg, (int, float)) and entropy_reg >= 0.0
            and math.isfinite(entropy_reg)):
        raise ValueError(f"`entropy_reg` must be a finite number >= 0, got {entropy_reg!r}")
    if patience is not None:
        patience = check_positive_int(patience, "patience")
    time_limit = _time_limit(max_seconds)
    x = _prepare_data(circuit, data, "data")
    valid_x = None if valid is None else _prepare_data(circuit, valid, "valid")
    pseudocount = float(pseudocount)
    entropy_reg = float(entropy_reg)
    softened = softening > 0.0
    train = soft_evidence(circuit, data, float(softening), soften_towards) if softened else x

    if batch_size is None:
        chunk = min(1024, x.shape[0])
        if isinstance(sharding, jax.sharding.Mesh):
            # Every chunk of rows is split over the devices: chunks a multiple of the mesh
            # axis, stored rows-first so that the engine's split of the leading axis splits
            # rows (the scan over chunks stays on every device).
            width = sharding.shape[sharding.axis_names[0]]
            chunk = width * -(-chunk // width)
            data = tuple(jnp.swapaxes(a, 0, 1) for a in _batches(train, chunk))
        else:
            data = _batches(train, chunk)
    else:
        batch_size = min(check_positive_int(batch_size, "batch_size"), x.shape[0])
        if key is None:
            raise ValueError("`key` is required for mini-batch EM (the data are shuffled)")
        data = train
    steps_per_epoch = 1 if batch_size is None else x.shape[0] // batch_size
    # A constant step size is compiled in (1.0 replaces the parameters exactly); a
    # schedule is an array indexed by the epoch, so one compiled step serves every epoch.
    step = _EMStep(
        step_sizes=None if constant_step else jnp.asarray(steps, x.dtype),
        constant_step=float(step_size) if constant_step else None,
        steps_per_epoch=steps_per_epoch, pseudocount=pseudocount,
        pseudocount_per=pseudocount_per, entropy_reg=entropy_reg,
        softened=softened, full_batch=batch_size is None,
        rows_first=batch_size is None and sharding is not None)
    state = engine.TrainState(circuit, None, jnp.asarray(0, jnp.int32))
    params, train_ll, valid_ll, stop_reason, seconds = _train(
        step, state, x, data=data, batch_size=batch_size, num_epochs=num_epochs, key=key,
        valid=valid_x, validate=_validation_loss, keep_best=keep_best, patience=patience,
        progress=progress, desc="EM" if batch_size is None else "mini-batch EM",
        sharding=sharding, time_limit=time_limit, patience_rule=patience_rule)
    return _result(params, x, train_ll, valid_ll, stop_reason, seconds)


def _result(circuit, x, train_ll, valid_ll, stop_reason, seconds) -> TrainResult:
    return TrainResult(
        circuit=circuit,
        train_log_likelihood=np.asarray(train_ll),
        valid_log_likelihood=np.asarray(valid_ll),
        final_train_log_likelihood=average_log_likelihood(circuit, x),
        num_epochs=len(train_ll),
        stop_reason=stop_reason,
        seconds=seconds,
    )


# ----------------------------------------------------------------- recipe
def hclt(data, *, num_trees: int = 1, num_candidates: int = 20,
         num_categories: int | None = None) -> RegionGraph:
    """A hidden Chow–Liu tree region graph, or a mixture of ``num_trees`` of them.

    As in the released code of Liu & Van den Broeck ("Tractable Regularization of
    Probabilistic Circuits", NeurIPS 2021): the ``num_candidates`` spanning trees of
    largest total mutual information are ranked (:func:`circuits.chow_liu_trees`) and
    ``num_trees`` of them are taken at evenly spaced ranks, from the best to the last
    candidate (their 4 of 20: ranks 1, 7, 14, 20). One tree is the Chow–Liu tree. The
    trees share only the root region (every variable), which mixes their root
    partitions; every other region is a replica of the tree's own (units and parameters
    of its own, input units included), so the circuit is a mixture of ``num_trees``
    independent HCLTs, as the authors build it. Ranked spanning trees differ in a few
    edges, so shared regions would make the mixture little more than one tree.

    Raises:
        ValueError: naming ``num_trees`` or ``num_candidates`` when invalid (see also
            :func:`circuits.chow_liu_tree` for ``data``).
    """
    num_trees = check_positive_int(num_trees, "num_trees")
    num_candidates = check_positive_int(num_candidates, "num_candidates")
    if num_candidates < num_trees:
        raise ValueError(f"`num_candidates` ({num_candidates}) must be >= `num_trees` ({num_trees})")
    data = np.asarray(data)
    candidates = chow_liu_trees(data, num_candidates if num_trees > 1 else 1, num_categories)
    ranks = sorted({int(np.floor(r + 0.5)) for r in np.linspace(0, len(candidates) - 1, num_trees)})
    graphs = [candidates[r] for r in ranks]
    if len(graphs) == 1:
        return graphs[0]
    regions = [tuple(range(data.shape[1]))]  # the shared root
    partitions = []
    for graph in graphs:
        offset = len(regions) - 1  # this tree's regions follow the ones before, root excluded
        number = {r: 0 if r == graph.root else offset + r + (r < graph.root)
                  for r in range(len(graph.regions))}
        regions += [scope for r, scope in enumerate(graph.regions) if r != graph.root]
        partitions += [(number[p.region], tuple(number[c] for c in p.children))
                       for p in graph.partitions]
    return RegionGraph(data.shape[1], regions, partitions)


def fit_debd(
    train,
    valid=None,
    *,
    key,
    latent: int = 12,
    num_trees: int = 4,
    pseudocount: float = 0.1,
    pseudocount_per: str = "node",
    softening: float = 0.002,
    entropy_reg: float = 0.001,
    batch_size: int = 1024,
    minibatch_epochs: int = 100,
    fullbatch_epochs: int = 100,
    step_size=("linear", 0.9, 0.1),
    patience: int | None = 4,
    max_seconds: float | None = None,
    progress: bool | None = None,
) -> tuple[Circuit, TrainResult]:
    """The project's recipe for discrete density estimation (DEBD-style binary data).

    It follows the released training code of Liu & Van den Broeck, "Tractable
    Regularization of Probabilistic Circuits" (NeurIPS 2021), with its published
    hyper-parameters as defaults (not tuned here):

    1. structure: a mixture of ``num_trees`` hidden Chow–Liu trees (:func:`hclt`; Liu &
       Van den Broeck, "Tractable Regularization..." and "A compositional atlas..."),
       compiled with CP layers of ``latent`` units (the hidden variables' states;
       the authors use 12, larger values up to 128 suit larger data);
    2. training by :func:`train_debd`: ``minibatch_epochs`` of mini-batch EM, then
       ``fullbatch_epochs`` of full-batch EM, regularised (see there).

    ``pseudocount``, ``pseudocount_per``, ``softening``, ``entropy_reg``, ``batch_size``,
    ``minibatch_epochs``, ``fullbatch_epochs``, ``step_size``, ``patience`` and ``progress``
    are passed to :func:`train_debd` (its documentation says what each one does).

    Args:
        train: ``(N, V)`` integer data (binary: Bernoulli inputs; else Categorical).
        valid: optional validation data (early stopping and model selection).
        key: PRNG key (initial parameters, mini-batch shuffling).
        latent: units per CP layer (the hidden variables' states).
        num_trees: hidden Chow-Liu trees in the mixture.
        max_seconds: one wall-clock budget for structure learning and both training
            phases (``None``: no limit).

    Returns:
        ``(circuit, result)``: the trained circuit and :func:`train_debd`'s result.
    """
    check_key(key)
    latent = check_positive_int(latent, "latent")
    pseudocount_per = _check_pseudocount_rule(pseudocount_per)  # before structure learning
    _check_phases(minibatch_epochs, fullbatch_epochs)
    time_limit = _time_limit(max_seconds)
    data = np.asarray(train)
    if data.ndim != 2:
        raise ValueError(f"`train` must be (num_samples, num_variables), got shape {data.shape}")
    num_values = int(data.max()) + 1
    values = valid if valid is None else np.asarray(valid)
    if values is not None and values.size:
        num_values = max(num_values, int(values.max()) + 1)
    layer = Bernoulli() if num_values <= 2 else Categorical(num_values)
    key_init, key_train = jax.random.split(key)
    graph = hclt(data, num_trees=num_trees, num_categories=max(num_values, 2))
    circuit = compile_circuit(graph, layer, latent, "cp", key=key_init, data=data)
    result = train_debd(
        circuit, data, valid, key=key_train, pseudocount=pseudocount,
        pseudocount_per=pseudocount_per, softening=softening, entropy_reg=entropy_reg,
        batch_size=batch_size, minibatch_epochs=minibatch_epochs,
        fullbatch_epochs=fullbatch_epochs, step_size=step_size, patience=patience,
        max_seconds=time_limit, progress=progress,
    )
    return result.circuit, result


def _check_phases(minibatch_epochs, fullbatch_epochs) -> None:
    if not minibatch_epochs and not fullbatch_epochs:
        raise ValueError("`minibatch_epochs` and `fullbatch_epochs` are both 0: nothing to train")


def train_debd(
    circuit: Circuit,
    train,
    valid=None,
    *,
    key,
    pseudocount: float = 0.1,
    pseudocount_per: str = "node",
    softening: float = 0.002,
    entropy_reg: float = 0.001,
    batch_size: int = 1024,
    minibatch_epochs: int = 100,
    fullbatch_epochs: int = 100,
    step_size=("linear", 0.9, 0.1),
    patience: int | None = 4,
    max_seconds: float | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """The training half of :func:`fit_debd`, for a circuit of any structure.

    As in the released training code of Liu & Van den Broeck (NeurIPS 2021), with
    their hyper-parameters as defaults:

    1. ``minibatch_epochs`` of mini-batch EM (``batch_size`` rows per update) with the
       step size annealed by ``step_size`` (authors: linear from 0.9 to 0.1);
    2. ``fullbatch_epochs`` of full-batch EM (step size 1);

    both on data softened towards the marginals by ``softening`` (``beta``) and with
    the entropy penalty ``entropy_reg`` (``tau``), see :func:`em`: each phase
    maximises ``sum_rows log sum_x prod_i w_i(x_i) p(x) + tau N R(theta)`` with the
    pseudocount ``alpha`` per unit, spread equally over its children (the authors' rule).
    With ``valid``, each phase stops once the validation log-likelihood has fallen in
    ``patience`` epochs in a row (the authors stop at the fourth successive fall), and the
    full-batch phase returns its best parameters on ``valid``.

    Args:
        circuit: the circuit to train (e.g. from :func:`compile_circuit`).
        train: ``(N, V)`` training data.
        valid: optional validation data (early stopping and model selection).
        key: PRNG key (mini-batch shuffling).
        pseudocount: ``alpha``, the M-step's smoothing (see :func:`em`).
        pseudocount_per: ``"node"`` (the authors' rule) or ``"child"`` (see :func:`em`).
        softening: ``beta``, data softening towards the marginals.
        entropy_reg: ``tau``, weight of the entropy penalty.
        batch_size: rows per mini-batch EM update.
        minibatch_epochs: most epochs of the mini-batch phase.
        fullbatch_epochs: most epochs of the full-batch phase.
        step_size: the mini-batch phase's step size or schedule (see :func:`em`).
        patience: successive falls of the validation likelihood that end a phase
            (``None``: never).
        max_seconds: one wall-clock budget for both phases (`probinf.train.TimeLimit`);
            when the mini-batch phase spends it, the full-batch phase still runs its
            first epoch (``None``: no limit).
        progress: show progress bars (default: when on a terminal).

    Returns:
        A :class:`TrainResult` whose histories concatenate both phases (``num_epochs``
        counts both).
    """
    check_key(key)
    pseudocount_per = _check_pseudocount_rule(pseudocount_per)
    _check_phases(minibatch_epochs, fullbatch_epochs)
    common = dict(pseudocount=pseudocount, pseudocount_per=pseudocount_per,
                  softening=softening, soften_towards="marginal", entropy_reg=entropy_reg,
                  valid=valid, patience=patience, patience_rule="successive", progress=progress,
                  max_seconds=_time_limit(max_seconds))
    results = []
    if minibatch_epochs:
        results.append(em(circuit, train, num_epochs=minibatch_epochs, batch_size=batch_size,
                          step_size=step_size, key=key, keep_best=False, **common))
        circuit = results[-1].circuit
    if fullbatch_epochs:
        results.append(em(circuit, train, num_epochs=fullbatch_epochs, keep_best=True, **common))
        circuit = results[-1].circuit
    last = results[-1]
    return TrainResult(
        circuit=circuit,
        train_log_likelihood=np.concatenate([r.train_log_likelihood for r in results]),
        valid_log_likelihood=np.concatenate([r.valid_log_likelihood for r in results]),
        final_train_log_likelihood=last.final_train_log_likelihood,
        num_epochs=sum(r.num_epochs for r in results),
        stop_reason="; ".join(r.stop_reason for r in results),
        seconds=sum(r.seconds for r in results),
    )


# --------------------------------------------------------------- gradients
def fit_gradient(
    circuit: Circuit,
    data,
    optimizer: optax.GradientTransformation,
    *,
    key,
    num_epochs: int = 10,
    batch_size: int = 256,
    valid=None,
    keep_best: bool = True,
    progress: bool | None = None,
    sharding: jax.sharding.Mesh | None = None,
) -> TrainResult:
    """Fit a circuit by minimising the negative mean log-likelihood with any optax optimizer.

    Works for normalised and unnormalised circuits (the latter divide by ``Z``,
    which is differentiated through). Training runs on `probinf.train`'s compiled
    driver over shuffled mini-batches (an epoch is ``N // batch_size`` steps; the
    remaining rows sit out that epoch, different ones each epoch). It stops at a
    non-finite step and keeps the parameters before it.

    Args:
        circuit: the circuit to train (all its inexact arrays are trained).
        data: complete training data ``(N, V)``.
        optimizer: e.g. ``optax.adam(1e-2)``.
        key: PRNG key to shuffle the data each epoch.
        num_epochs: passes over the data.
        batch_size: rows per gradient step.
        valid: optional validation data, evaluated after every epoch.
        keep_best: return the parameters with the best validation log-likelihood.
        progress: show a progress bar (default: when on a terminal).
        sharding: a `jax.sharding.Mesh` to train data-parallel on: every batch split over
            its first axis, the circuit replicated (`probinf.train.run`); ``None``: one
            device.
    """
    if not isinstance(circuit, Circuit):
        raise TypeError(f"`circuit` must be a Circuit, got {type(circuit).__name__}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"`optimizer` must be an optax GradientTransformation, got "
                        f"{type(optimizer).__name__}")
    num_epochs = check_positive_int(num_epochs, "num_epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    x = _prepare_data(circuit, data, "data")
    valid_x = None if valid is None else _prepare_data(circuit, valid, "valid")
    batch_size = min(batch_size, x.shape[0])
    params, train_ll, valid_ll, stop_reason, seconds = _train(
        engine.make_step(_NegativeLogLikelihood(), optimizer), engine.init(circuit, optimizer),
        x, data=x, batch_size=batch_size, num_epochs=num_epochs, key=key, valid=valid_x,
        validate=_validation_loss, keep_best=keep_best, patience=None, progress=progress,
        desc="gradient", sharding=sharding)
    return _result(params, x, train_ll, valid_ll, stop_reason, seconds)

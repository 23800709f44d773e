"""The compiled circuit and every query on it.

A :class:`Circuit` is an immutable equinox module: a static, hashable plan of
folded layers (:class:`circuits.structure.CircuitStructure`), a static input layer,
and the parameters as plain arrays. It represents

.. math:: p(x) = c(x) / Z, \\qquad c(x) = \\text{the root unit's value}, \\quad
          Z = \\sum_x c(x),

and ``Z = 1`` when ``normalized=True`` (the default: every sum's weights are the
softmax of its logits, every input unit is a normalised distribution, and the
circuit is smooth and decomposable, which the region graph guarantees). With
``normalized=False`` the logits are used as raw log-weights (for example produced
by a neural network, as when an integral circuit is materialised) and queries
divide by ``Z``, computed exactly by one more upward pass with every variable
marginalised.

Every query runs on the folded layers: one upward pass is a short, fixed sequence
of batched log-space einsums (one inner layer and at most one mixing layer per
depth), jit-compiled; MAP and sampling add one top-down pass over the same layers.
"""

from __future__ import annotations

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from circuits.inputs import Bernoulli, Binomial, Categorical, InputLayer
from circuits.kernels import BACKENDS, default_backend, fused_log_matmul_exp
from circuits.layers import (
    cp_layer,
    kronecker,
    log_matmul_exp,
    log_matmul_exp_vjp,
    mixing_layer,
    tucker_layer,
)
from circuits.region_graph import RegionGraph
from circuits.structure import CircuitStructure
from probinf.validation import check_key, check_positive_int, is_traced

__all__ = ["Circuit", "compile_circuit"]


# ---------------------------------------------------------------------------
# The folded upward and top-down passes (pure functions of the plan and arrays)
# ---------------------------------------------------------------------------
def _static_take(array, rows: np.ndarray, valid: np.ndarray):
    """``array[rows]`` for static ``rows``, with a gather (not a scatter) as its transpose.

    XLA's CPU scatter-add is slow, so the backward pass splits the positions by
    multiplicity into groups of distinct rows and gathers each group through the
    inverse index. Positions where ``valid`` is False must receive a zero
    cotangent (the caller masks them out of the result).
    """
    size = array.shape[0]
    levels = []  # inverse indices, one per multiplicity level: row -> position or -1
    remaining = np.flatnonzero(valid)
    while remaining.size:
        _, first = np.unique(rows[remaining], return_index=True)
        chosen = remaining[first]
        inverse = np.full(size, -1, np.int64)
        inverse[rows[chosen]] = chosen
        levels.append(inverse)
        remaining = np.setdiff1d(remaining, chosen, assume_unique=True)

    @jax.custom_vjp
    def take(x):
        return jnp.take(x, rows, axis=0, mode="clip")

    def forward(x):
        return take(x), None

    def backward(_, cotangent):
        total = jnp.zeros((size,) + cotangent.shape[1:], cotangent.dtype)
        for inverse in levels:
            picked = jnp.take(cotangent, np.maximum(inverse, 0), axis=0, mode="clip")
            mask = (inverse >= 0).reshape((size,) + (1,) * (cotangent.ndim - 1))
            total = total + jnp.where(mask, picked, 0.0)
        return (total,)

    take.defvjp(forward, backward)
    return take(array)


def _take_rows(groups, sources, rows: np.ndarray, pad_value):
    """Rows ``rows`` of the concatenation of ``groups[g] for g in sources`` (then one pad row).

    ``rows`` is static (numpy), so each piece is a constant-index ``take`` (or the
    group itself when the rows are all of it, in order); XLA fuses these into
    the consumer, which a gather from a materialised concatenation would prevent.
    """
    result, offset = None, 0
    for g in sources:
        array = groups[g]
        size = array.shape[0]
        local = rows - offset
        offset += size
        inside = (local >= 0) & (local < size)
        if not inside.any():
            continue
        if inside.all() and np.array_equal(local, np.arange(size)):
            taken = array
        else:
            taken = _static_take(array, np.clip(local, 0, size - 1), inside)
        if result is None:
            result = taken
        else:
            result = jnp.where(inside[:, None, None], taken, result)
    padded = rows == offset
    if result is None:
        first = groups[sources[0]]
        return jnp.full((len(rows),) + first.shape[1:], pad_value, first.dtype)
    if padded.any():
        result = jnp.where(padded[:, None, None], pad_value, result)
    return result


def _columns(groups, sources, index: np.ndarray, pad_value):
    """One ``(F, B, K)`` array per column of ``index`` (see :func:`_take_rows`)."""
    return [_take_rows(groups, sources, index[:, a], pad_value) for a in range(index.shape[1])]


def _sum_kernel(backend: str, dtype):
    if backend == "auto":
        # The fused kernel computes in float32 on a GPU: float64 circuits (x64) keep the
        # einsum's full precision unless the user asks for "pallas".
        backend = default_backend() if dtype == jnp.float32 else "einsum"
    return fused_log_matmul_exp if backend == "pallas" else log_matmul_exp


#: Circuits with at least this many stages run the scanned upward and top-down passes
#: (`_upward_scanned`, `_top_down_scanned`): their program grows with the number of
#: differently shaped runs of stages, not with the depth, but an evaluation runs about 1.4x
#: longer (docs/circuits.md). Shallower circuits (quad-trees, random binary trees) keep the
#: unrolled passes, whose static gathers XLA fuses into the layers. Read at trace time.
SCAN_MIN_STAGES = 16


def _inner_layer(structure, children, weights, semiring, kernel):
    """The inner layer of a stage on its children's ``A`` arrays ``(F, B, K)``."""
    if structure.layer_kind == "cp":
        return cp_layer(children, weights, semiring, kernel)
    tucker_kernel = None if kernel is log_matmul_exp else kernel
    return tucker_layer(children[0], children[1], weights, semiring, tucker_kernel)


def _padded(array, shape, fill):
    """``array`` padded at the end of each axis to ``shape`` with ``fill``."""
    widths = [(0, n - m) for n, m in zip(shape, array.shape, strict=True)]
    return jnp.pad(array, widths, constant_values=fill) if any(w for _, w in widths) else array


def _segment_inputs(segment, log_w, log_mix):
    """A segment's stacked, padded weights: ``(n, F, O, J)`` and ``(n, M, O, P)`` or None."""
    weights = jnp.stack([_padded(log_w[s], (segment.num_folds,) + log_w[s].shape[1:], 0.0)
                         for s in segment.stages])
    if segment.mixing is None:
        return weights, None
    num_mixed, width = segment.mixing.shape[1:]
    mixes = []
    for s in segment.stages:
        w = _padded(log_mix[s], log_mix[s].shape[:2] + (width,), -jnp.inf)  # absent partitions
        mixes.append(_padded(w, (num_mixed,) + w.shape[1:], 0.0))  # padding units
    return weights, jnp.stack(mixes)


def _segment_xs(segment, weights, mixes):
    xs = (jnp.asarray(segment.children), jnp.asarray(segment.outputs), weights)
    if mixes is None:
        return xs
    return xs + (jnp.asarray(segment.mixing), jnp.asarray(segment.mix_outputs), mixes,
                 jnp.asarray(segment.mix_counts))


def _stage_operands(structure, buffer, rows):
    """What a stage's sum layer reads: the Hadamard product of its children (CP, one
    ``(F, B, K)`` array, absent children holding zeros) or its two children (Tucker)."""
    children = [jnp.take(buffer, rows[:, a], axis=0) for a in range(rows.shape[1])]
    if structure.layer_kind == "cp":
        return (sum(children[1:], children[0]),)
    return tuple(children)


def _stage_functions(structure, semiring, kernel, mix_rows):
    """A stage's inner layer (on its operands) and mixing layer (on its inner output)."""
    def inner(operands, weights):
        return _inner_layer(structure, list(operands), weights, semiring, kernel)

    def mix(out, mix_weights):
        parts = jnp.take(out, mix_rows, axis=0)  # (M, P, B, K)
        return mixing_layer([parts[:, p] for p in range(parts.shape[1])], mix_weights, semiring)

    return inner, mix


def _scan_forward(structure, semiring, kernel, leaves, weights, mixes, keep_operands):
    """The buffer of every output group below the root; with ``keep_operands`` also each
    segment's stacked stage operands (the backward pass's residuals)."""
    plan = structure.scan_plan
    num_leaves, batch, units = leaves.shape
    buffer = jnp.concatenate([
        jnp.zeros((1, batch, units), leaves.dtype), leaves,
        jnp.zeros((plan.num_rows - 1 - num_leaves, batch, units), leaves.dtype)])
    kept = []
    for segment, w, m in zip(plan.segments, weights, mixes, strict=True):
        def stage(buffer, xs):
            operands = _stage_operands(structure, buffer, xs[0])
            inner, mix = _stage_functions(structure, semiring, kernel,
                                          xs[3] if len(xs) > 3 else None)
            out = inner(operands, xs[2]).astype(buffer.dtype)
            buffer = jax.lax.dynamic_update_slice_in_dim(buffer, out, xs[1], 0)
            if len(xs) > 3:
                mixed = mix(out, xs[5]).astype(buffer.dtype)
                buffer = jax.lax.dynamic_update_slice_in_dim(buffer, mixed, xs[4], 0)
            return buffer, operands if keep_operands else None

        buffer, operands = jax.lax.scan(stage, buffer, _segment_xs(segment, w, m))
        kept.append(operands)
    return buffer, tuple(kept)


def _scan_outputs(structure, buffer):
    """What the passes read from the buffer: every output group below the root stage
    (empty ones included, as size-0 arrays) and the root stage's children."""
    plan = structure.scan_plan
    groups = tuple(buffer[start:start + size] for start, size in
                   zip(plan.offsets[:-2], structure.group_sizes[:-2], strict=True))
    rows = plan.root_children
    return groups, tuple(jnp.take(buffer, rows[:, a], axis=0) for a in range(rows.shape[1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _scan_groups(structure, semiring, kernel, leaves, weights, mixes):
    """`_scan_outputs` of the buffer (see `ScanPlan`), with a hand-written backward pass:
    the automatic one adds a whole-buffer cotangent per stage (a zero buffer scattered
    into, then summed), ten times the forward pass at depth 60; this one scatters each
    stage's child cotangents into one carried buffer in place. Returning the groups and
    the root's children rather than the buffer lets the backward pass start from only
    the cotangents that are not zero (in training, the root's children's): a buffer
    output's cotangent was assembled whole, three passes over the buffer per step."""
    buffer = _scan_forward(structure, semiring, kernel, leaves, weights, mixes, False)[0]
    return _scan_outputs(structure, buffer)


def _scan_groups_forward(structure, semiring, kernel, leaves, weights, mixes):
    leaves, weights, mixes = jax.tree_util.tree_map(
        lambda primal: primal.value, (leaves, weights, mixes))
    buffer, operands = _scan_forward(structure, semiring, kernel, leaves, weights, mixes, True)
    return _scan_outputs(structure, buffer), (weights, mixes, operands, buffer)


def _scan_groups_backward(structure, semiring, kernel, residuals, cotangents):
    group_cotangents, children_cotangents = cotangents
    buffer = residuals[3]
    plan = structure.scan_plan
    ct = jnp.zeros_like(buffer)
    for start, group_ct in zip(plan.offsets[:-2], group_cotangents, strict=True):
        if not isinstance(group_ct, SymbolicZero) and group_ct.shape[0]:
            ct = jax.lax.dynamic_update_slice_in_dim(ct, group_ct.astype(ct.dtype), start, 0)
    for a, child_ct in enumerate(children_cotangents):
        if not isinstance(child_ct, SymbolicZero):
            ct = ct.at[plan.root_children[:, a]].add(child_ct.astype(ct.dtype))
    return _scan_buffer_backward(structure, semiring, kernel, residuals, ct)


def _scan_buffer_backward(structure, semiring, kernel, residuals, cotangent):
    # Stages are undone top-down from their kept operands, each reading its rows'
    # cotangents and adding its children's to earlier rows of one carried buffer. A
    # padding fold reads past its stage's rows (a nonzero cotangent), but its children
    # are all row 0 and its weights are cut away, so that flows nowhere; padding mixing
    # units read real folds, so their cotangent is masked. Nothing is written over the
    # rows read (no zeroing): a write there before the reads are done would make XLA
    # copy the whole buffer.
    weights, mixes, operands, buffer = residuals
    # A CP sum layer's cotangents come from its output, kept in the buffer: the forward
    # einsum is not recomputed (`log_matmul_exp_vjp`; the fused kernel computes the same sum).
    from_output = structure.layer_kind == "cp" and semiring == "sum"
    num_leaves = structure.group_sizes[0]
    plan = structure.scan_plan
    weight_grads, mix_grads = [], []
    ct = cotangent
    for segment, w, m, ops in reversed(list(zip(plan.segments, weights, mixes, operands,
                                                strict=True))):
        def stage(ct, xs_and_operands):
            xs, operands = xs_and_operands
            rows = xs[0]
            inner, mix = _stage_functions(structure, semiring, kernel,
                                          xs[3] if len(xs) > 3 else None)
            num_folds = rows.shape[0]
            if from_output:
                # A padding fold (all children row 0) has rows holding later groups'
                # values; as -inf ("no mass") it passes no cotangent.
                real_fold = jnp.any(rows != 0, axis=1)[:, None, None]
                out = jnp.where(real_fold, jax.lax.dynamic_slice_in_dim(buffer, xs[1], num_folds, 0),
                                -jnp.inf)

                def inner_vjp(ct_out):
                    ct_h, ct_w = log_matmul_exp_vjp(operands[0], xs[2], out, ct_out)
                    return (ct_h,), ct_w
            else:
                out, inner_vjp = jax.vjp(inner, operands, xs[2])
            ct_out = jax.lax.dynamic_slice_in_dim(ct, xs[1], num_folds, 0).astype(out.dtype)
            mix_grad = None
            if len(xs) > 3:
                num_mixed = xs[3].shape[0]
                ct_mixed = jax.lax.dynamic_slice_in_dim(ct, xs[4], num_mixed, 0)
                real = (jnp.arange(num_mixed) < xs[6])[:, None, None]
                _, mix_vjp = jax.vjp(mix, out, xs[5])
                ct_from_mixing, mix_grad = mix_vjp(jnp.where(real, ct_mixed, 0.0).astype(out.dtype))
                ct_out = ct_out + ct_from_mixing
            ct_operands, weight_grad = inner_vjp(ct_out)
            for a in range(rows.shape[1]):
                # A CP stage's children all receive the cotangent of their product.
                ct_child = ct_operands[0] if len(ct_operands) == 1 else ct_operands[a]
                ct = ct.at[rows[:, a]].add(ct_child.astype(ct.dtype))
            return ct, (weight_grad, mix_grad)

        ct, (weight_grad, mix_grad) = jax.lax.scan(
            stage, ct, (_segment_xs(segment, w, m), ops), reverse=True)
        weight_grads.append(weight_grad)
        mix_grads.append(mix_grad)
    return ct[1:1 + num_leaves], tuple(reversed(weight_grads)), tuple(reversed(mix_grads))


_scan_groups.defvjp(_scan_groups_forward, _scan_groups_backward, symbolic_zeros=True)


def _upward_scanned(structure: CircuitStructure, leaves, log_w, log_mix, semiring, kernel):
    """`upward` as one ``lax.scan`` per run of equally padded stages (see `ScanPlan`)."""
    plan = structure.scan_plan
    dtype = jnp.result_type(leaves, *log_w)
    inputs = [_segment_inputs(segment, log_w, log_mix) for segment in plan.segments]
    group_values, children = _scan_groups(structure, semiring, kernel, leaves.astype(dtype),
                                          tuple(w for w, _ in inputs),
                                          tuple(m for _, m in inputs))
    groups = []
    for g, values in enumerate(group_values):
        empty = g > 0 and g % 2 == 0 and structure.stages[g // 2 - 1][1] is None
        groups.append(None if empty else values)
    out = _inner_layer(structure, list(children), log_w[-1], semiring, kernel)
    groups.append(out)
    mixing = structure.stages[-1][1]
    if mixing is None:
        groups.append(None)
    else:
        mixed = _columns([out], (0,), mixing.index, 0.0)
        groups.append(mixing_layer(mixed, log_mix[-1], semiring))
    return groups


def upward(structure: CircuitStructure, input_values, log_w, log_mix, semiring="sum",
           backend="einsum"):
    """Evaluate every layer bottom-up.

    Args:
        structure: the plan.
        input_values: ``(S, B, K)`` log-values of the input units.
        log_w: per stage ``(F, O, J)`` log-weights of the inner sums.
        log_mix: per stage ``(M, O, P)`` log-weights of the mixing sums (or None).
        semiring: ``"sum"`` or ``"max"``.
        backend: ``"einsum"``, ``"pallas"`` or ``"auto"``.

    Returns:
        The list of output groups (``None`` for stages without mixing); the root
        value is ``groups[g][row, :, 0]`` with ``(g, row) = structure.root_location``.
    """
    kernel = _sum_kernel(backend, jnp.result_type(input_values, *log_w))
    if structure.leaf_slots.shape[1] == 1:
        leaves = input_values
    else:
        leaves = sum(_columns([input_values], (0,), structure.leaf_slots, 0.0))
    if len(structure.stages) >= SCAN_MIN_STAGES:
        return _upward_scanned(structure, leaves, log_w, log_mix, semiring, kernel)
    plan = structure.read_plan
    groups, parts = [], {}

    def publish(array):
        """Append an output group; cut it into its consumers' parts if it has several."""
        g = len(groups)
        groups.append(array)
        if g in plan.splits:
            rows, consumers, sizes = plan.splits[g]
            taken = _static_take(array, rows, np.ones(len(rows), bool))
            pieces = jnp.split(taken, np.cumsum(sizes)[:-1].tolist())
            parts.update({(g, k): piece for k, piece in enumerate(pieces)})

    publish(leaves)
    for s, ((_, mixing), weights, mix_weights) in enumerate(
            zip(structure.stages, log_w, log_mix, strict=True)):
        read = [groups[g] if k is None else parts.pop((g, k)) for g, k in plan.parts[s]]
        children = _columns(read, tuple(range(len(read))), plan.index[s], 0.0)
        out = _inner_layer(structure, children, weights, semiring, kernel)
        publish(out)
        if mixing is None:
            groups.append(None)
        else:
            mixed = _columns([out], (0,), mixing.index, 0.0)
            publish(mixing_layer(mixed, mix_weights, semiring))
    return groups


def root_value(structure: CircuitStructure, groups):
    group, row = structure.root_location
    return groups[group][row, :, 0]


def _choose(key, logits, mode):
    if mode == "argmax":
        return jnp.argmax(logits, axis=-1)
    return jax.random.categorical(key, logits, axis=-1)


def _select_mixing(key, sel, values, mix_rows, first, log_mix, chosen, batch, mode):
    """One folded mixing layer's choice of partition per (unit, sample), scattered (max)
    into the selections of its inner folds: ``sel`` rows ``first + fold``."""
    unit = jnp.maximum(chosen, 0)
    inputs = jnp.take(values, mix_rows, axis=0)  # (M, P, B', K)
    inputs = jnp.broadcast_to(inputs, inputs.shape[:2] + (batch,) + inputs.shape[3:])
    picked = jnp.take_along_axis(inputs, unit[:, None, :, None], axis=3)[..., 0]
    weights = jnp.take_along_axis(log_mix, unit[..., None], axis=1)  # (M, B, P)
    choice = _choose(key, weights + jnp.moveaxis(picked, 1, 2), mode)
    folds = jnp.take_along_axis(mix_rows, choice, axis=1)  # (M, B)
    columns = jnp.broadcast_to(jnp.arange(batch), folds.shape)
    return sel.at[first + folds, columns].max(chosen.astype(sel.dtype))


def _select_static_mixing(key, inner_sel, values, mixing, log_mix, chosen, batch, mode):
    """`_select_mixing` for a stage whose inner output ``values`` and selections
    ``inner_sel`` are arrays of their own (``mixing.index`` pads with row ``F``)."""
    padded_values = jnp.concatenate(
        [values, jnp.full((1,) + values.shape[1:], -jnp.inf, values.dtype)])
    padded_sel = jnp.concatenate([inner_sel, inner_sel[:1]])
    return _select_mixing(key, padded_sel, padded_values, jnp.asarray(mixing.index), 0, log_mix,
                          chosen, batch, mode)[:-1]


def _select_inner(key, structure, sel, children, log_w, chosen, rows, batch, mode):
    """One folded inner layer's choice of child units per (fold, sample), scattered (max)
    into the selections of the children's rows ``rows`` ``(F, A)``."""
    unit = jnp.maximum(chosen, 0)
    inputs = jnp.stack(children, axis=1)  # (F, A, B', K)
    inputs = jnp.broadcast_to(inputs, inputs.shape[:2] + (batch,) + inputs.shape[3:])
    weights = jnp.take_along_axis(log_w, unit[..., None], axis=1)  # (F, B, J)
    if structure.layer_kind == "cp":
        choice = _choose(key, weights + inputs.sum(axis=1), mode)
        child_units = jnp.broadcast_to(choice[:, None, :], inputs.shape[:3])
    else:
        k = structure.num_units
        choice = _choose(key, weights + kronecker(inputs[:, 0], inputs[:, 1]), mode)
        child_units = jnp.stack([choice // k, choice % k], axis=1)
    child_units = jnp.where(chosen[:, None, :] >= 0, child_units, -1)
    targets = jnp.broadcast_to(rows[:, :, None], child_units.shape)
    columns = jnp.broadcast_to(jnp.arange(batch), child_units.shape)
    return sel.at[targets, columns].max(child_units.astype(sel.dtype))


def _top_down_scanned(key, structure, groups, log_w, log_mix, batch: int, mode: str):
    """`top_down` over the buffer layout of the scanned upward pass (see `ScanPlan`):
    the root stage, then one reverse ``lax.scan`` per run of stages. Selections live in
    one ``(num_rows, B)`` buffer; a padding fold or mixing unit selects nothing that is
    read (its children are row 0; padding mixing units are masked)."""
    plan = structure.scan_plan
    keys = jax.random.split(key, 2 * len(structure.stages))
    below = [g for g in groups[:-2] if g is not None]
    values = jnp.concatenate(
        [jnp.zeros((1,) + below[0].shape[1:], below[0].dtype)] + below
        + [jnp.zeros((plan.num_rows - 1 - sum(g.shape[0] for g in below),) + below[0].shape[1:],
                     below[0].dtype)])
    sel = jnp.full((plan.num_rows, batch), -1, jnp.int32)
    # The root stage, on its own groups.
    last = len(structure.stages) - 1
    inner, mixing = structure.stages[last]
    root_values = groups[-2]
    inner_sel = jnp.full((root_values.shape[0], batch), -1, jnp.int32)
    if mixing is None:
        inner_sel = inner_sel.at[structure.root_location[1]].set(0)
    else:
        mix_sel = jnp.full((mixing.index.shape[0], batch), -1, jnp.int32)
        mix_sel = mix_sel.at[structure.root_location[1]].set(0)
        inner_sel = _select_static_mixing(keys[2 * last], inner_sel, root_values, mixing,
                                          log_mix[last], mix_sel, batch, mode)
    rows = jnp.asarray(plan.root_children)
    children = [jnp.take(values, rows[:, a], axis=0) for a in range(rows.shape[1])]
    sel = _select_inner(keys[2 * last + 1], structure, sel, children, log_w[last], inner_sel, rows,
                        batch, mode)
    for segment in reversed(plan.segments):
        stages = np.asarray(segment.stages)
        weights, mixes = _segment_inputs(segment, log_w, log_mix)
        xs = _segment_xs(segment, weights, mixes) + (keys[2 * stages], keys[2 * stages + 1])

        def stage(sel, xs):
            rows, first, weights = xs[:3]
            mix_key, inner_key = xs[-2:]
            num_folds = rows.shape[0]
            if len(xs) > 5:
                mix_rows, mix_first, mix_weights, mix_count = xs[3:7]
                chosen = jax.lax.dynamic_slice_in_dim(sel, mix_first, mix_rows.shape[0], 0)
                chosen = jnp.where((jnp.arange(mix_rows.shape[0]) < mix_count)[:, None], chosen, -1)
                own = jax.lax.dynamic_slice_in_dim(values, first, num_folds, 0)
                sel = _select_mixing(mix_key, sel, own, mix_rows, first, mix_weights, chosen,
                                     batch, mode)
            chosen = jax.lax.dynamic_slice_in_dim(sel, first, num_folds, 0)
            children = [jnp.take(values, rows[:, a], axis=0) for a in range(rows.shape[1])]
            sel = _select_inner(inner_key, structure, sel, children, weights, chosen, rows, batch,
                                mode)
            return sel, None

        sel, _ = jax.lax.scan(stage, sel, xs, reverse=True)
    return sel[1 + structure.slot_leaf]


def top_down(key, structure: CircuitStructure, groups, log_w, log_mix, batch: int, mode: str):
    """Select one induced tree per sample, from the root down.

    At a sum unit the child ``j`` is drawn with probability proportional to
    ``w_j * value_j`` (``mode="sample"``: ancestral sampling, exact for the values
    of a sum-semiring upward pass with the evidence in) or taken as the argmax
    (``mode="argmax"``: max-product backtracking); product units pass the
    selection to all their children.

    Returns:
        ``(S, B)`` the selected unit of each input slot, -1 for slots outside the tree.
    """
    if len(structure.stages) >= SCAN_MIN_STAGES:
        return _top_down_scanned(key, structure, groups, log_w, log_mix, batch, mode)
    sel = [None if g is None else jnp.full((g.shape[0], batch), -1, jnp.int32) for g in groups]
    root_group, root_row = structure.root_location
    sel[root_group] = sel[root_group].at[root_row].set(0)
    keys = jax.random.split(key, 2 * len(structure.stages))
    for d in reversed(range(len(structure.stages))):
        inner, mixing = structure.stages[d]
        inner_group, mixing_group = 2 * d + 1, 2 * d + 2
        if mixing is not None:
            sel[inner_group] = _select_static_mixing(
                keys[2 * d], sel[inner_group], groups[inner_group], mixing, log_mix[d],
                sel[mixing_group], batch, mode)
        # The children's selections, concatenated (plus the padding row absent children name).
        sources = [sel[g] for g in inner.sources]
        children_sel = jnp.concatenate(sources + [sources[0][:1]])
        children = _columns(groups, inner.sources, inner.index, 0.0)
        children_sel = _select_inner(keys[2 * d + 1], structure, children_sel, children, log_w[d],
                                     sel[inner_group], jnp.asarray(inner.index), batch, mode)
        offset = 0
        for g in inner.sources:
            size = sel[g].shape[0]
            sel[g] = children_sel[offset: offset + size]
            offset += size
    return sel[0][jnp.asarray(structure.slot_leaf)]


# ---------------------------------------------------------------------------
# Input validation (at the Python boundary, before tracing)
# ---------------------------------------------------------------------------
def _check_params(tree, name: str) -> None:
    """NaN and +inf are rejected in concrete parameters; -inf (a zero weight) is allowed."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if is_traced(leaf):
            continue
        values = np.asarray(leaf)
        if not np.issubdtype(values.dtype, np.inexact):
            continue
        bad = np.isnan(values) | (values == np.inf)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"`{name}{jax.tree_util.keystr(path)}` holds {values[index]} at index "
                             f"{index}; parameters must not be NaN or +inf (-inf, a zero weight "
                             "in log space, is allowed)")


def _as_mask(mask, name: str, num_variables: int, batch_shape):
    if mask is None:
        return None
    if is_traced(mask):
        return jnp.broadcast_to(mask, batch_shape + (num_variables,))
    array = np.asarray(mask)
    if array.dtype != bool:
        raise TypeError(f"`{name}` must be a boolean mask (True = {name}), got dtype {array.dtype}")
    if array.ndim == 0 or array.shape[-1] != num_variables:
        raise ValueError(f"`{name}` must have {num_variables} entries (one per variable) in its "
                         f"last axis, got shape {array.shape}")
    try:
        return np.broadcast_to(array, batch_shape + (num_variables,))
    except ValueError:
        raise ValueError(f"`{name}` of shape {array.shape} does not broadcast to the data's shape "
                         f"{batch_shape + (num_variables,)}") from None


class Circuit(eqx.Module):
    """A compiled probabilistic circuit (see the module docstring).

    Build one with :func:`compile_circuit`. Parameters may be replaced by any
    arrays of the same shapes (:meth:`with_params`), for example produced by a
    neural network and differentiated through.

    A circuit is a pytree: pass it to a jitted function as an argument
    (``jax.jit(lambda pc, x: pc.log_prob(x))(pc, x)``, or ``equinox.filter_jit``). Its
    bound methods can be jitted too (``jax.jit(pc.log_prob)``), which compiles the
    parameters in as constants: one compilation per circuit.

    Attributes:
        structure: the static plan of folded layers.
        input_layer: the input distribution family.
        input_params: the input layer's parameters, arrays ``(S, K, ...)``.
        sum_logits: per stage, the inner sums' logits ``(F, O, J)``.
        mix_logits: per stage, the mixing sums' logits ``(M, O, P)`` or None.
        normalized: weights are the softmax of the logits (``Z = 1``); otherwise
            the logits are raw log-weights and queries divide by ``Z``.
        backend: sum-layer kernel, ``"einsum"``, ``"pallas"`` or ``"auto"``.
    """

    structure: CircuitStructure = eqx.field(static=True)
    input_layer: InputLayer = eqx.field(static=True)
    input_params: dict
    sum_logits: tuple
    mix_logits: tuple
    normalized: bool = eqx.field(static=True, default=True)
    backend: str = eqx.field(static=True, default="auto")

    def __hash__(self) -> int:
        # jax.jit(pc.log_prob) hashes the bound method, hence the circuit; equinox's hash
        # of every field fails on the parameter arrays. The static plan is hashable, and
        # circuits that are equal (same plan and equal arrays) share it, as hashing needs.
        return hash((type(self), self.structure, self.input_layer, self.normalized, self.backend))

    # ------------------------------------------------------------ params
    @property
    def num_variables(self) -> int:
        return self.structure.num_variables

    @property
    def num_parameters(self) -> int:
        """Number of scalar parameters (sum weights and input parameters)."""
        leaves = jax.tree_util.tree_leaves((self.input_params, self.sum_logits, self.mix_logits))
        return int(sum(np.prod(x.shape) for x in leaves))

    @property
    def float_dtype(self):
        """The float dtype queries compute in: the parameters' widest (float64 under x64)."""
        leaves = jax.tree_util.tree_leaves((self.input_params, self.sum_logits, self.mix_logits))
        return jnp.result_type(*[x for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)], float)

    def log_weights(self):
        """The log-weights used by the layers: ``(sum, mixing)`` tuples per stage."""
        log_w = tuple(jax.nn.log_softmax(w, axis=-1) if self.normalized else w
                      for w in self.sum_logits)
        log_mix = []
        for (_, mixing), w in zip(self.structure.stages, self.mix_logits, strict=True):
            if mixing is None:
                log_mix.append(None)
                continue
            w = jnp.where(jnp.asarray(mixing.valid)[:, None, :], w, -jnp.inf)
            log_mix.append(jax.nn.log_softmax(w, axis=-1) if self.normalized else w)
        return log_w, tuple(log_mix)

    def with_params(self, input_params=None, sum_logits=None, mix_logits=None,
                    normalized: bool | None = None) -> Circuit:
        """The same circuit with some parameters replaced (shapes are checked).

        Args:
            input_params: dict like :attr:`input_params`.
            sum_logits: tuple like :attr:`sum_logits`.
            mix_logits: tuple like :attr:`mix_logits`.
            normalized: whether the logits are normalised by softmax (default: unchanged).

        Raises:
            ValueError: for a structure or shape that does not match, naming the argument,
                or a NaN or ``+inf`` parameter (naming where it is; checked when the
                arrays are concrete). ``-inf`` (a zero weight) is allowed.
        """
        def same(new, old, name):
            if new is None:
                return old
            new_tree = jax.tree_util.tree_structure(new)
            old_tree = jax.tree_util.tree_structure(old)
            if new_tree != old_tree:
                raise ValueError(f"`{name}` must have the structure {old_tree}, got {new_tree}")
            for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old),
                            strict=True):
                if jnp.shape(a) != jnp.shape(b):
                    raise ValueError(f"`{name}` holds an array of shape {jnp.shape(a)} where "
                                     f"{jnp.shape(b)} is expected")
            _check_params(new, name)
            return new

        return Circuit(
            self.structure, self.input_layer,
            same(input_params, self.input_params, "input_params"),
            same(sum_logits, self.sum_logits, "sum_logits"),
            same(mix_logits, self.mix_logits, "mix_logits"),
            self.normalized if normalized is None else bool(normalized),
            self.backend,
        )

    # ------------------------------------------------------ input checks
    def prepare(self, x, observed=None, name="x", mask_name="observed"):
        """Checked data for the evaluation methods: ``(values, mask, batch_shape)``.

        ``values`` and ``mask`` are ``(B, V)`` (batch axes flattened; ``mask`` all true
        when ``observed`` is None). Concrete data are checked at once (the number of
        variables, numeric dtype, NaN and support, naming ``name`` and the variable);
        traced data only by shape.
        """
        v = self.num_variables
        if is_traced(x):
            batch_shape = tuple(x.shape[:-1])
            mask = _as_mask(observed, mask_name, v, batch_shape)
            x2 = jnp.reshape(x, (-1, v)).astype(self.float_dtype)
            m2 = jnp.ones_like(x2, bool) if mask is None else jnp.reshape(mask, (-1, v))
            return x2, m2, batch_shape
        array = np.asarray(x)
        if array.ndim == 0 or array.shape[-1] != v:
            got = array.shape[-1] if array.ndim else 0
            raise ValueError(f"`{name}` must have {v} variables in its last axis (the circuit's "
                             f"variables), got {got} (shape {array.shape})")
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise TypeError(f"`{name}` must be numeric, got dtype {array.dtype}")
        batch_shape = array.shape[:-1]
        mask = _as_mask(observed, mask_name, v, batch_shape)
        mask = np.ones(array.shape, bool) if mask is None else np.asarray(mask)
        values = array.astype(np.float64)
        nan = mask & np.isnan(values)
        if nan.any():
            index = np.argwhere(nan)[0]
            raise ValueError(
                f"`{name}` variable {index[-1]} is NaN (at index {tuple(int(i) for i in index)}); "
                "mark missing values as unobserved with the mask instead"
            )
        self.input_layer.check_values(values.reshape(-1, v), mask.reshape(-1, v), name)
        x2 = jnp.asarray(np.where(mask, values, 0.0).reshape(-1, v), self.float_dtype)
        if int(np.prod(batch_shape, dtype=int)) == 0:
            raise ValueError(f"`{name}` holds no rows (shape {array.shape})")
        return x2, jnp.asarray(mask.reshape(-1, v)), batch_shape

    # ------------------------------------------------------------ passes
    def input_log_values(self, x, observed, semiring="sum"):
        """``(S, B, K)`` log-values of every input unit on prepared ``(B, V)`` data (no checks).

        Unobserved variables give 0 (marginalised) in the ``"sum"`` semiring and the
        unit's mode in ``"max"``. Its gradient is each unit's responsibility (EM's E-step).
        """
        slots = jnp.asarray(self.structure.slot_variable)
        xs = x.T[slots]
        obs = observed.T[slots]
        values = self.input_layer.log_prob(self.input_params, jnp.where(obs, xs, 0.0))
        if semiring == "max":
            fill = self.input_layer.mode_log_prob(self.input_params)[:, None, :]
        else:
            fill = 0.0
        return jnp.where(obs[..., None], values, fill)

    def _evaluate(self, x, observed, semiring="sum"):
        log_w, log_mix = self.log_weights()
        values = self.input_log_values(x, observed, semiring)
        groups = upward(self.structure, values, log_w, log_mix, semiring, self.backend)
        return groups, log_w, log_mix

    def _log_partition(self):
        if self.normalized:
            return jnp.zeros(())
        x = jnp.zeros((1, self.num_variables))
        groups, _, _ = self._evaluate(x, jnp.zeros_like(x, bool))
        return root_value(self.structure, groups)[0]

    def log_marginal_prepared(self, x, observed):
        """``(B,)`` log-marginals of prepared ``(B, V)`` data and mask (no checks; jit-able).

        What `log_prob` and `log_marginal` compute after `prepare`; for code that checks
        its data once and evaluates it many times (training loops).
        """
        groups, _, _ = self._evaluate(x, observed)
        return root_value(self.structure, groups) - self._log_partition()

    # ----------------------------------------------------------- queries
    def log_partition(self) -> Float[Array, ""]:
        """``log Z`` (exactly 0 for a normalised circuit)."""
        return _jit_log_partition(self)

    def log_prob(self, x: Float[Array, "*batch V"]) -> Float[Array, "*batch"]:
        """Log-likelihood ``log p(x)`` of complete observations.

        Raises:
            ValueError: naming the variable, for a wrong number of variables, NaN, or a
                value outside the input layer's support.
        """
        x2, observed, batch_shape = self.prepare(x)
        return _jit_log_marginal(self, x2, observed).reshape(batch_shape)

    def log_marginal(self, x: Float[Array, "*batch V"],
                     observed: Bool[Array, "*batch V"]) -> Float[Array, "*batch"]:
        """Log-marginal ``log p(x_O) = log sum_{x_M} p(x_O, x_M)`` of the observed variables.

        Args:
            x: values (entries where ``observed`` is False are ignored, may be NaN).
            observed: boolean mask, True for observed variables (broadcasts against ``x``).

        The sum over the missing variables is exact: the input units of missing
        variables are set to 1, which smoothness and decomposability turn into
        the marginal (Darwiche 2003).
        """
        x2, mask, batch_shape = self.prepare(x, observed)
        return _jit_log_marginal(self, x2, mask).reshape(batch_shape)

    def log_conditional(self, x: Float[Array, "*batch V"], query: Bool[Array, "*batch V"],
                        evidence: Bool[Array, "*batch V"]) -> Float[Array, "*batch"]:
        """Log-conditional ``log p(x_A | x_B) = log p(x_A, x_B) - log p(x_B)``.

        Args:
            x: values of the query and evidence variables.
            query: mask of ``A`` (non-empty in every row).
            evidence: mask of ``B`` (may be empty: then this is the marginal of ``A``).

        Raises:
            ValueError: if a variable is both queried and given as evidence, if a row
                queries no variable, or if the evidence has probability zero.
        """
        v = self.num_variables
        if not is_traced(x, query, evidence):
            batch_shape = np.shape(x)[:-1]
            q = _as_mask(query, "query", v, batch_shape)
            e = _as_mask(evidence, "evidence", v, batch_shape)
            both = np.argwhere(q & e)
            if both.size:
                raise ValueError(f"variable {both[0][-1]} is both in `query` and in `evidence` "
                                 f"(at index {tuple(int(i) for i in both[0][:-1])}); they must be "
                                 "disjoint")
            empty = ~q.any(axis=-1)
            if empty.any():
                where = tuple(int(i) for i in np.argwhere(empty)[0]) if empty.ndim else ()
                raise ValueError(f"`query` selects no variable (at row {where}); a conditional "
                                 "needs at least one query variable")
            union = q | e
        else:
            union, e = query | evidence, evidence
        x2, joint_mask, batch_shape = self.prepare(x, union)
        e2 = jnp.reshape(jnp.broadcast_to(e, batch_shape + (v,)), (-1, v))
        both = _jit_log_marginal(self, jnp.concatenate([x2, x2]),
                                 jnp.concatenate([joint_mask, e2]))
        n = x2.shape[0]
        log_joint, log_evidence = both[:n], both[n:]
        if not is_traced(x, query, evidence):
            _check_evidence_possible(log_evidence, "evidence")
        return (log_joint - log_evidence).reshape(batch_shape)

    def map(self, x: Float[Array, "*batch V"] | None = None,
            evidence: Bool[Array, "*batch V"] | None = None, *,
            refine: str | None = "auto", max_steps: int | None = None,
            num_restarts: int = 0, key: PRNGKeyArray | None = None):
        """Most probable explanation: max-product, then local search on the exact likelihood.

        Looks for :math:`\\arg\\max_{x_M} p(x_M, x_E)` over the variables :math:`M`
        outside the evidence :math:`E`.

        **Max-product** (``refine=None``): an upward pass in the max-product
        semiring, then backtracking from the root along the argmax child of every sum
        (Chan & Darwiche 2006; Poon & Domingos 2011). This is exact for deterministic
        circuits (at most one non-zero child per sum for any input). For other
        circuits it maximises over induced trees, not over :math:`x` (Peharz et al.
        2017), and exact MAP is NP-hard there (Conaty, Mauá & de Campos 2017; Mei,
        Jiang & Tu 2018): the best tree's completion is often far from the best
        completion.

        **Iterated conditional modes** (``refine="icm"``; Besag 1986),
        local search on the exact likelihood from approximate solutions, as Park &
        Darwiche (2004) do for MAP in Bayesian networks. From each start, repeatedly
        change the one unobserved variable, to the one value, that raises the exact
        :math:`\\log p(x)` most (steepest-ascent coordinate ascent), until no single
        change raises it. Every change is scored exactly and all at once: a smooth,
        decomposable circuit is linear in the input units :math:`L_{s,k}` of any one
        variable :math:`i` (each induced tree holds exactly one of them), so with the
        flows :math:`f_{s,k} = \\partial \\log c(x) / \\partial \\log L_{s,k}(x_i)` of
        one backward pass (Darwiche 2003),

        .. math:: \\frac{c(x_{i \\leftarrow v})}{c(x)} =
                  \\sum_{s,k:\\ \\mathrm{var}(s) = i} f_{s,k}\\,
                  \\frac{L_{s,k}(v)}{L_{s,k}(x_i)}

        for every variable and value: one forward and one backward pass per step
        score every single-variable change of every row. A step is kept only if the
        forward pass at the new point confirms that :math:`\\log p` rose. The starts:

        * the max-product completion, so the result is never less likely than it;
        * the completion of the induced tree found by the same backtracking through
          the *sum*-semiring values (at each sum the child maximising
          :math:`w_j\\, c_j(x_E)`, the other variables summed out), which often lies
          in a better basin;
        * ``num_restarts`` draws of :math:`p(x_M \\mid x_E)` (exact conditional
          sampling, :meth:`sample_conditional`), if asked for, with ``key``.

        All starts run as one batch; each row returns its most likely result. At
        convergence no single change of an unobserved variable raises :math:`p` (a
        local optimum); the global one is not guaranteed. Each step costs about a
        gradient of :meth:`log_prob` on ``(2 + num_restarts) * B`` rows, and memory
        likewise: split very large batches.

        Refinement needs an input layer with a finite support (``Bernoulli``,
        ``Categorical``: a change moves to any other category, ``Binomial``: to any
        other count). The default ``refine="auto"`` is ``"icm"`` for those layers and
        the max-product completion alone for the others (``Gaussian``).

        Args:
            x: evidence values (ignored where ``evidence`` is False); None for no evidence.
            evidence: boolean mask of the evidence variables (default: none).
            refine: ``"auto"`` (default: ``"icm"`` for an input layer with a finite
                support, else None), ``"icm"``, or None (the max-product completion alone).
            max_steps: most changes per row and start for ``"icm"`` (default: the number
                of variables). Rows still improving when it is reached are returned as
                they are, with a ``RuntimeWarning``.
            num_restarts: extra ICM starts drawn from :math:`p(x_M \\mid x_E)` (default 0).
            key: PRNG key for those draws (required when ``num_restarts > 0``).

        Returns:
            ``(assignment, log_value)``: the completed ``(*batch, V)`` assignment (evidence
            kept) and, with ``refine="icm"``, its log-likelihood ``log p(assignment)``;
            with ``refine=None``, the max-product value (the best induced tree, minus
            ``log Z``), which equals ``log p(assignment)`` for deterministic circuits and
            is a lower bound of it otherwise.

        Raises:
            ValueError: for an unknown ``refine``, a ``max_steps`` or ``num_restarts``
                that is not a positive (non-negative) integer or is given with
                ``refine=None``, ``refine="icm"`` on an input layer without a finite
                support, ``num_restarts > 0`` without ``key`` (or ``key`` without
                restarts), ``evidence`` without ``x`` or of the wrong shape, evidence
                values outside the input layer's support (naming the variable), or
                evidence of probability zero.
            TypeError: if ``evidence`` is not a boolean mask or ``key`` not a PRNG key.
        """
        if refine not in _REFINEMENTS:
            raise ValueError(f"`refine` must be one of {_REFINEMENTS}, got {refine!r}")
        if refine == "auto":
            refine = "icm" if _support_size(self.input_layer) is not None else None
        num_values = None
        if refine == "icm":
            num_values = _support_size(self.input_layer)
            if num_values is None:
                raise ValueError(
                    f"`refine='icm'` needs an input layer with a finite support (Bernoulli, "
                    f"Categorical, Binomial), got {type(self.input_layer).__name__}; pass "
                    "refine=None for the max-product completion")
            if max_steps is None:
                max_steps = self.num_variables
            max_steps = check_positive_int(max_steps, "max_steps")
            num_restarts = check_positive_int(num_restarts, "num_restarts", minimum=0)
            if num_restarts and key is None:
                raise ValueError(f"`key` is required for num_restarts={num_restarts} (the "
                                 "restarts are random draws)")
            if not num_restarts and key is not None:
                raise ValueError("`key` was given but num_restarts=0: nothing is random "
                                 "(set num_restarts > 0 for random restarts)")
            if key is not None:
                check_key(key)
        else:
            for name, value, default in (("max_steps", max_steps, None),
                                         ("num_restarts", num_restarts, 0), ("key", key, None)):
                if value is not default:
                    raise ValueError(f"`{name}` applies to refine='icm' only, got {name}="
                                     f"{value!r} with refine={refine!r}")
        if x is None:
            if evidence is not None:
                raise ValueError("`evidence` was given without `x`")
            x = np.zeros((1, self.num_variables), np.float32)
            evidence = np.zeros((1, self.num_variables), bool)
        elif evidence is None:
            evidence = np.zeros(np.shape(x), bool)
        x2, mask, batch_shape = self.prepare(x, evidence, mask_name="evidence")
        if not is_traced(x2):
            log_evidence = _jit_log_marginal(self, x2, mask)
            _check_evidence_possible(log_evidence, "evidence")
        if refine is None:
            assignment, value = _jit_map(self, x2, mask)
        else:
            # max_steps is an array: changing it does not recompile.
            key = jax.random.key(0) if key is None else key  # unused without restarts
            assignment, value, converged = _jit_map_icm(self, x2, mask, num_values,
                                                        jnp.asarray(max_steps, jnp.int32), key,
                                                        int(num_restarts))
            if not is_traced(converged):
                stuck = np.flatnonzero(~np.asarray(converged))
                if stuck.size:
                    warnings.warn(
                        f"map: iterated conditional modes reached max_steps={max_steps} "
                        f"while {stuck.size} row(s) (first: row {int(stuck[0])}) still "
                        "improved; their completions beat max-product but may not be local "
                        "optima (raise `max_steps`)", RuntimeWarning, stacklevel=2)
        return (assignment.reshape(batch_shape + (self.num_variables,)),
                value.reshape(batch_shape))

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Array:
        """``num_samples`` independent draws ``(num_samples, V)`` by ancestral sampling.

        Sampling walks from the root: at a sum, a child is drawn with probability
        ``w_j c_j / sum_i w_i c_i`` (``c`` are the children's partition functions,
        which also makes this exact for unnormalised weights); at a product every
        child is followed; at an input unit a value is drawn.

        Raises:
            TypeError: if ``key`` is not a JAX PRNG key.
            ValueError: if ``num_samples`` is not a positive integer.
        """
        check_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        return _jit_sample(key, self, num_samples)

    def sample_conditional(self, key: PRNGKeyArray, x: Float[Array, "*batch V"],
                           evidence: Bool[Array, "*batch V"]) -> Array:
        """One draw of the non-evidence variables from ``p(x_M | x_E)`` per row.

        The upward pass is run with the evidence in (missing variables
        marginalised), so each sum's children are weighted by their probability
        given the evidence; the top-down pass then samples exactly from the
        conditional. Evidence values are copied to the output. Repeat rows of ``x``
        to draw several samples for the same evidence.

        Raises:
            TypeError: if ``key`` is not a JAX PRNG key.
            ValueError: naming the variable for invalid evidence, or if the evidence has
                probability zero.
        """
        check_key(key)
        x2, mask, batch_shape = self.prepare(x, evidence)
        if not is_traced(x2):
            _check_evidence_possible(_jit_log_marginal(self, x2, mask), "evidence")
        out = _jit_sample_conditional(key, self, x2, mask)
        return out.reshape(batch_shape + (self.num_variables,))

    def to_inference_data(self, key: PRNGKeyArray, num_samples: int = 1000, *,
                          num_chains: int = 1, x: Float[Array, " V"] | None = None,
                          evidence: Bool[Array, " V"] | None = None):
        """Circuit samples as ArviZ ``InferenceData``.

        Without ``evidence``: ``num_chains * num_samples`` independent draws of
        :math:`p(x)` (:meth:`sample`), split into ``num_chains`` chains (independent
        draws, so ``r_hat`` is 1 up to noise: a check of the export, not of mixing).
        With ``x`` and ``evidence`` (one row, ``(V,)``): draws of
        :math:`p(x_M \\mid x_E)` (:meth:`sample_conditional`) for the unobserved
        variables :math:`M`.

        Groups: ``posterior`` ``x`` with dims ``("variable",)`` and the variables'
        indices as coordinates (only those of :math:`M` with evidence);
        ``sample_stats`` ``lp``, :math:`\\log p(x)` of each (completed) draw; with
        evidence, ``observed_data`` ``x_observed`` (the evidence values, coordinates
        the observed variables). There is no ``log_likelihood`` group: the draws are
        values of the circuit's variables, not parameters given data, so there is
        nothing for ``arviz.loo`` to leave out (it raises a ``TypeError`` saying the
        group is missing).

        Raises:
            TypeError: if ``key`` is not a JAX PRNG key.
            ValueError: a bad count, ``x`` / ``evidence`` given alone or not one row of
                ``V`` values, or evidence of probability zero.
        """
        from probinf.diagnostics import to_inference_data

        check_key(key)
        num_samples = check_positive_int(num_samples, "num_samples")
        num_chains = check_positive_int(num_chains, "num_chains")
        total = int(num_samples) * int(num_chains)
        variables = np.arange(self.num_variables)
        groups, coords = {}, {}
        if (x is None) != (evidence is None):
            raise ValueError("`x` and `evidence` go together: give both (conditional draws) or "
                             "neither")
        if x is None:
            draws = self.sample(key, total)
            query = variables
        else:
            row, mask = np.asarray(x), np.asarray(evidence, bool)
            if row.shape != (self.num_variables,) or mask.shape != row.shape:
                raise ValueError(f"`x` and `evidence` must be one row of {self.num_variables} "
                                 f"values each, got shapes {row.shape} and {mask.shape}")
            draws = self.sample_conditional(key, np.broadcast_to(row, (total, row.shape[0])),
                                            np.broadcast_to(mask, (total, row.shape[0])))
            query = variables[~mask]
            if query.size == 0:
                raise ValueError("`evidence` observes every variable: there is nothing to sample")
            groups["observed_data"] = {"x_observed": row[mask]}
            coords["observed_variable"] = variables[mask]
        log_p = np.asarray(self.log_prob(draws), np.float64)
        draws = np.asarray(draws).reshape(num_chains, num_samples, -1)[..., query]
        coords["variable"] = query
        dims = {"x": ["variable"], "x_observed": ["observed_variable"]}
        return to_inference_data({"x": draws}, sample_stats={"lp": log_p.reshape(num_chains, -1)},
                                 coords=coords, dims=dims, **groups)

    # --------------------------------------------------- unchecked cores
    def _fill(self, slot_units, slot_values, x, observed):
        """Write the values of the selected input slots into ``x`` where not observed."""
        slots = jnp.asarray(self.structure.slot_variable)
        chosen = jnp.where(slot_units >= 0, slot_values.astype(x.dtype), 0.0)
        completed = jnp.zeros((self.num_variables, x.shape[0]), x.dtype).at[slots].add(chosen).T
        out = jnp.where(observed, x, completed)
        return out.astype(jnp.int32) if self.input_layer.discrete else out


def _check_evidence_possible(log_evidence, name):
    values = np.asarray(log_evidence)
    bad = np.argwhere(~(values > -np.inf))
    if bad.size:
        raise ValueError(f"`{name}` has probability zero under the circuit (row {int(bad[0][0])}); "
                         "conditionals given it are undefined")


@eqx.filter_jit
def _jit_log_partition(circuit):
    return circuit._log_partition()


@eqx.filter_jit
def _jit_log_marginal(circuit, x, observed):
    return circuit.log_marginal_prepared(x, observed)


def _map_max_product(circuit, x, observed):
    groups, log_w, log_mix = circuit._evaluate(x, observed, "max")
    slot_units = top_down(jax.random.key(0), circuit.structure, groups, log_w, log_mix,
                          x.shape[0], "argmax")
    modes = circuit.input_layer.mode(circuit.input_params)  # (S, K)
    slot_values = jnp.take_along_axis(modes, jnp.maximum(slot_units, 0), axis=1)
    value = root_value(circuit.structure, groups) - circuit._log_partition()
    return circuit._fill(slot_units, slot_values, x, observed), value


@eqx.filter_jit
def _jit_map(circuit, x, observed):
    return _map_max_product(circuit, x, observed)


# ---------------------------------------------------------------------------
# MAP refinement: iterated conditional modes on the exact likelihood
# ---------------------------------------------------------------------------
_REFINEMENTS = ("auto", "icm", None)


def _support_size(layer: InputLayer) -> int | None:
    """Number of values of an input layer with a finite support, None for any other."""
    if isinstance(layer, Bernoulli):
        return 2
    if isinstance(layer, Categorical):
        return int(layer.num_categories)
    if isinstance(layer, Binomial):
        return int(layer.total_count) + 1
    return None


def _slots_of_variables(structure: CircuitStructure) -> np.ndarray:
    """``(V, R)`` the input slots of every variable, padded with ``S`` (static)."""
    slot_variable = structure.slot_variable
    counts = np.bincount(slot_variable, minlength=structure.num_variables)
    table = np.full((structure.num_variables, max(int(counts.max()), 1)),
                    len(slot_variable), np.int32)
    filled = np.zeros(structure.num_variables, np.int64)
    for slot, variable in enumerate(slot_variable):
        table[variable, filled[variable]] = slot
        filled[variable] += 1
    return table


def _change_log_ratios(circuit, x, num_values):
    """``log c(x)`` ``(B,)`` and ``log c(x_{i<-v}) - log c(x)`` ``(B, V, C)`` of complete rows.

    Exact by linearity in one variable's input units (see :meth:`Circuit.map`): the
    flows ``f = d log c / d log L`` come from one backward pass, and
    ``c(x_{i<-v}) / c(x) = sum_{s,k: var(s)=i} f_{s,k} L_{s,k}(v) / L_{s,k}(x_i)``.
    """
    structure = circuit.structure
    log_w, log_mix = circuit.log_weights()
    leaf = circuit.input_log_values(x, jnp.ones(x.shape, bool))  # (S, B, K)

    def log_c(values):
        groups = upward(structure, values, log_w, log_mix, "sum", circuit.backend)
        return root_value(structure, groups)

    value, pullback = jax.vjp(log_c, leaf)
    (flows,) = pullback(jnp.ones_like(value))  # rows are independent: per-row gradients
    # log f - log L(x_i); units with zero flow (or, equivalently, zero value) drop out.
    usable = (flows > 0) & jnp.isfinite(leaf)
    base = jnp.where(usable, jnp.log(jnp.where(usable, flows, 1.0)) - leaf, -jnp.inf)
    num_slots = structure.num_slots
    every_value = jnp.broadcast_to(jnp.arange(num_values, dtype=x.dtype), (num_slots, num_values))
    table = circuit.input_layer.log_prob(circuit.input_params, every_value)  # (S, C, K)

    def per_slot(table_of_value):  # (S, K) -> (S, B)
        return jax.nn.logsumexp(base + table_of_value[:, None, :], axis=-1)

    # One value at a time keeps the (S, B, K) intermediate from growing with C.
    ratios = jax.lax.map(per_slot, jnp.moveaxis(table, 1, 0))  # (C, S, B)
    padded = jnp.concatenate([ratios, jnp.full_like(ratios[:, :1], -jnp.inf)], axis=1)
    per_variable = jax.nn.logsumexp(padded[:, _slots_of_variables(structure)], axis=2)
    return value, jnp.transpose(per_variable, (2, 1, 0))  # (B, V, C)


def _sum_tree_completion(circuit, x, observed):
    """Backtrack the argmax child of every sum through the sum-semiring values.

    With the evidence in and the other variables summed out, the child ``j`` of a
    sum maximising ``w_j c_j(x_E)`` is the most probable branch given the evidence;
    following it from the root picks one induced tree, whose input units' modes
    fill the unobserved variables.
    """
    groups, log_w, log_mix = circuit._evaluate(x, observed, "sum")
    slot_units = top_down(jax.random.key(0), circuit.structure, groups, log_w, log_mix,
                          x.shape[0], "argmax")
    modes = circuit.input_layer.mode(circuit.input_params)  # (S, K)
    slot_values = jnp.take_along_axis(modes, jnp.maximum(slot_units, 0), axis=1)
    return circuit._fill(slot_units, slot_values, x, observed)


def _map_icm(circuit, x, observed, num_values, max_steps, key, num_restarts):
    """ICM from every start at once, the best result per row; see :meth:`Circuit.map`."""
    starts = [_map_max_product(circuit, x, observed)[0], _sum_tree_completion(circuit, x, observed)]
    if num_restarts:
        tiled_x = jnp.tile(x, (num_restarts, 1))
        tiled_observed = jnp.tile(observed, (num_restarts, 1))
        groups, log_w, log_mix = circuit._evaluate(tiled_x, tiled_observed)
        starts.append(_sample_from(key, circuit, tiled_x, tiled_observed, groups, log_w, log_mix))
    num_starts = 2 + num_restarts
    start = jnp.concatenate(starts).astype(x.dtype)
    assignment, log_p, done = _icm(circuit, start, jnp.tile(observed, (num_starts, 1)),
                                   num_values, max_steps)
    batch = x.shape[0]
    log_p = log_p.reshape(num_starts, batch)
    chosen = jnp.argmax(log_p, axis=0)  # ties: the earliest start (max-product first)
    rows = jnp.arange(batch)
    return (assignment.reshape(num_starts, batch, -1)[chosen, rows], log_p[chosen, rows],
            done.reshape(num_starts, batch)[chosen, rows])


def _icm(circuit, start, observed, num_values, max_steps):
    """Steepest-ascent ICM from complete rows ``start`` ``(B, V)`` (float values)."""
    batch = start.shape[0]
    rows = jnp.arange(batch)
    values = jnp.arange(num_values, dtype=start.dtype)

    def step(state):
        count, current, log_c, proposal, done = state
        log_c_proposal, ratios = _change_log_ratios(circuit, proposal, num_values)
        # A change is kept only where the exact value confirms the predicted rise.
        accept = ~done & (log_c_proposal > log_c)
        current = jnp.where(accept[:, None], proposal, current)
        log_c = jnp.where(accept, log_c_proposal, log_c)
        allowed = ~observed[:, :, None] & (values != current[:, :, None])
        gains = jnp.where(allowed, ratios, -jnp.inf).reshape(batch, -1)
        best = jnp.argmax(gains, axis=1)
        improves = jnp.take_along_axis(gains, best[:, None], axis=1)[:, 0] > 0
        # A rejected change (predicted rise, none on the exact value: a tie within
        # rounding) also ends the row's search.
        done = done | ~accept | ~improves
        proposal = current.at[rows, best // num_values].set(values[best % num_values])
        return count + 1, current, log_c, proposal, done

    def keep_going(state):
        count, *_, done = state
        return (count <= max_steps) & ~jnp.all(done)

    log_c = jnp.full((batch,), -jnp.inf, circuit.float_dtype)
    state = (jnp.zeros((), jnp.int32), start, log_c, start, jnp.zeros((batch,), bool))
    _, current, log_c, _, done = jax.lax.while_loop(keep_going, step, state)
    assignment = current.astype(jnp.int32) if circuit.input_layer.discrete else current
    return assignment, log_c - circuit._log_partition(), done


@eqx.filter_jit
def _jit_map_icm(circuit, x, observed, num_values, max_steps, key, num_restarts):
    return _map_icm(circuit, x, observed, num_values, max_steps, key, num_restarts)


def _sample_from(key, circuit, x, observed, groups, log_w, log_mix):
    key_tree, key_leaf = jax.random.split(key)
    batch = x.shape[0]
    slot_units = top_down(key_tree, circuit.structure, groups, log_w, log_mix, batch, "sample")
    slot_values = circuit.input_layer.sample(key_leaf, circuit.input_params,
                                             jnp.maximum(slot_units, 0))
    return circuit._fill(slot_units, slot_values, x, observed)


@eqx.filter_jit
def _jit_sample(key, circuit, num_samples):
    x = jnp.zeros((1, circuit.num_variables))
    observed = jnp.zeros_like(x, bool)
    # Without evidence the upward values are the same for every sample: compute them once.
    groups, log_w, log_mix = circuit._evaluate(x, observed)
    x = jnp.zeros((num_samples, circuit.num_variables))
    return _sample_from(key, circuit, x, jnp.zeros_like(x, bool), groups, log_w, log_mix)


@eqx.filter_jit
def _jit_sample_conditional(key, circuit, x, observed):
    groups, log_w, log_mix = circuit._evaluate(x, observed)
    return _sample_from(key, circuit, x, observed, groups, log_w, log_mix)


# ---------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------
@eqx.filter_jit
def _initial_parameters(structure, input_layer, key, data_slots):
    key_in, key_sum, key_mix = jax.random.split(key, 3)
    input_params = input_layer.init_params(key_in, structure.num_slots, structure.num_units,
                                           data_slots)

    def init(key, shape):
        return jnp.log(jax.random.uniform(key, shape, minval=0.01, maxval=1.0))

    sum_keys = jax.random.split(key_sum, len(structure.stages))
    mix_keys = jax.random.split(key_mix, len(structure.stages))
    sum_logits = tuple(init(k, s) for k, s in zip(sum_keys, structure.sum_shapes(), strict=True))
    mix_logits = tuple(
        None if s is None else jnp.where(jnp.asarray(m.valid)[:, None, :], init(k, s), 0.0)
        for k, s, (_, m) in zip(mix_keys, structure.mixing_shapes(), structure.stages, strict=True)
    )
    return input_params, sum_logits, mix_logits


def compile_circuit(
    region_graph: RegionGraph,
    input_layer: InputLayer,
    num_units: int,
    layer: str = "cp",
    *,
    key: PRNGKeyArray,
    data=None,
    normalized: bool = True,
    backend: str = "auto",
) -> Circuit:
    """Fold a region graph into a compiled circuit with freshly initialised parameters.

    Every region gets ``num_units`` units (the root gets one). Each partition
    becomes a product layer over its children followed by a sum layer (``"cp"``:
    Hadamard product, ``K`` inputs per sum; ``"tucker"``: Kronecker product of two
    children, ``K^2`` inputs per sum); each region with several partitions mixes
    them with a per-unit mixing sum.

    Initialisation: sum logits ``log u`` with ``u ~ Uniform(0.01, 1)`` (random,
    nearly uniform mixtures that break the symmetry between units); input units
    random around the data's per-variable statistics when ``data`` is given,
    else random (see each input layer's ``init_params``).

    Args:
        region_graph: a validated :class:`~circuits.region_graph.RegionGraph`.
        input_layer: e.g. :class:`~circuits.inputs.Bernoulli`.
        num_units: ``K``, units per region.
        layer: ``"cp"`` or ``"tucker"``.
        key: PRNG key for the initial parameters.
        data: optional ``(N, V)`` training data to centre the input units.
        normalized: see :class:`Circuit`.
        backend: ``"auto"`` (Pallas on GPU, einsum elsewhere), ``"einsum"`` or ``"pallas"``.

    Raises:
        ValueError: for an unknown ``layer`` or ``backend``, a non-positive
            ``num_units``, a region graph without partitions, a Tucker layer over a
            partition that is not binary (naming the region), or bad ``data``.
    """
    if not isinstance(region_graph, RegionGraph):
        raise TypeError(f"`region_graph` must be a RegionGraph, got {type(region_graph).__name__}")
    if not isinstance(input_layer, InputLayer):
        raise TypeError(f"`input_layer` must be an InputLayer (e.g. Bernoulli()), got "
                        f"{type(input_layer).__name__}")
    check_key(key)
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
    if not region_graph.partitions:
        raise ValueError("`region_graph` has no partition: the root must be split at least once")
    structure = CircuitStructure(region_graph, num_units, layer)
    data_slots = None
    if data is not None:
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != structure.num_variables:
            raise ValueError(f"`data` must be (num_samples, {structure.num_variables}), got shape "
                             f"{data.shape}")
        input_layer.check_values(data, np.ones(data.shape, bool), "data")
        data_slots = jnp.asarray(data[:, structure.slot_variable], jnp.result_type(float))
    # One compiled function draws every initial parameter (eager dispatch of many small
    # random ops would compile each of them separately).
    input_params, sum_logits, mix_logits = _initial_parameters(structure, input_layer, key,
                                                               data_slots)
    return Circuit(structure, input_layer, input_params, sum_logits, mix_logits,
                   bool(normalized), backend)

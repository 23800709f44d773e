"""An independent, unfolded reference evaluator of circuit semantics (numpy, float64).

It walks the region graph region by region with textbook formulas and knows
nothing of folding, gathers or log-space kernels; it only reads the parameters
(which live in folded arrays) through the structure's bookkeeping of which fold
computes which partition. Tests load it by path (pytest runs with importlib mode).
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import special, stats


def _log_softmax(a, axis=-1):
    return a - special.logsumexp(a, axis=axis, keepdims=True)


def input_log_prob(layer, params, slot, x):
    """``(N, K)`` log-probabilities of values ``x`` ``(N,)`` under slot ``slot``'s units."""
    name = type(layer).__name__
    x = np.asarray(x, np.float64)[:, None]
    if name == "Bernoulli":
        p = special.expit(np.asarray(params["logits"][slot], np.float64))[None, :]
        with np.errstate(divide="ignore"):
            return np.where(x == 1, np.log(p), np.log1p(-p))
    if name == "Categorical":
        log_p = _log_softmax(np.asarray(params["logits"][slot], np.float64))  # (K, C)
        return log_p[:, x[:, 0].astype(int)].T
    if name == "Binomial":
        p = special.expit(np.asarray(params["logits"][slot], np.float64))[None, :]
        return stats.binom.logpmf(x, layer.total_count, p)
    if name == "Gaussian":
        loc = np.asarray(params["loc"][slot], np.float64)[None, :]
        scale = np.exp(np.asarray(params["log_scale"][slot], np.float64))[None, :]
        return stats.norm.logpdf(x, loc, scale)
    raise NotImplementedError(name)


def log_weight_tables(circuit):
    """Per partition and per mixed region, the log-weights (softmax of logits when normalised)."""
    structure = circuit.structure
    partition_weights, mixing_weights, mixing_order = {}, {}, {}
    for (inner, mixing), logits, mix_logits in zip(
            structure.stages, circuit.sum_logits, circuit.mix_logits, strict=True):
        logits = np.asarray(logits, np.float64)
        for fold, (_, number) in enumerate(inner.partitions):
            w = logits[fold]
            partition_weights[number] = _log_softmax(w) if circuit.normalized else w
        if mixing is not None:
            mix_logits = np.asarray(mix_logits, np.float64)
            for row, region in enumerate(mixing.regions):
                count = int(mixing.valid[row].sum())
                w = mix_logits[row][:, :count]
                mixing_weights[region] = _log_softmax(w) if circuit.normalized else w
                mixing_order[region] = [n for r, n in inner.partitions if r == region]
    return partition_weights, mixing_weights, mixing_order


def log_unnormalised(circuit, x, semiring="sum"):
    """``log c(x)`` for complete assignments ``x`` ``(N, V)``, by recursion over regions.

    ``semiring="max"`` replaces every sum by a max (the best induced tree's value).
    """
    reduce = special.logsumexp if semiring == "sum" else np.max
    structure = circuit.structure
    graph = structure.region_graph
    layer, params = circuit.input_layer, circuit.input_params
    k = structure.num_units
    x = np.asarray(x)
    partition_weights, mixing_weights, mixing_order = log_weight_tables(circuit)
    # Slots: leaf regions in order, their variables in order (checked against the plan).
    slots, slot = {}, 0
    for region in graph.leaves:
        for v in graph.regions[region]:
            slots[(region, v)] = slot
            slot += 1
    assert [v for (_, v) in slots] == list(structure.slot_variable)
    cache = {}

    def region_value(region):
        if region in cache:
            return cache[region]
        if region not in graph.partitions_of:
            value = sum(input_log_prob(layer, params, slots[(region, v)], x[:, v])
                        for v in graph.regions[region])
        else:
            outs = {}
            for number, partition in enumerate(graph.partitions):
                if partition.region != region:
                    continue
                children = [region_value(c) for c in partition.children]
                w = partition_weights[number]
                if structure.layer_kind == "cp":
                    product = sum(children)  # (N, K)
                    outs[number] = reduce(w[None] + product[:, None, :], axis=-1)
                else:
                    product = (children[0][:, :, None] + children[1][:, None, :]).reshape(-1, k * k)
                    outs[number] = reduce(w[None] + product[:, None, :], axis=-1)
            if len(outs) == 1:
                value = next(iter(outs.values()))
            else:
                order = mixing_order[region]
                stacked = np.stack([outs[n] for n in order], axis=-1)  # (N, O, P)
                value = reduce(mixing_weights[region][None] + stacked, axis=-1)
        cache[region] = value
        return value

    return region_value(graph.root)[:, 0]


def all_assignments(num_variables, num_values):
    """Every assignment of ``num_variables`` variables with ``num_values`` values each."""
    return np.asarray(list(itertools.product(range(num_values), repeat=num_variables)))


def log_normalised(circuit, x, domain):
    """``log p(x)`` with ``Z`` enumerated over ``domain`` (all assignments)."""
    log_z = special.logsumexp(log_unnormalised(circuit, domain))
    return log_unnormalised(circuit, x) - log_z


def enumerated_log_marginal(log_p_domain, domain, x, observed):
    """``log sum`` of ``p`` over the assignments of ``domain`` that agree with ``x`` on ``observed``."""
    out = np.empty(len(x))
    for i, (row, mask) in enumerate(zip(x, observed, strict=True)):
        agree = np.all((domain == row) | ~mask, axis=1)
        out[i] = special.logsumexp(log_p_domain[agree]) if agree.any() else -np.inf
    return out

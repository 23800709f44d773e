"""Compiled circuits against brute-force enumeration with an independent reference evaluator."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import circuits

_spec = importlib.util.spec_from_file_location(
    "circuit_reference", pathlib.Path(__file__).with_name("reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def _clt_graph():
    rng = np.random.default_rng(5)
    data = (rng.random((200, 7)) < 0.5).astype(int)
    data[:, 3] = data[:, 1] ^ (rng.random(200) < 0.1)
    return circuits.chow_liu_tree(data, root=2)


CONFIGS = {
    # multi-variable leaf regions and a root mixing layer over repetitions
    "rbt-cp-bernoulli": (lambda: circuits.random_binary_tree(jax.random.key(0), 6, 2, 2),
                         circuits.Bernoulli(), "cp", 3, 2),
    # a DAG: regions with two partitions (mixing) and Tucker layers
    "quadgraph-tucker-bernoulli": (lambda: circuits.quad_graph(2, 3), circuits.Bernoulli(),
                                   "tucker", 2, 2),
    # 4-ary partitions, three categories
    "quadtree-cp-categorical": (lambda: circuits.quad_tree(2, 2), circuits.Categorical(3),
                                "cp", 3, 3),
    "chain-tucker-binomial": (lambda: circuits.linear_chain(4), circuits.Binomial(2),
                              "tucker", 2, 3),
    "chowliu-cp-bernoulli": (_clt_graph, circuits.Bernoulli(), "cp", 2, 2),
}


class Case:
    def __init__(self, name, normalized=True):
        build, layer, kind, units, num_values = CONFIGS[name]
        self.graph = build()
        circuit = circuits.compile_circuit(self.graph, layer, units, kind,
                                           key=jax.random.key(len(name)))
        if not normalized:
            # Arbitrary positive weights: scaled, shifted logits used as raw log-weights.
            key = jax.random.key(11)
            logits = tuple(2.0 * w + jax.random.normal(jax.random.fold_in(key, i), w.shape)
                           for i, w in enumerate(circuit.sum_logits))
            circuit = circuit.with_params(sum_logits=logits, normalized=False)
        self.circuit = circuit
        self.domain = reference.all_assignments(self.graph.num_variables, num_values)
        self.log_c = reference.log_unnormalised(circuit, self.domain)
        self.log_p = self.log_c - special.logsumexp(self.log_c)


@pytest.fixture(scope="module", params=list(CONFIGS) + ["unnormalised-quadgraph"])
def case(request):
    if request.param == "unnormalised-quadgraph":
        return Case("quadgraph-tucker-bernoulli", normalized=False)
    return Case(request.param)


def test_log_prob_matches_reference_and_total_mass_is_one(case):
    ours = np.asarray(case.circuit.log_prob(case.domain))
    np.testing.assert_allclose(ours, case.log_p, atol=2e-5)
    assert special.logsumexp(ours) == pytest.approx(0.0, abs=2e-5)
    expected_log_z = 0.0 if case.circuit.normalized else special.logsumexp(case.log_c)
    assert float(case.circuit.log_partition()) == pytest.approx(expected_log_z, abs=2e-5)


def test_every_marginal_equals_the_enumerated_sum(case):
    rng = np.random.default_rng(0)
    n, v = case.domain.shape
    rows = case.domain[rng.integers(0, n, 2 * n)]
    observed = rng.random((2 * n, v)) < 0.5
    observed[0] = False  # nothing observed: log 1
    observed[1] = True  # everything observed: the joint
    ours = np.asarray(case.circuit.log_marginal(rows, observed))
    expected = reference.enumerated_log_marginal(case.log_p, case.domain, rows, observed)
    np.testing.assert_allclose(ours, expected, atol=3e-5)
    assert ours[0] == pytest.approx(0.0, abs=2e-5)


def test_every_conditional_equals_the_enumerated_ratio(case):
    rng = np.random.default_rng(1)
    n, v = case.domain.shape
    rows = case.domain[rng.integers(0, n, n)]
    role = rng.integers(0, 3, (n, v))  # 0: query, 1: evidence, 2: neither
    role[np.arange(n), rng.integers(0, v, n)] = 0  # at least one query variable per row
    role[0] = np.where(np.arange(v) == 0, 0, 2)  # empty evidence: a plain marginal
    query, evidence = role == 0, role == 1
    ours = np.asarray(case.circuit.log_conditional(rows, query, evidence))
    joint = reference.enumerated_log_marginal(case.log_p, case.domain, rows, query | evidence)
    given = reference.enumerated_log_marginal(case.log_p, case.domain, rows, evidence)
    np.testing.assert_allclose(ours, joint - given, atol=5e-5)


def test_folding_runs_one_inner_layer_per_depth(case):
    structure = case.circuit.structure
    assert len(structure.stages) == case.graph.depth[case.graph.root]
    num_partitions = sum(inner.index.shape[0] for inner, _ in structure.stages)
    assert num_partitions == len(case.graph.partitions)
    mixed = sum(0 if m is None else m.index.shape[0] for _, m in structure.stages)
    assert mixed == sum(len(ps) > 1 for ps in case.graph.partitions_of.values())


def test_read_plan_reads_the_same_rows_as_the_stage_index(case):
    # Each stage's renumbered index, read through the parts of the cut groups, must
    # name the same (group, row) as its original index into the uncut groups.
    structure = case.circuit.structure
    plan = structure.read_plan
    for s, (inner, _) in enumerate(structure.stages):
        original, offset = {}, 0
        for g in inner.sources:
            original.update({offset + r: (g, r) for r in range(structure.group_sizes[g])})
            offset += structure.group_sizes[g]
        renumbered, offset = {}, 0
        for g, part in plan.parts[s]:
            if part is None:
                rows = np.arange(structure.group_sizes[g])
            else:
                cut_rows, consumers, sizes = plan.splits[g]
                assert consumers[part] == s
                start = sum(sizes[:part])
                rows = cut_rows[start: start + sizes[part]]
            renumbered.update({offset + i: (g, int(r)) for i, r in enumerate(rows)})
            offset += len(rows)
        for old, new in zip(inner.index.ravel(), plan.index[s].ravel(), strict=True):
            assert original.get(int(old), "pad") == renumbered.get(int(new), "pad")


@pytest.mark.parametrize("name", ["chowliu-cp-bernoulli", "quadgraph-tucker-bernoulli"])
def test_gradients_through_cut_groups_match_reference_finite_differences(name):
    # The leaf group is read by several stages (a tree; a DAG with mixing), so the
    # backward pass goes through the read plan's cuts.
    case = Case(name)
    circuit = case.circuit
    assert 0 in circuit.structure.read_plan.splits
    rows = case.domain[::7]
    x = jnp.asarray(rows, jnp.float32)

    def mean_log_likelihood(c):
        return c.log_marginal_prepared(x, jnp.ones(x.shape, bool)).mean()

    grads = jax.grad(mean_log_likelihood)(circuit)
    rng = np.random.default_rng(3)
    checked = 0
    for field in ("sum_logits", "input_params"):
        leaves = jax.tree_util.tree_leaves(getattr(circuit, field))
        grad_leaves = jax.tree_util.tree_leaves(getattr(grads, field))
        for number, (leaf, grad) in enumerate(zip(leaves, grad_leaves, strict=True)):
            for flat in rng.choice(leaf.size, min(3, leaf.size), replace=False):
                position = np.unravel_index(flat, leaf.shape)
                values = []
                for step in (1e-2, -1e-2):
                    moved = np.asarray(leaf).copy()
                    moved[position] += step
                    new_leaves = list(leaves)
                    new_leaves[number] = jnp.asarray(moved)
                    tree = jax.tree_util.tree_unflatten(
                        jax.tree_util.tree_structure(getattr(circuit, field)), new_leaves)
                    values.append(reference.log_unnormalised(
                        circuit.with_params(**{field: tree}), rows).mean())
                    actual_step = float(moved[position]) - float(np.asarray(leaf)[position])
                finite_difference = (values[0] - values[1]) / (2 * abs(actual_step))
                assert float(grad[position]) == pytest.approx(finite_difference, abs=2e-3, rel=2e-3)
                checked += 1
    assert checked >= 6


def test_gaussian_inputs_match_reference_and_marginalise_by_quadrature():
    graph = circuits.random_binary_tree(jax.random.key(2), 3, depth=1)
    circuit = circuits.compile_circuit(graph, circuits.Gaussian(), 3, key=jax.random.key(4))
    rng = np.random.default_rng(3)
    points = rng.normal(size=(5, 3))
    expected = reference.log_unnormalised(circuit, points)  # normalised inputs and weights
    np.testing.assert_allclose(np.asarray(circuit.log_prob(points)), expected, atol=2e-5)
    # Integrate x1 out on a fine grid and compare with the marginal over (x0, x2).
    grid = np.linspace(-12, 12, 2001)
    rows = np.repeat(points[:2], len(grid), axis=0)
    rows[:, 1] = np.tile(grid, 2)
    density = np.exp(reference.log_unnormalised(circuit, rows)).reshape(2, -1)
    integral = np.trapezoid(density, grid, axis=1)
    observed = np.array([True, False, True])
    ours = np.exp(np.asarray(circuit.log_marginal(points[:2], observed)))
    np.testing.assert_allclose(ours, integral, rtol=1e-5)


def test_pallas_kernel_backend_matches_einsum_values_and_gradients():
    # Pallas runs in interpret mode on CPU (slow), so one small DAG with Tucker and mixing.
    case = Case("quadgraph-tucker-bernoulli")
    fused = circuits.Circuit(*[getattr(case.circuit, f) for f in (
        "structure", "input_layer", "input_params", "sum_logits", "mix_logits", "normalized")],
        backend="pallas")
    x = jnp.asarray(case.domain[:4], jnp.float32)

    def log_likelihood(logits, c):
        return c.with_params(sum_logits=logits).log_marginal_prepared(x, jnp.ones(x.shape, bool))

    # One forward pass through the kernel (with its custom VJP) gives values and gradients.
    values, pullback = jax.vjp(log_likelihood, fused.sum_logits, fused)
    np.testing.assert_allclose(np.asarray(values), case.log_p[:4], atol=2e-5)
    cotangent = jnp.linspace(-1.0, 1.0, 4)
    g_fused = pullback(cotangent)[0]
    g_einsum = jax.vjp(log_likelihood, case.circuit.sum_logits, case.circuit)[1](cotangent)[0]
    for a, b in zip(g_fused, g_einsum, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_save_and_reload_is_exact(tmp_path):
    import probinf

    case = Case("quadgraph-tucker-bernoulli")
    case.circuit.log_prob(case.domain[:2])  # the structure now holds its cached read plan
    path = tmp_path / "circuit.pkl"
    probinf.save(path, case.circuit)
    loaded = probinf.load(path)
    for a, b in zip(jax.tree_util.tree_leaves(case.circuit), jax.tree_util.tree_leaves(loaded),
                    strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert loaded.structure == case.circuit.structure
    x = case.domain[:8]
    assert np.array_equal(np.asarray(loaded.log_prob(x)), np.asarray(case.circuit.log_prob(x)))


def test_with_params_checks_shapes():
    case = Case("chain-tucker-binomial")
    bad = tuple(w[:, :1] for w in case.circuit.sum_logits)
    with pytest.raises(ValueError, match="sum_logits"):
        case.circuit.with_params(sum_logits=bad)
    with pytest.raises(ValueError, match="input_params"):
        case.circuit.with_params(input_params={"probs": case.circuit.input_params["logits"]})


def test_with_params_rejects_nan_and_plus_inf_naming_where():
    # Before: with_params(sum_logits=nan) was accepted and every log_prob was -inf.
    circuit = Case("chain-tucker-binomial").circuit
    nan_logits = tuple(w.at[(0,) * w.ndim].set(jnp.nan) for w in circuit.sum_logits)
    with pytest.raises(ValueError, match=r"`sum_logits\[0\]` holds nan at index \(0, 0, 0\); "
                                         "parameters must not be NaN or \\+inf"):
        circuit.with_params(sum_logits=nan_logits)
    inf_params = {k: v.at[1, 0].set(jnp.inf) for k, v in circuit.input_params.items()}
    key = next(iter(circuit.input_params))
    with pytest.raises(ValueError, match=rf"`input_params\['{key}'\]` holds inf at index \(1, 0"):
        circuit.with_params(input_params=inf_params)
    # -inf is a zero weight: with one child's weight zero, the circuit equals the reference.
    zero_weight = tuple(w.at[..., 0].set(-jnp.inf) for w in circuit.sum_logits)
    pruned = circuit.with_params(sum_logits=zero_weight)
    domain = reference.all_assignments(pruned.num_variables, 3)
    np.testing.assert_allclose(np.asarray(pruned.log_prob(domain)),
                               reference.log_unnormalised(pruned, domain), atol=2e-5)


def test_sample_and_compile_need_a_prng_key():
    case = Case("rbt-cp-bernoulli")
    not_keys = ((0, "int 0"), (np.zeros(2), "ndarray"),
                (jnp.zeros(3, jnp.uint32), r"an array of dtype uint32 and shape \(3,\)"))
    for bad, got in not_keys:
        with pytest.raises(TypeError, match=f"`key` must be one JAX PRNG key .*got {got}"):
            case.circuit.sample(bad, 3)
    with pytest.raises(TypeError, match="`key` must be one JAX PRNG key"):
        case.circuit.sample_conditional(0, np.zeros((1, 6)), np.zeros((1, 6), bool))
    with pytest.raises(TypeError, match="`key` must be one JAX PRNG key"):
        circuits.compile_circuit(case.graph, circuits.Bernoulli(), 2, key=1)
    assert case.circuit.sample(jax.random.PRNGKey(0), 3).shape == (3, 6)  # raw keys work too


def test_circuits_jit_as_arguments_and_as_bound_methods():
    case = Case("quadtree-cp-categorical")
    x = jnp.asarray(case.domain[:5])
    expected = case.log_p[:5]
    # Before: jax.jit(pc.log_prob) raised "unhashable type: 'dict'".
    np.testing.assert_allclose(np.asarray(jax.jit(case.circuit.log_prob)(x)), expected, atol=2e-5)
    as_argument = jax.jit(lambda pc, x: pc.log_prob(x))
    np.testing.assert_allclose(np.asarray(as_argument(case.circuit, x)), expected, atol=2e-5)
    # Equal circuits hash alike; circuits with other parameters compile their own constants.
    other = case.circuit.with_params(sum_logits=tuple(2.0 * w for w in case.circuit.sum_logits))
    assert hash(other) == hash(case.circuit) and bool(case.circuit == case.circuit)
    np.testing.assert_allclose(np.asarray(jax.jit(other.log_prob)(x)),
                               np.asarray(other.log_prob(x)), atol=1e-6)
    assert not np.allclose(np.asarray(other.log_prob(x)), expected, atol=1e-3)


def test_arviz_export_of_samples_against_enumeration():
    import arviz as az
    import matplotlib.pyplot as plt

    case = Case("rbt-cp-bernoulli")
    domain, p = case.domain, np.exp(case.log_p)
    idata = case.circuit.to_inference_data(jax.random.key(0), 1500, num_chains=2)
    x = idata.posterior["x"]
    assert x.dims == ("chain", "draw", "variable") and x.shape == (2, 1500, 6)
    draws = x.values.reshape(-1, 6)
    # lp is log p(x) of each draw: look it up in the enumerated table.
    index = {tuple(row): i for i, row in enumerate(domain.astype(int))}
    expected_lp = case.log_p[[index[tuple(row)] for row in draws]]
    np.testing.assert_allclose(idata.sample_stats["lp"].values.ravel(), expected_lp, atol=2e-5)
    # az.summary's means are the enumerated marginals P(x_v = 1), within 5 standard errors.
    summary = az.summary(idata)
    exact = p @ domain
    tolerance = 5 * np.sqrt(exact * (1 - exact) / draws.shape[0])
    assert np.all(np.abs(summary["mean"].values - exact) < tolerance + 1e-3)  # 3-decimal rounding
    # Independent draws of the variables, not parameters given data: nothing for LOO.
    assert "log_likelihood" not in idata.groups()
    with pytest.raises(TypeError, match="log likelihood not found"):
        az.loo(idata)
    az.plot_posterior(idata)
    plt.close("all")

    # Conditional draws: only the query variables, the evidence in observed_data.
    evidence = np.array([True, False, True, False, False, False])
    row = np.array([1, 0, 0, 0, 0, 0])
    conditional = case.circuit.to_inference_data(jax.random.key(1), 3000, x=row, evidence=evidence)
    np.testing.assert_array_equal(conditional.posterior["variable"], [1, 3, 4, 5])
    np.testing.assert_array_equal(conditional.observed_data["x_observed"], [1, 0])
    given = np.all(domain[:, evidence] == row[evidence], axis=1)
    exact = (p[given] @ domain[given]) / p[given].sum()
    got = conditional.posterior["x"].values.reshape(-1, 4).mean(0)
    assert np.all(np.abs(got - exact[~evidence]) < 5 * np.sqrt(exact[~evidence] * (1 - exact[~evidence]) / 3000))
    with pytest.raises(ValueError, match="go together"):
        case.circuit.to_inference_data(jax.random.key(1), 10, x=row)
    with pytest.raises(ValueError, match="num_chains"):
        case.circuit.to_inference_data(jax.random.key(1), 10, num_chains=0)
    with pytest.raises(ValueError, match="nothing to sample"):
        case.circuit.to_inference_data(jax.random.key(1), 10, x=row, evidence=np.ones(6, bool))

"""The scanned upward pass of deep circuits (`circuits.structure.ScanPlan`) against the
independent reference evaluator and against the unrolled pass it replaces."""

import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import circuits
import circuits.circuit as circuit_module

# The circuits of the reference tests (every layer kind, mixing at inner stages and at the
# root, wide partitions) and the reference evaluator, loaded as those tests load it.
_spec = importlib.util.spec_from_file_location(
    "circuit_cases", pathlib.Path(__file__).with_name("test_circuit.py"))
_cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cases)
reference, CONFIGS = _cases.reference, _cases.CONFIGS


def _with_scan_threshold(threshold):
    circuit_module.SCAN_MIN_STAGES = threshold
    jax.clear_caches()  # compiled queries are cached per structure, whichever pass built them


def _queries(circuit, rows, observed):
    x = jnp.asarray(rows, jnp.float32)
    grads = jax.grad(lambda c: c.log_marginal_prepared(x, jnp.ones(x.shape, bool)).mean())(circuit)
    return {
        "log_prob": np.asarray(circuit.log_prob(rows)),
        "log_marginal": np.asarray(circuit.log_marginal(rows, observed)),
        "grads": [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)],
        "map": np.asarray(circuit.map(rows, observed)[0]),
        "sample": np.asarray(circuit.sample(jax.random.key(3), 64)),
    }


@pytest.mark.parametrize("name", list(CONFIGS))
def test_scanned_pass_equals_the_reference_and_the_unrolled_pass(name):
    build, layer, kind, units, num_values = CONFIGS[name]
    graph = build()
    circuit = circuits.compile_circuit(graph, layer, units, kind, key=jax.random.key(len(name)))
    domain = reference.all_assignments(graph.num_variables, num_values)
    rng = np.random.default_rng(0)
    rows = domain[rng.integers(0, len(domain), 40)]
    observed = rng.random(rows.shape) < 0.5
    default = circuit_module.SCAN_MIN_STAGES
    try:
        _with_scan_threshold(1)  # every circuit scanned, however shallow
        scanned = _queries(circuit, rows, observed)
        log_c = reference.log_unnormalised(circuit, domain)
        log_p = log_c - special.logsumexp(log_c)
        np.testing.assert_allclose(np.asarray(circuit.log_prob(domain)), log_p, atol=2e-5)
    finally:
        _with_scan_threshold(default)
    unrolled = _queries(circuit, rows, observed)
    for query in ("log_prob", "log_marginal"):
        np.testing.assert_allclose(scanned[query], unrolled[query], atol=1e-5)
    for a, b in zip(scanned["grads"], unrolled["grads"], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Same values, same choices: MAP completions are identical, and so are these samples
    # (same key): JAX draws random bits by position, and padding extra folds at the end
    # of an axis leaves the real folds' positions (hence their draws) unchanged.
    assert np.array_equal(scanned["map"], unrolled["map"])
    assert np.array_equal(scanned["sample"], unrolled["sample"])


def test_a_deep_chain_is_scanned_by_default_and_normalised():
    graph = circuits.linear_chain(17)  # 16 stages, the default threshold
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 3, "cp", key=jax.random.key(1))
    structure = circuit.structure
    assert len(structure.stages) >= circuit_module.SCAN_MIN_STAGES
    plan = structure.scan_plan
    # One fold per stage below the root: one segment, one scan, whatever the length.
    assert [segment.stages for segment in plan.segments] == [tuple(range(len(structure.stages) - 1))]
    domain = np.array(list(itertools.product((0, 1), repeat=17)))
    log_p = np.asarray(circuit.log_prob(domain))
    assert float(special.logsumexp(log_p)) == pytest.approx(0.0, abs=2e-5)
    rows = domain[np.random.default_rng(2).integers(0, len(domain), 50)]
    np.testing.assert_allclose(log_p[rows @ (1 << np.arange(16, -1, -1))],
                               reference.log_unnormalised(circuit, rows), atol=2e-5)


def test_gradients_of_a_deep_chain_match_reference_finite_differences():
    """The scanned pass's hand-written backward pass against central differences of the
    reference evaluator, for sum weights of the first, a middle and the root stage and
    for input parameters."""
    circuit = circuits.compile_circuit(circuits.linear_chain(18), circuits.Bernoulli(), 2, "cp",
                                       key=jax.random.key(5))
    assert len(circuit.structure.stages) >= circuit_module.SCAN_MIN_STAGES
    rows = np.random.default_rng(4).integers(0, 2, (30, 18))
    x = jnp.asarray(rows, jnp.float32)
    grads = jax.grad(lambda c: c.log_marginal_prepared(x, jnp.ones(x.shape, bool)).mean())(circuit)
    last = len(circuit.sum_logits) - 1
    checks = [("sum_logits", 0, (0, 1, 0)), ("sum_logits", last // 2, (0, 0, 1)),
              ("sum_logits", last, (0, 0, 1)), ("input_params", 0, (4, 1))]
    for field, number, position in checks:
        leaves = jax.tree_util.tree_leaves(getattr(circuit, field))
        values = []
        for step in (1e-2, -1e-2):
            moved = np.asarray(leaves[number]).copy()
            moved[position] += step
            new_leaves = list(leaves)
            new_leaves[number] = jnp.asarray(moved)
            tree = jax.tree_util.tree_unflatten(
                jax.tree_util.tree_structure(getattr(circuit, field)), new_leaves)
            values.append(reference.log_unnormalised(circuit.with_params(**{field: tree}), rows).mean())
        finite_difference = (values[0] - values[1]) / 2e-2
        grad = jax.tree_util.tree_leaves(getattr(grads, field))[number][position]
        assert float(grad) == pytest.approx(finite_difference, abs=2e-3, rel=2e-3), (field, number)


def test_save_and_reload_keeps_the_scan_plan_exact(tmp_path):
    import probinf

    circuit = circuits.compile_circuit(circuits.linear_chain(17), circuits.Bernoulli(), 2, "cp",
                                       key=jax.random.key(0))
    rows = np.random.default_rng(0).integers(0, 2, (8, 17))
    before = np.asarray(circuit.log_prob(rows))  # the structure now holds its scan plan
    assert "scan_plan" in vars(circuit.structure)
    path = tmp_path / "chain.probinf"
    probinf.save(path, circuit)
    loaded = probinf.load(path)
    assert np.array_equal(np.asarray(loaded.log_prob(rows)), before)


@pytest.fixture(scope="module")
def padded_tree():
    """A Chow-Liu tree on 40 correlated binary columns: 16 or more stages, and runs of
    stages with different fold counts, so the scanned passes pad some of them."""
    rng = np.random.default_rng(7)
    data = np.zeros((400, 40), int)
    data[:, 0] = rng.random(400) < 0.5
    for v in range(1, 40):
        parent = data[:, rng.integers(max(0, v - 2), v)]
        data[:, v] = np.where(rng.random(400) < 0.8, parent, 1 - parent)
    circuit = circuits.compile_circuit(circuits.chow_liu_tree(data, root=0), circuits.Bernoulli(), 3,
                                       "cp", key=jax.random.key(8), data=data)
    structure = circuit.structure
    assert len(structure.stages) >= circuit_module.SCAN_MIN_STAGES
    assert any(len(structure.stages[s][0].index) < segment.num_folds
               for segment in structure.scan_plan.segments for s in segment.stages)
    return circuit, data


def test_scanned_gradients_equal_the_unrolled_ones_with_padded_stages(padded_tree):
    # The backward pass reads a CP stage's output from the buffer, where padding folds hold
    # later groups' values: those must pass no cotangent (log-likelihood, its gradient with
    # respect to every parameter, and EM's expected counts through it).
    circuit, data = padded_tree
    x = jnp.asarray(data[:50], jnp.float32)

    def gradients():
        loss = lambda c: c.log_marginal_prepared(x, jnp.ones(x.shape, bool)).mean()  # noqa: E731
        value, grads = jax.value_and_grad(loss)(circuit)
        return [np.asarray(value)] + [np.asarray(g) for g in jax.tree_util.tree_leaves(grads)]

    scanned = gradients()
    default = circuit_module.SCAN_MIN_STAGES
    try:
        _with_scan_threshold(10**9)
        unrolled = gradients()
    finally:
        _with_scan_threshold(default)
    assert all(np.all(np.isfinite(g)) for g in scanned)
    for ours, theirs in zip(scanned, unrolled, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_scanned_map_equals_the_unrolled_map_with_padded_stages(padded_tree):
    circuit, data = padded_tree
    rows = data[:30]
    observed = np.random.default_rng(9).random(rows.shape) < 0.5
    scanned_map = np.asarray(circuit.map(rows, observed)[0])
    default = circuit_module.SCAN_MIN_STAGES
    try:
        _with_scan_threshold(10**9)
        unrolled_map = np.asarray(circuit.map(rows, observed)[0])
    finally:
        _with_scan_threshold(default)
    assert np.array_equal(scanned_map, unrolled_map)


def test_scanned_samples_have_the_circuits_marginals(padded_tree):
    """Padding changes the shapes the random choices are drawn with, so samples differ
    from the unrolled pass's draw for draw; their frequencies must still be the circuit's
    exact one- and two-variable marginals (within 4.5 standard errors, 20,000 draws)."""
    circuit, _ = padded_tree
    num_draws = 20_000
    draws = np.asarray(circuit.sample(jax.random.key(10), num_draws))
    pairs = [(0, 1), (5, 17), (12, 39), (20, 21)]
    queries, observed, expected_rows = [], [], []
    for v in range(40):
        row, mask = np.zeros(40, int), np.zeros(40, bool)
        row[v], mask[v] = 1, True
        queries.append(draws[:, v] == 1)
        observed.append(mask)
        expected_rows.append(row)
    for a, b in pairs:
        row, mask = np.zeros(40, int), np.zeros(40, bool)
        row[[a, b]], mask[[a, b]] = 1, True
        queries.append((draws[:, a] == 1) & (draws[:, b] == 1))
        observed.append(mask)
        expected_rows.append(row)
    expected = np.exp(np.asarray(circuit.log_marginal(np.array(expected_rows), np.array(observed))))
    frequencies = np.array([q.mean() for q in queries])
    standard_errors = np.sqrt(expected * (1 - expected) / num_draws)
    assert np.all(np.abs(frequencies - expected) < 4.5 * standard_errors + 1e-9), (
        frequencies, expected)

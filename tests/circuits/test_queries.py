"""MAP, sampling and input validation, against enumeration and sound statistical tests."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

import circuits

_spec = importlib.util.spec_from_file_location(
    "circuit_reference", pathlib.Path(__file__).with_name("reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# Sampling tests use a fixed seed and reject at 1e-3: a correct sampler fails
# them with probability 1e-3 per seed, and the seed is fixed, so they are stable.
ALPHA = 1e-3


def deterministic_circuit(graph, key):
    """Random weights; the node ``{v}`` of every partition ``({v}, rest)`` gets indicator units.

    Unit ``k`` of such a region is the point mass on ``x_v = k``, so the CP
    products of one partition disagree on ``x_v`` and every sum's children have
    disjoint supports: the circuit is deterministic. The other leaves (the tree's
    leaves) keep random categorical units.
    """
    circuit = circuits.compile_circuit(graph, circuits.Categorical(2), 2, "cp", key=key)
    structure = circuit.structure
    nodes = {p.children[0] for p in graph.partitions}
    is_node = np.isin(structure.leaf_regions[structure.slot_leaf], list(nodes))
    indicator = jnp.where(jnp.eye(2, dtype=bool), 0.0, -jnp.inf)
    logits = jnp.where(is_node[:, None, None], indicator, circuit.input_params["logits"])
    return circuit.with_params(input_params={"logits": logits})


def _chow_liu_graph():
    rng = np.random.default_rng(2)
    data = (rng.random((300, 9)) < 0.4).astype(int)
    data[:, 4] = data[:, 0] ^ (rng.random(300) < 0.2)
    data[:, 7] = data[:, 4] ^ (rng.random(300) < 0.2)
    return circuits.chow_liu_tree(data, root=3)


@pytest.mark.parametrize("graph", [lambda: circuits.linear_chain(9), _chow_liu_graph],
                         ids=["markov-chain", "chow-liu-tree"])
def test_map_is_the_enumerated_argmax_for_deterministic_circuits(graph):
    circuit = deterministic_circuit(graph(), jax.random.key(0))
    v = circuit.num_variables
    domain = reference.all_assignments(v, 2)
    log_p = reference.log_unnormalised(circuit, domain)
    rng = np.random.default_rng(0)
    evidence = rng.random((12, v)) < 0.3
    evidence[0] = False  # unconditional MAP
    x = domain[rng.integers(0, len(domain), 12)]
    # Evidence of probability zero is an error (tested below): keep possible rows.
    possible = reference.enumerated_log_marginal(log_p, domain, x, evidence) > -np.inf
    x, evidence = x[possible], evidence[possible]
    assignment, value = circuit.map(x, evidence)
    assignment, value = np.asarray(assignment), np.asarray(value)
    for row, mask, found, found_value in zip(x, evidence, assignment, value, strict=True):
        agree = np.all((domain == row) | ~mask, axis=1)
        best = np.flatnonzero(agree)[np.argmax(log_p[agree])]
        np.testing.assert_array_equal(found, domain[best])
        assert found_value == pytest.approx(log_p[best], abs=1e-5)


def test_map_on_a_non_deterministic_circuit_is_the_best_induced_tree():
    graph = circuits.quad_graph(2, 3)
    circuit = circuits.compile_circuit(graph, circuits.Bernoulli(), 2, "tucker",
                                       key=jax.random.key(3))
    domain = reference.all_assignments(6, 2)
    best_tree = reference.log_unnormalised(circuit, domain, semiring="max")
    log_p = reference.log_unnormalised(circuit, domain)
    evidence = np.zeros((2, 6), bool)
    evidence[1, [0, 4]] = True
    x = np.zeros((2, 6), int)
    x[1, [0, 4]] = [1, 0]
    assignment, value = circuit.map(x, evidence, refine=None)
    for row, mask, found, found_value in zip(x, evidence, np.asarray(assignment),
                                             np.asarray(value), strict=True):
        agree = np.all((domain == row) | ~mask, axis=1)
        index = int(np.flatnonzero(np.all(domain == found, axis=1))[0])
        assert agree[index]  # evidence kept
        # Max-product returns the best induced tree: exact in the max semiring ...
        assert found_value == pytest.approx(best_tree[agree].max(), abs=1e-5)
        assert best_tree[index] == pytest.approx(found_value, abs=1e-5)
        # ... which lower-bounds p(assignment) <= max p: the documented approximation.
        assert found_value <= log_p[index] + 1e-6 <= log_p[agree].max() + 2e-6


def _chi_square_p_value(samples, log_p, domain):
    codes = np.ravel_multi_index(samples.T, (domain.max() + 1,) * domain.shape[1])
    domain_codes = np.ravel_multi_index(domain.T, (domain.max() + 1,) * domain.shape[1])
    expected = np.exp(log_p) * len(samples)
    observed = np.zeros(len(domain))
    index = {c: i for i, c in enumerate(domain_codes)}
    for c in codes:
        observed[index[c]] += 1
    # Pool cells with small expectations so the chi-square approximation holds.
    small = expected < 5
    if small.any():
        observed = np.append(observed[~small], observed[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    return stats.chisquare(observed, expected).pvalue


@pytest.mark.parametrize("build, layer, kind, values, normalized", [
    (lambda: circuits.quad_graph(2, 2), circuits.Bernoulli(), "tucker", 2, True),
    (lambda: circuits.random_binary_tree(jax.random.key(1), 4, 1, 2), circuits.Categorical(3),
     "cp", 3, True),
    (lambda: circuits.quad_graph(2, 2), circuits.Bernoulli(), "cp", 2, False),
], ids=["quadgraph-tucker", "rbt-categorical", "unnormalised"])
def test_sample_frequencies_match_probabilities(build, layer, kind, values, normalized):
    graph = build()
    circuit = circuits.compile_circuit(graph, layer, 3, kind, key=jax.random.key(7))
    if not normalized:
        circuit = circuit.with_params(sum_logits=tuple(3.0 * w for w in circuit.sum_logits),
                                      normalized=False)
    domain = reference.all_assignments(graph.num_variables, values)
    log_c = reference.log_unnormalised(circuit, domain)
    samples = np.asarray(circuit.sample(jax.random.key(42), 20_000))
    assert samples.shape == (20_000, graph.num_variables)
    assert _chi_square_p_value(samples, log_c - special.logsumexp(log_c), domain) > ALPHA


def test_conditional_samples_follow_the_enumerated_conditional():
    graph = circuits.linear_chain(4)
    circuit = circuits.compile_circuit(graph, circuits.Binomial(2), 3, "tucker",
                                       key=jax.random.key(8))
    domain = reference.all_assignments(4, 3)
    log_p = reference.log_unnormalised(circuit, domain)
    evidence = np.array([True, False, True, False])
    given = np.array([2, 0, 1, 0])
    n = 20_000
    samples = np.asarray(circuit.sample_conditional(
        jax.random.key(9), np.tile(given, (n, 1)), evidence))
    assert np.all(samples[:, evidence] == given[evidence])
    agree = np.all((domain == given) | ~evidence, axis=1)
    free = domain[agree][:, ~evidence]
    conditional = log_p[agree] - special.logsumexp(log_p[agree])
    assert _chi_square_p_value(samples[:, ~evidence], conditional, free) > ALPHA


def test_gaussian_samples_have_the_exact_marginal_moments():
    graph = circuits.random_binary_tree(jax.random.key(2), 3, depth=1)
    circuit = circuits.compile_circuit(graph, circuits.Gaussian(), 3, key=jax.random.key(4))
    grid = np.linspace(-12, 12, 4001)
    x = np.zeros((len(grid), 3))
    x[:, 0] = grid
    density = np.exp(np.asarray(circuit.log_marginal(x, np.array([True, False, False]))))
    mean = np.trapezoid(grid * density, grid)
    variance = np.trapezoid((grid - mean) ** 2 * density, grid)
    n = 40_000
    samples = np.asarray(circuit.sample(jax.random.key(5), n))[:, 0]
    # Sample mean within 4.5 standard errors; sample variance within 4.5 of its standard
    # error estimated from the sample's fourth central moment.
    assert abs(samples.mean() - mean) < 4.5 * np.sqrt(variance / n)
    m4 = np.mean((samples - samples.mean()) ** 4)
    assert abs(samples.var() - variance) < 4.5 * np.sqrt((m4 - variance**2) / n)


# ---------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def bernoulli_circuit():
    return circuits.compile_circuit(circuits.linear_chain(4), circuits.Bernoulli(), 2,
                                    key=jax.random.key(0))


@pytest.mark.parametrize("layer, value, message", [
    (circuits.Bernoulli(), 2, r"variable 2 has value 2 .*support \{0, \.\.\., 1\}.*Bernoulli"),
    (circuits.Bernoulli(), 0.5, r"variable 2 has value 0\.5"),
    (circuits.Categorical(3), 3, r"variable 2 has value 3 .*Categorical"),
    (circuits.Categorical(3), -1, r"variable 2 has value -1 "),
    (circuits.Binomial(2), 3, r"variable 2 has value 3 .*Binomial"),
    (circuits.Gaussian(), np.inf, r"variable 2 has value inf.*finite"),
])
def test_values_outside_the_support_name_the_variable(layer, value, message):
    circuit = circuits.compile_circuit(circuits.linear_chain(4), layer, 2, key=jax.random.key(0))
    x = np.zeros((3, 4))
    x[1, 2] = value
    with pytest.raises(ValueError, match=message):
        circuit.log_prob(x)


def test_nan_names_the_variable_and_missing_values_are_allowed(bernoulli_circuit):
    x = np.zeros((2, 4))
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match=r"variable 3 is NaN"):
        bernoulli_circuit.log_prob(x)
    observed = ~np.isnan(x)
    out = np.asarray(bernoulli_circuit.log_marginal(x, observed))
    assert np.all(np.isfinite(out))


def test_wrong_number_of_variables(bernoulli_circuit):
    with pytest.raises(ValueError, match=r"`x` must have 4 variables .* got 3"):
        bernoulli_circuit.log_prob(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`observed` must have 4 entries"):
        bernoulli_circuit.log_marginal(np.zeros((2, 4)), np.ones(5, bool))
    with pytest.raises(TypeError, match=r"`observed` must be a boolean mask"):
        bernoulli_circuit.log_marginal(np.zeros((2, 4)), np.ones(4))


def test_conditional_masks_are_checked(bernoulli_circuit):
    x = np.zeros((2, 4))
    query = np.array([True, True, False, False])
    with pytest.raises(ValueError, match=r"variable 1 is both in `query` and in `evidence`"):
        bernoulli_circuit.log_conditional(x, query, np.array([False, True, False, False]))
    with pytest.raises(ValueError, match=r"`query` selects no variable"):
        bernoulli_circuit.log_conditional(x, np.zeros(4, bool), ~query)


def test_impossible_evidence_is_an_error():
    circuit = deterministic_circuit(circuits.linear_chain(3), jax.random.key(1))
    # Make x_0 = 1 impossible: the root puts zero weight on the unit with x_0 = 1.
    logits = list(circuit.sum_logits)
    logits[-1] = logits[-1].at[..., 1].set(-jnp.inf)
    circuit = circuit.with_params(sum_logits=tuple(logits))
    x = np.array([[1, 0, 0]])
    evidence = np.array([[True, False, False]])
    with pytest.raises(ValueError, match=r"`evidence` has probability zero.*row 0"):
        circuit.log_conditional(x, ~evidence, evidence)
    with pytest.raises(ValueError, match=r"`evidence` has probability zero"):
        circuit.map(x, evidence)
    with pytest.raises(ValueError, match=r"`evidence` has probability zero"):
        circuit.sample_conditional(jax.random.key(0), x, evidence)


def test_query_arguments_are_checked(bernoulli_circuit):
    with pytest.raises(ValueError, match="num_samples"):
        bernoulli_circuit.sample(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="`evidence` was given without `x`"):
        bernoulli_circuit.map(None, np.zeros(4, bool))
    with pytest.raises(ValueError, match="`x` holds no rows"):
        bernoulli_circuit.log_prob(np.zeros((0, 4)))

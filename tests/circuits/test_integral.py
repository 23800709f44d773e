"""Integral circuits with neural functions: materialisation, queries, gradients, sharing, training.

The materialised QPC is checked against an independent nested-quadrature evaluator
written here (region by region, straight from the functions and the rule), and its
queries against brute-force enumeration with the reference evaluator of
``reference.py``.
"""

import importlib.util
import pathlib

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special, stats

import circuits
import probinf
from circuits.functions import NeuralFunctions
from circuits.integral import IntegralCircuit, fit_integral, integral_circuit
from circuits.quadrature import quadrature_rule

_spec = importlib.util.spec_from_file_location(
    "circuit_reference", pathlib.Path(__file__).with_name("reference.py"))
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

# Sampling tests use a fixed seed and reject at 1e-3 (see test_queries.py).
ALPHA = 1e-3


def _chow_liu_graph():
    rng = np.random.default_rng(2)
    data = (rng.random((300, 6)) < 0.4).astype(int)
    data[:, 4] = data[:, 0] ^ (rng.random(300) < 0.2)
    return circuits.chow_liu_tree(data, root=1)


GRAPHS = {
    "chow-liu-cp": (_chow_liu_graph, "cp"),
    "repetitions-tucker": (lambda: circuits.random_binary_tree(jax.random.key(0), 6, 2, 2),
                           "tucker"),
    "quadgraph-tucker": (lambda: circuits.quad_graph(2, 3), "tucker"),
    "quadgraph-cp": (lambda: circuits.quad_graph(2, 3), "cp"),
}


def nested_quadrature(pic, rule, x):
    """``log`` of the QPC's value, computed region by region from the functions (numpy).

    Knows nothing of folding: for every partition it evaluates the partition's
    function at the explicit tuples of nodes, multiplies by the rule's weights,
    normalises per output node for ``normalization="units"``, and sums. Inputs are
    Bernoulli; ``x`` may hold -1 for a marginalised variable. Returns ``log c(x)``
    (for ``"global"`` not yet divided by ``Z``).
    """
    structure = pic.structure
    graph = structure.region_graph
    nodes = np.asarray(rule.points)
    weights = np.asarray(rule.weights)
    k = len(nodes)
    fold_of, mixing = {}, {}
    for d, (inner, mix) in enumerate(structure.stages):
        for f, (_, number) in enumerate(inner.partitions):
            fold_of[number] = (d, f)
        if mix is not None:
            for row, region in enumerate(mix.regions):
                order = [n for r, n in inner.partitions if r == region]
                logits = np.asarray(pic.mix_logits[d][row, :len(order)], np.float64)
                mixing[region] = (order, special.softmax(logits))
    root_stage = len(structure.stages) - 1
    logits = np.asarray(pic.input_functions(jnp.asarray(nodes)[:, None]), np.float64)[..., 0]
    p_one = special.expit(logits)  # (S, K)
    leaf_row = {int(r): row for row, r in enumerate(structure.leaf_regions)}
    cache = {}

    stage_values = {}

    def f_values(d, f, dims):
        if d not in stage_values:  # every function of stage d at every tuple of nodes
            grids = np.meshgrid(*([nodes] * dims), indexing="ij")
            points = np.stack([g.reshape(-1) for g in grids], axis=-1)
            values = np.asarray(pic.inner_functions[d](jnp.asarray(points)), np.float64)
            stage_values[d] = np.exp(values[..., 0]).reshape((-1,) + (k,) * dims)
        return stage_values[d][f]

    def value(region):
        if region in cache:
            return cache[region]
        if region in leaf_row:
            out = np.ones((x.shape[0], k))
            for s in np.flatnonzero(structure.slot_leaf == leaf_row[region]):
                v = structure.slot_variable[s]
                factor = np.where(x[:, v:v + 1] == 1, p_one[s], 1.0 - p_one[s])
                out = out * np.where(x[:, v:v + 1] < 0, 1.0, factor)
        else:
            outs = {}
            for number, partition in enumerate(graph.partitions):
                if partition.region != region:
                    continue
                d, f = fold_of[number]
                is_root = d == root_stage
                children = [value(c) for c in partition.children]
                if pic.merge == "cp":
                    w = f_values(d, f, 1 if is_root else 2) * weights  # (K,) or (K, K)
                    w = w[None] if is_root else w
                    if pic.normalization == "units":
                        w = w / w.sum(-1, keepdims=True)
                    outs[number] = np.prod(children, axis=0) @ w.T
                else:
                    w = f_values(d, f, 2 if is_root else 3) * np.outer(weights, weights)
                    w = w[None] if is_root else w
                    if pic.normalization == "units":
                        w = w / w.sum(axis=(1, 2), keepdims=True)
                    outs[number] = np.einsum("oij,ni,nj->no", w, children[0], children[1])
            if len(outs) == 1:
                out = next(iter(outs.values()))
            else:
                order, omega = mixing[region]
                out = sum(w * outs[n] for w, n in zip(omega, order, strict=True))
        cache[region] = out
        return out

    return np.log(value(graph.root)[:, 0])


@pytest.mark.parametrize(("graph_id", "normalization"), [
    ("chow-liu-cp", "units"), ("repetitions-tucker", "units"), ("quadgraph-tucker", "global"),
    ("quadgraph-cp", "units"),
])
def test_qpc_is_the_nested_quadrature_and_is_normalised(graph_id, normalization):
    build, merge = GRAPHS[graph_id]
    graph = build()
    pic = integral_circuit(graph, circuits.Bernoulli(), merge, key=jax.random.key(3),
                           inner_sharing="composite", hidden=8, num_features=8,
                           normalization=normalization)
    rule = quadrature_rule("gauss_legendre", 4)
    qpc = pic.materialize(rule)
    assert qpc.normalized == (normalization == "units")
    assert qpc.structure.num_units == 4
    domain = reference.all_assignments(6, 2)
    log_p = np.asarray(qpc.log_prob(domain), np.float64)
    # normalised: the 2^6 probabilities sum to one
    assert np.exp(special.logsumexp(log_p)) == pytest.approx(1.0, abs=2e-5)
    log_c = nested_quadrature(pic, rule, domain)
    log_z = nested_quadrature(pic, rule, -np.ones((1, 6)))[0]
    np.testing.assert_allclose(log_p, log_c - log_z, atol=2e-5)
    if normalization == "global":
        assert float(qpc.log_partition()) == pytest.approx(log_z, abs=2e-5)


@pytest.fixture(scope="module")
def global_qpc():
    graph = circuits.quad_graph(2, 3)
    pic = integral_circuit(graph, circuits.Bernoulli(), "tucker", key=jax.random.key(5),
                           inner_sharing="none", hidden=8, num_features=8,
                           normalization="global")
    # Sharper functions than at initialisation, so the distribution is far from uniform.
    pic = jax.tree_util.tree_map(lambda a: 4.0 * a if eqx.is_inexact_array(a) else a, pic)
    return pic.materialize(quadrature_rule("midpoint", 3))


def test_queries_on_a_qpc_match_enumeration(global_qpc):
    qpc = global_qpc
    domain = reference.all_assignments(6, 2)
    log_p = reference.log_normalised(qpc, domain, domain)
    assert np.exp(log_p).max() > 3 * np.exp(log_p).min()  # not uniform
    np.testing.assert_allclose(np.asarray(qpc.log_prob(domain)), log_p, atol=2e-5)
    rng = np.random.default_rng(0)
    x = domain[rng.integers(0, 64, 16)]
    observed = rng.random((16, 6)) < 0.5
    np.testing.assert_allclose(np.asarray(qpc.log_marginal(x, observed)),
                               reference.enumerated_log_marginal(log_p, domain, x, observed),
                               atol=2e-5)
    query = np.zeros((16, 6), bool)
    query[:, :2] = True
    evidence = np.zeros((16, 6), bool)
    evidence[:, 3:5] = True
    expected = (reference.enumerated_log_marginal(log_p, domain, x, query | evidence)
                - reference.enumerated_log_marginal(log_p, domain, x, evidence))
    np.testing.assert_allclose(np.asarray(qpc.log_conditional(x, query, evidence)), expected,
                               atol=2e-5)
    # MAP: the best induced tree's value (max-product), divided by Z.
    _, value = qpc.map(refine=None)
    best_tree = reference.log_unnormalised(qpc, domain, semiring="max")
    log_z = special.logsumexp(reference.log_unnormalised(qpc, domain))
    assert float(value[0]) == pytest.approx(best_tree.max() - log_z, abs=2e-5)


def test_qpc_samples_follow_the_enumerated_distribution(global_qpc):
    """Ancestral samples of the QPC (chi-square against the enumerated probabilities)."""
    qpc = global_qpc
    domain = reference.all_assignments(6, 2)
    log_p = reference.log_normalised(qpc, domain, domain)
    samples = np.asarray(qpc.sample(jax.random.key(11), 20_000))
    codes = samples @ (1 << np.arange(5, -1, -1))
    observed = np.bincount(codes, minlength=64)
    assert stats.chisquare(observed, np.exp(log_p) * len(samples)).pvalue > ALPHA


def test_gradients_flow_through_materialisation():
    """Autodiff gradient of the mean log-likelihood equals central finite differences (x64).

    With ``normalization="global"`` the gradient also flows through the partition
    function ``Z_K`` of the QPC.
    """
    with jax.enable_x64(True):
        pic = integral_circuit(circuits.linear_chain(3), circuits.Bernoulli(), "cp",
                               key=jax.random.key(1), inner_sharing="composite", hidden=6,
                               num_features=6, normalization="global")
        rule = quadrature_rule("trapezoidal", 5)
        x = jnp.asarray(reference.all_assignments(3, 2)[[1, 4, 6]], jnp.float64)

        def loss(p):
            return jnp.mean(p.materialize(rule).log_prob(x))

        grads = eqx.filter_grad(loss)(pic)
        params, static = eqx.partition(pic, eqx.is_inexact_array)
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        flat_grads, _ = jax.flatten_util.ravel_pytree(eqx.filter(grads, eqx.is_inexact_array))
        assert flat.dtype == jnp.float64 and np.count_nonzero(flat_grads) > 0.9 * flat.size
        rng = np.random.default_rng(0)
        for i in rng.choice(flat.size, 8, replace=False):
            step = jnp.zeros_like(flat).at[i].set(1e-6)
            up = loss(eqx.combine(unravel(flat + step), static))
            down = loss(eqx.combine(unravel(flat - step), static))
            assert float(flat_grads[i]) == pytest.approx(float(up - down) / 2e-6, rel=1e-5,
                                                         abs=1e-9)


def _expected_count(f, d, m, hidden, layers, features, sharing):
    trunk = features * hidden + hidden + (layers - 1) * (hidden * hidden + hidden)
    head = hidden * m + m
    return {"none": f * (trunk + head), "full": trunk + head, "composite": trunk + f * head}[sharing]


@pytest.mark.parametrize("sharing", ["none", "full", "composite"])
def test_functional_sharing_counts_and_ties(sharing):
    group = NeuralFunctions(jax.random.key(0), 5, 2, 3, sharing=sharing, hidden=7, num_layers=2,
                            num_features=6)
    assert group.num_parameters == _expected_count(5, 2, 3, 7, 2, 6, sharing)
    points = jax.random.uniform(jax.random.key(1), (11, 2), minval=-1, maxval=1)
    values = np.asarray(group(points))
    assert values.shape == (5, 11, 3)
    tied = np.allclose(values, values[:1])
    # full sharing: one function; composite starts tied (equal heads); none: all differ
    assert tied == (sharing != "none")
    if sharing == "composite":
        grads = eqx.filter_grad(lambda g: jnp.sum(g(points)[2] ** 2))(group)
        stepped = eqx.apply_updates(group, jax.tree_util.tree_map(lambda g: -0.1 * g, grads))
        assert not np.allclose(np.asarray(stepped(points)), np.asarray(stepped(points))[:1])
    # The Fourier features are fixed: re-evaluation is deterministic and nothing else is stored.
    np.testing.assert_array_equal(np.asarray(group(points)), values)


def test_full_sharing_gives_every_fold_the_same_weights():
    graph = circuits.linear_chain(5)
    pic = integral_circuit(graph, circuits.Bernoulli(), key=jax.random.key(2),
                           inner_sharing="full", input_sharing="full")
    qpc = pic.materialize(quadrature_rule("midpoint", 4))
    for logits in qpc.sum_logits[:-1]:
        np.testing.assert_allclose(np.asarray(logits), np.asarray(logits)[:1].repeat(
            logits.shape[0], 0), rtol=1e-6)
    unshared = integral_circuit(graph, circuits.Bernoulli(), key=jax.random.key(2))
    assert pic.num_parameters < unshared.num_parameters


@pytest.mark.parametrize("layer, data", [
    (circuits.Categorical(3), lambda rng: rng.integers(0, 3, (50, 4))),
    (circuits.Gaussian(), lambda rng: rng.normal(size=(50, 4))),
    (circuits.Binomial(4), lambda rng: rng.integers(0, 5, (50, 4))),
])
def test_other_input_layers_materialise_to_normalised_circuits(layer, data):
    rng = np.random.default_rng(0)
    values = data(rng)
    pic = integral_circuit(circuits.linear_chain(4), layer, "tucker", key=jax.random.key(4),
                           hidden=8, num_features=8, data=values)
    qpc = pic.materialize(quadrature_rule("simpson", 5))
    assert float(qpc.log_partition()) == 0.0
    if isinstance(layer, circuits.Gaussian):
        # The marginal density of x0 integrates to one (fine trapezoid over a wide range).
        grid = np.linspace(-30, 30, 6001)
        x = np.zeros((grid.size, 4))
        x[:, 0] = grid
        observed = np.array([True, False, False, False])
        density = np.exp(np.asarray(qpc.log_marginal(x, observed), np.float64))
        assert np.trapezoid(density, grid) == pytest.approx(1.0, abs=1e-4)
        return
    k = layer.num_categories if isinstance(layer, circuits.Categorical) else 5
    domain = reference.all_assignments(4, k)
    total = special.logsumexp(np.asarray(qpc.log_prob(domain), np.float64))
    assert total == pytest.approx(0.0, abs=2e-5)


def test_fit_integral_contract_and_save_reload(tmp_path):
    rng = np.random.default_rng(1)
    data = (rng.random((120, 5)) < np.linspace(0.2, 0.8, 5)).astype(np.int8)
    graph = circuits.linear_chain(5)
    pic = integral_circuit(graph, circuits.Bernoulli(), key=jax.random.key(0),
                           inner_sharing="composite", hidden=8, num_features=8, data=data)
    rule = quadrature_rule("trapezoidal", 5)
    result = fit_integral(pic, data[:100], optax.adam(1e-2), rule, key=jax.random.key(1),
                          num_epochs=2, batch_size=32, valid=data[100:], progress=False)
    assert result.num_epochs == 2 and result.stop_reason == "completed"
    assert result.train_log_likelihood.shape == result.valid_log_likelihood.shape == (2,)
    assert np.all(np.isfinite(result.train_log_likelihood)) and result.seconds > 0
    # keep_best: the returned PIC is the one with the best validation log-likelihood
    assert circuits.average_log_likelihood(result.circuit, data[100:]) == pytest.approx(
        result.valid_log_likelihood.max(), abs=1e-5)
    again = result.pic.materialize(rule)
    np.testing.assert_array_equal(np.asarray(again.log_prob(data)),
                                  np.asarray(result.circuit.log_prob(data)))
    # data-centred start: the input functions begin at the empirical marginals
    start = pic.materialize(rule)
    marginals = np.exp(np.asarray(start.log_marginal(np.ones((5, 5)), np.eye(5, dtype=bool))))
    np.testing.assert_allclose(marginals, data.mean(0), atol=0.12)
    path = tmp_path / "pic.pkl"
    probinf.io.save(path, result.pic)
    loaded = probinf.io.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.materialize(rule).log_prob(data)),
                                  np.asarray(result.circuit.log_prob(data)))


def test_fit_integral_reports_a_non_finite_update():
    data = np.eye(4, dtype=np.int8)
    pic = integral_circuit(circuits.linear_chain(4), circuits.Bernoulli(), key=jax.random.key(0),
                           hidden=4, num_features=4)

    def poison(updates, state, params=None):
        return jax.tree_util.tree_map(lambda u: u * jnp.nan, updates), state

    bad = optax.GradientTransformation(lambda params: optax.EmptyState(), poison)
    result = fit_integral(pic, data, bad, quadrature_rule("midpoint", 3), key=jax.random.key(1),
                          num_epochs=2, progress=False)
    assert result.num_epochs == 0 and "epoch 0" in result.stop_reason
    before = pic.materialize(quadrature_rule("midpoint", 3)).log_prob(data)
    np.testing.assert_array_equal(np.asarray(result.circuit.log_prob(data)), np.asarray(before))


def test_bad_input_names_the_argument():
    graph = circuits.linear_chain(4)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="`inner_sharing`"):
        integral_circuit(graph, circuits.Bernoulli(), key=key, inner_sharing="some")
    with pytest.raises(ValueError, match="`input_sharing`"):
        integral_circuit(graph, circuits.Bernoulli(), key=key, input_sharing="all")
    with pytest.raises(ValueError, match="`merge`"):
        integral_circuit(graph, circuits.Bernoulli(), "sum", key=key)
    with pytest.raises(ValueError, match="`normalization`"):
        integral_circuit(graph, circuits.Bernoulli(), key=key, normalization="none")
    with pytest.raises(ValueError, match="Tucker layers need binary partitions"):
        integral_circuit(_chow_liu_graph(), circuits.Bernoulli(), "tucker", key=key)
    with pytest.raises(ValueError, match="`data`"):
        integral_circuit(graph, circuits.Bernoulli(), key=key, data=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="`data` variable 0"):
        integral_circuit(graph, circuits.Bernoulli(), key=key, data=np.full((3, 4), 2))
    with pytest.raises(TypeError, match="`region_graph`"):
        integral_circuit("graph", circuits.Bernoulli(), key=key)
    with pytest.raises(ValueError, match="`num_features`"):
        NeuralFunctions(key, 2, 1, 1, num_features=5)
    with pytest.raises(ValueError, match="`sharing`"):
        NeuralFunctions(key, 2, 1, 1, sharing="half")
    with pytest.raises(ValueError, match="`output_bias`"):
        NeuralFunctions(key, 2, 1, 1, output_bias=np.zeros(3))
    pic = integral_circuit(graph, circuits.Bernoulli(), key=key, hidden=4, num_features=4)
    with pytest.raises(ValueError, match="`inner_functions\\[0\\]`"):
        IntegralCircuit(graph, circuits.Bernoulli(), pic.input_functions,
                        pic.inner_functions[::-1] if len(pic.inner_functions) > 1 else (),
                        merge="cp")
    with pytest.raises(ValueError, match="`input_functions`"):
        IntegralCircuit(graph, circuits.Categorical(3), pic.input_functions, pic.inner_functions)
    with pytest.raises(ValueError, match="`domain`"):
        IntegralCircuit(graph, circuits.Bernoulli(), pic.input_functions, pic.inner_functions,
                        domain=(1.0, -1.0))
    with pytest.raises(ValueError, match="`rule`"):
        pic.materialize(quadrature_rule("midpoint", 3, (0.0, 1.0)))
    with pytest.raises(TypeError, match="`rule`"):
        pic.materialize("midpoint")
    with pytest.raises(ValueError, match="`backend`"):
        pic.materialize(quadrature_rule("midpoint", 3), backend="cuda")
    with pytest.raises(ValueError, match="`num_epochs`"):
        fit_integral(pic, np.zeros((4, 4)), optax.adam(1e-2), quadrature_rule("midpoint", 3),
                     key=key, num_epochs=0)
    with pytest.raises(ValueError, match="`data` variable 1"):
        fit_integral(pic, np.full((4, 4), 1) * np.array([0, 3, 0, 0]), optax.adam(1e-2),
                     quadrature_rule("midpoint", 3), key=key)
    with pytest.raises(TypeError, match="`optimizer`"):
        fit_integral(pic, np.zeros((4, 4)), "adam", quadrature_rule("midpoint", 3), key=key)

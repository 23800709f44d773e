"""Region graphs: builders produce valid graphs; violations are errors naming the region."""

import itertools

import jax
import numpy as np
import pytest

import circuits
from circuits.region_graph import RegionGraph, chow_liu_tree


def assert_valid(graph: RegionGraph):
    """An independent check of smoothness and decomposability of every partition."""
    scopes = [set(r) for r in graph.regions]
    assert scopes[graph.root] == set(range(graph.num_variables))
    for p in graph.partitions:
        children = [scopes[c] for c in p.children]
        assert sum(len(c) for c in children) == len(set().union(*children))  # disjoint
        assert set().union(*children) == scopes[p.region]  # covers the region


@pytest.mark.parametrize("builder", [
    lambda: circuits.random_binary_tree(jax.random.key(0), 13, depth=3, num_repetitions=3),
    lambda: circuits.quad_tree(5, 6),
    lambda: circuits.quad_tree(5, 6, num_patch_splits=2),
    lambda: circuits.quad_graph(4, 5),
    lambda: circuits.linear_chain(7, order=[3, 1, 0, 6, 5, 2, 4]),
])
def test_builders_give_smooth_decomposable_graphs(builder):
    assert_valid(builder())


def test_quad_tree_and_quad_graph_counts():
    tree = circuits.quad_tree(4, 4)
    # 16 pixels, four 2x2 quadrants, the image: 21 regions, 5 four-way partitions.
    assert len(tree.regions) == 21 and len(tree.partitions) == 5 and tree.max_arity == 4
    assert tree.is_structured_decomposable()
    graph = circuits.quad_graph(2, 2)
    # The image (split two ways), two rows, two columns, four pixels.
    assert len(graph.regions) == 9 and len(graph.partitions) == 6
    assert len(graph.partitions_of[graph.root]) == 2
    assert not graph.is_structured_decomposable()


def test_random_binary_tree_repetitions_and_depth():
    graph = circuits.random_binary_tree(jax.random.key(3), 16, depth=2, num_repetitions=4)
    assert len(graph.partitions_of[graph.root]) == 4
    assert graph.depth[graph.root] == 2
    assert sorted(len(graph.regions[r]) for r in graph.leaves)[0] == 4  # 16 / 2 / 2
    again = circuits.random_binary_tree(jax.random.key(3), 16, depth=2, num_repetitions=4)
    assert again.regions == graph.regions and again.partitions == graph.partitions


def test_linear_chain_is_a_chain():
    graph = circuits.linear_chain(5)
    assert graph.depth[graph.root] == 4
    for p in graph.partitions:
        sizes = sorted(len(graph.regions[c]) for c in p.children)
        assert sizes[0] == 1 and len(p.children) == 2


def _mutual_information(data):
    """Plain-loop empirical mutual information with the same pseudocount as the builder."""
    n, v = data.shape
    mi = np.zeros((v, v))
    for i, j in itertools.combinations(range(v), 2):
        joint = np.full((2, 2), 0.01)
        for a, b in zip(data[:, i], data[:, j], strict=True):
            joint[a, b] += 1
        joint /= joint.sum()
        pi, pj = joint.sum(1), joint.sum(0)
        mi[i, j] = mi[j, i] = np.sum(joint * np.log(joint / np.outer(pi, pj)))
    return mi


def _tree_edges(graph):
    """Tree edges of an HCLT region graph: a node's partition lists ``{v}`` first."""
    def node_of(region):
        parts = graph.partitions_of.get(region)
        return graph.regions[region][0] if parts is None else graph.regions[parts[0].children[0]][0]

    return {frozenset((node_of(p.region), node_of(c))) for p in graph.partitions
            for c in p.children[1:]}


def test_chow_liu_tree_maximises_total_mutual_information():
    rng = np.random.default_rng(0)
    # Data from a chain 0 -> 2 -> 4 -> 1 -> 3 with strong coupling plus noise.
    n = 400
    data = np.zeros((n, 5), int)
    data[:, 0] = rng.random(n) < 0.5
    for parent, child in [(0, 2), (2, 4), (4, 1), (1, 3)]:
        flip = rng.random(n) < 0.15
        data[:, child] = np.where(flip, 1 - data[:, parent], data[:, parent])
    graph = chow_liu_tree(data, root=0)
    assert_valid(graph)
    edges = _tree_edges(graph)
    mi = _mutual_information(data)
    best = max(sum(mi[a, b] for a, b in tree) for tree in _labelled_trees(5))
    ours = sum(mi[tuple(e)] for e in map(tuple, edges))
    assert len(edges) == 4
    assert ours == pytest.approx(best, rel=1e-9)
    assert edges == {frozenset(e) for e in [(0, 2), (2, 4), (4, 1), (1, 3)]}


def test_chow_liu_trees_are_the_best_spanning_trees_in_order():
    """The 15 best of the 125 labelled trees on 5 nodes, ranked by total mutual information."""
    rng = np.random.default_rng(1)
    data = (rng.random((300, 5)) < 0.5).astype(int)
    data[:, 3] = np.where(rng.random(300) < 0.3, 1 - data[:, 1], data[:, 1])
    mi = _mutual_information(data)
    ranked = sorted(_labelled_trees(5), key=lambda tree: -sum(mi[a, b] for a, b in tree))
    graphs = circuits.chow_liu_trees(data, 15)
    assert len(graphs) == 15
    for graph, tree in zip(graphs, ranked, strict=False):
        assert_valid(graph)
        assert _tree_edges(graph) == {frozenset(e) for e in tree}
    assert _tree_edges(graphs[0]) == _tree_edges(chow_liu_tree(data))
    assert len(circuits.chow_liu_trees(data[:, :3], 10)) == 3  # K3 has three spanning trees
    with pytest.raises(ValueError, match="`num_trees`"):
        circuits.chow_liu_trees(data, 0)


def _labelled_trees(num_nodes):
    """Every labelled tree on ``num_nodes`` nodes, as edge lists (from Pruefer sequences)."""
    for sequence in itertools.product(range(num_nodes), repeat=num_nodes - 2):
        degree = [1] * num_nodes
        for s in sequence:
            degree[s] += 1
        tree = []
        for s in sequence:
            leaf = min(i for i in range(num_nodes) if degree[i] == 1)
            tree.append((leaf, s))
            degree[leaf] -= 1
            degree[s] -= 1
        u, w = [i for i in range(num_nodes) if degree[i] == 1]
        tree.append((u, w))
        yield tree


# ------------------------------------------------------------------- errors
def test_not_decomposable_names_the_region():
    with pytest.raises(ValueError, match=r"region 0 \(0, 1, 2\).*not decomposable.*variable 1"):
        RegionGraph(3, [(0, 1, 2), (0, 1), (1, 2)], [(0, (1, 2))])


def test_not_smooth_names_the_region():
    with pytest.raises(ValueError, match=r"region 0 \(0, 1, 2\).*not smooth.*missing variable 2"):
        RegionGraph(3, [(0, 1, 2), (0,), (1,)], [(0, (1, 2))])


def test_child_outside_region_is_not_smooth():
    with pytest.raises(ValueError, match=r"region 1 \(0, 1\).*not smooth.*variable 2 is outside"):
        RegionGraph(3, [(0, 1, 2), (0, 1), (2,), (0,), (1, 2)], [(0, (1, 2)), (1, (3, 4))])


def test_unused_region_is_named():
    with pytest.raises(ValueError, match=r"region 3 \(2\) is used by no partition"):
        RegionGraph(3, [(0, 1, 2), (0,), (1, 2), (2,), (1,)], [(0, (1, 2))])


def test_replica_regions_have_units_of_their_own():
    """Two replicas of {0} and of {1} under one root: a mixture of two product distributions
    whose input units are separate (4 slots); its queries are exact."""
    graph = RegionGraph(2, [(0, 1), (0,), (1,), (0,), (1,)], [(0, (1, 2)), (0, (3, 4))])
    assert_valid(graph)
    pc = circuits.compile_circuit(graph, circuits.Bernoulli(), 3, key=jax.random.key(0))
    assert pc.structure.num_slots == 4
    grid = np.array(list(itertools.product([0, 1], repeat=2)))
    joint = np.exp(np.asarray(pc.log_prob(grid), np.float64))
    assert joint.sum() == pytest.approx(1.0, abs=1e-6)
    observed = np.array([True, False])
    marginal = np.exp(np.asarray(pc.log_marginal(np.array([1, 0]), observed), np.float64))
    assert marginal == pytest.approx(joint[2] + joint[3], abs=1e-6)
    draws = np.asarray(pc.sample(jax.random.key(1), 20000))
    frequency = np.array([np.mean(np.all(draws == row, axis=1)) for row in grid])
    np.testing.assert_allclose(frequency, joint, atol=0.015)


def test_root_must_cover_every_variable():
    with pytest.raises(ValueError, match=r"root region 0 \(0, 1\).*variable 2 is missing"):
        RegionGraph(3, [(0, 1), (0,), (1,)], [(0, (1, 2))])


@pytest.mark.parametrize("regions, partitions, message", [
    ([(0, 1), ()], [], r"region 1 is empty"),
    ([(0, 5)], [], r"region 0 \(0, 5\) holds variable 5"),
    ([(0, 1), (0,), (1,)], [(0, (1,))], r"region 0 \(0, 1\), partition 0: a partition needs at least 2"),
    ([(0, 1), (0,), (1,)], [(0, (1, 7))], r"names child region 7"),
])
def test_malformed_graphs(regions, partitions, message):
    with pytest.raises(ValueError, match=message):
        RegionGraph(2, regions, partitions)


def test_tucker_needs_binary_partitions_and_names_the_region():
    graph = circuits.quad_tree(2, 2)  # one 4-way partition
    with pytest.raises(ValueError, match=r"region \d+ \(0, 1, 2, 3\).*4 children.*Tucker"):
        circuits.compile_circuit(graph, circuits.Bernoulli(), 2, "tucker", key=jax.random.key(0))


@pytest.mark.parametrize("call, message", [
    (lambda: circuits.random_binary_tree(jax.random.key(0), 1, 2), "num_variables"),
    (lambda: circuits.random_binary_tree(jax.random.key(0), 4, 0), "depth"),
    (lambda: circuits.quad_tree(2, 2, num_patch_splits=3), "num_patch_splits"),
    (lambda: circuits.quad_graph(0, 3), "height"),
    (lambda: circuits.linear_chain(3, order=[0, 0, 1]), "order"),
    (lambda: chow_liu_tree(np.array([[0, 2], [1, 0]]), num_categories=2), r"variable 1 has value 2"),
    (lambda: chow_liu_tree(np.eye(3, dtype=int), root=3), "root"),
])
def test_builder_arguments_are_checked(call, message):
    with pytest.raises(ValueError, match=message):
        call()

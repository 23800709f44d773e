"""Region graphs: the scopes of a circuit and how they split.

A *region* is a non-empty set of variables; a *partition* splits a region into
two or more disjoint child regions whose union is the region. A region graph is
a DAG of regions and partitions with one root region covering every variable.
Compiling it with a choice of layers (see :func:`circuits.compile_circuit`) gives a
circuit in which each region holds ``K`` units (distributions over the region's
variables), each partition a layer of product units followed by a sum layer, and
each region with several partitions a mixing layer.

Two structural properties make every query exact and are checked when a graph is
built (Darwiche 2003; Poon & Domingos 2011):

* **decomposability** — the children of a partition share no variable;
* **smoothness** — the children of a partition cover exactly the region, so every
  partition of a region (and so every input of a mixing sum) has the same scope.

A violation raises :class:`ValueError` naming the offending region.

Builders: :func:`random_binary_tree` (RAT-SPN, Peharz et al. 2019),
:func:`quad_tree` and :func:`quad_graph` (images; Mari, Vessio & Vergari 2023),
:func:`chow_liu_tree` (the hidden Chow–Liu tree of Liu & Van den Broeck 2021, with
the tree learned from data by Chow & Liu 1968), :func:`chow_liu_trees` (the best few
such trees) and :func:`linear_chain` (an HMM-like
chain).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from probinf.validation import check_positive_int

__all__ = [
    "Partition",
    "RegionGraph",
    "random_binary_tree",
    "quad_tree",
    "quad_graph",
    "chow_liu_tree",
    "chow_liu_trees",
    "linear_chain",
]


@dataclass(frozen=True)
class Partition:
    """A split of region ``region`` into the child regions ``children`` (indices)."""

    region: int
    children: tuple[int, ...]


def _fmt(scope: Sequence[int]) -> str:
    scope = list(scope)
    if len(scope) > 12:
        return "(" + ", ".join(map(str, scope[:10])) + f", ... {len(scope)} variables)"
    return "(" + ", ".join(map(str, scope)) + ")"


class RegionGraph:
    """A validated region graph.

    Args:
        num_variables: number of variables ``V``; variables are ``0 .. V-1``.
        regions: the scope of each region, a sequence of variable indices. Two regions
            may have the same scope: they are *replicas* with units and parameters of
            their own (the replicas of RAT-SPNs, Peharz et al. 2019; the separate trees of
            a mixture of HCLTs). To share a region between partitions, name it in both.
        partitions: ``(region_index, child_region_indices)`` pairs.

    Attributes:
        regions: sorted scopes, a tuple of tuples of ints.
        partitions: tuple of :class:`Partition`.
        root: index of the root region (the only region no partition uses).
        depth: per region, 0 for a leaf region, else one more than the deepest child.

    Raises:
        ValueError: naming the region when a scope is empty, lists a variable twice or
            holds an unknown variable, when a partition is not decomposable (children share
            a variable) or not smooth (children do not cover the region), when a
            region is unreachable from the root, or when the root does not cover
            every variable.
    """

    def __init__(
        self,
        num_variables: int,
        regions: Sequence[Sequence[int]],
        partitions: Sequence[tuple[int, Sequence[int]]],
    ):
        self.num_variables = check_positive_int(num_variables, "num_variables")
        scopes: list[tuple[int, ...]] = []
        for index, region in enumerate(regions):
            scope = tuple(sorted(int(v) for v in region))
            if not scope:
                raise ValueError(f"region {index} is empty; every region needs a variable")
            if len(set(scope)) != len(scope):
                raise ValueError(f"region {index} {_fmt(scope)} lists a variable twice")
            bad = [v for v in scope if not 0 <= v < self.num_variables]
            if bad:
                raise ValueError(
                    f"region {index} {_fmt(scope)} holds variable {bad[0]}, outside "
                    f"0..{self.num_variables - 1}"
                )
            scopes.append(scope)
        self.regions = tuple(scopes)
        parts = []
        for parent, children in partitions:
            parent = int(parent)
            children = tuple(int(c) for c in children)
            if not 0 <= parent < len(scopes):
                raise ValueError(f"a partition names region {parent}, but there are {len(scopes)}")
            for c in children:
                if not 0 <= c < len(scopes):
                    raise ValueError(
                        f"a partition of region {parent} {_fmt(scopes[parent])} names child "
                        f"region {c}, but there are {len(scopes)}"
                    )
            parts.append(Partition(parent, children))
        self.partitions = tuple(parts)
        self._validate()
        self.depth = self._depths()

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        scopes = self.regions
        used = set()
        for number, p in enumerate(self.partitions):
            region = scopes[p.region]
            where = f"region {p.region} {_fmt(region)}, partition {number}"
            if len(p.children) < 2:
                raise ValueError(f"{where}: a partition needs at least 2 children, got "
                                 f"{len(p.children)}")
            covered: dict[int, int] = {}
            for c in p.children:
                used.add(c)
                for v in scopes[c]:
                    if v in covered:
                        raise ValueError(
                            f"{where} is not decomposable: children {_fmt(scopes[covered[v]])} "
                            f"and {_fmt(scopes[c])} share variable {v}"
                        )
                    covered[v] = c
            if set(covered) != set(region):
                missing = sorted(set(region) - set(covered))
                extra = sorted(set(covered) - set(region))
                detail = (f"missing variable {missing[0]}" if missing
                          else f"variable {extra[0]} is outside the region")
                raise ValueError(
                    f"{where} is not smooth: its children cover {_fmt(sorted(covered))} but the "
                    f"region is {_fmt(region)} ({detail})"
                )
        roots = [r for r in range(len(scopes)) if r not in used]
        if len(roots) != 1:
            extra = [r for r in roots if len(scopes[r]) < self.num_variables]
            r = extra[0] if extra else roots[-1]
            raise ValueError(
                f"region {r} {_fmt(scopes[r])} is used by no partition and is not the root; a "
                f"region graph has exactly one root (found {len(roots)} unused regions)"
            )
        self.root = roots[0]
        if len(scopes[self.root]) != self.num_variables:
            missing = sorted(set(range(self.num_variables)) - set(scopes[self.root]))
            raise ValueError(
                f"root region {self.root} {_fmt(scopes[self.root])} does not cover every variable: "
                f"variable {missing[0]} is missing"
            )

    def _depths(self) -> tuple[int, ...]:
        by_region: dict[int, list[Partition]] = {}
        for p in self.partitions:
            by_region.setdefault(p.region, []).append(p)
        self.partitions_of = {r: tuple(ps) for r, ps in by_region.items()}
        # Children are strict subsets of their region, so sorting by size is a topological order.
        depth = [0] * len(self.regions)
        for r in sorted(range(len(self.regions)), key=lambda r: len(self.regions[r])):
            for p in self.partitions_of.get(r, ()):
                depth[r] = max(depth[r], 1 + max(depth[c] for c in p.children))
        return tuple(depth)

    # ------------------------------------------------------------- accessors
    @property
    def leaves(self) -> tuple[int, ...]:
        """Indices of the regions with no partition (they hold input units)."""
        return tuple(r for r in range(len(self.regions)) if r not in self.partitions_of)

    @property
    def max_arity(self) -> int:
        """The largest number of children of a partition."""
        return max((len(p.children) for p in self.partitions), default=0)

    def is_structured_decomposable(self) -> bool:
        """True when every region has at most one partition (a tree-shaped vtree)."""
        return all(len(ps) == 1 for ps in self.partitions_of.values())

    def __repr__(self) -> str:
        return (f"RegionGraph(num_variables={self.num_variables}, regions={len(self.regions)}, "
                f"partitions={len(self.partitions)}, depth={self.depth[self.root]})")


# ---------------------------------------------------------------- builders
class _Builder:
    """Collects regions by scope (each scope once) and partitions without repeats."""

    def __init__(self):
        self.index: dict[tuple[int, ...], int] = {}
        self.scopes: list[tuple[int, ...]] = []
        self.partitions: list[tuple[int, tuple[int, ...]]] = []
        self._seen_partitions: set[tuple[int, frozenset]] = set()

    def region(self, scope) -> tuple[int, bool]:
        scope = tuple(sorted(int(v) for v in scope))
        if scope in self.index:
            return self.index[scope], False
        self.index[scope] = len(self.scopes)
        self.scopes.append(scope)
        return self.index[scope], True

    def partition(self, parent: int, children: Sequence[int]) -> None:
        signature = (parent, frozenset(children))
        if signature not in self._seen_partitions:
            self._seen_partitions.add(signature)
            self.partitions.append((parent, tuple(children)))

    def build(self, num_variables: int) -> RegionGraph:
        return RegionGraph(num_variables, self.scopes, self.partitions)


def _check_positive(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _numpy_rng(key) -> np.random.Generator:
    data = np.asarray(jax.random.key_data(key)).ravel()
    return np.random.default_rng([int(v) for v in data])


def random_binary_tree(key, num_variables: int, depth: int, num_repetitions: int = 1) -> RegionGraph:
    """Random binary trees over the variables, as in RAT-SPNs (Peharz et al., UAI 2019).

    The root region (all variables) gets ``num_repetitions`` partitions; each splits
    a random permutation of the variables into two halves, recursively, until
    ``depth`` splits were made or a region holds one variable. Leaf regions may hold
    several variables; their input units are then fully factorised.

    Args:
        key: a JAX PRNG key (the structure is drawn from it).
        num_variables: number of variables.
        depth: number of binary splits along each path (at least 1).
        num_repetitions: number of random trees mixed at the root.

    Returns:
        The region graph; the root has ``num_repetitions`` partitions (fewer only if
        two repetitions drew the same split).
    """
    num_variables = _check_positive(num_variables, "num_variables", 2)
    depth = _check_positive(depth, "depth")
    num_repetitions = _check_positive(num_repetitions, "num_repetitions")
    rng = _numpy_rng(key)
    builder = _Builder()
    root, _ = builder.region(range(num_variables))

    def split(region: int, scope: np.ndarray, level: int) -> None:
        if level >= depth or len(scope) < 2:
            return
        permuted = rng.permutation(scope)
        half = len(permuted) // 2
        children = []
        for part in (permuted[:half], permuted[half:]):
            child, new = builder.region(part)
            children.append(child)
            if new:
                split(child, np.asarray(builder.scopes[child]), level + 1)
        builder.partition(region, children)

    for _ in range(num_repetitions):
        permuted = rng.permutation(num_variables)
        half = num_variables // 2
        children = []
        for part in (permuted[:half], permuted[half:]):
            child, new = builder.region(part)
            children.append(child)
            if new:
                split(child, np.asarray(builder.scopes[child]), 1)
        builder.partition(root, children)
    return builder.build(num_variables)


def _pixels(rows: range, cols: range, width: int) -> list[int]:
    return [r * width + c for r in rows for c in cols]


def _halves(span: range) -> tuple[range, range]:
    mid = span.start + (len(span) + 1) // 2
    return range(span.start, mid), range(mid, span.stop)


def quad_tree(height: int, width: int, num_patch_splits: int = 4) -> RegionGraph:
    """A quad-tree over an image's pixels (variable ``r * width + c``).

    Each rectangular patch is split into its four quadrants (``num_patch_splits=4``,
    a 4-ary partition) or into two halves along its longer side
    (``num_patch_splits=2``), down to single pixels. The graph is a tree, so the
    circuit is structured-decomposable.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        num_patch_splits: 4 (quadrants) or 2 (halves).
    """
    height = _check_positive(height, "height")
    width = _check_positive(width, "width")
    if height * width < 2:
        raise ValueError("`height * width` must be at least 2")
    if num_patch_splits not in (2, 4):
        raise ValueError(f"`num_patch_splits` must be 2 or 4, got {num_patch_splits!r}")
    builder = _Builder()

    def visit(rows: range, cols: range) -> int:
        region, new = builder.region(_pixels(rows, cols, width))
        if not new or len(rows) * len(cols) == 1:
            return region
        if num_patch_splits == 4:
            row_parts = _halves(rows) if len(rows) > 1 else (rows,)
            col_parts = _halves(cols) if len(cols) > 1 else (cols,)
            pieces = [(r, c) for r in row_parts for c in col_parts]
        elif len(rows) >= len(cols):
            pieces = [(r, cols) for r in _halves(rows)]
        else:
            pieces = [(rows, c) for c in _halves(cols)]
        builder.partition(region, [visit(r, c) for r, c in pieces])
        return region

    visit(range(height), range(width))
    return builder.build(height * width)


def quad_graph(height: int, width: int) -> RegionGraph:
    """A quad-graph over an image's pixels (variable ``r * width + c``).

    Every rectangular patch with more than one row and column has two partitions, a
    split into top/bottom halves and one into left/right halves; patches are shared
    between parents, so the graph is a DAG (not structured-decomposable) and
    regions with two partitions get a mixing layer.

    Args:
        height: image height in pixels.
        width: image width in pixels.
    """
    height = _check_positive(height, "height")
    width = _check_positive(width, "width")
    if height * width < 2:
        raise ValueError("`height * width` must be at least 2")
    builder = _Builder()

    def visit(rows: range, cols: range) -> int:
        region, new = builder.region(_pixels(rows, cols, width))
        if not new:
            return region
        if len(rows) > 1:
            builder.partition(region, [visit(r, cols) for r in _halves(rows)])
        if len(cols) > 1:
            builder.partition(region, [visit(rows, c) for c in _halves(cols)])
        return region

    visit(range(height), range(width))
    return builder.build(height * width)


def _mutual_information(data: np.ndarray, num_categories: int, pseudocount: float) -> np.ndarray:
    """Pairwise empirical mutual information (nats) of discrete columns, ``(V, V)``."""
    n, v = data.shape
    onehot = np.zeros((n, v * num_categories), dtype=np.float32)
    onehot[np.arange(n)[:, None], np.arange(v) * num_categories + data] = 1.0
    joint = (onehot.T @ onehot).astype(np.float64).reshape(v, num_categories, v, num_categories)
    joint = (joint + pseudocount) / (n + pseudocount * num_categories**2)
    marginal = np.einsum("iaia->ia", joint)  # P(x_i = a): the diagonal blocks
    marginal = marginal / marginal.sum(axis=1, keepdims=True)
    ratio = joint / (marginal[:, :, None, None] * marginal[None, None, :, :])
    mi = np.einsum("iajb,iajb->ij", joint, np.log(ratio))
    np.fill_diagonal(mi, -np.inf)
    return mi


def chow_liu_tree(
    data,
    num_categories: int | None = None,
    root: int | None = None,
    pseudocount: float = 0.01,
) -> RegionGraph:
    """The region graph of a hidden Chow–Liu tree learned from discrete data.

    The Chow–Liu tree (Chow & Liu 1968) is the maximum spanning tree of the
    pairwise mutual information, rooted at ``root``. Following the HCLT of Liu &
    Van den Broeck (NeurIPS 2021), each tree node ``v`` with children
    ``c_1..c_m`` gives the region ``{v} ∪ scope(c_1) ∪ ... ∪ scope(c_m)`` with one
    partition into ``{v}`` and the children's regions. With CP layers each region's
    ``K`` units play the role of a hidden variable's states.

    Args:
        data: ``(num_samples, num_variables)`` integer array with values in
            ``0 .. num_categories - 1``.
        num_categories: number of categories (default: ``max(data) + 1``).
        root: the variable at the root of the tree (default: a centre of the tree,
            which minimises its height and so the number of folded stages).
        pseudocount: added to every pairwise count before computing mutual information.
    """
    return chow_liu_trees(data, 1, num_categories, root, pseudocount)[0]


def chow_liu_trees(
    data,
    num_trees: int,
    num_categories: int | None = None,
    root: int | None = None,
    pseudocount: float = 0.01,
) -> list[RegionGraph]:
    """The ``num_trees`` spanning trees of largest total mutual information, best first.

    Each tree becomes a hidden Chow–Liu tree region graph as in :func:`chow_liu_tree`
    (whose tree is the first). The trees are enumerated in order of weight by Lawler's
    partition scheme for ranked spanning trees (Gabow 1977; Yamada, Kataoka & Watanabe,
    "Listing all the minimum spanning trees in an undirected graph", 2010), as in the
    released code of Liu & Van den Broeck (NeurIPS 2021), which mixes HCLTs on several
    of them. Fewer trees come back when the graph has fewer spanning trees.

    Args: as :func:`chow_liu_tree`, and ``num_trees``, how many trees to return.
    """
    num_trees = _check_positive(num_trees, "num_trees", 1)
    data = np.asarray(data)
    if data.ndim != 2 or data.shape[0] < 1 or data.shape[1] < 2:
        raise ValueError(f"`data` must be (num_samples, num_variables>=2), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            column = int(np.argwhere(~np.isfinite(data) | (data != np.round(data)))[0, 1])
            raise ValueError(f"`data` variable {column} holds a non-integer value")
        data = data.astype(np.int64)
    if num_categories is None:
        num_categories = int(data.max()) + 1
    num_categories = _check_positive(num_categories, "num_categories", 2)
    bad = np.argwhere((data < 0) | (data >= num_categories))
    if bad.size:
        row, col = bad[0]
        raise ValueError(f"`data` variable {col} has value {data[row, col]} (row {row}) outside "
                         f"0..{num_categories - 1}")
    num_variables = data.shape[1]
    if root is not None and not 0 <= root < num_variables:
        raise ValueError(f"`root` must be a variable in 0..{num_variables - 1}, got {root}")
    mi = _mutual_information(data, num_categories, pseudocount)
    graphs = []
    for tree in _best_spanning_trees(mi, num_trees):
        edges: dict[int, list[int]] = {v: [] for v in range(num_variables)}
        # A frozenset of int pairs iterates in the same order in every run (int hashes are
        # not randomised), so the region order, and with it every result, is reproducible.
        for u, v in tree:
            edges[u].append(v)
            edges[v].append(u)
        graphs.append(_rooted_tree_region_graph(num_variables, edges, root))
    return graphs


def _maximum_spanning_tree(weights: np.ndarray) -> frozenset[tuple[int, int]]:
    """Prim's algorithm on a dense symmetric weight matrix; edges as ``(low, high)`` pairs."""
    num_variables = weights.shape[0]
    in_tree = np.zeros(num_variables, bool)
    in_tree[0] = True
    best = weights[0].copy()
    best_from = np.zeros(num_variables, int)
    tree = []
    for _ in range(num_variables - 1):
        v = int(np.argmax(np.where(in_tree, -np.inf, best)))
        in_tree[v] = True
        u = int(best_from[v])
        tree.append((min(u, v), max(u, v)))
        better = weights[v] > best
        best = np.where(better, weights[v], best)
        best_from = np.where(better, v, best_from)
    return frozenset(tree)


def _best_spanning_trees(weights: np.ndarray, k: int) -> list[frozenset[tuple[int, int]]]:
    """The ``k`` maximum-weight spanning trees of a complete graph, best first.

    Lawler's partition: the best tree of a subproblem (edges forced in, edges forced out)
    is popped from a queue, and split into subproblems that each exclude one more of its
    free edges while forcing in the free edges before it. The best tree of such a
    subproblem is the popped tree with that edge swapped for the heaviest allowed edge
    across the cut it leaves (one exchange suffices on a graphic matroid), so each costs
    one pass over a cut instead of a new spanning-tree search.
    """
    total = lambda tree: float(sum(weights[u, v] for u, v in tree))
    first = _maximum_spanning_tree(weights)
    queue = [(-total(first), 0, first, frozenset(), frozenset())]
    found, pushed = [], 1
    while queue and len(found) < k:
        _, _, tree, forced_in, forced_out = heapq.heappop(queue)
        found.append(tree)
        if len(found) == k:
            break
        adjacency: dict[int, list[int]] = {}
        for u, v in tree:
            adjacency.setdefault(u, []).append(v)
            adjacency.setdefault(v, []).append(u)
        now_in = set(forced_in)
        for edge in sorted(tree - forced_in):
            excluded = forced_out | {edge}
            swap = _best_replacement(weights, adjacency, edge, excluded)
            if swap is not None:
                new_tree = (tree - {edge}) | {swap}
                heapq.heappush(queue, (-total(new_tree), pushed, new_tree, frozenset(now_in), excluded))
                pushed += 1
            now_in.add(edge)
    return found


def _best_replacement(weights, adjacency, edge, excluded) -> tuple[int, int] | None:
    """The heaviest edge outside ``excluded`` that reconnects the tree cut at ``edge``."""
    u, v = edge
    side, stack = {u}, [u]  # the component of u once the edge is removed
    while stack:
        a = stack.pop()
        for b in adjacency[a]:
            if b not in side and (a, b) not in (edge, edge[::-1]):
                side.add(b)
                stack.append(b)
    inside = np.zeros(weights.shape[0], bool)
    inside[list(side)] = True
    rows, cols = np.flatnonzero(inside), np.flatnonzero(~inside)
    cut = weights[np.ix_(rows, cols)].copy()
    position = {int(c): j for j, c in enumerate(cols)}
    row_of = {int(r): i for i, r in enumerate(rows)}
    for a, b in excluded:
        if a in row_of and b in position:
            cut[row_of[a], position[b]] = -np.inf
        elif b in row_of and a in position:
            cut[row_of[b], position[a]] = -np.inf
    flat = int(np.argmax(cut))
    i, j = divmod(flat, cut.shape[1])
    if not np.isfinite(cut[i, j]):
        return None
    a, b = int(rows[i]), int(cols[j])
    return (min(a, b), max(a, b))


def _rooted_tree_region_graph(num_variables: int, edges: dict[int, list[int]],
                              root: int | None) -> RegionGraph:
    """The HCLT region graph of an undirected tree, oriented away from ``root`` (default: a centre)."""
    if root is None:
        root = _tree_centre(edges)
    children: dict[int, list[int]] = {v: [] for v in range(num_variables)}
    order, seen = [root], {root}
    for v in order:  # breadth-first orientation away from the root
        for u in edges[v]:
            if u not in seen:
                seen.add(u)
                children[v].append(u)
                order.append(u)
    return _tree_region_graph(num_variables, root, children)


def _tree_centre(edges: dict[int, list[int]]) -> int:
    """A vertex of minimum eccentricity: strip leaves layer by layer."""
    degree = {v: len(n) for v, n in edges.items()}
    remaining = set(edges)
    layer = [v for v, d in degree.items() if d <= 1]
    while len(remaining) > 2:
        remaining -= set(layer)
        next_layer = []
        for v in layer:
            for u in edges[v]:
                if u in remaining:
                    degree[u] -= 1
                    if degree[u] == 1:
                        next_layer.append(u)
        layer = next_layer
    return min(remaining)


def _tree_region_graph(num_variables: int, root: int, children: dict[int, list[int]]) -> RegionGraph:
    builder = _Builder()
    order = []  # depth-first, parents before children
    stack = [root]
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(children[v])
    scope: dict[int, list[int]] = {}
    for v in reversed(order):
        scope[v] = [v] + [u for c in children[v] for u in scope[c]]
    for v in order:
        region, _ = builder.region(scope[v])
        if children[v]:
            single, _ = builder.region([v])
            builder.partition(region, [single] + [builder.region(scope[c])[0] for c in children[v]])
    return builder.build(num_variables)


def linear_chain(num_variables: int, order: Sequence[int] | None = None) -> RegionGraph:
    """A linear chain: region ``{x_t, ..., x_T}`` splits into ``{x_t}`` and ``{x_{t+1}, ..., x_T}``.

    With CP layers the units of region ``t+1`` act as the hidden state of an HMM
    (or of a Markov chain when the input units are indicators).

    Args:
        num_variables: number of variables.
        order: the order of the variables along the chain (default ``0 .. V-1``).
    """
    num_variables = _check_positive(num_variables, "num_variables", 2)
    order = list(range(num_variables)) if order is None else [int(v) for v in order]
    if sorted(order) != list(range(num_variables)):
        raise ValueError(f"`order` must be a permutation of 0..{num_variables - 1}")
    children = {v: [] for v in order}
    for a, b in zip(order[:-1], order[1:], strict=True):
        children[a].append(b)
    return _tree_region_graph(num_variables, order[0], children)

"""Folding: a region graph plus layer choices become a static plan of folded layers.

The plan assigns every region a *stage* (its depth in the region graph). Stage
``d`` computes, as ONE folded inner layer, the product-then-sum units of every
partition of every region at depth ``d``; regions of that depth with several
partitions then get ONE folded mixing layer. Each layer reads its inputs by a
single gather from the outputs of earlier layers (output *groups*): group 0 holds
the leaf regions, stage ``d`` writes group ``2d - 1`` (inner) and ``2d`` (mixing).

The plan is pure numpy and hashable (by content), so it is a static field of the
jit-compiled :class:`circuits.Circuit`; only the parameters are traced.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np

from circuits.region_graph import RegionGraph
from probinf.validation import check_positive_int

__all__ = ["InnerStage", "MixingStage", "ReadPlan", "ScanSegment", "ScanPlan", "CircuitStructure",
           "LAYER_KINDS"]

#: Inner layer kinds: ``"cp"`` (Hadamard product then sum) and ``"tucker"``
#: (Kronecker product then sum).
LAYER_KINDS = ("cp", "tucker")


@dataclass(frozen=True, eq=False)
class InnerStage:
    """One folded inner layer.

    Attributes:
        sources: output groups read, concatenated in this order (plus one padding row).
        index: ``(F, A)`` rows of that concatenation feeding each fold's children;
            the padding row (index = total rows) stands for an absent child.
        num_outputs: units per fold (``K``, or 1 at the root).
        partitions: ``(region, partition_number)`` computed by each fold, where
            ``partition_number`` indexes ``RegionGraph.partitions``.
    """

    sources: tuple[int, ...]
    index: np.ndarray
    num_outputs: int
    partitions: tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class MixingStage:
    """One folded mixing layer over the inner outputs of the same stage.

    Attributes:
        index: ``(M, P)`` rows of the stage's inner output (padding row = F).
        valid: ``(M, P)`` True where the entry is a real partition.
        regions: the region computed by each fold.
    """

    index: np.ndarray
    valid: np.ndarray
    regions: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class ReadPlan:
    """Each output group read by several stages, cut once into the rows each stage reads.

    A stage that gathers a few rows from a large group (the leaf regions, read by
    nearly every stage of a deep tree) would otherwise get, in the backward pass, a
    cotangent the size of the whole group per child column: quadratic in the depth.
    Cut once, each stage's gathers (and their transposes) are the size of its own part.
    The stage that reads most of a group's rows reads the whole group, uncut.

    Attributes:
        splits: group -> ``(rows, consumers, sizes)``: the group's rows taken for each
            cut consumer in turn (a row may appear for several), those stages, and the
            number of rows each one gets.
        parts: per stage, per source, the ``(group, part)`` it reads, where ``part`` is
            the position of the stage in that group's cut consumers, or None for the
            whole group (a group's only consumer, or the one that reads most of it).
        index: per stage, ``InnerStage.index`` renumbered into the concatenation of its parts.
    """

    splits: dict[int, tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]]
    parts: tuple[tuple[tuple[int, int | None], ...], ...]
    index: tuple[np.ndarray, ...]


@dataclass(frozen=True, eq=False)
class ScanSegment:
    """A run of consecutive stages of one padded shape, evaluated by one ``lax.scan``.

    Attributes:
        stages: the stages, in order.
        num_folds: ``F``, folds per stage after padding (the run's largest stage).
        children: ``(n, F, A)`` buffer rows of each fold's children; row 0 (zeros, the
            product's identity) stands for an absent child and feeds the padding folds.
        outputs: ``(n,)`` the first buffer row of each stage's inner output.
        mixing: ``(n, M, P)`` rows of the stage's inner output read by each mixing unit
            (padding: row 0, with log-weight ``-inf``), or None when no stage mixes.
        mix_outputs: ``(n,)`` the first buffer row of each stage's mixing output, or None.
        mix_counts: ``(n,)`` the stage's real mixing units (the rest are padding), or None.
    """

    stages: tuple[int, ...]
    num_folds: int
    children: np.ndarray
    outputs: np.ndarray
    mixing: np.ndarray | None
    mix_outputs: np.ndarray | None
    mix_counts: np.ndarray | None


@dataclass(frozen=True, eq=False)
class ScanPlan:
    """The upward and top-down passes of a deep circuit as a few scans over one buffer of rows.

    Every output group has a fixed block of rows in one ``(num_rows, B, K)`` buffer (row
    0 holds zeros; the leaves follow). The stages below the root are cut into runs whose
    fold counts round up to the same power of two (:class:`ScanSegment`), padded to the
    run's largest stage; each run is one ``lax.scan``, so the compiled program grows with
    the number of runs, not with the depth. A padded stage writes its extra folds past its own rows, into rows of
    groups computed later (which overwrite them), or into the slack at the end.

    Attributes:
        offsets: the first buffer row of every output group (size 0 for absent ones).
        num_rows: rows of the buffer, slack included.
        segments: the runs, bottom-up; the root stage is evaluated after them.
        root_children: ``(F, A)`` buffer rows of the root stage's children.
    """

    offsets: tuple[int, ...]
    num_rows: int
    segments: tuple[ScanSegment, ...]
    root_children: np.ndarray


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


class CircuitStructure:
    """The static plan of a compiled circuit (see the module docstring).

    Attributes:
        region_graph: the region graph it was built from.
        num_variables: ``V``.
        num_units: ``K``, units per region (the root has one).
        layer_kind: ``"cp"`` or ``"tucker"``.
        slot_variable: ``(S,)`` the variable of each input slot (one per leaf-region variable).
        slot_leaf: ``(S,)`` the leaf row of each slot.
        leaf_slots: ``(L, n)`` the slots of each leaf region, padded with ``S``.
        leaf_regions: ``(L,)`` region index of each leaf row.
        stages: tuple of ``(InnerStage, MixingStage | None)``.
        group_sizes: number of rows in each output group.
        location: region -> ``(group, row)`` of its output.
    """

    def __init__(self, region_graph: RegionGraph, num_units: int, layer_kind: str):
        if layer_kind not in LAYER_KINDS:
            raise ValueError(f"`layer` must be one of {LAYER_KINDS}, got {layer_kind!r}")
        num_units = check_positive_int(num_units, "num_units")
        rg = region_graph
        if layer_kind == "tucker":
            for number, p in enumerate(rg.partitions):
                if len(p.children) != 2:
                    raise ValueError(
                        f"region {p.region} {rg.regions[p.region]}: partition {number} has "
                        f"{len(p.children)} children; Tucker layers need binary partitions "
                        "(use layer='cp' for wider ones)"
                    )
        self.region_graph = rg
        self.num_variables = rg.num_variables
        self.num_units = int(num_units)
        self.layer_kind = layer_kind
        self._build()
        self._digest = self._compute_digest()

    def _build(self) -> None:
        rg = self.region_graph
        leaves = rg.leaves
        slot_variable, slot_leaf = [], []
        for row, region in enumerate(leaves):
            for v in rg.regions[region]:
                slot_variable.append(v)
                slot_leaf.append(row)
        self.slot_variable = np.asarray(slot_variable, np.int32)
        self.slot_leaf = np.asarray(slot_leaf, np.int32)
        num_slots = len(slot_variable)
        width = max(len(rg.regions[r]) for r in leaves)
        leaf_slots = np.full((len(leaves), width), num_slots, np.int32)
        for s, row in enumerate(slot_leaf):
            leaf_slots[row, np.argmax(leaf_slots[row] == num_slots)] = s
        self.leaf_slots = leaf_slots
        self.leaf_regions = np.asarray(leaves, np.int32)

        location: dict[int, tuple[int, int]] = {r: (0, row) for row, r in enumerate(leaves)}
        group_sizes = [len(leaves)]
        stages = []
        max_depth = rg.depth[rg.root]
        partitions_of = rg.partitions_of
        number_of = {id(p): n for n, p in enumerate(rg.partitions)}
        for depth in range(1, max_depth + 1):
            regions = [r for r in range(len(rg.regions)) if rg.depth[r] == depth]
            inner_group, mixing_group = 2 * depth - 1, 2 * depth
            folds = [(r, p) for r in regions for p in partitions_of[r]]
            sources = sorted({location[c][0] for _, p in folds for c in p.children})
            offsets, total = {}, 0
            for g in sources:
                offsets[g] = total
                total += group_sizes[g]
            arity = max(len(p.children) for _, p in folds)
            index = np.full((len(folds), arity), total, np.int32)
            for f, (_, p) in enumerate(folds):
                for a, c in enumerate(p.children):
                    g, row = location[c]
                    index[f, a] = offsets[g] + row
            is_root = depth == max_depth
            inner = InnerStage(
                sources=tuple(sources), index=index,
                num_outputs=1 if is_root else self.num_units,
                partitions=tuple((r, number_of[id(p)]) for r, p in folds),
            )
            group_sizes.append(len(folds))
            fold_of = {}
            for f, (r, _) in enumerate(folds):
                fold_of.setdefault(r, []).append(f)
            mixed = [r for r in regions if len(fold_of[r]) > 1]
            mixing = None
            if mixed:
                width_p = max(len(fold_of[r]) for r in mixed)
                mix_index = np.full((len(mixed), width_p), len(folds), np.int32)
                valid = np.zeros((len(mixed), width_p), bool)
                for m, r in enumerate(mixed):
                    mix_index[m, : len(fold_of[r])] = fold_of[r]
                    valid[m, : len(fold_of[r])] = True
                mixing = MixingStage(index=mix_index, valid=valid, regions=tuple(mixed))
                for m, r in enumerate(mixed):
                    location[r] = (mixing_group, m)
            group_sizes.append(len(mixed))
            for r in regions:
                if len(fold_of[r]) == 1:
                    location[r] = (inner_group, fold_of[r][0])
            stages.append((inner, mixing))
        self.stages = tuple(stages)
        self.group_sizes = tuple(group_sizes)
        self.location = location

    @functools.cached_property
    def read_plan(self) -> ReadPlan:
        """How the upward pass cuts shared groups (see :class:`ReadPlan`)."""
        consumers: dict[int, list[int]] = {}
        for s, (inner, _) in enumerate(self.stages):
            for g in inner.sources:
                consumers.setdefault(g, []).append(s)
        rows_read: dict[tuple[int, int], np.ndarray] = {}  # (group, stage) -> sorted rows
        for s, (inner, _) in enumerate(self.stages):
            offset = 0
            for g in inner.sources:
                local = inner.index - offset
                inside = (local >= 0) & (local < self.group_sizes[g])
                rows_read[g, s] = np.unique(local[inside])
                offset += self.group_sizes[g]
        splits = {}
        for g, stages in consumers.items():
            if len(stages) > 1:
                # The stage reading most rows keeps the whole group (as with one consumer):
                # cutting its rows too would copy most of the group in the forward pass.
                main = max(stages, key=lambda s: len(rows_read[g, s]))
                cut = [s for s in stages if s != main]
                rows = [rows_read[g, s] for s in cut]
                splits[g] = (np.concatenate(rows), tuple(cut), tuple(len(r) for r in rows))
        parts, index = [], []
        for s, (inner, _) in enumerate(self.stages):
            new_index = np.empty_like(inner.index)
            padding = np.ones(inner.index.shape, bool)
            offset, new_offset, stage_parts = 0, 0, []
            for g in inner.sources:
                local = inner.index - offset
                inside = (local >= 0) & (local < self.group_sizes[g])
                if g in splits and s in splits[g][1]:
                    rows = rows_read[g, s]
                    new_index[inside] = new_offset + np.searchsorted(rows, local[inside])
                    stage_parts.append((g, splits[g][1].index(s)))
                    new_offset += len(rows)
                else:
                    new_index[inside] = new_offset + local[inside]
                    stage_parts.append((g, None))
                    new_offset += self.group_sizes[g]
                padding &= ~inside
                offset += self.group_sizes[g]
            new_index[padding] = new_offset
            parts.append(tuple(stage_parts))
            index.append(new_index)
        return ReadPlan(splits=splits, parts=tuple(parts), index=tuple(index))

    @functools.cached_property
    def scan_plan(self) -> ScanPlan:
        """How the scanned upward pass lays out and runs the stages (see :class:`ScanPlan`)."""
        sizes = self.group_sizes
        offsets = tuple(1 + sum(sizes[:g]) for g in range(len(sizes)))
        width = max((m.index.shape[1] for _, m in self.stages if m is not None), default=1)

        def global_rows(inner, arity):
            """The stage's child index as buffer rows, ``arity`` columns (padding -> row 0)."""
            rows = np.zeros((inner.index.shape[0], arity), np.int32)
            start = 0
            for g in inner.sources:
                local = inner.index - start
                inside = (local >= 0) & (local < sizes[g])
                rows[:, :inner.index.shape[1]][inside] = offsets[g] + local[inside]
                start += sizes[g]
            return rows

        def shape_key(s):
            inner, mixing = self.stages[s]
            mixed = None if mixing is None else _power_of_two_at_least(mixing.index.shape[0])
            return _power_of_two_at_least(inner.index.shape[0]), mixed

        runs: list[list[int]] = []
        for s in range(len(self.stages) - 1):  # the root stage (one output unit) runs apart
            if runs and shape_key(runs[-1][-1]) == shape_key(s):
                runs[-1].append(s)
            else:
                runs.append([s])
        segments, slack = [], 1
        for run in runs:
            # Padded to the run's largest stage, not to the power of two that groups them.
            num_folds = max(self.stages[s][0].index.shape[0] for s in run)
            mixed_counts = [self.stages[s][1].index.shape[0] for s in run
                            if self.stages[s][1] is not None]
            num_mixed = max(mixed_counts) if mixed_counts else None  # all of a run mix, or none
            arity = max(self.stages[s][0].index.shape[1] for s in run)
            children = np.zeros((len(run), num_folds, arity), np.int32)
            outputs = np.array([offsets[2 * s + 1] for s in run], np.int32)
            slack = max(slack, num_folds, num_mixed or 0)
            for n, s in enumerate(run):
                rows = global_rows(self.stages[s][0], arity)
                children[n, :rows.shape[0]] = rows
            mixing = mix_outputs = mix_counts = None
            if num_mixed is not None:
                mixing = np.zeros((len(run), num_mixed, width), np.int32)
                for n, s in enumerate(run):
                    index = self.stages[s][1].index
                    valid = self.stages[s][1].valid
                    mixing[n, :index.shape[0], :index.shape[1]] = np.where(valid, index, 0)
                mix_outputs = np.array([offsets[2 * s + 2] for s in run], np.int32)
                mix_counts = np.array([sizes[2 * s + 2] for s in run], np.int32)
            segments.append(ScanSegment(tuple(run), num_folds, children, outputs, mixing,
                                        mix_outputs, mix_counts))
        return ScanPlan(offsets=offsets, num_rows=1 + sum(sizes) + slack,
                        segments=tuple(segments),
                        root_children=global_rows(self.stages[-1][0],
                                                  self.stages[-1][0].index.shape[1]))

    # ----------------------------------------------------------------- sizes
    @property
    def num_slots(self) -> int:
        return len(self.slot_variable)

    @property
    def inner_width(self) -> int:
        """Inputs of each inner sum: ``K`` (CP) or ``K^2`` (Tucker)."""
        return self.num_units if self.layer_kind == "cp" else self.num_units**2

    @property
    def root_location(self) -> tuple[int, int]:
        return self.location[self.region_graph.root]

    def sum_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """Shapes ``(F, O, J)`` of the inner sum weights, one per stage."""
        return tuple((s.index.shape[0], s.num_outputs, self.inner_width) for s, _ in self.stages)

    def mixing_shapes(self) -> tuple[tuple[int, int, int] | None, ...]:
        """Shapes ``(M, O, P)`` of the mixing weights, one per stage (None: no mixing)."""
        return tuple(
            None if m is None else (m.index.shape[0], s.num_outputs, m.index.shape[1])
            for s, m in self.stages
        )

    def num_parameters(self) -> int:
        """Number of sum weights (the input layer's are counted by the circuit)."""
        total = sum(int(np.prod(s)) for s in self.sum_shapes())
        total += sum(int(np.prod(s)) for s in self.mixing_shapes() if s is not None)
        return total

    # ------------------------------------------------------ static hashing
    def _compute_digest(self) -> str:
        h = hashlib.sha256()
        h.update(repr((self.num_variables, self.num_units, self.layer_kind)).encode())
        for array in (self.slot_variable, self.slot_leaf, self.leaf_slots):
            h.update(array.tobytes())
        for inner, mixing in self.stages:
            h.update(repr((inner.sources, inner.num_outputs, inner.index.shape)).encode())
            h.update(inner.index.tobytes())
            if mixing is not None:
                h.update(mixing.index.tobytes() + mixing.valid.tobytes())
        return h.hexdigest()

    def __hash__(self) -> int:
        return hash(self._digest)

    def __eq__(self, other) -> bool:
        return isinstance(other, CircuitStructure) and other._digest == self._digest

    def __repr__(self) -> str:
        return (f"CircuitStructure(variables={self.num_variables}, units={self.num_units}, "
                f"layer={self.layer_kind!r}, stages={len(self.stages)}, slots={self.num_slots})")

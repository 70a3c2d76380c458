"""Blocks and ideals: the lattice the contiguous dynamic program runs over.

**The pipeline structure.** Contiguity (module docstring of :mod:`placement.pipeline.instance`) is
defined on the edges between forward nodes; a backward node follows its colocation group (its colour
class). Operator-level training graphs also have *backward-only* units: colocation units without a
forward node (a colour class of backward nodes only, or an uncoloured backward node). Such a unit has no
forward edge, so the forward structure leaves it free: every one of them doubles the number of ideals
(32 of them in the NeurIPS 2020 ``bert_L-12_training`` operator graph), and no pipeline order says where
its gradient work runs. :func:`~placement.pipeline.instance.pipeline_edges` therefore adds, for every
edge between two backward nodes that touches a backward-only unit, the *mirrored* edge: a backward edge ``a -> b`` carries a gradient
from ``a`` to ``b`` (towards the inputs), so in pipeline order ``b``'s unit comes no later than ``a``'s,
as the forward nodes of two layers ``b -> a`` would. This is how the NeurIPS 2020 authors' DP treats
such units (an artificial forward node mirroring the backward one); it is a constraint a pipelined
training step needs anyway (a stage's backward pass receives gradients only from later stages).
Backward edges between units that have forward nodes, and edges from forward to backward nodes (saved
activations, read in the backward pass whichever stage holds them), add nothing. A backward-only unit
with no edge to another backward node stays free and still doubles the ideals, as in the authors' DP;
none of the published operator files has one. Graphs without backward-only units (every inference
graph, the layer-level training files) get exactly the forward structure.
:func:`~placement.pipeline.instance.is_contiguous` checks a split against these edges; the DP, the contiguous CP-SAT model and exhaustive search all use
them, so their optima are of the same problem.

**Blocks.** Nodes of one colocation group form a *unit*; units joined by the pipeline edges form the
unit graph. A cycle of units (two colocated nodes with a path between them through a third) must sit in
one part of any contiguous split, so the strongly connected components of the unit graph are merged
into *blocks*; the block graph is a DAG, numbered in a deterministic topological order. In the NeurIPS
2020 layer-level training files every block is one colour class: a layer's forward node and its
backward node.

**Ideals.** An ideal is a set of blocks closed under predecessors. Contiguous splits are exactly the
chains of ideals (module docstring of :mod:`~placement.pipeline.instance`). :func:`enumerate_ideals`
lists all of them breadth-first from the empty ideal, adding one block whose predecessors are all in
(each ideal of size ``k+1`` is an ideal of size ``k`` plus such a block, so the search finds every
ideal, and a set per level removes duplicates), as the NeurIPS 2020 paper does. Their number is small
for chain-like networks (ResNet-50: 242, BERT-24: 39; the operator-level training graphs of BERT and
ResNet-50, 600 to 2,012 nodes: 258 to 3,776) but grows as the product of the branch lengths of
parallel branches (GNMT: 7,874; Inception-v3: 221,566), so the enumeration stops at a limit.
:func:`chunk_blocks` and :func:`prefix_ideals` then offer the prefixes of one topological order of at
most ``chunks`` runs of consecutive blocks instead: every chain of those is still a contiguous split,
but not every contiguous split is such a chain, so the DP over them gives an upper bound, not the
optimum.

Ideals are Python integers used as bitsets over blocks (bit ``b``: block ``b``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx

from placement.errors import TooManyIdeals
from placement.pipeline.instance import (
    ThroughputInstance,
    colocation_units,
    pipeline_edges,
)


@dataclass
class Blocks:
    """Blocks of an instance (module docstring).

    Attributes:
        block_of: the block of every node.
        members: the nodes of every block, ascending.
        preds: bitmask of each block's predecessor blocks in the block DAG.
        succs: each block's successor blocks.
    """

    block_of: list[int]
    members: list[list[int]]
    preds: list[int]
    succs: list[list[int]]

    def __len__(self) -> int:
        return len(self.members)

    def nodes_of(self, mask: int) -> list[int]:
        """The nodes of the blocks in bitmask ``mask``, ascending."""
        out: list[int] = []
        b = 0
        while mask:
            if mask & 1:
                out.extend(self.members[b])
            mask >>= 1
            b += 1
        return sorted(out)


def structure_blocks(inst: ThroughputInstance, edges: Sequence[tuple[int, int]] | None = None) -> Blocks:
    """Merge colocation units, then units strongly connected by
    :func:`~placement.pipeline.instance.pipeline_edges` (or ``edges``:
    ``inst.structure_edges()`` gives the forward-only lattice, to count what the mirrored edges save),
    into blocks in topological order."""
    unit = colocation_units(inst)
    g = nx.DiGraph()
    g.add_nodes_from(sorted(set(unit)))
    for u, w in pipeline_edges(inst) if edges is None else edges:
        if unit[u] != unit[w]:
            g.add_edge(unit[u], unit[w])
    cond = nx.condensation(g)
    # Name each component by its smallest unit, then order topologically, ties by that name.
    comp_key = {c: min(cond.nodes[c]["members"]) for c in cond.nodes}
    order = list(nx.lexicographical_topological_sort(cond, key=comp_key.__getitem__))
    index = {c: i for i, c in enumerate(order)}
    comp_of_unit = cond.graph["mapping"]
    block_of = [index[comp_of_unit[unit[v]]] for v in range(inst.n)]
    members: list[list[int]] = [[] for _ in order]
    for v, b in enumerate(block_of):
        members[b].append(v)
    preds = [0] * len(order)
    succs: list[list[int]] = [[] for _ in order]
    for a, c in cond.edges():
        ia, ic = index[a], index[c]
        preds[ic] |= 1 << ia
        succs[ia].append(ic)
    for s in succs:
        s.sort()
    return Blocks(block_of, members, preds, succs)


def enumerate_ideals(blocks: Blocks, max_ideals: int = 50_000) -> list[int]:
    """All ideals of the block DAG, by size (then by value), the empty one first and the full one last.

    Raises :class:`TooManyIdeals` once more than ``max_ideals`` are found.
    """
    nb = len(blocks)
    preds, succs = blocks.preds, blocks.succs
    sources = 0
    for b in range(nb):
        if preds[b] == 0:
            sources |= 1 << b
    ideals = [0]
    level: dict[int, int] = {0: sources}  # ideal -> bitmask of blocks that may be added to it
    for _ in range(nb):
        nxt: dict[int, int] = {}
        for ideal, addable in level.items():
            rest = addable
            while rest:
                low = rest & -rest
                b = low.bit_length() - 1
                rest ^= low
                bigger = ideal | low
                if bigger in nxt:
                    continue
                more = addable & ~low
                for s in succs[b]:
                    if preds[s] & ~bigger == 0:
                        more |= 1 << s
                nxt[bigger] = more
        ideals.extend(sorted(nxt))
        if len(ideals) > max_ideals:
            raise TooManyIdeals(len(ideals), max_ideals)
        level = nxt
    return ideals


def chunk_blocks(blocks: Blocks, weights: list[float], chunks: int) -> Blocks:
    """Blocks merged into at most ``chunks`` runs of consecutive blocks of about equal weight.

    The runs follow the blocks' topological order, so the runs form a DAG in that order and the
    prefixes of the runs are ideals of the original blocks (module docstring).
    """
    nb = len(blocks)
    if sum(weights) <= 0:
        weights = [1.0] * nb
    step = sum(weights) / max(1, chunks)
    run_of = [0] * nb
    run, acc = 0, 0.0
    for b in range(nb):
        run_of[b] = run
        acc += weights[b]
        if nb <= chunks or (acc >= step * (run + 1) * (1 - 1e-12) and run < chunks - 1):
            run += 1
    count = max(run_of) + 1 if nb else 0
    members: list[list[int]] = [[] for _ in range(count)]
    for b, r in enumerate(run_of):
        members[r].extend(blocks.members[b])
    preds = [0] * count
    succs: list[set[int]] = [set() for _ in range(count)]
    for b in range(nb):
        for c in blocks.succs[b]:
            if run_of[c] != run_of[b]:
                preds[run_of[c]] |= 1 << run_of[b]
                succs[run_of[b]].add(run_of[c])
    block_of = [0] * len(blocks.block_of)
    for r, nodes in enumerate(members):
        nodes.sort()
        for v in nodes:
            block_of[v] = r
    return Blocks(block_of, members, preds, [sorted(x) for x in succs])


def prefix_ideals(count: int) -> list[int]:
    """The prefixes ``{0..c-1}`` of ``count`` blocks in topological order: ideals, empty one first."""
    return [(1 << c) - 1 for c in range(count + 1)]

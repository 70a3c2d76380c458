r"""The exact contiguous split: dynamic programming over ideals (NeurIPS 2020; PipeDream's DP generalised).

For an ideal :math:`I` (see :mod:`placement.pipeline.ideals`) and a vector :math:`s` of device counts
per class, :math:`D[I, s]` is the least max-load of a contiguous split of :math:`I` using at most
:math:`s_t` devices of class :math:`t`:

.. math::

    D[\emptyset, s] &= 0\\
    D[I, s] &= \min_{J \subsetneq I \text{ ideal}}\ \min_{t,\ 1 \le r \le s_t}\
               \max\bigl(D[J, s - r e_t],\ \mathrm{load}_{t,r}(I \setminus J)\bigr)

where :math:`\mathrm{load}_{t,r}` is the replicated load of :mod:`placement.pipeline.instance`
(:math:`\infty` when :math:`I \setminus J` does not fit a device of class :math:`t` or holds a node not
allowed there; :math:`r = 1` unless the instance allows replication). "At most" needs no extra term:
:math:`D[\emptyset, \cdot] = 0` and :math:`D[J, \cdot]` is non-increasing in :math:`s` by induction.
The answer is :math:`D[V, n]`; the argmins give the chain of ideals, i.e. the stages in pipeline order.
This is the recurrence of Tarnawski et al. (NeurIPS 2020) for accelerators and CPUs, with PipeDream's
replicated stages (Narayanan et al., SOSP 2019) added through :math:`r`.

Evaluation. Ideals are sorted by size, so every :math:`J \subsetneq I` comes before :math:`I`. For each
:math:`I` all its sub-ideals :math:`J` are found at once (bitset test on packed words) and the loads of
all differences :math:`I \setminus J` are computed as vectors: compute, memory and parameter sums as
differences of per-ideal prefix sums. Communication: for a node :math:`u` with a successor in another
block, its *span* :math:`\sigma(u)` is the set of blocks of :math:`u` and of its successors; :math:`u`
crosses the boundary of a part :math:`S` iff :math:`\sigma(u)` meets :math:`S` without lying inside it.
Let :math:`\mathrm{cut}(J)` be the communication of ideal :math:`J` as a part and :math:`B(I)` the nodes
whose span meets :math:`I` without lying inside it (the tensors crossing :math:`I`'s boundary, a few per
ideal in a DNN). For :math:`J \subseteq I`, a node whose span lies inside :math:`I` crosses
:math:`I \setminus J` iff it crosses :math:`J`; one whose span misses :math:`I` crosses neither; so

.. math::

    \mathrm{comm}(I \setminus J) = \mathrm{cut}(J) + \sum_{u \in B(I)} c_u
        \bigl([\sigma(u) \cap J = \emptyset] - [\sigma(u) \cap I \subseteq J]\bigr)

(a node of :math:`B(I)` crosses :math:`I \setminus J` iff :math:`\sigma(u) \cap I \not\subseteq J`, and
crosses :math:`J` iff :math:`\sigma(u) \cap J \neq \emptyset`), computed exactly from one per-ideal table,
:math:`|\sigma(u) \cap I|` counted in blocks. The work per pair is :math:`O(|B(I)| + \text{states} \cdot
\text{options})`, independent of the size of the graph, which is what makes operator graphs of 2,000
nodes take seconds. The exact DP first runs the DP over prefixes (below) and skips every pair whose
compute alone, on any class with the most replicas, exceeds that split's max-load: no optimal chain
uses it. A lattice whose tables (:data:`MAX_TABLE_CELLS`) or estimated work (:data:`MAX_WORK`) are too
large is refused as :class:`~placement.pipeline.ideals.TooManyIdeals` before the loop, and the loop stops
(:class:`DPTimeout`) once the pairs it has examined, each counted at the estimated work of a pair
(:func:`_pair_work`), pass a caller's ``max_work``, so a caller can fall back to the prefix lattice. Counted
work, not the clock, makes the outcome the same on a quiet and on a loaded machine; a wall-clock
``deadline`` remains as a safety net (its message says the deadline was passed, for the caller to report).

When no split fits in memory, the same recurrence with :math:`\max_S (\mathrm{mem}(S) - M_t)` as the
stage cost finds the least overflow any contiguous split must have, and :class:`InfeasibleError` names it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from placement.constraints import InfeasibleError
from placement.errors import DPTimeout
from placement.pipeline.ideals import (
    Blocks,
    TooManyIdeals,
    chunk_blocks,
    enumerate_ideals,
    prefix_ideals,
    structure_blocks,
)
from placement.pipeline.instance import (
    Partition,
    ThroughputInstance,
    format_bytes,
    make_part,
    max_load,
)

MAX_TABLE_CELLS = 30_000_000  # ideals x (blocks or nodes that may cross): the per-ideal tables
# Pairs of ideals (estimated as N^2/2) x (bitset words + boundary nodes + states x options); 1.8e8 of
# them took 2-4 s (the 1,071-node bert_l-6 training graph), so the limit is about a minute.
MAX_WORK = 3e9
#: Work of the exact DP per nominal second (the units of :data:`MAX_WORK`, counted on the pairs examined):
#: 2.2-2.4e8 per CPU second measured on GNMT's 7,874 ideals (pcie-4gpu, dgx1-v100) on this project's
#: 2-core machine; smaller lattices run slower per pair but take milliseconds.
WORK_PER_SECOND = 2e8
#: What :class:`DPTimeout`'s message says when the wall-clock ``deadline``, not the counted work, stopped the DP.
PASSED_DEADLINE = "passed its deadline"


@dataclass
class _Tables:
    """Per-ideal sums and the communication tables of the module docstring."""

    inst: ThroughputInstance
    blocks: Blocks
    ideals: list[int]
    exhaustive: bool
    words: np.ndarray  # N x W uint64: the ideals as packed bitsets
    compute: np.ndarray  # N x T: sum of finite loads per class
    forbidden: np.ndarray  # N x T: number of nodes not allowed on the class
    memory: np.ndarray  # N
    params: np.ndarray  # N
    comm_cost: np.ndarray  # |R|: c_u of the nodes that may cross
    span_in: np.ndarray  # N x |R| int32: blocks of each node's span inside each ideal
    span_size: np.ndarray  # |R| int32: blocks of each node's span
    cut: np.ndarray  # N: communication of each ideal as a part

    @property
    def size(self) -> int:
        return len(self.ideals)

    def subsets(self, i: int) -> np.ndarray:
        """Indices ``j < i`` of the ideals contained in ideal ``i``."""
        if not self.exhaustive:
            return np.arange(i)
        w = self.words
        return np.flatnonzero(~np.any(w[:i] & ~w[i], axis=1))

    def least_load(self, i: int, js: np.ndarray, options: list[tuple[int, int]]) -> np.ndarray:
        """A lower bound on the stage cost of ``I_i \\ I_j`` over ``options``: its compute divided by the
        replicas, ``inf`` where it holds a node the class may not run or does not fit the class."""
        mem = self.memory[i] - self.memory[js]
        out = np.full(len(js), np.inf)
        for t, r in options:
            cls = self.inst.classes[t]
            ok = (self.forbidden[i, t] - self.forbidden[js, t] <= 0) & (mem <= cls.capacity * (1 + 1e-12))
            out = np.minimum(out, np.where(ok, (self.compute[i, t] - self.compute[js, t]) / r, np.inf))
        return out

    def comm(self, i: int, js: np.ndarray) -> np.ndarray:
        """Communication of ``I_i \\ I_j`` for every ``j`` in ``js``: ``cut(J)`` corrected on the boundary
        of ``I`` (module docstring)."""
        row = self.span_in[i]
        boundary = np.flatnonzero((row > 0) & (row < self.span_size))
        if boundary.size == 0:
            return self.cut[js].copy()
        inside_j = self.span_in[np.ix_(js, boundary)]
        costs = self.comm_cost[boundary]
        return self.cut[js] + (inside_j == 0) @ costs - (inside_j == row[boundary]) @ costs


def _tables(inst: ThroughputInstance, blocks: Blocks, ideals: list[int], exhaustive: bool) -> _Tables:
    n, nb, k = inst.n, len(blocks), len(inst.classes)
    words_per = max(1, (nb + 63) // 64)
    mask = (1 << 64) - 1
    words = np.array([[(x >> (64 * q)) & mask for q in range(words_per)] for x in ideals], dtype=np.uint64)
    member = np.unpackbits(words.astype("<u8").view(np.uint8), axis=1, bitorder="little")[:, :nb].astype(np.float64)
    load = np.array(inst.load, dtype=np.float64).reshape(n, k)
    finite = np.where(np.isinf(load), 0.0, load)
    per_block = np.zeros((nb, k))
    forb_block = np.zeros((nb, k))
    mem_block = np.zeros(nb)
    par_block = np.zeros(nb)
    np.add.at(per_block, blocks.block_of, finite)
    np.add.at(forb_block, blocks.block_of, np.isinf(load).astype(np.float64))
    np.add.at(mem_block, blocks.block_of, np.asarray(inst.memory, dtype=np.float64))
    np.add.at(par_block, blocks.block_of, np.asarray(inst.param_bytes, dtype=np.float64))
    # Nodes whose output may cross a boundary (a successor in another block, a cost) and their spans.
    span: dict[int, set[int]] = {}
    for u, w in inst.edges:
        bu, bw = blocks.block_of[u], blocks.block_of[w]
        if bu != bw and inst.comm[u] > 0:
            span.setdefault(u, {bu}).add(bw)
    rel = sorted(span)
    incidence = np.zeros((nb, len(rel)), dtype=np.float32)
    for j, u in enumerate(rel):
        incidence[sorted(span[u]), j] = 1.0
    span_in = np.rint(member.astype(np.float32) @ incidence).astype(np.int32)
    span_size = incidence.sum(axis=0).astype(np.int32)
    comm_cost = np.array([inst.comm[u] for u in rel], dtype=np.float64)
    return _Tables(
        inst=inst,
        blocks=blocks,
        ideals=ideals,
        exhaustive=exhaustive,
        words=words,
        compute=member @ per_block,
        forbidden=np.rint(member @ forb_block),
        memory=member @ mem_block,
        params=member @ par_block,
        comm_cost=comm_cost,
        span_in=span_in,
        span_size=span_size,
        cut=((span_in > 0) & (span_in < span_size)) @ comm_cost,
    )


# (t, r) -> vector over js of the stage cost of I_i \ I_j on r devices of class t.
_StageCost = Callable[[int, np.ndarray], dict[tuple[int, int], np.ndarray]]


def _options(inst: ThroughputInstance, replication: bool) -> list[tuple[int, int]]:
    return [(t, r) for t, c in enumerate(inst.classes) for r in range(1, (c.count if replication else 1) + 1)]


def _run(
    tab: _Tables,
    cost: _StageCost,
    options: list[tuple[int, int]],
    deadline: float | None,
    limit: float = math.inf,
    max_work: float = math.inf,
):
    """The recurrence of the module docstring; returns the value and argmin tables, the strides of the
    states, the pairs solved and the work counted.

    Pairs whose stage costs more than ``limit`` on every option however it is replicated (compute alone,
    :meth:`_Tables.least_load`) or fits no class are skipped before their communication is computed.
    Every pair examined counts :func:`_pair_work`; past ``max_work`` of them, :class:`DPTimeout`.
    """
    counts = [c.count for c in tab.inst.classes]
    strides = [1] * len(counts)
    for t in range(len(counts) - 2, -1, -1):
        strides[t] = strides[t + 1] * (counts[t + 1] + 1)
    states = strides[0] * (counts[0] + 1)
    per_state = np.array(np.unravel_index(np.arange(states), [c + 1 for c in counts])).T  # states x T
    valid = {(t, r): np.flatnonzero(per_state[:, t] >= r) for t, r in options}
    n_ideals = tab.size
    value = np.full((n_ideals, states), np.inf)
    value[0] = 0.0
    arg_j = np.full((n_ideals, states), -1, dtype=np.int64)
    arg_o = np.full((n_ideals, states), -1, dtype=np.int16)
    pairs = 0
    per_pair = _pair_work(tab, options)
    work = 0.0
    for i in range(1, n_ideals):
        if deadline is not None and (i & 63) == 0 and time.perf_counter() > deadline:
            raise DPTimeout(f"the DP over {n_ideals} ideals {PASSED_DEADLINE} at ideal {i}")
        js = tab.subsets(i)
        work += len(js) * per_pair
        if work > max_work:
            raise DPTimeout(
                f"the DP over {n_ideals} ideals spent its work budget ({max_work:.1e} steps) at ideal {i}"
            )
        if limit != math.inf:
            js = js[tab.least_load(i, js, options) <= limit]
            if js.size == 0:  # every stage ending at I costs more than the limit: D[I, .] stays inf
                continue
        pairs += len(js)
        stage = cost(i, js)
        prev_all = value[js]
        best = value[i]
        for o, (t, r) in enumerate(options):
            loads = stage[(t, r)]
            if not np.isfinite(loads).any():
                continue
            dst = valid[(t, r)]
            cand = np.maximum(prev_all[:, dst - r * strides[t]], loads[:, None])
            pick = cand.argmin(axis=0)
            got = cand[pick, np.arange(len(dst))]
            better = got < best[dst]
            if better.any():
                where = dst[better]
                best[where] = got[better]
                arg_j[i, where] = js[pick[better]]
                arg_o[i, where] = o
    return value, arg_j, arg_o, strides, pairs, work


def _chain(tab: _Tables, arg_j, arg_o, strides, options) -> list[tuple[int, int, int]]:
    """Walk the argmins back from the full ideal: ``(ideal mask of the stage, class, replicas)`` in order."""
    i = tab.size - 1
    s = sum(c.count * st for c, st in zip(tab.inst.classes, strides))
    stages = []
    while i != 0:
        j, o = int(arg_j[i, s]), int(arg_o[i, s])
        t, r = options[o]
        stages.append((tab.ideals[i] & ~tab.ideals[j], t, r))
        i, s = j, s - r * strides[t]
    stages.reverse()
    return stages


def _load_cost(tab: _Tables, options: list[tuple[int, int]]) -> _StageCost:
    inst = tab.inst

    def cost(i: int, js: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        comm = None
        mem = tab.memory[i] - tab.memory[js]
        par = tab.params[i] - tab.params[js]
        base: dict[int, np.ndarray] = {}
        out = {}
        for t, r in options:
            if t not in base:
                cls = inst.classes[t]
                b = tab.compute[i, t] - tab.compute[js, t]
                if cls.pays_comm:
                    if comm is None:
                        comm = tab.comm(i, js)
                    b = b + comm
                bad = (tab.forbidden[i, t] - tab.forbidden[js, t] > 0) | (mem > cls.capacity * (1 + 1e-12))
                base[t] = np.where(bad, np.inf, b)
            cls = inst.classes[t]
            if r == 1:
                out[(t, r)] = base[t]
            else:
                out[(t, r)] = base[t] / r + 2.0 * (r - 1) / r * par * cls.allreduce_ms_per_byte
        return out

    return cost


def _overflow_cost(tab: _Tables, options: list[tuple[int, int]]) -> _StageCost:
    def cost(i: int, js: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        mem = tab.memory[i] - tab.memory[js]
        out = {}
        for t, r in options:
            cap = tab.inst.classes[t].capacity
            over = mem - cap if cap != math.inf else np.full(len(js), -np.inf)
            out[(t, r)] = np.where(tab.forbidden[i, t] - tab.forbidden[js, t] > 0, np.inf, over)
        return out

    return cost


def contiguous_dp(
    inst: ThroughputInstance,
    *,
    exhaustive: bool = True,
    max_ideals: int = 50_000,
    chunks: int = 256,
    replication: bool | None = None,
    max_work: float = math.inf,
    deadline: float | None = None,
) -> Partition:
    """The best contiguous split of ``inst`` (module docstring), as a :class:`Partition` in pipeline order.

    Args:
        exhaustive: DP over all ideals (exact; raises :class:`~placement.pipeline.ideals.TooManyIdeals`
            past ``max_ideals``); False: over the prefixes of one topological order cut into at most
            ``chunks`` groups (an upper bound, fast on any graph).
        replication: allow replicated stages (default: ``inst.replication``).
        max_work: the work (pairs examined, counted as :data:`MAX_WORK` is) after which :class:`DPTimeout`
            is raised: deterministic, unlike ``deadline``.
        deadline: ``time.perf_counter()`` value after which :class:`DPTimeout` is raised (a safety net).

    Raises:
        InfeasibleError: no contiguous split fits in memory; says which device overflows by how much.
    """
    started = time.perf_counter()
    replicate = inst.replication if replication is None else replication
    blocks = structure_blocks(inst)
    options = _options(inst, replicate)
    limit = math.inf
    if exhaustive:
        ideals = enumerate_ideals(blocks, max_ideals)
        _check_cells(inst, blocks, ideals)
        limit = _prefix_limit(inst, replicate, chunks)
    else:
        weights = [0.0] * len(blocks)
        for v, b in enumerate(blocks.block_of):
            weights[b] += min(x for x in inst.load[v] if x != math.inf)
        blocks = chunk_blocks(blocks, weights, chunks)
        ideals = prefix_ideals(len(blocks))
    tab = _tables(inst, blocks, ideals, exhaustive)
    if exhaustive:
        _check_work(tab, options)
    value, arg_j, arg_o, strides, pairs, work = _run(tab, _load_cost(tab, options), options, deadline, limit, max_work)
    full = sum(c.count * st for c, st in zip(inst.classes, strides))
    if not np.isfinite(value[-1, full]):
        raise _infeasible(tab, deadline)
    parts = [make_part(inst, blocks.nodes_of(mask), t, r) for mask, t, r in _chain(tab, arg_j, arg_o, strides, options)]
    best = max_load(inst, parts)
    return Partition(
        parts=parts,
        max_load=best,
        method="dp-ideals" if exhaustive else "dp-prefixes",
        optimal=exhaustive,
        bound=best if exhaustive else 0.0,
        contiguous=True,
        seconds=time.perf_counter() - started,
        stats={
            "ideals": len(ideals),
            "pairs": pairs,
            "work": work,
            "blocks": len(blocks),
            "comm_nodes": int(tab.comm_cost.size),
            "dp_value": float(value[-1, full]),
            "limit": limit if math.isfinite(limit) else None,
            "replication": replicate,
        },
    )


def _prefix_limit(inst: ThroughputInstance, replicate: bool, chunks: int) -> float:
    """The max-load of the prefix DP's split (a contiguous split, so the optimum is no larger), with room
    for rounding; ``inf`` when no prefix split fits."""
    try:
        return contiguous_dp(inst, exhaustive=False, chunks=chunks, replication=replicate).max_load * (1 + 1e-9)
    except InfeasibleError:
        return math.inf


def _check_cells(inst: ThroughputInstance, blocks: Blocks, ideals: list[int]) -> None:
    """Refuse (as too many ideals) a lattice whose per-ideal tables would not fit in memory."""
    n_ideals, nb = len(ideals), len(blocks)
    comm_nodes = len({u for u, w in inst.edges if inst.comm[u] > 0 and blocks.block_of[u] != blocks.block_of[w]})
    cells = n_ideals * max(nb, comm_nodes)
    if cells > MAX_TABLE_CELLS:
        raise TooManyIdeals(
            n_ideals, n_ideals - 1,
            f"{n_ideals} ideals of {nb} blocks and {comm_nodes} nodes that may cross: tables of {cells:.1e} "
            f"cells, more than the exact DP keeps ({MAX_TABLE_CELLS:.1e})",
        )  # fmt: skip


def _check_work(tab: _Tables, options: list[tuple[int, int]]) -> None:
    """Refuse (as too many ideals) a lattice whose pairs would take too long: at most ``N^2 / 2`` pairs,
    each costing the subset test (one per word of the bitsets), its ideal's boundary (the communication
    correction) and the states times options."""
    n_ideals = tab.size
    work = n_ideals * n_ideals / 2 * _pair_work(tab, options)
    if work > MAX_WORK:
        raise TooManyIdeals(
            n_ideals, n_ideals - 1,
            f"{n_ideals} ideals of {len(tab.blocks)} blocks: about {work:.1e} steps of DP, more than the exact "
            f"DP takes on ({MAX_WORK:.1e})",
        )  # fmt: skip


def _pair_work(tab: _Tables, options: list[tuple[int, int]]) -> float:
    """The estimated work of one pair of ideals: bitset words, boundary nodes per ideal, states x options."""
    states = math.prod(c.count + 1 for c in tab.inst.classes)
    boundary = float(((tab.span_in > 0) & (tab.span_in < tab.span_size)).sum()) / tab.size
    return tab.words.shape[1] + boundary + states * len(options)


def _infeasible(tab: _Tables, deadline: float | None) -> InfeasibleError:
    """Explain why no contiguous split fits: the least overflow any split has, on which device."""
    inst = tab.inst
    total = math.fsum(inst.memory)
    room = math.fsum(c.capacity * c.count for c in inst.classes)
    overall = (
        f"the graph needs {format_bytes(total)} but all devices together hold {format_bytes(room)}; "
        if total > room
        else ""
    )
    options = _options(inst, False)
    value, arg_j, arg_o, strides, _, _ = _run(tab, _overflow_cost(tab, options), options, deadline)
    full = sum(c.count * st for c, st in zip(inst.classes, strides))
    if not np.isfinite(value[-1, full]) or value[-1, full] <= 0:
        return InfeasibleError("no contiguous split satisfies the constraints (allowed device kinds and colocation)")
    used = [0] * len(inst.classes)
    worst = None
    for mask, t, _ in _chain(tab, arg_j, arg_o, strides, options):
        cls = inst.classes[t]
        nodes = tab.blocks.nodes_of(mask)
        mem = sum(inst.memory[v] for v in nodes)
        device = cls.devices[used[t]] if used[t] < len(cls.devices) else f"{cls.name}[{used[t]}]"
        used[t] += 1
        if worst is None or mem - cls.capacity > worst[0]:
            worst = (mem - cls.capacity, device, cls, nodes, mem)
    over, device, cls, nodes, mem = worst
    names = [inst.names[v] for v in nodes]
    shown = ", ".join(names[:4]) + (f" ... {names[-1]}" if len(names) > 4 else "")
    return InfeasibleError(
        f"{overall}no contiguous split{'' if tab.exhaustive else ' along one topological order'} fits in memory: the best one still needs {format_bytes(mem)} on {device} "
        f"(class {cls.name!r}, {format_bytes(cls.capacity)}; over by {format_bytes(over)}) for its "
        f"{len(nodes)} node(s) {shown}. Use more devices or a larger memory budget."
    )

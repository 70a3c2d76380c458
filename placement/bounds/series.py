"""A lower bound on the step time that follows the graph's series structure and prices its fork-join blocks.

Cut nodes. A node ``c`` is a *cut node* when every other node is its ancestor or its descendant. Cut
nodes are totally ordered ``c_1 < ... < c_k``; the nodes strictly between ``c_i`` and ``c_{i+1}`` form
block ``X_i`` (all descend from ``c_i`` and precede ``c_{i+1}``), those before ``c_1`` the prefix,
those after ``c_k`` the tail. In a topological order, ``c`` at position ``i`` is a cut node exactly when
no edge jumps over ``i``, no sink comes before it and no source after it (then every node before it has
a path to it, every node after it a path from it).

Series argument (one microbatch; a graph without explicit backward nodes). With ``dev(c_i) = d_i``:

- forward: ``F(c_1)`` starts after the prefix's forward, and ``F(c_{i+1})`` starts at least
  ``span_F(X_i; d_i, d_{i+1})`` after ``F(c_i)`` ends, because every task of ``X_i`` lies between them;
- the tail (training): ``B(c_k)`` starts after ``F(c_k)`` ends plus, for some node ``x`` of the tail,
  the longest forward path to ``x`` and the longest backward path from it (the critical-path argument
  of :mod:`placement.bounds`, restricted to the tail); in inference the step ends after the tail's
  longest forward path;
- backward: ``B(c_i)`` starts at least ``span_B(X_i; d_{i+1}, d_i)`` after ``B(c_{i+1})`` ends (every
  ``B(x)``, ``x`` in ``X_i``, waits for ``B(c_{i+1})``, and ``B(c_i)`` for all of them), and the step
  ends no sooner than the prefix's longest backward path after ``B(c_1)``.

The step is at least the sum of these pieces and of the cut nodes' own times ``F(c_i) + B(c_i)`` on
``d_i``, so at least the least such sum over all devices ``d_1 .. d_k``: a shortest path over
(cut node, device) computed by dynamic programming. Each span is bounded from below by the larger of
the longest path through the block (nodes at their fastest device, no transfers), the transfer of an
edge ``c_i -> c_{i+1}`` when the ends are on different devices, and, for blocks small enough to
enumerate, the communication-aware fork-join bound of :mod:`placement.bounds.forkjoin` for the pair
``(d_i, d_{i+1})``. Leading graph inputs (no compute, no gradient) are left in the prefix.

Transfer times. Every transfer is at least its edge's least possible duration in the simulator: the
measured time when the edge has one for the device pair; else the route time of the edge's bytes, or a
measured time of another edge of the same producer (a send carries all edges of one producer to one
device and takes the largest measured time among them when one has it), whichever is smaller.

Classes of device pairs. An edge's time from ``s`` to ``t`` depends only on the route's latency and
bandwidth, on ``s == t`` and (for measured transfers) on the two devices' labels: pairs alike in these
form a *route class*. A block's pass with the fork on ``f`` and the join's home on ``h`` reads of ``h``
its speed class, whether its routes share a link and each edge's least time into and out of ``h`` (a
function of the sets of route classes into and out of ``h``), and of the pair the fork edges' times
from ``f`` to ``h`` (a function of the pair's route class). So devices with equal speed class, shared
links and sets of route classes form a *home class*, and every pair of one (home class, route class)
gets exactly the same span: one pass is built per such class and block, and the sharing changes no
value. On a cluster of alike hosts the classes are few (same device, same host, other host, per speed
class), so the passes built grow with the classes, not with ``D^2``.

Cost: linear in nodes and edges for the structure and the path pieces; the classes once, ``O(D^2)``;
``O(D^2)`` array work per block (its direct edge, its spans spread over the pairs) and per edge (the
least times into and out of each device); one pass per class of pairs and block; the enumeration of a
block's patterns is capped (:data:`PATTERN_BUDGET`) so the whole is bounded; blocks past the budget
keep their path bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np

from graphc.ir.graph import EdgeData
from placement.bounds.forkjoin import (
    MAX_COMPONENT,
    BlockPass,
    Component,
    Key,
    block_span,
    component_key,
)
from placement.lowering import Lowered

# Patterns (2^|component| summed over the components of the blocks refined) enumerated at most, per bound.
PATTERN_BUDGET = 1 << 21

INF = math.inf


@dataclass
class Timed:
    """The graph as the bounds read it: the lowered problem with its times on every device.

    ``fwd[v, d]`` and ``bwd[v, d]`` (ms; inf where the node may not run; zeros for inputs and for the
    backward in inference), ``preds`` / ``succs`` as index lists, ``edges[(u, v)]`` the edge's data,
    ``is_input`` the graph inputs, ``lowered`` the :class:`~placement.lowering.Lowered` problem (its
    nodes in topological order, its routes)."""

    fwd: np.ndarray
    bwd: np.ndarray
    preds: list[list[int]]
    succs: list[list[int]]
    edges: dict[tuple[int, int], EdgeData]
    is_input: list[bool]
    lowered: Lowered


def timed_graph(lowered: Lowered, fwd: np.ndarray, bwd: np.ndarray) -> Timed:
    """The lowered graph with the (n, D) times ``fwd`` and ``bwd``, its edges indexed by node pair."""
    lw = lowered
    preds = [[u for u, _ in ps] for ps in lw.preds]
    succs = [[v for v, _ in ss] for ss in lw.succs]
    edges = dict(zip(zip(lw.src.tolist(), lw.dst.tolist()), lw.edge_data))
    return Timed(fwd, bwd, preds, succs, edges, lw.is_input.tolist(), lw)


def cut_nodes(preds: list[list[int]], succs: list[list[int]]) -> list[int]:
    """Positions (in the topological order the lists index) of the nodes comparable with every node."""
    n = len(preds)
    jump = [0] * (n + 1)
    for v, ps in enumerate(preds):
        for u in ps:
            if v > u + 1:
                jump[u + 1] += 1
                jump[v] -= 1
    cuts = []
    crossing = sinks_before = 0
    sources_after = sum(1 for ps in preds if not ps)
    for i in range(n):
        crossing += jump[i]
        if not preds[i]:
            sources_after -= 1
        if crossing == 0 and sinks_before == 0 and sources_after == 0:
            cuts.append(i)
        if not succs[i]:
            sinks_before += 1
    return cuts


def series_bound(tg: Timed) -> float | None:
    """The series bound of the module docstring, ms; None when the graph has no cut node past its inputs."""
    training = tg.lowered.training
    cuts = cut_nodes(tg.preds, tg.succs)
    if cuts and tg.is_input[cuts[0]]:
        cuts = cuts[1:]
    if not cuts or any(tg.is_input[v] and tg.preds[v] for v in range(len(tg.preds))):
        return None
    n = len(tg.preds)
    fmin = tg.fwd.min(axis=1)
    bmin = tg.bwd.min(axis=1)
    is_cut = np.zeros(n, dtype=bool)
    is_cut[cuts] = True
    # Longest paths that restart at every cut node: forward into v, backward from v towards the inputs
    # (``back``, the tail's chain back to c_k) and from the successors down to v (``down``, a block's
    # backward from its join).
    fwd_in = [0.0] * n
    back = [0.0] * n
    for v in range(n):
        if is_cut[v]:
            continue
        fwd_in[v] = fmin[v] + max((fwd_in[u] for u in tg.preds[v] if not is_cut[u]), default=0.0)
        back[v] = bmin[v] + max((back[u] for u in tg.preds[v] if not is_cut[u]), default=0.0)
    down = [0.0] * n
    for v in range(n - 1, -1, -1):
        if not is_cut[v]:
            down[v] = bmin[v] + max((down[w] for w in tg.succs[v] if not is_cut[w]), default=0.0)
    first, last = cuts[0], cuts[-1]
    prefix = max(fwd_in[:first], default=0.0) + (max(down[:first], default=0.0) if training else 0.0)
    if training:
        tail = max((fwd_in[v] + back[v] for v in range(last + 1, n)), default=0.0)
    else:
        tail = max(fwd_in[last + 1 :], default=0.0)
    delays = _Delays(tg)
    own = tg.fwd[cuts] + (tg.bwd[cuts] if training else 0.0)  # (k, D)
    best = own[0].copy()
    budget = [PATTERN_BUDGET]
    for i in range(len(cuts) - 1):
        a, b = cuts[i], cuts[i + 1]
        inner = list(range(a + 1, b))
        base_f = max((fwd_in[v] for v in inner), default=0.0)
        base_b = max((down[v] for v in inner), default=0.0) if training else 0.0
        step = _BlockCosts(tg, delays, a, b, inner, training, budget).matrix(base_f, base_b)
        best = (best[:, None] + step).min(axis=0) + own[i + 1]
    return prefix + float(best.min()) + tail


class _Delays:
    """Least transfer times of edges between devices (module docstring), computed per edge on demand.

    Only the least times into and out of each device are kept per edge (``(D, D)`` matrices would cost
    ``D^2`` memory per edge); a full matrix is recomputed where a block needs one."""

    def __init__(self, tg: Timed) -> None:
        lw = tg.lowered
        self.tg, self.cm, self.devices = tg, lw.cost_model, lw.devices
        D = len(self.devices)
        self.latency, self.per_byte = lw.lat, lw.inv_bw
        self.into: list[bool] = []
        self.out_of: list[bool] = []
        for h in range(D):  # does every route into (out of) h cross one link in one direction?
            ins = [set(lw.resources[s][h]) for s in range(D) if s != h]
            outs = [set(lw.resources[h][t]) for t in range(D) if t != h]
            self.into.append(bool(ins) and bool(set.intersection(*ins)))
            self.out_of.append(bool(outs) and bool(set.intersection(*outs)))
        # Measured times are looked up by the ends' kind and category: one lookup per pair of such labels.
        labels = [(d.kind, d.category) for d in self.devices]
        self._label_of = np.array([sorted(set(labels)).index(x) for x in labels])
        self._labelled = [self.devices[labels.index(x)] for x in sorted(set(labels))]
        self._mins: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.patterns: dict[tuple, dict[str, np.ndarray]] = {}  # summarised patterns per component (bounds_forkjoin)
        measured = any(e.transfer_ms for e in tg.edges.values())
        self.pair_class, self.representatives = self._pair_classes(lw.device_class, measured)

    def _pair_classes(self, device_class: np.ndarray, measured: bool) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """``C[f, h]``: the class of the (fork, home) pair (module docstring), and one pair of each class.

        Route classes: ordered pairs with the same latency, bandwidth and ``f == h`` (and the ends' labels
        when measured transfers apply) give every edge the same least time. Home classes: devices of one
        speed class, with the same shared links and the same sets of route classes out of and into them.
        A pair's class is its home's class and its route class."""
        D = len(self.devices)
        columns = [self.latency, self.per_byte, np.eye(D)]
        if measured:
            columns += [np.broadcast_to(self._label_of[:, None], (D, D)), np.broadcast_to(self._label_of[None, :], (D, D))]
        route = np.unique(np.stack(columns, axis=-1).reshape(D * D, -1), axis=0, return_inverse=True)[1].reshape(D, D)
        off = ~np.eye(D, dtype=bool)
        homes: dict[tuple, int] = {}
        home = np.array([
            homes.setdefault((int(device_class[h]), self.into[h], self.out_of[h], frozenset(route[h][off[h]].tolist()),
                              frozenset(route[:, h][off[:, h]].tolist())), len(homes))
            for h in range(D)
        ])  # fmt: skip
        code = home[None, :] * (int(route.max()) + 1) + route
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        return inverse.reshape(D, D), [divmod(int(i), D) for i in first]

    def matrix(self, u: int, v: int) -> np.ndarray:
        """``M[s, t]``: the least time of the edge's data (either direction's gradient too) from s to t."""
        e = self.tg.edges[u, v]
        m = self.latency + e.bytes * self.per_byte
        measured_edges = [self.tg.edges[u, w] for w in self.tg.succs[u] if self.tg.edges[u, w].transfer_ms]
        if not measured_edges:
            return m
        others = np.fmin.reduce([self._measured(x.transfer_ms) for x in measured_edges])
        m = np.fmin(m, others)  # NaN (no label matches) leaves the route time
        if e.transfer_ms:
            own = self._measured(e.transfer_ms)
            m = np.where(np.isnan(own), m, own)
        return m

    def _measured(self, transfer_ms: dict[str, float]) -> np.ndarray:
        """``(D, D)``: the measured time of each ordered pair of distinct devices, NaN where none applies."""
        pair = self.cm.measured_transfer_ms
        table = np.array([[pair(transfer_ms, s, t) for t in self._labelled] for s in self._labelled], dtype=float)
        out = table[self._label_of[:, None], self._label_of[None, :]]
        np.fill_diagonal(out, np.nan)
        return out

    def mins(self, u: int, v: int) -> tuple[np.ndarray, np.ndarray]:
        """Per device ``h``: the least time of the edge's data from ``h`` to another device, and into ``h``
        from another device (inf with one device)."""
        key = (u, v)
        got = self._mins.get(key)
        if got is None:
            m = self.matrix(u, v).astype(float, copy=True)
            np.fill_diagonal(m, INF)
            got = self._mins[key] = (m.min(axis=1), m.min(axis=0))
        return got

    def from_home(self, u: int, v: int, h: int) -> float:
        """Least time of the edge's data from ``h`` to any other device."""
        return float(self.mins(u, v)[0][h])

    def to_home(self, u: int, v: int, h: int) -> float:
        """Least time of the edge's data from any other device to ``h``."""
        return float(self.mins(u, v)[1][h])


class _BlockCosts:
    """The least forward + backward span of one block for every pair of devices of its two cut nodes."""

    def __init__(self, tg: Timed, delays: _Delays, a: int, b: int, inner: list[int], training: bool, budget: list[int]) -> None:
        self.tg, self.delays, self.a, self.b, self.inner, self.training = tg, delays, a, b, inner, training
        self.components: list[list[int]] = []
        if inner:
            members = set(inner)
            und = nx.Graph()
            und.add_nodes_from(inner)
            und.add_edges_from((u, v) for v in inner for u in tg.preds[v] if u in members)
            self.components = [sorted(c) for c in nx.connected_components(und)]
        patterns = sum(1 << len(c) for c in self.components)
        self.refine = bool(inner) and max(map(len, self.components)) <= MAX_COMPONENT and patterns <= budget[0]
        if self.refine:
            budget[0] -= patterns
        self._memo: dict[tuple, float] = {}

    def matrix(self, base_f: float, base_b: float) -> np.ndarray:
        """``C[p, q]``: the bound on span_F + span_B with ``c_i`` on p and ``c_{i+1}`` on q."""
        D = len(self.delays.devices)
        fwd = np.full((D, D), base_f)
        bwd = np.full((D, D), base_b)
        if (self.a, self.b) in self.tg.edges:  # the edge's transfer when the ends are apart (0 on one device)
            m = self.delays.matrix(self.a, self.b)
            fwd = np.maximum(fwd, m)
            if self.training:
                bwd = np.maximum(bwd, m.T)
        if self.refine:
            pairs, reps = self.delays.pair_class, self.delays.representatives
            fwd = np.maximum(fwd, np.array([self._span(self._forward(f, h)) for f, h in reps])[pairs])
            if self.training:  # bwd[p, q]: home p, fork q
                bwd = np.maximum(bwd, np.array([self._span(self._backward(h, f)) for f, h in reps])[pairs.T])
        return fwd + bwd

    def _span(self, block: BlockPass) -> float:
        key = _signature(block)
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = block_span(block, self.delays.patterns)
        return value

    def _forward(self, p: int, q: int) -> BlockPass:
        """The forward pass: home q (the join's device), the fork on p."""
        tg, dl, a, b = self.tg, self.delays, self.a, self.b
        comps = []
        for nodes in self.components:
            pos = {v: i for i, v in enumerate(nodes)}
            dur = tg.fwd[nodes]
            arcs, entry, exit_, keys, fork_consumers = [], [], [], [], []
            for v in nodes:
                for u in tg.preds[v]:
                    if u == a:
                        fork_consumers.append(pos[v])
                        entry.append((pos[v], dl.matrix(a, v)[p, q] if p != q else 0.0, 0.0 if p != q else dl.from_home(a, v, q)))
                    else:
                        arcs.append((pos[u], pos[v], dl.from_home(u, v, q), dl.to_home(u, v, q)))
            for u in nodes:
                cons = [w for w in tg.succs[u] if w in pos]
                if b in tg.succs[u]:
                    exit_.append((pos[u], dl.to_home(u, b, q)))
                outs = tg.succs[u]
                keys.append(Key(pos[u], [pos[w] for w in cons], True if b in outs else None,
                                min(dl.from_home(u, w, q) for w in outs), min(dl.to_home(u, w, q) for w in outs)))
            comps.append(Component(_col(dur, q), _others(dur, q), sorted(arcs), entry, exit_, keys, fork_consumers))
        outs = tg.succs[a]
        direct = dl.matrix(a, b)[p, q] if (a, b) in tg.edges and p != q else None
        return BlockPass(
            comps, True, p == q,
            lb_fork_in=min(dl.matrix(a, w)[p, q] for w in outs) if p != q else 0.0,
            lb_fork_out=min(dl.from_home(a, w, q) for w in outs),
            direct=direct, shared_in=dl.into[q], shared_out=dl.out_of[q], others=len(dl.devices) - 1,
        )

    def _backward(self, p: int, q: int) -> BlockPass:
        """The backward pass: home p (``B(a)``'s device), the fork ``B(b)`` on q; nodes in reverse order."""
        tg, dl, a, b = self.tg, self.delays, self.a, self.b
        comps = []
        for nodes in self.components:
            order = nodes[::-1]
            pos = {v: i for i, v in enumerate(order)}
            dur = tg.bwd[order]
            arcs, entry, exit_, keys, fork_consumers = [], [], [], [], []
            for u in order:
                for w in tg.succs[u]:
                    if w == b:  # the gradient from B(b) on q
                        entry.append((pos[u], dl.matrix(u, b)[q, p] if p != q else 0.0, 0.0 if p != q else dl.from_home(u, b, p)))
                    elif w in pos:  # B(w) -> B(u): the gradient flows from w's device to u's
                        arcs.append((pos[w], pos[u], dl.from_home(u, w, p), dl.to_home(u, w, p)))
                if a in tg.preds[u]:
                    fork_consumers.append(pos[u])
                    exit_.append((pos[u], dl.to_home(a, u, p)))
                outs = tg.succs[u]
                keys.append(Key(pos[u], [pos[w] for w in outs if w in pos], (q == p) if b in outs else None,
                                min(dl.to_home(u, w, p) for w in outs), min(dl.from_home(u, w, p) for w in outs)))
            comps.append(Component(_col(dur, p), _others(dur, p), sorted(arcs), entry, exit_, keys, fork_consumers))
        outs = tg.succs[a]
        direct = dl.matrix(a, b)[q, p] if (a, b) in tg.edges and p != q else None
        return BlockPass(
            comps, False, p == q,
            lb_fork_in=min(dl.to_home(a, w, p) for w in outs), lb_fork_out=0.0,
            direct=direct, shared_in=dl.into[p], shared_out=dl.out_of[p], others=len(dl.devices) - 1,
        )


def _col(dur: np.ndarray, h: int) -> np.ndarray:
    return dur[:, h].copy()


def _others(dur: np.ndarray, h: int) -> np.ndarray:
    """Each row's least time on a device other than ``h`` (inf with one device)."""
    if dur.shape[1] == 1:
        return np.full(dur.shape[0], INF)
    return np.delete(dur, h, axis=1).min(axis=1)


def _signature(block: BlockPass) -> tuple:
    """Everything :func:`block_span` reads, as a hashable value (symmetric device pairs share results)."""
    return (tuple(component_key(c) for c in block.components), block.forward, block.fork_home, block.lb_fork_in, block.lb_fork_out, block.direct,
            block.shared_in, block.shared_out, block.others)

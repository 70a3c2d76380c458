"""Coarsening: a placement instance mapped to a smaller one that CP-SAT can solve, and back.

A coarse node is a set of fine nodes that will share a device. :func:`coarsen` builds the partition by
contracting edges, cheapest first, until the graph has ``target`` nodes:

* **Chains first.** An edge ``(u, v)`` is contracted only when ``u`` has no other successor or ``v``
  no other predecessor (in the graph contracted so far). Then no other path joins them, so the
  contracted graph stays acyclic, and every coarse node is *convex* (no path leaves it and comes
  back): it can run as one task. Single-in single-out chains are the first to go, being the cheapest.
  If that is not enough, a second pass contracts any edge for which a bounded search finds no other
  path between its ends.
* **Cheapest first.** An edge's cost is the work of the two ends (forward + backward, averaged over
  devices) minus the time its tensor costs to move (transfer and gradient, averaged over device
  pairs): small nodes and heavy edges are merged first, so coarse nodes stay balanced and the cuts left
  are the cheap ones.
* **Repeated layers.** Nodes of one module (``NodeData.module``, compared up to ``module_depth``
  components: ``layer1.0``, ``h.3``) cost half as much to merge, so a repeated layer tends to become
  one coarse node, and the coarse graph keeps the model's repeated structure.
* **Constraints preserved.** Two nodes merge only if they may use exactly the same devices (so a pin
  or a forbidden kind is never widened or narrowed) and at most one colocation group of several
  nodes is involved; coarse nodes holding members of one group form a coarse colocation group. A
  coarse node never grows beyond ``memory_fraction`` of the smallest capacity of its devices, or
  beyond ``weight_cap`` times the mean work per coarse node, so the solver keeps room to split.

Every coarse solution expands to a fine one that honours every constraint (:meth:`Coarsening.expand`);
a fine solution projects to a coarse hint (:meth:`Coarsening.project`). :meth:`Coarsening.refine`
splits chosen coarse nodes back into their fine nodes (the neighbourhoods of large-neighbourhood
search); the result is still acyclic, since a coarse node is convex.

The coarse :class:`~placement.solvers.instance.Instance` sums node times, memory and the bytes crossing
between two coarse nodes (one transfer per distinct producer, its largest edge); it is an estimate
(members of a coarse node run one after another there, several producers' tensors travel as one).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from placement.errors import ConfigurationError
from placement.solvers.instance import Instance


@dataclass
class Coarsening:
    """A partition of a fine instance's nodes and the coarse instance it induces.

    Attributes:
        fine: the instance coarsened.
        part: (n,) the coarse node of each fine node.
        coarse: the coarse instance (its node ``i`` is ``members[i]``).
        members: fine node ids of each coarse node, in topological order.
    """

    fine: Instance
    part: np.ndarray
    coarse: Instance
    members: list[list[int]]

    @property
    def size(self) -> int:
        return len(self.members)

    def expand(self, coarse_dev: np.ndarray) -> np.ndarray:
        """Fine device ids from coarse ones."""
        return np.asarray(coarse_dev, dtype=np.int64)[self.part]

    def expand_seq(self, coarse_seq: list[list[int]]) -> list[list[int]]:
        """Per-device fine order: coarse nodes in their order, each expanded in topological order."""
        return [[v for c in seq for v in self.members[c]] for seq in coarse_seq]

    def project(self, fine_dev: np.ndarray) -> np.ndarray:
        """A coarse assignment close to a fine one: each coarse node on the device holding most of its
        work among those it may use (a coarse colocation group follows its first node)."""
        fine, coarse = self.fine, self.coarse
        work = fine.work.mean(axis=1) + 1e-12
        out = np.zeros(self.size, dtype=np.int64)
        for c, mem in enumerate(self.members):
            votes = np.bincount(np.asarray(fine_dev)[mem], weights=work[mem], minlength=fine.num_devices)
            votes[~coarse.allowed[c]] = -1.0
            out[c] = int(np.argmax(votes))
        for group in coarse.members:
            if len(group) > 1:
                out[group] = out[group[0]]
        return out

    def refine(self, nodes: list[int]) -> Coarsening:
        """This coarsening with the coarse ``nodes`` split back into their fine nodes."""
        part = self.part.copy()
        split = set(nodes)
        next_id = self.size
        for c in split:
            for v in self.members[c][1:]:
                part[v] = next_id
                next_id += 1
        return from_partition(self.fine, part)


def _mean_round_trip(inst: Instance) -> np.ndarray:
    return inst.mean_round_trip() if inst.num_edges else np.zeros(0)


def coarsen(
    inst: Instance,
    target: int,
    *,
    module_depth: int = 2,
    memory_fraction: float = 0.25,
    weight_cap: float = 3.0,
    respect: np.ndarray | None = None,
) -> Coarsening:
    """Contract ``inst`` towards ``target`` nodes (module docstring); the identity when it is no larger.

    ``respect`` labels nodes (a device per node, say) so that only nodes of one label merge: the
    labelled solution then stays expressible on the coarse graph.
    """
    n = inst.n
    if n <= target:
        return from_partition(inst, np.arange(n))
    work = np.where(inst.allowed, inst.work, np.nan)
    w = np.nan_to_num(np.nanmean(work, axis=1)) if n else np.zeros(0)
    comm = _mean_round_trip(inst)
    need = inst.need.astype(float)
    cap_lim = np.asarray([memory_fraction * inst.capacity[inst.allowed[v]].min() for v in range(n)])
    wcap = max(weight_cap * float(w.sum()) / max(1, target), float(w.max(initial=0.0)))
    modules = [".".join(m.split(".")[:module_depth]) if m else "" for m in inst.modules] if inst.modules else [""] * n
    big_group = np.asarray([len(inst.members[g]) > 1 for g in inst.group])

    # Union-find over fine nodes; per root: successors/predecessors (roots) with the edge costs.
    parent = list(range(n))
    weight = w.astype(float).copy()
    memory = need.copy()
    limit = cap_lim.copy()
    groups: list[set[int]] = [{int(inst.group[v])} if big_group[v] else set() for v in range(n)]
    allowed_key = [inst.allowed[v].tobytes() for v in range(n)]
    if respect is not None:
        allowed_key = [k + int(r).to_bytes(8, "little", signed=True) for k, r in zip(allowed_key, respect)]
    succ: list[dict[int, float]] = [{} for _ in range(n)]
    pred: list[dict[int, float]] = [{} for _ in range(n)]
    for e in range(inst.num_edges):
        u, v = int(inst.src[e]), int(inst.dst[e])
        succ[u][v] = succ[u].get(v, 0.0) + float(comm[e])
        pred[v][u] = pred[v].get(u, 0.0) + float(comm[e])
    module = list(modules)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def key(u: int, v: int) -> float:
        k = weight[u] + weight[v] - succ[u].get(v, 0.0)
        if module[u] and module[u] == module[v]:
            k *= 0.5 if k > 0 else 2.0
        return k

    def no_other_path(u: int, v: int, budget: int = 400) -> bool:
        """No path from u to v but the edge itself (a bounded search; unsure counts as a path)."""
        stack = [x for x in succ[u] if x != v]
        seen = set(stack)
        while stack:
            x = stack.pop()
            if x == v or len(seen) > budget:
                return False
            for y in succ[x]:
                if y not in seen:
                    seen.add(y)
                    stack.append(y)
        return True

    def mergeable(u: int, v: int, general: bool) -> bool:
        if allowed_key[u] != allowed_key[v]:
            return False
        if weight[u] + weight[v] > wcap:
            return False
        if memory[u] + memory[v] > min(limit[u], limit[v]):
            return False
        if len(groups[u] | groups[v]) > 1:
            return False
        if len(succ[u]) == 1 or len(pred[v]) == 1:
            return True
        return general and no_other_path(u, v)

    count = n
    # Phase 1 contracts only edges no other path can parallel (one successor or one predecessor);
    # phase 2, if the graph is still too large, any edge once a bounded search finds no other path.
    for general in (False, True):
        heap: list[tuple[float, int, int]] = []
        for u in range(n):
            if parent[u] == u:
                for v in succ[u]:
                    heapq.heappush(heap, (key(u, v), u, v))
        while heap and count > target:
            k, u, v = heapq.heappop(heap)
            if parent[u] != u or parent[v] != v or v not in succ[u]:
                continue
            if abs(k - key(u, v)) > 1e-12 * (1 + abs(k)):
                heapq.heappush(heap, (key(u, v), u, v))  # stale cost: requeue with the current one
                continue
            if not mergeable(u, v, general):
                continue
            # Contract v into u.
            parent[v] = u
            count -= 1
            weight[u] += weight[v]
            memory[u] += memory[v]
            limit[u] = min(limit[u], limit[v])
            groups[u] |= groups[v]
            if module[u] != module[v]:
                module[u] = ""
            del succ[u][v]
            del pred[v][u]
            for x, c in succ[v].items():
                del pred[x][v]
                succ[u][x] = succ[u].get(x, 0.0) + c
                pred[x][u] = pred[x].get(u, 0.0) + c
            for x, c in pred[v].items():
                del succ[x][v]
                succ[x][u] = succ[x].get(u, 0.0) + c
                pred[u][x] = pred[u].get(x, 0.0) + c
            succ[v], pred[v] = {}, {}
            for x in succ[u]:
                heapq.heappush(heap, (key(u, x), u, x))
            for x in pred[u]:
                heapq.heappush(heap, (key(x, u), x, u))
        if count <= target:
            break
    roots = np.asarray([find(v) for v in range(n)], dtype=np.int64)
    return from_partition(inst, roots)


def from_partition(inst: Instance, labels: np.ndarray) -> Coarsening:
    """The coarsening given by any labelling of the nodes into convex sets."""
    _, part = np.unique(np.asarray(labels), return_inverse=True)
    part = part.reshape(-1).astype(np.int64)
    coarse, members, part = quotient(inst, part)
    return Coarsening(inst, part, coarse, members)


def quotient(inst: Instance, part: np.ndarray) -> tuple[Instance, list[list[int]], np.ndarray]:
    """The coarse instance of a partition into convex sets, with coarse nodes renumbered topologically
    (returns the instance, the members of each coarse node and the renumbered partition)."""
    n, D = inst.n, inst.num_devices
    N = int(part.max()) + 1 if n else 0
    # Coarse edges and a topological order of the coarse nodes (Kahn, smallest first fine node first).
    first = np.full(N, n, dtype=np.int64)
    np.minimum.at(first, part, np.arange(n))
    csucc: list[set[int]] = [set() for _ in range(N)]
    indeg = np.zeros(N, dtype=np.int64)
    for e in range(inst.num_edges):
        a, b = int(part[inst.src[e]]), int(part[inst.dst[e]])
        if a != b and b not in csucc[a]:
            csucc[a].add(b)
            indeg[b] += 1
    heap = [(int(first[c]), c) for c in range(N) if indeg[c] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, c = heapq.heappop(heap)
        order.append(c)
        for x in csucc[c]:
            indeg[x] -= 1
            if indeg[x] == 0:
                heapq.heappush(heap, (int(first[x]), x))
    if len(order) != N:
        raise ConfigurationError("quotient: the partition is not into convex sets (the coarse graph has a cycle)")
    rank = np.empty(N, dtype=np.int64)
    rank[np.asarray(order, dtype=np.int64)] = np.arange(N)
    part = rank[part]
    members: list[list[int]] = [[] for _ in range(N)]
    for v in range(n):
        members[int(part[v])].append(v)

    fwd = np.zeros((N, D))
    bwd = np.zeros((N, D))
    np.add.at(fwd, part, inst.fwd)
    np.add.at(bwd, part, inst.bwd)
    static = np.bincount(part, weights=inst.static, minlength=N)
    held = np.bincount(part, weights=inst.held, minlength=N)
    needs_grad = np.zeros(N, dtype=bool)
    np.logical_or.at(needs_grad, part, inst.needs_grad)
    allowed = np.ones((N, D), dtype=bool)
    np.logical_and.at(allowed, part, inst.allowed)

    # One coarse edge per (producer part, consumer part): per distinct fine producer its largest edge.
    best: dict[tuple[int, int, int], int] = {}
    for e in range(inst.num_edges):
        u, v = int(inst.src[e]), int(inst.dst[e])
        a, b = int(part[u]), int(part[v])
        if a == b:
            continue
        k = (a, b, u)
        if k not in best or inst.nbytes[e] > inst.nbytes[best[k]]:
            best[k] = e
    agg: dict[tuple[int, int], list[int]] = {}
    for (a, b, _), e in best.items():
        agg.setdefault((a, b), []).append(e)
    pairs = sorted(agg)
    src = np.asarray([a for a, _ in pairs], dtype=np.int64)
    dst = np.asarray([b for _, b in pairs], dtype=np.int64)
    nbytes = np.asarray([float(sum(inst.nbytes[e] for e in agg[p])) for p in pairs])
    measured: dict[int, np.ndarray] = {}
    for i, p in enumerate(pairs):
        edges = agg[p]
        if any(e in inst.measured for e in edges):
            mat = np.zeros((D, D))
            for e in edges:
                mat += inst.measured[e] if e in inst.measured else _route_matrix(inst, e)
            measured[i] = mat
    send = np.zeros(N)
    sends_out = np.zeros(n, dtype=bool)
    for (a, _, u) in best:
        sends_out[u] = True
    for u in np.flatnonzero(sends_out):
        send[part[u]] += inst.send_bytes[u]
    preds: list[list[tuple[int, int]]] = [[] for _ in range(N)]
    succs: list[list[tuple[int, int]]] = [[] for _ in range(N)]
    for i, (a, b) in enumerate(pairs):
        succs[a].append((b, i))
        preds[b].append((a, i))

    # Coarse colocation groups: coarse nodes sharing a fine group (union-find over coarse nodes).
    cparent = list(range(N))

    def find(x: int) -> int:
        while cparent[x] != x:
            cparent[x] = cparent[cparent[x]]
            x = cparent[x]
        return x

    for fine_members in inst.members:
        cs = sorted({int(part[v]) for v in fine_members})
        for c in cs[1:]:
            ra, rb = find(cs[0]), find(c)
            if ra != rb:
                cparent[max(ra, rb)] = min(ra, rb)
    roots = [find(c) for c in range(N)]
    rep_id: dict[int, int] = {}
    group = np.zeros(N, dtype=np.int64)
    gmembers: list[list[int]] = []
    for c in range(N):
        g = rep_id.get(roots[c])
        if g is None:
            g = rep_id[roots[c]] = len(gmembers)
            gmembers.append([])
        group[c] = g
        gmembers[g].append(c)
    for mem in gmembers:  # a coarse group may use only the devices all its nodes may use
        common = allowed[mem].all(axis=0)
        allowed[mem] = common

    modules = []
    for mem in members:
        mods = {inst.modules[v] for v in mem} if inst.modules else {""}
        modules.append(mods.pop() if len(mods) == 1 else "")
    coarse = Instance(
        names=[inst.names[mem[0]] if len(mem) == 1 else f"{inst.names[mem[0]]}+{len(mem) - 1}" for mem in members],
        index={},
        extra=[],
        devices=inst.devices,
        fwd=fwd,
        bwd=bwd,
        has_bwd=inst.has_bwd,
        needs_grad=needs_grad,
        src=src,
        dst=dst,
        nbytes=nbytes,
        lat=inst.lat,
        inv_bw=inst.inv_bw,
        measured=measured,
        static=static,
        held=held,
        send_bytes=send,
        allowed=allowed,
        group=group,
        members=gmembers,
        capacity=inst.capacity,
        preds=preds,
        succs=succs,
        resources=inst.resources,
        modules=modules,
    )
    coarse.index = {name: i for i, name in enumerate(coarse.names)}
    return coarse, members, part


def _route_matrix(inst: Instance, e: int) -> np.ndarray:
    mat = inst.lat + inst.nbytes[e] * inst.inv_bw
    np.fill_diagonal(mat, 0.0)
    return mat

"""Placement constraints, and their resolution into what every solver honours.

A user states :class:`Constraints` in terms of nodes and modules; :func:`resolve` turns them, together
with what the graph itself requires (``NodeData.allowed_kinds``, ``NodeData.colocation_group``), into a
:class:`Resolved` problem: for every node the set of devices it may use, the colocation groups (nodes
that must share a device), and each device's memory capacity. Contradictions are found here, once, and
reported by name, so a solver never has to explain an infeasible request:

* a node pinned to two devices, or a colocation group whose nodes are pinned to different devices;
* a node (or group) left with no allowed device by pins, forbidden kinds and ``allowed_kinds``;
* a node too large for every device it may use (:func:`check_memory` reports a placement whose
  devices overflow, each with the bytes by which it does).

Selectors: a key of ``pins``, an entry of a ``colocate`` group, or a key of ``forbid_kinds`` names a node,
or a module path, which selects every node whose ``NodeData.module`` is that path or below it
(``"layer1"`` selects ``layer1.0.conv1``). A selector that matches nothing is an error, so a typo never
silently drops a constraint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from graphc.ir.graph import Graph
from placement.cluster import Cluster, Device
from placement.errors import InfeasibleError


@dataclass
class Constraints:
    """What a user requires of a placement.

    Attributes:
        pins: node or module -> the device it must run on.
        colocate: groups of nodes or modules that must run on one device.
        forbid_kinds: device kinds (or categories: ``"cpu"``, ``"gpu"``) no node may use.
        forbid_kinds_for: node or module -> device kinds (or categories) it may not use.
        memory_budget: device -> bytes it may use (lower than its capacity, to leave headroom).
    """

    pins: dict[str, str] = field(default_factory=dict)
    colocate: list[list[str]] = field(default_factory=list)
    forbid_kinds: list[str] = field(default_factory=list)
    forbid_kinds_for: dict[str, list[str]] = field(default_factory=dict)
    memory_budget: dict[str, float] = field(default_factory=dict)


@dataclass
class Resolved:
    """A placement problem every solver can honour directly.

    Attributes:
        allowed: node -> indices (into ``cluster.devices``) of the devices it may run on, sorted; nodes
            with the same devices share one list, so read it, never change it.
        group_of: node -> the representative node of its colocation group (itself when alone).
        groups: representative -> the nodes of its group, in graph order.
        capacity: device index -> bytes usable on it.
    """

    allowed: dict[str, list[int]]
    group_of: dict[str, str]
    groups: dict[str, list[str]]
    capacity: list[float]

    def is_allowed(self, node: str, device: int) -> bool:
        return device in self.allowed[node]


def _select(graph: Graph, selector: str, what: str) -> list[str]:
    if selector in graph:
        return [selector]
    prefix = selector + "."
    matched = [n.name for n in graph.nodes() if n.module == selector or n.module.startswith(prefix)]
    if not matched:
        raise InfeasibleError(f"{what}: {selector!r} is neither a node nor a module of graph {graph.name!r}")
    return matched


def _kind_matches(device: Device, kinds: list[str]) -> bool:
    return device.kind in kinds or device.category in kinds


def resolve(graph: Graph, cluster: Cluster, constraints: Constraints | None = None) -> Resolved:
    """Combine user constraints with the graph's own; raise :class:`InfeasibleError` on a conflict."""
    c = constraints or Constraints()
    devices = cluster.devices
    for device in list(c.pins.values()) + list(c.memory_budget):
        if device not in cluster.device_names:
            raise InfeasibleError(f"constraints name device {device!r}, which cluster {cluster.name!r} lacks")

    # Frozensets, shared between nodes until a rule changes one (most nodes keep every device).
    every = frozenset(range(len(devices)))

    def of_kinds(kinds: list[str]) -> frozenset[int]:
        return frozenset(i for i, d in enumerate(devices) if _kind_matches(d, kinds))

    allowed: dict[str, frozenset[int]] = {n.name: every for n in graph.nodes()}
    reasons: dict[str, list[str]] = {n: [] for n in allowed}
    for name, node in ((n.name, n) for n in graph.nodes()):
        if node.allowed_kinds is not None:
            allowed[name] &= of_kinds(node.allowed_kinds)
            reasons[name].append(f"the graph allows only {node.allowed_kinds}")
    if c.forbid_kinds:
        forbidden = of_kinds(c.forbid_kinds)
        for name in allowed:
            allowed[name] -= forbidden
            reasons[name].append(f"kinds {c.forbid_kinds} are forbidden")
    for selector, kinds in c.forbid_kinds_for.items():
        forbidden = of_kinds(kinds)
        for name in _select(graph, selector, "forbid_kinds_for"):
            allowed[name] -= forbidden
            reasons[name].append(f"{selector!r} may not use {kinds}")
    pinned: dict[str, tuple[str, str]] = {}
    for selector, device in c.pins.items():
        for name in _select(graph, selector, "pins"):
            if name in pinned and pinned[name][1] != device:
                raise InfeasibleError(
                    f"node {name!r} is pinned to {pinned[name][1]!r} (by {pinned[name][0]!r}) and to {device!r} "
                    f"(by {selector!r}): remove one of the pins"
                )
            pinned[name] = (selector, device)
            allowed[name] &= frozenset((cluster.device_index(device),))
            reasons[name].append(f"pinned to {device!r} by {selector!r}")

    group_of = _colocation_groups(graph, c.colocate)
    groups: dict[str, list[str]] = {}
    for name in allowed:
        groups.setdefault(group_of[name], []).append(name)
    for rep, members in groups.items():
        common = allowed[members[0]].intersection(*(allowed[m] for m in members[1:])) if len(members) > 1 else allowed[members[0]]
        if not common:
            why = "; ".join(f"{m}: {', '.join(reasons[m]) or 'no constraint'}" for m in members if reasons[m])
            subject = f"node {members[0]!r}" if len(members) == 1 else f"colocation group {members[:6]}"
            raise InfeasibleError(f"{subject} has no device it may use ({why})")
        for m in members:
            allowed[m] = common

    capacity = [
        min(d.memory_bytes, c.memory_budget.get(d.name, d.memory_bytes)) for d in devices
    ]
    sorted_of = {a: sorted(a) for a in set(allowed.values())}  # one list per distinct set, shared
    return Resolved(
        allowed={n: sorted_of[a] for n, a in allowed.items()},
        group_of=group_of,
        groups=groups,
        capacity=capacity,
    )


def _colocation_groups(graph: Graph, colocate: list[list[str]]) -> dict[str, str]:
    """Union-find over the graph's colocation classes and the user's colocate groups."""
    parent = {n: n for n in graph.node_names()}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb, key=order.__getitem__)] = min(ra, rb, key=order.__getitem__)

    order = {n: i for i, n in enumerate(graph.node_names())}
    by_class: dict[str, str] = {}
    for node in graph.nodes():
        if node.colocation_group is not None:
            union(by_class.setdefault(node.colocation_group, node.name), node.name)
    for i, group in enumerate(colocate):
        names = [n for selector in group for n in _select(graph, selector, f"colocate[{i}]")]
        for name in names[1:]:
            union(names[0], name)
    return {n: find(n) for n in parent}


def check_memory(peak_bytes: Mapping[str, float], cluster: Cluster, resolved: Resolved) -> None:
    """Raise :class:`InfeasibleError` naming every device whose peak exceeds its capacity, and by how much."""
    over = []
    for i, device in enumerate(cluster.devices):
        peak = peak_bytes.get(device.name, 0.0)
        if peak > resolved.capacity[i]:
            over.append(
                f"{device.name} needs {peak / 2**30:.2f} GiB of {resolved.capacity[i] / 2**30:.2f} GiB "
                f"(over by {(peak - resolved.capacity[i]) / 2**30:.2f} GiB)"
            )
    if over:
        raise InfeasibleError(
            "the plan does not fit in memory: " + "; ".join(over)
            + ". Use more devices, a smaller batch, more microbatches, or raise the memory budget."
        )

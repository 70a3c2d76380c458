"""The time of a collective on a cluster's real routes: ring and hierarchical all-reduce, reduce onto a
root, broadcast from a root.

A collective is a sequence of **phases** run one after another; a phase is a set of **flows** (a device
sending bytes to another over its route, :meth:`placement.cluster.Cluster.route`) that run together.
A flow from a device to itself is free and left out.

Flows that share a link (:func:`flows_ms`). Each direction of a full-duplex link, and each half-duplex
link, is a resource ``x`` of bandwidth ``b_x`` (:attr:`placement.cluster.Route.resources`, as the
simulator's transfers). Flows ``f`` of ``B_f`` bytes over routes ``R_f`` running together share each
resource's bandwidth, so the busiest resource finishes last:

    t(flows) = h x max_f latency(R_f) + max_x ( sum_{f : x in R_f} B_f ) / b_x

where ``h`` is 1, or, for a pipelined chain (below), the number of hops the first chunk makes.

**Ring all-reduce** (:func:`ring_allreduce`) of ``P`` bytes over ``r`` devices ``d_0 .. d_{r-1}`` in
ring order (reduce-scatter, then all-gather): ``2 (r - 1)`` rounds; in each, every ``d_i`` sends a
chunk of ``P / r`` bytes to ``d_{(i + 1) mod r}``:

    t = 2 (r - 1) x t(one round's r flows of P / r bytes)
      = 2 (r - 1) x max latency + 2 (r - 1) / r x P / (slowest ring edge's bandwidth)

the second line (the textbook figure) when no two ring edges share a resource. One phase: it holds
every ring edge's links for ``t``, each edge carrying ``2 (r - 1) / r x P`` bytes in all.

**Reduce** onto ``root`` (:func:`reduce`, a parameter server): every member but the root sends its
``P`` bytes to the root, all at once (one phase); **broadcast** from ``root`` (:func:`broadcast`): the
root sends ``P`` bytes to every member. The root's own links carry every member's bytes, so the time
grows with the members behind one link: ``t = max latency + max_x (members crossing x) x P / b_x``.

**Hierarchical all-reduce** (:func:`hierarchical_allreduce`) over islands ``I_1 .. I_L``
(:func:`placement.sync.islands`: hosts, or PCIe switches; ``I_j = (l_j, m_1, .., m_{s_j - 1})``, the
leader ``l_j`` first): three phases, islands in parallel within a phase (their flows are one phase,
sharing links):

1. reduce inside every island onto its leader, as NCCL's ring reduce: a pipelined chain
   ``m_{s-1} -> .. -> m_1 -> l``, each member adding its gradients to the chunks passing through, so
   every chain edge carries ``P`` at once and the first chunk makes ``s - 1`` hops:
   ``t = (s_max - 1) x max latency + max_x load_x / b_x`` with ``P`` per chain edge;
2. ring all-reduce of ``P`` among the leaders ``l_1 .. l_L``;
3. broadcast inside every island from its leader, the same chain the other way.

So the links between islands carry ``2 (L - 1) / L x P`` per leader instead of the flat ring's
``2 (r - 1) / r x P``, and each link inside an island ``P`` each way. On 2 hosts x 2 devices, links of
bandwidth ``B`` inside a host and ``b`` between hosts, no latency: the ring takes ``1.5 P / b`` (when
``b < B``), the hierarchy ``P / B + P / b + P / B``, less as soon as ``B > 4 b``.

Each phase holds the link resources of its flows for its duration. Torch-free; the simulator
(:mod:`placement.simulate`) books the phases on its links and devices.

Devices without a copy engine (:func:`endpoint_ms`). A CPU worker moves its messages itself, each
costing it ``message_ms(bytes)`` of CPU time (the simulator's :meth:`CostModel.endpoint_cpu_ms`, what a
message costs each of its ends), one after another: a phase lasts at least, on its busiest such
device, the sum over the messages it sends or receives. A ring's device sends one chunk and receives
one per round: ``2 x 2 (r - 1) x message_ms(P / r)``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from placement.errors import ConfigurationError

if TYPE_CHECKING:
    from placement.cluster import Cluster, Link


@dataclass(frozen=True)
class Flow:
    """``nbytes`` sent from device ``src`` to device ``dst`` during a phase (all its rounds)."""

    src: str
    dst: str
    nbytes: float


@dataclass(frozen=True)
class Phase:
    """Flows that run together, and how long they take on the links (module docstring); each flow is
    ``rounds`` messages of ``nbytes / rounds`` (a ring's rounds), else one message."""

    flows: tuple[Flow, ...]
    duration_ms: float
    rounds: int = 1


def flows_ms(cluster: Cluster, flows: Sequence[Flow], hops: int = 1) -> float:
    """Milliseconds for ``flows`` to run together: ``hops`` x the largest route latency plus the busiest
    link resource's bytes over its bandwidth (module docstring); 0 for no flow."""
    latency, load = _load(cluster, flows)
    if not load:
        return 0.0
    return 1e3 * hops * latency + _busiest(cluster, load)[1]


def busiest_link(cluster: Cluster, flows: Sequence[Flow]) -> tuple[Link, float]:
    """The link whose resource (a direction of a full-duplex link, or a half-duplex link) has the most
    bytes over its bandwidth among ``flows`` run together, and those milliseconds: the term that paces
    :func:`flows_ms` (the first such resource in the flows' order at a tie). Raises
    :class:`ConfigurationError` when no flow crosses a link."""
    load = _load(cluster, flows)[1]
    if not load:
        raise ConfigurationError("busiest_link: no flow crosses a link (give flows between distinct devices)")
    x, ms = _busiest(cluster, load)
    return cluster.links[x // 2], ms


def _load(cluster: Cluster, flows: Sequence[Flow]) -> tuple[float, dict[int, float]]:
    """The largest route latency (s) of ``flows`` and the bytes they put on each link resource."""
    load: dict[int, float] = {}
    latency = 0.0
    for f in flows:
        route = cluster.route(f.src, f.dst)
        latency = max(latency, route.latency_s)
        for x in route.resources:
            load[x] = load.get(x, 0.0) + f.nbytes
    return latency, load


def _busiest(cluster: Cluster, load: dict[int, float]) -> tuple[int, float]:
    """The resource of ``load`` with the most milliseconds of bytes over bandwidth, and those ms."""
    links = cluster.links
    ms = {x: 1e3 * b / links[x // 2].bandwidth for x, b in load.items()}
    x = max(ms, key=ms.__getitem__)
    return x, ms[x]


def endpoint_ms(phase: Phase, devices: Collection[str], message_ms: Callable[[float], float]) -> float:
    """The most CPU time the phase's messages cost one of ``devices`` (those without a copy engine,
    which move their messages themselves): the sum of ``message_ms(bytes)`` over the messages it sends
    or receives (module docstring, "Devices without a copy engine"); 0 when none takes part."""
    cost: dict[str, float] = {}
    for f in phase.flows:
        ms = phase.rounds * message_ms(f.nbytes / phase.rounds)
        for d in (f.src, f.dst):
            if d in devices:
                cost[d] = cost.get(d, 0.0) + ms
    return max(cost.values(), default=0.0)


def bucket_copy_ms(cluster: Cluster, phases: Sequence[Phase], devices: Collection[str], nbytes: float) -> tuple[float, float]:
    """What a bucket of ``nbytes`` adds to a collective made of ``phases`` where ``devices`` (those without
    a copy engine) take part, ms: before its first phase, a copy into one flat buffer on the slowest of
    them that sends; after its last phase, a copy back on the slowest that receives (0 where none does).
    A copy reads and writes ``nbytes`` at the device's memory bandwidth."""

    def slowest(ends: set[str]) -> float:
        return max((2e3 * nbytes / cluster.device(d).memory_bandwidth for d in ends), default=0.0)

    if not phases:
        return 0.0, 0.0
    senders = {f.src for f in phases[0].flows if f.src in devices}
    receivers = {f.dst for f in phases[-1].flows if f.dst in devices}
    return slowest(senders), slowest(receivers)


def booked_ms(phase: Phase, devices: Collection[str], message_ms: Callable[[float], float]) -> float:
    """How long the simulator books ``phase``: its duration, but at least the CPU time its messages cost
    one of ``devices`` (:func:`endpoint_ms`)."""
    return max(phase.duration_ms, endpoint_ms(phase, devices, message_ms))


def duration_ms(phases: Sequence[Phase]) -> float:
    """The time of a collective: its phases one after another."""
    return sum(p.duration_ms for p in phases)


def ring_allreduce(cluster: Cluster, devices: Sequence[str], nbytes: float) -> list[Phase]:
    """The one phase of a ring all-reduce of ``nbytes`` over ``devices`` in ring order (module docstring);
    none for fewer than two devices or no bytes."""
    r = len(devices)
    if r < 2 or nbytes <= 0:
        return []
    edges = list(zip(devices, [*devices[1:], devices[0]]))
    rounds = 2 * (r - 1)
    one_round = flows_ms(cluster, [Flow(a, b, nbytes / r) for a, b in edges])
    return [Phase(tuple(Flow(a, b, rounds * nbytes / r) for a, b in edges), rounds * one_round, rounds)]


def reduce(cluster: Cluster, members: Sequence[str], root: str, nbytes: float) -> list[Phase]:
    """The one phase of a reduce of ``nbytes`` from every member onto ``root`` (module docstring)."""
    return _phase(cluster, [Flow(m, root, nbytes) for m in members if m != root])


def broadcast(cluster: Cluster, root: str, members: Sequence[str], nbytes: float) -> list[Phase]:
    """The one phase of a broadcast of ``nbytes`` from ``root`` to every member (module docstring)."""
    return _phase(cluster, [Flow(root, m, nbytes) for m in members if m != root])


def server_exchange(
    cluster: Cluster, workers: Sequence[str], servers: Sequence[str], nbytes: float, fractions: Sequence[float] | None = None
) -> tuple[list[Phase], list[Phase]]:
    """The push and the pull of parameter servers holding shards of ``nbytes``, server ``k`` the share
    ``fractions[k]`` (equal shares when None): every worker sends each server its shard at once (one
    phase of the reduces onto every server), then every server sends its shard back to every worker (one
    phase of broadcasts). Each is a list of one phase, or none when nothing moves."""
    shares = fractions if fractions is not None else [1 / len(servers)] * len(servers)
    push = [f for s, share in zip(servers, shares, strict=True) for ph in reduce(cluster, workers, s, nbytes * share) for f in ph.flows]
    pull = [f for s, share in zip(servers, shares, strict=True) for ph in broadcast(cluster, s, workers, nbytes * share) for f in ph.flows]
    return _phase(cluster, push), _phase(cluster, pull)


def hierarchical_allreduce(cluster: Cluster, islands: Sequence[Sequence[str]], nbytes: float) -> list[Phase]:
    """The phases of a hierarchical all-reduce of ``nbytes`` over ``islands`` (leader first in each):
    chain reduce onto the leaders, ring among them, chain broadcast back (module docstring); a phase
    with nothing to do (islands of one device, one island) is left out."""
    if nbytes <= 0:
        return []
    inward = [Flow(island[i + 1], island[i], nbytes) for island in islands for i in range(len(island) - 1)]
    outward = [Flow(f.dst, f.src, nbytes) for f in inward]
    hops = max(len(island) for island in islands) - 1
    leaders = [island[0] for island in islands]
    return [
        *_phase(cluster, inward, hops),
        *ring_allreduce(cluster, leaders, nbytes),
        *_phase(cluster, outward, hops),
    ]


def _phase(cluster: Cluster, flows: list[Flow], hops: int = 1) -> list[Phase]:
    """One phase of ``flows`` run together, or none when there is nothing to send."""
    flows = [f for f in flows if f.src != f.dst and f.nbytes > 0]
    return [Phase(tuple(flows), flows_ms(cluster, flows, hops))] if flows else []

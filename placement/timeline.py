"""What :func:`placement.simulate` returns: the step's figures and, built on demand, its timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

FORWARD = "forward"
BACKWARD = "backward"
SEND = "send"  # an activation (forward output) moving to a consumer's device
SEND_GRAD = "send_grad"  # a gradient moving back to the producer's device
ALLREDUCE = "allreduce"  # a replicated stage's replicas summing their parameter gradients (one bucket)
REDUCE = "reduce"  # the replicas sending one bucket's gradients to its parameter server, which sums them
UPDATE = "update"  # a parameter server's optimizer step over one bucket
BROADCAST = "broadcast"  # the parameter server sending one bucket's fresh weights back to the replicas


@dataclass(frozen=True)
class TimelineEvent:
    """One task of the simulated step.

    Attributes:
        kind: ``forward``, ``backward`` (a node's pass on its device), ``send`` (a node's output moving
            to another device), ``send_grad`` (the gradient of that output moving back), or the
            synchronisation of a replicated stage's gradients, one event per device taking part:
            ``allreduce`` (of one bucket), ``reduce`` (onto its parameter server), ``update`` (the
            server's optimizer step), ``broadcast`` (the fresh weights back).
        name: the node computed, or the node whose output (or its gradient) moves; for the
            synchronisation, the stage's devices joined by ``+``, then `` bucket b`` when the stage has
            several buckets, then `` @ server`` under parameter servers.
        microbatch: 0-based microbatch index (-1 for the synchronisation: it sums every microbatch's).
        device: the device computing, or the device receiving a transfer, or a device synchronising.
        start_ms, end_ms: interval of the task; a transfer's starts once every link of its route is free.
        src_device: the sending device (transfers only).
        bytes: bytes moved (transfers: already divided by the number of microbatches; synchronisation:
            what the device sends over the whole collective; an update: the bucket's bytes).
        links: names of the links crossed (transfers; synchronisation: those of the device's flows).
    """

    kind: str
    name: str
    microbatch: int
    device: str
    start_ms: float
    end_ms: float
    src_device: str = ""
    bytes: float = 0.0
    links: tuple[str, ...] = ()

    @property
    def duration_ms(self) -> float:
        return self.end_ms - self.start_ms


@dataclass(frozen=True)
class Collective:
    """One step of the synchronisation of a replicated stage's gradients, for one bucket
    (:mod:`placement.simulate`, "Synchronisation").

    Attributes:
        kind: ``allreduce``, ``reduce`` or ``broadcast`` (a collective over links), or ``update`` (a
            parameter server's optimizer step over the bucket: no links).
        algorithm: ``ring`` or ``hierarchical`` for an all-reduce, else ``""``.
        bucket: the bucket's index in its stage (:class:`placement.sync.Bucket`); ``buckets``: how many
            the stage has.
        devices: the devices taking part (the stage's replicas, in ring order; then the root, if any).
        root: the parameter server of a reduce, update or broadcast; ``""`` for an all-reduce.
        bytes: the bucket's bytes (each replica's gradients).
        start_ms, end_ms: from the first of its phases' start to the last one's end.
        sent: per device of ``devices``, the bytes it sends over the whole collective.
        links: per device of ``devices``, the links its flows cross (in phase order).
    """

    kind: str
    algorithm: str
    bucket: int
    buckets: int
    devices: list[str]
    root: str
    bytes: float
    start_ms: float
    end_ms: float
    sent: list[float]
    links: list[tuple[str, ...]]

    @property
    def label(self) -> str:
        """The name its timeline events carry (:attr:`TimelineEvent.name`)."""
        replicas = [d for d in self.devices if d != self.root]
        bucket = f" bucket {self.bucket}" if self.buckets > 1 else ""
        return "+".join(replicas) + bucket + (f" @ {self.root}" if self.root else "")


@dataclass
class RawTimeline:
    """Compact arrays the simulator fills; :attr:`SimResult.timeline` turns them into events.

    Task ``t`` is forward of node ``t % n`` in microbatch ``t // n`` for ``t < m * n`` and backward of
    node ``(t - m n) % n`` in microbatch ``(t - m n) // n`` after; transfer ``x`` is the forward send of
    group ``x % g`` in microbatch ``x // g`` for ``x < m * g`` and the gradient send after. Devices and
    routes are indices into ``device_names`` and ``route_links``; a start of -1 marks what never ran.
    Replicated stages make devices and routes depend on the microbatch: ``node_device[k][v]`` is the
    device of node ``v`` in microbatch ``k``; ``group_dst_device``, ``group_fwd_route`` and
    ``group_bwd_route`` are given per phase ``p`` (microbatch ``k`` is in phase ``k % phases``).
    """

    device_names: list[str]
    node_names: list[str]
    node_device: list[list[int]]
    node_is_backward: list[bool]
    fwd_ms: list[float]
    bwd_ms: list[float]
    task_start: Sequence[float]
    microbatches: int
    group_src: list[int]
    group_dst_device: list[list[int]]
    group_bytes: list[float]
    group_fwd_route: list[list[int]]
    group_bwd_route: list[list[int]]
    route_links: list[tuple[str, ...]]
    transfer_start: Sequence[float]
    transfer_end: Sequence[float]
    collectives: list[Collective] = field(default_factory=list)


@dataclass
class SimResult:
    """Figures of one simulated step (times in ms, memory and traffic in bytes).

    Attributes:
        step_ms: time from the first task's start to the last task's end.
        mode: ``training`` or ``inference``.
        microbatches: number of microbatches the step was split into.
        busy_ms: compute time per device (every device of the cluster, 0 when unused); a CPU device's
            transfers, which hold it too, are not counted.
        peak_memory_bytes: highest memory in use per device (static + activations, backward
            temporaries, outputs and loss, received tensors: :mod:`placement.simulate`, "Memory").
        static_memory_bytes: what a device holds before the step starts: parameters, optimizer state and
            buffers (in training the gradients come later, made by the backward).
        memory_capacity_bytes: each device's memory capacity, for comparison.
        over_capacity: devices whose peak exceeds their capacity.
        link_bytes: bytes carried per link (both directions), links that carried any.
        link_busy_ms: time each link was occupied (both directions summed), links that carried any.
        transferred_bytes: bytes sent between devices (each transfer counted once, however many links).
        num_transfers: transfers between devices (sends and gradient sends, all microbatches).

    The synchronisation of replicated stages (all-reduces, or reduces and broadcasts to parameter
    servers) counts in ``link_bytes`` and ``link_busy_ms`` but not in ``transferred_bytes`` nor
    ``num_transfers``; :attr:`timeline` shows it.
    """

    step_ms: float
    mode: str
    microbatches: int
    busy_ms: dict[str, float]
    peak_memory_bytes: dict[str, float]
    static_memory_bytes: dict[str, float]
    memory_capacity_bytes: dict[str, float]
    over_capacity: list[str]
    link_bytes: dict[str, float]
    link_busy_ms: dict[str, float]
    transferred_bytes: float
    num_transfers: int
    raw: RawTimeline = field(repr=False, compare=False)

    def utilization(self) -> dict[str, float]:
        """Busy time over step time per device."""
        return {d: (b / self.step_ms if self.step_ms > 0 else 0.0) for d, b in self.busy_ms.items()}

    @cached_property
    def timeline(self) -> list[TimelineEvent]:
        """Every task and transfer of the step, ordered by start time (built on first access)."""
        r = self.raw
        n, m = len(r.node_names), r.microbatches
        devs = r.device_names
        events: list[TimelineEvent] = []
        for t, start in enumerate(r.task_start):
            if start < 0:
                continue
            k, v = divmod(t, n)
            if k < m:
                kind = BACKWARD if r.node_is_backward[v] else FORWARD
                dur = r.fwd_ms[v]
            else:
                k -= m
                kind, dur = BACKWARD, r.bwd_ms[v]
            events.append(TimelineEvent(kind, r.node_names[v], k, devs[r.node_device[k][v]], start, start + dur))
        g = len(r.group_src)
        phases = len(r.group_dst_device)
        for x, start in enumerate(r.transfer_start):
            if start < 0:
                continue
            k, i = divmod(x, g)
            grad = k >= m
            k = k - m if grad else k
            p = k % phases
            u = r.group_src[i]
            a, b = devs[r.node_device[k][u]], devs[r.group_dst_device[p][i]]
            if not grad:
                events.append(TimelineEvent(SEND, r.node_names[u], k, b, start, r.transfer_end[x], a,
                                            r.group_bytes[i], r.route_links[r.group_fwd_route[p][i]]))
            else:
                events.append(TimelineEvent(SEND_GRAD, r.node_names[u], k, a, start, r.transfer_end[x], b,
                                            r.group_bytes[i], r.route_links[r.group_bwd_route[p][i]]))
        for c in r.collectives:
            for d, sent, links in zip(c.devices, c.sent, c.links):
                events.append(TimelineEvent(c.kind, c.label, -1, d, c.start_ms, c.end_ms, "", sent, links))
        events.sort(key=lambda e: (e.start_ms, e.end_ms))
        return events

    def to_chrome_trace(self) -> dict[str, Any]:
        """The timeline in Chrome trace format (``chrome://tracing``, Perfetto): one row per device, one per
        device pair for transfers; times in µs."""
        trace = []
        for e in self.timeline:
            row = e.device if not e.src_device else f"{e.src_device} -> {e.device}"
            trace.append(
                {"name": f"{e.kind} {e.name}", "cat": e.kind, "ph": "X", "pid": 0, "tid": row,
                 "ts": 1e3 * e.start_ms, "dur": 1e3 * e.duration_ms,
                 "args": {"microbatch": e.microbatch, "bytes": e.bytes}}
            )
        return {"traceEvents": trace, "displayTimeUnit": "ms"}

    def summary(self) -> str:
        """A table for people: per used device, busy time, utilization, peak memory."""
        lines = [
            (
                f"{self.mode} step: {self.step_ms:.3f} ms, {self.microbatches} microbatch(es), "
                f"{self.num_transfers} transfers, {self.transferred_bytes / 1e6:.1f} MB moved"
            ),
            f"{'device':<16}{'busy ms':>12}{'util':>8}{'peak MB':>12}{'capacity MB':>14}",
        ]
        util = self.utilization()
        for d, busy in self.busy_ms.items():
            if busy == 0 and self.peak_memory_bytes[d] == 0:
                continue
            flag = "  OVER" if d in self.over_capacity else ""
            lines.append(
                f"{d:<16}{busy:>12.3f}{util[d]:>8.1%}{self.peak_memory_bytes[d] / 1e6:>12.1f}"
                f"{self.memory_capacity_bytes[d] / 1e6:>14.1f}{flag}"
            )
        return "\n".join(lines)

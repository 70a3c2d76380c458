"""How fast two ranks of this machine exchange tensors, to calibrate the cluster a plan is made for.

The ``local`` cluster preset assumes a link between CPU workers (``placement.presets.local``); the real
one is gloo over loopback as the runtime drives it. :func:`measure_link` measures both parts of
``latency + bytes / bandwidth`` the way they matter to a step: it trains a chain of cheap elementwise
ops whose every op sits on the other device than the one before, with the
:class:`~runtime.distributed.DistributedExecutor` on two ranks and on one. Every cut costs a message
forward and one backward, so the difference of the two step times, per message, is what one transfer
costs the runtime:

* latency: with tiny tensors (posting, waking the waiting rank, the autograd functions), which is
  several times the transport's bare latency;
* bandwidth: with tensors of :data:`LARGE_BYTES`, the extra time per message over the latency. This
  counts what a step pays per byte and a ping-pong of one reused buffer does not see: the kernel's
  copies on both ends and a fresh receive buffer per message (page faults on first touch).

Both ranks also record their CPU time (every thread of the process) per step, so the same runs give
what a message costs the CPUs at its two ends (:attr:`LinkSpeed.endpoint_cpu_s`,
:attr:`LinkSpeed.endpoint_cpu_per_byte_s`): the CPU time of the two ranks beyond the one rank's, per
message, is the sender's and the receiver's part together; the chain sends as much each way, so it
cannot tell them apart, and each end is charged half. On a CPU worker that time is taken from its
compute, and it exceeds the wait the link's latency and bandwidth describe (copies, allocation, gloo's
threads).

1 MiB is the size of most activations the benchmark models send. With 4 MiB messages every op of the
chain allocates, sends and frees 4 MiB at once, and on this machine glibc's heap then grows step after
step (fragmentation) and the cost per byte triples within ten steps; that extreme is left out of the
link's price.

:func:`local_cluster` is the ``local`` preset with that link, so that solvers and the simulator price
transfers as the runtime meets them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graphc.frontend.tracing import trace
from placement import Cluster
from runtime.distributed import DistributedExecutor, init_from_env
from runtime.errors import RuntimeFault
from runtime.launch import RankOutcome, spawn
from runtime.partition import PartitionedProgram, partition
from runtime.plans import plan_from_assignment

TINY_NUMEL = 8
LARGE_BYTES = 1 << 20
CHAIN_OPS = 16
ATTEMPTS = 2

#: Starts ``fn(*args)`` on two ranks and returns their outcomes (:func:`runtime.launch.spawn`'s).
TwoRanks = Callable[[Callable[..., Any], tuple], list[RankOutcome]]


@dataclass(frozen=True)
class LinkSpeed:
    """A measured link: one-way ``latency_s + bytes / bandwidth`` seconds; and the CPU time one message
    costs each of its two ends, ``endpoint_cpu_s + bytes * endpoint_cpu_per_byte_s`` (0 where not
    measured; module docstring)."""

    latency_s: float
    bandwidth: float
    endpoint_cpu_s: float = 0.0
    endpoint_cpu_per_byte_s: float = 0.0

    def seconds(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.bandwidth

    def endpoint_cpu_seconds(self, nbytes: float) -> float:
        """CPU seconds a message of ``nbytes`` costs its sender, and as much its receiver."""
        return self.endpoint_cpu_s + nbytes * self.endpoint_cpu_per_byte_s


class _Scale(nn.Module):
    """``x * w``: an op whose output is as large as its input and whose compute is negligible."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(numel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def chain_step_ms(devices: int, numel: int, steps: int) -> list[float]:
    """On every rank: the median step time and the median CPU time of this process per step (ms) of
    training the chain of :func:`_chain` on ``devices`` devices (every rank builds the same chain)."""
    init_from_env()
    executor = DistributedExecutor(_chain(devices, numel), loss_fn=lambda out: out.sum())
    times, cpu = [], []
    for _ in range(steps + 2):
        start = time.process_time()
        times.append(executor.step(torch.ones(1, numel)).step_ms)
        cpu.append(1e3 * (time.process_time() - start))
    executor.close()
    return [statistics.median(times[2:]), statistics.median(cpu[2:])]


def _chain(devices: int, numel: int) -> PartitionedProgram:
    """``CHAIN_OPS`` ops on tensors of ``numel`` floats, each on another device than the one before (with
    2 devices)."""
    model = nn.Sequential(*[_Scale(numel) for _ in range(CHAIN_OPS)])
    program = trace(model, (torch.ones(1, numel),), name="chain", granularity="op")
    position = {n.name: i for i, n in enumerate(n for n in program.graph_module.graph.nodes if n.op != "get_attr")}
    graph = program.graph
    device = {n: f"cpu{position[graph.node(n).fx_nodes[0]] % devices}" for n in graph.node_names()}
    return partition(program, plan_from_assignment(graph, device))


def _two_ranks_here(fn: Callable[..., Any], args: tuple) -> list[RankOutcome]:
    """``fn(*args)`` on two ranks of this machine."""
    return spawn(fn, 2, args, timeout_s=120)


def _extra_ms_per_message(numel: int, steps: int, two_ranks: TwoRanks | None = None) -> tuple[float, float]:
    """How much longer a step of the chain takes on two ranks (started by ``two_ranks``, else here) than
    on one, per message, and how much more CPU time it costs each end of a message (half the two ranks'
    extra CPU time per message)."""
    one = spawn(chain_step_ms, 1, (1, numel, steps), timeout_s=120)
    two = (two_ranks or _two_ranks_here)(chain_step_ms, (2, numel, steps))
    failed = [str(o.error) for o in [*one, *two] if not o.ok]
    if failed:
        raise RuntimeFault(f"measuring the link between two ranks failed: {failed}")
    messages = 2 * len(_chain(2, numel).transfers)  # forward and backward
    wall = (max(o.result[0] for o in two) - one[0].result[0]) / messages
    cpu = (sum(o.result[1] for o in two) - one[0].result[1]) / messages / 2
    return wall, cpu


def measure_link(steps: int = 10, two_ranks: TwoRanks | None = None) -> LinkSpeed:
    """The link between two gloo ranks as the runtime meets it (module docstring): two ranks of this
    machine, or those ``two_ranks`` starts (for example one on each of two namespace hosts,
    :func:`runtime.hosts.spawn_on_hosts`); the one-rank baseline runs here."""
    tiny_ms, tiny_cpu_ms = _extra_ms_per_message(TINY_NUMEL, steps, two_ranks)
    latency_s, cpu_s = max(tiny_ms / 1e3, 1e-6), max(tiny_cpu_ms / 1e3, 0.0)
    for _ in range(ATTEMPTS):  # other work on the machine can make one measurement meaningless
        large_ms, large_cpu_ms = _extra_ms_per_message(LARGE_BYTES // 4, steps, two_ranks)
        large_s = large_ms / 1e3
        per_byte_s = (large_s - latency_s) / (LARGE_BYTES - 4 * TINY_NUMEL)
        if per_byte_s > 0:
            cpu_per_byte_s = max((large_cpu_ms / 1e3 - cpu_s) / (LARGE_BYTES - 4 * TINY_NUMEL), 0.0)
            return LinkSpeed(latency_s, 1 / per_byte_s, cpu_s, cpu_per_byte_s)
    raise RuntimeFault(
        f"measuring the link between two ranks: a {LARGE_BYTES >> 20} MiB message cost no more than a tiny one "
        f"({1e3 * large_s:.3f} against {1e3 * latency_s:.3f} ms) in {ATTEMPTS} attempts; the machine was probably busy, "
        "measure again"
    )


def local_cluster(workers: int, link: LinkSpeed, memory_bandwidth: float | None = None) -> Cluster:
    """The ``local`` preset with ``workers`` CPU workers joined by ``link``, and with each worker's memory
    bandwidth (bytes read and written per second) where measured (else the preset's assumption)."""
    cluster = Cluster.preset("local", workers=workers)
    for each in cluster.links:  # a route crosses two links (worker -> shared memory -> worker)
        each.bandwidth, each.latency_s = link.bandwidth, link.latency_s / 2
    return with_memory_bandwidth(cluster, memory_bandwidth)


def with_memory_bandwidth(cluster: Cluster, memory_bandwidth: float | None) -> Cluster:
    """``cluster`` with every CPU device's memory bandwidth set to ``memory_bandwidth`` (bytes read and
    written per second, as :func:`graphc.app.calibrate.calibrate` measures it); unchanged for None."""
    if memory_bandwidth is not None:
        for device in cluster.devices:
            if device.category == "cpu":
                device.memory_bandwidth = memory_bandwidth
    return cluster
